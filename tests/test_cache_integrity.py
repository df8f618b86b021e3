"""Embedding cache integrity: damaged chunks are detected, never used, and re-encoded by the next
embed_volume; ``cache clear`` / ``cache info`` touch only the cache's own entries."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from embed_worker import tiny_model  # tests/ is on sys.path (pyproject: pythonpath)
from helpers import embed_cli

from fewsam_jax.cache import (
    ROOT_MARKER,
    CacheCorruptionError,
    CachedEmbeddings,
    CacheWarning,
    EmbeddingCache,
    embed_volume,
)
from fewsam_jax.encode import SliceEncoder
from fewsam_jax.outputs import OutputError

BAD = 3  # the damaged slice


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def encoder(model):
    return SliceEncoder(model, batch_size=2)


@pytest.fixture(scope="module")
def volume():
    return np.random.default_rng(7).normal(100.0, 30.0, (40, 30, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def clean(encoder, volume, tmp_path_factory):
    return embed_volume(volume, encoder, cache=tmp_path_factory.mktemp("clean"), progress=False).load()


def assert_clean(actual: np.ndarray, clean: np.ndarray, reencoded=()) -> None:
    """Equal to the clean run; re-encoded slices to one float16 rounding (XLA on CPU rounds a slice
    encoded in a batch of another size slightly differently)."""
    others = np.setdiff1d(np.arange(len(clean)), reencoded)
    np.testing.assert_array_equal(actual[others], clean[others])
    np.testing.assert_allclose(actual[list(reencoded)], clean[list(reencoded)], rtol=2**-10, atol=1e-6)


def chunk(entry: CachedEmbeddings, index: int) -> Path:
    return entry.path / "embeddings" / "c" / str(index) / "0" / "0" / "0"


def random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(path.stat().st_size))


def truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def deleted(path: Path) -> None:
    path.unlink()


def bit_flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[1001] ^= 0x04  # one bit of one float16's mantissa: finite, plausible, wrong
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [random_bytes, truncated, deleted, bit_flip])
def test_damaged_chunk_is_detected_and_reencoded(tmp_path, encoder, volume, clean, damage):
    entry = embed_volume(volume, encoder, cache=tmp_path, progress=False)
    damage(chunk(entry, BAD))
    with pytest.raises(CacheCorruptionError, match=rf"slice {BAD}: .*run embed_volume"):
        entry.load()
    np.testing.assert_array_equal(entry.load([0, 1]), clean[:2])  # intact slices stay readable
    with pytest.warns(CacheWarning, match=rf"{entry.path}.*slice {BAD}: .*re-encoding"):
        rerun = embed_volume(volume, encoder, cache=tmp_path, progress=False)
    assert rerun.computed.tolist() == [BAD] and rerun.repaired.tolist() == [BAD]
    assert_clean(rerun.load(), clean, [BAD])
    again = embed_volume(volume, encoder, cache=tmp_path, progress=False)  # repaired for good: a plain hit
    assert again.computed.size == 0 and again.repaired.size == 0


@pytest.mark.parametrize("array, damage", [("embeddings", random_bytes), ("embeddings", truncated),
                                            ("embeddings", deleted), ("embeddings", bit_flip),
                                            ("low", random_bytes), ("scale", deleted)])
def test_damaged_quantized_slice_is_detected_and_reencoded(tmp_path, encoder, volume, array, damage):
    """A compact (q8, zstd) entry: damage to a slice's codes or to its per-channel offsets or steps."""
    entry = embed_volume(volume, encoder, cache=tmp_path, storage="q8", progress=False)
    clean = entry.load()
    stored = entry.path / array / "c" / str(BAD) / ("0/0/0" if array == "embeddings" else "0")
    damage(stored)
    with pytest.raises(CacheCorruptionError, match=rf"slice {BAD}: "):
        entry.load()
    with pytest.warns(CacheWarning, match=rf"slice {BAD}: .*re-encoding"):
        rerun = embed_volume(volume, encoder, cache=tmp_path, progress=False)
    assert rerun.computed.tolist() == [BAD] and rerun.storage == "q8"
    np.testing.assert_allclose(rerun.load(), clean, atol=np.abs(clean).max() / 100)


def test_damage_outside_the_requested_slices_is_repaired_when_they_are_requested(tmp_path, encoder, volume, clean):
    entry = embed_volume(volume, encoder, cache=tmp_path, progress=False)
    bit_flip(chunk(entry, BAD))
    assert embed_volume(volume, encoder, cache=tmp_path, slices=[0, 1], progress=False).computed.size == 0
    with pytest.warns(CacheWarning, match=f"slice {BAD}"):
        part = embed_volume(volume, encoder, cache=tmp_path, slices=[BAD, 5], progress=False)
    assert part.computed.tolist() == [BAD]
    assert_clean(part.load(), clean, [BAD])


