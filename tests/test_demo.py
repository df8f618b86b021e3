"""``fewsam_jax.demo.mni_with_labels``, the embedded data the demo and the notebooks write: never over a user's file."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from fewsam_jax.demo import mni_with_labels
from fewsam_jax.outputs import OutputExistsError
from fewsam_jax.provenance import label_mark, written_by_library


def test_the_template_is_written_once_and_a_users_file_of_that_name_is_kept(tmp_path):
    image_path, label_path = mni_with_labels(tmp_path / "data")
    labels = np.asarray(nib.load(label_path).dataobj)
    assert nib.load(image_path).shape == labels.shape and set(np.unique(labels)) == {0, 1, 2, 3}
    stamps = [p.stat().st_mtime_ns for p in (image_path, label_path)]
    assert mni_with_labels(tmp_path / "data") == (image_path, label_path)  # a second run: the same files, kept
    assert [p.stat().st_mtime_ns for p in (image_path, label_path)] == stamps

    own = tmp_path / "mine"
    own.mkdir()
    (own / "mni152.nii.gz").write_bytes(b"my registered template")
    with pytest.raises(OutputExistsError, match=r"mni152.nii.gz exists; pass --overwrite \(overwrite=True\)"):
        mni_with_labels(own)
    assert sorted(p.name for p in own.iterdir()) == ["mni152.nii.gz"]  # nothing written, not even the labels
    assert (own / "mni152.nii.gz").read_bytes() == b"my registered template"
    mni_with_labels(own, overwrite=True)
    assert nib.load(own / "mni152.nii.gz").shape == labels.shape and written_by_library(own / "mni152.nii.gz")

    # a file an earlier version wrote (marked, unchanged, another image): replaced without overwrite
    older = nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4))
    older.header["descrip"] = label_mark(np.asarray(older.dataobj))
    nib.save(older, own / "mni152_labels.nii.gz")
    assert written_by_library(own / "mni152_labels.nii.gz")
    mni_with_labels(own)
    assert nib.load(own / "mni152_labels.nii.gz").shape == labels.shape
