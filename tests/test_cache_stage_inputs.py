"""Last-stage inputs in the embedding cache: added to old entries without touching their embeddings, resumed
slice by slice, verified and repaired like the embeddings (a small random staged SAM)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from embed_worker import tiny_model
from flax import nnx
from helpers import tiny_staged_sam

from fewsam_jax.cache import CachedEmbeddings, CacheWarning, copy_entry, embed_volume
from fewsam_jax.encode import SliceEncoder
from fewsam_jax.io import get_slices
from fewsam_jax.modeling.encoder_stage import last_stage

FP16 = {"rtol": 2**-9, "atol": 1e-4}  # two encodings of a slice agree to a float16 ulp or so (batching)


@pytest.fixture(scope="module")
def sam():
    return tiny_staged_sam()


def _volume(seed=0, shape=(20, 16, 6)):
    return np.random.default_rng(seed).normal(100.0, 30.0, shape).astype(np.float32)


def _files(path):
    """{relative path: bytes} of an entry's embedding arrays and meta.json."""
    names = ("embeddings", "done", "checksums", "meta.json")
    return {p.relative_to(path): p.read_bytes() for name in names for p in [path / name, *(path / name).rglob("*")]
            if p.is_file()}


@pytest.mark.slow  # encodes with a staged tiny SAM, several caches
def test_an_old_entry_gets_stage_inputs_and_keeps_its_embeddings(tmp_path, sam):
    array = _volume()
    old = embed_volume(array, sam, cache=tmp_path, batch_size=2, progress=False)
    assert not old.has_stage_inputs and old.stage_input_shape is None and not old.stage_done().any()
    with pytest.raises(ValueError, match=r"stage inputs of slices \[0\] are not in the cache"):
        old.load_stage_inputs([0])
    before = _files(old.path)
    added = embed_volume(array, sam, cache=tmp_path, batch_size=2, stage_inputs=True, progress=False)
    assert added.path == old.path and added.computed.size == 0 and added.stage_computed.tolist() == list(range(6))
    assert _files(old.path) == before  # the embeddings were neither recomputed nor rewritten
    stage = added.load_stage_inputs()
    assert stage.shape == (6, 8, 8, 32) and stage.dtype == np.float32 and added.stage_input_shape == (8, 8, 32)
    trunk_only = SliceEncoder(sam, batch_size=2, output="stage_inputs")
    slices = np.concatenate([b for _, b in trunk_only.iter_batches(get_slices(_percentile(array), 2), False)])
    np.testing.assert_array_equal(stage, slices.astype(np.float16))
    # the frozen last stage on the stored inputs gives the stored embeddings (the adapted stage's starting point)
    np.testing.assert_allclose(nnx.jit(last_stage)(sam.image_encoder, stage), added.load(), rtol=0.02, atol=0.02)
    hit = embed_volume(array, sam, cache=tmp_path, batch_size=2, stage_inputs=True, progress=False)
    assert hit.computed.size == hit.stage_computed.size == 0


def _percentile(array):
    from fewsam_jax.preprocess import Intensity

    return Intensity.parse("percentile").apply(array)


@pytest.mark.slow  # encodes with a staged tiny SAM, several caches
def test_stage_inputs_resume_slice_by_slice_and_are_repaired(tmp_path, sam):
    array = _volume(1)
    clean = embed_volume(array, sam, cache=tmp_path / "clean", stage_inputs=True, progress=False)
    assert clean.computed.tolist() == clean.stage_computed.tolist() == list(range(6))  # one pass for both
    plain = embed_volume(array, sam, cache=tmp_path / "plain", progress=False)
    np.testing.assert_allclose(clean.load(), plain.load(), **FP16)
    entry = embed_volume(array, sam, cache=tmp_path / "torn", stage_inputs=True, progress=False)
    writable = CachedEmbeddings(entry.path, _writable=True)
    writable._stage_done.oindex[[1, 4]] = False  # an interrupted run: chunks written, flags not set yet
    writable._stage_inputs.oindex[[1, 4]] = np.full((2, 8, 8, 32), 7.0, np.float16)
    writable._done[3] = False  # its embedding missing, its stage input stored
    chunk = next(p for p in (entry.path / "stage_inputs").rglob("*") if p.is_file() and p.parts[-4:] == ("0",) * 4)
    chunk.write_bytes(chunk.read_bytes()[:-8] + bytes(8))  # slice 0's stage input corrupted on disk
    with pytest.warns(CacheWarning, match=r"1 stored stage input\(s\) failed verification \(slice 0: checksum"):
        rerun = embed_volume(array, sam, cache=tmp_path / "torn", stage_inputs=True, progress=False)
    assert rerun.computed.tolist() == [3] and rerun.stage_computed.tolist() == [0, 1, 4]
    assert rerun.repaired.tolist() == [0]
    np.testing.assert_allclose(rerun.load(), clean.load(), **FP16)
    np.testing.assert_allclose(rerun.load_stage_inputs(), clean.load_stage_inputs(), **FP16)
    # arrays left half-made (stopped before stage_done was created) are made again
    shutil.rmtree(entry.path / "stage_done")
    assert not CachedEmbeddings(entry.path).has_stage_inputs
    again = embed_volume(array, sam, cache=tmp_path / "torn", stage_inputs=True, progress=False)
    assert again.computed.size == 0 and again.stage_computed.tolist() == list(range(6))


def test_stage_inputs_need_a_staged_encoder(tmp_path, sam):
    with pytest.raises(ValueError, match="stage_inputs=True: needs an image encoder with stages .* 'tiny'"):
        embed_volume(_volume(), tiny_model(), cache=tmp_path, stage_inputs=True, progress=False)
    with pytest.raises(TypeError, match="not a SliceEncoder"):
        embed_volume(_volume(), SliceEncoder(sam), cache=tmp_path, stage_inputs=True, progress=False)
    assert not any(tmp_path.iterdir())  # refused before anything was written


