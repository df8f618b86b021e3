"""Folders and cohorts: nnU-Net naming, `fewsam segment` on a folder (resumable, split into parts),
`fewsam evaluate` on folders, `Collection.from_nnunet` / `fewsam train --nnunet`, and a decoder finding its
base model (the tiny test model, not the default) by the weights id recorded at training.

Everything runs on a synthetic nnU-Net dataset of tiny volumes with the `tiny` model.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fewsam_jax import cli
from fewsam_jax.cohort import CohortError, find_cases, plan_outputs, read_dataset_labels, select_part
from fewsam_jax.fewshot.collection import centres_of_parts, pick_slices
from fewsam_jax.label_maps import read_labels as read_label_map
from fewsam_jax.export import read_itksnap_labels, read_seg_nrrd
from fewsam_jax.fewshot import Collection, DecoderConfig, FewShotSegmenter, ManifestError
from fewsam_jax.weights import BaseModelNotFoundError, save_model

from helpers import TINY_STAGED, shared_data, tiny_staged_config, tiny_staged_sam, untrained_segmenter

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (32, 28, 5)
AFFINE = np.diag([1.2, 1.0, 2.0, 1.0])


def case_volume(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x, y = np.mgrid[: SHAPE[0], : SHAPE[1]]
    image = rng.normal(0.1, 0.03, SHAPE).astype(np.float32)
    labels = np.zeros(SHAPE, np.uint8)
    for z in range(1, SHAPE[2]):  # slice 0 unlabelled
        labels[..., z][((x - 14 - z) / 8) ** 2 + ((y - 13) / 6) ** 2 < 1] = 1
        labels[..., z][(np.abs(x - 4) < 3) & (np.abs(y - 13) < 8)] = 2
    return image + 0.8 * (labels == 1) + 0.45 * (labels == 2), labels


def write_nnunet(folder: Path) -> Path:
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (folder / sub).mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, "ellipse": 1, "bar": 2},
        "numTraining": 3, "file_ending": ".nii.gz"}))
    for i in range(6):
        image, labels = case_volume(i)
        split = "Tr" if i < 3 else "Ts"
        nib.save(nib.Nifti1Image(image, AFFINE), folder / f"images{split}" / f"case_{i:03d}_0000.nii.gz")
        nib.save(nib.Nifti1Image(labels, AFFINE), folder / f"labels{split}" / f"case_{i:03d}.nii.gz")
    return folder


@pytest.fixture(scope="module")
def home(tmp_path_factory, tiny_sam):
    """A FEWSAM_HOME whose models folder holds the tiny model (as `fewsam convert` would leave it)."""
    home = tmp_path_factory.mktemp("home")
    save_model(tiny_sam, home / "models" / "tiny-test")
    return home


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_nnunet(tmp_path_factory.mktemp("nnunet") / "Dataset001_Synthetic")


@pytest.fixture(scope="module")
def decoder(dataset, home, tmp_path_factory):
    """`fewsam train --nnunet` on the synthetic dataset with the tiny model from its folder (the training
    itself replaced by an untrained decoder: compiling the training step takes minutes on a loaded CPU)."""
    out = tmp_path_factory.mktemp("trained") / "decoder"
    seen = {}

    def train(collection, model, **kwargs):
        seen.update(collection=collection, model=model, **kwargs)
        from fewsam_jax.weights import load_model

        return untrained_segmenter(load_model(model), collection.classes)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FewShotSegmenter, "train", staticmethod(lambda collection, model, **kw: train(collection, model, **kw)))
        rc = cli.main(["train", "--nnunet", str(dataset), "--slices-per-case", "2", "--cases", "2",
                       "--model", str(home / "models" / "tiny-test"), "--out", str(out), "-q"])
    assert rc == 0
    collection = seen["collection"]
    assert collection.classes == {1: "ellipse", 2: "bar"} and len(collection.support) == 2
    assert collection.num_slices == 6 and seen["model"] == str(home / "models" / "tiny-test")
    assert seen["training"].seed == 0 and seen["training"].augment.copies == 0  # --seed, --augment defaults
    assert seen["config"] == DecoderConfig()  # --encoder-lora-rank auto: resolved for the model by the training
    return out


def test_train_encoder_lora_rank_is_checked_before_any_file_and_then_passed(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(FewShotSegmenter, "train", lambda *a, **k: pytest.fail("trained with a bad rank"))
    manifest = tmp_path / "missing.json"  # never read: the flag is checked first
    for bad, got in (("x", "'x'"), ("-1", "-1")):
        assert cli.main(["train", str(manifest), "--out", str(tmp_path / "d"), "--encoder-lora-rank", bad]) == 2
        err = capsys.readouterr().err
        assert f"--encoder-lora-rank {bad}: encoder_lora_rank: expected an integer >= 0 or 'auto', got {got}" in err
    assert cli.main(["train", str(manifest), "--out", str(tmp_path / "d"), "--intensity", "sof_tissue"]) == 2
    assert "--intensity sof_tissue: Intensity.parse: unknown intensity spec" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()

    class Trained(Exception):
        pass

    def train(*args, **kwargs):
        raise Trained(kwargs["config"])

    monkeypatch.setattr(FewShotSegmenter, "train", train)
    monkeypatch.setattr("fewsam_jax.fewshot.load_collection", lambda path: Collection({1: "x"}, 2, ()))
    with pytest.raises(Trained) as trained:
        cli.main(["train", str(manifest), "--out", str(tmp_path / "d"), "--encoder-lora-rank", "0"])
    assert trained.value.args[0] == DecoderConfig.frozen_encoder()


def run_fewsam(home: Path, *argv) -> subprocess.Popen:
    env = {**os.environ, "FEWSAM_HOME": str(home), "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
           # the processes share compiled code: the later ones skip most of the compilation
           "JAX_COMPILATION_CACHE_DIR": str(home / "jax-cache"), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    return subprocess.Popen([sys.executable, "-m", "fewsam_jax.cli", *map(str, argv)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def read_labels(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {p.name: (np.asarray(nib.load(p).dataobj), nib.load(p).affine)
            for p in sorted(folder.glob("*.nii.gz"))}


# ------------------------------------------------------------------------------------------ naming


def test_cases_follow_nnunet_naming(tmp_path):
    (tmp_path / "ts").mkdir()
    for name in ("b_0000.nii.gz", "b_0001.nii.gz", "a_0000.nii.gz", "a_0001.nii.gz"):
        (tmp_path / "ts" / name).write_bytes(b"")
    cases = find_cases([tmp_path / "ts"])
    assert [(c.name, c.image.name) for c in cases] == [("a", "a_0000.nii.gz"), ("b", "b_0000.nii.gz")]
    assert [c.image.name for c in find_cases([tmp_path / "ts"], channel=1)] == ["a_0001.nii.gz", "b_0001.nii.gz"]
    (tmp_path / "plain").mkdir()
    for name in ("scan_2023.nii.gz", "ct.nii", "notes.txt"):
        (tmp_path / "plain" / name).write_bytes(b"")
    assert [c.name for c in find_cases([tmp_path / "plain"])] == ["ct", "scan_2023"]  # not all _XXXX: no channels
    assert [c.name for c in find_cases([tmp_path / "ts" / "a_0000.nii.gz"])] == ["a"]
    with pytest.raises(CohortError, match="case name 'a'"):
        find_cases([tmp_path / "ts", tmp_path / "ts" / "a_0000.nii.gz"])
    (tmp_path / "site_b").mkdir()  # on a case-insensitive disk A.nii.gz and a.nii.gz are one output file
    (tmp_path / "site_b" / "A_0000.nii.gz").write_bytes(b"")
    cases = find_cases([tmp_path / "ts", tmp_path / "site_b"])  # two volumes to embed: fine
    assert [c.name for c in cases] == ["A", "a", "b"]
    with pytest.raises(CohortError, match="'A' .* and 'a' .* differ in letter case only"):
        plan_outputs(cases, tmp_path / "pred")  # two label maps of one name: refused before anything is computed
    with pytest.raises(CohortError, match="missing.nii.gz: no such file"):
        find_cases([tmp_path / "missing.nii.gz"])
    (tmp_path / "series_42").mkdir()  # a DICOM series: files without a volume suffix
    for i in range(3):
        (tmp_path / "series_42" / f"IM{i:04d}").write_bytes(b"")
    (case,) = find_cases([tmp_path / "series_42"])
    assert case.name == "series_42" and case.image == tmp_path / "series_42"
    with pytest.MonkeyPatch.context() as patch:  # `fewsam segment -i .` inside the series folder
        patch.chdir(tmp_path / "series_42")
        (case,) = find_cases([Path(".")])
    assert case.name == "series_42"
    (tmp_path / "empty").mkdir()
    with pytest.raises(CohortError, match="empty: no images in this folder"):
        find_cases([tmp_path / "empty"])


def test_outputs_never_go_into_an_input_folder(dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(FewShotSegmenter, "load", lambda *a, **k: pytest.fail("loaded before the outputs were checked"))
    images = dataset / "imagesTs"
    for out in (images, images / "pred"):
        assert cli.main(["segment", "-i", str(images), "-o", str(out), "--decoder", str(tmp_path / "d")]) == 2
        assert "inside the input folder" in capsys.readouterr().err
    assert cli.main(["segment", "-i", str(images), "-o", str(tmp_path / "p"), "--decoder", str(tmp_path / "d"),
                     "--num-parts", "2", "--part-id", "2"]) == 2
    assert "--part-id 2: expected an integer from 0 to 1" in capsys.readouterr().err
    assert sorted(p.name for p in images.iterdir()) == [f"case_{i:03d}_0000.nii.gz" for i in range(3, 6)]


def test_parts_cover_the_cohort_once():
    from fewsam_jax.cohort import Case

    cases = [Case(f"c{i}", Path(f"c{i}.nii.gz")) for i in range(7)]
    parts = [select_part(cases, 3, k) for k in range(3)]
    assert sorted(c.name for part in parts for c in part) == sorted(c.name for c in cases)
    with pytest.raises(CohortError, match="--part-id 3: expected an integer from 0 to 2"):
        select_part(cases, 3, 3)


def test_pick_slices_spreads_over_the_labelled_extent_and_adds_an_empty_slice():
    """The benchmark's pick (bench/fewshot.py uses this function): its numbers depend on it staying as it is."""
    labels = np.zeros((4, 4, 20), np.uint8)
    labels[..., 5:15] = 1
    assert pick_slices(labels, 3) == [3, 6, 10, 13]  # centres of [5..14] cut in 3, and 3: two below the extent
    assert pick_slices(labels, 3, empty=False) == [6, 10, 13]
    assert pick_slices(labels, 30) == [3, *range(5, 15)]
    assert pick_slices(labels.transpose(2, 0, 1), 3, axis=0) == [3, 6, 10, 13]
    assert pick_slices(np.zeros((2, 2, 3)), 2) == []
    edge = np.zeros((4, 4, 20), np.uint8)
    edge[..., 0:4] = 1
    assert pick_slices(edge, 2) == [1, 3]  # slice 0 is labelled: no empty slice below the extent
    edge[..., 0] = 0
    assert pick_slices(edge, 2) == [0, 1, 3]
    assert pick_slices(labels, 0) == [3]  # the harness's volumes without a labelled slice give their empty one
    with pytest.raises(ValueError, match="count=-1: expected an integer >= 0"):
        pick_slices(labels, -1)


