"""DICOM series reading: synthetic series written with pydicom, and the shared TotalSegmentator series."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from fewsam_jax.io import VolumeError, get_slices, load_volume, save_labels

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

AXIAL = (1, 0, 0, 0, 1, 0)
CORONAL = (1, 0, 0, 0, 0, -1)


def _write_slice(path, pixels, position, orientation, series_uid, slope=1.0, intercept=0.0, spacing=(0.7, 0.9)):
    """Writes one int16 CT slice; ``pixels`` is (rows, columns)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.SeriesInstanceUID = series_uid
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = list(spacing)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = pixels.astype(np.int16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def _series(folder, n=6, orientation=AXIAL, step=2.5, slope=1.0, intercept=0.0, shape=(4, 5), uid=None, seed=0):
    """Writes an n-slice series under shuffled file names; returns (pixels (n, rows, cols), positions)."""
    folder.mkdir(exist_ok=True)
    uid = uid or generate_uid()
    rng = np.random.default_rng(seed)
    pixels = rng.integers(-500, 500, size=(n, *shape))
    normal = np.cross(orientation[:3], orientation[3:])
    positions = [np.array([-20.0, 30.0, 40.0]) + k * step * normal for k in range(n)]
    for name, k in zip(rng.permutation(n), range(n)):
        _write_slice(folder / f"im{name:03d}", pixels[k], positions[k], orientation, uid, slope, intercept)
    return pixels, positions


def _ras_of_pixel(position, orientation, r, c, spacing=(0.7, 0.9)):
    lps = np.asarray(position) + c * spacing[1] * np.asarray(orientation[:3]) + r * spacing[0] * np.asarray(orientation[3:])
    return lps * np.array([-1, -1, 1])


@pytest.mark.parametrize("orientation", [AXIAL, CORONAL], ids=["axial", "coronal"])
def test_shuffled_series_geometry_and_rescale(tmp_path, orientation):
    pixels, positions = _series(tmp_path / "s", orientation=orientation, slope=2.0, intercept=-1024.0)
    vol = load_volume(tmp_path / "s")
    assert vol.array.dtype == np.float32 and vol.source_shape == (5, 4, 6)
    assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
    np.testing.assert_allclose(sorted(vol.spacing), sorted((0.7, 0.9, 2.5)), rtol=1e-6)
    inv = np.linalg.inv(vol.affine)
    for k, r, c in [(0, 0, 0), (5, 3, 4), (2, 1, 3), (4, 3, 0)]:
        ijk = inv @ np.append(_ras_of_pixel(positions[k], orientation, r, c), 1.0)
        np.testing.assert_allclose(ijk[:3], np.round(ijk[:3]), atol=1e-6)
        assert vol.array[tuple(np.round(ijk[:3]).astype(int))] == pixels[k, r, c] * 2.0 - 1024.0
    if orientation == AXIAL:  # slices appear as the scanner stored them, inferior first
        np.testing.assert_array_equal(get_slices(vol, 2), pixels * 2.0 - 1024.0)


def test_single_file_loads_its_series_and_labels_round_trip(tmp_path):
    pixels, _ = _series(tmp_path / "s", n=3)
    vol = load_volume(next((tmp_path / "s").iterdir()))
    assert vol.shape == (5, 4, 3)
    labels = (np.arange(vol.array.size).reshape(vol.shape) % 3).astype(np.uint8)
    img = nib.load(save_labels(labels, vol, tmp_path / "seg.nii.gz"))
    np.testing.assert_allclose(img.affine, vol.source_affine, atol=1e-4)  # float32 in the header
    np.testing.assert_array_equal(np.asarray(img.dataobj), vol.to_source(labels))


def test_mixed_series_error(tmp_path):
    _series(tmp_path / "s", n=3, uid="1.2.3.4")
    _write_slice(tmp_path / "s" / "other", np.zeros((4, 5)), (0, 0, 0), AXIAL, "1.2.3.5")
    with pytest.raises(VolumeError, match=r"s: 2 DICOM series in one folder: 1\.2\.3\.4 \(3 files\), 1\.2\.3\.5 \(1 files\)"):
        load_volume(tmp_path / "s")
    assert load_volume(tmp_path / "s" / "other").shape == (5, 4, 1)


def test_missing_slice_error(tmp_path):
    _series(tmp_path / "s", n=5, step=2.0)
    by_z = sorted((tmp_path / "s").iterdir(), key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2]))
    by_z[2].unlink()
    with pytest.raises(VolumeError, match=r"s: non-uniform slice spacing, gap of 4\.000 mm .* where 2\.000 mm was expected: missing slice"):
        load_volume(tmp_path / "s")


def test_duplicate_position_error(tmp_path):
    _series(tmp_path / "s", n=3, uid="1.2.3")
    _write_slice(tmp_path / "s" / "dup", np.zeros((4, 5)), (-20, 30, 40), AXIAL, "1.2.3")
    with pytest.raises(VolumeError, match="two slices at the same position"):
        load_volume(tmp_path / "s")


def test_no_dicom_files_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hello")
    with pytest.raises(VolumeError, match="empty: no DICOM image files"):
        load_volume(tmp_path / "empty")


@pytest.mark.shared_data
@pytest.mark.skipif(not (SHARED / "totalseg_ct").is_dir(), reason=f"shared data folder {SHARED} is absent")
def test_shared_series_matches_its_label_file():
    vol = load_volume(SHARED / "totalseg_ct" / "dicom_series")
    seg = load_volume(SHARED / "totalseg_ct" / "dicom_series_seg.nii.gz")
    assert vol.shape == seg.shape == (512, 512, 20)
    np.testing.assert_allclose(vol.affine, seg.affine, atol=1e-3)
    np.testing.assert_allclose(vol.spacing, (0.9765625, 0.9765625, 2.0))
    assert vol.array.min() == -1024.0  # RescaleIntercept applied
    # labels sit on soft tissue: liver (TotalSegmentator class 5) is ~ +90 HU, far from air
    assert 40 < vol.array[seg.array == 5].mean() < 150
