"""Volume IO: NIfTI orientations round trip, arrays, 2D images, slicing, errors."""

import gzip
import os
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers import write_dicom_series
from PIL import Image

from fewsam_jax.io import (
    Volume,
    VolumeError,
    check_png_output,
    check_volume_header,
    from_array,
    get_slices,
    load_volume,
    save_labels,
    stack_slices,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _rot_z(deg):
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def _affine(m, origin):
    a = np.eye(4)
    a[:3, :3], a[:3, 3] = m, origin
    return a


AFFINES = {
    "RAS": _affine(np.diag([1.5, 2.0, 3.0]), [-10, 20, 5]),
    "LPS": _affine(np.diag([-1.5, -2.0, 3.0]), [10, -20, 5]),
    "LAS": _affine(np.diag([-0.8, 0.8, 2.5]), [100, -50, -30]),
    # voxel axes (0, 1, 2) -> world (S, R, P)
    "permuted": _affine(np.array([[0, 1.2, 0], [0, 0, -0.7], [2.0, 0, 0]]), [3, 4, 5]),
    # 20 degrees in-plane rotation of a permuted, flipped grid
    "oblique": _affine(_rot_z(20) @ np.array([[0, -1.1, 0], [0.9, 0, 0], [0, 0, 2.2]]), [-1, 2, -3]),
}


def _world_of(affine, ijk):
    return (affine @ np.append(np.asarray(ijk, float), 1.0))[:3]


@pytest.mark.parametrize("name", list(AFFINES))
def test_nifti_orientation_round_trip(tmp_path, name):
    src_affine = AFFINES[name]
    rng = np.random.default_rng(0)
    data = rng.normal(size=(5, 6, 7)).astype(np.float32) * 100
    src = tmp_path / f"img_{name}.nii.gz"
    nib.save(nib.Nifti1Image(data, src_affine), src)
    file_affine = nib.load(src).affine

    vol = load_volume(src)
    assert vol.source == str(src) and vol.source_shape == (5, 6, 7)
    np.testing.assert_array_equal(vol.source_affine, file_affine)
    assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
    canonical = nib.as_closest_canonical(nib.load(src))
    np.testing.assert_array_equal(vol.array, canonical.get_fdata(dtype=np.float32))
    np.testing.assert_allclose(vol.affine, canonical.affine, atol=1e-9)
    np.testing.assert_allclose(vol.spacing, nib.affines.voxel_sizes(vol.affine), rtol=1e-12)
    np.testing.assert_allclose(sorted(vol.spacing), sorted(nib.affines.voxel_sizes(file_affine)), rtol=1e-6)
    # every source voxel lands at the canonical voxel with the same world position
    inv = np.linalg.inv(vol.affine)
    for ijk in [(0, 0, 0), (4, 5, 6), (1, 3, 2), (4, 0, 6)]:
        c = np.round(_world_of(inv, _world_of(file_affine, ijk))).astype(int)
        assert vol.array[tuple(c)] == data[ijk]

    labels = (np.arange(vol.array.size).reshape(vol.shape) % 7).astype(np.int64)
    out = save_labels(labels, vol, tmp_path / "labels.nii.gz")
    written = nib.load(out)
    np.testing.assert_array_equal(written.affine, file_affine)
    assert written.get_data_dtype() == np.uint8 and written.shape == (5, 6, 7)
    np.testing.assert_array_equal(np.asarray(written.dataobj), vol.to_source(labels))
    # the label map reloads onto the same canonical grid
    again = load_volume(out)
    np.testing.assert_array_equal(again.array, labels)
    np.testing.assert_allclose(again.affine, vol.affine, atol=1e-9)
    assert again.array.dtype == np.uint8


def test_save_labels_int16_plain_nii_and_leaves_no_temp(tmp_path):
    vol = from_array(np.zeros((3, 4, 5), np.float32), affine=AFFINES["LPS"])
    labels = np.full(vol.shape, -3, np.int32)
    labels[0] = 300
    out = save_labels(labels, vol, tmp_path / "lab.nii")
    img = nib.load(out)
    assert img.get_data_dtype() == np.int16
    np.testing.assert_array_equal(np.asarray(img.dataobj), vol.to_source(labels))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lab.nii"]
    # float labels a little off whole numbers (scaled integers read back) are rounded, never truncated
    out = save_labels(np.full(vol.shape, 0.99608, np.float32), vol, tmp_path / "near.nii.gz")
    assert np.asarray(nib.load(out).dataobj).min() == 1


def _xforms(path):
    header = nib.load(path).header
    return header.get_qform(coded=True), header.get_sform(coded=True)


def _assert_same_xforms(a, b):
    for (matrix_a, code_a), (matrix_b, code_b) in zip(a, b):
        assert code_a == code_b
        assert (matrix_a is None) == (matrix_b is None)
        if matrix_a is not None:
            np.testing.assert_allclose(matrix_a, matrix_b, atol=1e-5)


def test_label_maps_keep_a_nifti_sources_qform_and_sform(tmp_path):
    """ITK-based viewers read the qform, nibabel the sform: a label map written with one matrix in both would land
    elsewhere than its image in one of them whenever the source's two fields disagree or are unset."""
    data = np.zeros((6, 7, 8), np.int16)
    data[2, 3, 4] = 100
    qform, sform = np.eye(4), np.diag([1.0, 1.0, 2.0, 1.0])
    qform[:3, 3], sform[:3, 3] = (-5, -5, -5), (10, 20, 30)
    disagree = nib.Nifti1Image(data, None)
    disagree.set_qform(qform, code=1)
    disagree.set_sform(sform, code=2)
    unset = nib.Nifti1Image(data, None)  # both codes 0: readers fall back to the voxel sizes
    unset.header.set_zooms((2.0, 3.0, 4.0))
    for name, img in (("disagree", disagree), ("unset", unset)):
        nib.save(img, tmp_path / f"{name}.nii.gz")
        vol = load_volume(tmp_path / f"{name}.nii.gz")
        out = save_labels((vol.array > 0).astype(np.uint8), vol, tmp_path / f"{name}_labels.nii.gz")
        _assert_same_xforms(_xforms(out), _xforms(tmp_path / f"{name}.nii.gz"))
        again = load_volume(out)
        np.testing.assert_allclose(again.source_affine, vol.source_affine, atol=1e-6)
        np.testing.assert_array_equal(again.array, vol.array > 0)

    # a volume derived on another grid (here: shifted) does not take the file's fields along
    import dataclasses

    from fewsam_jax.io import source_nifti

    vol = load_volume(tmp_path / "disagree.nii.gz")
    shifted = vol.source_affine + np.array([[0, 0, 0, 7.0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    header = source_nifti(np.zeros(vol.shape, np.uint8), dataclasses.replace(vol, source_affine=shifted)).header
    assert header.get_qform(coded=True)[1] == header.get_sform(coded=True)[1] == 1
    np.testing.assert_allclose(header.get_sform(), shifted, atol=1e-6)


def test_a_sheared_grid_leaves_the_qform_unset():
    """A qform cannot hold a shear (a gantry-tilted series): nibabel would store the nearest unsheared grid, up to
    centimetres off at the far corner of a CT; the label map carries the affine in its sform alone."""
    from fewsam_jax.io import source_nifti

    sheared = np.diag([0.7, 0.7, 2.5, 1.0])
    sheared[1, 2] = 2.5 * np.tan(np.radians(20))
    vol = from_array(np.zeros((4, 5, 6), np.float32), affine=sheared)
    header = source_nifti(np.zeros(vol.shape, np.uint8), vol).header
    assert header.get_qform(coded=True)[1] == 0
    sform, code = header.get_sform(coded=True)
    assert code == 1
    np.testing.assert_allclose(sform, sheared, atol=1e-6)
    header = source_nifti(np.zeros(vol.shape, np.uint8), from_array(np.zeros((4, 5, 6)), affine=AFFINES["LPS"])).header
    assert header.get_qform(coded=True)[1] == 1  # an unsheared grid keeps both


def test_save_labels_is_atomic(tmp_path, monkeypatch):
    vol = from_array(np.zeros((3, 4, 5), np.float32))
    final = tmp_path / "lab.nii.gz"
    final.write_bytes(b"previous")

    def killed(img, filename):
        Path(filename).write_bytes(b"half-written")
        raise KeyboardInterrupt

    monkeypatch.setattr(nib, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        save_labels(np.ones(vol.shape, np.uint8), vol, final, overwrite=True)
    assert final.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lab.nii.gz"]


def test_from_array():
    a = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    vol = from_array(a, spacing=(0.5, 1, 2))
    assert vol.array.dtype == np.float32 and vol.spacing == (0.5, 1.0, 2.0) and vol.source is None
    np.testing.assert_array_equal(vol.array, a)
    np.testing.assert_array_equal(vol.affine, np.diag([0.5, 1, 2, 1]))

    lps = from_array(a, affine=np.diag([-0.5, -1, 2, 1]))
    np.testing.assert_array_equal(lps.array, a[::-1, ::-1])
    np.testing.assert_array_equal(lps.to_source(lps.array), a)
    assert lps.spacing == (0.5, 1.0, 2.0)

    assert from_array(np.zeros((2, 3, 4), bool)).array.dtype == np.uint8
    assert from_array(np.zeros((2, 3, 4), np.int16)).array.dtype == np.int16
    with pytest.raises(VolumeError, match=r"spacing \(1\.0, 1\.0, 1\.0\) disagrees"):
        from_array(a, spacing=(1, 1, 1), affine=np.diag([2.0, 1, 1, 1]))


def test_2d_image_convention_png_and_array(tmp_path):
    h, w = 5, 8
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    path = tmp_path / "img.png"
    Image.fromarray(rgb).save(path)
    vol = load_volume(path)
    grey = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    assert vol.shape == (w, h, 1) and vol.array.dtype == np.float32
    np.testing.assert_allclose(get_slices(vol, axis=2)[0], grey, rtol=1e-6)
    # row 0 of the image is anterior, column 0 is the patient's right (radiological axial view)
    top_left = vol.affine @ np.array([w - 1, h - 1, 0, 1.0])
    bottom_right = vol.affine @ np.array([0, 0, 0, 1.0])
    assert top_left[1] > bottom_right[1] and top_left[0] > bottom_right[0]

    np.testing.assert_array_equal(get_slices(from_array(grey), 2)[0], grey)

    labels = stack_slices((grey > 128).astype(np.uint8)[None] * 3, axis=2)
    out = save_labels(labels, vol, tmp_path / "mask.png")
    np.testing.assert_array_equal(np.asarray(Image.open(out)), (grey > 128) * 3)
    nii = nib.load(save_labels(labels, vol, tmp_path / "mask.nii.gz"))
    assert nii.shape == (w, h, 1)
    np.testing.assert_array_equal(np.asarray(nii.dataobj)[:, :, 0], ((grey > 128) * 3).T)


def test_grey_jpeg_and_16bit_png(tmp_path):
    grey = np.tile(np.arange(0, 240, 10, dtype=np.uint8), (6, 1))
    jpg = tmp_path / "g.jpeg"
    Image.fromarray(grey).save(jpg, quality=95)
    np.testing.assert_array_equal(get_slices(load_volume(jpg))[0], np.asarray(Image.open(jpg)))

    deep = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000).astype(np.uint16)
    png16 = tmp_path / "deep.png"
    Image.fromarray(deep).save(png16)
    np.testing.assert_array_equal(get_slices(load_volume(png16))[0], deep.astype(np.float32))


def test_npy(tmp_path):
    a = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    np.save(tmp_path / "a.npy", a)
    np.testing.assert_array_equal(load_volume(tmp_path / "a.npy").array, a)


@pytest.mark.parametrize("axis", [0, 1, 2, -1, -3])
def test_slices_round_trip(axis):
    a = np.random.default_rng(2).normal(size=(3, 4, 5)).astype(np.float32)
    s = get_slices(a, axis)
    n = a.shape[axis]
    rest = [d for i, d in enumerate(a.shape) if i != axis % 3]
    assert s.shape == (n, rest[1], rest[0]) and s.flags.c_contiguous
    np.testing.assert_array_equal(stack_slices(s, axis), a)


def test_slice_display_orientation():
    a = np.zeros((4, 5, 6))
    a[3, 4, 2] = 1  # right, anterior: axial top-left
    a[3, 1, 5] = 2  # right, superior: coronal top-left
    a[2, 4, 5] = 3  # anterior, superior: sagittal top-left
    assert get_slices(a, 2)[2, 0, 0] == 1
    assert get_slices(a, 1)[1, 0, 0] == 2
    assert get_slices(a, 0)[2, 0, 0] == 3


# ---- errors -------------------------------------------------------------------------------


def _nifti(path, data, affine=np.eye(4)):
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def test_missing_file(tmp_path):
    with pytest.raises(VolumeError, match="nope.nii.gz: no such file"):
        load_volume(tmp_path / "nope.nii.gz")


def test_truncated_and_garbage_nifti(tmp_path):
    p = _nifti(tmp_path / "trunc.nii.gz", np.ones((20, 20, 20), np.float32))
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(VolumeError, match="trunc.nii.gz: cannot read NIfTI"):
        load_volume(p)
    g = tmp_path / "garbage.nii"
    g.write_bytes(b"not a nifti header" * 3)
    with pytest.raises(VolumeError, match="garbage.nii: cannot read NIfTI"):
        load_volume(g)


def _header_only(path, shape, dtype=np.float32, extra=b""):
    """A NIfTI header declaring ``shape`` followed by ``extra`` data bytes (none by default)."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header["vox_offset"] = 352
    raw = header.binaryblock + b"\0" * 4 + extra
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


def test_nifti_header_size_checked_before_allocating(tmp_path):
    """A tiny file whose header declares a huge volume fails at once, naming the sizes, without
    allocating (it used to allocate 1.3 GB, or fail with an empty MemoryError for 30000^3)."""
    tracemalloc.start()
    try:
        small = _header_only(tmp_path / "small.nii.gz", (700, 700, 700))
        assert small.stat().st_size < 120
        with pytest.raises(VolumeError, match=r"small\.nii\.gz: cannot read NIfTI file: the header declares 700x700x700 "
                                              r"voxels of float32 \(1\.3 GiB of data after a 352-byte header\), but a "
                                              r"\d+-byte gzip file cannot hold more than"):
            load_volume(small)
        huge = _header_only(tmp_path / "huge.nii", (30000, 30000, 30000))
        with pytest.raises(VolumeError, match=r"huge\.nii: cannot read NIfTI file: the header declares 30000x30000x30000 "
                                              r"voxels of float32 \(98\.2 TiB .*\), but the file holds only 352 bytes"):
            load_volume(huge)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20


def test_npy_header_size_checked_before_allocating(tmp_path):
    p = tmp_path / "lying.npy"
    with open(p, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (3000, 3000, 300)})
    tracemalloc.start()
    try:
        with pytest.raises(VolumeError, match=r"lying\.npy: cannot read \.npy file: the header declares 3000x3000x300 "
                                              r"values of float32 \(10\.1 GiB\), but the file holds only 128 bytes"):
            load_volume(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20  # np.load alone allocated the 10 GiB first


def test_nifti_gz_shorter_than_its_header_declares(tmp_path):
    # within deflate's ratio, so the stream is counted (the ISIZE trailer says too little): one slice missing
    p = _header_only(tmp_path / "short.nii.gz", (20, 20, 5), np.int16,
                     extra=np.random.default_rng(0).integers(0, 9, 20 * 20 * 4).astype(np.int16).tobytes())
    with pytest.raises(VolumeError, match=r"short\.nii\.gz: cannot read NIfTI file: the header declares 20x20x5 voxels of "
                                          r"int16 .*but the file decompresses to only 3552 bytes"):
        load_volume(p)
    # two gzip members (ISIZE covers only the last one): the stream count accepts it
    full = np.arange(20 * 20 * 5, dtype=np.int16).reshape(20, 20, 5)
    plain = _header_only(tmp_path / "x.nii", full.shape, np.int16, extra=full.tobytes(order="F"))
    whole = plain.read_bytes()
    two = tmp_path / "two.nii.gz"
    two.write_bytes(gzip.compress(whole[:1000]) + gzip.compress(whole[1000:]))
    vol = load_volume(two)
    np.testing.assert_array_equal(vol.to_source(vol.array), full)
    np.testing.assert_array_equal(vol.array, load_volume(plain).array)


def test_non_finite_voxels(tmp_path):
    data = np.zeros((3, 3, 3), np.float32)
    data[1, 1, 1] = np.nan
    data[0, 0, 0] = np.inf
    with pytest.raises(VolumeError, match="nan.nii.gz: 2 voxels are NaN or Inf"):
        load_volume(_nifti(tmp_path / "nan.nii.gz", data))
    with pytest.raises(VolumeError, match="array: 2 voxels are NaN or Inf"):
        from_array(data)
    with pytest.raises(VolumeError, match="array: intensities beyond float32's range"):
        from_array(np.full((3, 3, 3), 1e39))
    with pytest.raises(VolumeError, match="big.nii.gz: intensities beyond float32's range"):
        load_volume(_nifti(tmp_path / "big.nii.gz", np.full((3, 3, 3), 1e39)))


def test_4d(tmp_path):
    with pytest.raises(VolumeError, match=r"t4.nii.gz: 4D image of shape \(3, 3, 3, 2\)"):
        load_volume(_nifti(tmp_path / "t4.nii.gz", np.zeros((3, 3, 3, 2), np.float32)))
    assert load_volume(_nifti(tmp_path / "t1.nii.gz", np.zeros((3, 3, 3, 1), np.float32))).shape == (3, 3, 3)


def test_empty_and_bad_arrays(tmp_path):
    with pytest.raises(VolumeError, match=r"array: empty image \(shape \(0, 3, 3\)\)"):
        from_array(np.zeros((0, 3, 3)))
    np.save(tmp_path / "empty.npy", np.zeros((3, 0, 3)))
    with pytest.raises(VolumeError, match="empty.npy: empty image"):
        load_volume(tmp_path / "empty.npy")
    with pytest.raises(VolumeError, match="1D array"):
        from_array(np.zeros(3))
    with pytest.raises(VolumeError, match="affine must be"):
        from_array(np.zeros((2, 2, 2)), affine=np.zeros((4, 4)))


def test_unsupported_extension(tmp_path):
    p = tmp_path / "scan.mha"
    p.write_bytes(b"x")
    with pytest.raises(VolumeError, match=r"scan.mha: unsupported file type; expected \.nii"):
        load_volume(p)


def test_unreadable_image(tmp_path):
    p = tmp_path / "broken.png"
    p.write_bytes(b"\x89PNG not really")
    with pytest.raises(VolumeError, match="broken.png: cannot read image"):
        load_volume(p)


@pytest.mark.parametrize("axis", [3, -4, 1.0])
def test_axis_out_of_range(axis):
    with pytest.raises(ValueError, match=f"axis={axis!r} is out of range"):
        get_slices(np.zeros((2, 2, 2)), axis)
    with pytest.raises(ValueError, match=f"axis={axis!r} is out of range"):
        stack_slices(np.zeros((2, 2, 2)), axis)


def test_save_labels_errors(tmp_path):
    vol = from_array(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(VolumeError, match=r"bad.nii.gz: labels of shape \(3, 3, 4\) do not match"):
        save_labels(np.zeros((3, 3, 4), np.uint8), vol, tmp_path / "bad.nii.gz")
    with pytest.raises(VolumeError, match="frac.nii.gz: labels: a label map must hold integer ids"):
        save_labels(np.full(vol.shape, 0.5), vol, tmp_path / "frac.nii.gz")
    with pytest.raises(VolumeError, match="big.nii.gz: label values 70000..70000 do not fit"):
        save_labels(np.full(vol.shape, 70000), vol, tmp_path / "big.nii.gz")
    with pytest.raises(VolumeError, match=r"lab.mha: unsupported output type"):
        save_labels(np.zeros(vol.shape, np.uint8), vol, tmp_path / "lab.mha")
    with pytest.raises(VolumeError, match="does not exist"):
        save_labels(np.zeros(vol.shape, np.uint8), vol, tmp_path / "no" / "lab.nii.gz")
    with pytest.raises(VolumeError, match="lab.png: PNG output needs a one-slice volume"):
        save_labels(np.zeros(vol.shape, np.uint8), vol, tmp_path / "lab.png")
    assert list(tmp_path.iterdir()) == []


def test_headers_are_checked_as_load_volume_checks_the_data(tmp_path):
    """check_volume_header refuses, from headers alone, what load_volume would (a cohort calls it on every case
    before computing), and lets a good volume of every kind through."""
    nib.save(nib.Nifti1Image(np.zeros((4, 3, 2), np.float32), np.eye(4)), tmp_path / "ok.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((4, 3, 2, 1), np.float32), np.eye(4)), tmp_path / "ok4d.nii")
    np.save(tmp_path / "ok.npy", np.zeros((4, 3, 2), np.float32))
    Image.fromarray(np.zeros((3, 4), np.uint8)).save(tmp_path / "ok.png")
    write_dicom_series(tmp_path / "series", np.zeros((3, 4, 5), np.int16))
    one_file = f"series/{sorted(os.listdir(tmp_path / 'series'))[0]}"  # stands for its series
    for name in ("ok.nii.gz", "ok4d.nii", "ok.npy", "ok.png", "series", one_file):
        check_volume_header(tmp_path / name)
        load_volume(tmp_path / name)
    nib.save(nib.Nifti1Image(np.zeros((4, 3, 2, 2), np.float32), np.eye(4)), tmp_path / "two.nii.gz")
    np.save(tmp_path / "flat.npy", np.zeros(5, np.float32))
    (tmp_path / "cut.nii.gz").write_bytes((tmp_path / "ok.nii.gz").read_bytes()[:60])
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "scan.mha").write_bytes(b"x")
    noise = np.random.default_rng(0).normal(size=(24, 20, 16)).astype(np.float32)  # barely compresses
    nib.save(nib.Nifti1Image(noise, np.eye(4)), tmp_path / "whole.nii.gz")
    (tmp_path / "short.nii.gz").write_bytes((tmp_path / "whole.nii.gz").read_bytes()[:20_000])  # a cut download
    for name, message in (("two.nii.gz", "4D image of shape (4, 3, 2, 2)"), ("flat.npy", "1D array"),
                          ("short.nii.gz", "cannot read NIfTI file: the header declares 24x20x16 voxels"),
                          ("cut.nii.gz", "cannot read NIfTI file"), ("broken.png", "cannot read image"),
                          ("scan.mha", "unsupported file type"), ("missing.nii.gz", "no such file")):
        with pytest.raises(VolumeError, match=f"{name}: {message}".replace("(", r"\(").replace(")", r"\)")):
            check_volume_header(tmp_path / name)


def test_png_output_of_a_dicom_series_is_refused_before_segmenting(tmp_path):
    write_dicom_series(tmp_path / "series", np.zeros((3, 4, 5), np.int16))
    with pytest.raises(VolumeError, match=r"out.png: PNG output needs a one-slice volume, but .*series has 3 slices"):
        check_png_output(tmp_path / "series", tmp_path / "out.png")
    write_dicom_series(tmp_path / "one", np.zeros((1, 4, 5), np.int16))
    check_png_output(tmp_path / "one", tmp_path / "out.png")  # one slice: a PNG holds it


# ---- shared data --------------------------------------------------------------------------


@pytest.mark.shared_data
@pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared data folder {SHARED} is absent")
def test_shared_nifti_and_images():
    ct = load_volume(SHARED / "totalseg_ct" / "ct_small_3mm.nii.gz")
    seg = load_volume(SHARED / "totalseg_ct" / "ct_small_3mm_seg.nii.gz")
    assert ct.shape == seg.shape == (122, 101, 30) and ct.spacing == (3.0, 3.0, 3.0)
    np.testing.assert_allclose(ct.affine, seg.affine, atol=1e-4)
    assert np.issubdtype(seg.array.dtype, np.integer)
    xray = load_volume(SHARED / "cxr_lungs" / "1.jpg")
    assert xray.shape == (512, 512, 1)
    png = load_volume(SHARED / "ct_slices_2d" / "images" / "amos_0004_75.png")
    assert png.shape[2] == 1 and isinstance(png, Volume)