def test_entries_written_before_checksums_stay_readable_and_zero_chunks_are_caught(tmp_path, encoder, volume, clean):
    entry = embed_volume(volume, encoder, cache=tmp_path, progress=False)
    shutil.rmtree(entry.path / "checksums")  # as written by the first cache format
    legacy = CachedEmbeddings(entry.path)
    assert legacy._checksums is None
    np.testing.assert_array_equal(legacy.load(), clean)
    deleted(chunk(entry, BAD))  # reads as the fill value: all zeros
    with pytest.raises(CacheCorruptionError, match=rf"slice {BAD}: all zeros"):
        legacy.load()
    random_bytes(chunk(entry, 5))  # random float16 bits hold NaN / Inf
    with pytest.raises(CacheCorruptionError, match="slice 5: non-finite"):
        legacy.load([5])
    with pytest.warns(CacheWarning, match="2 stored slice"):
        rerun = embed_volume(volume, encoder, cache=tmp_path, progress=False)
    assert rerun.computed.tolist() == [BAD, 5]
    assert_clean(rerun.load(), clean, [BAD, 5])


def test_damaged_metadata_rebuilds_the_entry(tmp_path, encoder, volume, clean):
    entry = embed_volume(volume, encoder, cache=tmp_path, progress=False)
    (entry.path / "meta.json").write_text('{"key": "truncated')
    with pytest.raises(CacheCorruptionError, match="damaged cache entry"):
        EmbeddingCache(tmp_path).open("tiny", entry.key)
    with pytest.warns(CacheWarning, match="rebuilding the entry"):
        rerun = embed_volume(volume, encoder, cache=tmp_path, progress=False)
    assert rerun.computed.tolist() == list(range(8))
    np.testing.assert_array_equal(rerun.load(), clean)


def test_cli_embed_reports_repairs_not_cache_hits(tmp_path, model, volume, capsys, monkeypatch):
    import fewsam_jax.weights

    monkeypatch.setattr(fewsam_jax.weights, "load_model", lambda name: {"tiny-test": model}[name])
    np.save(tmp_path / "vol.npy", volume)
    run = embed_cli(capsys)
    embed = ("embed", tmp_path / "vol.npy", "--model", "tiny-test", "--cache", tmp_path / "cache", "--quiet")
    assert "8 encoded, 0 from the cache" in run(*embed)
    (path,) = EmbeddingCache(tmp_path / "cache").entries("tiny")
    bit_flip(chunk(CachedEmbeddings(path), BAD))
    with pytest.warns(CacheWarning):
        assert "1 encoded (1 of them re-encoded: corrupt in the cache), 7 from the cache" in run(*embed)
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(OutputError, match="a-file is a file"):
        run("embed", tmp_path / "vol.npy", "--model", "tiny-test", "--cache", tmp_path / "a-file" / "cache")


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_clear_and_info_touch_only_cache_entries(tmp_path, encoder, volume, capsys):
    """`fewsam cache clear --cache DIR` on a folder that also holds other things deletes only entries."""
    root = tmp_path / "cache"
    entry = embed_volume(volume, encoder, cache=root, progress=False)
    assert (root / ROOT_MARKER).is_file()
    user = {
        "notes/todo.txt": b"keep me",  # a folder at model level
        "tiny/photos/cat.png": b"\x89PNG...",  # a folder at entry level, beside real entries
        ("tiny/" + "a" * 64 + "/thesis.tex"): b"\\documentclass",  # entry-shaped name, foreign content
        "tiny/readme.md": b"mine",
        "vit_b/scan/scan.nii.gz": b"\x1f\x8b",
    }
    for name, data in user.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    before = {k: v for k, v in _snapshot(root).items() if not k.startswith(f"tiny/{entry.key}")}

    cache = EmbeddingCache(root)
    assert cache.models() == ["tiny"] and list(cache.entries()) == [entry.path]
    assert set(cache.info()) == {"tiny"} and cache.info()["tiny"]["entries"] == 1
    run = embed_cli(capsys)
    info = run("cache", "info", "--cache", root)
    assert "notes" not in info and "vit_b" not in info and info.splitlines()[-1].split()[:2] == ["tiny", "1"]
    assert "removed 1 entries" in run("cache", "clear", "--cache", root)
    assert not entry.path.exists()
    after = _snapshot(root)
    for name, data in before.items():
        assert after.get(name) == data, name  # every other file is untouched, byte for byte
    assert "removed 0 entries" in run("cache", "clear", "--model", "vit_b", "--cache", root)
    assert (root / "vit_b" / "scan" / "scan.nii.gz").read_bytes() == b"\x1f\x8b"
    assert "empty" in run("cache", "info", "--cache", root)


