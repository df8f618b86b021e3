"""Augmented copies of the support slices, made before encoding so training still reads only caches.

Each copy draws a small rotation and isotropic scale about the slice centre (labels follow with
nearest-neighbour sampling), an optional left-right flip, and a gamma change of the intensities.
Flips are off by default: they break the left/right priors of lateralised anatomy (liver, spleen).
The options are :class:`~fewsam_jax.fewshot.config.AugmentConfig`, part of the training config.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from fewsam_jax.fewshot.config import AugmentConfig


def _warp(image: np.ndarray, matrix: np.ndarray, order: int) -> np.ndarray:
    centre = (np.asarray(image.shape) - 1) / 2
    offset = centre - matrix @ centre
    return ndimage.affine_transform(image, matrix, offset=offset, order=order, mode="nearest")


def augment_slices(images: np.ndarray, labels: np.ndarray, cfg: AugmentConfig,
                   seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``cfg.copies`` copies of (n, H, W) images in [0, 1] and their labels, drawn from ``seed``.

    Returns images (n * copies, H, W), labels likewise and the index of each copy's source slice.
    """
    rng = np.random.default_rng(seed)
    out_images, out_labels, sources = [], [], []
    for _ in range(cfg.copies):
        for i, (image, label) in enumerate(zip(images, labels)):
            angle = np.deg2rad(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg))
            zoom = rng.uniform(1 - cfg.scale, 1 + cfg.scale)
            flip = -1.0 if cfg.flip and rng.random() < 0.5 else 1.0
            cos, sin = np.cos(angle) / zoom, np.sin(angle) / zoom
            matrix = np.array([[cos, -sin], [sin, cos]]) @ np.diag([1.0, flip])
            exponent = np.exp(rng.uniform(-cfg.gamma, cfg.gamma))
            warped = np.clip(_warp(image.astype(np.float32), matrix, order=1), 0.0, 1.0)
            out_images.append(warped ** exponent)
            out_labels.append(_warp(label, matrix, order=0))
            sources.append(i)
    if not out_images:
        return images[:0], labels[:0], np.zeros(0, np.int64)
    return np.stack(out_images).astype(np.float32), np.stack(out_labels), np.asarray(sources)
