"""The U-Net student taught by the few-shot decoder (fewshot.student): the teacher's labels, training on synthetic
volumes with an oracle standing in for the decoder (the decoder's own predictions have their tests), class ids
kept, save/load, and clear errors before any training."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from types import SimpleNamespace
from typing import get_args

import nibabel as nib
import numpy as np
import pytest

from fewsam_jax import metrics
from fewsam_jax.fewshot import InferenceConfig
from fewsam_jax.fewshot.infer import labels_from_logits
from fewsam_jax.fewshot.student import (
    IGNORE,
    Calibration,
    ChosenPlanes,
    Fusion,
    StudentConfig,
    StudentFileError,
    StudentSegmenter,
    TeacherPrediction,
    UnlabelledTeacher,
    auto_planes,
    combine_views,
    fuse,
    neighbours,
    partner_predictions,
    pseudo_labels,
    resliced,
    support_volumes,
    train_partner,
    train_student,
    unet_probabilities,
    volume_shifts,
)
from fewsam_jax.fewshot.unet import UNetConfig
from fewsam_jax.io import VolumeError, get_slices, load_volume, stack_slices
from fewsam_jax.outputs import ChecksumError, OutputError
from fewsam_jax.preprocess import Intensity
from fewsam_jax.weights import BaseModelNotFoundError

CLASSES = {3: "disc", 7: "square"}  # not 1..K: the student maps them to its outputs and back
CONFIG = StudentConfig(unet=UNetConfig.tiny(steps=200), rounds=1, margin=0.0, context=0,  # the slice alone, every pixel
                       unlabelled_teacher="fused")  # unlabelled volumes labelled by decoder and partner, one round


def phantom(seed: int, depth: int = 6, size: tuple[int, int] = (40, 36)) -> tuple[np.ndarray, np.ndarray]:
    """(X, Y, Z) image and labels: on every axial slice a dim disc (3) and a bright square (7), moving."""
    rng = np.random.default_rng(seed)
    image = rng.normal(0.2, 0.05, (*size, depth)).astype(np.float32)
    labels = np.zeros((*size, depth), np.int16)
    xx, yy = np.mgrid[: size[0], : size[1]]
    for z in range(depth):
        cx, cy = rng.integers(8, 16), rng.integers(8, size[1] - 8)
        labels[..., z][(xx - cx) ** 2 + (yy - cy) ** 2 < 30] = 3
        sx, sy = rng.integers(22, size[0] - 8), rng.integers(4, size[1] - 10)
        labels[sx: sx + 7, sy: sy + 7, z] = 7
    image[labels == 3] += 0.35
    image[labels == 7] += 0.7
    return image, labels


def key(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array, np.float32).tobytes()).hexdigest()


class Oracle:
    """The decoder's interface as train_student uses it, predicting each known volume's true labels."""

    classes, axis, intensity, info = CLASSES, 2, Intensity.parse("minmax"), {"train_seconds": 1.0}
    inference = InferenceConfig()
    class_ids = (3, 7)

    def __init__(self, volumes: dict[str, np.ndarray]):
        self.truth = volumes  # key(image) -> labels
        self.seen = []

    def base_model(self):
        return self  # where a decoder's base model comes from: the oracle needs none

    def predict_volume(self, volume, cache=None, progress=False):
        slices = get_slices(self.truth[key(volume.array)], self.axis)
        self.seen.append(key(volume.array))
        logits = np.stack([np.where(slices == c, 4.0, -4.0) for c in self.class_ids], axis=1).astype(np.float32)
        return logits, np.ones((len(slices), 2), np.float32)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Three support volumes (one labelled slice each), an unlabelled one (no label file), a held-out one."""
    folder = tmp_path_factory.mktemp("student")
    truth, support = {}, []
    for seed in range(5):
        image, labels = phantom(seed)
        nib.save(nib.Nifti1Image(image, np.eye(4)), folder / f"case{seed}.nii.gz")
        truth[key(load_volume(folder / f"case{seed}.nii.gz").array)] = labels
        if seed < 3:
            nib.save(nib.Nifti1Image(labels, np.eye(4)), folder / f"case{seed}_seg.nii.gz")
            support.append({"image": str(folder / f"case{seed}.nii.gz"),
                            "labels": str(folder / f"case{seed}_seg.nii.gz"), "slices": [seed + 1]})
    (folder / "manifest.json").write_text(json.dumps({"classes": {str(k): v for k, v in CLASSES.items()}, "axis": 2,
                                                      "support": support}))
    return folder, truth


@pytest.fixture(scope="module")
def taught(cohort):
    folder, truth = cohort
    oracle = Oracle(truth)
    student = train_student(oracle, folder / "manifest.json", unlabelled=[folder / "case3.nii.gz"], config=CONFIG,
                            progress=False)
    return student, oracle


def test_fuse_averages_class_probabilities_with_zero_at_one_half():
    """The decoder's logits (0 at its cut-off) and the U-Net's softmax average as probabilities; weight 1 keeps
    the decoder's labels, 0 the U-Net's (background where no class reaches 0.5)."""
    logits = np.array([[[[2.0, -2.0, -1.0]], [[-3.0, 1.0, -1.0]]]])  # (N=1, K=2, H=1, W=3)
    unet = np.array([[[[0.1, 0.1, 0.1]], [[0.1, 0.2, 0.8]], [[0.8, 0.7, 0.1]]]])  # (1, C=3, 1, 3)
    present = np.ones((1, 2))
    label = lambda scores: labels_from_logits(scores, present, (1, 2), 0.0)[0, 0].tolist()
    assert fuse(logits, unet, 0.5).shape == (1, 2, 1, 3)
    assert label(fuse(logits, unet, 1.0)) == label(logits) == [1, 2, 0]
    assert label(fuse(logits, unet, 0.0)) == unet[0].argmax(axis=0)[0].tolist() == [2, 2, 1]
    # equal weights: pixel 0 anterior (0.5*0.88+0.5*0.1=0.49) vs posterior (0.5*0.05+0.5*0.8=0.42): background
    assert label(fuse(logits, unet, 0.5)) == [0, 2, 1]


