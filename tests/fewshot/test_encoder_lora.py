"""The decoder option ``encoder_lora_rank``: LoRA on the encoder's last stage, trained with the decoder on cached
stage inputs, segmenting from them, saved and reloaded; a small random staged SAM on synthetic volumes."""

from __future__ import annotations

import json

import jax
import nibabel as nib
import numpy as np
import pytest
from flax import nnx
from helpers import TINY_STAGED, tiny_staged_config, tiny_staged_sam, untrained_segmenter

from fewsam_jax.config import PRESETS
from fewsam_jax.fewshot import DecoderConfig, FewShotSegmenter, InferenceConfig, TrainConfig
from fewsam_jax.fewshot.segmenter import DecoderFileError, read_decoder_meta
from fewsam_jax.fewshot.train import TRAINABLE, trainable
from fewsam_jax.io import load_volume

CONFIG = DecoderConfig(slice_tokens=2, encoder_lora_rank=2)
# 4 x 4-cell crops of the 8 x 8 grid: the stage runs on (warped) crops, as on LiteMedSAM's 32 of 64
TRAINING = TrainConfig(steps=3, train_crop=4)


def write_volume(folder, name, seed, shape=(24, 20, 6)):
    """A bright disc (class 1) moving through the slices, a dimmer bar (class 2) on some, and noise."""
    rng = np.random.default_rng(seed)
    x, y = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.uint8)
    for z in range(shape[2]):
        labels[..., z][(x - 12 - 2 * np.sin(z + seed)) ** 2 + (y - 10) ** 2 < 25] = 1
        labels[..., z][(np.abs(x - 3) < 2) & (np.abs(y - 10) < 6) & (z % 2 == 0)] = 2
    image = rng.normal(0.1, 0.03, shape).astype(np.float32) + 0.8 * (labels == 1) + 0.45 * (labels == 2)
    for array, suffix in ((image, ""), (labels, "_seg")):
        nib.save(nib.Nifti1Image(array, np.diag([1.0, 1.0, 2.0, 1.0])), folder / f"{name}{suffix}.nii.gz")
    return folder / f"{name}.nii.gz"


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """Decoders trained twice with the option (same seed) on one support volume; ``b``, the test volume. The staged SAM's preset is known to get_config while the module runs (decoders load)."""
    folder = tmp_path_factory.mktemp("encoder-lora")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(PRESETS, TINY_STAGED, tiny_staged_config)
        sam = tiny_staged_sam()
        write_volume(folder, "a", 0)
        manifest = folder / "manifest.json"
        manifest.write_text(json.dumps({"classes": {"1": "disc", "2": "bar"}, "axis": 2, "support": [
            {"image": "a.nii.gz", "labels": "a_seg.nii.gz", "slices": [0, 1, 2, 4, 5]}]}))
        train = lambda config=CONFIG, training=TRAINING, **kw: FewShotSegmenter.train(
            manifest, sam, config, training, cache=folder / "cache", progress=False, **kw)
        yield {"sam": sam, "cache": folder / "cache", "volume": load_volume(write_volume(folder, "b", 1)),
               "train": train, "segmenters": [train(), train()]}


def predictions(segmenter, case):
    return segmenter.predict_volume(case["volume"], cache=case["cache"], progress=False)


@pytest.mark.slow  # the module's `case`: two decoder trainings with an adapted stage
def test_adapters_train_with_the_decoder_deterministically(case):
    first, again = case["segmenters"]
    logits, presence = predictions(first, case)
    assert logits.shape == (6, 2, 20, 24) and presence.shape == (6, 2)
    for a, b in zip((logits, presence), predictions(again, case)):
        np.testing.assert_array_equal(a, b)
    stage = first.decoder.encoder_stage
    lora = nnx.state(stage, nnx.LoRAParam)
    assert len(jax.tree_util.tree_leaves(lora)) == 4  # A and B of qkv and proj in the one block
    assert any(np.abs(b).max() > 0 for b in jax.tree_util.tree_leaves(nnx.state(stage, nnx.LoRAParam)))  # B moved
    frozen = nnx.state(stage.layer.blocks[0].mlp)  # not adapted: exactly the encoder's
    for a, b in zip(jax.tree_util.tree_leaves(frozen), jax.tree_util.tree_leaves(
            nnx.state(case["sam"].image_encoder.layers[-1].blocks[0].mlp))):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # the module's `case`: two decoder trainings with an adapted stage
