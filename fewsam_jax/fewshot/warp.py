"""Augmentation of cached training targets inside the jitted step: no encoder pass, no new cache entry.

A random rotation and isotropic scale about the frame centre is applied alike to a target slice's
embedding grid (bilinear), its image-branch input (bilinear) and its labels (nearest; what comes from
outside the frame is ``IGNORE``). Warping an embedding is not the same as embedding a warped image,
but it teaches the decoder (and the image branch) the same invariance a U-Net gets from augmenting
its inputs, at the cost of a gather per step. The image-branch input also gets a random contrast and
brightness change. Coordinates are normalised per grid (cell centres at (i + 0.5) / n), so the 64x64
embedding and the 256x256 label frame move together.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy import ndimage

from fewsam_jax.fewshot.prompts import IGNORE


def _sample_grid(size: int, matrix: jax.Array) -> jax.Array:
    """Source coordinates (2, size, size), in cells, of each output cell under ``matrix`` (2, 2)."""
    centres = (jnp.arange(size, dtype=jnp.float32) + 0.5) / size - 0.5
    yx = jnp.stack(jnp.meshgrid(centres, centres, indexing="ij"))  # (2, size, size), normalised
    source = jnp.einsum("ij,jhw->ihw", matrix, yx)
    return (source + 0.5) * size - 0.5


def _warp(x: jax.Array, matrix: jax.Array, order: int, fill: float) -> jax.Array:
    """(H, W, C) resampled at the source grid of ``matrix``."""
    coords = _sample_grid(x.shape[0], matrix)
    channel = lambda c: ndimage.map_coordinates(c, list(coords), order=order, mode="constant", cval=fill)
    return jax.vmap(channel, in_axes=-1, out_axes=-1)(x)


def warp_targets(key: jax.Array, embeddings: jax.Array, labels: jax.Array, images: jax.Array | None,
                 rotation_deg: float, scale: float, intensity: float):
    """Randomly warped copies of a batch of targets.

    Args:
      embeddings: (B, E, E, C); labels: (B, L, L) class indices with ``IGNORE``; images: (B, L, L, c) or None.
      rotation_deg / scale: uniform ranges of the rotation (degrees) and of the scale factor (1 ± scale).
      intensity: contrast factor 1 ± intensity and brightness ± intensity / 2 on ``images``.
    Returns the same three, warped (one transform per target).
    """
    b = embeddings.shape[0]
    k_angle, k_scale, k_contrast, k_bright = jax.random.split(key, 4)
    angle = jnp.deg2rad(jax.random.uniform(k_angle, (b,), minval=-rotation_deg, maxval=rotation_deg))
    zoom = jax.random.uniform(k_scale, (b,), minval=1.0 - scale, maxval=1.0 + scale)
    cos, sin = jnp.cos(angle) / zoom, jnp.sin(angle) / zoom
    matrices = jnp.stack([jnp.stack([cos, -sin], -1), jnp.stack([sin, cos], -1)], 1)  # (B, 2, 2)
    embeddings = jax.vmap(lambda x, m: _warp(x, m, 1, 0.0))(embeddings, matrices)
    labels = jax.vmap(lambda x, m: _warp(x[..., None].astype(jnp.float32), m, 0, float(IGNORE))[..., 0])(
        labels, matrices).astype(labels.dtype)
    if images is not None:
        images = jax.vmap(lambda x, m: _warp(x, m, 1, 0.0))(images, matrices)
        contrast = jax.random.uniform(k_contrast, (b, 1, 1, 1), minval=1.0 - intensity, maxval=1.0 + intensity)
        bright = jax.random.uniform(k_bright, (b, 1, 1, 1), minval=-intensity / 2, maxval=intensity / 2)
        images = images * contrast + bright
    return embeddings, labels, images
