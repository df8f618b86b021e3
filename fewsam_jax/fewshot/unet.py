"""A compact 2D U-Net on the slices' pixels: the few-shot method's student (:mod:`fewsam_jax.fewshot.student`,
trained on every slice of the support and unlabelled volumes as the few-shot decoder labels them) and, trained
from scratch on the labelled slices alone, the research tree's supervised baseline (``bench.baselines``).

Architecture (nnU-Net's 2D building blocks, shrunk): per level two 3x3 convolutions, each followed
by instance normalisation and LeakyReLU(0.01); 2x2 max pooling down, 2x2 stride-2 transposed
convolution up (:class:`fewsam_jax.modeling.common.StridedConvTranspose`: one matmul and a
depth-to-space reshape, since XLA's transposed-convolution gradient is slow on CPU), skip connections by concatenation, a 1x1 convolution to ``num_classes`` logits. Input
(B, H, W, 1) intensities in [0, 1], NHWC.

Training: softmax cross-entropy + soft Dice (batch Dice over the foreground classes, as nnU-Net),
AdamW with linear warm-up and cosine decay, global-norm clipping. Each batch gets small random
affine (rotation, scale, translation) and intensity (contrast, brightness) jitter inside the jitted
step; flips are off by default because they swap lateralised anatomy. Slices of different sizes
are zero-padded at the bottom/right onto one canvas whose sides are multiples of ``pad_multiple``;
padding (and anything the affine moves in from outside the slice), and pixels labelled -1, are excluded from the loss.
Deterministic for a seed (batches from a NumPy generator, augmentation from ``jax.random``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from fewsam_jax.logs import tqdm
from fewsam_jax.modeling.common import StridedConvTranspose

__all__ = ["UNet", "UNetConfig", "predict_unet", "predict_unet_probabilities", "train_unet"]


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """Architecture, optimisation and augmentation of the U-Net baseline (defaults: ``small``).

    features: channels per level (one pooling between levels); pad_multiple must be divisible by
    2 ** (levels - 1). rotation_degrees / scale_jitter / translation (fraction of the canvas) /
    intensity_jitter (contrast factor 1 ± j, brightness ± j / 2) are uniform ranges; 0 disables.
    """

    features: tuple[int, ...] = (16, 32, 64, 128)
    pad_multiple: int = 16
    steps: int = 600
    batch_size: int = 16
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 30
    grad_clip: float = 1.0
    dice_weight: float = 1.0
    flips: bool = False
    rotation_degrees: float = 10.0
    scale_jitter: float = 0.1
    translation: float = 0.05
    intensity_jitter: float = 0.1
    predict_batch: int = 32
    # extra per-pixel input features (e.g. SAM's embedding resampled to the slice grid, bench/sam_features.py):
    # their channel count (0: none) and the encoder levels they are concatenated at (0: input resolution)
    feature_channels: int = 0
    feature_levels: tuple[int, ...] = (0,)

    def __post_init__(self):
        if not self.features or min(self.features) < 1:
            raise ValueError(f"UNetConfig.features: expected positive channel counts, got {self.features}")
        if self.pad_multiple % 2 ** (len(self.features) - 1):
            raise ValueError(f"UNetConfig.pad_multiple: {self.pad_multiple} is not divisible by "
                             f"2 ** {len(self.features) - 1} (one halving per level)")
        if self.steps < 1 or self.batch_size < 1 or self.predict_batch < 1:
            raise ValueError("UNetConfig: steps, batch_size and predict_batch must be positive")
        if self.feature_channels < 0 or not set(self.feature_levels) <= set(range(len(self.features))):
            raise ValueError(f"UNetConfig.feature_channels / feature_levels: expected >= 0 / levels in "
                             f"0..{len(self.features) - 1}, got {self.feature_channels} / {self.feature_levels}")

    @classmethod
    def small(cls, **overrides) -> UNetConfig:
        """16-32-64-128 features, 600 steps of 16 slices: the study's baseline."""
        return cls(**overrides)

    @classmethod
    def tiny(cls, **overrides) -> UNetConfig:
        """8-16-32 features, 150 steps of 8: for tests and quick runs."""
        return cls(**{"features": (8, 16, 32), "steps": 150, "batch_size": 8, **overrides})