def test_centres_of_parts_take_the_middle_of_equal_parts():
    """The benchmark's pick (bench/fewshot.py): its numbers depend on this staying as it is."""
    assert centres_of_parts(np.arange(10, 20), 2).tolist() == [12, 17]
    assert centres_of_parts([3, 5, 8], 3).tolist() == [3, 5, 8]
    assert centres_of_parts([4], 2).tolist() == [4, 4]


# ------------------------------------------------------------------------------------------ nnU-Net datasets


def test_collection_from_nnunet(dataset):
    collection = Collection.from_nnunet(dataset, slices_per_case=2)
    assert collection.classes == {1: "ellipse", 2: "bar"} and collection.axis == 2
    assert [item.image.name for item in collection.support] == [f"case_{i:03d}_0000.nii.gz" for i in range(3)]
    # two labelled slices spread over the labelled extent, and an empty one (0) below it
    assert all(item.labels.parent.name == "labelsTr" and item.slices == (0, 2, 4) for item in collection.support)
    assert len(Collection.from_nnunet(dataset, slices_per_case=1, cases=2).support) == 2
    with pytest.raises(ManifestError, match="no dataset.json"):
        Collection.from_nnunet(dataset / "imagesTr", slices_per_case=1)


def test_plane_coverage_and_the_auto_axis(tmp_path):
    """Class 1 fills a bar along x at one y, class 2 the same bar at another y: every sagittal (x) slice through the
    bar holds both, a coronal (y) slice one of them, an axial (z) slice both: sagittal and axial tie at 1, and the
    tie goes to the axial plane; a slab of class 1 alone at another z makes axial slices hold one class."""
    from fewsam_jax.fewshot import plane_coverage
    from fewsam_jax.fewshot.collection import best_plane

    labels = np.zeros((8, 6, 5), np.int32)
    labels[2:6, 1, 2], labels[2:6, 4, 2] = 1, 2
    assert plane_coverage([labels], (1, 2)).tolist() == [1.0, 0.0, 1.0] and best_plane([1.0, 0.0, 1.0]) == 2
    labels[2:6, 1, 4] = 1
    assert plane_coverage([labels], (1, 2)).tolist() == [1.0, 0.0, 0.5]
    assert plane_coverage([labels, np.zeros_like(labels)], (1, 2)).tolist() == [1.0, 0.0, 0.5]
    assert plane_coverage([np.zeros_like(labels)], (1, 2)).tolist() == [0.0, 0.0, 0.0]
    assert best_plane(plane_coverage([labels], (1,))) == 2  # one class: every plane 1, axial kept
    # the same as an nnU-Net dataset: --axis auto slices it sagittally
    folder = tmp_path / "Dataset001_Bars"
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True)
    nib.save(nib.Nifti1Image(labels.astype(np.float32), np.eye(4)), folder / "imagesTr" / "bar_000_0000.nii.gz")
    nib.save(nib.Nifti1Image(labels, np.eye(4)), folder / "labelsTr" / "bar_000.nii.gz")
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MR"}, "labels": {
        "background": 0, "one": 1, "two": 2}, "numTraining": 1, "file_ending": ".nii.gz"}))
    auto = Collection.from_nnunet(folder, slices_per_case=2)  # "auto", the default: sagittal leads by 0.5
    fixed = Collection.from_nnunet(folder, slices_per_case=2, axis=2)
    assert (auto.axis, auto.support[0].slices) == (0, (0, 3, 5))  # picked along x: the bar spans x = 2..5
    assert (fixed.axis, fixed.support[0].slices) == (2, (0, 2, 4))
    # "auto" leaves the axial plane only with a clear lead, for near-square pixels, more than a voxel wide
    assert best_plane([0.55, 0.0, 0.5]) == 2 and best_plane([0.65, 0.0, 0.5]) == 0
    assert best_plane([1.0, 0.0, 0.5], [((8, 6, 5), (1.0, 1.0, 1.0))]) == 0
    assert best_plane([1.0, 0.0, 0.5], [((8, 6, 5), (1.0, 1.0, 5.0))]) == 2  # a 5 mm slice thickness
    assert best_plane([1.0, 0.9, 0.5], [((8, 1, 5), (1.0, 1.0, 1.0))]) == 1  # sagittal: one voxel wide along y
    train = ["train", "--nnunet", str(folder), "--slices-per-case", "2", "--out", "d"]
    assert cli.build_parser().parse_args(train).axis is None  # train: "auto"; teach: the decoder's plane
    assert cli.build_parser().parse_args([*train, "--axis", "1"]).axis == 1


