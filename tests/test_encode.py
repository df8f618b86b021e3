"""SliceEncoder: batched, jit-compiled, sharded slice encoding (tiny random SAM, CPU)."""

from __future__ import annotations

import numpy as np
import pytest

from fewsam_jax.encode import SliceEncoder
from fewsam_jax.predictor import SamPredictor

from embed_worker import results, start, tiny_model  # tests/ is on sys.path (pyproject: pythonpath)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def encoder(model):
    return SliceEncoder(model, batch_size=4)


def _slices(n, h=30, w=40, seed=0):
    return np.random.default_rng(seed).random((n, h, w), dtype=np.float32)


def _close(actual, expected, rtol=1e-5):
    err = np.abs(actual - expected).max() / np.abs(expected).max()
    assert err <= rtol, f"max error {err:.2e} relative to max |expected| (allowed {rtol:.0e})"


@pytest.mark.parametrize("kind", ["grey_float", "rgb_uint8"])
def test_matches_predictor(model, encoder, kind):
    """A batch entry equals SamPredictor's single-image embedding (same preprocessing and encoder)."""
    slices = _slices(3)
    if kind == "rgb_uint8":
        slices = np.round(np.stack([slices, slices[::-1], slices**2], -1) * 255).astype(np.uint8)
    embeddings = encoder.encode(slices)
    assert embeddings.shape == (3, 8, 8, 32) and embeddings.dtype == np.float32
    predictor = SamPredictor(model)
    for i in range(3):
        predictor.set_image(slices[i])
        _close(embeddings[i], np.asarray(predictor.embedding))


def test_no_recompilation(model):
    """One trace per slice size: many batches, a padded last batch, other volumes of that size."""
    encoder = SliceEncoder(model, batch_size=4)
    first = encoder.encode(_slices(10))  # 3 batches, the last padded with 2 zero slices
    encoder.encode(_slices(4, seed=1))
    starts = [start for start, _ in encoder.iter_batches(_slices(7, seed=2), progress=False)]
    assert starts == [0, 4]
    assert encoder.traced_shapes == ((4, 30, 40, 1),)
    encoder.encode(_slices(2, h=20, w=20))  # a new slice size compiles once more
    assert len(encoder.traced_shapes) == 2
    _close(encoder.encode(_slices(10)[7:]), first[7:])  # padding does not leak into real slices


def test_batch_size_does_not_change_results(model, encoder):
    slices = _slices(5)
    _close(SliceEncoder(model, batch_size=1).encode(slices), encoder.encode(slices))


def test_bfloat16(model, encoder):
    slices = _slices(2)
    low = SliceEncoder(model, batch_size=2, dtype="bfloat16").encode(slices)
    assert low.dtype == np.float32
    _close(low, encoder.encode(slices), rtol=0.1)


@pytest.mark.parametrize(
    "slices, message",
    [
        (np.full((2, 8, 8), np.nan, np.float32), "NaN or Inf"),
        (np.full((2, 8, 8), 2.0, np.float32), r"must be in \[0, 1\]"),
        (np.zeros((8, 8), np.float32), r"expected \(N, H, W\)"),
        (np.zeros((2, 8, 8, 2), np.float32), r"expected \(N, H, W\)"),
        (np.zeros((2, 0, 8), np.float32), "empty"),
        (np.zeros((2, 8, 8), np.int32), "dtype"),
    ],
)
def test_bad_slices(encoder, slices, message):
    with pytest.raises(ValueError, match=message):
        encoder.encode(slices)


def test_bad_settings(model):
    with pytest.raises(ValueError, match="dtype"):
        SliceEncoder(model, dtype="float16")
    with pytest.raises(ValueError, match="batch_size"):
        SliceEncoder(model, batch_size=0)


@pytest.mark.slow  # a worker subprocess on 4 emulated devices
def test_four_devices_match_one(tmp_path, encoder):
    """Data-parallel over 4 fake CPU devices (batch 3 rounds up to 4) == one device."""
    slices = _slices(9)
    np.save(tmp_path / "slices.npy", slices)
    flags = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    proc = start("encode", tmp_path / "slices.npy", tmp_path / "out.npy", "--batch-size", "3", jax_cache=tmp_path / "jax-cache", **flags)
    assert results(proc) == [{"devices": 4, "batch_size": 4, "traces": 1}]
    _close(np.load(tmp_path / "out.npy"), encoder.encode(slices))
