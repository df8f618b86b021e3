"""DICOM series reading: synthetic series written with pydicom, and the shared TotalSegmentator series."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from helpers import write_dicom_slice
from pydicom.uid import generate_uid

from fewsam_jax.io import VolumeError, get_slices, load_volume, save_labels

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"

AXIAL = (1, 0, 0, 0, 1, 0)
CORONAL = (1, 0, 0, 0, 0, -1)


def _series(folder, n=6, orientation=AXIAL, step=2.5, slope=1.0, intercept=0.0, shape=(4, 5), uid=None, seed=0,
            prefix="im", start=0.0, **tags):
    """Writes an n-slice series under shuffled file names; returns (pixels (n, rows, cols), positions).
    ``uid=""`` writes no SeriesInstanceUID."""
    folder.mkdir(exist_ok=True)
    uid = (uid or generate_uid()) if uid != "" else None
    rng = np.random.default_rng(seed)
    pixels = rng.integers(-500, 500, size=(n, *shape))
    normal = np.cross(orientation[:3], orientation[3:])
    positions = [np.array([-20.0, 30.0, 40.0]) + (start + k * step) * normal for k in range(n)]
    for name, k in zip(rng.permutation(n), range(n)):
        write_dicom_slice(folder / f"{prefix}{name:03d}", pixels[k], positions[k], orientation, uid, slope, intercept,
                     **{key: value(k) if callable(value) else value for key, value in tags.items()})
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
    write_dicom_slice(tmp_path / "s" / "other", np.zeros((4, 5)), (0, 0, 0), AXIAL, "1.2.3.5")
    with pytest.raises(VolumeError, match=r"s: 2 DICOM series in one folder: \[1\] SeriesInstanceUID 1\.2\.3\.4, axial: "
                                          r"3 files, e\.g\. im000; \[2\] SeriesInstanceUID 1\.2\.3\.5, axial: 1 file, "
                                          r"e\.g\. other\. .*pass one of its files"):
        load_volume(tmp_path / "s")
    assert load_volume(tmp_path / "s" / "other").shape == (5, 4, 1)


def test_missing_slice_error(tmp_path):
    _series(tmp_path / "s", n=5, step=2.0)
    by_z = sorted((tmp_path / "s").iterdir(), key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2]))
    by_z[2].unlink()
    with pytest.raises(VolumeError, match=r"s: non-uniform slice spacing, gap of 4\.000 mm .* where 2\.000 mm was expected: missing slice"):
        load_volume(tmp_path / "s")


def test_pixel_spacing_that_changes_within_the_series_is_an_error(tmp_path):
    """Only the first slice's PixelSpacing builds the grid: slices with another would get labels at the wrong scale."""
    _series(tmp_path / "s", n=5, spacing=lambda k: (0.7, 0.9) if k < 2 else (1.4, 1.8))
    with pytest.raises(VolumeError, match=r"PixelSpacing \[1\.4, 1\.8\] differs from the first slice's \[0\.7, 0\.9\]"):
        load_volume(tmp_path / "s")
    _series(tmp_path / "none", n=3, spacing=())
    with pytest.raises(VolumeError, match=r"no PixelSpacing; expected a CT/MR image series"):
        load_volume(tmp_path / "none")
    _series(tmp_path / "one", n=3, spacing=(0.7,))
    with pytest.raises(VolumeError, match=r"PixelSpacing \[0\.7\]: expected two positive numbers \(row, column\)"):
        load_volume(tmp_path / "one")


def test_slices_off_one_line_are_an_error_and_a_tilted_line_is_a_grid(tmp_path):
    """Positions must lie on one line (the grid's slice axis); a line slanted against the normal, as from a tilted
    gantry, is a regular (sheared) grid."""
    (tmp_path / "zig").mkdir()
    for k, x in enumerate((0, 10, 0, 10, 0)):  # spaced evenly along the normal, zig-zagging in x
        write_dicom_slice(tmp_path / "zig" / f"im{k}", np.zeros((4, 5)), (-20.0 + x, 30.0, 40.0 + 2.5 * k), AXIAL,
                          "1.2.3")
    with pytest.raises(VolumeError, match=r"im1: ImagePositionPatient .* lies .* mm off the line through the series"):
        load_volume(tmp_path / "zig")
    (tmp_path / "tilt").mkdir()
    for k in range(5):  # each slice 0.9 mm further along y: a 20-degree tilt of a 2.5 mm step
        write_dicom_slice(tmp_path / "tilt" / f"im{k}", np.zeros((4, 5)), (-20.0, 30.0 + 0.91 * k, 40.0 + 2.5 * k),
                          AXIAL, "1.2.4")
    vol = load_volume(tmp_path / "tilt")
    np.testing.assert_allclose(vol.source_affine[:3, 2], [0.0, -0.91, 2.5], atol=1e-6)  # RAS: y flips sign