@pytest.mark.shared_data
def test_collection_from_the_shared_hippocampus():
    folder = shared_data("hippocampus")
    collection = Collection.from_nnunet(folder, slices_per_case=3, cases=4)
    assert collection.classes == {1: "anterior", 2: "posterior"}
    assert collection.axis == 0  # "auto": sagittal slices hold both classes far more often than axial ones
    assert len(collection.support) == 4 and collection.num_slices == 16
    for item in collection.support:
        assert item.image.name == item.labels.name.replace(".nii.gz", "_0000.nii.gz")
        labels = read_label_map(item.labels)  # the canonical grid the collection's slices index
        assert [bool(labels[s].any()) for s in item.slices] == [False, True, True, True]


# ------------------------------------------------------------------------------------------ segment and evaluate


def test_inference_options_are_checked_before_loading_and_then_applied(dataset, decoder, home, tmp_path, capsys,
                                                                     monkeypatch):
    monkeypatch.setenv("FEWSAM_HOME", str(home))
    load = FewShotSegmenter.load
    monkeypatch.setattr(FewShotSegmenter, "load", lambda *a, **k: pytest.fail("loaded before the option was checked"))
    args = ["segment", "-i", str(dataset / "imagesTs"), "-o", str(tmp_path / "p"), "--decoder", str(decoder)]
    assert cli.main([*args, "--threshold-offset", "12"]) == 2
    assert "--threshold-offset: expected a number of logits in [-10, 10], got 12.0" in capsys.readouterr().err
    assert cli.main([*args, "--self-prompt", "2"]) == 2
    assert "--self-prompt: expected a number in [0, 1], got 2.0" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()
    monkeypatch.setattr(FewShotSegmenter, "load", load)

    def loaded(threshold_offset=None, self_prompt=None):
        return cli._load_segmenter(argparse.Namespace(decoder=str(decoder), model=None,
                                                      threshold_offset=threshold_offset, self_prompt=self_prompt))

    assert loaded(threshold_offset=-0.5).inference.threshold_offset == -0.5
    assert loaded(self_prompt=0.5).inference.self_prompt == 0.5
    saved = FewShotSegmenter.load(decoder).inference  # without the flags: the decoder's own
    assert loaded().inference == saved


