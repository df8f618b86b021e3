"""Few-shot embeddings: what the labelled regions of the support slices look like to the encoder.

Labels are first moved into the model's low-resolution frame (the L x L grid of the decoder's mask
logits, L = 4E, covering the padded encoder input), then area-averaged onto the E x E embedding
grid. A class's region embedding on one slice is the area-weighted mean of the embedding vectors
under its mask (a masked-average prototype); the background's likewise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fewsam_jax.config import SamConfig
from fewsam_jax.transforms import resized_shape

IGNORE = -1  # label of the padding outside the resized image in the low-resolution frame


def labels_to_low_res(labels: np.ndarray, class_ids: tuple[int, ...], cfg: SamConfig) -> np.ndarray:
    """Label slices (N, H, W) with ids -> class indices (N, L, L) in the low-resolution frame.

    0 is background, k is ``class_ids[k - 1]``, ``IGNORE`` marks the padding. Upsampling is smooth
    (one-hot channels resized bilinearly, then argmax), not blocky nearest-neighbour.
    """
    labels = np.asarray(labels)
    n, height, width = labels.shape
    low = cfg.low_res_size
    new_h, new_w = resized_shape(height, width, low)
    index = np.zeros(labels.shape, np.int32)
    for k, class_id in enumerate(class_ids, start=1):
        index[labels == class_id] = k
    one_hot = jax.nn.one_hot(index, len(class_ids) + 1, dtype=jnp.float32)
    resized = jax.image.resize(one_hot, (n, new_h, new_w, len(class_ids) + 1), "linear", antialias=True)
    out = np.full((n, low, low), IGNORE, np.int32)
    out[:, :new_h, :new_w] = np.asarray(jnp.argmax(resized, axis=-1))
    return out


def images_to_low_res(images: np.ndarray, cfg: SamConfig) -> np.ndarray:
    """Normalised slices (N, H, W, C) in [0, 1] -> (N, L, L, C) in the low-resolution frame, the frame of
    :func:`labels_to_low_res`: longest side resized to L (antialiased bilinear), zeros in the padding."""
    images = np.asarray(images, np.float32)
    n, height, width, channels = images.shape
    low = cfg.low_res_size
    new_h, new_w = resized_shape(height, width, low)
    out = np.zeros((n, low, low, channels), np.float32)
    out[:, :new_h, :new_w] = np.asarray(
        jax.image.resize(jnp.asarray(images), (n, new_h, new_w, channels), "linear", antialias=True))
    return out


def region_fractions(low_res_labels: jax.Array, num_classes: int, embedding_size: int) -> jax.Array:
    """(N, L, L) class indices -> (N, E, E, 1 + num_classes) area fraction of each region per cell.

    Channel 0 is the background; padding counts for nothing.
    """
    n, low, _ = low_res_labels.shape
    one_hot = jax.nn.one_hot(low_res_labels, num_classes + 1, dtype=jnp.float32)  # IGNORE -> all zeros
    f = low // embedding_size
    return one_hot.reshape(n, embedding_size, f, embedding_size, f, num_classes + 1).mean(axis=(2, 4))


def region_embeddings(embeddings: jax.Array, fractions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Masked-average prototypes per slice and region.

    Args:
      embeddings: (N, E, E, C) image embeddings.
      fractions: (N, E, E, R) region area fractions (:func:`region_fractions`).
    Returns:
      prototypes (N, R, C) (zero where a region is absent) and areas (N, R) in embedding cells.
    """
    area = fractions.sum(axis=(1, 2))
    summed = jnp.einsum("nhwr,nhwc->nrc", fractions, embeddings)
    return summed / jnp.maximum(area, 1e-6)[..., None], area


def region_positions(fractions: jax.Array, dense_pe: jax.Array) -> jax.Array:
    """Area-weighted mean positional encoding of each region: (N, E, E, R), (E, E, C) -> (N, R, C)."""
    area = fractions.sum(axis=(1, 2))
    return jnp.einsum("nhwr,hwc->nrc", fractions, dense_pe) / jnp.maximum(area, 1e-6)[..., None]


def region_boxes(fractions: jax.Array) -> jax.Array:
    """Bounding box of each region on each slice, in embedding cells: (N, E, E, R) -> (N, R, 4)
    as (x0, y0, x1, y1) cell edges; zeros where a region is absent."""
    present = fractions > 0
    size = fractions.shape[1]
    cells = jnp.arange(size, dtype=jnp.float32)
    rows = present.any(axis=2)  # (N, E, R) over x
    cols = present.any(axis=1)  # (N, E, R) over y

    def extent(hit):
        lo = jnp.where(hit, cells[None, :, None], size).min(axis=1)
        hi = jnp.where(hit, cells[None, :, None] + 1, 0).max(axis=1)
        return lo, hi

    y0, y1 = extent(rows)
    x0, x1 = extent(cols)
    box = jnp.stack([x0, y0, x1, y1], axis=-1)
    return jnp.where(present.any(axis=(1, 2))[..., None], box, 0.0)
