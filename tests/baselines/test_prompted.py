"""Prompted SAM baselines: equal to SamPredictor per slice and class; only present classes predicted."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import shared_data

from bench.baselines.prompted import make_prompt, prompted_items, segment_prompted
from bench.baselines.prompts import PromptSpec
from fewsam_jax import metrics
from fewsam_jax.cache import embed_volume
from fewsam_jax.io import get_slices
from fewsam_jax.label_maps import read_labels
from fewsam_jax.predictor import SamPredictor

SHAPE = (36, 28)
# one of each code path (lone click with multimask selection, clicks with negatives, jittered box);
# every test uses these prompt shapes and batch size 4, so the decoder compiles once per shape
SPECS = [PromptSpec("points", 1), PromptSpec("points", 3, negatives=True), PromptSpec("box", jitter=0.1)]


@pytest.fixture(scope="module")
def volume(tiny_sam):
    """Embeddings (4, 8, 8, 32) and labels (4, 36, 28): class 1 on slices 0-2, class 2 on 1-3
    (touching class 1 on slice 2), class 3 on slice 0 but never asked for."""
    cfg = tiny_sam.config
    rng = np.random.default_rng(0)
    embeddings = rng.normal(0, 1, (4, cfg.embedding_size, cfg.embedding_size, cfg.prompt_embed_dim)).astype(np.float32)
    labels = np.zeros((4, *SHAPE), np.int64)
    labels[0:3, 5:18, 4:14] = 1
    labels[1:4, 16:30, 12:25] = 2
    labels[0, 30:34, 2:6] = 3
    return embeddings, labels


def predictor_reference(sam, embeddings, labels, class_ids, spec, seed):
    """The same study with SamPredictor, one (slice, class) at a time, overlaps by predicted IoU."""
    predictor = SamPredictor(sam)
    expected = np.zeros(labels.shape, np.int32)
    best = np.full(labels.shape, -np.inf)
    for n, c in prompted_items(labels, class_ids):
        predictor.set_embedding(embeddings[n], SHAPE)
        prompt = make_prompt(labels[n] == c, spec, (seed, n, c), upscale=sam.config.image_size / max(SHAPE))
        masks, iou, _ = predictor.predict(**prompt,
                                          multimask_output=spec.multimask_output)
        k = int(np.argmax(iou))
        wins = masks[k] & (iou[k] > best[n])
        expected[n][wins], best[n][wins] = c, iou[k]
    return expected


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.name)
def test_equals_the_predictor_per_slice_and_class(tiny_sam, volume, spec):
    embeddings, labels = volume
    got = segment_prompted(tiny_sam, embeddings, SHAPE, labels, [1, 2], spec, seed=3, batch_size=4)
    expected = predictor_reference(tiny_sam, embeddings, labels, [1, 2], spec, seed=3)
    assert got.shape == labels.shape and got.dtype == np.int32
    assert np.array_equal(got, expected)
    assert (got > 0).any()


def test_only_classes_present_in_the_slice_are_predicted(tiny_sam, volume):
    embeddings, labels = volume
    got, scores = segment_prompted(tiny_sam, embeddings, SHAPE, labels, [1, 2], SPECS[1], batch_size=4,
                                   return_scores=True)
    for n in range(len(labels)):
        assert set(np.unique(got[n])) <= {0} | (set(np.unique(labels[n])) & {1, 2})
    assert not (got == 3).any()
    assert ((scores != 0) == (got > 0)).all()
    empty = segment_prompted(tiny_sam, embeddings, SHAPE, np.zeros_like(labels), [1, 2], SPECS[2])
    assert not empty.any()


@pytest.mark.slow  # three prompted passes of SAM, each compiled
def test_overlaps_go_to_the_higher_predicted_iou(tiny_sam, volume):
    embeddings, labels = volume
    run = lambda truth, ids: segment_prompted(tiny_sam, embeddings, SHAPE, truth, ids, SPECS[2], batch_size=4,
                                              return_scores=True)
    one, two = run(np.where(labels == 2, 0, labels), [1]), run(np.where(labels == 1, 0, labels), [2])
    both, scores = run(labels, [1, 2])
    overlap = (one[0] > 0) & (two[0] > 0)
    assert overlap.any()
    winner = np.where(one[1] >= two[1], 1, 2)
    assert np.array_equal(both[overlap], winner[overlap])
    assert np.array_equal(scores[overlap], np.maximum(one[1], two[1])[overlap])


def test_results_depend_on_the_seed_only_through_random_prompts(tiny_sam, volume):
    embeddings, labels = volume
    run = lambda spec, seed: segment_prompted(tiny_sam, embeddings, SHAPE, labels, [1, 2], spec, seed, batch_size=4)
    assert np.array_equal(run(SPECS[1], 0), run(SPECS[1], 0))
    assert not np.array_equal(run(SPECS[1], 0), run(SPECS[1], 1))
    assert np.array_equal(run(PromptSpec("box"), 0), run(PromptSpec("box"), 1))


def test_prompts_move_onto_the_structure_footprint_in_an_enlarged_input():
    mask = np.zeros(SHAPE, bool)
    mask[5:18, 4:14] = True
    box = make_prompt(mask, PromptSpec("box"), 0)["box"]
    assert box.tolist() == [4, 5, 13, 17]
    assert make_prompt(mask, PromptSpec("box"), 0, upscale=4.0)["box"].tolist() == [4, 5, 13.75, 17.75]
    assert make_prompt(mask, PromptSpec("box"), 0, upscale=0.5)["box"].tolist() == [4, 5, 13, 17]
    points = make_prompt(mask, PromptSpec("points", 2, negatives=True), 0)
    moved = make_prompt(mask, PromptSpec("points", 2, negatives=True), 0, upscale=4.0)
    assert np.array_equal(moved["point_coords"], points["point_coords"] + 0.375)
    assert np.array_equal(moved["point_labels"], [1, 1, 0, 0])


def test_bad_inputs_are_explained(tiny_sam, volume):
    embeddings, labels = volume
    spec = PromptSpec("box")
    with pytest.raises(ValueError, match="slice_shape"):
        segment_prompted(tiny_sam, embeddings, (30, 28), labels, [1], spec)
    with pytest.raises(ValueError, match="embeddings: 3 slices"):
        segment_prompted(tiny_sam, embeddings[:3], SHAPE, labels, [1], spec)
    with pytest.raises(ValueError, match="embeddings: expected"):
        segment_prompted(tiny_sam, embeddings[..., :16], SHAPE, labels, [1], spec)
    with pytest.raises(ValueError, match="class_ids"):
        segment_prompted(tiny_sam, embeddings, SHAPE, labels, [0, 1], spec)
    with pytest.raises(ValueError, match="ground_truth: expected an"):
        segment_prompted(tiny_sam, embeddings, SHAPE, labels.astype(float), [1], spec)


@pytest.mark.slow
@pytest.mark.shared_data
def test_litemedsam_tight_boxes_segment_real_hippocampus_slices(litemedsam):
    labels = read_labels(shared_data("hippocampus", "labelsTr", "hippocampus_003.nii.gz"))
    truth = get_slices(labels, 2)
    chosen = np.flatnonzero(truth.any(axis=(1, 2)))[2:-2:3]  # 7 slices, leaving out the thin ends
    entry = embed_volume(shared_data("hippocampus", "imagesTr", "hippocampus_003_0000.nii.gz"), litemedsam,
                         slices=chosen, progress=False)
    predicted = segment_prompted(litemedsam, entry[chosen], truth.shape[1:], truth[chosen], [1, 2], PromptSpec("box"))
    for c in (1, 2):
        scores = [metrics.dice(p == c, t == c) for p, t in zip(predicted, truth[chosen]) if (t == c).any()]
        assert np.mean(scores) > 0.6, (c, scores)
