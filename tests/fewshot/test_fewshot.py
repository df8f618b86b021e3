"""The few-shot decoder end to end on synthetic volumes with the tiny random SAM.

Shapes are easy to learn: a bright ellipse (class 1) and a mid-grey bar (class 2, absent from
some slices) on a dark, noisy background, both moving from slice to slice.
"""

from __future__ import annotations

import dataclasses
import json
import logging

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest
from flax import nnx
from helpers import save_legacy, synthetic_case, synthetic_training_configs, write_case

from fewsam_jax import metrics
from fewsam_jax.fewshot import AugmentConfig, DecoderConfig, FewShotSegmenter, SupportSet, TrainConfig
from fewsam_jax.fewshot.infer import calibrate_thresholds, labels_from_logits, postprocess_3d
from fewsam_jax.fewshot.prompts import IGNORE
from fewsam_jax.io import get_slices, load_volume

DECODER, TRAINING = synthetic_training_configs()


@pytest.fixture(scope="module")
def trained(tiny_sam, tmp_path_factory):
    """Trained (150 steps) and untrained decoders on two support volumes of different slice sizes; the test
    volume is flipped in two axes."""
    training = TRAINING.replace(augment=AugmentConfig(copies=1))
    case = synthetic_case(tiny_sam, tmp_path_factory.mktemp("fewshot"),
                          {"a": dict(seed=0, slices=[0, 2, 4, 6, 9]),
                           "c": dict(seed=2, shape=(44, 40, 8), slices=[1, 3])},  # support volumes may differ in size
                          dict(seed=1, affine=np.diag([-1.5, -1.0, 2.0, 1.0])), training=training)
    untrained = FewShotSegmenter.train(case["folder"] / "manifest.json", sam=tiny_sam, config=DECODER,
                                       training=training.replace(steps=0), cache=case["cache"], progress=False)
    return dict(case, segmenter=case["segmenters"][0], untrained=untrained)


def dice_per_class(pred, truth):
    return [metrics.dice(pred == c, truth == c) for c in (1, 2)]


@pytest.mark.slow  # the module's `trained` decoder: an end-to-end training run
def test_training_lowers_the_loss(trained):
    info = trained["segmenter"].info
    assert info["loss_last"] < 0.7 * info["loss_first"], info


@pytest.mark.slow  # the module's `trained` decoder: an end-to-end training run
def test_trained_beats_untrained(trained):
    truth = np.rint(load_volume(trained["test_labels"]).array)
    scores = {}
    for name in ("segmenter", "untrained"):
        pred = trained[name].segment(trained["test_image"], cache=trained["cache"], progress=False)
        scores[name] = dice_per_class(pred, truth)
    assert np.mean(scores["segmenter"]) > np.mean(scores["untrained"]) + 0.2, scores
    assert scores["segmenter"][0] > 0.6, scores


@pytest.mark.slow  # the module's `trained` decoder: an end-to-end training run
def test_absent_class_suppressed_on_empty_slices(trained):
    segmenter = trained["segmenter"]
    volume = load_volume(trained["test_image"])
    truth = get_slices(np.rint(load_volume(trained["test_labels"]).array).astype(int), 2)
    _, presence = segmenter.predict_volume(volume, cache=trained["cache"], progress=False)
    has_bar = (truth == 2).any(axis=(1, 2))
    threshold = 0.5  # the presence head, read with the gate decoders had before the default became 0 (no gate)
    suppressed = presence[~has_bar, 1] < threshold
    assert suppressed.mean() >= 0.5, (presence[:, 1], has_bar)
    assert presence[has_bar, 1].mean() > presence[~has_bar, 1].mean() + 0.2, (presence[:, 1], has_bar)
    assert (presence[:, 0] > threshold).all()  # the ellipse is on every slice
    pred = get_slices(segmenter.segment(volume, cache=trained["cache"], progress=False), 2)
    assert (pred[~has_bar] == 2).sum(axis=(1, 2))[suppressed].max() == 0  # suppressed slices carry no bar


