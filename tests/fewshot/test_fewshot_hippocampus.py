"""Few-shot on real data: LiteMedSAM, labelled slices from two shared hippocampus volumes, scored on a third."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from helpers import shared_data

from fewsam_jax import metrics
from fewsam_jax.fewshot import AugmentConfig, FewShotConfig, FewShotSegmenter
from fewsam_jax.io import get_slices
from fewsam_jax.label_maps import read_labels

CONFIG = FewShotConfig(steps=200)  # the default architecture; fewer steps than the default, for time


@pytest.mark.slow
def test_trained_decoder_beats_untrained_on_another_volume(litemedsam, tmp_path):
    images, labels = shared_data("hippocampus", "imagesTr"), shared_data("hippocampus", "labelsTr")
    support = []
    for name in ("hippocampus_003", "hippocampus_004"):
        truth = read_labels(labels / f"{name}.nii.gz")
        present = np.flatnonzero(get_slices(truth, 2).any(axis=(1, 2)))
        slices = present[((np.arange(5) + 0.5) * present.size / 5).astype(int)].tolist() + [int(present[0]) - 2]
        support.append({"image": str(images / f"{name}_0000.nii.gz"), "labels": str(labels / f"{name}.nii.gz"),
                        "slices": slices})
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"classes": {"1": "anterior", "2": "posterior"}, "axis": 2, "support": support}))
    cache = tmp_path / "cache"
    test_image = images / "hippocampus_007_0000.nii.gz"
    truth = read_labels(labels / "hippocampus_007.nii.gz")

    scores = {}
    for name, config in (("trained", CONFIG), ("untrained", dataclasses.replace(CONFIG, steps=0))):
        segmenter = FewShotSegmenter.train(manifest, sam=litemedsam, config=config, augment=AugmentConfig(copies=1),
                                           cache=cache, progress=False)
        pred = segmenter.segment(test_image, cache=cache, progress=False)
        scores[name] = [metrics.dice(pred == k, truth == k) for k in (1, 2)]
    assert np.mean(scores["trained"]) > np.mean(scores["untrained"]) + 0.1, scores
