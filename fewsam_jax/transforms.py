"""Each model's own input and output geometry: resize the longest side, normalise, pad; and back.

``"sam"`` (segment-anything): longest side to ``image_size``, ``(x - mean) / std`` on the 0-255
scale, zero padding bottom/right. ``"minmax"`` (LiteMedSAM's inference code): longest side to
``image_size``, min-max to [0, 1] over the resized image, zero padding bottom/right.
Resizing is antialiased bilinear (``jax.image.resize``), so preparation runs inside the jitted,
batched encode. Images enter on the 0-255 scale, NHWC.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fewsam_jax.config import SamConfig


def resized_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """Shape after scaling the longest side to ``long_side`` (rounded as segment-anything does)."""
    scale = long_side / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def prepare_images(images: jax.Array, cfg: SamConfig) -> jax.Array:
    """(B, H, W, 3) on the 0-255 scale -> (B, S, S, 3) encoder input, S = ``cfg.image_size``."""
    batch, height, width, channels = images.shape
    new_h, new_w = resized_shape(height, width, cfg.image_size)
    x = jax.image.resize(images.astype(jnp.float32), (batch, new_h, new_w, channels), "linear", antialias=True)
    if cfg.preprocessing == "minmax":
        low = x.min(axis=(1, 2, 3), keepdims=True)
        high = x.max(axis=(1, 2, 3), keepdims=True)
        x = (x - low) / jnp.maximum(high - low, 1e-8)
    else:
        x = (x - jnp.asarray(cfg.pixel_mean)) / jnp.asarray(cfg.pixel_std)
    pad = cfg.image_size
    return jnp.pad(x, ((0, 0), (0, pad - new_h), (0, pad - new_w), (0, 0)))


def scale_coords(coords: np.ndarray, original_size: tuple[int, int], cfg: SamConfig) -> np.ndarray:
    """xy coordinates (..., 2) in the original image -> the model's input frame."""
    height, width = original_size
    new_h, new_w = resized_shape(height, width, cfg.image_size)
    coords = np.asarray(coords, np.float32).copy()
    coords[..., 0] *= new_w / width
    coords[..., 1] *= new_h / height
    return coords


def scale_boxes(boxes: np.ndarray, original_size: tuple[int, int], cfg: SamConfig) -> np.ndarray:
    """xyxy boxes (..., 4) in the original image -> the model's input frame."""
    boxes = np.asarray(boxes, np.float32)
    return scale_coords(boxes.reshape(*boxes.shape[:-1], 2, 2), original_size, cfg).reshape(boxes.shape)


def postprocess_masks(low_res: jax.Array, original_size: tuple[int, int], cfg: SamConfig) -> jax.Array:
    """Mask logits (B, M, s, s) -> (B, M, H, W) at the original size, as segment-anything does:
    upsample to the padded input, crop the padding, resize to the original (bilinear, no antialias)."""
    batch, masks = low_res.shape[:2]
    size = cfg.image_size
    x = jax.image.resize(low_res, (batch, masks, size, size), "linear", antialias=False)
    new_h, new_w = resized_shape(*original_size, size)
    x = x[..., :new_h, :new_w]
    return jax.image.resize(x, (batch, masks, *original_size), "linear", antialias=False)