@pytest.mark.slow  # the module's `trained` decoder: an end-to-end training run
def test_segment_streams_chunks_to_the_same_labels(trained):
    """segment decodes a few slices at a time (bounded memory) to the labels of the whole-volume path (logits
    equal up to float32 rounding: the decoder's padded batches hold other slices)."""
    segmenter = trained["segmenter"]
    volume = load_volume(trained["test_image"])
    logits, presence = segmenter.predict_volume(volume, cache=trained["cache"], progress=False)
    chunks = list(segmenter.iter_predictions(volume, cache=trained["cache"], progress=False, chunk=3))
    assert [start for start, _, _ in chunks] == list(range(0, len(logits), 3))
    assert max(len(part) for _, part, _ in chunks) == 3
    np.testing.assert_allclose(np.concatenate([part for _, part, _ in chunks]), logits, atol=1e-4)
    np.testing.assert_allclose(np.concatenate([p for _, _, p in chunks]), presence, atol=1e-5)
    whole = segmenter.labels_from(logits, presence)
    streamed = segmenter.segment(volume, cache=trained["cache"], progress=False, chunk=3)
    assert streamed.shape == whole.shape and (streamed != whole).mean() < 1e-3
    with pytest.raises(ValueError, match="chunk: expected a positive number"):
        next(segmenter.iter_predictions(volume, cache=trained["cache"], progress=False, chunk=0))


@pytest.mark.slow  # the module's `trained` decoder: an end-to-end training run
def test_saved_decoder_reloads_to_identical_predictions(trained, tmp_path):
    segmenter = trained["segmenter"]
    segmenter.save(tmp_path / "decoder")
    reloaded = FewShotSegmenter.load(tmp_path / "decoder")
    reloaded._sam = trained["sam"]  # the tiny test model is not a registered checkpoint
    volume = load_volume(trained["test_image"])
    a = segmenter.predict_volume(volume, cache=trained["cache"], progress=False)
    b = reloaded.predict_volume(volume, cache=trained["cache"], progress=False)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert reloaded.classes == {1: "ellipse", 2: "bar"} and reloaded.intensity == segmenter.intensity


@pytest.mark.slow  # the module's `trained` decoder: an end-to-end training run
def test_threshold_offset_shifts_every_class_cutoff_and_is_saved(trained, tmp_path):
    segmenter = trained["segmenter"]
    volume = load_volume(trained["test_image"])
    logits, presence = segmenter.predict_volume(volume, cache=trained["cache"], progress=False)
    shifted = dataclasses.replace(segmenter, inference=segmenter.inference.replace(threshold_offset=-0.75))
    base = segmenter.inference.threshold_offset  # the default's
    np.testing.assert_array_equal(shifted.cutoffs, np.asarray(segmenter.thresholds, np.float32) - np.float32(0.75))
    np.testing.assert_array_equal(segmenter.cutoffs, np.asarray(segmenter.thresholds, np.float32) + np.float32(base))
    more, same = shifted.predict_volume(volume, cache=trained["cache"], progress=False)
    np.testing.assert_allclose(more, logits + 0.75 + base, atol=1e-5)
    np.testing.assert_array_equal(same, presence)
    assert (shifted.labels_from(more, same) > 0).sum() > (segmenter.labels_from(logits, presence) > 0).sum()
    shifted.save(tmp_path / "decoder")
    meta = json.loads((tmp_path / "decoder" / "fewshot.json").read_text())
    assert meta["inference"]["threshold_offset"] == -0.75
    assert meta["inference"]["presence_threshold"] == 0.0  # the default's: presence does not gate
    del meta["inference"]["threshold_offset"]  # a decoder saved before the option: no offset
    del meta["inference"]["presence_threshold"]  # a file without the key: the gate every decoder had then
    (tmp_path / "decoder" / "fewshot.json").write_text(json.dumps(meta))
    loaded = FewShotSegmenter.load(tmp_path / "decoder").inference
    assert loaded.threshold_offset == 0.0 and loaded.presence_threshold == 0.5