def test_segment_a_folder_resumes_and_evaluates(dataset, decoder, home, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FEWSAM_HOME", str(home))  # the decoder finds the tiny model there by its weights id
    out = tmp_path / "pred"
    args = ["segment", "-i", dataset / "imagesTs", "-o", out, "--decoder", decoder, "--cache", home / "embeddings",
            "--seg-nrrd", "-q"]
    assert cli.main([str(a) for a in args]) == 0
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["case_003.nii.gz", "case_004.nii.gz", "case_005.nii.gz"]
    written = nib.load(out / "case_003.nii.gz")
    np.testing.assert_allclose(written.affine, AFFINE, atol=1e-6)
    assert written.shape == SHAPE
    # the label map opens with its names: ITK-SNAP, JSON and 3D Slicer
    names = read_itksnap_labels(out / "case_003.labels.txt")
    assert {k: name for k, (name, _) in names.items()} == {1: "ellipse", 2: "bar"}
    assert [row["name"] for row in json.loads((out / "case_003.labels.json").read_text())["labels"]] == ["ellipse", "bar"]
    data, affine, segments = read_seg_nrrd(out / "case_003.seg.nrrd")
    np.testing.assert_array_equal(data, np.asarray(written.dataobj))
    np.testing.assert_allclose(affine, AFFINE, atol=1e-5)
    assert segments == names
    capsys.readouterr()
    assert cli.main([str(a) for a in args]) == 2
    assert "case_003.nii.gz exists (3 of the 3 outputs exist); pass --continue" in capsys.readouterr().err
    (out / "case_004.nii.gz").unlink()
    before = (out / "case_003.nii.gz").stat().st_mtime_ns
    assert cli.main([str(a) for a in [*args[:-1], "--continue"]]) == 0
    assert "1 to segment, 2 finished" in capsys.readouterr().err
    assert (out / "case_004.nii.gz").is_file() and (out / "case_003.nii.gz").stat().st_mtime_ns == before
    # a .seg.nrrd saved again by 3D Slicer (which drops our header field) beside a case still to do is the user's
    import nrrd

    label_map = (out / "case_004.nii.gz").read_bytes()
    (out / "case_004.nii.gz").unlink()
    data, header = nrrd.read(str(out / "case_004.seg.nrrd"))
    assert header.pop("fewsam_jax_writer") == "fewsam_jax"
    nrrd.write(str(out / "case_004.seg.nrrd"), data, header)
    edited = (out / "case_004.seg.nrrd").read_bytes()
    assert cli.main([str(a) for a in [*args[:-1], "--continue"]]) == 2
    assert "case_004.seg.nrrd exists; pass --overwrite" in capsys.readouterr().err
    assert (out / "case_004.seg.nrrd").read_bytes() == edited and not (out / "case_004.nii.gz").exists()
    (out / "case_004.nii.gz").write_bytes(label_map)

    assert cli.main(["evaluate", "-ref", str(dataset / "labelsTs"), "-pred", str(out), "-q"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classes"] == {"1": "ellipse", "2": "bar"}  # from the dataset.json above labelsTs
    assert [case["case"] for case in summary["metric_per_case"]] == ["case_003", "case_004", "case_005"]
    assert set(summary["mean"]) == {"ellipse", "bar"} and 0 <= summary["foreground_mean"]["dice"] <= 1
    assert cli.main(["evaluate", "-ref", str(dataset / "labelsTs"), "-pred", str(out)]) == 2
    assert "summary.json exists" in capsys.readouterr().err
    (out / "case_005.nii.gz").unlink()
    assert cli.main(["evaluate", "-ref", str(dataset / "labelsTs"), "-pred", str(out), "--overwrite"]) == 2
    assert "1 of the 3 references have no prediction" in capsys.readouterr().err


def test_teach_slices_along_the_decoders_plane_unless_told(decoder, home, tmp_path, capsys, monkeypatch):
    """`fewsam teach --nnunet` without --axis takes the plane the decoder was trained along (here axial), not what
    "auto" would pick on its cases (sagittal, for bars whose two classes lie side by side along x)."""
    import fewsam_jax.fewshot

    folder = tmp_path / "Dataset002_Bars"
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True)
    labels = np.zeros((8, 6, 5), np.int32)
    labels[2:6, 1, 2], labels[2:6, 4, 2], labels[2:6, 1, 4] = 1, 2, 1
    nib.save(nib.Nifti1Image(labels.astype(np.float32), np.eye(4)), folder / "imagesTr" / "bar_000_0000.nii.gz")
    nib.save(nib.Nifti1Image(labels, np.eye(4)), folder / "labelsTr" / "bar_000.nii.gz")
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MR"}, "labels": {
        "background": 0, "ellipse": 1, "bar": 2}, "numTraining": 1, "file_ending": ".nii.gz"}))
    assert Collection.from_nnunet(folder, slices_per_case=2).axis == 0
    seen, configs = [], []

    def train_student(segmenter, collection, unlabelled, config, **kwargs):
        seen.append(collection.axis)
        configs.append(config)
        raise ValueError("stop here")

    monkeypatch.setenv("FEWSAM_HOME", str(home))
    monkeypatch.setattr(fewsam_jax.fewshot, "train_student", train_student)
    teach = ["teach", "--nnunet", str(folder), "--slices-per-case", "2", "-d", str(decoder), "-o",
             str(tmp_path / "student"), "--cache", str(tmp_path / "embeddings"), "-q"]
    for extra, axis in (([], 2), (["--axis", "auto"], 0)):
        assert cli.main([*teach, *extra]) == 2 and "stop here" in capsys.readouterr().err
        assert seen.pop() == axis
    # the planes and fusion: StudentConfig's, StudentConfig.cohort's with -i, or the flags'
    image = ["-i", str(folder / "imagesTr" / "bar_000_0000.nii.gz")]
    for extra, planes, fusion in (([], (), "mean"), (image, "all", "union"),
                                  ([*image, "--fusion", "mean"], "all", "mean"),
                                  ([*image, "--planes", "auto"], "auto", "union"),
                                  (["--planes", "all"], "all", "mean")):
        assert cli.main([*teach, *extra]) == 2 and "stop here" in capsys.readouterr().err, extra
        assert (configs[-1].planes, configs[-1].fusion) == (planes, fusion), extra