def test_pseudo_labels_keep_the_true_labels_and_take_the_teachers_elsewhere():
    decoder = np.zeros((3, 2, 2, 2), np.float32) - 5  # (N, K, H, W): the decoder sees nothing ...
    decoder[:, 1, 0, 0] = 5  # ... but class 2 at pixel (0, 0)
    partner = np.zeros((3, 3, 2, 2), np.float32)
    partner[:, 1] = 1  # the U-Net: class 1 everywhere
    true = np.full((1, 2, 2), 2, np.int32)
    prediction = TeacherPrediction(np.zeros((3, 2, 2)), [1], true, decoder, np.ones((3, 2)), partner)
    unlabelled = prediction._replace(labelled=[], true=None)
    for weight, expected in ((1.0, [[2, 0], [0, 0]]), (0.0, [[1, 1], [1, 1]])):
        images, labels = pseudo_labels([prediction, unlabelled], weight)
        assert len(images) == len(labels) == 6
        assert labels[1].tolist() == true[0].tolist()  # the labelled slice, whatever the teacher says
        assert all(labels[i].tolist() == expected for i in (0, 2, 3, 4, 5))
    # equal weights where the decoder is sure of class 2 and the U-Net of class 1: class 1 passes one half, just
    # (0.5 * 1 + 0.5 * 0.007), class 2 does not (0.5 * 0.993): averaged probabilities, not a vote
    labels = pseudo_labels([unlabelled], 0.5)[1]
    assert labels[0].tolist() == [[1, 1], [1, 1]]
    # a class the presence head calls absent on a slice is left out there, as the decoder segments
    gated = unlabelled._replace(presence=np.array([[1.0, 0.2]] * 3, np.float32))
    assert pseudo_labels([gated], 1.0, presence_threshold=0.5)[1][0].tolist() == [[0, 0], [0, 0]]


def test_a_margin_leaves_the_pixels_the_teacher_is_unsure_of_out():
    """Pixels where a present class's averaged probability lies within the margin of one half are IGNORE; the
    labelled slice keeps its labels whole, and a class gated absent on a slice does not count there."""
    logits = np.full((2, 2, 1, 3), -6.0, np.float32)  # (N, K, H, W): the decoder is sure of background ...
    logits[:, 0, 0, 1] = 6.0  # ... and of class 1 at pixel 1
    partner = np.zeros((2, 3, 1, 3), np.float32)
    partner[:, 0] = 1.0
    partner[:, :2, 0, 1] = 0.1, 0.9  # and agrees at pixel 1
    partner[:, 1, 0, 2] = 0.7  # the U-Net says class 1 at pixel 2: averaged 0.5 * 0.0025 + 0.5 * 0.7 = 0.35
    partner[:, 0, 0, 2] = 0.3
    true = np.array([[[2, 2, 2]]], np.int32)
    prediction = TeacherPrediction(np.zeros((2, 1, 3)), [0], true, logits, np.ones((2, 2)), partner)
    assert pseudo_labels([prediction], 0.5)[1][1].tolist() == [[0, 1, 0]]
    assert pseudo_labels([prediction], 0.5, margin=0.1)[1][1].tolist() == [[0, 1, 0]]  # 0.35: 0.15 from one half
    labels = pseudo_labels([prediction], 0.5, margin=0.2)[1]
    assert labels[1].tolist() == [[0, 1, IGNORE]] and labels[0].tolist() == true[0].tolist()
    gated = prediction._replace(presence=np.array([[0.1, 1.0]] * 2, np.float32))
    assert pseudo_labels([gated], 0.5, presence_threshold=0.5, margin=0.2)[1][1].tolist() == [[0, 0, 0]]