@pytest.mark.slow  # the module's `trained` decoder: an end-to-end training run
def test_self_prompt_decodes_again_from_the_volumes_own_labels_streams_and_reloads(trained, tmp_path):
    """InferenceConfig.self_prompt (tests/fewshot/test_self_prompt.py has the tokens): other logits than one pass,
    deterministic, the same in chunks, saved with the decoder; 0 and decoders saved before the option: one pass."""
    segmenter, cache = trained["segmenter"], trained["cache"]
    volume = load_volume(trained["test_image"])
    one_pass = segmenter.predict_volume(volume, cache=cache, progress=False)

    def sharing(share):
        return dataclasses.replace(segmenter, inference=segmenter.inference.replace(self_prompt=share))

    logits, presence = sharing(1.0).predict_volume(volume, cache=cache, progress=False)
    assert logits.shape == one_pass[0].shape and presence.shape == one_pass[1].shape
    assert np.abs(logits - one_pass[0]).max() > 1e-3  # other prompts, other logits
    np.testing.assert_array_equal(sharing(1.0).predict_volume(volume, cache=cache, progress=False)[0], logits)
    streamed = list(sharing(1.0).iter_predictions(volume, cache=cache, progress=False, chunk=3))
    np.testing.assert_allclose(np.concatenate([part for _, part, _ in streamed]), logits, atol=1e-4)
    np.testing.assert_array_equal(sharing(0.0).predict_volume(volume, cache=cache, progress=False)[0], one_pass[0])
    sharing(1.0).save(tmp_path / "decoder")
    reloaded = FewShotSegmenter.load(tmp_path / "decoder")
    reloaded._sam = trained["sam"]  # the tiny test model is not a registered checkpoint
    assert reloaded.inference.self_prompt == 1.0
    np.testing.assert_array_equal(reloaded.predict_volume(volume, cache=cache, progress=False)[0], logits)
    meta = json.loads((tmp_path / "decoder" / "fewshot.json").read_text())
    del meta["inference"]["self_prompt"]  # a decoder saved before the option: one pass
    (tmp_path / "decoder" / "fewshot.json").write_text(json.dumps(meta))
    assert FewShotSegmenter.load(tmp_path / "decoder").inference.self_prompt == 0.0


@pytest.mark.slow  # the module's `trained` decoder: an end-to-end training run
def test_written_labels_overlay_the_source(trained, tmp_path):
    out = trained["segmenter"].segment_file(trained["test_image"], tmp_path / "pred.nii.gz", cache=trained["cache"],
                                            progress=False)
    written, source = nib.load(out), nib.load(trained["test_image"])
    np.testing.assert_array_equal(written.affine, source.affine)
    assert written.shape == source.shape
    truth = np.asarray(nib.load(trained["test_labels"]).dataobj)
    assert metrics.dice(np.asarray(written.dataobj) == 1, truth == 1) > 0.6


def test_labels_from_logits_resolves_overlaps_and_presence():
    logits = np.full((1, 2, 2, 2), -1.0)
    logits[0, 0, 0, :] = 2.0  # class 1 strong on row 0
    logits[0, 1, 0, 0] = 3.0  # class 2 stronger on (0, 0)
    logits[0, 1, 1, 1] = 1.0  # class 2 alone on (1, 1)
    labels = labels_from_logits(logits, np.array([[0.9, 0.9]]), (4, 7))
    np.testing.assert_array_equal(labels[0], [[7, 4], [0, 7]])
    suppressed = labels_from_logits(logits, np.array([[0.9, 0.1]]), (4, 7))
    np.testing.assert_array_equal(suppressed[0], [[4, 4], [0, 0]])


def test_postprocess_keeps_largest_component_and_fills_holes():
    labels = np.zeros((9, 9, 3), np.int32)
    labels[1:6, 1:6, :] = 1
    labels[3, 3, 1] = 0  # a hole
    labels[8, 8, 0] = 1  # a speck
    out = postprocess_3d(labels, (1,))
    assert out[3, 3, 1] == 1 and out[8, 8, 0] == 0


def test_calibrated_thresholds_undo_a_logit_offset():
    labels = np.zeros((2, 8, 8), np.int32)
    labels[:, 2:5, 2:5] = 1
    labels[:, 5:7, 5:7] = 2
    labels[:, :, 7] = IGNORE
    truth = np.stack([(labels == k).astype(float) * 4 - 2 for k in (1, 2)], axis=1)
    logits = truth + np.array([-3.0, 0.0])[None, :, None, None]  # class 1 under-confident: all below 0
    thresholds = calibrate_thresholds(logits, labels)
    assert -5.0 < thresholds[0] < -1.0 and thresholds[1] == 0.0
    pred = labels_from_logits(logits - thresholds[None, :, None, None], np.ones((2, 2)), (1, 2))
    np.testing.assert_array_equal(pred[labels != IGNORE], labels[labels != IGNORE])


