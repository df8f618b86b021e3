"""Prompts a user would give SAM, simulated from a ground-truth mask: points and boxes.

Conventions: masks are (H, W) bool; points are (x, y) = (column, row) pixel coordinates of the
original slice, as segment-anything's ``SamPredictor`` takes them; boxes are xyxy with inclusive
pixel extents (``x1`` is the last column of the structure, as MedSAM builds them).
``prompted.make_prompt`` moves both onto the structure's footprint when the model enlarges the slice.

Choices (a simulated user who clicks sensibly):

* **Positive points.** The first is the most interior pixel of the structure (the maximum of the
  Euclidean distance transform, pixels outside the image counting as background; ties go to the
  first in row-major order), where a person clicks first. The others are drawn uniformly, without
  replacement, from pixels that are not on the structure's boundary (distance >= 2 px), falling back
  to any other pixel of the structure when it is too thin, and repeating points only when it has
  fewer pixels than requested.
* **Negative points.** As many as positives, drawn uniformly from background pixels *near* the
  structure: inside its bounding box grown by ``margin`` (20 % of the box side, at least 3 px) and
  not touching it (8-connected neighbours excluded), i.e. where a user corrects a leak. If that ring
  is empty, any background pixel in the grown box, then in the image. Negatives may land on another
  class's structure when several share a slice: for a one-class-at-a-time prompt that is background.
* **Box jitter.** SAM's training noise: each coordinate moves by a Gaussian of standard deviation
  ``jitter`` times the box's side along that axis, clipped to ``max_shift`` (20 px), then the box is
  clipped to the image and its corners re-ordered.

Randomness comes from a NumPy ``Generator`` (or a seed), so every prompt is reproducible.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
from scipy import ndimage

__all__ = ["PROMPT_SUITE", "PromptSpec", "box_from_mask", "sample_points"]


@dataclasses.dataclass(frozen=True)
class PromptSpec:
    """One prompted baseline: ``num_points`` positive clicks (plus as many negatives) or one box.

    ``jitter`` (boxes only) is the standard deviation of the corner noise as a fraction of the side.
    """

    kind: Literal["points", "box"]
    num_points: int = 1
    negatives: bool = False
    jitter: float = 0.0

    def __post_init__(self):
        if self.kind not in ("points", "box"):
            raise ValueError(f"PromptSpec.kind: expected 'points' or 'box', got {self.kind!r}")
        if self.kind == "points" and self.num_points < 1:
            raise ValueError(f"PromptSpec.num_points: expected >= 1, got {self.num_points}")
        if self.kind == "points" and self.jitter:
            raise ValueError("PromptSpec.jitter applies to boxes only")
        if self.kind == "box" and self.negatives:
            raise ValueError("PromptSpec.negatives applies to points only")
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError(f"PromptSpec.jitter: expected a fraction in [0, 1), got {self.jitter}")

    @property
    def name(self) -> str:
        """Table label, e.g. "SAM 3 points + neg", "SAM box ±10%"."""
        if self.kind == "box":
            return "SAM box" + (f" ±{self.jitter:.0%}" if self.jitter else "")
        plural = "point" if self.num_points == 1 else "points"
        return f"SAM {self.num_points} {plural}" + (" + neg" if self.negatives else "")

    @property
    def interactions_per_slice(self) -> int:
        """What a user spends per class and slice: clicks (positive and negative) or boxes."""
        if self.kind == "box":
            return 1
        return self.num_points * (2 if self.negatives else 1)

    @property
    def multimask_output(self) -> bool:
        """SAM's three candidate masks only for a lone click, the ambiguous prompt they exist for
        (the best is then chosen by predicted IoU, as segment-anything's automatic mode does); several
        clicks or a box use the single-mask output token, as SAM's authors recommend (and as
        LiteMedSAM, trained on boxes, was)."""
        return self.kind == "points" and self.interactions_per_slice == 1


PROMPT_SUITE: tuple[PromptSpec, ...] = (
    PromptSpec("points", 1),
    PromptSpec("points", 1, negatives=True),
    PromptSpec("points", 3),
    PromptSpec("points", 3, negatives=True),
    PromptSpec("points", 5),
    PromptSpec("points", 5, negatives=True),
    PromptSpec("box"),
    PromptSpec("box", jitter=0.1),
)


def _check_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask: expected a (H, W) array, got shape {mask.shape}")
    mask = mask.astype(bool)
    if not mask.any():
        raise ValueError("mask: is empty; a prompt needs at least one pixel of the structure")
    return mask


def _choose(candidates: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` rows of ``candidates`` (P, 2), without replacement when there are enough."""
    picks = rng.choice(len(candidates), size=count, replace=len(candidates) < count)
    return candidates[picks]


