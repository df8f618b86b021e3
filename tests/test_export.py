"""Label maps that open with names: ITK-SNAP and JSON label descriptions and 3D Slicer's .seg.nrrd, read back."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from fewsam_jax.export import (
    ExportError,
    class_colours,
    read_itksnap_labels,
    read_seg_nrrd,
    sidecar_paths,
    write_label_descriptions,
    write_seg_nrrd,
)
from fewsam_jax.io import load_volume

CLASSES = {1: "liver", 2: "spleen", 7: 'left "kidney"'}


def test_label_descriptions_read_back_with_names_and_colours(tmp_path):
    paths = write_label_descriptions(tmp_path / "case_001.nii.gz", CLASSES)
    assert paths == {"itksnap": tmp_path / "case_001.labels.txt", "json": tmp_path / "case_001.labels.json"}
    table = read_itksnap_labels(paths["itksnap"])
    colours = class_colours(CLASSES)
    assert table == {1: ("liver", colours[1]), 2: ("spleen", colours[2]), 7: ("left 'kidney'", colours[7])}
    assert len(set(colours.values())) == 3
    data = json.loads(paths["json"].read_text())
    assert data["background"] == 0
    assert [(row["id"], row["name"], tuple(row["color"])) for row in data["labels"]] == [
        (k, v, colours[k]) for k, v in CLASSES.items()]
    with pytest.raises(ExportError, match="class id 0"):
        write_label_descriptions(tmp_path / "x.nii.gz", {0: "background"})


def test_many_classes_get_distinct_colours():
    colours = class_colours(range(1, 40))
    assert len(set(colours.values())) == 39 and all(0 <= c <= 255 for rgb in colours.values() for c in rgb)


def test_sidecar_names():
    assert sidecar_paths("out/a.nii")["nrrd"].name == "a.seg.nrrd"
    assert sidecar_paths("out/a.b.png")["json"].name == "a.b.labels.json"


def test_seg_nrrd_round_trip_keeps_grid_names_and_colours(tmp_path):
    pytest.importorskip("nrrd")
    affine = np.array([[-0.8, 0, 0, 40.0], [0, 0, 1.5, -12.0], [0, 1.2, 0, 7.5], [0, 0, 0, 1]])  # LIA-ish
    image = np.zeros((6, 5, 4), np.float32)
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "img.nii.gz")
    volume = load_volume(tmp_path / "img.nii.gz")
    labels = np.zeros(volume.shape, np.uint8)
    labels[1:3, 1:4, 0:2] = 1
    labels[4, 0, 3] = 7
    out = write_seg_nrrd(labels, volume, tmp_path / "img.seg.nrrd", CLASSES)
    data, nrrd_affine, segments = read_seg_nrrd(out)
    np.testing.assert_allclose(nrrd_affine, affine, atol=1e-6)
    np.testing.assert_array_equal(data, volume.to_source(labels))  # the source grid, as the NIfTI labels
    colours = class_colours(CLASSES)
    assert segments == {k: (v, colours[k]) for k, v in CLASSES.items()}
    with pytest.raises(ExportError, match="not on the grid"):
        write_seg_nrrd(labels[:-1], volume, tmp_path / "bad.seg.nrrd", CLASSES)
    with pytest.raises(ExportError, match=r"bad\.seg\.nrrd: labels: a label map must hold integer ids"):
        write_seg_nrrd(labels * 0.5, volume, tmp_path / "bad.seg.nrrd", CLASSES)  # 3.5 would become 3
    assert not (tmp_path / "bad.seg.nrrd").exists()


@pytest.mark.parametrize("space, signs", [("LPS", (-1, -1, 1)), ("left-anterior-superior", (-1, 1, 1)),
                                          ("RAS", (1, 1, 1)), ("right-anterior-superior", (1, 1, 1))])
def test_seg_nrrd_in_any_anatomical_space_reads_to_ras(tmp_path, space, signs):
    """NRRD names its spaces long or short ("LPS"); each must flip the axes it says, not only the long LPS name."""
    nrrd = pytest.importorskip("nrrd")
    header = {"space": space, "space directions": np.diag([0.5, 0.7, 2.0]), "space origin": np.array([10.0, 20.0, 30.0])}
    nrrd.write(str(tmp_path / "a.seg.nrrd"), np.zeros((3, 4, 5), np.uint8), header, index_order="F")
    _, affine, _ = read_seg_nrrd(tmp_path / "a.seg.nrrd")
    np.testing.assert_allclose(affine[:3, 3], np.multiply(signs, (10.0, 20.0, 30.0)))
    np.testing.assert_allclose(affine[:3, :3], np.diag(np.multiply(signs, (0.5, 0.7, 2.0))))


def test_seg_nrrd_outside_what_is_read_is_an_error(tmp_path):
    nrrd = pytest.importorskip("nrrd")
    header = {"space": "scanner-xyz", "space directions": np.eye(3), "space origin": np.zeros(3)}
    nrrd.write(str(tmp_path / "scanner.seg.nrrd"), np.zeros((3, 4, 5), np.uint8), header, index_order="F")
    with pytest.raises(ValueError, match=r"scanner\.seg\.nrrd: NRRD space 'scanner-xyz': expected one of"):
        read_seg_nrrd(tmp_path / "scanner.seg.nrrd")
    header = {"space": "LPS", "space directions": np.vstack([np.full(3, np.nan), np.eye(3)]), "space origin": np.zeros(3),
              "kinds": ["list", "domain", "domain", "domain"]}
    nrrd.write(str(tmp_path / "layers.seg.nrrd"), np.zeros((2, 3, 4, 5), np.uint8), header, index_order="F")
    with pytest.raises(ValueError, match=r"layers\.seg\.nrrd: a label volume of shape \(2, 3, 4, 5\)"):
        read_seg_nrrd(tmp_path / "layers.seg.nrrd")


def test_seg_nrrd_warns_when_the_images_qform_and_sform_disagree(tmp_path, caplog):
    pytest.importorskip("nrrd")
    img = nib.Nifti1Image(np.zeros((3, 4, 5), np.float32), None)
    qform, sform = np.eye(4), np.eye(4)
    qform[:3, 3], sform[:3, 3] = (-5, -5, -5), (10, 20, 30)
    img.set_qform(qform, code=1)
    img.set_sform(sform, code=2)
    nib.save(img, tmp_path / "img.nii.gz")
    volume = load_volume(tmp_path / "img.nii.gz")
    with caplog.at_level("WARNING", logger="fewsam_jax.export"):
        write_seg_nrrd(np.zeros(volume.shape, np.uint8), volume, tmp_path / "img.seg.nrrd", CLASSES)
    assert "img.nii.gz's qform and sform place the image differently" in caplog.text
