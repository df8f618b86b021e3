"""SamPredictor: segment-anything's contract on JAX; LiteMedSAM on a real slice with a box."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import shared_data

from fewsam_jax import metrics
from fewsam_jax.io import get_slices, load_volume
from fewsam_jax.label_maps import read_labels
from fewsam_jax.predictor import SamPredictor
from fewsam_jax.preprocess import percentile_normalise


@pytest.fixture(scope="module")
def predictor(tiny_sam):
    predictor = SamPredictor(tiny_sam)
    predictor.set_image(np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8))
    return predictor


@pytest.mark.parametrize("multimask, count", [(True, 3), (False, 1)])
def test_shapes_follow_segment_anything(predictor, multimask, count):
    masks, iou, low_res = predictor.predict(point_coords=np.array([[30, 20], [60, 40]]), point_labels=np.array([1, 0]),
                                            box=np.array([10, 5, 70, 50]), multimask_output=multimask)
    assert masks.shape == (count, 60, 90) and masks.dtype == bool
    assert iou.shape == (count,) and low_res.shape == (count, 32, 32)
    logits, _, _ = predictor.predict(mask_input=low_res[:1], multimask_output=multimask, return_logits=True)
    assert logits.dtype == np.float32 and np.array_equal(logits > 0, predictor.predict(
        mask_input=low_res[:1], multimask_output=multimask)[0])


def test_bad_prompts_are_explained(predictor):
    with pytest.raises(ValueError, match="point_labels"):
        predictor.predict(point_coords=np.array([[1, 2]]))
    with pytest.raises(ValueError, match=r"mask_input: expected \(32, 32\)"):
        predictor.predict(mask_input=np.zeros((1, 64, 64)))
    with pytest.raises(ValueError, match="box: expected 4 numbers"):
        predictor.predict(box=np.array([1, 2, 3]))
    with pytest.raises(ValueError, match=r"image: float images must be in \[0, 1\]"):
        predictor.set_image(np.full((4, 4), 3.0))
    with pytest.raises(ValueError, match="contains NaN"):
        predictor.set_image(np.full((4, 4), np.nan))
    with pytest.raises(RuntimeError, match="set_image"):
        SamPredictor(predictor.model).predict(box=np.array([0, 0, 1, 1]))


@pytest.mark.slow
def test_litemedsam_box_prompt_segments_a_real_hippocampus(litemedsam):
    image = load_volume(shared_data("hippocampus", "imagesTr", "hippocampus_003_0000.nii.gz"))
    labels = load_volume(shared_data("hippocampus", "labelsTr", "hippocampus_003.nii.gz"))
    slices = get_slices(percentile_normalise(image.array), 2)
    truth = get_slices(read_labels(labels), 2)
    index = int(np.argmax((truth == 1).sum(axis=(1, 2))))
    mask = truth[index] == 1
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    predictor = SamPredictor(litemedsam)
    predictor.set_image(slices[index])
    masks, iou, _ = predictor.predict(box=np.array([cols[0], rows[0], cols[-1], rows[-1]]), multimask_output=False)
    assert metrics.dice(masks[0], mask) > 0.6


def test_prompts_outside_the_image_are_an_error_or_a_warning(predictor):
    """The 60 x 90 image: x is the column (0..89), y the row (0..59)."""
    from fewsam_jax.predictor import PromptWarning

    with pytest.raises(ValueError, match=r"point_coords\[1\] = \(95, 20\) lies outside the 90 x 60 image"):
        predictor.predict(point_coords=np.array([[30, 20], [95, 20]]), point_labels=np.array([1, 1]))
    with pytest.raises(ValueError, match=r"box \(120, 80, 200, 160\) lies outside the 90 x 60 image"):
        predictor.predict(box=np.array([120, 80, 200, 160]))
    with pytest.raises(ValueError, match="expected x0 < x1"):
        predictor.predict(box=np.array([50, 10, 40, 30]))
    with pytest.warns(PromptWarning, match=r"box \(60, 30, 120, 90\): 75% of it lies outside"):
        masks, _, _ = predictor.predict(box=np.array([60, 30, 120, 90]), multimask_output=False)
    assert masks.shape == (1, 60, 90)