def test_a_foreign_folder_at_an_entry_path_is_left_alone(tmp_path, encoder, volume):
    entry = embed_volume(volume, encoder, cache=tmp_path, progress=False)
    shutil.rmtree(entry.path)
    entry.path.mkdir()
    (entry.path / "thesis.tex").write_text("\\documentclass")
    with pytest.raises(OutputError, match="not a cache entry's; it is left alone"):
        embed_volume(volume, encoder, cache=tmp_path, progress=False)
    assert [p.name for p in entry.path.iterdir()] == ["thesis.tex"]


def test_clear_deletes_nothing_in_a_folder_that_is_not_a_cache(tmp_path, capsys):
    """Hash-named run folders with an ``embeddings/`` subfolder look like entries by name: without the cache's
    marker, ``cache clear`` deletes nothing, and with it, an entry-named folder holding other files stays too."""
    work = tmp_path / "work"
    run_dir = work / "experiments" / ("b" * 64)
    (run_dir / "embeddings").mkdir(parents=True)
    (run_dir / "meta.json").write_text("{}")
    (run_dir / "embeddings" / "vectors.npy").write_bytes(b"\x93NUMPY")
    before = _snapshot(work)
    with pytest.raises(OutputError, match="not an embedding cache of fewsam_jax.*nothing was deleted"):
        EmbeddingCache(work).clear()
    with pytest.raises(OutputError, match="nothing was deleted"):
        embed_cli(capsys)("cache", "clear", "--cache", work)
    assert _snapshot(work) == before
    (work / ROOT_MARKER).write_text("{}")  # even under a marked root: the layout inside must be zarr's
    (run_dir / "zarr.json").write_text("{}")
    assert EmbeddingCache(work).clear()["removed"] == 0
    assert _snapshot(work) == {**before, ROOT_MARKER: b"{}", f"experiments/{'b' * 64}/zarr.json": b"{}"}


def test_an_entry_left_by_a_killed_zarr_write_stays_usable(tmp_path, encoder, volume, clean):
    """zarr writes each file through ``NAME.<uuid hex>.partial``; a kill leaves it behind. The entry is still
    the library's: reused, cleared, never refused as foreign."""
    entry = embed_volume(volume, encoder, cache=tmp_path, progress=False)
    (entry.path / "zarr.0123456789abcdef0123456789abcdef.partial").write_bytes(b"{")
    (chunk(entry, 0).parent / "0.0123456789abcdef0123456789abcdef.partial").write_bytes(b"\0")
    assert_clean(embed_volume(volume, encoder, cache=tmp_path, progress=False).load(), clean)
    assert EmbeddingCache(tmp_path).clear()["removed"] == 1 and not entry.path.exists()


def test_an_entry_that_cannot_be_opened_for_want_of_permission_is_not_rebuilt(tmp_path, encoder, volume,
                                                                              monkeypatch):
    """Only damage rebuilds an entry: an OSError such as a permission error or too many open files propagates,
    and the entry's files stay as they were."""
    entry = embed_volume(volume, encoder, cache=tmp_path, progress=False, slices=[0, 1])
    before = _snapshot(entry.path)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(entry.path / "zarr.json"))

    monkeypatch.setattr("fewsam_jax.cache.zarr.open_group", denied)
    with pytest.raises(PermissionError):
        CachedEmbeddings(entry.path)
    with pytest.raises(PermissionError):
        embed_volume(volume, encoder, cache=tmp_path, progress=False)
    monkeypatch.undo()
    entry = CachedEmbeddings(entry.path)

    class Denied:
        shape = entry._embeddings.shape

        def __getitem__(self, index):
            raise PermissionError(13, "Permission denied", "a chunk")

    entry._embeddings = Denied()  # a chunk that cannot be read is not a corrupt one
    with pytest.raises(PermissionError):
        entry.load([0])
    assert _snapshot(entry.path) == before


def test_an_entry_half_deleted_by_a_killed_clear_is_cleared_or_rebuilt(tmp_path, encoder, volume, clean):
    """rmtree removes names in directory order: a kill can leave arrays without the group's zarr.json and
    meta.json. The folder is still the library's: `embed_volume` rebuilds it and `clear` removes it."""
    entry = embed_volume(volume, encoder, cache=tmp_path, progress=False)
    for name in ("zarr.json", "meta.json"):
        (entry.path / name).unlink()
    shutil.rmtree(entry.path / "done")
    assert_clean(embed_volume(volume, encoder, cache=tmp_path, progress=False).load(), clean, reencoded=range(8))
    for name in ("zarr.json", "meta.json"):
        (entry.path / name).unlink()
    assert EmbeddingCache(tmp_path).clear()["removed"] == 1 and not entry.path.exists()
