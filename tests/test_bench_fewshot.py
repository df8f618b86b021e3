"""bench.fewshot's ``--offsets`` and ``--postprocess``: other threshold offsets and the post-processed labels are
scored from the same trained decoder (one training, one row each), on the shared hippocampus data with the tiny random SAM (the harness itself loads LiteMedSAM)."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import shared_data, tiny_staged_sam

from bench import fewshot
from fewsam_jax.cache import CachedEmbeddings, EmbeddingCache


@pytest.mark.slow  # trains a decoder (2 steps) and segments a shared volume
def test_offsets_postprocessing_and_ensembles_label_from_the_same_training(tiny_sam, tmp_path, monkeypatch):
    """One decoder training, one row per labelling; ``--ensemble`` rows average it with the U-Net trained first (a
    stand-in predicting the truth of the scored volume, background elsewhere): weight 1 scores as the decoder,
    weight 0 as the U-Net; ``--pseudo`` trains a U-Net on every slice of the support volumes, the labelled ones
    with their true labels, and (``--unlabelled 1``) of the first unlabelled cohort volume, whose labels are never
    read."""
    import fewsam_jax.io
    from fewsam_jax.io import get_slices, load_volume

    monkeypatch.setattr("fewsam_jax.weights.load_model", lambda *a, **k: tiny_sam)
    data = shared_data("hippocampus").resolve()
    truth = fewshot.read_labels(data / "labelsTr" / f"{fewshot.cases(data)[fewshot.PHASES['validation']][0]}.nii.gz")
    trained, seeds = [], []
    monkeypatch.setattr("bench.baselines.train_unet", lambda images, labels, *a, seed=0, **k: trained.append(labels)
                        or seeds.append(seed) or (None, None))
    scored = get_slices(truth, 2)

    def predict(model, slices, features=None):
        known = len(slices) == len(scored) and slices[0].shape == scored[0].shape
        return list(np.eye(3, dtype=np.float32)[scored if known else np.zeros((len(slices), *slices[0].shape), int)])

    monkeypatch.setattr("fewsam_jax.fewshot.student.predict_unet_probabilities", predict)
    opened = []
    monkeypatch.setattr(fewsam_jax.io, "load_volume", lambda path, *a, **k: opened.append(Path(path).name) or
                        load_volume(path, *a, **k))
    args = argparse.Namespace(
        data=data, phase="validation", volumes=1, cache=tmp_path / "cache",
        variant=["v:steps=2,image_features=0"], variant_names=["v"], draws=["A"], seeds=[0], shots=[2],
        offsets=[-1.0, -0.5], presence=[0.0, 0.5], unet=True, unet_only=False, curve=0, curve_volumes=1,
        postprocess=True, ensemble=[0.0, 1.0], ensemble_control=3, pseudo=[0.0], unlabelled=1,
        student=[], decoders=None, no_decoder_rows=False, unet_seed_ensemble=False,
        axis=2, save_probabilities=None)
    saved = []
    rows = fewshot.run(args, saved.append)
    unets, rows, fused, pseudo = rows[:8], rows[8:16], rows[16:20], rows[20:]
    assert [r["variant"] for r in unets] == ["unet", "unet+3d", "unet-seed2", "unet-seed2+3d", "unet-seed3",
                                             "unet-seed3+3d", "unet-x3", "unet-x3+3d"]
    assert all(r["dice"] == [1.0, 1.0] for r in unets) and [r["unet_seed"] for r in unets[2:6:2]] == [1000, 2000]
    assert seeds[:3] == [0, 1000, 2000]  # then the pseudo-labelled U-Net's
    assert unets[6]["train_seconds"] == sum(r["train_seconds"] for r in unets[:6:2]) and unets[6]["seed"] == 0
    assert [r["variant"] for r in fused] == ["v+unet@w0", "v+unet@w0+3d", "v+unet@w1", "v+unet@w1+3d"]
    # weight 1 labels from sigmoid(logit) - 0.5 in float32, the decoder from the logits: the same labels except where
    # the sigmoid maps two classes' logits to one float32 value (seen: 0.4790658 and 0.47906598 on one pixel, a tie
    # the first class wins); whether the random tiny model has such a pixel depends on the CPU's float code paths
    assert fused[0]["dice"] == [1.0, 1.0] and fused[2]["dice"] == pytest.approx(rows[0]["dice"], abs=1e-4)
    assert fused[3]["dice"] == pytest.approx(rows[1]["dice"], abs=1e-4) and fused[2]["same_training_as"] == "v"
    assert fused[2]["overrides"] == {"steps": 2, "image_features": 0, "ensemble_weight": 1.0}
    assert [r["variant"] for r in pseudo] == ["v>unet@w0u1", "v>unet@w0u1+3d"] and pseudo[0]["dice"] == [1.0, 1.0]
    assert pseudo[1]["overrides"] == {"steps": 2, "image_features": 0, "pseudo_weight": 0.0, "unlabelled_volumes": 1,
                                      "postprocess": True}
    # the student saw every slice of the draw's support volumes and then of the unlabelled one: the labelled ones as
    # labelled, the rest as the (stand-in, all background) U-Net labelled them; that volume's labels never opened
    extra = fewshot.cases(data)[fewshot.UNLABELLED][0]
    assert f"{extra}_0000.nii.gz" in opened and f"{extra}.nii.gz" not in opened
    from fewsam_jax.fewshot import load_collection
    from fewsam_jax.fewshot.collection import load_support_item

    support = load_collection(fewshot.manifest(data, fewshot.cases(data)[fewshot.DRAWS["A"]], 2, tmp_path)).support
    student = trained[-1]
    depths = [load_support_item(item, 2)[0].shape[2] for item in support]
    depths.append(load_volume(data / "imagesTr" / f"{extra}_0000.nii.gz").shape[2])
    assert len(student) == sum(depths) == pseudo[0]["training_slices"]
    starts = np.cumsum([0, *depths])
    for start, item in zip(starts, support):
        _, true_slices = load_support_item(item, 2)
        for index, true in zip(item.slices, true_slices):
            np.testing.assert_array_equal(student[start + index], np.clip(true, 0, 2))
    assert sum(int(np.count_nonzero(s)) for s in student) == sum(
        int(np.count_nonzero(np.clip(load_support_item(item, 2)[1], 0, 2))) for item in support)
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
    assert len(saved) == 22 and len(saved[-1]) == 22


@pytest.mark.slow  # trains a decoder (2 steps) with an adapted encoder stage and segments a shared volume
def test_a_variant_adapting_the_encoder_gets_the_stage_inputs_in_the_same_encoder_pass(tmp_path, monkeypatch):
    monkeypatch.setattr("fewsam_jax.weights.load_model", lambda *a, **k: tiny_staged_sam())
    args = argparse.Namespace(
        data=shared_data("hippocampus").resolve(), phase="validation", volumes=1, cache=tmp_path / "cache",
        variant=["lora:steps=2,image_features=0,encoder_lora_rank=1"], variant_names=["lora"], draws=["A"], seeds=[0],
        shots=[2], offsets=[], presence=[], unet=False, unet_only=False, curve=0, curve_volumes=1, postprocess=False,
        ensemble=[], ensemble_control=0, pseudo=[], unlabelled=0, student=[], decoders=None, no_decoder_rows=False,
        unet_seed_ensemble=False, axis=2, save_probabilities=None)
    rows = fewshot.run(args, lambda rows: None)
    assert [r["variant"] for r in rows] == ["lora"] and rows[0]["config"]["decoder"]["encoder_lora_rank"] == 1
    entries = [CachedEmbeddings(p) for p in EmbeddingCache(args.cache).entries()]
    assert len(entries) == 6  # the scored volume and the draw's 5 support volumes
    assert all(e.has_stage_inputs and e.stage_done()[e.done()].all() for e in entries)
    scored = [e for e in entries if e.done().all()]  # embedded by the harness before training, with stage inputs
    assert len(scored) >= 1 and all(e.stage_done().all() for e in scored)


@pytest.mark.slow  # trains a decoder (2 steps) and segments a shared volume
def test_students_are_the_librarys_and_a_kept_decoder_is_reused(tiny_sam, tmp_path, monkeypatch):
    """``--student``: rows of ``train_student`` with each StudentConfig, the U-Net baseline as the partner without
    context, a 2.5D partner trained once and scored as ``unet-cK`` with it; ``--decoders``: the decoder trained
    once is kept and a second run loads it (same rows, no training)."""
    from fewsam_jax.fewshot import FewShotSegmenter
    from fewsam_jax.fewshot.unet import UNetConfig
    from fewsam_jax.io import get_slices

    monkeypatch.setattr("fewsam_jax.weights.load_model", lambda *a, **k: tiny_sam)
    data = shared_data("hippocampus").resolve()
    truth = get_slices(fewshot.read_labels(
        data / "labelsTr" / f"{fewshot.cases(data)[fewshot.PHASES['validation']][0]}.nii.gz"), 2)
    trained, seeds = [], []  # (labels, features) and seed of every U-Net the students' side trained

    def train(images, labels, outputs, config, features=None, seed=0, **k):
        trained.append((labels, features))
        seeds.append(seed)
        return SimpleNamespace(config=config, num_classes=outputs), [0.0]

    baseline = SimpleNamespace(config=UNetConfig(), num_classes=3)  # the baseline U-Net: "two"s first partner
    monkeypatch.setattr("bench.baselines.train_unet", lambda *a, **k: (baseline, None))
    monkeypatch.setattr("fewsam_jax.fewshot.student.train_unet", train)

    def predict(model, slices, features=None):  # the truth on the scored volume, background elsewhere
        known = len(slices) == len(truth) and slices[0].shape == truth[0].shape
        assert features is None or len(features) == len(slices)
        return list(np.eye(3, dtype=np.float32)[truth if known else np.zeros((len(slices), *slices[0].shape), int)])

    monkeypatch.setattr("fewsam_jax.fewshot.student.predict_unet_probabilities", predict)
    args = argparse.Namespace(
        data=data, phase="validation", volumes=1, cache=tmp_path / "cache", variant=["v:steps=2,image_features=0"],
        variant_names=["v"], draws=["A"], seeds=[0], shots=[2], offsets=[], presence=[], unet=False,
        unet_only=False, curve=0, curve_volumes=1, postprocess=False, ensemble=[], ensemble_control=0,
        pseudo=[], unlabelled=0, student=["two:rounds=2,margin=0.1", "deep:context=1"],
        decoders=tmp_path / "decoders", no_decoder_rows=False, unet_seed_ensemble=False,
        axis=2, save_probabilities=None)
    rows = fewshot.run(args, lambda rows: None)
    assert [r["variant"] for r in rows] == ["unet", "v", "v>two", "unet-c1", "v>deep"]
    two, partner, deep = rows[2:]
    assert two["method"] == "student" and two["dice"] == [1.0, 1.0] and two["student_info"]["rounds"] == 2
    assert two["student"] == {"teacher_weight": 0.5, "seed": 0, "rounds": 2, "margin": 0.1, "context": 0, "members": 1,
                              "student_steps": None, "student_features": None, "planes": (), "calibration": "none",
                              "unlabelled_teacher": "student", "fusion": "mean"}
    assert two["overrides"] == {"steps": 2, "image_features": 0, "rounds": 2, "margin": 0.1}
    assert partner["overrides"] == {"context": 1} and deep["student"]["context"] == 1
    # "two" taught twice with the baseline as its first partner (it trained nothing else); "deep" trained its 2.5D
    # partner on the labelled slices, then itself on every support slice, both with neighbours as features
    assert [f is None for _, f in trained] == [True, True, False, False]
    (partner_labels, partner_features), (labels, features) = trained[2:]
    assert len(partner_labels) == two["labelled_slices"] and len(labels) == len(features) == deep["training_slices"]
    assert all(f.shape == (*l.shape, 2) for f, l in zip(features, labels))
    kept = list((tmp_path / "decoders").iterdir())
    assert len(kept) == 1 and (kept[0] / "fewshot.json").is_file()

    monkeypatch.setattr(FewShotSegmenter, "train", lambda *a, **k: pytest.fail("trained again"))
    passes, predict_volume = [], FewShotSegmenter.predict_volume  # the decoder's passes: teaching and scoring
    monkeypatch.setattr(FewShotSegmenter, "predict_volume", lambda *a, **k: passes.append(1) or predict_volume(*a, **k))
    seeds[:] = []
    again = fewshot.run(argparse.Namespace(**{**vars(args), "student": ["two:rounds=2,margin=0.1", "ens:members=2,planes=[0]"]}),
                        lambda r: None)
    scoring_and_teaching, passes[:] = len(passes) - 5, []  # less "ens"'s teaching (a pass per support volume)
    assert [r["variant"] for r in again] == ["unet", "v", "v>two", "v>ens", "v>ens#0"]
    # a seed ensemble of two and a student along axis 0, taught once: member 0 is scored alone too, as the
    # one-member student without planes it is
    assert seeds == [0, 0, 0, 1, 0] and again[3]["student"]["members"] == 2 and again[3]["student_info"]["members"] == 2
    assert again[4]["student"] == {**again[3]["student"], "members": 1, "planes": ()}
    assert again[3]["student"]["planes"] == (0,) and again[4]["overrides"] == {**again[3]["overrides"], "members": 1,
                                                                             "planes": []}
    assert again[4]["dice"] == [1.0, 1.0] and len(again[3]["student_info"]["member_seconds"]) == 2
    # --save-probabilities: each U-Net's view of every scored volume kept, the student's own rows unchanged
    kept = fewshot.run(argparse.Namespace(**{**vars(args), "student": ["ens:members=2,planes=[0]"],
                                             "save_probabilities": tmp_path / "views"}), lambda r: None)
    saved = np.load(tmp_path / "views" / "A-s0-n2-ens" / "000.npz")
    assert saved["views"].shape[0] == 3 and saved["axes"].tolist() == [2, 2, 0] and int(saved["axis"]) == 2
    views = saved["views"]  # (U, N, K+1, H, W)
    assert views.shape[2] == 3 and saved["truth"].size == views.shape[1] * views.shape[3] * views.shape[4]
    assert [r["variant"] for r in kept[2:]] == ["v>ens", "v>ens#0"]
    assert [r["dice"] for r in kept[2:]] == [r["dice"] for r in again[3:]]
    passes[:] = []
    assert again[3]["train_seconds"] - again[4]["train_seconds"] == pytest.approx(
        again[3]["student_info"]["member_seconds"][1] + again[3]["student_info"]["plane_seconds"][0])  # less theirs
    assert again[1]["dice"] == rows[1]["dice"] and again[1]["thresholds"] == rows[1]["thresholds"]
    assert again[1]["decoder_reused"] and "decoder_reused" not in rows[1]
    # --no-decoder-rows: the kept decoder teaches, its own scoring (one pass over the one scored volume) is left out
    taught = fewshot.run(argparse.Namespace(**{**vars(args), "student": ["two:rounds=2,margin=0.1"],
                                               "no_decoder_rows": True}), lambda r: None)
    assert [r["variant"] for r in taught] == ["unet", "v>two"] and taught[1]["dice"] == two["dice"]
    assert len(passes) == scoring_and_teaching - 1
    # a variant that only self-prompts segments with the kept decoder (training never reads the option), as it says
    from fewsam_jax.fewshot.self_prompt import VolumePrompts

    firsts, add = [], VolumePrompts.add
    monkeypatch.setattr(VolumePrompts, "add", lambda self, *a: firsts.append(1) or add(self, *a))
    prompted = fewshot.run(argparse.Namespace(**{**vars(args), "variant": [args.variant[0] + ",self_prompt=1"],
                                                 "student": []}), lambda r: None)
    assert [r["variant"] for r in prompted] == ["v"] and prompted[0]["decoder_reused"]
    assert prompted[0]["config"]["inference"]["self_prompt"] == 1.0 and firsts  # a first pass ran


def test_saved_views_score_what_the_students_fusion_gives(tmp_path):
    """--save-probabilities: the scored probabilities are the student's own combination of the views it saves
    (a union-fused student's background is its views' lowest, not their mean)."""
    views = [np.array([[[[0.6]], [[0.3]], [[0.1]]]], np.float32), np.array([[[[0.2]], [[0.7]], [[0.1]]]], np.float32)]
    student = SimpleNamespace(views=lambda volume: (v.copy() for v in views), axes=(2, 0), axis=2,
                              config=SimpleNamespace(fusion="union"))
    volume = SimpleNamespace(spacing=(1.0, 1.0, 1.0))
    [scored] = fewshot.saved_views(student, [(volume, np.zeros((1, 1, 1), np.int8))], tmp_path / "views")
    np.testing.assert_allclose(scored[0, :, 0, 0], [0.2, 0.5, 0.1], atol=1e-7)
    saved = np.load(tmp_path / "views" / "000.npz")
    assert saved["views"].shape == (2, 1, 3, 1, 1) and saved["axes"].tolist() == [2, 0]


def test_a_kept_decoder_is_found_only_by_the_same_manifest_configs_and_code(tmp_path, monkeypatch):
    from fewsam_jax.fewshot import DecoderConfig, InferenceConfig, TrainConfig

    manifest = tmp_path / "m.json"
    manifest.write_text('{"support": []}')
    configs = DecoderConfig(), TrainConfig(seed=0), InferenceConfig()
    first = fewshot.decoder_folder(tmp_path, manifest, *configs)
    assert fewshot.decoder_folder(tmp_path, manifest, *configs) == first
    assert fewshot.decoder_folder(tmp_path, manifest, configs[0], TrainConfig(seed=1), configs[2]) != first
    # self-prompting is inference alone: the decoder trained without it serves it
    assert fewshot.decoder_folder(tmp_path, manifest, *configs[:2], InferenceConfig(self_prompt=1.0)) == first
    assert fewshot.decoder_folder(tmp_path, manifest, *configs[:2], InferenceConfig(threshold_offset=0.0)) != first
    manifest.write_text('{"support": [1]}')
    assert fewshot.decoder_folder(tmp_path, manifest, *configs) != first
    manifest.write_text('{"support": []}')
    monkeypatch.setattr(fewshot, "library_version", lambda: "other code")
    assert fewshot.decoder_folder(tmp_path, manifest, *configs) != first


def test_offsets_are_checked_before_the_model_loads(monkeypatch, tmp_path):
    monkeypatch.setattr("fewsam_jax.weights.load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "decoders").write_text("a file")
    monkeypatch.setattr("sys.argv", ["bench.fewshot", "--decoders", str(tmp_path / "decoders"),
                                     "--data", str(tmp_path)])
    with pytest.raises(SystemExit, match="--decoders: .* is not a folder"):
        fewshot.main()
    monkeypatch.setattr("sys.argv", ["bench.fewshot", "--student", "a:rounds=0", "--data", str(tmp_path)])
    with pytest.raises(SystemExit, match="--student a:rounds=0: rounds: expected a positive integer"):
        fewshot.main()
    assert (tmp_path / "decoders").read_text() == "a file"
    for i in range(70):  # names are all the unlabelled-volume check reads
        (tmp_path / "imagesTr" / f"v{i:03d}_0000.nii.gz").touch()
    monkeypatch.setattr("sys.argv", ["bench.fewshot", "--student", "one:margin=0.1", "--unlabelled", "2",
                                     "--data", str(tmp_path)])
    with pytest.raises(SystemExit, match="--student one:margin=0.1: with --unlabelled, .* add rounds=2"):
        fewshot.main()
    monkeypatch.setattr("sys.argv", ["bench.fewshot", "--no-decoder-rows", "--data", str(tmp_path)])
    with pytest.raises(SystemExit, match="--no-decoder-rows: expected with --student or --pseudo"):
        fewshot.main()
    for flag in ("--ensemble=0.5", "--offsets=-1", "--presence=0.5", "--curve=10", "--unet-only"):
        monkeypatch.setattr("sys.argv", ["bench.fewshot", "--no-decoder-rows", "--student", "a", flag,
                                         "--data", str(tmp_path)])
        with pytest.raises(SystemExit, match=f"--no-decoder-rows: expected with .* and without {flag.split('=')[0]}"):
            fewshot.main()
    for flags in (["--unet", "--ensemble-control", "1"], ["--ensemble-control"]):  # 1 U-Net; no U-Net at all
        monkeypatch.setattr("sys.argv", ["bench.fewshot", *flags, "--data", str(tmp_path)])
        with pytest.raises(SystemExit, match="--ensemble-control: expected N >= 2 U-Nets and a U-Net"):
            fewshot.main()
    monkeypatch.setattr("sys.argv", ["bench.fewshot", "--offsets=-0.5,20", "--data", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"--offsets: threshold_offset: expected a number of logits in \[-10, 10\]"):
        fewshot.main()
    monkeypatch.setattr("sys.argv", ["bench.fewshot", "--presence=0,1.5", "--data", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"--presence: presence_threshold: expected a value in \[0, 1\], got 1.5"):
        fewshot.main()
    for sweep in ("--offsets=-1", "--presence=0.5"):  # a self-prompted pass depends on its first pass's cut-offs
        monkeypatch.setattr("sys.argv", ["bench.fewshot", "--variant", "sp:self_prompt=1", sweep, "--data", str(tmp_path)])
        with pytest.raises(SystemExit, match="--variant sp:self_prompt=1: --offsets / --presence relabel one decoding"):
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

    def predict(model, slices, features=None):
        labels = [s.copy() for s in get_slices(truth, 2)]
        labels[0][0, 0] = 1  # a stray anterior voxel, far from the structure
        return [np.eye(3, dtype=np.float32)[s] for s in labels]  # (H, W, C) one-hot probabilities

    monkeypatch.setattr("bench.baselines.train_unet", lambda *a, **k: (None, None))
    monkeypatch.setattr("fewsam_jax.fewshot.student.predict_unet_probabilities", predict)
    path = fewshot.manifest(data, fewshot.cases(data)[fewshot.DRAWS["A"]], 5, tmp_path)
    rows, probabilities, _ = fewshot.unet_rows(path, "A", 0, 5, [(volume, truth)], volume.shape[2],
                                               Intensity.parse("percentile"), postprocess=True)
    slices = get_slices(truth, 2)
    assert [p.shape for p in probabilities] == [(len(slices), 3, *slices.shape[1:])]
    plain, post = rows
    assert [r["variant"] for r in rows] == ["unet", "unet+3d"] and [r["postprocess"] for r in rows] == [False, True]
    assert post["same_training_as"] == "unet" and plain["same_training_as"] is None
    assert post["overrides"] == {"postprocess": True} and post["train_seconds"] == plain["train_seconds"]
    assert plain["volume_ratio"][0] > 1.0 and post["volume_ratio"][0] <= 1.0
    assert post["dice"][0] > plain["dice"][0] and post["dice"][1] >= plain["dice"][1]
    assert len(fewshot.unet_rows(path, "A", 0, 5, [(volume, truth)], volume.shape[2],
                                 Intensity.parse("percentile"))[0]) == 1


@pytest.mark.parametrize("axis", [2, 0])
def test_the_u_nets_of_every_seed_are_scored_averaged_too(tiny_sam, tmp_path, monkeypatch, axis):
    """``--unet-only --seeds 0,1 --unet-seed-ensemble``: one row per seed, then the seeds' U-Nets averaged. On the
    structure the stand-in U-Net of seed 0 gives background 0.5, the true class 0.4 and the other 0.1 (it labels
    nothing), seed 1's background 0.1 and the other class 0.5 (it swaps the classes): only their mean labels the
    truth. With ``--axis 0`` the same along sagittal slices: the U-Nets see and score those, the rows' draw says so."""
    from fewsam_jax.io import get_slices

    monkeypatch.setattr("fewsam_jax.weights.load_model", lambda *a, **k: tiny_sam)
    data = shared_data("hippocampus").resolve()
    truth = get_slices(fewshot.read_labels(
        data / "labelsTr" / f"{fewshot.cases(data)[fewshot.PHASES['validation']][0]}.nii.gz"), axis)
    trained = []
    monkeypatch.setattr("bench.baselines.train_unet",
                        lambda images, *a, seed=0, **k: trained.append([i.shape for i in images]) or (seed, None))

    def predict(seed, slices, features=None):
        if len(slices) != len(truth):
            return [np.eye(3, dtype=np.float32)[np.zeros(s.shape, int)] for s in slices]
        by_label = np.array([[1, 0, 0], [0.5, 0.4, 0.1], [0.5, 0.1, 0.4]] if seed == 0 else
                            [[1, 0, 0], [0.1, 0.4, 0.5], [0.1, 0.5, 0.4]], np.float32)  # rows: true label 0, 1, 2
        return list(by_label[truth])

    monkeypatch.setattr("fewsam_jax.fewshot.student.predict_unet_probabilities", predict)
    args = argparse.Namespace(
        data=data, phase="validation", volumes=1, cache=tmp_path / "cache", variant=["v"], variant_names=["v"],
        draws=["A"], seeds=[0, 1], shots=[2], offsets=[], presence=[], unet=False, unet_only=True, curve=0,
        curve_volumes=1, postprocess=False, ensemble=[], ensemble_control=0, pseudo=[], unlabelled=0, student=[],
        decoders=None, no_decoder_rows=False, unet_seed_ensemble=True, axis=axis)
    rows = fewshot.run(args, lambda rows: None)
    assert [(r["variant"], r["seed"]) for r in rows] == [("unet", 0), ("unet", 1), ("unet-seeds0+1", 0)]
    assert {r["draw"] for r in rows} == {"A" if axis == 2 else "A-sagittal"}
    support = fewshot.read_labels(data / "labelsTr" / f"{fewshot.cases(data)[0]}.nii.gz")
    assert trained[0][0] == get_slices(support, axis).shape[1:]  # the first support volume's slices along axis
    assert rows[0]["dice"] == rows[1]["dice"] == [0.0, 0.0] and rows[2]["dice"] == [1.0, 1.0]
    assert rows[2]["seeds"] == [0, 1]
    assert rows[2]["train_seconds"] == rows[0]["train_seconds"] + rows[1]["train_seconds"]
    monkeypatch.setattr("sys.argv", ["bench.fewshot", "--unet", "--unet-seed-ensemble", "--data", str(data)])
    with pytest.raises(SystemExit, match="--unet-seed-ensemble: expected two or more --seeds"):
        fewshot.main()


