"""Manifest reading and the clear errors a user gets for a collection that can't be used."""

import json

import nibabel as nib
import numpy as np
import pytest

from fewsam_jax.fewshot.collection import ManifestError, load_collection, load_support_item, save_collection


def write_nifti(path, array, affine=np.eye(4)):
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path.name


@pytest.fixture
def manifest(tmp_path):
    labels = np.zeros((8, 9, 6), np.uint8)
    labels[2:5, 3:6, 1:4] = 1
    write_nifti(tmp_path / "a.nii.gz", np.random.default_rng(0).random((8, 9, 6)).astype(np.float32))
    write_nifti(tmp_path / "a_seg.nii.gz", labels)
    raw = {"classes": {"1": "organ"}, "axis": 2,
           "support": [{"image": "a.nii.gz", "labels": "a_seg.nii.gz", "slices": [1, 2, 5]}]}
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(raw))
    return path, raw


def rewrite(path, raw):
    path.write_text(json.dumps(raw))
    return path


def test_round_trip(manifest, tmp_path):
    path, _ = manifest
    collection = load_collection(path)
    assert collection.class_ids == (1,) and collection.num_slices == 3
    again = load_collection(save_collection(collection, tmp_path / "sub" / "copy.json"))
    assert again == collection
    _, label_slices = load_support_item(collection.support[0], collection.axis)
    assert label_slices.shape == (3, 9, 8)
    assert label_slices[2].max() == 0  # slice 5 is a labelled "none of the classes" slice


def test_missing_file_is_named(manifest):
    path, raw = manifest
    raw["support"][0]["labels"] = "nope.nii.gz"
    with pytest.raises(ManifestError, match=r"support\[0\]\.labels not found: .*nope\.nii\.gz"):
        load_collection(rewrite(path, raw))


def test_slice_out_of_range(manifest):
    path, raw = manifest
    raw["support"][0]["slices"] = [1, 6]
    item = load_collection(rewrite(path, raw)).support[0]
    with pytest.raises(ManifestError, match=r"a\.nii\.gz: slice indices \[6\] out of range 0\.\.5"):
        load_support_item(item, 2)


def test_label_grid_differs(manifest, tmp_path):
    path, raw = manifest
    raw["support"][0]["labels"] = write_nifti(tmp_path / "b_seg.nii.gz", np.zeros((8, 9, 7), np.uint8))
    item = load_collection(rewrite(path, raw)).support[0]
    with pytest.raises(ManifestError, match=r"label grid of .*b_seg\.nii\.gz .*differs"):
        load_support_item(item, 2)


@pytest.mark.parametrize("field, value, message", [
    ("support", [], "the collection is empty"),
    ("classes", {}, "at least one label id"),
    ("axis", 3, "'axis' must be 0, 1 or 2"),
])
def test_bad_fields(manifest, field, value, message):
    path, raw = manifest
    raw[field] = value
    with pytest.raises(ManifestError, match=message):
        load_collection(rewrite(path, raw))


def test_not_json(tmp_path):
    path = tmp_path / "m.json"
    path.write_text("{oops")
    with pytest.raises(ManifestError, match="m.json: not valid JSON"):
        load_collection(path)
