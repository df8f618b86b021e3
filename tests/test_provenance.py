"""Which files the library wrote (fewsam_jax.provenance), and what that allows: ``--overwrite`` and
``overwrite=True`` in the commands' checks replace only the library's own files; the public writers never replace
an input, and replace anything else only when asked."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from helpers import write_dicom_series
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from fewsam_jax.cohort import Case, evaluate_folders, plan_outputs
from fewsam_jax.dicom_seg import check_dicom_seg_output, write_dicom_seg
from fewsam_jax.export import labels_json, write_label_descriptions, write_seg_nrrd
from fewsam_jax.io import from_array, load_volume, save_image, save_labels
from fewsam_jax.outputs import OutputExistsError, OutputIsInputError, check_output_file
from fewsam_jax.provenance import check_own_file, written_by_library

CLASSES = {1: "liver", 2: "spleen"}
NOT_OURS = "is not an unchanged output of fewsam_jax"


def labelled_image(tmp_path, name="img.nii.gz"):
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(size=(6, 5, 4)).astype(np.float32), np.eye(4)),
             tmp_path / name)
    volume = load_volume(tmp_path / name)
    labels = np.zeros(volume.shape, np.uint8)
    labels[1:3, 1:4, 1:3] = 1
    labels[4, 0, 3] = 2
    return volume, labels


def test_the_library_marks_every_file_kind_it_writes_and_nothing_else_counts(tmp_path):
    volume, labels = labelled_image(tmp_path)
    ours = [save_labels(labels, volume, tmp_path / "ours.nii.gz", mark=True),
            save_labels(labels.astype(np.int32) * 300, volume, tmp_path / "ours.nii", mark=True),  # int16
            *write_label_descriptions(tmp_path / "ours.nii.gz", CLASSES).values()]
    flat = from_array(np.zeros((6, 5, 1), np.float32))
    ours.append(save_labels(np.eye(6, 5, dtype=np.uint8)[..., None], flat, tmp_path / "ours.png", mark=True))
    ours.append(write_seg_nrrd(labels, volume, tmp_path / "ours.seg.nrrd", CLASSES))
    assert all(written_by_library(path) for path in ours), [p for p in ours if not written_by_library(p)]

    # the same kinds written by someone else, saved unmarked (the annotator's ground truth), or ours corrected and
    # saved again with the header copied (as editors do); a damaged file, a link to one of ours, a folder, nothing
    nib.save(nib.Nifti1Image(labels, np.eye(4)), tmp_path / "theirs.nii.gz")
    save_labels(labels, volume, tmp_path / "drawn.nii.gz")
    ours_image = nib.load(tmp_path / "ours.nii.gz")
    corrected = np.asarray(ours_image.dataobj).copy()
    corrected[0, 0, 0] = 2
    nib.save(nib.Nifti1Image(corrected, ours_image.affine, ours_image.header), tmp_path / "corrected.nii.gz")
    assert ours_image.header["descrip"] == nib.load(tmp_path / "corrected.nii.gz").header["descrip"]
    Image.fromarray(np.asarray(Image.open(tmp_path / "ours.png")) * 2).save(
        tmp_path / "corrected.png", pnginfo=_same_text(tmp_path / "ours.png"))
    edited = (tmp_path / "ours.labels.txt").read_text().replace('"spleen"', '"Spleen"')
    (tmp_path / "edited.labels.txt").write_text(edited)
    (tmp_path / "edited.labels.json").write_text((tmp_path / "ours.labels.json").read_text().replace("60", "61"))
    Image.fromarray(np.ones((5, 6), np.uint8)).save(tmp_path / "theirs.png")
    (tmp_path / "theirs.labels.txt").write_text('    1   255 0 0 1.00  1  1    "liver"\n')
    table = json.loads(labels_json(CLASSES))
    table["note"] = "edited by hand"
    (tmp_path / "theirs.labels.json").write_text(json.dumps(table))
    (tmp_path / "broken.nii.gz").write_bytes(b"not gzip")
    (tmp_path / "summary.json").write_text(json.dumps({"mean": {}, "foreground_mean": {}}))  # nnU-Net's layout
    (tmp_path / "link.nii.gz").symlink_to(tmp_path / "ours.nii.gz")
    (tmp_path / "folder.nii.gz").mkdir()
    theirs = ["theirs.nii.gz", "drawn.nii.gz", "corrected.nii.gz", "theirs.png", "corrected.png", "theirs.labels.txt",
              "theirs.labels.json", "edited.labels.txt", "edited.labels.json", "broken.nii.gz", "summary.json",
              "link.nii.gz", "folder.nii.gz", "missing.nii.gz", "img.nii.gz"]
    assert not [name for name in theirs if written_by_library(tmp_path / name)]


def _same_text(path):
    """A PngInfo carrying the text chunks of the PNG at ``path``."""
    text = PngInfo()
    for key, value in Image.open(path).text.items():
        text.add_text(key, value)
    return text


def test_overwrite_in_the_commands_checks_replaces_only_the_librarys_files(tmp_path):
    volume, labels = labelled_image(tmp_path)
    save_labels(labels, volume, tmp_path / "ours.nii.gz", mark=True)
    nib.save(nib.Nifti1Image(labels, np.eye(4)), tmp_path / "theirs.nii.gz")
    before = (tmp_path / "theirs.nii.gz").read_bytes()
    mine = check_output_file(tmp_path / "ours.nii.gz", overwrite=True, replace=check_own_file)
    assert mine == tmp_path / "ours.nii.gz"
    with pytest.raises(OutputExistsError, match=NOT_OURS):
        check_output_file(tmp_path / "theirs.nii.gz", overwrite=True, replace=check_own_file)
    with pytest.raises(OutputExistsError, match="pass --overwrite"):  # without overwrite: as before
        check_output_file(tmp_path / "ours.nii.gz", replace=check_own_file)

    # a cohort: planned up front, before any compute; the first foreign output named
    out = tmp_path / "out"
    out.mkdir()
    cases = [Case(name=name, image=tmp_path / "img.nii.gz") for name in ("a", "b")]  # one image serves both
    save_labels(labels, volume, out / "a.nii.gz", mark=True)
    (out / "b.nii.gz").write_bytes(before)
    with pytest.raises(OutputExistsError, match=f"b.nii.gz exists and {NOT_OURS}"):
        plan_outputs(cases, out, overwrite=True)
    (out / "b.nii.gz").unlink()
    todo, done = plan_outputs(cases, out, overwrite=True)
    assert [case.name for case, _ in todo] == ["a", "b"] and not done
    assert (tmp_path / "theirs.nii.gz").read_bytes() == before


def test_evaluate_replaces_its_own_summary_only(tmp_path):
    for folder in ("ref", "pred"):
        (tmp_path / folder).mkdir()
        labels = np.zeros((6, 5, 4), np.uint8)
        labels[1:4, 1:3, 1:3] = 1
        nib.save(nib.Nifti1Image(labels, np.eye(4)), tmp_path / folder / "case.nii.gz")
    summary = evaluate_folders(tmp_path / "ref", tmp_path / "pred", classes={1: "liver"})
    assert json.loads((tmp_path / "pred" / "summary.json").read_text())["writer"] == "fewsam_jax"
    assert summary["foreground_mean"]["dice"] == 1.0
    evaluate_folders(tmp_path / "ref", tmp_path / "pred", classes={1: "liver"}, overwrite=True)  # its own
    nnunet = json.dumps({"foreground_mean": {"Dice": 0.9}, "mean": {}, "metric_per_case": []})
    (tmp_path / "pred" / "summary.json").write_text(nnunet)  # nnU-Net's evaluate_folder wrote this one
    with pytest.raises(OutputExistsError, match=NOT_OURS):
        evaluate_folders(tmp_path / "ref", tmp_path / "pred", classes={1: "liver"}, overwrite=True)
    assert (tmp_path / "pred" / "summary.json").read_text() == nnunet


def test_public_writers_never_replace_an_input_and_replace_other_files_only_when_asked(tmp_path):
    volume, labels = labelled_image(tmp_path)
    image = (tmp_path / "img.nii.gz").read_bytes()
    for overwrite in (False, True):
        with pytest.raises(OutputIsInputError, match="also an input"):
            write_seg_nrrd(labels, volume, tmp_path / "img.nii.gz", CLASSES, overwrite=overwrite)
    (tmp_path / "case.seg.nrrd").write_bytes(b"the user's segmentation")
    with pytest.raises(OutputExistsError, match="case.seg.nrrd exists"):
        write_seg_nrrd(labels, volume, tmp_path / "case.seg.nrrd", CLASSES)  # the default keeps it
    assert (tmp_path / "case.seg.nrrd").read_bytes() == b"the user's segmentation"
    write_seg_nrrd(labels, volume, tmp_path / "case.seg.nrrd", CLASSES, overwrite=True)  # asked: replaced
    assert written_by_library(tmp_path / "case.seg.nrrd")
    for overwrite in (False, True):
        with pytest.raises(OutputIsInputError, match="also an input"):
            save_image(volume, tmp_path / "img.nii.gz", overwrite=overwrite)
    (tmp_path / "case.labels.json").write_text("the user's label table\n")
    with pytest.raises(OutputExistsError, match="case.labels.json exists"):
        write_label_descriptions(tmp_path / "case.nii.gz", CLASSES)
    assert not (tmp_path / "case.labels.txt").exists()  # both checked before either is written
    assert (tmp_path / "img.nii.gz").read_bytes() == image


def test_dicom_seg_is_marked_and_never_lands_in_its_series(tmp_path):
    pixels = np.random.default_rng(1).integers(-200, 200, size=(4, 12, 10))
    write_dicom_series(tmp_path / "ct", pixels)
    volume = load_volume(tmp_path / "ct")
    labels = np.zeros(volume.shape, np.uint8)
    labels[2:6, 3:7, 1:3] = 1
    first = sorted((tmp_path / "ct").iterdir())[0]
    before = first.read_bytes()
    for overwrite in (False, True):  # a slice of the series, or a new file among them: refused
        for target in (first, tmp_path / "ct" / "new.seg.dcm"):
            with pytest.raises(OutputIsInputError):
                write_dicom_seg(labels, volume, target, {1: "liver"}, overwrite=overwrite)
    assert first.read_bytes() == before and len(list((tmp_path / "ct").iterdir())) == 4
    path = write_dicom_seg(labels, volume, tmp_path / "ct.seg.dcm", {1: "liver"})
    assert written_by_library(path)
    with pytest.raises(OutputExistsError, match="ct.seg.dcm exists"):
        write_dicom_seg(labels, volume, path, {1: "liver"})
    check_dicom_seg_output(tmp_path / "ct", tmp_path / "ct.nii.gz", overwrite=True)  # ours: may be replaced
    (tmp_path / "ct.seg.dcm").write_bytes(b"DICM from the PACS")
    with pytest.raises(OutputExistsError, match=NOT_OURS):
        check_dicom_seg_output(tmp_path / "ct", tmp_path / "ct.nii.gz", overwrite=True)