def test_rows_scored_on_other_volumes_or_planes_are_other_table_rows():
    """The Markdown table averages a variant's runs only over the same plane and number of scored volumes."""
    row = {"method": "U-Net", "variant": "unet", "positive_slices": 20, "draw": "A", "seed": 0, "dice": [0.8, 0.6],
           "hd95": [1.0, 1.0], "volume_ratio": [1.0, 1.0], "train_seconds": 1.0, "segment_seconds_per_100_slices": 1.0}
    report = {"phase": "test", "date": "2026-12-02", "machine": {}, "volumes": 40,
              "rows": [{**row, "volumes": 20}, {**row, "draw": "B", "volumes": 20, "dice": [0.6, 0.6]},
                       {**row, "volumes": 40, "dice": [1.0, 1.0]}]}
    report["rows"].append({**row, "draw": fewshot.draw_label("A", 0), "volumes": 20, "dice": [0.2, 0.2]})
    table = [line for line in fewshot.markdown(report).splitlines() if line.startswith("| unet |")]
    assert len(table) == 3
    assert table[0].startswith("| unet | axial | 20 | 20 | 2 x 1 |") and "**0.650**" in table[0]
    assert table[1].startswith("| unet | axial | 20 | 40 | 1 x 1 |") and "**1.000**" in table[1]
    assert table[2].startswith("| unet | sagittal | 20 | 20 | 1 x 1 |") and "**0.200**" in table[2]
    assert [fewshot.row_plane({"draw": d}) for d in ("A", "A-sagittal", "A-coronal")] == ["axial", "sagittal", "coronal"]
    report["rows"] = [{**row, "seed": 1}, row, {**row, "draw": "B"}]  # two seeds of draw A, one of B: not a grid
    (line,) = [line for line in fewshot.markdown(report).splitlines() if line.startswith("| unet |")]
    assert line.startswith("| unet | axial | 20 | 40 | 3 (2 draws) |"), line
