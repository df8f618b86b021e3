"""DICOM-SEG output: written for a DICOM series, read back with highdicom and pydicom (segment names and
colours, the study / series / frame-of-reference references, masks equal to the label map on the source
grid), by the library, by `fewsam segment --dicom-seg` (one series, several, resumed) and on the shared
TotalSegmentator series."""

from __future__ import annotations

import json
import logging

import nibabel as nib
import numpy as np
import pydicom
import pytest

from fewsam_jax import cli
from fewsam_jax.dicom_seg import check_dicom_seg_output, dicom_seg_from_label_file, read_dicom_seg, write_dicom_seg
from fewsam_jax.export import ExportError, class_colours, sidecar_paths
from fewsam_jax.io import from_array, load_volume
from fewsam_jax.weights import save_model

from helpers import shared_data, untrained_segmenter, write_dicom_series


CLASSES = {1: "liver", 3: "spleen"}  # not 1..K: segment numbers 1, 2 carry the label ids 1, 3
AXIAL = (1, 0, 0, 0, 1, 0)
CORONAL = (1, 0, 0, 0, 0, -1)
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def series(folder, orientation=AXIAL, n=6, shape=(12, 10), **kwargs) -> dict:
    pixels = np.random.default_rng(1).integers(-200, 200, size=(n, *shape))
    return write_dicom_series(folder, pixels, orientation=orientation, **kwargs)