@pytest.mark.slow  # trains two small U-Nets (a few steps)
def test_teach_a_student_then_segment_with_it(dataset, decoder, home, tmp_path, capsys, monkeypatch):
    """`fewsam teach` (the same labelled slices as the decoder's, the test images unlabelled; 2.5D) writes a student
    folder, taught as StudentConfig.cohort teaches with unlabelled images (two rounds, the images in the second);
    `fewsam segment --decoder STUDENT` segments with it, on the source grid."""
    monkeypatch.setenv("FEWSAM_HOME", str(home))
    student = tmp_path / "student"
    teach = ["teach", "--nnunet", dataset, "--slices-per-case", "2", "--cases", "2", "-d", decoder,
             "-i", dataset / "imagesTs", "-o", student, "--steps", "5", "--context", "1", "--cache", home / "embeddings",
             "--members", "2", "-q"]
    assert cli.main([str(a) for a in [*teach, "--margin", "0.5"]]) == 2
    assert "--margin: margin: expected a number in [0, 0.5)" in capsys.readouterr().err and not student.exists()
    assert cli.main([str(a) for a in [*teach, "--rounds", "2", "--teacher-weight", "1"]]) == 2
    assert "--rounds with --teacher-weight 1: rounds: more than one round" in capsys.readouterr().err
    assert cli.main([str(a) for a in [*teach, "--members", "0"]]) == 2
    assert "--members: members: expected a positive integer" in capsys.readouterr().err
    assert cli.main([str(a) for a in [*teach, "--student-steps", "0"]]) == 2
    assert "--student-steps: student_steps: expected a positive integer" in capsys.readouterr().err
    assert cli.main([str(a) for a in [*teach, "--rounds", "1"]]) == 2
    assert "--rounds 1 with -i: " in capsys.readouterr().err and not student.exists()
    assert cli.main([str(a) for a in [*teach, "--planes", "2"]]) == 2  # the decoder's own axis
    assert "holds the collection's own axis 2" in capsys.readouterr().err and not student.exists()
    with pytest.raises(SystemExit) as refused:  # argparse's choices
        cli.main([str(a) for a in [*teach, "--calibration", "size"]])
    assert refused.value.code == 2
    assert "--calibration: invalid choice: 'size'" in capsys.readouterr().err and not student.exists()
    assert cli.main([str(a) for a in [*teach, "--student-steps", "6", "--calibration", "volume"]]) == 0
    info = json.loads(capsys.readouterr().out)
    assert len(info["decoder_shifts"]) == 2 and len(info["decoder_shifts"][0]) == 2  # two rounds, two classes
    assert info["labelled_slices"] == 6  # two per case, plus one without labels
    assert info["support_volumes"] == 2 and info["unlabelled_volumes"] == 3
    assert info["members"] == 2
    assert info["training_slices"] == 5 * SHAPE[2]  # every slice of the 2 support and 3 unlabelled volumes
    saved = json.loads((student / "student.json").read_text())["config"]
    assert saved["context"] == 1 and saved["student_steps"] == 6 and saved["unet"]["steps"] == 5
    assert saved["calibration"] == "volume" and (saved["rounds"], saved["unlabelled_teacher"]) == (2, "student")
    # StudentConfig.cohort's planes "all", fused as a union: the planes chosen are saved, with the coverage they were
    # chosen by
    assert sorted(saved["planes"]) == [0, 1] and len(info["plane_coverage"]) == 3 and len(info["plane_seconds"]) == 2
    assert saved["fusion"] == "union"
    assert cli.main([str(a) for a in teach]) == 2 and "--overwrite" in capsys.readouterr().err
    out = tmp_path / "pred"
    assert cli.main(["segment", "-i", str(dataset / "imagesTs"), "-o", str(out), "--decoder", str(student), "-q"]) == 0
    written = nib.load(out / "case_003.nii.gz")
    np.testing.assert_allclose(written.affine, AFFINE, atol=1e-6)
    assert written.shape == SHAPE and set(np.unique(np.asarray(written.dataobj))) <= {0, 1, 2}
    assert json.loads((out / "case_003.labels.json").read_text())["labels"][0]["name"] == "ellipse"
    offset = ["segment", "-i", str(dataset / "imagesTs"), "-o", str(tmp_path / "p2"), "--decoder", str(student),
              "--threshold-offset", "1"]
    assert cli.main(offset) == 2 and "is a student" in capsys.readouterr().err
    assert cli.main([*offset[:-2], "--self-prompt", "1"]) == 2 and "--self-prompt: " in capsys.readouterr().err
    assert not (tmp_path / "p2").exists()