def test_a_saved_decoder_reloads_to_identical_predictions(case, tmp_path):
    segmenter = case["segmenters"][0]
    segmenter.save(tmp_path / "decoder")
    saved = json.loads((tmp_path / "decoder" / "fewshot.json").read_text())["decoder"]
    assert saved["encoder_lora_rank"] == 2 and saved["encoder_lora_targets"] == ["qkv", "proj"]
    loaded = FewShotSegmenter.load(tmp_path / "decoder", sam=case["sam"])
    assert loaded.decoder.config == CONFIG
    for a, b in zip(predictions(segmenter, case), predictions(loaded, case)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # the module's `case`, two more decoders
def test_the_default_adapts_a_staged_encoder_and_older_decoders_load_frozen(case, tmp_path):
    """``encoder_lora_rank="auto"`` (the default) trains the stage on a staged encoder and saves the number; a
    decoder folder saved before the option (no key) is a frozen-encoder decoder and loads as one, whatever the
    default has become."""
    steps0 = TRAINING.replace(steps=0)
    auto = case["train"](config=DecoderConfig(slice_tokens=2), training=steps0)
    assert auto.decoder.config.encoder_lora_rank == 4 and auto.decoder.encoder_stage is not None
    plain = case["train"](config=DecoderConfig.frozen_encoder().replace(slice_tokens=2), training=steps0)
    plain.save(tmp_path / "decoder")
    path = tmp_path / "decoder" / "fewshot.json"
    meta = json.loads(path.read_text())
    assert meta["decoder"]["encoder_lora_rank"] == 0
    del meta["decoder"]["encoder_lora_rank"], meta["decoder"]["encoder_lora_targets"]  # as saved before the option
    path.write_text(json.dumps(meta))
    loaded = FewShotSegmenter.load(tmp_path / "decoder", sam=case["sam"])
    assert loaded.decoder.config.encoder_lora_rank == 0 and loaded.decoder.encoder_stage is None
    for a, b in zip(predictions(plain, case), predictions(loaded, case)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # the module's `case`, two more decoders
def test_untrained_adapters_segment_as_the_frozen_encoder(case):
    """Zero steps: the adapted decoder reads the stage's output on the cached stage inputs where the plain one
    reads the cached embeddings, so both predict alike (to the float16 rounding of what is cached)."""
    untrained = TRAINING.replace(steps=0)
    no_calibration = InferenceConfig(calibrate_threshold=False)
    adapted = case["train"](training=untrained, inference=no_calibration)
    plain = case["train"](config=CONFIG.replace(encoder_lora_rank=0), training=untrained, inference=no_calibration)
    assert plain.decoder.encoder_stage is None and trainable(plain.decoder) is TRAINABLE
    for a, b in zip(predictions(adapted, case), predictions(plain, case)):
        np.testing.assert_allclose(a, b, rtol=0.02, atol=0.02)


def test_the_option_needs_a_staged_encoder(tiny_sam, tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"classes": {"1": "x"}, "axis": 2, "support": [
        {"image": "a.nii.gz", "labels": "a_seg.nii.gz", "slices": [0]}]}))
    write_volume(tmp_path, "a", 0)
    with pytest.raises(ValueError, match="encoder_lora_rank: needs an image encoder with stages .* model 'tiny'"):
        FewShotSegmenter.train(tmp_path / "manifest.json", tiny_sam, CONFIG, cache=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # refused before embedding anything
    untrained_segmenter(tiny_sam, {1: "x"}).save(tmp_path / "decoder")
    path = tmp_path / "decoder" / "fewshot.json"
    meta = json.loads(path.read_text())
    assert read_decoder_meta(tmp_path / "decoder")["decoder"].encoder_lora_rank == 0
    del meta["decoder"]["encoder_lora_rank"], meta["decoder"]["encoder_lora_targets"]  # as saved before the option
    path.write_text(json.dumps(meta))
    assert read_decoder_meta(tmp_path / "decoder")["decoder"] == DecoderConfig.frozen_encoder()
    meta["decoder"]["encoder_lora_rank"] = 2
    path.write_text(json.dumps(meta))
    with pytest.raises(DecoderFileError, match="'decoder.encoder_lora_rank' is 2, but model 'tiny' has no staged"):
        read_decoder_meta(tmp_path / "decoder")
