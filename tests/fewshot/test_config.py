"""The few-shot configs: defaults, presets, checks and the routing of ``key=value`` options."""

from __future__ import annotations

import dataclasses
import json

import pytest

from fewsam_jax.fewshot.config import (
    AugmentConfig,
    DecoderConfig,
    InferenceConfig,
    TrainConfig,
    configs_from_overrides,
    option_names,
)


def test_every_config_is_frozen_and_each_option_lives_in_one_place():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DecoderConfig().slice_tokens = 3
    names = [f.name for cls in (DecoderConfig, TrainConfig, InferenceConfig, AugmentConfig)
             for f in dataclasses.fields(cls)]
    assert len(names) == len(set(names))
    assert set(option_names()) >= {"region_box", "steps", "seed", "presence_threshold", "augment.copies"}
    assert "similarity_prior" not in names and "trainable" not in names


def test_presets():
    assert DecoderConfig.default() == DecoderConfig() and DecoderConfig().image_features > 0
    assert DecoderConfig.sam_only() == DecoderConfig(image_features=0, encoder_lora_rank=0)
    assert DecoderConfig.frozen_encoder() == DecoderConfig(encoder_lora_rank=0)
    assert DecoderConfig().num_tokens == 2 + 2 + 4 and DecoderConfig(region_box=False, slice_tokens=1).num_tokens == 3
    assert DecoderConfig(image_context=2).image_channels == 5


