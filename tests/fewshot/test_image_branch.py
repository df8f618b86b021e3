"""The few-shot decoder's image branch (``DecoderConfig.image_features``): a small convolutional branch on the
normalised slice fused into SAM's upscaling path, on the tiny random SAM and the synthetic volumes of
:func:`helpers.synthetic_case`."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import param_leaves, save_legacy, synthetic_case, synthetic_training_configs

from fewsam_jax import metrics
from fewsam_jax.fewshot import DecoderConfig, FewShotSegmenter, TrainConfig
from fewsam_jax.fewshot.prompts import IGNORE
from fewsam_jax.io import load_volume

DECODER, TRAINING = synthetic_training_configs()


@pytest.mark.slow  # compiles the decoder with and without the image branch
@pytest.mark.parametrize("frame", ["mask", "embedding"])
def test_image_branch_starts_as_sams_decoder(tiny_sam, frame):
    """Zero-initialised fusion: before training, the image branch (in either frame) changes nothing."""
    from flax import nnx

    from fewsam_jax.fewshot.decoder import FewShotDecoder

    rng = np.random.default_rng(0)
    e, c = tiny_sam.config.embedding_size, tiny_sam.config.prompt_embed_dim
    embeddings = jnp.asarray(rng.normal(size=(2, e, e, c)), jnp.float32)
    tokens = jnp.asarray(rng.normal(size=(2, 5, c)), jnp.float32)
    images = jnp.asarray(rng.random(size=(2, 4 * e, 4 * e, 3)), jnp.float32)
    plain = FewShotDecoder(tiny_sam, DecoderConfig.sam_only(), rngs=nnx.Rngs(0))
    branch = FewShotDecoder(tiny_sam, DecoderConfig(image_features=4, image_context=1, image_frame=frame),
                            rngs=nnx.Rngs(0))
    expected = plain(embeddings, tokens)
    got = branch(embeddings, tokens, images=images)
    assert got[0].shape == (2, 2, 4 * e, 4 * e) and got[1].shape == (2, 2)
    for x, y in zip(expected, got):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="images must be given exactly when"):
        branch(embeddings, tokens)


def test_image_branch_config_is_checked():
    with pytest.raises(ValueError, match="needs class_decoding='joint'"):
        DecoderConfig(image_features=8, class_decoding="separate")
    with pytest.raises(ValueError, match="image_context needs the image branch"):
        DecoderConfig(image_features=0, image_context=1)
    with pytest.raises(ValueError, match="expected >= 0"):
        DecoderConfig(image_features=-1)
    with pytest.raises(ValueError, match="image_frame: expected 'mask' or 'embedding'"):
        DecoderConfig(image_frame="pixels")
    with pytest.raises(ValueError, match="image_learning_rate: expected None without the image branch"):
        TrainConfig(image_learning_rate=1e-3).check(DecoderConfig.sam_only())
    TrainConfig(image_learning_rate=1e-3).check(DecoderConfig())
    with pytest.raises(ValueError, match="image_learning_rate: expected None or >= 0"):
        TrainConfig(image_learning_rate=-1.0)


@pytest.mark.slow  # compiles and runs the image branch's training step
def test_image_learning_rate_drives_the_branch_alone(tiny_sam):
    """image_learning_rate=0 freezes the branch while SAM's decoder still trains at learning_rate."""
    from flax import nnx

    from fewsam_jax.fewshot.decoder import FewShotDecoder
    from fewsam_jax.fewshot.train import SupportSet, train_decoder

    e, c = tiny_sam.config.embedding_size, tiny_sam.config.prompt_embed_dim
    rng = np.random.default_rng(0)
    labels = np.zeros((3, 4 * e, 4 * e), np.int32)
    labels[:, 8:40, 12:30] = 1
    support = SupportSet(rng.normal(size=(3, e, e, c)).astype(np.float32), labels, np.arange(3), (1,),
                         images=rng.random((3, 4 * e, 4 * e, 1)).astype(np.float32))
    training = TRAINING.replace(steps=3, warmup_steps=1, image_learning_rate=0.0)
    decoder = FewShotDecoder(tiny_sam, DECODER.replace(image_features=4), rngs=nnx.Rngs(0))
    before = param_leaves(decoder)
    train_decoder(decoder, support, training, progress=False)
    after = param_leaves(decoder)
    for a, b in zip(before["image_branch"], after["image_branch"]):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(before["mask_decoder"], after["mask_decoder"]))