def test_support_needs_every_class():
    labels = np.zeros((2, 8, 8), np.int32)
    labels[0, 2:4, 2:4] = 1
    with pytest.raises(ValueError, match=r"class ids \[2\] are absent from every support slice"):
        SupportSet(np.zeros((2, 2, 2, 4), np.float32), labels, np.arange(2), (1, 2))
    with pytest.raises(ValueError, match="the few-shot collection is empty"):
        SupportSet(np.zeros((0, 2, 2, 4), np.float32), labels[:0], np.arange(0), (1,))


@pytest.mark.parametrize("holdout", ["slice", "volume"])
def test_episodes_never_prompt_from_the_held_out_rows(holdout):
    """With "volume", a target's prompts come only from other volumes (as at inference on a new one); the prompt
    weights cover the support padded to a multiple of ROW_BUCKET rows, the padding never prompting."""
    from fewsam_jax.fewshot.train import EpisodeSampler, padded_rows

    labels = np.zeros((6, 16, 16), np.int32)
    labels[:, 4:9, 4:9] = 1
    volumes = np.array([0, 0, 1, 1, 2, 2])
    support = SupportSet(np.zeros((6, 4, 4, 8), np.float32), labels, np.arange(6), (1,), volumes)
    config = TrainConfig(episode_holdout=holdout, batch_slices=1, train_crop=0)
    sampler = EpisodeSampler(support, config, slice_tokens=2, embedding_size=4)
    for _ in range(50):
        targets, keep, choice, _, _ = sampler()
        held_out = volumes == volumes[targets[0]] if holdout == "volume" else np.arange(6) == targets[0]
        assert keep.shape == (padded_rows(6),) and not keep[6:].any() and (targets < 6).all()
        assert not keep[:6][held_out].any() and not held_out[choice].any()


@pytest.mark.slow  # trains three times (compiles the training step once)
def test_a_support_grown_by_a_few_slices_trains_with_the_step_already_compiled(tiny_sam, tmp_path, monkeypatch):
    """The annotate -> retrain loop: support arrays are padded to a multiple of ROW_BUCKET rows and equal training
    configs share one optimizer transformation, so retraining with one or two more labelled slices traces no new
    training step; the padding rows change no prompt token."""
    from fewsam_jax.fewshot import load_collection
    from fewsam_jax.fewshot import train as train_module
    from fewsam_jax.fewshot.segmenter import support_set
    from fewsam_jax.preprocess import Intensity

    traced, real = [], train_module.class_tokens
    monkeypatch.setattr(train_module, "class_tokens", lambda *a, **k: traced.append(1) or real(*a, **k))
    write_case(tmp_path, "a", 0)
    training = TrainConfig(steps=2, batch_slices=1, seed=12345)  # a config no other test compiles the step for
    for count, slices in enumerate(([0, 2, 4], [0, 2, 4, 6], [0, 2, 4, 6, 9])):
        manifest = tmp_path / f"manifest{len(slices)}.json"
        manifest.write_text(json.dumps({"classes": {"1": "ellipse", "2": "bar"}, "axis": 2, "support": [
            {"image": "a.nii.gz", "labels": "a_seg.nii.gz", "slices": slices}]}))
        traced.clear()
        segmenter = FewShotSegmenter.train(manifest, sam=tiny_sam, config=DECODER, training=training,
                                           cache=tmp_path / "cache", progress=False)
        assert bool(traced) == (count == 0), f"{len(slices)} labelled slices: traced {len(traced)} times"
    assert train_module.padded_rows(3) == train_module.padded_rows(8) == 8 and train_module.padded_rows(9) == 16

    support = support_set(load_collection(manifest), tiny_sam, Intensity.parse("percentile"), DECODER, training,
                          tmp_path / "cache", progress=False)
    assert len(support.groups) == 5
    decoder = segmenter.decoder
    unpadded = train_module.region_stats_jit(decoder, jnp.asarray(support.embeddings, jnp.float32),
                                             jnp.asarray(support.labels, jnp.int32), support.num_classes)
    choice = train_module.inference_choice(support, decoder.config.slice_tokens, np.ones(5, bool))
    expected = train_module._tokens(decoder, unpadded, jnp.ones(5, jnp.float32), jnp.asarray(choice))
    np.testing.assert_allclose(train_module.support_tokens(decoder, support), expected, rtol=1e-5, atol=1e-6)


def committed_copy(sam):
    """``sam`` with every array committed to the default device, as :func:`fewsam_jax.load_model` returns it."""
    graph, state = nnx.split(sam)
    return nnx.merge(graph, jax.device_put(state, jax.devices()[0]))


