"""Embedding cache: keys, hit/miss, resume after SIGKILL, torn writes, concurrent writers, CLI."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
import zarr
from embed_worker import results, start, tiny_model  # tests/ is on sys.path (pyproject: pythonpath)
from helpers import SHARED_DATA, embed_cli

from fewsam_jax.cache import (
    QUANTIZED,
    STORAGES,
    CacheFormatError,
    CachedEmbeddings,
    EmbeddingCache,
    _acquire,
    encoder_for,
    copy_entry,
    dequantize,
    embed_volume,
    entry_key,
    planar_codes,
    planar_residuals,
    quantize,
    slice_checksum,
)
from fewsam_jax.encode import SliceEncoder
from fewsam_jax.io import from_array, get_slices, load_volume
from fewsam_jax.preprocess import Intensity

DATA = SHARED_DATA
HIPPOCAMPUS = DATA / "hippocampus" / "imagesTr" / "hippocampus_003_0000.nii.gz"


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="session")
def jax_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("jax-cache")


@pytest.fixture(scope="module")
def encoder(model):
    return SliceEncoder(model, batch_size=2)  # as embed_worker's default


def _volume(seed=0, shape=(40, 30, 8)):
    return np.random.default_rng(seed).normal(100.0, 30.0, shape).astype(np.float32)


def _percentile_slices(array, axis=2):
    return get_slices(Intensity.parse("percentile").apply(array), axis)


def test_hit_miss_and_keys(tmp_path, model, encoder):
    cache = EmbeddingCache(tmp_path)
    array = _volume()
    first = embed_volume(array, encoder, cache=cache, progress=False)
    assert first.complete and first.computed.tolist() == list(range(8))
    assert (first.num_slices, first.slice_shape, first.axis) == (8, (30, 40), 2)
    embeddings = first.load()
    assert embeddings.shape == (8, 8, 8, 32) and embeddings.dtype == np.float32
    np.testing.assert_array_equal(first[3], embeddings[3])
    np.testing.assert_array_equal(first[[6, 1]], embeddings[[6, 1]])
    np.testing.assert_allclose(embeddings, encoder.encode(_percentile_slices(array)), rtol=2**-10, atol=1e-6)

    again = embed_volume(array, encoder, cache=cache, progress=False)
    assert again.key == first.key and again.computed.size == 0
    # the same voxels in another orientation give the same canonical array, hence the same entry
    flipped = from_array(array[::-1], affine=np.diag([-1.0, 1.0, 1.0, 1.0]))
    assert embed_volume(flipped, encoder, cache=cache, progress=False).computed.size == 0
    # every ingredient of the key matters
    changed = array.copy()
    changed[0, 0, 0] += 1
    keys = {
        first.key,
        entry_key(changed, "tiny", "tiny-seed0", "percentile:0.5,99.5", 2),
        entry_key(array, "tiny", "other-weights", "percentile:0.5,99.5", 2),
        entry_key(array, "tiny", "tiny-seed0", "minmax", 2),
        entry_key(array, "tiny", "tiny-seed0", "percentile:0.5,99.5", 1),
        entry_key(array, "tiny", "tiny-seed0", "percentile:0.5,99.5", 2, "bfloat16"),
        entry_key(array.astype(np.float64), "tiny", "tiny-seed0", "percentile:0.5,99.5", 2),
    }
    assert len(keys) == 7 and first.key == entry_key(array, "tiny", "tiny-seed0", "percentile:0.5,99.5", 2)
    coronal = embed_volume(array, encoder, axis=1, intensity="window:100,200", cache=cache, progress=False)
    assert (coronal.num_slices, coronal.slice_shape) == (30, (8, 40))

    info = cache.info()
    assert info["tiny"]["entries"] == 2 and info["tiny"]["complete"] == 2 and info["tiny"]["slices"] == 38
    assert info["tiny"]["bytes"] > 38 * 8 * 8 * 32 * 2
    cleared = cache.clear("tiny")
    assert cleared["removed"] == 2 and cleared["in_use"] == [] and cache.info() == {}
    assert not (tmp_path / "tiny").exists()


def test_embed_volume_compiles_once_per_slice_size(tmp_path, model):
    for seed in (5, 6, 7):
        entry = embed_volume(_volume(seed), model, cache=tmp_path, batch_size=3, progress=False)
        assert entry.computed.size == 8
    assert encoder_for(model, 3, "float32").traced_shapes == ((3, 30, 40, 1),)


def test_subset_of_slices(tmp_path, encoder):
    array = _volume(8)
    part = embed_volume(array, encoder, slices=[5, 1, -3], cache=tmp_path, progress=False)
    assert part.computed.tolist() == [1, 5] and not part.complete
    assert embed_volume(array, encoder, slices=[5], cache=tmp_path, progress=False).computed.size == 0
    with pytest.raises(ValueError, match="not in the cache"):
        part.load()
    rest = embed_volume(array, encoder, cache=tmp_path, progress=False)
    assert rest.computed.tolist() == [0, 2, 3, 4, 6, 7] and rest.complete
    np.testing.assert_array_equal(part.load([1, 5]), rest.load()[[1, 5]])
    with pytest.raises(ValueError, match="out of range for 8 slices"):
        embed_volume(array, encoder, slices=[8], cache=tmp_path, progress=False)


def test_torn_writes_never_read_as_valid(tmp_path, encoder):
    """Chunks written without their done flag (a writer killed in between) are recomputed."""
    array = _volume(1)
    clean = embed_volume(array, encoder, cache=tmp_path / "clean", progress=False).load()
    entry = embed_volume(array, encoder, cache=tmp_path / "torn", progress=False)
    writable = CachedEmbeddings(entry.path, _writable=True)
    writable._done.oindex[[2, 5]] = False
    writable._embeddings.oindex[[2, 5]] = np.full((2, 8, 8, 32), 7.0, np.float16)  # garbage, not done
    assert not entry.complete
    with pytest.raises(ValueError, match=r"slices \[2, 5\] are not in the cache"):
        entry.load()
    with pytest.raises(ValueError, match=r"slices \[5\]"):
        entry[5]
    np.testing.assert_array_equal(entry[[0, 1]], clean[:2])  # finished slices stay readable
    rerun = embed_volume(array, encoder, cache=tmp_path / "torn", progress=False)
    assert rerun.computed.tolist() == [2, 5]
    np.testing.assert_array_equal(rerun.load(), clean)


@pytest.mark.slow  # a worker subprocess (its own JAX start-up and compile), killed and resumed
def test_resume_after_kill(tmp_path, encoder, jax_cache):
    """SIGKILL a writer mid-volume; the rerun computes exactly the missing slices."""
    array = _volume(2, (40, 30, 24))
    np.save(tmp_path / "vol.npy", array)
    cache = EmbeddingCache(tmp_path / "cache")
    proc = start("cache", cache.root, tmp_path / "vol.npy", "--sleep", "0.5", jax_cache=jax_cache)
    deadline = time.monotonic() + 240
    done = 0
    while done < 4:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "the worker made no progress"
        time.sleep(0.05)
        entries = list(cache.entries("tiny"))
        if entries and (entries[0] / "meta.json").exists():
            done = int(CachedEmbeddings(entries[0]).done().sum())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    (path,) = cache.entries("tiny")
    flags = CachedEmbeddings(path).done()
    assert 4 <= flags.sum() < 24
    rerun = embed_volume(tmp_path / "vol.npy", encoder, cache=cache, progress=False)
    assert rerun.path == path and rerun.complete
    assert rerun.computed.tolist() == np.flatnonzero(~flags).tolist()
    clean = embed_volume(array, encoder, cache=tmp_path / "clean", progress=False)
    np.testing.assert_array_equal(rerun.load(), clean.load())


@pytest.mark.slow  # two worker subprocesses at once
def test_concurrent_writers(tmp_path, encoder, jax_cache):
    """Two processes write one cache: disjoint volumes a and b at once, then both the same volume c."""
    arrays = {name: _volume(seed) for seed, name in enumerate("abc", start=3)}
    for name, array in arrays.items():
        np.save(tmp_path / f"{name}.npy", array)
    cache = EmbeddingCache(tmp_path / "cache")
    procs = [start("cache", cache.root, tmp_path / f"{name}.npy", tmp_path / "c.npy", "--sleep", "0.2", jax_cache=jax_cache) for name in "ab"]
    (a, c1), (b, c2) = [results(p) for p in procs]
    assert a["computed"] == b["computed"] == list(range(8))
    assert sorted(c1["computed"] + c2["computed"]) == list(range(8))  # no slice of c encoded twice
    assert c1["key"] == c2["key"] and len({a["key"], b["key"], c1["key"]}) == 3
    assert cache.info()["tiny"]["complete"] == 3
    for result, array in zip((a, b, c1), arrays.values()):
        clean = embed_volume(array, encoder, cache=tmp_path / "clean", progress=False)
        assert clean.key == result["key"]
        np.testing.assert_array_equal(cache.open("tiny", result["key"]).load(), clean.load())


def test_clear_skips_entries_being_written(tmp_path, encoder):
    cache = EmbeddingCache(tmp_path)
    entry = embed_volume(_volume(), encoder, cache=cache, progress=False)
    lock = _acquire(entry.path.with_name(entry.key + ".lock"))
    try:
        assert cache.clear() == {"removed": 0, "bytes": 0, "in_use": [str(entry.path)]}
    finally:
        lock.release()
    assert cache.clear()["removed"] == 1 and cache.info() == {}


@pytest.mark.parametrize(
    "volume, kwargs, message",
    [
        (np.full((4, 4, 4), np.nan, np.float32), {}, "NaN or Inf"),
        (np.zeros((4, 4, 4, 2), np.float32), {}, "4D"),
        (np.zeros((0, 4, 4), np.float32), {}, "empty"),
        (np.zeros((4, 4, 4), np.float32), {"axis": 3}, "axis=3 is out of range"),
        (np.zeros((4, 4, 4), np.float32), {"intensity": "gamma"}, "unknown intensity"),
        ("missing.nii.gz", {}, "no such file"),
    ],
)
def test_bad_inputs(tmp_path, encoder, volume, kwargs, message):
    if isinstance(volume, str):
        volume = tmp_path / volume
    with pytest.raises(ValueError, match=message):
        embed_volume(volume, encoder, cache=tmp_path, progress=False, **kwargs)
    assert not list(EmbeddingCache(tmp_path).entries())


def test_cli(tmp_path, model, capsys, monkeypatch):
    import fewsam_jax.weights

    monkeypatch.setattr(fewsam_jax.weights, "load_model", lambda name: {"tiny-test": model}[name])
    run = embed_cli(capsys)
    np.save(tmp_path / "vol.npy", _volume())
    embed = ("embed", tmp_path / "vol.npy", "--model", "tiny-test", "--cache", tmp_path / "cache", "--quiet")
    assert "8 encoded, 0 from the cache" in run(*embed, "--window", "soft_tissue", "--batch-size", "3")
    assert "0 encoded, 8 from the cache" in run(*embed, "--intensity", "window:40,400")
    assert "40 encoded" in run(*embed, "--axis", "0")
    info = run("cache", "info", "--cache", tmp_path / "cache")
    assert info.splitlines()[-1].split()[:4] == ["tiny", "2", "2", "48"]
    assert "no entries for model 'vit_b'" in run("cache", "info", "--model", "vit_b", "--cache", tmp_path / "cache")
    assert "removed 2 entries" in run("cache", "clear", "--model", "tiny", "--cache", tmp_path / "cache")
    assert "empty" in run("cache", "info", "--cache", tmp_path / "cache")
    with pytest.raises(SystemExit):
        run(*embed, "--window", "liver", "--intensity", "minmax")


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.skipif(not HIPPOCAMPUS.exists(), reason=f"needs ../shared/data ({HIPPOCAMPUS} not found)")
def test_float16_error_real_litemedsam(tmp_path, monkeypatch):
    """Real LiteMedSAM embeddings of two hippocampus slices: the float16 cache is within half an ulp."""
    from fewsam_jax.weights import load_model

    monkeypatch.setenv("FEWSAM_HOME", str(tmp_path))
    source = load_volume(HIPPOCAMPUS)
    volume = from_array(source.array[:, :, 14:16], spacing=source.spacing)
    litemedsam = SliceEncoder(load_model("litemedsam"), batch_size=2)
    entry = embed_volume(volume, litemedsam, progress=False)
    assert entry.path.is_relative_to(tmp_path / "embeddings" / "litemedsam")
    exact = litemedsam.encode(get_slices(Intensity.parse("percentile").apply(volume.array), 2))
    stored = entry.load()
    assert stored.shape == exact.shape == (2, 64, 64, 256)
    err = np.abs(stored - exact)
    assert np.all(err <= 2.0**-11 * np.abs(exact) + 2.0**-25)  # round-to-nearest float16
    print(f"float16 cache error: max abs {err.max():.2e}, relative to max |x| {err.max() / np.abs(exact).max():.2e}")


# ------------------------------------------------------------------------------------ storages


def _within_quantization_error(stored: np.ndarray, exact: np.ndarray, bits: int) -> bool:
    """Every value within half a step of its slice and channel (the stated bound), plus float32 rounding."""
    span = exact.max(axis=(1, 2)) - exact.min(axis=(1, 2))  # (n, C)
    bound = span / (2**bits - 1) / 2
    return bool(np.all(np.abs(stored - exact) <= bound[:, None, None, :] * (1 + 1e-5) + 1e-6 * np.abs(exact).max()))


@pytest.mark.parametrize("bits", [8, 6, 5, 4])
def test_quantize_is_within_half_a_step(bits):
    values = np.random.default_rng(bits).standard_t(3, (8, 8, 32)).astype(np.float32)
    values[..., 5] = 2.5  # a constant channel comes back exactly
    codes, low, scale = quantize(values, bits)
    assert codes.dtype == np.uint8 and codes.max() == 2**bits - 1 and low.shape == scale.shape == (32,)
    restored = dequantize(codes, low, scale)
    assert restored.dtype == np.float32 and restored.shape == values.shape
    assert np.all(np.abs(restored - values) <= scale / 2 * (1 + 1e-5) + 1e-6)
    assert np.all(restored[..., 5] == 2.5) and scale[5] == 0
    with pytest.raises(ValueError, match="NaN or Inf"):
        quantize(np.full((2, 2, 3), np.inf, np.float32), bits)


@pytest.mark.parametrize("bits", [8, 7, 6, 5, 4])
def test_planar_residuals_invert_exactly(bits):
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 2**bits, (16, 12, 5)).astype(np.uint8)  # any codes, edges and wrap-around included
    residuals = planar_residuals(codes, bits)
    assert residuals.dtype == np.uint8 and residuals.shape == codes.shape and residuals.max() < 2**bits
    np.testing.assert_array_equal(planar_codes(residuals, bits), codes)
    assert residuals[0, 0].tolist() == codes[0, 0].tolist()  # nothing to predict the first cell from


def test_planar_residuals_of_a_smooth_map_compress_better():
    """An embedding's channels vary slowly over the grid: the residuals cluster near 0 (real slices:
    bench/RESULTS.md, "Compact embedding cache")."""
    from numcodecs import Zstd

    y, x = np.mgrid[:64, :64]
    noise = np.random.default_rng(0).standard_normal((64, 64, 8))
    smooth = np.stack([np.sin(x / 9 + c) + np.cos(y / 7 - c) for c in range(8)], -1) + 0.05 * noise
    codes = quantize(smooth.astype(np.float32), 5)[0]
    residuals = planar_residuals(codes, 5)
    np.testing.assert_array_equal(planar_codes(residuals, 5), codes)
    assert len(Zstd(level=3).encode(residuals)) < 0.8 * len(Zstd(level=3).encode(codes))


@pytest.mark.parametrize("storage", sorted(QUANTIZED))
def test_compact_storage_round_trips_within_its_bound(tmp_path, encoder, storage):
    array = _volume(11)
    entry = embed_volume(array, encoder, cache=tmp_path / storage, storage=storage, progress=False)
    assert entry.storage == entry.meta["storage"] == storage and "storage" in (entry.path / "meta.json").read_text()
    assert entry.coding == entry.meta["coding"] == "planar" and entry.stage_storage == storage
    group = zarr.open_group(entry.path, mode="r")
    stored = [np.asarray(group[name][3]) for name in ("embeddings", "low", "scale")]
    # a reader that predates the coding (plain CRC over the same bytes) finds the slice corrupt, never reads residuals
    assert slice_checksum(*stored) != int(group["checksums"][3]) == slice_checksum(*stored, coding="planar")
    exact = encoder.encode(_percentile_slices(array))
    stored = entry.load()
    assert stored.dtype == np.float32 and stored.shape == exact.shape
    assert _within_quantization_error(stored, exact, QUANTIZED[storage])
    assert not entry.verify()
    float16 = embed_volume(array, encoder, cache=tmp_path / "float16", progress=False)
    assert float16.storage == "float16"
    sizes = {name: EmbeddingCache(tmp_path / name).info()["tiny"]["bytes"] for name in (storage, "float16")}
    assert sizes[storage] < sizes["float16"]
    again = embed_volume(array, encoder, cache=tmp_path / storage, storage=storage, progress=False)
    assert again.computed.size == 0  # a hit, verified against the stored codes' checksums


def test_entries_older_than_the_storage_option_stay_readable(tmp_path, encoder):
    """An entry as written before storages existed (float16, no ``storage`` in meta.json) reads as float16,
    and is a cache hit for a caller asking for a compact storage."""
    import json

    import zarr

    array = _volume(12)
    key = entry_key(array, "tiny", encoder.weights_id, "percentile:0.5,99.5", 2)
    path = tmp_path / "tiny" / key
    values = encoder.encode(_percentile_slices(array)).astype(np.float16)
    group = zarr.open_group(path, mode="w")  # the layout the cache wrote until then
    group.create_array("embeddings", shape=values.shape, chunks=(1, *values.shape[1:]), dtype="float16",
                       fill_value=0.0, compressors=None)[:] = values
    group.create_array("checksums", shape=(8,), chunks=(1,), dtype="uint32", fill_value=0,
                       compressors=None)[:] = [slice_checksum(v) for v in values]
    group.create_array("done", shape=(8,), chunks=(1,), dtype="bool", fill_value=False, compressors=None)[:] = True
    (path / "meta.json").write_text(json.dumps({"format": 1, "key": key, "model": "tiny", "num_slices": 8,
                                                "slice_shape": [30, 40], "axis": 2}))
    old = CachedEmbeddings(path)
    assert old.storage == "float16" and old.complete
    np.testing.assert_array_equal(old.load(), values.astype(np.float32))
    hit = embed_volume(array, encoder, cache=EmbeddingCache(tmp_path, storage="q4"), progress=False)
    assert hit.path == path and hit.computed.size == 0 and hit.storage == "float16"


def test_quantized_entries_with_plain_codes_stay_readable(tmp_path, encoder, monkeypatch):
    """A quantized entry as written before planar coding (codes stored as they are, no ``coding`` or
    ``stage_storage`` in meta.json) reads back the same values as a planar one, and is resumed in its own coding."""
    import fewsam_jax.cache as cache_module

    array = _volume(15)
    planar = embed_volume(array, encoder, cache=tmp_path / "planar", storage="q6", progress=False)
    with monkeypatch.context() as m:  # the meta.json such an entry got
        m.setattr(cache_module, "_storage_meta", lambda storage: {"storage": storage})
        old = embed_volume(array, encoder, slices=[0, 1, 2], cache=tmp_path / "old", storage="q6", progress=False)
    assert "coding" not in old.meta and old.coding == "plain" and old.stage_storage == "float16"
    rest = embed_volume(array, encoder, cache=tmp_path / "old", storage="q6", progress=False)
    assert rest.path == old.path and rest.computed.tolist() == [3, 4, 5, 6, 7] and rest.coding == "plain"
    exact = encoder.encode(_percentile_slices(array))
    assert _within_quantization_error(rest.load(), exact, 6) and _within_quantization_error(planar.load(), exact, 6)
    assert not rest.verify()
    group = zarr.open_group(old.path, mode="r")  # the codes themselves are stored, not their residuals
    np.testing.assert_array_equal(dequantize(np.asarray(group["embeddings"][4]), group["low"][4], group["scale"][4]),
                                  rest.load([4])[0])


@pytest.mark.parametrize("field, value", [("storage", "q3"), ("coding", "wavelet"), ("stage_storage", "int2")])
def test_an_entry_of_a_newer_format_is_refused_and_left_as_it_is(tmp_path, encoder, field, value):
    import json

    array = _volume(16)
    entry = embed_volume(array, encoder, slices=[0, 1], cache=tmp_path, storage="q6", progress=False)
    meta = json.loads((entry.path / "meta.json").read_text())
    (entry.path / "meta.json").write_text(json.dumps({**meta, field: value}))
    before = {p: p.read_bytes() for p in entry.path.rglob("*") if p.is_file()}
    with pytest.raises(CacheFormatError, match=f"does not know .*{value!r}.* left as it is"):
        embed_volume(array, encoder, cache=tmp_path, progress=False)  # would add slices 2-7: refused instead
    with pytest.raises(CacheFormatError):
        copy_entry(embed_volume(array, encoder, slices=[0], cache=tmp_path / "other", progress=False), tmp_path)
    assert {p: p.read_bytes() for p in entry.path.rglob("*") if p.is_file()} == before  # not rebuilt, not written
    assert EmbeddingCache(tmp_path).info()["tiny"]["entries"] == 1  # counted; its slices unknown to this version


def test_a_resumed_entry_keeps_its_storage(tmp_path, encoder):
    array = _volume(13)
    part = embed_volume(array, encoder, slices=[1, 5], cache=tmp_path, storage="q4", progress=False)
    rest = embed_volume(array, encoder, cache=EmbeddingCache(tmp_path, storage="float16"), progress=False)
    assert rest.path == part.path and rest.computed.tolist() == [0, 2, 3, 4, 6, 7]
    assert rest.storage == rest.meta["storage"] == "q4"
    assert _within_quantization_error(rest.load(), encoder.encode(_percentile_slices(array)), 4)


def test_storage_is_chosen_by_argument_cache_or_environment(tmp_path, monkeypatch):
    from fewsam_jax import cli_embed

    assert cli_embed.STORAGES == STORAGES  # the command line's copy (kept to leave jax unimported)
    assert EmbeddingCache(tmp_path).storage == "float16"
    monkeypatch.setenv("FEWSAM_CACHE_STORAGE", "q6")
    assert EmbeddingCache(tmp_path).storage == "q6" and EmbeddingCache(tmp_path, storage="q8").storage == "q8"
    monkeypatch.setenv("FEWSAM_CACHE_STORAGE", "int3")
    with pytest.raises(ValueError, match="unknown cache storage 'int3'"):
        EmbeddingCache(tmp_path)


def test_copy_entry_into_a_compact_cache(tmp_path, encoder):
    array = _volume(14)
    source = embed_volume(array, encoder, slices=[0, 2, 4], cache=tmp_path / "f16", progress=False)
    copy = copy_entry(source, tmp_path / "q8", storage="q8")
    assert copy.key == source.key and copy.storage == "q8" and copy.computed.tolist() == [0, 2, 4]
    assert copy.done().tolist() == source.done().tolist()
    assert _within_quantization_error(copy.load([0, 2, 4]), source.load([0, 2, 4]), 8)
    storage_keys = ("storage", "stage_storage", "coding", "created")
    assert {k: v for k, v in copy.meta.items() if k not in storage_keys} == {
        k: v for k, v in source.meta.items() if k not in storage_keys}
    assert copy_entry(copy, tmp_path / "back", storage="float16").meta.keys() == source.meta.keys()
    full = embed_volume(array, encoder, cache=tmp_path / "f16", progress=False)
    assert copy_entry(full, tmp_path / "q8").computed.tolist() == [1, 3, 5, 6, 7]  # resumed, still q8
    assert CachedEmbeddings(copy.path).storage == "q8"
    with pytest.raises(ValueError, match="another cache root"):
        copy_entry(full, tmp_path / "f16")


def test_cli_embed_storage(tmp_path, model, capsys, monkeypatch):
    import fewsam_jax.weights

    monkeypatch.setattr(fewsam_jax.weights, "load_model", lambda name: {"tiny-test": model}[name])
    run = embed_cli(capsys)
    np.save(tmp_path / "vol.npy", _volume())
    out = run("embed", tmp_path / "vol.npy", "--model", "tiny-test", "--cache", tmp_path / "cache", "--quiet",
              "--storage", "q6")
    assert "8 encoded" in out and "q6 in" in out
