"""U-Net baseline: learns synthetic shapes, handles any slice size, deterministic, clear errors."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from fewsam_jax.fewshot.unet import UNet, UNetConfig, predict_unet, train_unet
from fewsam_jax import metrics
from fewsam_jax.modeling.common import StridedConvTranspose


def shapes(count: int, sizes, seed: int = 0):
    """Slices with a dim disc (class 1) and a bright square (class 2) at random places, plus noise."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(count):
        height, width = sizes[i % len(sizes)]
        label = np.zeros((height, width), np.int64)
        rows, cols = np.mgrid[:height, :width]
        cy, cx = rng.integers(7, height - 7), rng.integers(7, width - 7)
        label[(rows - cy) ** 2 + (cols - cx) ** 2 < 25] = 1
        y0, x0 = rng.integers(0, height - 6), rng.integers(0, width - 6)
        label[y0: y0 + 6, x0: x0 + 6] = 2
        image = 0.2 + 0.3 * (label == 1) + 0.6 * (label == 2) + 0.05 * rng.normal(size=label.shape)
        images.append(np.clip(image, 0, 1).astype(np.float32))
        labels.append(label)
    return images, labels


def mean_dice(predictions, labels) -> float:
    return float(np.mean([metrics.dice(p == k, t == k) for p, t in zip(predictions, labels) for k in (1, 2)]))


@pytest.mark.slow  # 150 training steps end to end
def test_overfits_a_tiny_synthetic_set_of_mixed_sizes():
    images, labels = shapes(8, [(32, 32), (27, 40)])
    model, losses = train_unet(images, labels, 3, UNetConfig.tiny(), seed=0, progress=False)
    assert model.canvas == (32, 48)
    assert len(losses) == 150 and np.mean(losses[-10:]) < 0.3 * np.mean(losses[:10])
    predictions = predict_unet(model, images)
    assert [p.shape for p in predictions] == [i.shape for i in images] and predictions[0].dtype == np.int32
    assert mean_dice(predictions, labels) > 0.9
    bigger = shapes(2, [(50, 37)], seed=1)[0]  # larger than the training canvas: padded to (64, 48)
    assert [p.shape for p in predict_unet(model, bigger)] == [(50, 37)] * 2


@pytest.mark.slow  # trains tiny U-Nets (a few steps)
def test_training_is_deterministic_per_seed():
    images, labels = shapes(4, [(16, 16)])
    cfg = UNetConfig.tiny(steps=3, batch_size=2)
    first = train_unet(images, labels, 3, cfg, seed=5, progress=False)
    again = train_unet(images, labels, 3, cfg, seed=5, progress=False)
    other = train_unet(images, labels, 3, cfg, seed=6, progress=False)
    assert first[1] == again[1] and first[1] != other[1]
    assert all(np.array_equal(a, b) for a, b in zip(predict_unet(first[0], images), predict_unet(again[0], images)))


@pytest.mark.slow  # trains tiny U-Nets (a few steps)
def test_pixels_labelled_minus_one_are_left_out_of_the_loss():
    """-1 (a pseudo-label the teacher is unsure of) counts nowhere: slices left out whole have no loss at all."""
    images, labels = shapes(2, [(16, 16)])
    cfg = UNetConfig.tiny(steps=2, batch_size=2, features=(4, 8))
    ignored = [np.full((16, 16), -1), np.full((16, 16), -1)]
    assert train_unet(images, ignored, 3, cfg, progress=False)[1] == [0.0, 0.0]
    half = [np.where(np.arange(16)[None] < 8, label, -1) for label in labels]
    assert train_unet(images, half, 3, cfg, progress=False)[1] != [0.0, 0.0]
    bad = labels[0].copy()
    bad[0, 0] = -2
    with pytest.raises(ValueError, match=r"labels\[0\]: values -2..2 outside \[0, 3\) \(or -1"):
        train_unet(images, [bad, labels[1]], 3, progress=False)