def leaves(module) -> list[jax.Array]:
    return [leaf for leaf in jax.tree.leaves(nnx.state(module)) if isinstance(leaf, jax.Array)]


@pytest.mark.parametrize("committed", [True, False])
def test_training_state_is_committed_together_or_left_alone(tiny_sam, committed):
    from fewsam_jax.fewshot.decoder import FewShotDecoder
    from fewsam_jax.fewshot.train import make_optimizer, place_together

    sam = committed_copy(tiny_sam) if committed else tiny_sam
    decoder = FewShotDecoder(sam, DecoderConfig(slice_tokens=2), rngs=nnx.Rngs(0))
    optimizer = make_optimizer(decoder, TrainConfig(steps=3))
    before = {leaf.committed for leaf in leaves(decoder)}
    assert before == ({False, True} if committed else {False})  # the decoder's own arrays are new
    place_together(decoder, optimizer)
    for module in (decoder, optimizer):
        assert {leaf.committed for leaf in leaves(module)} == {committed}


@pytest.mark.slow  # compiles the training step
def test_a_committed_decoder_compiles_the_training_step_once(tiny_sam, tmp_path, caplog):
    """A loaded model is committed to a device (Orbax restores onto one): the decoder's new arrays and the
    optimizer's fresh state are committed beside it, or the first step's committed outputs compile the step again."""
    write_case(tmp_path, "a", 0)
    manifest = tmp_path / "manifest.json"
    manifest.write_text('{"classes": {"1": "ellipse", "2": "bar"}, "axis": 2, "support": '
                        '[{"image": "a.nii.gz", "labels": "a_seg.nii.gz", "slices": [0, 2, 4]}]}')
    training = TrainConfig(steps=3, batch_slices=1, seed=424242)  # a config no other test compiles the step for
    # logged for every program compiled or read from the persistent compilation cache
    with jax.log_compiles(True), caplog.at_level(logging.WARNING, logger="jax"):
        FewShotSegmenter.train(manifest, sam=committed_copy(tiny_sam), config=DecoderConfig(slice_tokens=2),
                               training=training, cache=tmp_path / "cache", progress=False)
    compiled = [r.getMessage() for r in caplog.records if "compilation of jit(train_step)" in r.getMessage()]
    assert len(compiled) == 1, compiled


def test_support_volumes_must_match_rows():
    labels = np.ones((2, 4, 4), np.int32)
    with pytest.raises(ValueError, match="volume ids"):
        SupportSet(np.zeros((2, 2, 2, 4), np.float32), labels, np.arange(2), (1,), np.zeros(3, int))


@pytest.mark.slow  # compiles the decoder for one and two classes
def test_joint_decoding_of_one_class_equals_a_separate_pass(tiny_sam):
    """A class decodes in the joint pass exactly as alone; with two classes the passes differ only
    through the shared image tokens, so the outputs keep their (B, K, ...) layout."""
    from flax import nnx

    from fewsam_jax.fewshot.decoder import FewShotDecoder

    rng = np.random.default_rng(0)
    e, c = tiny_sam.config.embedding_size, tiny_sam.config.prompt_embed_dim
    embeddings = jnp.asarray(rng.normal(size=(3, e, e, c)), jnp.float32)
    tokens = jnp.asarray(rng.normal(size=(2, 5, c)), jnp.float32)
    joint = FewShotDecoder(tiny_sam, DecoderConfig(class_decoding="joint", image_features=0), rngs=nnx.Rngs(0))
    separate = nnx.clone(joint)
    separate.config = DecoderConfig(class_decoding="separate", image_features=0)
    outputs = {name: [decoder(embeddings, tokens[:1]), decoder(embeddings, tokens)]
               for name, decoder in (("joint", joint), ("separate", separate))}
    for joint, separate in zip(outputs["joint"][0], outputs["separate"][0]):
        np.testing.assert_allclose(joint, separate, rtol=1e-5, atol=1e-5)
    logits, presence = outputs["joint"][1]
    assert logits.shape == (3, 2, 4 * e, 4 * e) and presence.shape == (3, 2)
    assert not np.allclose(logits[:, 0], logits[:, 1])