def test_duplicate_position_error(tmp_path):
    _series(tmp_path / "s", n=3, uid="1.2.3")
    write_dicom_slice(tmp_path / "s" / "dup", np.zeros((4, 5)), (-20, 30, 40), AXIAL, "1.2.3")
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


# ------------------------------------------------ series without SeriesInstanceUID (issue #11)
def test_series_without_uid_split_by_series_number(tmp_path):
    """Two anonymised series (no UID) at the same positions were merged into one volume."""
    first, _ = _series(tmp_path / "s", n=4, uid="", prefix="a", SeriesNumber=2)
    second, _ = _series(tmp_path / "s", n=3, uid="", prefix="b", seed=1, SeriesNumber=5)
    with pytest.raises(VolumeError, match=r"s: 2 DICOM series in one folder: \[1\] no SeriesInstanceUID, SeriesNumber 2, "
                                          r"axial: 4 files, e\.g\. a000; \[2\] no SeriesInstanceUID, SeriesNumber 5, "
                                          r"axial: 3 files, e\.g\. b000\. Expected one series per folder; to read one "
                                          r"of them pass one of its files, e\.g\. .*s/a000"):
        load_volume(tmp_path / "s")
    vol = load_volume(tmp_path / "s" / "b001")  # one of its files picks a series
    assert vol.shape == (5, 4, 3)
    np.testing.assert_array_equal(get_slices(vol, 2), second)
    np.testing.assert_array_equal(get_slices(load_volume(tmp_path / "s" / "a002"), 2), first)


def test_series_without_uid_split_by_orientation_and_frame(tmp_path):
    _series(tmp_path / "s", n=3, uid="", prefix="ax")
    _series(tmp_path / "s", n=2, uid="", prefix="co", orientation=CORONAL)
    with pytest.raises(VolumeError, match=r"2 DICOM series in one folder: \[1\] no SeriesInstanceUID, axial: 3 files.*"
                                          r"\[2\] no SeriesInstanceUID, coronal: 2 files"):
        load_volume(tmp_path / "s")
    assert load_volume(tmp_path / "s" / "co000").source_shape == (5, 4, 2)
    _series(tmp_path / "f", n=3, uid="", prefix="a", FrameOfReferenceUID="1.9.1")
    _series(tmp_path / "f", n=3, uid="", prefix="b", start=10.0, FrameOfReferenceUID="1.9.2")
    with pytest.raises(VolumeError, match=r"FrameOfReferenceUID 1\.9\.1, axial: 3 files.*FrameOfReferenceUID 1\.9\.2"):
        load_volume(tmp_path / "f")


def test_acquisitions_split_only_when_they_overlap(tmp_path):
    # two acquisitions of the same slab (same positions): two volumes
    _series(tmp_path / "s", n=3, uid="", prefix="a", AcquisitionNumber=1)
    _series(tmp_path / "s", n=3, uid="", prefix="b", seed=1, AcquisitionNumber=2)
    with pytest.raises(VolumeError, match=r"AcquisitionNumber 1, axial: 3 files.*AcquisitionNumber 2, axial: 3 files"):
        load_volume(tmp_path / "s")
    assert load_volume(tmp_path / "s" / "b000").shape == (5, 4, 3)
    # sequential-mode CT: one acquisition number per slice, distinct positions: ONE volume
    pixels, _ = _series(tmp_path / "seq", n=5, uid="", AcquisitionNumber=lambda k: k + 1)
    np.testing.assert_array_equal(get_slices(load_volume(tmp_path / "seq"), 2), pixels)


@pytest.mark.shared_data
@pytest.mark.skipif(not (SHARED / "totalseg_ct").is_dir(), reason=f"shared data folder {SHARED} is absent")
def test_shared_series_has_no_uid_and_is_not_merged_with_another(tmp_path):
    """The shared series carries no SeriesInstanceUID; another anonymised series beside it is not stacked in."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    for f in sorted((SHARED / "totalseg_ct" / "dicom_series").iterdir()):
        (folder / f.name).symlink_to(f)  # read in place
    assert not pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True).get("SeriesInstanceUID")  # empty
    _series(folder, n=2, uid="", prefix="zz", orientation=CORONAL, shape=(512, 512))
    with pytest.raises(VolumeError, match=r"mixed: 2 DICOM series in one folder: \[1\] no SeriesInstanceUID, .*axial: "
                                          r"20 files.*\[2\] no SeriesInstanceUID, .*coronal: 2 files"):
        load_volume(folder)
    first = min(folder.glob("CT.*"))
    assert load_volume(first).shape == (512, 512, 20)