def blobs(shape, seed=0) -> np.ndarray:
    """Labels 1 and 3 in two boxes of random placement, some slices without either."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint8)
    for value in CLASSES:
        x, y = rng.integers(0, shape[0] - 4), rng.integers(0, shape[1] - 4)
        labels[x:x + 4, y:y + 3, 1:shape[2] - 1] = value
    labels[..., 2][labels[..., 2] == 3] = 0  # slice 2 has the liver only
    return labels


def referenced(path) -> tuple[pydicom.Dataset, set[str]]:
    ds = pydicom.dcmread(path)
    refs = {str(item.ReferencedSOPInstanceUID) for item in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    return ds, refs


@pytest.mark.parametrize("orientation", [AXIAL, CORONAL], ids=["axial", "coronal"])
def test_round_trip_names_references_and_masks(tmp_path, orientation):
    uids = series(tmp_path / "ct", orientation)
    volume = load_volume(tmp_path / "ct")
    labels = blobs(volume.shape)
    path = write_dicom_seg(labels, volume, tmp_path / "ct.seg.dcm", CLASSES)

    back, segments = read_dicom_seg(path, tmp_path / "ct")
    source = volume.to_source(labels)
    assert back.shape == source.shape == volume.source_shape
    np.testing.assert_array_equal(back, source)
    colours = class_colours(CLASSES)
    assert segments == {k: (name, colours[k]) for k, name in CLASSES.items()}

    ds, refs = referenced(path)
    assert ds.SOPClassUID == SEGMENTATION_STORAGE and ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert ds.StudyInstanceUID == uids["StudyInstanceUID"] and ds.FrameOfReferenceUID == uids["FrameOfReferenceUID"]
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == uids["SeriesInstanceUID"]
    assert ds.SeriesInstanceUID != uids["SeriesInstanceUID"] and ds.PatientID == "SYN001"
    assert refs == set(uids["instances"])
    assert [item.SegmentLabel for item in ds.SegmentSequence] == ["liver", "spleen"]
    # each stored frame lies where its source image lies, and holds that image's mask of its segment
    positions = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID):
                 [float(v) for v in pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient]
                 for f in (tmp_path / "ct").iterdir()}
    order = {uid: k for k, uid in enumerate(sorted(positions, key=lambda u: np.dot(
        positions[u], np.cross(orientation[:3], orientation[3:]))))}
    pixels = ds.pixel_array.reshape(int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    assert 0 < len(pixels) < 2 * source.shape[2]  # empty frames omitted
    for frame, item in zip(pixels, ds.PerFrameFunctionalGroupsSequence):
        uid = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(position, positions[uid], atol=1e-4)
        class_id = list(CLASSES)[number - 1]
        np.testing.assert_array_equal(frame.astype(bool), source[:, :, order[uid]].T == class_id)


def test_anonymised_series_gets_derived_study_and_series_uids(tmp_path, caplog):
    uids = series(tmp_path / "anon", uids={"StudyInstanceUID": "", "SeriesInstanceUID": "", "SOPInstanceUID": ""})
    volume = load_volume(tmp_path / "anon")
    labels = blobs(volume.shape, seed=3)
    with caplog.at_level(logging.WARNING, logger="fewsam_jax"):
        first = write_dicom_seg(labels, volume, tmp_path / "a.seg.dcm", CLASSES)
    assert "has no StudyInstanceUID" in caplog.text and "will not be linked to the images in a PACS" in caplog.text
    second = write_dicom_seg(labels, volume, tmp_path / "b.seg.dcm", CLASSES)
    (a, refs), (b, _) = referenced(first), referenced(second)
    assert a.StudyInstanceUID == b.StudyInstanceUID != ""  # derived, the same every time
    assert a.ReferencedSeriesSequence[0].SeriesInstanceUID == b.ReferencedSeriesSequence[0].SeriesInstanceUID
    assert refs == set(uids["instances"])  # empty SOPInstanceUIDs: the file meta's
    np.testing.assert_array_equal(read_dicom_seg(first, tmp_path / "anon")[0], volume.to_source(labels))


def test_empty_label_map_still_writes_a_segmentation(tmp_path):
    series(tmp_path / "ct", n=3)
    volume = load_volume(tmp_path / "ct")
    path = write_dicom_seg(np.zeros(volume.shape, np.uint8), volume, tmp_path / "e.seg.dcm", CLASSES)
    back, segments = read_dicom_seg(path, tmp_path / "ct")
    assert not back.any() and back.shape == volume.source_shape and set(segments) == set(CLASSES)


def test_bad_inputs_are_named(tmp_path):
    series(tmp_path / "ct")
    volume = load_volume(tmp_path / "ct")
    labels = blobs(volume.shape)
    with pytest.raises(ExportError, match=r"label values \[7\] are not among the classes \[1, 3\]"):
        write_dicom_seg(np.where(labels == 3, 7, labels), volume, tmp_path / "x.seg.dcm", CLASSES)
    with pytest.raises(ExportError, match="labels: a label map must hold integer ids, but .* dtype float32"):
        write_dicom_seg(labels.astype(np.float32) * 0.5, volume, tmp_path / "x.seg.dcm", CLASSES)
    with pytest.raises(ExportError, match="not on the grid"):
        write_dicom_seg(labels[:-1], volume, tmp_path / "x.seg.dcm", CLASSES)
    with pytest.raises(ExportError, match="pass series="):
        write_dicom_seg(labels, from_array(labels), tmp_path / "x.seg.dcm", CLASSES)
    flipped = from_array(labels, affine=volume.affine @ np.diag([1.0, 1.0, -1.0, 1.0]))  # same shape, other grid
    with pytest.raises(ExportError, match="is not this DICOM series' grid"):
        write_dicom_seg(flipped.array, flipped, tmp_path / "x.seg.dcm", CLASSES, series=tmp_path / "ct")
    nifti = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(labels, np.eye(4)), nifti)
    soft = tmp_path / "soft.nii.gz"  # a probability map saved where a label map was expected: refused, not rounded
    nib.save(nib.Nifti1Image(labels.astype(np.float32) * 0.4, np.eye(4)), soft)
    with pytest.raises(ExportError, match=r"soft\.nii\.gz: a label map must hold integer ids"):
        dicom_seg_from_label_file(soft, tmp_path / "ct", CLASSES, tmp_path / "x.seg.dcm")
    with pytest.raises(ExportError, match=r"dicom_seg \(--dicom-seg\) needs a DICOM series as input"):
        check_dicom_seg_output(nifti, tmp_path / "out.nii.gz")
    (tmp_path / "out.seg.dcm").write_text("someone's file")
    with pytest.raises(FileExistsError, match="out.seg.dcm exists"):
        check_dicom_seg_output(tmp_path / "ct", tmp_path / "out.nii.gz")
    assert not (tmp_path / "x.seg.dcm").exists() and (tmp_path / "out.seg.dcm").read_text() == "someone's file"


# ---------------------------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def decoder(tmp_path_factory, tiny_sam):
    """A saved (untrained) decoder on the tiny model, and a FEWSAM_HOME holding that model."""
    home = tmp_path_factory.mktemp("home")
    save_model(tiny_sam, home / "models" / "tiny-test")
    out = home / "decoder"
    untrained_segmenter(tiny_sam, CLASSES).save(out)
    return home, out


def test_segment_writes_dicom_seg_beside_the_label_map(tmp_path, decoder, monkeypatch, capsys):
    home, decoder_dir = decoder
    monkeypatch.setenv("FEWSAM_HOME", str(home))
    uids = series(tmp_path / "s1", shape=(20, 18))
    series(tmp_path / "s2", shape=(20, 18), n=4, seed=2)
    common = ["--decoder", decoder_dir, "--cache", tmp_path / "cache", "--dicom-seg", "-q"]
    out = tmp_path / "one" / "s1.nii.gz"
    out.parent.mkdir()
    assert cli.main([str(a) for a in ["segment", tmp_path / "s1", "-o", out, *common]]) == 0
    labels = np.asarray(nib.load(out).dataobj)
    back, segments = read_dicom_seg(sidecar_paths(out)["dicom"], tmp_path / "s1")
    np.testing.assert_array_equal(back, labels)
    assert {k: name for k, (name, _) in segments.items()} == CLASSES
    assert [row["name"] for row in json.loads(sidecar_paths(out)["json"].read_text())["labels"]] == ["liver", "spleen"]
    ds, refs = referenced(sidecar_paths(out)["dicom"])
    assert refs == set(uids["instances"]) and ds.FrameOfReferenceUID == uids["FrameOfReferenceUID"]

    # several series -> a folder; a run stopped before a DICOM-SEG gets it from the label map on --continue
    folder = tmp_path / "many"
    argv = ["segment", "-i", tmp_path / "s1", tmp_path / "s2", "-o", folder, *common]
    assert cli.main([str(a) for a in argv]) == 0
    assert sorted(p.name for p in folder.glob("*.seg.dcm")) == ["s1.seg.dcm", "s2.seg.dcm"]
    np.testing.assert_array_equal(read_dicom_seg(folder / "s1.seg.dcm", tmp_path / "s1")[0], labels)
    (folder / "s2.seg.dcm").unlink()
    before = (folder / "s2.nii.gz").stat().st_mtime_ns
    assert cli.main([str(a) for a in [*argv, "--continue"]]) == 0
    assert (folder / "s2.nii.gz").stat().st_mtime_ns == before  # not segmented again
    np.testing.assert_array_equal(read_dicom_seg(folder / "s2.seg.dcm", tmp_path / "s2")[0],
                                  np.asarray(nib.load(folder / "s2.nii.gz").dataobj))
    # a DICOM-SEG beside a case still to do is not from a run of ours (written after the label map): kept
    (folder / "s2.nii.gz").unlink()
    (folder / "s2.seg.dcm").write_bytes(b"a reader's own segmentation")
    capsys.readouterr()
    assert cli.main([str(a) for a in [*argv, "--continue"]]) == 2
    assert "s2.seg.dcm exists" in capsys.readouterr().err
    assert (folder / "s2.seg.dcm").read_bytes() == b"a reader's own segmentation"

    # not a DICOM series: refused before anything is computed or written
    nifti = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((20, 18, 3), np.float32), np.eye(4)), nifti)
    capsys.readouterr()
    assert cli.main([str(a) for a in ["segment", nifti, "-o", tmp_path / "img_seg.nii.gz", *common]]) == 2
    assert "needs a DICOM series as input" in capsys.readouterr().err
    assert not (tmp_path / "img_seg.nii.gz").exists()


# ---------------------------------------------------------------------------------------------- shared data


@pytest.mark.slow
@pytest.mark.shared_data
def test_shared_totalsegmentator_series_round_trip(tmp_path):
    """The shared series (20 JPEG 2000 slices, anonymised: empty study/series UIDs) with three organs of its
    TotalSegmentator label map (LAS, another orientation of the same grid)."""
    folder = shared_data("totalseg_ct", "dicom_series")
    names = json.loads(shared_data("totalseg_ct", "class_map.json").read_text())["total"]
    volume = load_volume(folder)
    reference = load_volume(shared_data("totalseg_ct", "dicom_series_seg.nii.gz"))
    np.testing.assert_allclose(reference.affine, volume.affine, atol=1e-3)
    classes = {5: names["5"], 6: names["6"], 52: names["52"]}
    labels = np.rint(reference.array).astype(np.int32)
    labels[~np.isin(labels, list(classes))] = 0
    assert all((labels == k).any() for k in classes)
    path = write_dicom_seg(labels, volume, tmp_path / "ct.seg.dcm", classes)
    back, segments = read_dicom_seg(path, folder)
    np.testing.assert_array_equal(back, volume.to_source(labels))
    assert {k: name for k, (name, _) in segments.items()} == {5: "liver", 6: "stomach", 52: "aorta"}
    ds, refs = referenced(path)
    frame = {str(pydicom.dcmread(f, stop_before_pixels=True).FrameOfReferenceUID) for f in folder.iterdir()}
    assert {str(ds.FrameOfReferenceUID)} == frame and len(refs) == 20


def test_a_series_a_dicom_seg_cannot_reference_is_refused_before_segmenting(tmp_path):
    series(tmp_path / "ct")
    for path in (tmp_path / "ct").iterdir():  # as some anonymisers leave a series: no frame of reference
        ds = pydicom.dcmread(path)
        del ds.FrameOfReferenceUID
        ds.save_as(path)
    with pytest.raises(ExportError, match="no FrameOfReferenceUID"):
        check_dicom_seg_output(tmp_path / "ct", tmp_path / "out.nii.gz")
    assert not (tmp_path / "out.seg.dcm").exists()