def _grown_box(mask: np.ndarray, margin: float) -> np.ndarray:
    """(H, W) bool: the mask's bounding box grown by ``margin`` of its side (at least 3 px), clipped."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    grow_r = max(3, round(margin * (rows[-1] - rows[0] + 1)))
    grow_c = max(3, round(margin * (cols[-1] - cols[0] + 1)))
    box = np.zeros_like(mask)
    box[max(rows[0] - grow_r, 0): rows[-1] + grow_r + 1, max(cols[0] - grow_c, 0): cols[-1] + grow_c + 1] = True
    return box


def sample_points(
    mask: np.ndarray,
    count: int,
    rng: np.random.Generator | int | None,
    negatives: bool = False,
    *,
    margin: float = 0.2,
) -> tuple[np.ndarray, np.ndarray]:
    """Simulated clicks on the structure ``mask`` (H, W) (choices in the module docstring).

    Args:
      count: positive points; with ``negatives``, as many negative points follow them.
      rng: a NumPy Generator or a seed.
      margin: how far around the structure's box negatives may fall, as a fraction of its side.
    Returns:
      coords (P, 2) float32 xy pixels and labels (P,) int32 (1 positive, 0 negative); P = count or 2 count.
    """
    mask = _check_mask(mask)
    if count < 1:
        raise ValueError(f"count: expected at least one point, got {count}")
    rng = np.random.default_rng(rng)
    distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    first = np.array(np.unravel_index(np.argmax(distance), mask.shape))
    points = [first[None]]
    if count > 1:
        others = np.argwhere(distance >= 2)
        others = others[(others != first).any(1)]
        if len(others) < count - 1:
            others = np.argwhere(mask)
            others = others[(others != first).any(1)]
        points.append(_choose(others if len(others) else first[None], count - 1, rng))
    labels = [np.ones(count, np.int32)]
    if negatives:
        background = ~mask
        if not background.any():
            raise ValueError("mask: covers the whole image; there is no background for negative points")
        near = _grown_box(mask, margin) & background
        ring = near & ~ndimage.binary_dilation(mask, structure=np.ones((3, 3), bool))
        candidates = next(np.argwhere(region) for region in (ring, near, background) if region.any())
        points.append(_choose(candidates, count, rng))
        labels.append(np.zeros(count, np.int32))
    rows_cols = np.concatenate(points)
    return rows_cols[:, ::-1].astype(np.float32), np.concatenate(labels)


def box_from_mask(
    mask: np.ndarray,
    jitter: float = 0.0,
    rng: np.random.Generator | int | None = None,
    *,
    max_shift: float = 20.0,
) -> np.ndarray:
    """The structure's bounding box (4,) float32 xyxy, inclusive pixel extents; with ``jitter`` > 0,
    each coordinate moved by N(0, (jitter * side)^2) clipped to ``max_shift`` px, then clipped to the
    image (``rng``, a Generator or a seed, is then required)."""
    mask = _check_mask(mask)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    box = np.array([cols[0], rows[0], cols[-1], rows[-1]], np.float64)
    if jitter:
        if not 0.0 < jitter < 1.0:
            raise ValueError(f"jitter: expected a fraction in [0, 1), got {jitter}")
        if rng is None:
            raise ValueError("rng: a Generator or seed is required when jitter > 0 (prompts must be reproducible)")
        rng = np.random.default_rng(rng)
        sides = np.array([cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1] * 2, np.float64)
        box += np.clip(rng.normal(0.0, jitter * sides), -max_shift, max_shift)
        height, width = mask.shape
        box = np.clip(box, 0, [width - 1, height - 1, width - 1, height - 1])
        box = np.concatenate([np.minimum(box[:2], box[2:]), np.maximum(box[:2], box[2:])])
    return box.astype(np.float32)
