"""bench.fewshot's ``--offsets`` and ``--postprocess``: other threshold offsets and the post-processed labels are
scored from the same trained decoder (one training, one row each), on the shared hippocampus data with the tiny random SAM (the harness itself loads LiteMedSAM)."""

from __future__ import annotations

import argparse

import pytest
from helpers import shared_data, tiny_staged_sam

from bench import fewshot
from fewsam_jax.cache import CachedEmbeddings, EmbeddingCache


@pytest.mark.slow  # trains a decoder (2 steps) and segments a shared volume
def test_offsets_and_postprocessing_label_from_the_same_training(tiny_sam, tmp_path, monkeypatch):
    monkeypatch.setattr("fewsam_jax.weights.load_model", lambda *a, **k: tiny_sam)
    args = argparse.Namespace(
        data=shared_data("hippocampus").resolve(), phase="validation", volumes=1, cache=tmp_path / "cache",
        variant=["v:steps=2,image_features=0"], variant_names=["v"], draws=["A"], seeds=[0], shots=[2],
        offsets=[-1.0, -0.5], presence=[0.0, 0.5], unet=False, unet_only=False, curve=0, curve_volumes=1,
        postprocess=True)
    saved = []
    rows = fewshot.run(args, saved.append)
    # -0.5 and 0 are the variant's own offset and presence threshold: no second row for them; every labelling
    # also post-processed
    assert [r["variant"] for r in rows] == ["v", "v+3d", "v@p0.5", "v@p0.5+3d", "v@-1", "v@-1+3d", "v@-1@p0.5",
                                            "v@-1@p0.5+3d"]
    base, post, gated, gated_post, shifted, shifted_post, both, _ = rows
    assert [r["postprocess"] for r in rows] == [False, True] * 4
    assert gated["overrides"] == {"steps": 2, "image_features": 0, "presence_threshold": 0.5}
    assert (both["config"]["inference"]["presence_threshold"] == 0.5
            == gated["config"]["inference"]["presence_threshold"])
    assert base["config"]["inference"]["presence_threshold"] == 0.0  # the default
    assert both["config"]["inference"]["threshold_offset"] == -1.0 and both["same_training_as"] == "v"
    assert gated["thresholds"] == base["thresholds"] and gated["train_seconds"] == base["train_seconds"]
    assert post["same_training_as"] == shifted_post["same_training_as"] == "v"
    assert post["overrides"] == {"steps": 2, "image_features": 0, "postprocess": True}
    assert shifted_post["config"]["inference"]["threshold_offset"] == -1.0
    assert shifted["same_training_as"] == "v" and base["same_training_as"] is None
    assert shifted["overrides"] == {"steps": 2, "image_features": 0, "threshold_offset": -1.0}
    assert base["overrides"] == {"steps": 2, "image_features": 0}
    assert shifted["config"]["inference"]["threshold_offset"] == -1.0
    assert base["config"]["inference"]["threshold_offset"] == -0.5  # the default
    assert shifted["thresholds"] == base["thresholds"] and shifted["train_seconds"] == base["train_seconds"]
    # a lower cut-off labels at least as many voxels of every class
    assert all(s >= b for s, b in zip(shifted["volume_ratio"], base["volume_ratio"]))
    assert len(saved) == 8 and len(saved[-1]) == 8


@pytest.mark.slow  # trains a decoder (2 steps) with an adapted encoder stage and segments a shared volume
def test_a_variant_adapting_the_encoder_gets_the_stage_inputs_in_the_same_encoder_pass(tmp_path, monkeypatch):
    monkeypatch.setattr("fewsam_jax.weights.load_model", lambda *a, **k: tiny_staged_sam())
    args = argparse.Namespace(
        data=shared_data("hippocampus").resolve(), phase="validation", volumes=1, cache=tmp_path / "cache",
        variant=["lora:steps=2,image_features=0,encoder_lora_rank=1"], variant_names=["lora"], draws=["A"], seeds=[0],
        shots=[2], offsets=[], presence=[], unet=False, unet_only=False, curve=0, curve_volumes=1, postprocess=False)
    rows = fewshot.run(args, lambda rows: None)
    assert [r["variant"] for r in rows] == ["lora"] and rows[0]["config"]["decoder"]["encoder_lora_rank"] == 1
    entries = [CachedEmbeddings(p) for p in EmbeddingCache(args.cache).entries()]
    assert len(entries) == 6  # the scored volume and the draw's 5 support volumes
    assert all(e.has_stage_inputs and e.stage_done()[e.done()].all() for e in entries)
    scored = [e for e in entries if e.done().all()]  # embedded by the harness before training, with stage inputs
    assert len(scored) >= 1 and all(e.stage_done().all() for e in scored)


def test_offsets_are_checked_before_the_model_loads(monkeypatch, tmp_path):
    monkeypatch.setattr("fewsam_jax.weights.load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    monkeypatch.setattr("sys.argv", ["bench.fewshot", "--offsets=-0.5,20", "--data", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"--offsets: threshold_offset: expected a number of logits in \[-10, 10\]"):
        fewshot.main()
    monkeypatch.setattr("sys.argv", ["bench.fewshot", "--presence=0,1.5", "--data", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"--presence: presence_threshold: expected a value in \[0, 1\], got 1.5"):
        fewshot.main()


def test_unet_rows_score_the_same_predictions_post_processed_too(tmp_path, monkeypatch):
    """``--unet --postprocess``: the U-Net's labels are scored as predicted and after 3D post-processing (one
    training), so a post-processed few-shot row always has its like-for-like U-Net row. A stand-in U-Net predicts
    the truth plus a stray voxel: the post-processed row drops it."""
    data = shared_data("hippocampus").resolve()
    name = fewshot.cases(data)[fewshot.PHASES["validation"]][0]
    from fewsam_jax.io import get_slices, load_volume
    from fewsam_jax.preprocess import Intensity

    volume = load_volume(data / "imagesTr" / f"{name}_0000.nii.gz")
    truth = fewshot.read_labels(data / "labelsTr" / f"{name}.nii.gz")

    def predict(model, slices):
        labels = [s.copy() for s in get_slices(truth, 2)]
        labels[0][0, 0] = 1  # a stray anterior voxel, far from the structure
        return labels

    monkeypatch.setattr("bench.baselines.train_unet", lambda *a, **k: (None, None))
    monkeypatch.setattr("bench.baselines.predict_unet", predict)
    path = fewshot.manifest(data, fewshot.cases(data)[fewshot.DRAWS["A"]], 5, tmp_path)
    rows = fewshot.unet_rows(path, "A", 0, 5, [(volume, truth)], volume.shape[2], Intensity.parse("percentile"),
                             postprocess=True)
    plain, post = rows
    assert [r["variant"] for r in rows] == ["unet", "unet+3d"] and [r["postprocess"] for r in rows] == [False, True]
    assert post["same_training_as"] == "unet" and plain["same_training_as"] is None
    assert post["overrides"] == {"postprocess": True} and post["train_seconds"] == plain["train_seconds"]
    assert plain["volume_ratio"][0] > 1.0 and post["volume_ratio"][0] <= 1.0
    assert post["dice"][0] > plain["dice"][0] and post["dice"][1] >= plain["dice"][1]
    assert len(fewshot.unet_rows(path, "A", 0, 5, [(volume, truth)], volume.shape[2],
                                 Intensity.parse("percentile"))) == 1