@pytest.fixture(scope="module")
def plain_case(tiny_sam, tmp_path_factory):
    """An untrained decoder without the image branch or target warps (what decoders saved before the image
    branch were), on a small collection of its own, and a volume to segment."""
    case = synthetic_case(tiny_sam, tmp_path_factory.mktemp("plain"),
                          {"a": dict(seed=0, shape=(48, 40, 6), slices=[0, 2, 4])}, dict(seed=1, shape=(48, 40, 4)),
                          config=DECODER.replace(image_features=0),
                          training=TRAINING.replace(steps=0, warp_rotation_deg=0.0, warp_scale=0.0, image_jitter=0.0))
    return dict(case, segmenter=case["segmenters"][0])


def test_legacy_decoder_loads_to_identical_predictions(plain_case, tmp_path):
    """A decoder saved with the flat FewShotConfig, the similarity prior's vector and the prototypes in its
    state: both are dropped on restore, the configs split, and it predicts exactly as before (at its thresholds:
    no ``threshold_offset`` then)."""
    segmenter = plain_case["segmenter"]
    segmenter = dataclasses.replace(segmenter, inference=segmenter.inference.replace(threshold_offset=0.0))
    save_legacy(segmenter, tmp_path / "decoder")
    loaded = FewShotSegmenter.load(tmp_path / "decoder")
    loaded._sam = plain_case["sam"]
    assert not hasattr(loaded.decoder, "similarity_embed")
    assert loaded.decoder.config == segmenter.decoder.config
    assert loaded.training == segmenter.training and loaded.inference == segmenter.inference
    volume = load_volume(plain_case["test_image"])
    expected = segmenter.predict_volume(volume, cache=plain_case["cache"], progress=False)
    got = loaded.predict_volume(volume, cache=plain_case["cache"], progress=False)
    for x, y in zip(expected, got):
        np.testing.assert_array_equal(x, y)
    loaded.save(tmp_path / "resaved")  # written in the current format
    meta = json.loads((tmp_path / "resaved" / "fewshot.json").read_text())
    assert "fewshot" not in meta and meta["decoder"]["image_features"] == 0 and meta["training"]["seed"] == 0
    assert FewShotSegmenter.load(tmp_path / "resaved").decoder.config == segmenter.decoder.config


def test_legacy_decoder_with_the_similarity_prior_is_refused(plain_case, tmp_path):
    from fewsam_jax.fewshot.segmenter import DecoderFileError

    save_legacy(plain_case["segmenter"], tmp_path / "decoder", similarity_prior=True)
    with pytest.raises(DecoderFileError, match="'fewshot.similarity_prior' is True: this option was removed"):
        FewShotSegmenter.load(tmp_path / "decoder")
    save_legacy(plain_case["segmenter"], tmp_path / "heads", trainable="heads")  # a training choice only
    assert FewShotSegmenter.load(tmp_path / "heads").training.augment == AugmentConfig()


def test_decoder_saved_before_joint_decoding_loads_as_separate(plain_case, tmp_path):
    save_legacy(plain_case["segmenter"], tmp_path / "decoder",  # none of these existed then
                drop=("class_decoding", "image_features", "image_context", "image_frame", "warp_rotation_deg",
                      "warp_scale", "image_jitter"))
    assert FewShotSegmenter.load(tmp_path / "decoder").decoder.config.class_decoding == "separate"


def test_decoder_saved_before_the_image_branch_loads_without_one(plain_case, tmp_path):
    save_legacy(plain_case["segmenter"], tmp_path / "decoder",
                drop=("image_features", "image_context", "image_frame", "warp_rotation_deg", "warp_scale",
                      "image_jitter"))
    loaded = FewShotSegmenter.load(tmp_path / "decoder")
    assert loaded.decoder.config.image_features == 0 and loaded.decoder.config.image_context == 0
    assert loaded.training.warp_scale == 0 and loaded.training.warp_rotation_deg == 0


def token_inputs(sam):
    """Region statistics of a pool of 3 support slices with 2 classes, every region present, for
    :func:`~fewsam_jax.fewshot.decoder.class_tokens`; the last two pick the individual slices."""
    rng, c = np.random.default_rng(0), sam.config.prompt_embed_dim
    boxes = np.sort(rng.random((3, 3, 2, 2)), axis=2).reshape(3, 3, 4)
    return (jnp.asarray(rng.normal(size=(3, 3, c)), jnp.float32), jnp.asarray(rng.random((3, 3)) + 0.1, jnp.float32),
            jnp.asarray(rng.normal(size=(3, 3, c)), jnp.float32), jnp.asarray(boxes, jnp.float32),
            jnp.ones(3, jnp.float32), jnp.asarray([[0, 1], [1, 2]], jnp.int32))


