"""bench.fewshot's ``--offsets``: other threshold offsets are scored from the same trained decoder (one training,
one row each), on the shared hippocampus data with the tiny random SAM (the harness itself loads LiteMedSAM)."""

from __future__ import annotations

import argparse

import pytest
from helpers import shared_data

from bench import fewshot


@pytest.mark.slow  # trains a decoder (2 steps) and segments a shared volume
def test_offsets_label_from_the_same_training(tiny_sam, tmp_path, monkeypatch):
    monkeypatch.setattr("fewsam_jax.weights.load_model", lambda *a, **k: tiny_sam)
    args = argparse.Namespace(
        data=shared_data("hippocampus").resolve(), phase="validation", volumes=1, cache=tmp_path / "cache",
        variant=["v:steps=2,image_features=0"], variant_names=["v"], draws=["A"], seeds=[0], shots=[2],
        offsets=[-1.0, -0.5], unet=False, unet_only=False, curve=0, curve_volumes=1, postprocess=False)
    saved = []
    rows = fewshot.run(args, saved.append)
    assert [r["variant"] for r in rows] == ["v", "v@-1"]  # -0.5 is the variant's own offset: no second row
    base, shifted = rows
    assert shifted["same_training_as"] == "v" and base["same_training_as"] is None
    assert shifted["overrides"] == {"steps": 2, "image_features": 0, "threshold_offset": -1.0}
    assert base["overrides"] == {"steps": 2, "image_features": 0}
    assert shifted["config"]["inference"]["threshold_offset"] == -1.0
    assert base["config"]["inference"]["threshold_offset"] == -0.5  # the default
    assert shifted["thresholds"] == base["thresholds"] and shifted["train_seconds"] == base["train_seconds"]
    # a lower cut-off labels at least as many voxels of every class
    assert all(s >= b for s, b in zip(shifted["volume_ratio"], base["volume_ratio"]))
    assert len(saved) == 2 and len(saved[-1]) == 2


def test_offsets_are_checked_before_the_model_loads(monkeypatch, tmp_path):
    monkeypatch.setattr("fewsam_jax.weights.load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    monkeypatch.setattr("sys.argv", ["bench.fewshot", "--offsets=-0.5,20", "--data", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"--offsets: threshold_offset: expected a number of logits in \[-10, 10\]"):
        fewshot.main()