@pytest.mark.slow  # encodes with a staged tiny SAM, several caches
def test_a_compact_entry_quantizes_its_stage_inputs_and_copies_carry_them(tmp_path, sam):
    """A quantized entry stores its stage inputs in its own storage (within half a step of the float16 ones,
    verified and repaired like the embeddings); copy_entry carries stored stage inputs into the copy's storage."""
    array = _volume(2)
    float16 = embed_volume(array, sam, cache=tmp_path / "f16", stage_inputs=True, progress=False)
    compact = embed_volume(array, sam, cache=tmp_path / "q5", storage="q5", stage_inputs=True, progress=False)
    assert compact.stage_storage == "q5" and compact.meta["stage_storage"] == "q5"
    exact = float16.load_stage_inputs()
    half_step = (exact.max(axis=(1, 2)) - exact.min(axis=(1, 2))) / 31 / 2  # (slices, D)
    error = np.abs(compact.load_stage_inputs() - exact)
    assert np.all(error <= half_step[:, None, None, :] * 1.01 + 2e-3 * np.abs(exact).max())
    writable = CachedEmbeddings(compact.path, _writable=True)
    writable._stage_scale[2] = writable._stage_scale[2] * 2  # slice 2's stage offsets damaged
    assert writable.verify(stage=True) == {2: "checksum mismatch (corrupt or missing chunk)"}
    with pytest.warns(CacheWarning, match=r"stage input\(s\) failed verification \(slice 2"):
        repaired = embed_volume(array, sam, cache=tmp_path / "q5", stage_inputs=True, progress=False)
    assert repaired.stage_computed.tolist() == [2] and not repaired.verify(stage=True)
    copy = copy_entry(float16, tmp_path / "copy", storage="q8")
    assert copy.stage_computed.tolist() == list(range(6)) and copy.stage_storage == "q8"
    assert np.abs(copy.load_stage_inputs() - exact).max() <= half_step.max() * 31 / 255 * 1.01 + 1e-3
    back = copy_entry(compact, tmp_path / "back", storage="float16")
    np.testing.assert_array_equal(back.load_stage_inputs(), compact.load_stage_inputs().astype(np.float16))
    assert copy_entry(compact, tmp_path / "back").stage_computed.size == 0  # resumed: nothing left to copy


@pytest.mark.slow  # encodes with a staged tiny SAM, several caches
def test_stage_inputs_keep_the_format_they_were_stored_in(tmp_path, sam, monkeypatch):
    """Stage inputs are read in the format their arrays have: float16 ones added to a newer quantized entry (as an
    older fewsam adds them) read as float16, and a quantized entry older than the option gets float16 ones."""
    import zarr

    import fewsam_jax.cache as cache_module
    from fewsam_jax.cache import slice_checksum

    array = _volume(3)
    exact = embed_volume(array, sam, cache=tmp_path / "f16", stage_inputs=True, progress=False).load_stage_inputs()
    entry = embed_volume(array, sam, cache=tmp_path / "new", storage="q6", progress=False)
    group = zarr.open_group(entry.path, mode="r+")  # the arrays an older fewsam makes, float16, no offsets
    values = exact.astype(np.float16)
    group.create_array("stage_inputs", shape=values.shape, chunks=(1, *values.shape[1:]), dtype="float16",
                       fill_value=0.0, compressors=None)[:] = values
    group.create_array("stage_checksums", shape=(6,), chunks=(1,), dtype="uint32", fill_value=0,
                       compressors=None)[:] = [slice_checksum(v) for v in values]
    group.create_array("stage_done", shape=(6,), chunks=(1,), dtype="bool", fill_value=False,
                       compressors=None)[:] = True
    mixed = CachedEmbeddings(entry.path)
    assert mixed.storage == "q6" and mixed.stage_storage == "float16" and not mixed.verify(stage=True)
    np.testing.assert_array_equal(mixed.load_stage_inputs(), values.astype(np.float32))
    hit = embed_volume(array, sam, cache=tmp_path / "new", stage_inputs=True, progress=False)
    assert hit.computed.size == hit.stage_computed.size == 0  # neither rebuilt nor re-encoded
    with monkeypatch.context() as m:  # a quantized entry as written before stage inputs could be quantized
        m.setattr(cache_module, "_storage_meta", lambda storage: {"storage": storage})
        old = embed_volume(array, sam, cache=tmp_path / "old", storage="q6", progress=False)
    added = embed_volume(array, sam, cache=tmp_path / "old", stage_inputs=True, progress=False)
    assert added.path == old.path and added.stage_storage == "float16"
    assert added.stage_computed.tolist() == list(range(6))
    assert zarr.open_group(old.path, mode="r")["stage_inputs"].dtype == np.float16


@pytest.mark.slow  # encodes with a staged tiny SAM
def test_copy_entry_leaves_out_a_damaged_stage_input(tmp_path, sam):
    array = _volume(4)
    source = embed_volume(array, sam, cache=tmp_path / "f16", stage_inputs=True, progress=False)
    CachedEmbeddings(source.path, _writable=True)._stage_inputs[1] = np.full((8, 8, 32), 3.0, np.float16)
    with pytest.warns(CacheWarning, match=r"stage inputs of slices \[1\] fail verification and are not copied"):
        copy = copy_entry(source, tmp_path / "q5", storage="q5")
    assert copy.computed.tolist() == list(range(6)) and copy.stage_computed.tolist() == [0, 2, 3, 4, 5]
    assert copy.stage_done().tolist() == [True, False, True, True, True, True]