class ConvBlock(nnx.Module):
    """Two (3x3 conv, instance norm, LeakyReLU) layers. (B, H, W, in) -> (B, H, W, out)."""

    def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(in_features, out_features, (3, 3), rngs=rngs)
        self.norm1 = nnx.InstanceNorm(out_features, epsilon=1e-5, rngs=rngs)
        self.conv2 = nnx.Conv(out_features, out_features, (3, 3), rngs=rngs)
        self.norm2 = nnx.InstanceNorm(out_features, epsilon=1e-5, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jax.nn.leaky_relu(self.norm1(self.conv1(x)), 0.01)
        return jax.nn.leaky_relu(self.norm2(self.conv2(x)), 0.01)


class UNet(nnx.Module):
    """2D U-Net: (B, H, W, 1) in [0, 1] -> (B, H, W, num_classes) logits; H, W multiples of
    2 ** (levels - 1). ``canvas`` is the padded (H, W) it was trained on (set by ``train_unet``);
    prediction pads smaller slices to it so they see the padding they were trained with. With
    ``feature_channels``, extra features (B, H, W, F) are average-pooled to each of ``feature_levels``
    and concatenated to that level's input."""

    def __init__(self, cfg: UNetConfig, num_classes: int, *, rngs: nnx.Rngs):
        if num_classes < 2:
            raise ValueError(f"num_classes: expected >= 2 (background included), got {num_classes}")
        self.config = cfg
        self.num_classes = num_classes
        self.canvas: tuple[int, int] | None = None
        f = cfg.features
        extra = [cfg.feature_channels if level in cfg.feature_levels else 0 for level in range(len(f))]
        self.down = nnx.List([ConvBlock(i + e, o, rngs=rngs) for i, e, o in zip((1, *f[:-1]), extra, f)])
        self.upsample = nnx.List([StridedConvTranspose(f[i + 1], f[i], 2, rngs) for i in range(len(f) - 1)])
        self.up = nnx.List([ConvBlock(2 * f[i], f[i], rngs=rngs) for i in range(len(f) - 1)])
        self.head = nnx.Conv(f[0], num_classes, (1, 1), rngs=rngs)

    def __call__(self, x: jax.Array, features: jax.Array | None = None) -> jax.Array:
        if (features is None) != (self.config.feature_channels == 0):
            raise ValueError(f"features: expected them exactly when feature_channels > 0 "
                             f"(feature_channels={self.config.feature_channels})")
        skips = []
        for level, block in enumerate(self.down):
            if level:
                x = nnx.max_pool(x, (2, 2), (2, 2))
                features = None if features is None else nnx.avg_pool(features, (2, 2), (2, 2))
            if features is not None and level in self.config.feature_levels:
                x = jnp.concatenate([x, features], axis=-1)
            x = block(x)
            skips.append(x)
        for level in reversed(range(len(self.up))):
            x = self.upsample[level](x)
            x = self.up[level](jnp.concatenate([skips[level], x], axis=-1))
        return self.head(x)


def _round_up(size: int, multiple: int) -> int:
    return int(math.ceil(size / multiple) * multiple)


def _check_images(images: Sequence[np.ndarray], name: str = "images") -> list[np.ndarray]:
    if len(images) == 0:
        raise ValueError(f"{name}: expected a non-empty list of (H, W) slices")
    checked = []
    for i, image in enumerate(images):
        image = np.asarray(image, np.float32)
        if image.ndim != 2 or min(image.shape) == 0:
            raise ValueError(f"{name}[{i}]: expected a (H, W) slice, got shape {image.shape}")
        if not np.isfinite(image).all() or image.min() < 0 or image.max() > 1:
            raise ValueError(f"{name}[{i}]: intensities must be finite and in [0, 1] (fewsam_jax.preprocess)")
        checked.append(image)
    return checked


def _pad(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Zero-pad the first two axes of ``array`` at the bottom/right to ``shape``."""
    pad = ((0, shape[0] - array.shape[0]), (0, shape[1] - array.shape[1])) + ((0, 0),) * (array.ndim - 2)
    return np.pad(array, pad)


def _check_features(features, images: list[np.ndarray], cfg: UNetConfig) -> None:
    """Extra features must come exactly when the config asks for them, one (H, W, F) array per slice."""
    if (features is None) != (cfg.feature_channels == 0):
        raise ValueError(f"features: expected one (H, W, {cfg.feature_channels}) array per slice exactly when "
                         f"UNetConfig.feature_channels > 0")
    if features is None:
        return
    if len(features) != len(images):
        raise ValueError(f"features: {len(features)} arrays for {len(images)} images")
    for i, (feature, image) in enumerate(zip(features, images)):
        if np.shape(feature) != (*image.shape, cfg.feature_channels):
            raise ValueError(f"features[{i}]: expected shape {(*image.shape, cfg.feature_channels)}, got {np.shape(feature)}")


def _stack_features(features, images: list[np.ndarray], cfg: UNetConfig, canvas) -> jax.Array | None:
    """The slices' extra features padded onto ``canvas`` (N, H, W, F), checked; None without."""
    _check_features(features, images, cfg)
    if features is None:
        return None
    return jnp.asarray(np.stack([_pad(np.asarray(f, np.float32), canvas) for f in features]))


def segmentation_loss(logits: jax.Array, labels: jax.Array, valid: jax.Array, dice_weight: float) -> jax.Array:
    """Masked softmax CE + (1 - batch soft Dice over foreground classes).
    logits (B, H, W, K), labels (B, H, W) int, valid (B, H, W) float."""
    count = jnp.maximum(valid.sum(), 1.0)
    ce = (optax.softmax_cross_entropy_with_integer_labels(logits, labels) * valid).sum() / count
    probs = jax.nn.softmax(logits, axis=-1)[..., 1:] * valid[..., None]
    target = jax.nn.one_hot(labels, logits.shape[-1])[..., 1:] * valid[..., None]
    overlap = (probs * target).sum(axis=(0, 1, 2))
    dice = (2.0 * overlap + 1.0) / (probs.sum(axis=(0, 1, 2)) + target.sum(axis=(0, 1, 2)) + 1.0)
    return ce + dice_weight * (1.0 - dice.mean())


def augment(key: jax.Array, image: jax.Array, labels: jax.Array, valid: jax.Array, cfg: UNetConfig,
            features: jax.Array | None = None):
    """One random affine + intensity jitter of a (H, W) slice, its labels and its valid mask
    (labels and mask resampled nearest-neighbour; what comes from outside the canvas is invalid), and
    the same affine (linear) of its extra ``features`` (H, W, F), if any. Returns all four."""
    keys = jax.random.split(key, 7)
    height, width = image.shape
    angle = jnp.deg2rad(cfg.rotation_degrees) * jax.random.uniform(keys[0], minval=-1, maxval=1)
    scale = 1.0 + cfg.scale_jitter * jax.random.uniform(keys[1], minval=-1, maxval=1)
    shift = cfg.translation * jnp.array([height, width]) * jax.random.uniform(keys[2], (2,), minval=-1, maxval=1)
    flip = jnp.where(cfg.flips & jax.random.bernoulli(keys[3], 0.5, (2,)), -1.0, 1.0)
    centre = jnp.array([(height - 1) / 2, (width - 1) / 2])
    rows, cols = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32), indexing="ij")
    y, x = rows - centre[0] - shift[0], cols - centre[1] - shift[1]
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    source = [flip[0] * (cos * y - sin * x) / scale + centre[0], flip[1] * (sin * y + cos * x) / scale + centre[1]]
    resample = lambda a, order: jax.scipy.ndimage.map_coordinates(a, source, order=order, mode="constant", cval=0)
    contrast = 1.0 + cfg.intensity_jitter * jax.random.uniform(keys[4], minval=-1, maxval=1)
    brightness = 0.5 * cfg.intensity_jitter * jax.random.uniform(keys[5], minval=-1, maxval=1)
    image = jnp.clip(resample(image, 1) * contrast + brightness, 0.0, 1.0)
    if features is not None:
        features = jax.vmap(lambda channel: resample(channel, 1), in_axes=-1, out_axes=-1)(features)
    return image, resample(labels, 0), resample(valid, 0), features