def test_region_box_adds_the_two_corner_tokens(tiny_sam):
    from flax import nnx

    from fewsam_jax.fewshot.decoder import FewShotDecoder, class_tokens

    inputs = token_inputs(tiny_sam)
    config = DecoderConfig.sam_only().replace(slice_tokens=2)
    with_box = FewShotDecoder(tiny_sam, config, rngs=nnx.Rngs(0))
    without = FewShotDecoder(tiny_sam, config.replace(region_box=False), rngs=nnx.Rngs(0))
    a, b = np.asarray(class_tokens(with_box, *inputs)), np.asarray(class_tokens(without, *inputs))
    assert a.shape[1] == with_box.config.num_tokens == 6 and b.shape[1] == without.config.num_tokens == 4
    np.testing.assert_array_equal(np.delete(a, [2, 3], axis=1), b)  # the same tokens but the box corners


def test_region_position_adds_the_centroid_encoding(tiny_sam):
    from flax import nnx

    from fewsam_jax.fewshot.decoder import FewShotDecoder, class_tokens

    prototypes, areas, positions, boxes, weights, choice = token_inputs(tiny_sam)
    config = DecoderConfig.sam_only().replace(slice_tokens=2)
    on = FewShotDecoder(tiny_sam, config, rngs=nnx.Rngs(0))
    off = FewShotDecoder(tiny_sam, config.replace(region_position=False), rngs=nnx.Rngs(0))

    def tokens(decoder, pos):
        return np.asarray(class_tokens(decoder, prototypes, areas, pos, boxes, weights, choice))

    moved = positions + 1.0
    shift = tokens(on, moved) - tokens(on, positions)  # every prototype token moves with its region's position
    np.testing.assert_allclose(shift[:, [0, 1, 4, 5]], 1.0, atol=1e-5)
    np.testing.assert_array_equal(shift[:, 2:4], 0.0)  # the box corners do not
    np.testing.assert_array_equal(tokens(off, positions), tokens(off, moved))  # positions are not read
    np.testing.assert_array_equal(tokens(off, positions), tokens(on, jnp.zeros_like(positions)))


def test_support_copies_follow_the_training_seed():
    from fewsam_jax.fewshot.augment import augment_slices

    rng = np.random.default_rng(0)
    images = rng.random((2, 16, 16)).astype(np.float32)
    labels = (images > 0.5).astype(np.int32)
    config = AugmentConfig(copies=2)
    first, again, other = (augment_slices(images, labels, config, seed) for seed in (0, 0, 1))
    assert first[0].shape == (4, 16, 16) and list(first[2]) == [0, 1, 0, 1]
    for x, y in zip(first, again):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(first[0], other[0])


def test_flip_mirrors_some_copies_left_right_with_their_labels():
    """AugmentConfig.flip, nothing else drawn (no rotation, scale or gamma): each copy is its slice as it is or
    mirrored along the last axis (about half of them), the labels with it; off, every copy is its slice."""
    from fewsam_jax.fewshot.augment import augment_slices

    rng = np.random.default_rng(0)
    images = rng.random((3, 12, 12)).astype(np.float32)
    labels = (images > 0.7).astype(np.int32)
    still = AugmentConfig(copies=4, rotation_deg=0.0, scale=0.0, gamma=0.0)
    for config, can_flip in ((still, False), (still.replace(flip=True), True)):
        copies, copy_labels, sources = augment_slices(images, labels, config, seed=0)
        flipped = []
        for copy, copy_label, source in zip(copies, copy_labels, sources):
            mirrored = np.array_equal(copy, images[source][:, ::-1]) and np.array_equal(copy_label,
                                                                                      labels[source][:, ::-1])
            assert mirrored or (np.allclose(copy, images[source], atol=1e-6)
                                and np.array_equal(copy_label, labels[source]))
            flipped.append(mirrored)
        assert any(flipped) == can_flip and (not can_flip or not all(flipped))


