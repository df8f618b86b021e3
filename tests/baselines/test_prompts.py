"""Simulated prompts: interior points, nearby negatives, tight and jittered boxes, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from bench.baselines.prompts import PROMPT_SUITE, PromptSpec, box_from_mask, sample_points


def ellipse(shape=(40, 60), centre=(18, 25), radii=(8, 14)) -> np.ndarray:
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    return ((rows - centre[0]) / radii[0]) ** 2 + ((cols - centre[1]) / radii[1]) ** 2 <= 1


@pytest.mark.parametrize("count", [1, 3, 5])
def test_positive_points_are_interior_and_the_first_is_the_deepest(count):
    mask = ellipse()
    coords, labels = sample_points(mask, count, np.random.default_rng(0))
    assert coords.shape == (count, 2) and coords.dtype == np.float32 and labels.tolist() == [1] * count
    cols, rows = coords[:, 0].astype(int), coords[:, 1].astype(int)
    assert np.array_equal(coords, np.stack([cols, rows], 1))  # whole pixels, xy order
    assert mask[rows, cols].all()
    distance = ndimage.distance_transform_edt(mask)
    assert distance[rows[0], cols[0]] == distance.max()
    assert (distance[rows[1:], cols[1:]] >= 2).all()  # off the boundary
    assert len({(r, c) for r, c in zip(rows, cols)}) == count


def test_negatives_are_background_near_the_structure():
    mask = ellipse()
    coords, labels = sample_points(mask, 5, 3, negatives=True)
    assert labels.tolist() == [1] * 5 + [0] * 5
    cols, rows = coords[5:, 0].astype(int), coords[5:, 1].astype(int)
    touching = ndimage.binary_dilation(mask, structure=np.ones((3, 3), bool))
    assert not touching[rows, cols].any()
    # inside the box grown by 20 % of its side (17 x 29 px -> 3 and 6 px)
    assert (rows >= 10 - 3).all() and (rows <= 26 + 3).all() and (cols >= 11 - 6).all() and (cols <= 39 + 6).all()


def test_points_are_reproducible_per_seed():
    mask = ellipse()
    first = sample_points(mask, 5, 7, negatives=True)
    again = sample_points(mask, 5, np.random.default_rng(7), negatives=True)
    other = sample_points(mask, 5, 8, negatives=True)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[0], other[0])
    assert np.array_equal(first[0][0], other[0][0])  # the deepest point does not depend on the seed


def test_tiny_and_thin_structures_still_get_points():
    dot = np.zeros((10, 10), bool)
    dot[4, 6] = True
    coords, _ = sample_points(dot, 3, 0)
    assert (coords == [6, 4]).all()
    line = np.zeros((10, 10), bool)
    line[2, 1:9] = True
    coords, labels = sample_points(line, 3, 0, negatives=True)
    assert labels.tolist() == [1, 1, 1, 0, 0, 0]
    assert line[coords[:3, 1].astype(int), coords[:3, 0].astype(int)].all()
    assert not line[coords[3:, 1].astype(int), coords[3:, 0].astype(int)].any()


def test_tight_box_is_the_inclusive_extent():
    box = box_from_mask(ellipse())
    assert box.dtype == np.float32 and box.tolist() == [11, 10, 39, 26]


def test_jittered_box_moves_by_about_the_jitter_and_stays_in_the_image():
    mask = ellipse()
    tight = box_from_mask(mask)
    sides = np.array([29, 17, 29, 17], float)
    shifts = np.stack([box_from_mask(mask, 0.1, seed) - tight for seed in range(400)])
    assert np.allclose(shifts.std(0) / sides, 0.1, rtol=0.2)
    assert np.abs(shifts.mean(0) / sides).max() < 0.02
    assert np.array_equal(box_from_mask(mask, 0.1, 5), box_from_mask(mask, 0.1, 5))
    edge = np.zeros((20, 20), bool)
    edge[0:12, 10:20] = True
    for seed in range(50):
        x0, y0, x1, y1 = box_from_mask(edge, 0.3, seed)
        assert 0 <= x0 <= x1 <= 19 and 0 <= y0 <= y1 <= 19


def test_bad_masks_and_arguments_are_explained():
    with pytest.raises(ValueError, match="mask: is empty"):
        sample_points(np.zeros((5, 5), bool), 1, 0)
    with pytest.raises(ValueError, match="mask: is empty"):
        box_from_mask(np.zeros((5, 5)))
    with pytest.raises(ValueError, match=r"mask: expected a \(H, W\)"):
        box_from_mask(np.ones((2, 5, 5)))
    with pytest.raises(ValueError, match="no background"):
        sample_points(np.ones((5, 5)), 1, 0, negatives=True)
    with pytest.raises(ValueError, match="rng: a Generator or seed is required"):
        box_from_mask(ellipse(), jitter=0.1)
    with pytest.raises(ValueError, match="PromptSpec.kind"):
        PromptSpec("scribble")
    with pytest.raises(ValueError, match="negatives applies to points only"):
        PromptSpec("box", negatives=True)


def test_suite_names_costs_and_multimask_choice():
    names = [spec.name for spec in PROMPT_SUITE]
    assert names == ["SAM 1 point", "SAM 1 point + neg", "SAM 3 points", "SAM 3 points + neg", "SAM 5 points",
                     "SAM 5 points + neg", "SAM box", "SAM box ±10%"]
    assert [spec.interactions_per_slice for spec in PROMPT_SUITE] == [1, 2, 3, 6, 5, 10, 1, 1]
    assert [spec.multimask_output for spec in PROMPT_SUITE] == [True] + [False] * 7