@functools.cache
def make_optimizer(cfg: UNetConfig) -> optax.GradientTransformation:
    """AdamW, warm-up + cosine decay, clipping. One object per config: the jitted step, which sees
    it as static, then compiles once per config and batch shape instead of once per training run."""
    schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, min(cfg.warmup_steps, cfg.steps - 1),
                                                  max(cfg.steps, 2))
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), optax.adamw(schedule, weight_decay=cfg.weight_decay))


@nnx.jit
def train_step(model: UNet, optimizer: nnx.Optimizer, images, labels, valid, features, key):
    """One AdamW step on an augmented batch. images (B, H, W) float, labels (B, H, W) int, valid (B, H, W),
    features (B, H, W, F) or None."""
    cfg = model.config
    keys = jax.random.split(key, images.shape[0])
    images, labels, valid, features = jax.vmap(lambda k, i, l, v, f: augment(k, i, l, v, cfg, f))(
        keys, images, labels, valid, features)

    def loss_fn(net):
        return segmentation_loss(net(images[..., None], features), labels, valid, cfg.dice_weight)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


def train_unet(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    num_classes: int,
    cfg: UNetConfig | None = None,
    seed: int = 0,
    progress: bool = True,
    canvas: tuple[int, int] | None = None,
    features: Sequence[np.ndarray] | None = None,
) -> tuple[UNet, list[float]]:
    """Train a U-Net from scratch.

    Args:
      images: (H, W) float32 slices in [0, 1] (sizes may differ).
      labels: (H, W) int label maps, values in [0, num_classes); -1 marks a pixel left out of the loss.
      num_classes: output classes, background (0) included: label ids 1 and 2 need 3.
      canvas: the smallest (H, W) to pad the slices onto (rounded up to ``pad_multiple``); default:
        the largest slice. Models trained on the same canvas see the same padding, and share one
        compiled training step and prediction.
      features: (H, W, cfg.feature_channels) float32 per slice, when the config asks for extra features.
    Returns:
      the trained model and the loss of every step.
    """
    cfg = cfg or UNetConfig()
    images = _check_images(images)
    if len(labels) != len(images):
        raise ValueError(f"labels: {len(labels)} label maps for {len(images)} images")
    label_maps = []
    for i, (image, label) in enumerate(zip(images, labels)):
        label = np.asarray(label)
        if label.shape != image.shape or not np.issubdtype(label.dtype, np.integer):
            raise ValueError(f"labels[{i}]: expected an int array of shape {image.shape}, got {label.dtype} {label.shape}")
        if label.min() < -1 or label.max() >= num_classes:
            raise ValueError(f"labels[{i}]: values {label.min()}..{label.max()} outside [0, {num_classes}) (or -1: "
                             "left out); num_classes counts the background (labels 1 and 2 need num_classes=3)")
        label_maps.append(label.astype(np.int32))
    smallest = canvas or (0, 0)
    canvas = tuple(_round_up(max(smallest[d], *(im.shape[d] for im in images)), cfg.pad_multiple) for d in (0, 1))
    stack_images = jnp.asarray(np.stack([_pad(im, canvas) for im in images]))
    stack_labels = jnp.asarray(np.stack([_pad(np.maximum(lab, 0), canvas) for lab in label_maps]))
    stack_valid = jnp.asarray(np.stack([_pad((lab >= 0).astype(np.float32), canvas) for lab in label_maps]))
    stack_features = _stack_features(features, images, cfg, canvas)

    model = UNet(cfg, num_classes, rngs=nnx.Rngs(seed))
    model.canvas = canvas
    optimizer = nnx.Optimizer(model, make_optimizer(cfg), wrt=nnx.Param)
    rng = np.random.default_rng(seed)
    key = jax.random.key(seed)
    order = np.zeros(0, np.int64)
    losses = []
    bar = tqdm(range(cfg.steps), desc="train U-Net", disable=not progress)
    for step in bar:
        while len(order) < cfg.batch_size:  # epochs of shuffled slices
            order = np.concatenate([order, rng.permutation(len(images))])
        batch, order = jnp.asarray(order[: cfg.batch_size]), order[cfg.batch_size:]
        losses.append(train_step(model, optimizer, stack_images[batch], stack_labels[batch], stack_valid[batch],
                                 None if stack_features is None else stack_features[batch],
                                 jax.random.fold_in(key, step)))
        if progress and step % 50 == 0:
            bar.set_postfix(loss=f"{float(losses[-1]):.3f}")
    return model, [float(loss) for loss in losses]