@pytest.mark.slow  # two `fewsam segment` processes side by side
def test_two_parts_in_parallel_match_one_run(dataset, decoder, home, tmp_path):
    """Two processes (`--num-parts 2 --part-id 0/1`) on one fresh cache write what one process writes."""
    single, parted = tmp_path / "single", tmp_path / "parted"
    common = ["segment", "-i", dataset / "imagesTs", "--decoder", decoder, "-q"]
    runs = [run_fewsam(home, *common, "-o", parted, "--cache", tmp_path / "shared_cache", "--num-parts", 2,
                       "--part-id", k) for k in (0, 1)]
    results = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], results
    run = run_fewsam(home, *common, "-o", single, "--cache", tmp_path / "own_cache")
    assert run.wait(timeout=600) == 0, run.communicate()
    a, b = read_labels(single), read_labels(parted)
    assert sorted(a) == sorted(b) == ["case_003.nii.gz", "case_004.nii.gz", "case_005.nii.gz"]
    for name in a:
        np.testing.assert_array_equal(a[name][0], b[name][0])
        np.testing.assert_array_equal(a[name][1], b[name][1])
    entries = sorted((tmp_path / "shared_cache" / "tiny").iterdir())
    assert len([p for p in entries if p.is_dir()]) == 3  # each volume encoded once, by one of the parts


# ------------------------------------------------------------------------------------------ base model


def test_decoder_reloads_with_a_non_default_base_model(decoder, home, tmp_path, monkeypatch, tiny_sam):
    meta = json.loads((decoder / "fewshot.json").read_text())
    assert meta["model"] == "tiny" and meta["tensors_id"]
    monkeypatch.setenv("FEWSAM_HOME", str(home))
    segmenter = FewShotSegmenter.load(decoder)
    assert segmenter.model_dir() == home / "models" / "tiny-test"
    assert FewShotSegmenter.load(decoder, model=tiny_sam).sam() is tiny_sam
    monkeypatch.setenv("FEWSAM_HOME", str(tmp_path / "empty_home"))
    with pytest.raises(BaseModelNotFoundError, match=r"base model 'tiny'.*fewsam convert --model tiny"):
        FewShotSegmenter.load(decoder).sam()
    other = tiny_sam.__class__(tiny_sam.config, rngs=__import__("flax").nnx.Rngs(1), weights_id="tiny-seed1")
    with pytest.raises(ValueError, match="trained on weights"):
        FewShotSegmenter.load(decoder, model=other)


def test_medsam_preset_is_vit_b_with_medsams_preprocessing():
    from fewsam_jax.config import get_config

    medsam, vit_b = get_config("medsam"), get_config("vit_b")
    assert medsam.encoder == vit_b.encoder and medsam.preprocessing == "minmax" != vit_b.preprocessing
    assert "medsam" in cli.build_parser()._subparsers._group_actions[0].choices["convert"]._option_string_actions[
        "--model"].choices


# ------------------------------------------------------------------------------------------ cached volumes


