"""Shape-only models (no nnx.Rngs counters), LazyModel, and embed_volume reading a model only when a slice is
missing."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from flax import nnx

from fewsam_jax.cache import embed_volume, prepare_volume
from fewsam_jax.config import get_config
from fewsam_jax.io import get_slices
from fewsam_jax.modeling.sam import Sam
from fewsam_jax.outputs import ChecksumError
from fewsam_jax.preprocess import Intensity
from fewsam_jax.weights import LazyModel, abstract_model, load_model_dir, save_model


def _shapes(module) -> dict:
    return jax.tree.map(lambda x: (x.shape, str(x.dtype)), nnx.state(module))


@pytest.mark.parametrize("preset", ["tiny", "litemedsam"])
def test_abstract_model_has_the_shapes_of_a_randomly_initialised_one(preset):
    config = get_config(preset)
    cheap = abstract_model(config, "some-id")
    reference = nnx.eval_shape(lambda: Sam(config, rngs=nnx.Rngs(0), weights_id="some-id"))
    assert nnx.graphdef(cheap) == nnx.graphdef(reference)
    assert _shapes(cheap) == _shapes(reference)
    assert cheap.weights_id == "some-id" and cheap.config == config


def test_lazy_model_reads_weights_on_first_load_only(tiny_sam, tmp_path):
    save_model(tiny_sam, tmp_path / "m")
    lazy = LazyModel(tmp_path / "m")
    assert lazy.config == tiny_sam.config and lazy.weights_id == tiny_sam.weights_id and lazy.loaded is None
    model = lazy.load()
    assert lazy.load() is model and lazy.loaded is model and "loaded" in repr(lazy)
    for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(tiny_sam))):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError, match="not a fewsam_jax model directory"):
        LazyModel(tmp_path / "nothing")


def test_lazy_model_checks_the_state_when_it_loads(tiny_sam, tmp_path):
    save_model(tiny_sam, tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    name = max(meta["checksums"], key=lambda n: (tmp_path / "m" / n).stat().st_size)
    data = bytearray((tmp_path / "m" / name).read_bytes())
    data[-100] ^= 0x01
    (tmp_path / "m" / name).write_bytes(bytes(data))
    lazy = LazyModel(tmp_path / "m")  # config.json alone: fine
    with pytest.raises(ChecksumError, match=rf"{name} is corrupted"):
        lazy.load()


def test_a_state_that_is_not_its_configs_model_is_named_on_load(tiny_sam, tmp_path):
    """config.json naming another architecture than the state holds: the folder and the model named, one line
    of Orbax's message (not its tree dump)."""
    save_model(tiny_sam, tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**meta, "model": "litemedsam"}))
    with pytest.raises(ChecksumError, match=r"m/state: cannot restore the litemedsam model \(.*\); does config.json "
                                            "match") as err:
        load_model_dir(tmp_path / "m")
    assert len(str(err.value).splitlines()) == 1


def test_embed_volume_reads_a_lazy_model_only_for_missing_slices(tiny_sam, tmp_path):
    save_model(tiny_sam, tmp_path / "m")
    volume = np.random.default_rng(0).normal(100.0, 30.0, (24, 20, 4)).astype(np.float32)
    direct = embed_volume(volume, tiny_sam, cache=tmp_path / "direct", progress=False)
    lazy = LazyModel(tmp_path / "m")
    entry = embed_volume(volume, lazy, cache=tmp_path / "cache", slices=[1, 2], progress=False)
    assert lazy.loaded is not None and list(entry.computed) == [1, 2]
    assert entry.path.name == direct.path.name  # the same key as with the loaded model
    hit = LazyModel(tmp_path / "m")
    assert embed_volume(volume, hit, cache=tmp_path / "cache", slices=[2], progress=False).computed.size == 0
    assert hit.loaded is None  # a cache hit never read the weights
    rest = embed_volume(volume, hit, cache=tmp_path / "cache", progress=False)
    assert list(rest.computed) == [0, 3] and hit.loaded is not None
    np.testing.assert_array_equal(rest.load(), direct.load())
    with pytest.raises(ValueError, match="dtype: expected one of"):
        embed_volume(volume, LazyModel(tmp_path / "m"), cache=tmp_path / "cache", dtype="float64")


def test_a_prepared_volume_embeds_as_the_volume_does(tiny_sam, tmp_path):
    volume = np.random.default_rng(1).normal(100.0, 30.0, (24, 20, 3)).astype(np.float32)
    prepared = prepare_volume(volume, tiny_sam, axis=1, intensity="minmax")
    np.testing.assert_array_equal(prepared.slices, get_slices(Intensity.parse("minmax").apply(volume), 1))
    a = embed_volume(prepared, tiny_sam, axis=1, intensity="minmax", cache=tmp_path / "a", progress=False)
    b = embed_volume(volume, tiny_sam, axis=1, intensity="minmax", cache=tmp_path / "b", progress=False)
    assert a.path.name == b.path.name
    np.testing.assert_array_equal(a.load(), b.load())
    with pytest.raises(ValueError, match="prepare it with the same settings"):
        embed_volume(prepared, tiny_sam, axis=2, intensity="minmax", cache=tmp_path / "a", progress=False)