@nnx.jit
def _logits(model: UNet, images: jax.Array, features: jax.Array | None = None) -> jax.Array:
    return model(images[..., None], features)


def predict_unet_probabilities(model: UNet, images: Sequence[np.ndarray],
                               features: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
    """Class probabilities (H, W, C) float32 (softmax; C = ``num_classes``, background first) for (H, W)
    slices in [0, 1] of any size: each is padded to the training canvas (or the next multiple of
    ``pad_multiple`` when larger), batched by padded shape. ``features``: the slices' extra features, as for
    :func:`train_unet`."""
    images = _check_images(images)
    cfg = model.config
    _check_features(features, images, cfg)
    canvas = model.canvas or (0, 0)
    shapes = [tuple(max(_round_up(s, cfg.pad_multiple), c) for s, c in zip(im.shape, canvas)) for im in images]
    results: list[np.ndarray | None] = [None] * len(images)
    for shape in sorted(set(shapes)):
        members = [i for i, s in enumerate(shapes) if s == shape]
        for start in range(0, len(members), cfg.predict_batch):
            chunk = members[start: start + cfg.predict_batch]
            batch = np.zeros((cfg.predict_batch, *shape), np.float32)  # fixed batch: one compile per shape
            extra = None if features is None else np.zeros((cfg.predict_batch, *shape, cfg.feature_channels), np.float32)
            for row, i in enumerate(chunk):
                batch[row] = _pad(images[i], shape)
                if extra is not None:
                    extra[row] = _pad(np.asarray(features[i], np.float32), shape)
            logits = _logits(model, jnp.asarray(batch), None if extra is None else jnp.asarray(extra))
            probabilities = np.asarray(jax.nn.softmax(logits, axis=-1), np.float32)
            for row, i in enumerate(chunk):
                results[i] = probabilities[row, : images[i].shape[0], : images[i].shape[1]]
    return results


def predict_unet(model: UNet, images: Sequence[np.ndarray], features: Sequence[np.ndarray] | None = None
                 ) -> list[np.ndarray]:
    """Label maps (H, W) int32: the most probable class of :func:`predict_unet_probabilities`."""
    return [p.argmax(axis=-1).astype(np.int32) for p in predict_unet_probabilities(model, images, features)]