def test_segmenting_a_cached_volume_never_reads_the_encoder(dataset, decoder, home, tmp_path, monkeypatch):
    """The base model is read only when a slice is missing: a fully cached volume is segmented from the
    decoder alone (no model weights read, no encoder built), to the same labels."""
    import fewsam_jax.cache
    import fewsam_jax.model_dir

    monkeypatch.setenv("FEWSAM_HOME", str(home))
    loads, encoders = [], []
    load_model_dir, encoder_for = fewsam_jax.model_dir.load_model_dir, fewsam_jax.cache.encoder_for
    monkeypatch.setattr(fewsam_jax.model_dir, "load_model_dir", lambda d: loads.append(d) or load_model_dir(d))
    monkeypatch.setattr(fewsam_jax.cache, "encoder_for", lambda *a: encoders.append(a) or encoder_for(*a))
    image, cache = dataset / "imagesTs" / "case_003_0000.nii.gz", tmp_path / "cache"

    first = FewShotSegmenter.load(decoder)
    assert loads == [] and first._sam is None  # loading a decoder reads no model
    expected = first.segment(image, cache=cache, progress=False)
    assert loads == [home / "models" / "tiny-test"] and len(encoders) == 1  # nothing cached yet: encoded
    assert first._sam is not None  # kept for the next volume

    again = FewShotSegmenter.load(decoder)
    labels = again.segment(image, cache=cache, progress=False)
    assert len(loads) == 1 and len(encoders) == 1 and again._sam is None
    np.testing.assert_array_equal(labels, expected)


def test_decoder_shapes_come_from_the_prompt_side_alone(decoder, tiny_sam):
    """FewShotSegmenter.load builds the decoder's shapes without the image encoder, to the state a decoder
    built on the whole model has."""
    import jax
    from flax import nnx

    from fewsam_jax.fewshot.decoder import FewShotDecoder

    loaded = FewShotSegmenter.load(decoder, model=tiny_sam)
    full = nnx.state(FewShotDecoder(tiny_sam, loaded.decoder.config, rngs=nnx.Rngs(0)))
    shapes = lambda state: jax.tree.map(lambda x: (x.shape, str(x.dtype)), state)  # noqa: E731
    assert shapes(nnx.state(loaded.decoder)) == shapes(full)


# ------------------------------------------------------------------------------------------ fewsam embed


def _entries(cache: Path) -> dict[str, np.ndarray]:
    from fewsam_jax.cache import CachedEmbeddings

    return {p.name: CachedEmbeddings(p).load() for p in sorted((cache / "tiny").iterdir()) if p.is_dir()}


def test_embed_a_folder_reading_ahead_matches_reading_in_turn(dataset, home, tmp_path, capsys):
    """`fewsam embed FOLDER`: every volume embedded once; reading the next volume in a background thread
    (--prefetch, the default) gives the cache entries that reading each in turn gives."""
    model = home / "models" / "tiny-test"
    folder = dataset / "imagesTr"
    common = ["embed", str(folder), "--model", str(model), "-q", "--batch-size", "2"]
    assert cli.main([*common, "--cache", str(tmp_path / "ahead")]) == 0
    out = capsys.readouterr().out
    assert out.count(": 5 encoded, 0 from the cache") == 3 and "3 volumes, 15 slices: 15 encoded" in out
    assert cli.main([*common, "--cache", str(tmp_path / "in_turn"), "--prefetch", "0"]) == 0
    ahead, in_turn = _entries(tmp_path / "ahead"), _entries(tmp_path / "in_turn")
    assert len(ahead) == 3 and ahead.keys() == in_turn.keys()
    for key in ahead:
        np.testing.assert_array_equal(ahead[key], in_turn[key])
    capsys.readouterr()
    assert cli.main([*common, "--cache", str(tmp_path / "ahead")]) == 0  # all cached: nothing encoded
    assert "3 volumes, 15 slices: 0 encoded, 15 from the cache" in capsys.readouterr().out


@pytest.mark.slow  # encodes with a staged tiny SAM through the command line
def test_embed_stage_inputs(dataset, home, tmp_path, capsys, monkeypatch):
    """`fewsam embed --stage-inputs` stores every slice's last-stage input beside its embedding (a staged
    encoder), and with a model whose encoder is not staged fails before any volume is read or encoded."""
    import fewsam_jax.config
    from fewsam_jax.cache import CachedEmbeddings

    monkeypatch.setitem(fewsam_jax.config.PRESETS, TINY_STAGED, tiny_staged_config)
    model = tmp_path / "models" / TINY_STAGED
    save_model(tiny_staged_sam(), model)
    image = dataset / "imagesTr" / "case_000_0000.nii.gz"
    common = ["embed", str(image), "-q", "--batch-size", "2", "--cache", str(tmp_path / "cache"), "--stage-inputs"]
    assert cli.main([*common, "--model", str(model)]) == 0
    assert "5 encoded" in capsys.readouterr().out
    (path,) = [p for p in (tmp_path / "cache" / TINY_STAGED).iterdir() if p.is_dir()]
    entry = CachedEmbeddings(path)
    assert entry.stage_done().all() and entry.load_stage_inputs().shape == (5, 8, 8, 32)
    assert cli.main([*common, "--model", str(home / "models" / "tiny-test")]) == 2
    assert "--stage-inputs: needs an image encoder with stages" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if p.is_dir()) == [TINY_STAGED]  # nothing encoded


@pytest.mark.parametrize("prefetch", ["1", "0"])
def test_embed_names_the_file_it_cannot_read(dataset, home, tmp_path, capsys, prefetch):
    folder = tmp_path / "cohort"
    folder.mkdir()
    (folder / "a_good.nii.gz").write_bytes((dataset / "imagesTr" / "case_000_0000.nii.gz").read_bytes())
    (folder / "b_broken.nii.gz").write_bytes(b"not a NIfTI file")
    rc = cli.main(["embed", str(folder), "--model", str(home / "models" / "tiny-test"), "-q",
                   "--cache", str(tmp_path / "cache"), "--prefetch", prefetch])
    captured = capsys.readouterr()
    assert rc == 2
    assert f"{folder / 'b_broken.nii.gz'}: cannot read this image" in captured.err
    assert "5 encoded" in captured.out  # the volume before it was embedded