@pytest.mark.slow  # trains tiny U-Nets (a few steps)
def test_canvas_sets_the_smallest_padding():
    images, labels = shapes(2, [(16, 16)])
    cfg = UNetConfig.tiny(steps=1, batch_size=2, features=(4, 8))  # small: one compile for the canvas
    model, _ = train_unet(images, labels, 3, cfg, canvas=(40, 20), progress=False)
    assert model.canvas == (48, 32)  # rounded up to pad_multiple 16
    assert [p.shape for p in predict_unet(model, images)] == [(16, 16)] * 2
    model, _ = train_unet(images, labels, 3, cfg, canvas=(8, 8), progress=False)
    assert model.canvas == (16, 16)  # never smaller than the slices


def test_bad_inputs_are_explained():
    images, labels = shapes(2, [(16, 16)])
    with pytest.raises(ValueError, match=r"labels\[0\]: values 0..2 outside \[0, 2\)"):
        train_unet(images, labels, 2, UNetConfig.tiny(), progress=False)
    with pytest.raises(ValueError, match=r"images\[1\]: intensities must be finite and in \[0, 1\]"):
        train_unet([images[0], images[1] * 300], labels, 3, progress=False)
    with pytest.raises(ValueError, match=r"labels\[1\]: expected an int array of shape \(16, 16\)"):
        train_unet(images, [labels[0], labels[1][:8]], 3, progress=False)
    with pytest.raises(ValueError, match="labels: 1 label maps for 2 images"):
        train_unet(images, labels[:1], 3, progress=False)
    with pytest.raises(ValueError, match="pad_multiple"):
        UNetConfig(features=(8, 16, 32, 64, 128), pad_multiple=8)
    with pytest.raises(ValueError, match="num_classes"):
        UNet(UNetConfig.tiny(), 1, rngs=nnx.Rngs(0))


def test_upsampling_is_a_transposed_convolution():
    """The U-Net upsamples with the library's stride-2 transposed convolution (one matmul + pixel shuffle)."""
    model = UNet(UNetConfig.tiny(features=(4, 8)), 3, rngs=nnx.Rngs(0))
    (up,) = model.upsample
    assert isinstance(up, StridedConvTranspose) and up.kernel.shape == (2, 2, 8, 4)
    reference = nnx.ConvTranspose(8, 4, (2, 2), strides=(2, 2), padding="VALID", rngs=nnx.Rngs(1))
    reference.kernel[...] = up.kernel[...]
    up.bias[...] = jax.random.normal(jax.random.key(1), (4,))
    reference.bias[...] = up.bias[...]
    x = jax.random.normal(jax.random.key(0), (2, 4, 6, 8))
    np.testing.assert_allclose(up(x), reference(x), atol=1e-5)


@pytest.mark.slow  # trains tiny U-Nets (a few steps)
def test_extra_features_feed_the_chosen_levels():
    """Per-pixel features (bench/sam_features.py) are warped with the slice, pooled to each chosen level and
    concatenated there; they must come exactly when the config asks for them, one (H, W, F) array per slice."""
    images, labels = shapes(2, [(16, 16)])
    cfg = UNetConfig.tiny(steps=2, batch_size=2, features=(4, 8), feature_channels=3, feature_levels=(0, 1))
    model = UNet(cfg, 3, rngs=nnx.Rngs(0))
    assert [block.conv1.in_features for block in model.down] == [1 + 3, 4 + 3]
    features = [np.random.default_rng(i).normal(size=(16, 16, 3)).astype(np.float32) for i in range(2)]
    trained, losses = train_unet(images, labels, 3, cfg, progress=False, features=features)
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert [p.shape for p in predict_unet(trained, images, features)] == [(16, 16)] * 2
    # the features change the prediction's logits: they are used, not ignored
    x = jax.numpy.asarray(np.stack(images))[..., None]
    f = jax.numpy.asarray(np.stack(features))
    assert not np.allclose(trained(x, f), trained(x, f * 0 + 5.0))
    with pytest.raises(ValueError, match=r"features\[1\]: expected shape \(16, 16, 3\)"):
        train_unet(images, labels, 3, cfg, progress=False, features=[features[0], features[1][..., :2]])
    with pytest.raises(ValueError, match="features: expected one"):
        train_unet(images, labels, 3, cfg, progress=False)
    with pytest.raises(ValueError, match="features: expected one"):
        predict_unet(trained, images)
    with pytest.raises(ValueError, match="feature_levels"):
        UNetConfig.tiny(feature_channels=3, feature_levels=(5,))