@pytest.mark.parametrize("make, message", [
    (lambda: DecoderConfig(class_decoding="sideways"), "class_decoding: expected 'joint' or 'separate', got 'sideways'"),
    (lambda: DecoderConfig(slice_tokens=-1), "slice_tokens: expected >= 0"),
    (lambda: DecoderConfig(encoder_lora_rank=-1), "encoder_lora_rank: expected an integer >= 0 or 'auto', got -1"),
    (lambda: DecoderConfig(encoder_lora_rank=True), "encoder_lora_rank: expected an integer >= 0 or 'auto', got True"),
    (lambda: DecoderConfig(encoder_lora_rank="4"), "encoder_lora_rank: expected an integer >= 0 or 'auto', got '4'"),
    (lambda: DecoderConfig(encoder_lora_targets=("qkv", "query")),
     r"encoder_lora_targets: expected distinct names from \('qkv', 'proj', 'fc1', 'fc2'\), got \('qkv', 'query'\)"),
    (lambda: DecoderConfig(encoder_lora_targets=()), "encoder_lora_targets: expected distinct names"),
    (lambda: DecoderConfig(encoder_lora_targets="qkv+qkv"), "encoder_lora_targets: expected distinct names"),
    (lambda: TrainConfig(episode_holdout="case"), "episode_holdout: expected 'slice' or 'volume', got 'case'"),
    (lambda: TrainConfig(episode_fraction=0.0), r"episode_fraction: expected a value in \(0, 1\]"),
    (lambda: TrainConfig(warp_scale=1.0), "warp_rotation_deg / warp_scale / image_jitter"),
    (lambda: TrainConfig(batch_slices=0), "steps / batch_slices: expected >= 0 / >= 1"),
    (lambda: TrainConfig(augment={"copies": 1}), "augment: expected an AugmentConfig, got dict"),
    (lambda: AugmentConfig(copies=-1), "copies / rotation_deg / scale / gamma"),
    (lambda: InferenceConfig(presence_threshold=1.5), r"presence_threshold: expected a value in \[0, 1\]"),
    (lambda: InferenceConfig(threshold_offset=12.0), r"threshold_offset: expected a number of logits in \[-10, 10\]"),
    (lambda: InferenceConfig(threshold_offset="low"), "threshold_offset: expected a number of logits"),
])
def test_configs_name_the_field_and_what_was_expected(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_overrides_go_to_the_config_that_owns_each_key():
    decoder, training, inference = configs_from_overrides(
        {"image_frame": "embedding", "steps": 1200, "seed": 3, "augment.copies": 2, "presence_threshold": 0.4},
        training=TrainConfig(seed=1, learning_rate=1e-4))
    assert decoder == DecoderConfig(image_frame="embedding")
    assert training == TrainConfig(steps=1200, seed=3, learning_rate=1e-4, augment=AugmentConfig(copies=2))
    assert inference == InferenceConfig(presence_threshold=0.4)
    assert configs_from_overrides({}) == (DecoderConfig(), TrainConfig(), InferenceConfig())
    with pytest.raises(ValueError, match="unknown option 'similarity_prior'; expected one of class_decoding, "):
        configs_from_overrides({"similarity_prior": True})
    with pytest.raises(ValueError, match="unknown option 'augment'"):
        configs_from_overrides({"augment": 2})
    with pytest.raises(ValueError, match="image_context needs the image branch"):
        configs_from_overrides({"image_features": 0, "image_context": 1})


def test_encoder_lora_is_auto_by_default_and_its_targets_come_as_lists_or_strings(tmp_path):
    from bench import fewshot
    from fewsam_jax.config import litemedsam, tiny
    from fewsam_jax.fewshot.config import AUTO_LORA_RANK
    from fewsam_jax.fewshot.segmenter import _config_from_json

    assert DecoderConfig().encoder_lora_rank == "auto" and DecoderConfig().encoder_lora_targets == ("qkv", "proj")
    # "auto": adapted on a staged encoder (LiteMedSAM's TinyViT), off on SAM's ViT; a number is kept as given
    assert DecoderConfig().for_model(litemedsam()).encoder_lora_rank == AUTO_LORA_RANK == 4
    assert DecoderConfig().for_model(tiny()).encoder_lora_rank == 0
    assert DecoderConfig(encoder_lora_rank=2).for_model(litemedsam()).encoder_lora_rank == 2
    assert DecoderConfig.frozen_encoder().for_model(litemedsam()).encoder_lora_rank == 0
    assert DecoderConfig.sam_only().for_model(litemedsam()) == DecoderConfig(image_features=0, encoder_lora_rank=0)
    _, overrides = fewshot.parse_variant("lora:encoder_lora_rank=4,encoder_lora_targets=qkv+fc1")
    decoder, _, _ = configs_from_overrides(overrides)
    assert decoder == DecoderConfig(encoder_lora_rank=4, encoder_lora_targets=("qkv", "fc1"))
    assert configs_from_overrides(fewshot.parse_variant("a:encoder_lora_rank=auto")[1])[0] == DecoderConfig()
    assert DecoderConfig(encoder_lora_targets=["proj"]).encoder_lora_targets == ("proj",)
    # the JSON of a saved decoder (tuples as lists) reads back as the same config (older JSON, without the keys,
    # reads as the option off: read_decoder_meta, tests/fewshot/test_encoder_lora.py)
    saved = json.loads(json.dumps(dataclasses.asdict(decoder)))
    assert _config_from_json(tmp_path, "decoder", DecoderConfig, saved) == decoder


def test_the_benchmark_refuses_an_unknown_variant_key(monkeypatch, tmp_path):
    from bench import fewshot

    assert fewshot.parse_variant("cell:image_frame=embedding,batch_slices=4,image_learning_rate=None") == (
        "cell", {"image_frame": "embedding", "batch_slices": 4, "image_learning_rate": None})
    monkeypatch.setattr("sys.argv", ["bench.fewshot", "--variant", "x:similarity_prior=true", "--data", str(tmp_path)])
    with pytest.raises(SystemExit, match="--variant x:similarity_prior=true: unknown option 'similarity_prior'"):
        fewshot.main()


def test_train_says_which_config_went_where(tmp_path):
    from fewsam_jax.fewshot import FewShotSegmenter

    with pytest.raises(TypeError, match="config: expected a DecoderConfig, got TrainConfig"):
        FewShotSegmenter.train(tmp_path / "manifest.json", config=TrainConfig())
    with pytest.raises(ValueError, match="image_learning_rate: expected None without the image branch"):
        FewShotSegmenter.train(tmp_path / "manifest.json", config=DecoderConfig.sam_only(),
                               training=TrainConfig(image_learning_rate=1e-3))