def test_read_ahead_keeps_order_bounds_memory_and_stops(tmp_path):
    import threading
    import time

    from fewsam_jax.cohort import CaseReadError, read_ahead

    started, consumed = [], []

    def read(i):
        started.append(i)
        return i * 10

    for item, value in read_ahead(range(8), read, depth=2):
        time.sleep(0.02)  # the reader runs ahead while the consumer "encodes"
        assert value == item * 10 and len(started) - item <= 1 + 2 + 1  # this item, the queue, one being read
        consumed.append(item)
    assert consumed == list(range(8))

    def fail_at_3(i):
        if i == 3:
            raise OSError("unreadable")
        return i

    got = []
    with pytest.raises(CaseReadError, match=r"case_3.nii.gz: cannot read this image \(OSError: unreadable\)"):
        for item, _ in read_ahead(range(6), fail_at_3, name=lambda i: f"case_{i}.nii.gz"):
            got.append(item)
    assert got == [0, 1, 2]

    before = threading.active_count()
    for item, _ in read_ahead(range(100), lambda i: i):
        if item == 2:
            break
    assert threading.active_count() == before  # closing the loop ends the reader thread
    with pytest.raises(ValueError, match="depth: expected a positive number"):
        next(read_ahead(range(3), read, depth=0))


def test_every_chunk_resizes_at_one_shape(decoder, tiny_sam, dataset, monkeypatch):
    """The last, shorter chunk is padded before the resize to the slice grid: one compiled resize per slice
    shape, whatever the number of slices; the labels are those of one whole-volume chunk."""
    import fewsam_jax.fewshot.segmenter as segmenter_module

    segmenter = FewShotSegmenter.load(decoder, model=tiny_sam)
    image = dataset / "imagesTs" / "case_004_0000.nii.gz"
    whole = segmenter.segment(image, progress=False, chunk=SHAPE[2])
    rows = []
    resize = segmenter_module.logits_to_native
    monkeypatch.setattr(segmenter_module, "logits_to_native", lambda x, shape: rows.append(len(x)) or resize(x, shape))
    chunked = segmenter.segment(image, progress=False, chunk=2)
    assert rows == [2, 2, 2]  # 5 slices: 2 + 2 + 1 padded to 2
    np.testing.assert_array_equal(chunked, whole)


def test_a_users_file_beside_a_later_case_stops_the_run_before_the_first_case(dataset, decoder, home, tmp_path,
                                                                              capsys, monkeypatch):
    monkeypatch.setenv("FEWSAM_HOME", str(home))
    out = tmp_path / "pred"
    out.mkdir()
    (out / "case_005.labels.txt").write_text("the user's own label descriptions")
    monkeypatch.setattr(FewShotSegmenter, "segment", lambda *a, **k: pytest.fail("segmented before checking"))
    args = ["segment", "-i", dataset / "imagesTs", "-o", out, "--decoder", decoder, "--cache", home / "embeddings",
            "-q"]
    assert cli.main([str(a) for a in args]) == 2
    assert "case_005.labels.txt exists" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["case_005.labels.txt"]


def test_a_bad_image_or_class_id_stops_the_run_before_the_first_case(dataset, decoder, home, tmp_path, capsys,
                                                                     monkeypatch):
    """Every case's header is read before anything is segmented: a 4D image or a damaged file later in the
    cohort is named up front, not hours in; so is a class id too large for a label map's 16 bits."""
    monkeypatch.setenv("FEWSAM_HOME", str(home))
    monkeypatch.setattr(FewShotSegmenter, "segment", lambda *a, **k: pytest.fail("segmented before checking"))
    images = tmp_path / "imagesTs"
    shutil.copytree(dataset / "imagesTs", images)
    last = sorted(images.iterdir())[-1]
    args = ["segment", "-i", images, "-o", tmp_path / "pred", "--decoder", decoder, "--cache", home / "embeddings",
            "-q"]
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 2), np.float32), np.eye(4)), last)  # two channels in one file
    assert cli.main([str(a) for a in args]) == 2
    assert f"{last.name}: 4D image of shape (8, 8, 4, 2); expected a 3D volume" in capsys.readouterr().err
    last.write_bytes(last.read_bytes()[:60])  # cut inside its header
    assert cli.main([str(a) for a in args]) == 2
    assert f"{last.name}: cannot read NIfTI file" in capsys.readouterr().err
    assert not (tmp_path / "pred").exists() or not list((tmp_path / "pred").iterdir())

    labels = json.loads((dataset / "dataset.json").read_text())
    labels["labels"] = {"background": 0, "lesion": 40000}
    (tmp_path / "dataset.json").write_text(json.dumps(labels))
    with pytest.raises(CohortError, match=r"dataset.json: labels\['lesion'\]: expected a label id from 0 to 32767"):
        read_dataset_labels(tmp_path / "dataset.json")


def test_evaluate_never_writes_over_the_dataset_json_it_reads(tmp_path, capsys):
    data = write_nnunet(tmp_path / "Dataset002_Copy")
    before = (data / "dataset.json").read_bytes()
    rc = cli.main(["evaluate", "-ref", str(data / "labelsTs"), "-pred", str(data / "labelsTs"),
                   "-o", str(data / "dataset.json"), "--overwrite", "-q"])
    assert rc == 2 and "dataset.json is also an input" in capsys.readouterr().err
    assert (data / "dataset.json").read_bytes() == before