def test_space_to_depth_is_lossless():
    from fewsam_jax.fewshot.image_branch import _depth_to_space, _space_to_depth

    x = jnp.arange(2 * 8 * 12 * 3, dtype=jnp.float32).reshape(2, 8, 12, 3)
    cells = _space_to_depth(x, 4)
    assert cells.shape == (2, 2, 3, 48)
    np.testing.assert_array_equal(cells[1, 1, 2].reshape(4, 4, 3), x[1, 4:8, 8:12])  # one cell holds its block
    np.testing.assert_array_equal(_depth_to_space(cells, 4), x)


def test_context_slices_repeat_the_edges():
    from fewsam_jax.fewshot.image_branch import context_slices

    slices = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((4, 2, 3), np.float32)
    out = context_slices(slices, [0, 2, 3], context=1)
    assert out.shape == (3, 2, 3, 3)
    np.testing.assert_array_equal(out[:, 0, 0], [[0, 0, 1], [1, 2, 3], [2, 3, 3]])


def test_images_and_labels_share_the_low_res_frame(tiny_sam):
    from fewsam_jax.fewshot.prompts import images_to_low_res, labels_to_low_res

    labels = np.zeros((1, 40, 20), np.int32)
    labels[0, 10:30, 5:15] = 1
    images = labels[..., None].astype(np.float32)
    low_images = images_to_low_res(images, tiny_sam.config)
    low_labels = labels_to_low_res(labels, (1,), tiny_sam.config)
    size = tiny_sam.config.low_res_size
    assert low_images.shape == (1, size, size, 1)
    assert (low_images[0, ..., 0][low_labels[0] == IGNORE] == 0).all()  # padding is zero
    inside = low_images[0, ..., 0] > 0.5
    assert metrics.dice(inside, low_labels[0] == 1) > 0.9


@pytest.fixture(scope="module", params=["mask", "embedding"])
def image_branch_case(tiny_sam, tmp_path_factory, request):
    """Two decoders with the image branch (frame ``request.param``) trained alike (12 steps, same seed)."""
    config = DECODER.replace(image_features=4, image_context=1, image_frame=request.param)
    return synthetic_case(tiny_sam, tmp_path_factory.mktemp("image_branch"),
                          {"a": dict(seed=0, shape=(48, 40, 8), slices=[0, 2, 4, 7])}, dict(seed=1, shape=(48, 40, 6)),
                          config=config, training=TRAINING.replace(steps=12), repeats=2)


@pytest.mark.slow  # trains the image branch twice
def test_image_branch_training_is_deterministic_and_reloads(image_branch_case, tmp_path):
    first, second = image_branch_case["segmenters"]
    volume = load_volume(image_branch_case["test_image"])
    cache = image_branch_case["cache"]
    a = first.predict_volume(volume, cache=cache, progress=False)
    b = second.predict_volume(volume, cache=cache, progress=False)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)  # same seed, same decoder
    first.save(tmp_path / "decoder")
    reloaded = FewShotSegmenter.load(tmp_path / "decoder")
    reloaded._sam = image_branch_case["sam"]
    assert reloaded.decoder.config.image_features == 4 and reloaded.decoder.config.image_context == 1
    assert reloaded.decoder.config.image_frame == first.decoder.config.image_frame
    c = reloaded.predict_volume(volume, cache=cache, progress=False)
    for x, y in zip(a, c):
        np.testing.assert_array_equal(x, y)
    branch = param_leaves(first.decoder.image_branch)
    assert any(np.abs(leaf).max() > 0 for leaf in branch["fuse"])  # training moved the zero-initialised fusion


@pytest.mark.slow  # the module's `image_branch_case`: trains the image branch
def test_branch_decoder_saved_before_image_frame_loads_in_the_mask_frame(image_branch_case, tmp_path):
    first = image_branch_case["segmenters"][0]
    if first.decoder.config.image_frame != "mask":
        pytest.skip("only mask-frame decoders were saved before image_frame existed")
    save_legacy(first, tmp_path / "decoder", drop=("image_frame",))
    reloaded = FewShotSegmenter.load(tmp_path / "decoder")
    assert reloaded.decoder.config.image_frame == "mask" and reloaded.decoder.config.image_features == 4