def test_the_loss_weighs_focal_dice_and_presence_as_configured():
    """segmentation_loss = focal_weight x focal + dice_weight x soft Dice + presence_weight x presence BCE, each
    term the mean over items and classes, ignored pixels left out; focal_alpha None weighs no class side,
    focal_gamma 0 makes the focal term plain BCE. Checked against NumPy."""
    from fewsam_jax.fewshot.train import segmentation_loss

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 2, 4, 4)).astype(np.float32)
    presence = rng.normal(size=(2, 2)).astype(np.float32)
    labels = rng.integers(0, 3, size=(2, 4, 4)).astype(np.int32)
    labels[0, 0] = IGNORE
    labels[1] = np.where(labels[1] == 2, 0, labels[1])  # class 2 absent from item 1
    target = (labels[:, None] == np.arange(1, 3)[None, :, None, None]).astype(np.float64)
    valid = (labels != IGNORE)[:, None].astype(np.float64)
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    bce = -(target * np.log(p) + (1 - target) * np.log(1 - p))
    p_true = np.where(target == 1, p, 1 - p)

    def loss(**weights):
        cfg = TrainConfig(**{"focal_weight": 0.0, "dice_weight": 0.0, "presence_weight": 0.0, **weights})
        return float(segmentation_loss(jnp.asarray(logits), jnp.asarray(presence), jnp.asarray(labels), cfg))

    def focal(alpha, gamma):
        side = 1.0 if alpha is None else np.where(target == 1, alpha, 1 - alpha)
        per_pixel = side * (1 - p_true) ** gamma * bce * valid
        return (per_pixel.sum(axis=(2, 3)) / valid.sum(axis=(2, 3))).mean()

    prob = p * valid
    dice = (1 - (2 * (prob * target).sum(axis=(2, 3)) + 1) / (prob.sum(axis=(2, 3)) + target.sum(axis=(2, 3)) + 1))
    present = (target.sum(axis=(2, 3)) > 0).astype(np.float64)
    q = 1 / (1 + np.exp(-presence.astype(np.float64)))
    presence_bce = -(present * np.log(q) + (1 - present) * np.log(1 - q))
    assert present[1, 1] == 0 and present[0, 0] == 1
    np.testing.assert_allclose(loss(focal_weight=1.0), focal(0.25, 2.0), rtol=1e-5)
    np.testing.assert_allclose(loss(focal_weight=1.0, focal_alpha=None), focal(None, 2.0), rtol=1e-5)
    np.testing.assert_allclose(loss(focal_weight=1.0, focal_alpha=None, focal_gamma=0.0), focal(None, 0.0), rtol=1e-5)
    np.testing.assert_allclose(loss(dice_weight=1.0), dice.mean(), rtol=1e-5)
    np.testing.assert_allclose(loss(presence_weight=1.0), presence_bce.mean(), rtol=1e-5)
    np.testing.assert_allclose(loss(focal_weight=20.0, dice_weight=1.0, presence_weight=0.5),
                               20 * focal(0.25, 2.0) + dice.mean() + 0.5 * presence_bce.mean(), rtol=1e-5)


def test_warp_moves_embeddings_labels_and_images_together():
    import jax

    from fewsam_jax.fewshot.warp import warp_targets

    e, low = 16, 64
    labels = np.zeros((2, low, low), np.int32)
    labels[:, 8:40, 20:36] = 1
    labels[:, :, 56:] = IGNORE
    cells = labels.reshape(2, e, 4, e, 4).mean(axis=(2, 4)) > 0.5  # the labelled block on the embedding grid
    embeddings = np.repeat(cells[..., None].astype(np.float32), 3, axis=-1)
    images = (labels == 1)[..., None].astype(np.float32)
    key = jax.random.key(3)
    same = warp_targets(key, jnp.asarray(embeddings), jnp.asarray(labels), jnp.asarray(images), 0.0, 0.0, 0.0)
    for x, y in zip(same, (embeddings, labels, images)):
        np.testing.assert_allclose(x, y, atol=1e-5)  # no range: no change
    emb, lab, img = (np.asarray(a) for a in warp_targets(key, jnp.asarray(embeddings), jnp.asarray(labels),
                                                         jnp.asarray(images), 30.0, 0.2, 0.1))
    assert set(np.unique(lab)) <= {IGNORE, 0, 1} and not np.array_equal(lab, labels)
    warped_cells = np.where(lab == IGNORE, 0, lab).reshape(2, e, 4, e, 4).mean(axis=(2, 4)) > 0.5
    for i in range(2):
        assert metrics.dice(emb[i, ..., 0] > 0.5, warped_cells[i]) > 0.8
        assert metrics.dice(img[i, ..., 0] > img[i, ..., 0].mean(), lab[i] == 1) > 0.8