def test_volume_shifts_make_the_decoders_volume_the_partners():
    """Per class, the shifted logits are positive on as many unlabelled, present pixels as the partner's most
    probable class covers there; labelled slices and gated-off slices do not count; the ends of the range (the
    partner finds nothing, or more than every present pixel) and a class without a present pixel are handled."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 3, 6, 7)).astype(np.float32)  # (N, K, H, W), distinct values
    partner = rng.dirichlet(np.ones(4), size=(5, 6, 7)).transpose(0, 3, 1, 2).astype(np.float32)
    partner[:, 2:] = 0.0  # the partner never picks class 3, and class 2 ...
    partner[1, 2] = 3.0  # ... on slice 1 alone: labelled in the first volume, not in the second
    presence = np.ones((5, 3), np.float32)
    presence[4, 0] = 0.1  # class 1 gated off on the first volume's slice 4
    first = TeacherPrediction(np.zeros((5, 6, 7)), [1], np.zeros((1, 6, 7), np.int32), logits, presence, partner)
    second = first._replace(labelled=[], true=None, logits=logits[::-1].copy(), presence=np.ones((5, 3)))
    shifts = volume_shifts([first, second], presence_threshold=0.5)
    assert shifts.shape == (3,) and shifts.dtype == np.float32
    for k, rows in ((0, [0, 2, 3]), (1, [0, 2, 3, 4]), (2, [0, 2, 3, 4])):  # the first's counted slices per class
        decoder = ((logits[rows, k] + shifts[k]) > 0).sum() + ((second.logits[:, k] + shifts[k]) > 0).sum()
        target = (partner[rows].argmax(axis=1) == k + 1).sum() + (partner.argmax(axis=1) == k + 1).sum()
        assert decoder == target, k
    assert (partner.argmax(axis=1) == 2).sum() == 42 and shifts[2] < -logits[:, 2].max()  # class 3: nowhere
    everywhere = second._replace(partner=np.eye(4, dtype=np.float32)[np.ones((5, 6, 7), int)].transpose(0, 3, 1, 2))
    assert ((logits[:, 0] + volume_shifts([everywhere])[0]) > 0).all()  # the partner's class 1 everywhere: all in
    gated = second._replace(presence=np.zeros((5, 3)))
    assert volume_shifts([gated], presence_threshold=0.5).tolist() == [0.0, 0.0, 0.0]
    # pseudo_labels with a shift label as with shifted logits
    shifted = second._replace(logits=second.logits + shifts[:, None, None])
    assert all(np.array_equal(a, b) for a, b in zip(pseudo_labels([second], 0.5, 0.5, 0.0, shifts)[1],
                                                    pseudo_labels([shifted], 0.5, 0.5)[1]))


def test_neighbours_are_the_slices_around_each_slice_with_the_ends_repeated():
    slices = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((4, 2, 3), np.float32)  # slice i is all i
    assert neighbours(slices, 0) is None
    around = neighbours(slices, 2)
    assert len(around) == 4 and around[0].shape == (2, 3, 4)
    assert [a[0, 0].tolist() for a in around] == [[0, 0, 1, 2], [0, 0, 2, 3], [0, 1, 3, 3], [1, 2, 3, 3]]
    assert [a[0, 0].tolist() for a in neighbours(slices, 1, slice(2, 4))] == [[1, 3], [2, 3]]


@pytest.mark.slow  # trains two tiny U-Nets
def test_student_learns_from_the_teacher_and_segments_with_the_class_ids(taught, cohort, tmp_path, monkeypatch):
    folder, truth = cohort
    student, oracle = taught
    # the teacher labelled every slice of the three support volumes and of the unlabelled one, nothing else
    assert len(oracle.seen) == 4 and len(set(oracle.seen)) == 4
    assert student.info["labelled_slices"] == 3 and student.info["training_slices"] == 4 * 6
    assert student.info["unlabelled_volumes"] == 1 and student.info["support_volumes"] == 3
    held_out = load_volume(folder / "case4.nii.gz")
    labels = student.segment(held_out)
    reference = truth[key(held_out.array)]
    assert labels.shape == held_out.shape and set(np.unique(labels)) <= {0, 3, 7}
    for class_id in CLASSES:
        assert metrics.dice(labels == class_id, reference == class_id) > 0.8, class_id
    probabilities = student.predict_volume(held_out)
    assert probabilities.shape == (6, 3, 36, 40) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    assert np.array_equal(student.labels_from(probabilities), labels)
    assert np.array_equal(student.segment(held_out, chunk=4, progress=False), labels)  # 4 + 2 slices

    # saved and loaded: the same labels; written on the source grid with its class names beside it
    saved = student.save(tmp_path / "student")
    loaded = StudentSegmenter.load(saved)
    assert loaded.config == student.config and loaded.classes == CLASSES and loaded.info == student.info
    assert np.array_equal(loaded.segment(folder / "case4.nii.gz"), labels)
    out = loaded.segment_file(folder / "case4.nii.gz", tmp_path / "case4_seg.nii.gz")
    assert np.array_equal(np.asarray(nib.load(out).dataobj), labels)
    assert "square" in (tmp_path / "case4_seg.labels.json").read_text()
    # saved before rounds, margin, context, members, student_steps, calibration and unlabelled_teacher existed: loads
    # as it was taught (one round, every pixel, the slice alone, one student at the partner's steps, the decoder's
    # logits as they were, the fused teacher on unlabelled volumes), whatever the defaults are by then (a
    # StudentConfig with other defaults stands in for a later one)
    meta = json.loads((saved / "student.json").read_text())
    later_fields = ("rounds", "margin", "context", "members", "student_steps", "calibration", "unlabelled_teacher",
                    "fusion")
    meta["config"] = {k: v for k, v in meta["config"].items() if k not in later_fields}
    (saved / "student.json").write_text(json.dumps(meta))

    @dataclasses.dataclass(frozen=True)
    class Later(StudentConfig):
        rounds: int = 2
        margin: float = 0.2
        context: int = 1
        members: int = 3
        student_steps: int | None = 900
        calibration: str = "volume"
        unlabelled_teacher: str = "student"
        fusion: str = "union"

    monkeypatch.setattr("fewsam_jax.fewshot.student.StudentConfig", Later)
    old = StudentSegmenter.load(saved)
    assert (old.config.rounds, old.config.margin, old.config.context, old.config.members, old.config.student_steps,
            old.config.calibration, old.config.unlabelled_teacher, old.config.fusion) == (
        1, 0.0, 0, 1, None, "none", "fused", "mean")
    assert np.array_equal(old.segment(folder / "case4.nii.gz"), labels)
    monkeypatch.undo()

    # replaced only with overwrite; a folder the library did not write, never; a damaged state is named
    with pytest.raises(OutputError, match="overwrite"):
        student.save(saved)
    student.save(saved, overwrite=True)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="did not write|not a fewsam_jax"):
        student.save(tmp_path / "mine", overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"
    damaged = next(p for p in sorted((saved / "state").rglob("*")) if p.is_file() and p.stat().st_size > 100)
    damaged.write_bytes(damaged.read_bytes()[:-1] + bytes([damaged.read_bytes()[-1] ^ 1]))
    with pytest.raises(ChecksumError, match="corrupted"):
        StudentSegmenter.load(saved)


@pytest.mark.slow  # trains four tiny U-Nets
def test_a_2_5d_student_taught_in_two_rounds_with_a_margin(cohort, tmp_path):
    """context, rounds, margin and members together: the teacher labels every support volume once per round, the
    student (two members) segments a held-out volume from each slice and its neighbours, and reloads to the same
    labels."""
    folder, truth = cohort
    oracle = Oracle(truth)
    config = CONFIG.replace(context=1, rounds=2, margin=0.2, members=2)
    student = train_student(oracle, folder / "manifest.json", config=config, progress=False)
    assert len(oracle.seen) == 2 * 3 and student.info["rounds"] == 2 and len(student.unets) == 2
    # the first round trained one student (the second round's partner), the last one both members
    assert len(student.info["member_seconds"]) == 2
    assert student.info["student_seconds"] > sum(student.info["member_seconds"])
    assert student.unet.config.feature_channels == 2 and student.info["training_slices"] == 3 * 6
    held_out = load_volume(folder / "case4.nii.gz")
    labels = student.segment(held_out, chunk=4, progress=False)  # the neighbours of a chunk's end slices too
    assert np.array_equal(student.labels_from(student.predict_volume(held_out)), labels)
    reference = truth[key(held_out.array)]
    for class_id in CLASSES:
        assert metrics.dice(labels == class_id, reference == class_id) > 0.8, class_id
    loaded = StudentSegmenter.load(student.save(tmp_path / "student"))
    assert loaded.config == config and np.array_equal(loaded.segment(held_out, progress=False), labels)


@pytest.mark.slow  # trains three tiny U-Nets
def test_the_last_student_alone_teaches_the_unlabelled_volumes(cohort, tmp_path):
    """unlabelled_teacher="student": the decoder never sees the unlabelled volume (no embedding, no decoder pass);
    it joins the second round, labelled by the first round's student (the partner's probabilities alone); the
    config is saved with the student. With one round there is no such student: named before any training."""
    folder, truth = cohort
    oracle = Oracle(truth)
    unlabelled = folder / "case3.nii.gz"
    config = CONFIG.replace(unet=UNetConfig.tiny(steps=100), rounds=2, unlabelled_teacher="student")
    student = train_student(oracle, folder / "manifest.json", unlabelled=[unlabelled], config=config, progress=False)
    assert key(load_volume(unlabelled).array) not in oracle.seen and len(oracle.seen) == 2 * 3
    assert student.info["training_slices"] == 4 * 6 and student.info["unlabelled_volumes"] == 1
    held_out = load_volume(folder / "case4.nii.gz")
    labels = student.segment(held_out, progress=False)
    for class_id in CLASSES:
        assert metrics.dice(labels == class_id, truth[key(held_out.array)] == class_id) > 0.8, class_id
    assert StudentSegmenter.load(student.save(tmp_path / "student")).config.unlabelled_teacher == "student"
    with pytest.raises(ValueError, match="rounds >= 2"):
        train_student(oracle, folder / "manifest.json", unlabelled=[unlabelled], config=config.replace(rounds=1))


def test_the_partner_alone_labels_a_volume_without_decoder_logits(monkeypatch):
    """partner_predictions' volumes carry no decoder logits: pseudo_labels labels them as fuse at weight 0 does
    (a class where the partner's probability passes one half), every class present whatever the threshold."""
    probabilities = np.array([[[[0.1, 0.6, 0.3]], [[0.2, 0.3, 0.6]], [[0.7, 0.1, 0.1]]]])  # (1, C=3, 1, 3)

    class Partner:
        config = CONFIG.unet

    volume = SimpleNamespace(array=np.zeros((1, 3, 1), np.float32))  # one slice along axis 2
    slices_seen = []

    def fake_probabilities(unet, slices, context=0, rows=slice(None)):
        slices_seen.append(slices.shape)
        return probabilities

    monkeypatch.setattr("fewsam_jax.fewshot.student.unet_probabilities", fake_probabilities)
    (prediction,) = partner_predictions(Partner(), [volume], Intensity.parse("minmax"), 2)
    assert prediction.logits is None and prediction.presence is None and [s[0] for s in slices_seen] == [1]
    _, (labels,) = pseudo_labels([prediction], weight=0.5, presence_threshold=0.9)
    with_logits = prediction._replace(logits=np.full((1, 2, 1, 3), -9.0, np.float32), presence=np.ones((1, 2)))
    _, (fused,) = pseudo_labels([with_logits], weight=0.0)
    assert labels.tolist() == fused.tolist() == [[2, 0, 1]]


@pytest.mark.slow  # trains tiny U-Nets (a few steps)
def test_teaching_is_deterministic_per_seed(cohort):
    folder, truth = cohort
    config = CONFIG.replace(unet=UNetConfig.tiny(steps=3))
    first, second, other = (train_student(Oracle(truth), folder / "manifest.json", config=config.replace(seed=s),
                                          progress=False) for s in (0, 0, 1))
    volume = load_volume(folder / "case4.nii.gz")
    assert np.array_equal(first.predict_volume(volume), second.predict_volume(volume))
    assert not np.array_equal(first.predict_volume(volume), other.predict_volume(volume))
    # a partner trained apart (the harness shares one between students) teaches the same student
    from fewsam_jax.fewshot import load_collection

    support = support_volumes(load_collection(folder / "manifest.json"), Oracle.class_ids)
    shared = train_student(Oracle(truth), folder / "manifest.json", config=config, progress=False,
                           partner=train_partner(Oracle(truth), support, config, progress=False))
    assert np.array_equal(first.predict_volume(volume), shared.predict_volume(volume))


@pytest.mark.slow  # trains tiny U-Nets (a few steps)
def test_a_seed_ensemble_averages_its_members_and_reloads(cohort, tmp_path):
    """members=2: two students on the same pseudo-labels, seeds 0 and 1; member 0 is the one-member student, the
    ensemble's probabilities the members' mean; saved and loaded, the same predictions."""
    folder, truth = cohort
    config = CONFIG.replace(unet=UNetConfig.tiny(steps=3))
    pair = train_student(Oracle(truth), folder / "manifest.json", config=config.replace(members=2), progress=False)
    single = train_student(Oracle(truth), folder / "manifest.json", config=config, progress=False)
    volume = load_volume(folder / "case4.nii.gz")
    first, second = (pair.member(i).predict_volume(volume) for i in (0, 1))
    assert len(pair.unets) == 2 and pair.info["members"] == 2 and pair.member(1).config.seed == 1
    assert pair.member(1).info["member"] == 1 and "member" not in pair.info
    for index in (-1, 2):
        with pytest.raises(IndexError, match="member: expected an index in 0..1"):
            pair.member(index)
    assert np.array_equal(first, single.predict_volume(volume)) and not np.array_equal(first, second)
    np.testing.assert_allclose(pair.predict_volume(volume), (first + second) / 2, atol=1e-6)
    assert np.array_equal(pair.segment(volume, chunk=4, progress=False),
                          pair.labels_from(pair.predict_volume(volume)))
    loaded = StudentSegmenter.load(pair.save(tmp_path / "pair"))
    assert loaded.config == pair.config and len(loaded.unets) == 2
    assert np.array_equal(loaded.predict_volume(volume), pair.predict_volume(volume))
    with pytest.raises(ValueError, match="2 U-Nets for config.members = 1"):
        StudentSegmenter(pair.unets, pair.classes, pair.axis, pair.intensity, config)
    # fusion="union": the same members, background only where both put it; slice by slice as the whole volume
    union = dataclasses.replace(pair, config=pair.config.replace(fusion="union"))
    scores = union.predict_volume(volume)
    np.testing.assert_allclose(scores[:, 1:], (first + second)[:, 1:] / 2, atol=1e-6)
    assert np.array_equal(scores[:, :1], np.minimum(first, second)[:, :1])
    assert np.array_equal(union.segment(volume, chunk=4, progress=False), union.labels_from(scores))
    assert StudentSegmenter.load(union.save(tmp_path / "union")).config.fusion == "union"


@pytest.mark.slow  # trains tiny U-Nets (a few steps)
def test_student_steps_and_features_shape_the_student_alone(cohort, tmp_path, monkeypatch):
    """student_steps / student_features: the partner keeps unet's steps and widths, every student (each round, each
    member) trains student_steps at student_features' widths; saved and loaded (the widths back as a tuple)."""
    from fewsam_jax.fewshot import student as student_module

    folder, truth = cohort
    trained, real = [], student_module.train_unet
    monkeypatch.setattr(student_module, "train_unet",
                        lambda *a, **k: trained.append((a[3].steps, a[3].features)) or real(*a, **k))
    config = CONFIG.replace(unet=UNetConfig.tiny(steps=3), student_steps=5, student_features=[12, 24, 48], members=2,
                            rounds=2)
    assert config.student_features == (12, 24, 48)  # a list (JSON, a command line) is kept as a tuple
    taught = train_student(Oracle(truth), folder / "manifest.json", config=config, progress=False)
    # the partner, the first round's student, then the last round's two members
    assert trained == [(3, (8, 16, 32))] + [(5, (12, 24, 48))] * 3
    assert all(unet.config.steps == 5 and unet.config.features == (12, 24, 48) for unet in taught.unets)
    loaded = StudentSegmenter.load(taught.save(tmp_path / "student"))
    volume = load_volume(folder / "case4.nii.gz")
    assert loaded.config == taught.config and loaded.unet.config == taught.unet.config
    assert np.array_equal(loaded.predict_volume(volume), taught.predict_volume(volume))


def test_resliced_cuts_each_volume_along_another_axis():
    """resliced: volume by volume, the slices along one axis stacked back and cut along another (get_slices)."""
    volumes = [np.random.default_rng(i).random((5 + i, 4, 3)) for i in range(2)]
    slices = [s for v in volumes for s in get_slices(v, 0)]
    across, counts = resliced(slices, [5, 6], axis=0, plane=2)
    expected = [s for v in volumes for s in get_slices(v, 2)]
    assert counts == [3, 3] and len(across) == 6 and all(np.array_equal(a, b) for a, b in zip(across, expected))


@pytest.mark.slow  # trains tiny U-Nets (a few steps)
def test_a_student_per_plane_learns_the_volumes_cut_the_other_way_and_votes_in_3d(cohort, tmp_path, monkeypatch):
    """planes=(0,): after the members (along the collection's axis 2), one more student trained on the same
    pseudo-labelled volumes cut along axis 0 (with its own neighbouring slices); the student's probabilities are
    every U-Net's mean on the volume's grid; member(0) is the student without planes; saved and loaded (a canvas
    per U-Net)."""
    from fewsam_jax.fewshot import student as student_module

    folder, truth = cohort
    trained, real = [], student_module.train_unet
    monkeypatch.setattr(student_module, "train_unet",
                        lambda *a, **k: trained.append((a[0], a[1], k["features"])) or real(*a, **k))
    config = CONFIG.replace(unet=UNetConfig.tiny(steps=3), context=1, planes=[0], teacher_weight=1.0)  # the oracle
    assert config.planes == (0,)  # a list (JSON, a command line) is kept as a tuple
    taught = train_student(Oracle(truth), folder / "manifest.json", config=config, progress=False)
    images, labels, features = trained[-1]  # the last U-Net trained: the plane's student
    plain = train_student(Oracle(truth), folder / "manifest.json", config=config.replace(planes=()), progress=False)
    assert len(taught.unets) == 2 and taught.axes == (2, 0) and "plane_seconds" in taught.info
    # the plane's student: every support volume's pseudo-labels (the oracle's, the truth), cut along axis 0
    first = truth[key(load_volume(folder / "case0.nii.gz").array)]
    as_indices = np.select([first == 3, first == 7], [1, 2], 0)
    assert len(images) == len(labels) == len(features) == 3 * 40 and images[0].shape == (6, 36)
    assert np.array_equal(np.stack(labels[:40]), get_slices(as_indices, 0))
    assert np.array_equal(features[1], np.stack([images[0], images[2]], axis=-1))  # its neighbours along axis 0
    volume = load_volume(folder / "case4.nii.gz")
    member = taught.member(0)
    assert member.config.planes == () and np.array_equal(member.predict_volume(volume), plain.predict_volume(volume))
    across = unet_probabilities(taught.unets[1], get_slices(taught.intensity.apply(volume.array), 0), 1)
    on_axis = np.stack([get_slices(stack_slices(across[:, c], 0), 2) for c in range(3)], axis=1)
    np.testing.assert_allclose(taught.predict_volume(volume), (member.predict_volume(volume) + on_axis) / 2,
                               atol=1e-6)
    views = list(taught.views(volume))  # each U-Net's, on the volume's slices along the student's axis
    assert len(views) == 2 and np.array_equal(views[0], member.predict_volume(volume))
    np.testing.assert_array_equal(views[1], on_axis)
    assert np.array_equal(taught.predict_volume(volume), (views[0] + views[1]) / 2)
    assert np.array_equal(taught.segment(volume, progress=False), taught.labels_from(taught.predict_volume(volume)))
    loaded = StudentSegmenter.load(taught.save(tmp_path / "planes"))
    assert loaded.config == taught.config and [u.canvas for u in loaded.unets] == [u.canvas for u in taught.unets]
    assert taught.unets[0].canvas != taught.unets[1].canvas
    assert np.array_equal(loaded.predict_volume(volume), taught.predict_volume(volume))
    with pytest.raises(ValueError, match="holds the collection's own axis 2"):
        train_student(Oracle(truth), folder / "manifest.json", config=config.replace(planes=(2,)), progress=False)
    with pytest.raises(ValueError, match="1 planes"):
        StudentSegmenter(taught.unets[:1], taught.classes, taught.axis, taught.intensity, config)


def test_views_combine_by_their_mean_or_as_a_union_of_foreground():
    """combine_views: "mean" averages the U-Nets' probabilities; "union" keeps the classes' average and the
    background's lowest value, so a pixel one view calls foreground leaves the background; one view is itself."""
    first = np.array([[[[0.6]], [[0.3]], [[0.1]]]], np.float32)  # (n=1, K+1=3, 1, 1): background 0.6
    second = np.array([[[[0.2]], [[0.7]], [[0.1]]]], np.float32)
    mean = combine_views([first.copy(), second.copy()])
    np.testing.assert_allclose(mean[0, :, 0, 0], [0.4, 0.5, 0.1], atol=1e-7)
    union = combine_views([first.copy(), second.copy()], "union")
    np.testing.assert_allclose(union[0, :, 0, 0], [0.2, 0.5, 0.1], atol=1e-7)
    assert np.array_equal(combine_views([first.copy()], "union"), first)  # one view: no change
    lone = np.array([[[[0.3]], [[0.7]], [[0.0]]]], np.float32)  # one view calls the pixel class 1, the other not:
    background = np.array([[[[0.9]], [[0.1]], [[0.0]]]], np.float32)  # the mean keeps background, the union class 1
    assert combine_views([lone.copy(), background.copy()]).argmax(axis=1).item() == 0
    assert combine_views([lone.copy(), background.copy()], "union").argmax(axis=1).item() == 1
    with pytest.raises(ValueError, match="fusion: expected 'mean' or 'union', got 'max'"):
        combine_views([first], "max")
    with pytest.raises(ValueError, match="fusion: expected 'mean' or 'union'"):
        StudentConfig(fusion="max")


def test_auto_planes_take_the_other_plane_where_slices_show_every_class():
    """planes="auto": of the two other axes, the one whose slices of the pseudo-labelled volumes most often hold
    every class they hold (a tie: axial); none where the volumes' pixels along it would be strips."""
    labels = np.zeros((6, 8, 5), np.int32)
    labels[1:3, 2:6, 1:4] = 1
    labels[3:5, 2:6, 1:4] = 2  # side by side along x: every coronal (y) and axial (z) slice holding one holds both
    slices = list(get_slices(labels, 0))  # the collection's axis: sagittal, where no slice holds both
    planes, coverage = auto_planes(slices, [6], 0, 2, [((6, 8, 5), (1.0, 1.0, 1.0))])
    assert planes == (2,) and coverage.tolist() == [0.0, 1.0, 1.0]  # coronal and axial tie: axial
    assert auto_planes(slices, [6], 0, 2, [((6, 8, 5), (1.0, 1.0, 1.0))], every=True)[0] == (2, 1)  # "all"
    labels[3:5, 2:6, 1] = 0  # now one axial slice holds class 1 alone; coronal slices still hold both
    planes, coverage = auto_planes(list(get_slices(labels, 0)), [6], 0, 2, [((6, 8, 5), (1.0, 1.0, 1.0))])
    assert planes == (1,) and coverage[1] == 1.0 > coverage[2]
    assert auto_planes(list(get_slices(labels, 0)), [6], 0, 2, [((6, 8, 5), (1.0, 1.0, 1.0))],
                       every=True)[0] == (1, 2)  # "all": highest coverage first
    # 5 mm along z: coronal (x-z) and sagittal (y-z) pixels are strips, only axial ones stay square
    assert auto_planes(list(get_slices(labels, 0)), [6], 0, 2, [((6, 8, 5), (1.0, 1.0, 5.0))])[0] == (2,)
    assert auto_planes(list(get_slices(labels, 0)), [6], 0, 2, [((6, 8, 5), (1.0, 1.0, 5.0))], every=True)[0] == (2,)
    assert auto_planes(list(get_slices(labels, 2)), [5], 2, 2, [((6, 8, 5), (1.0, 1.0, 5.0))])[0] == ()
    with pytest.raises(ValueError, match="auto_planes: 6 label slices and 1 grids for counts"):
        auto_planes(slices, [3, 3], 0, 2, [((6, 8, 5), (1.0, 1.0, 1.0))])


@pytest.mark.slow  # trains tiny U-Nets (a few steps)
def test_auto_planes_are_chosen_when_teaching_and_kept_in_the_students_config(cohort, tmp_path):
    """The phantoms' disc and square lie side by side along x, so no sagittal slice holds both and many coronal ones
    do: teaching along the axial axis, "auto" adds the coronal plane; the student saves the planes chosen."""
    folder, truth = cohort
    config = CONFIG.replace(unet=UNetConfig.tiny(steps=3), planes="auto", teacher_weight=1.0)
    taught = train_student(Oracle(truth), folder / "manifest.json", config=config, progress=False)
    assert taught.config.planes == (1,) and taught.axes == (2, 1) and len(taught.info["plane_coverage"]) == 3
    assert taught.info["plane_coverage"][0] == 0.0 < taught.info["plane_coverage"][1]
    loaded = StudentSegmenter.load(taught.save(tmp_path / "auto"))
    assert loaded.config.planes == (1,)
    for unresolved in ("auto", "all"):
        with pytest.raises(ValueError, match=f"'{unresolved}' is resolved when teaching"):
            StudentSegmenter(taught.unets, taught.classes, taught.axis, taught.intensity,
                             config.replace(planes=unresolved))


class Shy(Oracle):
    """A decoder that ranks pixels right but labels none: every logit 6 below the oracle's (inside about -2,
    outside about -10; a little noise, fixed per volume, breaks the ties)."""

    def predict_volume(self, volume, cache=None, progress=False):
        logits, presence = super().predict_volume(volume, cache, progress)
        noise = np.random.default_rng(int(key(volume.array)[:8], 16)).random(logits.shape, np.float32)
        return logits - 6.0 + 1e-3 * noise, presence


@pytest.mark.slow  # trains a small U-Net and tiny ones
def test_volume_calibration_lets_a_shy_decoder_teach_the_partners_volume(cohort, tmp_path, monkeypatch):
    """calibration="volume" with the decoder's share 1: on the support volumes' unlabelled slices the pseudo-labels
    cover about what the partner's most probable classes do (exactly, but for pixels two shifted classes both
    claim); without it, nothing. The shifts (one per round) are in info; the option is saved."""
    from fewsam_jax.fewshot import load_collection
    from fewsam_jax.fewshot import student as student_module

    folder, truth = cohort
    support = support_volumes(load_collection(folder / "manifest.json"), Oracle.class_ids)
    partner = train_partner(Oracle(truth), support, CONFIG, progress=False)  # the fixture's, which learns
    config = CONFIG.replace(student_steps=3, teacher_weight=1.0)  # the partner trained as CONFIG says
    taught_labels, real = [], student_module.train_unet
    monkeypatch.setattr(student_module, "train_unet", lambda *a, **k: taught_labels.append(a[1]) or real(*a, **k))
    plain = train_student(Shy(truth), folder / "manifest.json", config=config, partner=partner, progress=False)
    calibrated = train_student(Shy(truth), folder / "manifest.json", config=config.replace(calibration="volume"),
                               partner=partner, progress=False)
    assert "decoder_shifts" not in plain.info
    assert len(calibrated.info["decoder_shifts"]) == 1 and min(calibrated.info["decoder_shifts"][0]) > 3
    # the partner's own volume of each class on the support volumes' unlabelled slices
    expected, offset, rows = np.zeros(3, int), 0, []
    for volume, labelled, _ in support:
        slices = get_slices(Oracle.intensity.apply(volume.array), 2)
        unlabelled = [z for z in range(len(slices)) if z not in labelled]
        expected += np.bincount(unet_probabilities(partner, slices)[unlabelled].argmax(axis=1).ravel(), minlength=3)
        rows += [offset + z for z in unlabelled]
        offset += len(slices)
    plain_labels, calibrated_labels = (np.stack([labels[r] for r in rows]) for labels in taught_labels)
    assert not plain_labels.any()  # the shy decoder alone labels nothing
    counts = np.bincount(calibrated_labels.ravel(), minlength=3)
    assert expected[1:].min() > 100 and np.allclose(counts[1:], expected[1:], rtol=0.02), (counts, expected)
    loaded = StudentSegmenter.load(calibrated.save(tmp_path / "student"))
    assert loaded.config.calibration == "volume" and loaded.info["decoder_shifts"] == calibrated.info["decoder_shifts"]


def test_fewsam_teach_defaults_are_the_configs():
    """`fewsam teach` spells StudentConfig's defaults out (the parser imports no jax): the two stay equal."""
    from fewsam_jax.cli import build_parser

    args = build_parser().parse_args(["teach", "manifest.json", "-d", "decoder", "-o", "student"])
    defaults = StudentConfig()
    assert (args.teacher_weight, args.seed, args.margin, args.context, args.members) == (
        defaults.teacher_weight, defaults.seed, defaults.margin, defaults.context, defaults.members)
    assert args.planes is None  # StudentConfig's, or StudentConfig.cohort's with -i
    from fewsam_jax.cli import _planes

    assert (_planes(["auto"]), _planes(["all"]), _planes(["0", "2"]), _planes(None)) == ("auto", "all", (0, 2), None)
    with pytest.raises(ValueError, match="--planes: auto stands alone"):
        _planes(["auto", "1"])
    with pytest.raises(ValueError, match="--planes: all stands alone"):
        _planes(["0", "all"])
    # rounds and student steps: StudentConfig's, or StudentConfig.cohort's with -i (the test below)
    assert args.rounds is None and args.steps is None and args.student_steps is None
    assert (defaults.rounds, defaults.student_steps) == (1, None)
    assert args.calibration == defaults.calibration == "none"
    assert args.unlabelled_teacher == defaults.unlabelled_teacher == "student"
    assert args.fusion is None and defaults.fusion == "mean"  # StudentConfig's, or StudentConfig.cohort's with -i
    teach = build_parser()._subparsers._group_actions[0].choices["teach"]
    assert tuple(teach._option_string_actions["--calibration"].choices) == get_args(Calibration)
    assert tuple(teach._option_string_actions["--unlabelled-teacher"].choices) == get_args(UnlabelledTeacher)
    assert tuple(teach._option_string_actions["--fusion"].choices) == get_args(Fusion)
    assert tuple(teach._option_string_actions["--planes"].choices) == ("0", "1", "2", *get_args(ChosenPlanes))


def test_the_cohort_preset_teaches_unlabelled_volumes_in_a_second_round():
    """StudentConfig.cohort: two rounds, the last student labelling the unlabelled volumes, each student trained
    three times the U-Net's steps, one more student along every other plane that suits, fused as a union; any field
    can be overridden."""
    config = StudentConfig.cohort()
    assert (config.rounds, config.unlabelled_teacher, config.student_steps, config.planes, config.fusion) == (
        2, "student", 3 * UNetConfig().steps, "all", "union")
    assert config.replace(rounds=1, student_steps=None, unlabelled_teacher="student", planes=(),
                          fusion="mean") == StudentConfig()
    small = StudentConfig.cohort(unet=UNetConfig.tiny(steps=7), margin=0.1)
    assert (small.student_steps, small.unet.steps, small.margin, small.rounds) == (21, 7, 0.1, 2)


def test_without_a_config_unlabelled_volumes_are_taught_as_the_cohort_preset_teaches(cohort, monkeypatch):
    """train_student's default config: StudentConfig() on the support volumes alone, StudentConfig.cohort() with
    unlabelled volumes (checked on the configs the U-Nets are trained with, no training run)."""
    folder, truth = cohort
    seen = []

    def record(images, labels, outputs, config, seed=0, progress=True, features=None):
        seen.append(config)
        if len(seen) == 2:  # the partner, then the first student: what is checked; nothing trains
            raise StopIteration
        return SimpleNamespace(config=config), []

    monkeypatch.setattr("fewsam_jax.fewshot.student.train_unet", record)
    monkeypatch.setattr("fewsam_jax.fewshot.student.unet_probabilities",
                        lambda unet, slices, context=0, rows=slice(None): np.zeros((len(slices), 3, *slices.shape[1:])))
    for unlabelled, expected in (((), StudentConfig()), ([folder / "case3.nii.gz"], StudentConfig.cohort())):
        seen.clear()
        with pytest.raises(StopIteration):
            train_student(Oracle(truth), folder / "manifest.json", unlabelled=unlabelled, progress=False)
        assert seen == [expected.unet_config, expected.student_unet_config], unlabelled
    assert StudentConfig().student_unet_config != StudentConfig.cohort().student_unet_config  # 600 and 1800 steps


def test_bad_input_is_named_before_any_training(cohort, monkeypatch, tmp_path):
    folder, truth = cohort
    monkeypatch.setattr("fewsam_jax.fewshot.student.train_unet", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        train_student(Oracle(truth), folder / "manifest.json", unlabelled=[tmp_path / "missing.nii.gz"])
    broken = np.zeros((40, 36, 6), np.float32)
    broken[3, 4, 5] = np.nan
    nib.save(nib.Nifti1Image(broken, np.eye(4)), tmp_path / "broken.nii.gz")
    with pytest.raises(VolumeError, match="broken.nii.gz"):  # read before the partner trains, not in round 2
        train_student(Oracle(truth), folder / "manifest.json", config=CONFIG.replace(rounds=2, teacher_weight=0.5),
                      unlabelled=[folder / "case3.nii.gz", tmp_path / "broken.nii.gz"])
    def not_converted():
        raise BaseModelNotFoundError("vit_b: convert it first")

    unconverted = Oracle(truth)  # a decoder whose base model is not converted on this machine: found out now
    unconverted.base_model = not_converted
    with pytest.raises(BaseModelNotFoundError, match="vit_b: convert it first"):
        train_student(unconverted, folder / "manifest.json")
    other = Oracle(truth)
    other.classes = {1: "disc", 2: "square"}
    with pytest.raises(ValueError, match="the collection it was trained on"):
        train_student(other, folder / "manifest.json")
    with pytest.raises(ValueError, match="teacher_weight"):
        StudentConfig(teacher_weight=1.5)
    for field, value in (("rounds", 0), ("rounds", True), ("margin", 0.5), ("context", -1), ("context", 1.5),
                         ("members", 0), ("members", 2.0), ("student_steps", 0), ("student_steps", True),
                         ("student_steps", 5.0), ("calibration", "size"), ("calibration", None),
                         ("unlabelled_teacher", "decoder"), ("student_features", (16,)),
                         ("student_features", (16, 0, 64, 128)), ("student_features", (16, 32, 64)),
                         ("student_features", 32), ("planes", (0, 0)), ("planes", (3,)), ("planes", 1),
                         ("planes", (True,)), ("planes", "every")):
        with pytest.raises(ValueError, match=field):
            StudentConfig(**{field: value})
    with pytest.raises(ValueError, match="rounds: more than one round teaches nothing new"):
        StudentConfig(rounds=2, teacher_weight=1.0)
    with pytest.raises(ValueError, match="feature_channels"):
        StudentConfig(unet=UNetConfig(feature_channels=2))
    flat = Oracle(truth)
    partner = SimpleNamespace(config=CONFIG.unet_config, num_classes=3)  # trained without neighbours
    with pytest.raises(ValueError, match="partner: trained with another U-Net config"):
        train_student(flat, folder / "manifest.json", config=CONFIG.replace(context=1), partner=partner)
    with pytest.raises(TypeError, match="StudentConfig"):
        train_student(Oracle(truth), folder / "manifest.json", config={"teacher_weight": 0.5})
    (tmp_path / "empty").mkdir()
    with pytest.raises(StudentFileError, match="no student.json"):
        StudentSegmenter.load(tmp_path / "empty")
