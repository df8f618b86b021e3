"""Medical image IO: NIfTI, DICOM series, NumPy arrays and 2D PNG/JPEG as one :class:`Volume`.

Conventions
-----------
* ``Volume.array`` is (X, Y, Z) in canonical RAS+ voxel order: index x grows toward the
  patient's Right, y toward Anterior, z toward Superior (nibabel's "closest canonical";
  oblique grids keep their obliquity in ``Volume.affine``, only axes are permuted/flipped).
* The source grid (the file's own voxel order and affine) is remembered, so
  :func:`save_labels` writes label maps that overlay the source image exactly.
* 2D slices (:func:`get_slices`) are shown in the radiological display convention: for a
  slice along ``axis`` the two remaining canonical axes (a, b), a < b, become
  ``rows = b reversed`` and ``columns = a reversed``. Axial (axis 2): anterior at the top,
  patient's right on the image's left. Coronal (1): superior at the top, right on the left.
  Sagittal (0): superior at the top, anterior on the left. For a standard axial DICOM
  series, ``get_slices(vol, 2)[k]`` equals the k-th slice's ``pixel_array`` (inferior first).
* 2D images (PNG/JPEG, or 2D arrays) are read like a single axial DICOM slice with 1 mm
  pixels: columns run toward the patient's left, rows toward posterior, so
  ``get_slices(vol, 2)[0]`` is the image exactly as a viewer shows it.
* Intensities: NIfTI/NumPy data stored as integers without scaling keep their integer
  dtype (label maps stay integer); everything else is float32 (DICOM: Hounsfield units
  after RescaleSlope/Intercept; RGB images: luminance 0.299 R + 0.587 G + 0.114 B).
* A 4D input whose extra trailing dimensions are all 1 is squeezed to 3D; other 4D
  inputs are rejected.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import nibabel as nib
import numpy as np
import pydicom
from nibabel import orientations as ornt_lib
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from pydicom.errors import InvalidDicomError

from fewsam_jax.metrics import integer_labels
from fewsam_jax.outputs import check_output_file, is_dicom_file, write_file
from fewsam_jax.provenance import PNG_KEY, label_digest, label_mark

__all__ = [
    "Volume",
    "VolumeError",
    "dicom_series_files",
    "from_array",
    "get_slices",
    "load_volume",
    "save_labels",
    "stack_slices",
]

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_RAS_ORNT = ornt_lib.axcodes2ornt(("R", "A", "S"))
_IMAGE_EXTS = (".png", ".jpg", ".jpeg")
MAX_LABEL_ID = 2**15 - 1  # label maps are written as uint8 or int16 (save_labels)
_SUPPORTED = ".nii, .nii.gz, .npy, .png, .jpg, .jpeg, a DICOM file or a DICOM series folder"


class VolumeError(ValueError):
    """A volume could not be read, written or is not a valid 3D image."""


class NiftiXforms(NamedTuple):
    """A source NIfTI's two orientation fields as the file stores them (nibabel's ``get_qform`` / ``get_sform`` with
    ``coded=True``: the matrix, None where its code is 0). Label maps on that file's grid are written with them
    unchanged, so that every reader places the labels where it places the image: nibabel prefers the sform, ITK
    (3D Slicer, SimpleITK) the qform, and a file whose two fields disagree or are both unset is read differently by
    each."""

    qform: np.ndarray | None
    qform_code: int
    sform: np.ndarray | None
    sform_code: int


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D image in canonical RAS+ voxel order plus what is needed to go back to its source grid.

    Attributes:
      array: (X, Y, Z) voxels in canonical RAS+ order.
      affine: (4, 4) voxel index -> RAS+ world (mm) of ``array``.
      spacing: voxel size in mm along X, Y, Z of ``array``.
      source_affine: (4, 4) voxel -> RAS+ affine of the source grid (as in the file).
      source_shape: shape of the source grid.
      source: the path it was read from, or None.
      source_xforms: a NIfTI source's qform and sform as stored (:class:`NiftiXforms`), written back on its label
        maps; None for other sources.
    """

    array: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    source_affine: np.ndarray
    source_shape: tuple[int, int, int]
    source: str | None = None
    source_xforms: NiftiXforms | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.array.shape

    def to_source(self, array: np.ndarray) -> np.ndarray:
        """Reorder an array on the canonical grid, shape ``self.shape`` (+ any trailing
        dims), to the source grid, shape ``source_shape`` (+ the same trailing dims)."""
        array = np.asarray(array)
        if array.shape[:3] != self.shape:
            raise VolumeError(
                f"array of shape {array.shape} is not on the grid of {self._name()} "
                f"(expected shape {self.shape})"
            )
        back = ornt_lib.ornt_transform(_RAS_ORNT, ornt_lib.io_orientation(self.source_affine))
        return ornt_lib.apply_orientation(array, back)

    def _name(self) -> str:
        return self.source or "the volume"


def check_shape(shape: tuple[int, ...], name: str) -> None:
    """VolumeError naming ``name`` unless ``shape`` is a non-empty 3D grid (2D, or 4D+ with extra dimensions of 1,
    stand for one)."""
    shape = tuple(int(d) for d in shape)
    if len(shape) > 3 and any(d != 1 for d in shape[3:]):
        raise VolumeError(f"{name}: {len(shape)}D image of shape {shape}; expected a 3D volume "
                          "(4D inputs are accepted only when the extra dimensions are 1)")
    if len(shape) < 2:
        raise VolumeError(f"{name}: {len(shape)}D array of shape {shape}; expected a 3D volume")
    if math.prod(shape) == 0:
        raise VolumeError(f"{name}: empty image (shape {shape})")


def _volume(data: np.ndarray, source_affine: np.ndarray, source: str | None,
            xforms: NiftiXforms | None = None) -> Volume:
    """Validates source-grid ``data`` (3D, or 2D/4D with singleton dims) and builds a Volume."""
    name = source or "array"
    data = np.asarray(data)
    check_shape(data.shape, name)
    data = data.reshape(data.shape[:3]) if data.ndim > 3 else data[:, :, None] if data.ndim == 2 else data
    if data.dtype == bool:
        data = data.astype(np.uint8)
    elif not np.issubdtype(data.dtype, np.integer):
        if not np.issubdtype(data.dtype, np.floating):
            raise VolumeError(f"{name}: unsupported voxel dtype {data.dtype}; expected numbers")
        bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        if bad:
            raise VolumeError(f"{name}: {bad} voxels are NaN or Inf; expected finite intensities")
        wide = data.dtype.itemsize > 4
        with np.errstate(over="ignore"):
            data = data.astype(np.float32, copy=False)
        if wide and not np.isfinite(data).all():  # finite in float64, beyond float32's range
            raise VolumeError(f"{name}: intensities beyond float32's range (|value| > 3.4e38); expected "
                              "finite float32 intensities")
    source_affine = np.asarray(source_affine, dtype=np.float64)
    if (
        source_affine.shape != (4, 4)
        or not np.all(np.isfinite(source_affine))
        or abs(np.linalg.det(source_affine[:3, :3])) < 1e-12
    ):
        raise VolumeError(f"{name}: affine must be a finite, invertible (4, 4) matrix, got {source_affine}")
    ornt = ornt_lib.io_orientation(source_affine)
    array = ornt_lib.apply_orientation(data, ornt)
    affine = source_affine @ ornt_lib.inv_ornt_aff(ornt, data.shape)
    spacing = tuple(float(s) for s in nib.affines.voxel_sizes(affine))
    return Volume(
        array=np.ascontiguousarray(array),
        affine=affine,
        spacing=spacing,
        source_affine=source_affine,
        source_shape=tuple(data.shape),
        source=source,
        source_xforms=xforms,
    )


def from_array(
    array: np.ndarray,
    spacing: tuple[float, float, float] | None = None,
    affine: np.ndarray | None = None,
) -> Volume:
    """Wraps a NumPy array as a Volume.

    Args:
      array: (X, Y, Z) voxels; or (H, W) an image (read like a PNG, see module doc).
      spacing: voxel size in mm (default 1 mm); used when ``affine`` is None: the array is
        then taken to be in canonical RAS+ order already (image: as described for PNGs), so it is
        ordered (X, Y, Z): for an (H, W) image (column spacing, row spacing, slice thickness), the
        reverse of DICOM's PixelSpacing (row, column).
      affine: (4, 4) voxel -> RAS+ affine of ``array``; the array is reoriented to canonical.
        If ``spacing`` is also given it must match the affine's voxel sizes.
    """
    array = np.asarray(array)
    if affine is not None:
        affine = np.asarray(affine, dtype=np.float64)
        if spacing is not None and affine.shape == (4, 4):
            sizes = tuple(float(s) for s in nib.affines.voxel_sizes(affine))
            if not np.allclose(sizes, spacing, rtol=1e-5, atol=1e-6):
                raise VolumeError(f"array: spacing {tuple(map(float, spacing))} disagrees with the affine's voxel sizes {sizes}")
        return _volume(array, affine, None)
    spacing = (1.0, 1.0, 1.0) if spacing is None else tuple(float(s) for s in spacing)
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise VolumeError(f"array: spacing must be three positive numbers (mm), got {spacing}")
    return _canonical_or_image(array, spacing, None)


def _canonical_or_image(array: np.ndarray, spacing: tuple[float, float, float], source: str | None) -> Volume:
    """(H, W) images -> PNG-like layout; anything else is taken as canonical RAS+ already."""
    if array.ndim == 2:
        return _volume(array.T, _image_affine(spacing), source)
    return _volume(array, np.diag([*spacing, 1.0]), source)


def load_volume(path: str | os.PathLike) -> Volume:
    """Reads a volume from a .nii/.nii.gz, .npy, .png/.jpg/.jpeg file or a DICOM series folder.

    A path to a single DICOM file (.dcm, or any name with the DICOM preamble) loads that
    file's whole series from its folder; that is how one series is picked from a folder holding
    several (a folder is split into series by SeriesInstanceUID, SeriesNumber,
    FrameOfReferenceUID, orientation and, for overlapping acquisitions, AcquisitionNumber; a
    folder path with more than one series is an error listing them).
    Raises:
      VolumeError: missing/unreadable file, unsupported format, or not a valid 3D image.
    """
    p = Path(path)
    if not p.exists():
        raise VolumeError(f"{p}: no such file or folder")
    if p.is_dir():
        return _load_dicom_series(p)
    name = p.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return _load_nifti(p)
    if name.endswith(".npy"):
        _check_npy_size(p)
        try:
            data = np.load(p, allow_pickle=False)
        except Exception as e:
            raise VolumeError(f"{p}: cannot read .npy file: {e}") from e
        return _canonical_or_image(data, (1.0, 1.0, 1.0), str(p))
    if name.endswith(_IMAGE_EXTS):
        return _load_image(p)
    if is_dicom_file(p):
        try:
            pydicom.dcmread(p, stop_before_pixels=True)
        except Exception as e:
            raise VolumeError(f"{p}: cannot read DICOM file: {e}") from e
        return _load_dicom_series(p.parent, pick=p)
    raise VolumeError(f"{p}: unsupported file type; expected {_SUPPORTED}")


def _is_series(p: Path) -> bool:
    """Whether ``p`` names a DICOM series (its folder, or one of its files whatever its name)."""
    return p.is_dir() or (not p.name.lower().endswith((".nii", ".nii.gz", ".npy", *_IMAGE_EXTS)) and is_dicom_file(p))


def header_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """The source-grid shape of the image at ``path`` as :func:`load_volume` would read it, from headers alone
    (a DICOM series: columns, rows, files). VolumeError naming the file: missing, unsupported type, unreadable
    header, or (NIfTI, .npy) less data in the file than the header declares; a DICOM series' headers are read as
    a series (:func:`dicom_series_files`)."""
    p = Path(path)
    if not p.exists():
        raise VolumeError(f"{p}: no such file or folder")
    name = p.name.lower()
    if _is_series(p):
        files = dicom_series_files(p)
        first = pydicom.dcmread(files[0], stop_before_pixels=True)
        return int(first.Columns), int(first.Rows), len(files)
    if name.endswith((".nii", ".nii.gz")):
        try:
            img = nib.load(p)
        except Exception as e:
            raise VolumeError(f"{p}: cannot read NIfTI file ({type(e).__name__}: {e})") from e
        _check_nifti_size(p, img)
        return tuple(img.shape)
    if name.endswith(".npy"):
        _check_npy_size(p)
        try:
            return tuple(np.load(p, mmap_mode="r", allow_pickle=False).shape)
        except Exception as e:
            raise VolumeError(f"{p}: cannot read .npy file: {e}") from e
    if name.endswith(_IMAGE_EXTS):
        try:
            with Image.open(p) as im:  # the header only: pixels are decoded by load_volume
                return tuple(im.size)
        except Exception as e:
            raise VolumeError(f"{p}: cannot read image ({type(e).__name__}: {e})") from e
    raise VolumeError(f"{p}: unsupported file type; expected {_SUPPORTED}")


def check_volume_header(path: str | os.PathLike) -> None:
    """What :func:`load_volume` would refuse that headers show (:func:`header_shape`, then :func:`check_shape`),
    checked without reading voxels: a cohort checks every case this way before it computes anything."""
    check_shape(header_shape(path), str(path))


# Deflate cannot expand data by more than 1032:1; a .nii.gz declaring more is lying.
_DEFLATE_MAX_RATIO = 1032


def _human_bytes(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"


def _decompressed_at_least(p: Path, needed: int) -> int:
    """Bytes of a gzip file's decompressed stream, counted up to ``needed`` (stops there): a cheap
    answer for the common case through the ISIZE trailer, streaming (never holding it all) otherwise."""
    size = p.stat().st_size
    if size >= 18 and needed < 2**32:
        with open(p, "rb") as f:
            f.seek(-4, os.SEEK_END)
            isize = int.from_bytes(f.read(4), "little")  # length mod 2**32 of the last member
        if needed <= isize <= size * _DEFLATE_MAX_RATIO:  # more is impossible: a truncated file's last bytes
            return isize
    total = 0
    try:
        with gzip.open(p, "rb") as f:
            while total < needed:
                chunk = f.read(min(1 << 22, needed - total))
                if not chunk:
                    break
                total += len(chunk)
    except (OSError, EOFError, zlib.error):  # truncated or corrupt stream: what was read is what there is
        pass
    return total


def _check_nifti_size(p: Path, img) -> None:
    """The data size the header declares (shape x bytes per voxel, after vox_offset) must be in the
    file, checked BEFORE any allocation: a damaged 81-byte header must not ask for gigabytes."""
    proxy = img.dataobj
    shape = tuple(int(d) for d in proxy.shape)
    if any(d < 0 for d in shape):
        raise VolumeError(f"{p}: the header declares a negative dimension {shape}: corrupt header")
    itemsize = np.dtype(proxy.dtype).itemsize
    offset = int(getattr(proxy, "offset", 0))
    needed = offset + math.prod(shape) * itemsize
    declared = (f"cannot read NIfTI file: the header declares {'x'.join(map(str, shape))} voxels of {np.dtype(proxy.dtype)} "
                f"({_human_bytes(needed - offset)} of data after a {offset}-byte header)")
    size = p.stat().st_size
    if p.name.lower().endswith(".gz"):
        if needed > size * _DEFLATE_MAX_RATIO + 1024:
            raise VolumeError(f"{p}: {declared}, but a {size}-byte gzip file cannot hold more than "
                              f"{_human_bytes(size * _DEFLATE_MAX_RATIO)}: corrupt header or truncated file")
        have = _decompressed_at_least(p, needed)
        if have < needed:
            raise VolumeError(f"{p}: {declared}, but the file decompresses to only {have} bytes "
                              "(a truncated file or a corrupt header)")
    elif size < needed:
        raise VolumeError(f"{p}: {declared}, but the file holds only {size} bytes "
                          "(a truncated file or a corrupt header)")


def _check_npy_size(p: Path) -> None:
    """The .npy header's shape x itemsize must fit in the file before np.load allocates it."""
    try:
        with open(p, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
            offset = f.tell()
    except (OSError, ValueError, SyntaxError, TypeError):  # an unreadable header: np.load reports it
        return
    needed = offset + math.prod(shape) * dtype.itemsize
    size = p.stat().st_size
    if size < needed:
        raise VolumeError(f"{p}: cannot read .npy file: the header declares {'x'.join(map(str, shape))} values of "
                          f"{dtype} ({_human_bytes(needed - offset)}), but the file holds only {size} bytes "
                          "(a truncated file or a corrupt header)")


def _load_nifti(p: Path) -> Volume:
    try:
        img = nib.load(p)  # the header only; the data stays on disk
    except Exception as e:
        raise VolumeError(f"{p}: cannot read NIfTI file ({type(e).__name__}: {e})") from e
    _check_nifti_size(p, img)
    try:
        scaled = img.dataobj.slope != 1 or img.dataobj.inter != 0
        data = np.asanyarray(img.dataobj)
        if scaled or not np.issubdtype(data.dtype, np.integer):
            data = np.asarray(data, dtype=np.float64 if data.dtype.itemsize > 4 else np.float32)  # _volume casts
        affine = img.affine
        header = img.header
        xforms = NiftiXforms(*header.get_qform(coded=True), *header.get_sform(coded=True))
    except MemoryError:
        raise VolumeError(f"{p}: not enough memory to load {img.shape} voxels of {img.get_data_dtype()} "
                          f"({_human_bytes(math.prod(img.shape) * 4)} as float32)") from None
    except Exception as e:
        raise VolumeError(f"{p}: cannot read NIfTI file ({type(e).__name__}: {e})") from e
    return _volume(data, affine, str(p), xforms)


def _image_affine(spacing: tuple[float, float, float]) -> np.ndarray:
    """Affine of a (W, H, 1) image grid: columns -> patient left, rows -> posterior (LPS)."""
    return _LPS_TO_RAS @ np.diag([*spacing, 1.0])


def _load_image(p: Path) -> Volume:
    try:
        with Image.open(p) as im:
            im.load()
            if im.mode in ("1", "L", "I", "I;16", "I;16B", "I;16L", "F"):
                grey = np.asarray(im, dtype=np.float32)
            elif im.mode == "LA":
                grey = np.asarray(im, dtype=np.float32)[..., 0]
            else:
                rgb = np.asarray(im.convert("RGB"), dtype=np.float32)
                grey = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    except Exception as e:
        raise VolumeError(f"{p}: cannot read image ({type(e).__name__}: {e})") from e
    return _canonical_or_image(grey, (1.0, 1.0, 1.0), str(p))


_SERIES_FIELDS = ("SeriesInstanceUID", "SeriesNumber", "FrameOfReferenceUID")


def _orientation_name(iop: np.ndarray) -> str:
    normal = np.cross(iop[:3], iop[3:])
    axis = int(np.argmax(np.abs(normal)))
    if abs(normal[axis]) < 0.99:
        return "oblique " + "\\".join(f"{v:g}" for v in np.round(iop, 3))
    return ("sagittal", "coronal", "axial")[axis]


@dataclass
class _Series:
    """Slices of one series: same UID, SeriesNumber, frame of reference and orientation."""

    fields: tuple[str, ...]
    iop: np.ndarray
    items: list
    acquisition: str | None = None

    def describe(self, shown: set[str]) -> str:
        uid, number, frame = self.fields
        parts = [f"SeriesInstanceUID {uid}" if uid else "no SeriesInstanceUID"]
        if "number" in shown:
            parts.append(f"SeriesNumber {number or '<none>'}")
        if "acquisition" in shown:
            parts.append(f"AcquisitionNumber {self.acquisition or '<none>'}")
        if "frame" in shown:
            parts.append(f"FrameOfReferenceUID {frame or '<none>'}")
        parts.append(_orientation_name(self.iop))
        return f"{', '.join(parts)}: {len(self.items)} file{'s' * (len(self.items) != 1)}, e.g. {self.items[0][0].name}"


def _split_series(headers: list) -> list[_Series]:
    """Groups (file, header) pairs into series.

    SeriesInstanceUID alone is not enough: anonymised exports often drop it, so slices are also
    split by SeriesNumber, FrameOfReferenceUID and ImageOrientationPatient (to 1e-4). A group that
    has two slices at one position and several AcquisitionNumbers is split by AcquisitionNumber too
    (two acquisitions of the same region; sequential-mode CT numbers the acquisitions of ONE
    volume, at distinct positions, so those stay together).
    """
    groups: list[_Series] = []
    for f, ds in headers:
        fields = tuple(str(ds.get(name, "") or "").strip() for name in _SERIES_FIELDS)
        iop = np.array(ds.ImageOrientationPatient, dtype=np.float64)
        for group in groups:
            if group.fields == fields and np.allclose(group.iop, iop, atol=1e-4):
                group.items.append((f, ds))
                break
        else:
            groups.append(_Series(fields, iop, [(f, ds)]))
    out = []
    for group in groups:
        acquisitions: dict[str, list] = {}
        for f, ds in group.items:
            acquisitions.setdefault(str(ds.get("AcquisitionNumber", "") or "").strip(), []).append((f, ds))
        normal = np.cross(group.iop[:3], group.iop[3:])
        dist = np.sort([np.array(ds.ImagePositionPatient, dtype=np.float64) @ normal for _, ds in group.items])
        if len(acquisitions) > 1 and np.any(np.diff(dist) < 1e-3):
            out.extend(_Series(group.fields, group.iop, items, acquisition=number)
                       for number, items in acquisitions.items())
        else:
            out.append(group)
    return out


def _series_items(folder: Path, pick: Path | None = None) -> tuple[list, np.ndarray, np.ndarray]:
    """The (file, header) pairs of the single series in ``folder`` (or of the series of the file ``pick``),
    sorted along the slice normal, with the 4x4 voxel -> LPS affine of the grid (columns, rows, slices)
    and the slice positions (LPS, mm). Checks one orientation and uniform spacing."""
    headers = []
    for f in sorted(folder.iterdir()):
        if not f.is_file():
            continue
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except InvalidDicomError:
            continue
        except Exception as e:
            raise VolumeError(f"{f}: cannot read DICOM file ({type(e).__name__}: {e})") from e
        if "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds:
            headers.append((f, ds))
    if pick is not None and not any(f.name == pick.name for f, _ in headers):
        raise VolumeError(f"{pick}: not a DICOM image slice (no ImagePositionPatient/ImageOrientationPatient)")
    if not headers:
        raise VolumeError(f"{folder}: no DICOM image files (with ImagePositionPatient) in this folder")
    groups = _split_series(headers)
    if pick is not None:
        groups = [g for g in groups if any(f.name == pick.name for f, _ in g.items)]
    elif len(groups) > 1:
        shown = {name for name, values in (
            ("number", {g.fields[1] for g in groups}),
            ("frame", {g.fields[2] for g in groups}),
            ("acquisition", {g.acquisition for g in groups}),
        ) if len(values) > 1}
        listing = "; ".join(f"[{k + 1}] {g.describe(shown)}" for k, g in enumerate(groups))
        raise VolumeError(
            f"{folder}: {len(groups)} DICOM series in one folder: {listing}. Expected one series per folder; "
            f"to read one of them pass one of its files, e.g. {groups[0].items[0][0]}"
        )
    items = groups[0].items
    uid = groups[0].fields[0]

    iop = np.array(items[0][1].ImageOrientationPatient, dtype=np.float64)
    for f, ds in items:
        if not np.allclose(np.array(ds.ImageOrientationPatient, dtype=np.float64), iop, atol=1e-4):
            raise VolumeError(f"{f}: ImageOrientationPatient differs from the rest of series {uid or '<no UID>'} in {folder}")
    row_dir, col_dir = iop[:3], iop[3:]  # direction of increasing column index, of increasing row index
    normal = np.cross(row_dir, col_dir)
    pos = np.array([np.array(ds.ImagePositionPatient, dtype=np.float64) for _, ds in items])
    order = np.argsort(pos @ normal, kind="stable")
    items, pos = [items[i] for i in order], pos[order]
    dist = pos @ normal
    gaps = np.diff(dist)
    if len(items) > 1:
        if np.any(gaps < 1e-3):
            i = int(np.argmin(gaps))
            raise VolumeError(
                f"{folder}: two slices at the same position {dist[i]:.3f} mm along the normal "
                f"({items[i][0].name}, {items[i + 1][0].name}); expected one slice per position"
            )
        step = float(gaps.min())
        bad = np.flatnonzero(np.abs(gaps - step) > 0.01 * step + 1e-3)
        if bad.size:
            i = int(bad[0])
            raise VolumeError(
                f"{folder}: non-uniform slice spacing, gap of {gaps[i]:.3f} mm between "
                f"{items[i][0].name} and {items[i + 1][0].name} (positions {dist[i]:.3f} and "
                f"{dist[i + 1]:.3f} mm) where {step:.3f} mm was expected: missing slice(s)?"
            )
        slice_vec = (pos[-1] - pos[0]) / (len(items) - 1)
        line = slice_vec / np.linalg.norm(slice_vec)
        rel = pos - pos[0]
        off = np.linalg.norm(rel - (rel @ line)[:, None] * line, axis=1)  # across the line (along it: the gaps)
        if off.max() > 0.01 * np.linalg.norm(slice_vec) + 1e-3:
            i = int(np.argmax(off))
            raise VolumeError(
                f"{items[i][0]}: ImagePositionPatient {pos[i].round(3).tolist()} lies {off[i]:.3f} mm off the line "
                f"through the series' first and last slices ({folder}); expected the slices of one regular grid"
            )
    else:
        ds = items[0][1]
        thickness = float(ds.get("SpacingBetweenSlices", None) or ds.get("SliceThickness", None) or 1.0)
        slice_vec = normal * thickness

    first = _pixel_spacing(items[0][1])
    if not first:
        raise VolumeError(f"{items[0][0]}: no PixelSpacing; expected a CT/MR image series")
    if len(first) != 2 or min(first) <= 0:
        raise VolumeError(f"{items[0][0]}: PixelSpacing {first}: expected two positive numbers (row, column) in mm")
    dr, dc = first  # row spacing, column spacing
    for f, ds in items[1:]:
        spacing = _pixel_spacing(ds)
        if len(spacing) != 2 or not np.allclose(spacing, (dr, dc), rtol=1e-4, atol=1e-6):
            raise VolumeError(f"{f}: PixelSpacing {spacing or 'missing'} differs from the first slice's "
                              f"{[dr, dc]} in {folder}; expected one pixel grid for the whole series")
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row_dir * dc, col_dir * dr, slice_vec, pos[0]
    return items, lps, pos


def _pixel_spacing(ds) -> list[float]:
    """A slice's PixelSpacing as read (pydicom gives one value as a number, several as a list; [] when absent)."""
    value = ds.get("PixelSpacing", None)
    if value is None or value == "":
        return []
    several = isinstance(value, (list, tuple, pydicom.multival.MultiValue))
    return [float(v) for v in value] if several else [float(value)]


def dicom_series_files(path: str | os.PathLike) -> list[Path]:
    """The files of the DICOM series at ``path`` (its folder, or one of its files, as for
    :func:`load_volume`) in the order of the source grid's slice axis: ``load_volume(path)``'s source
    grid slice ``k`` is the pixel data of file ``k``, transposed (columns, rows).

    Raises:
      VolumeError: ``path`` is missing or is not a DICOM series (folder or file), or the series is not one
        regular grid (see :func:`load_volume`).
    """
    p = Path(path)
    if not p.exists():
        raise VolumeError(f"{p}: no such file or folder")
    if p.is_dir():
        items, _, _ = _series_items(p)
    elif is_dicom_file(p):
        items, _, _ = _series_items(p.parent, pick=p)
    else:
        raise VolumeError(f"{p}: not a DICOM series; expected a DICOM series folder or one of its files")
    return [f for f, _ in items]


def _load_dicom_series(folder: Path, pick: Path | None = None) -> Volume:
    """Reads the single series in ``folder`` (or the series of the file ``pick``) as a Volume.

    Source grid: (columns, rows, slices sorted along the slice normal).
    """
    items, lps, _ = _series_items(folder, pick)
    slices = []
    for f, _ in items:
        try:
            ds = pydicom.dcmread(f)
            pix = ds.pixel_array
        except Exception as e:
            raise VolumeError(f"{f}: cannot decode DICOM pixel data ({type(e).__name__}: {e})") from e
        if pix.ndim != 2:
            raise VolumeError(f"{f}: pixel data of shape {pix.shape}; expected one 2D grey slice per file")
        slope = float(ds.get("RescaleSlope", 1) or 1)
        inter = float(ds.get("RescaleIntercept", 0) or 0)
        slices.append((pix.astype(np.float32) * np.float32(slope) + np.float32(inter)).T)
    shapes = {s.shape for s in slices}
    if len(shapes) > 1:
        raise VolumeError(f"{folder}: slices of different sizes {sorted(shapes)} in one series")
    return _volume(np.stack(slices, axis=2), _LPS_TO_RAS @ lps, str(folder))


def save_labels(labels: np.ndarray, like: Volume, path: str | os.PathLike, *, overwrite: bool = False,
                mark: bool = False) -> Path:
    """Writes a label map on ``like``'s canonical grid to ``path`` on the SOURCE grid.

    ``.nii``/``.nii.gz``: NIfTI on ``like``'s source grid with its qform and sform (:func:`source_nifti`: it
    overlays the source in any viewer); ``.png``: one-slice volumes only, written as ``get_slices(labels, 2)[0]``
    (the source image's pixel layout). Values must be integers; stored as uint8 when in
    [0, 255], else int16. Written atomically (:func:`fewsam_jax.outputs.write_file`).

    Args:
      labels: (X, Y, Z) integer (or bool / integer-valued float) labels, shape ``like.shape``.
      like: the Volume the labels belong to.
      path: output file; never ``like.source`` (the image itself), whatever ``overwrite`` says.
      overwrite: replace an existing file at ``path`` (else OutputExistsError, nothing written).
      mark: record in the file that it is a prediction of this library, with a digest of its voxels
        (:mod:`fewsam_jax.provenance`), so that ``fewsam segment --overwrite`` may replace it while it is unchanged;
        label maps drawn or corrected by people are saved without.
    Returns: the written path.
    """
    p = Path(path)
    labels = np.asarray(labels)
    if labels.shape != like.shape:
        raise VolumeError(f"{p}: labels of shape {labels.shape} do not match {like._name()} (shape {like.shape})")
    try:  # the one integer-id check, before anything is written
        labels = integer_labels(labels, f"{p}: labels")
    except ValueError as err:
        raise VolumeError(str(err)) from None
    lo, hi = int(labels.min()), int(labels.max())
    if 0 <= lo and hi <= 255:
        dtype = np.uint8
    elif -(2**15) <= lo and hi < 2**15:
        dtype = np.int16
    else:
        raise VolumeError(f"{p}: label values {lo}..{hi} do not fit in int16")
    labels = labels.astype(dtype)
    name = p.name.lower()
    if not p.parent.is_dir():
        raise VolumeError(f"{p}: folder {p.parent} does not exist")
    if name.endswith((".nii", ".nii.gz")):
        img = source_nifti(labels, like)
        if mark:
            img.header["descrip"] = label_mark(np.asarray(img.dataobj))

        def write(tmp):
            nib.save(img, tmp)

    elif name.endswith(".png"):
        if like.shape[2] != 1:
            raise VolumeError(f"{p}: PNG output needs a one-slice volume, got shape {like.shape}; use .nii.gz")
        if dtype != np.uint8:
            raise VolumeError(f"{p}: label values {lo}..{hi} do not fit an 8-bit PNG; use .nii.gz")

        pixels = get_slices(labels, 2)[0]
        text = PngInfo()
        if mark:
            text.add_text(PNG_KEY, label_digest(pixels))

        def write(tmp):
            Image.fromarray(pixels).save(tmp, pnginfo=text)

    else:
        raise VolumeError(f"{p}: unsupported output type; expected .nii, .nii.gz or .png")
    check_output_file(p, overwrite=overwrite, inputs=[like.source])
    with write_file(p, overwrite=overwrite) as tmp:
        write(tmp)
    return p


def check_png_output(image: str | os.PathLike, out: str | os.PathLike) -> None:
    """Before segmenting ``image``: a ``.png`` label output ``out`` needs a one-slice volume (what
    :func:`save_labels` writes as PNG). Reads headers only (NIfTI, .npy, a DICOM series' files); a volume whose
    grid has more than one voxel along every axis raises VolumeError now. 2D images pass."""
    if not str(out).lower().endswith(".png"):
        return
    p = Path(image)
    shape = ()
    with contextlib.suppress(Exception):  # an unreadable header is load_volume's to report
        shape = header_shape(p)
    if len(shape) >= 3 and min(shape[:3]) > 1:
        found = f"{shape[2]} slices (DICOM files)" if _is_series(p) else f"shape {shape}"
        raise VolumeError(f"{out}: PNG output needs a one-slice volume, but {image} has {found}; use .nii.gz")


def source_nifti(array: np.ndarray, like: Volume) -> nib.Nifti1Image:
    """(X, Y, Z) ``array`` on ``like``'s canonical grid as a NIfTI image on ``like``'s SOURCE grid, in mm units,
    that overlays the source in any viewer. A NIfTI source's qform and sform are copied as stored, codes included
    (``like.source_xforms``); otherwise both are ``like.source_affine`` with code 1 (scanner), except that a sheared
    affine (a gantry-tilted DICOM series) leaves the qform unset (code 0). A qform cannot hold a shear: nibabel would
    store the nearest unsheared grid there, and ITK-based readers, which take the qform, would place the labels up to
    centimetres off; without it they refuse the file (ITK reads no sheared grid), nibabel-based ones read it right."""
    img = nib.Nifti1Image(like.to_source(array), like.source_affine)
    xforms = like.source_xforms
    if xforms is not None:  # the fields nibabel took the affine from must still be the volume's (not a derived grid)
        stored = xforms.sform if xforms.sform_code > 0 else xforms.qform if xforms.qform_code > 0 else None
        if stored is not None and not np.allclose(stored, like.source_affine, atol=1e-4):
            xforms = None
    if xforms is not None:
        img.set_sform(xforms.sform, code=xforms.sform_code)
        img.set_qform(xforms.qform, code=xforms.qform_code)
    else:
        img.set_sform(like.source_affine, code=1)
        if _sheared(like.source_affine):
            img.set_qform(None, code=0)
        else:
            img.set_qform(like.source_affine, code=1)
    img.header.set_xyzt_units("mm")
    return img


def _sheared(affine: np.ndarray) -> bool:
    """Whether the voxel axes of ``affine`` are not mutually perpendicular: beyond ITK's tolerance (1e-4), under which
    its readers take the grid as orthogonal and a qform's error stays under 0.03 mm at 300 mm."""
    axes = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    return bool(np.abs(axes.T @ axes - np.eye(3)).max() > 1e-4)


def save_image(volume: Volume, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Writes ``volume``'s intensities to ``path`` (.nii/.nii.gz) as NIfTI on its source grid, atomically;
    an existing file is replaced only with ``overwrite``, and never ``volume.source`` (the image read)."""
    check_output_file(path, overwrite=overwrite, inputs=[volume.source])
    with write_file(path, overwrite=overwrite) as tmp:
        nib.save(source_nifti(volume.array, volume), tmp)
    return Path(path)


AXIS_NAMES = {0: "sagittal", 1: "coronal", 2: "axial"}  # the planes of slices along each canonical axis


def check_axis(axis: int, ndim: int = 3) -> int:
    """``axis`` as 0..ndim-1; a ValueError naming it when it is not an axis of a 3D volume."""
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -ndim <= axis < ndim:
        raise ValueError(f"axis={axis!r} is out of range for a 3D volume; expected 0, 1 or 2 (or -3..-1)")
    return int(axis) % ndim


def get_slices(volume_array: np.ndarray | Volume, axis: int = 2) -> np.ndarray:
    """2D slices of a canonical (X, Y, Z) array along ``axis``, in display orientation.

    Args:
      volume_array: (X, Y, Z) array, or a Volume (its ``array``).
      axis: 0 sagittal, 1 coronal, 2 axial (default).
    Returns: (N, H, W) contiguous copy, N = size of ``axis``; rows/columns follow the
      radiological convention of the module doc (H, W = remaining axes b, a reversed).
    """
    a = volume_array.array if isinstance(volume_array, Volume) else np.asarray(volume_array)
    if a.ndim != 3:
        raise ValueError(f"volume_array of shape {a.shape}: expected a 3D (X, Y, Z) array")
    axis = check_axis(axis)
    return np.ascontiguousarray(np.moveaxis(a, axis, 0).transpose(0, 2, 1)[:, ::-1, ::-1])


def slice_view(array: np.ndarray, axis: int, index: int) -> np.ndarray:
    """Slice ``index`` of a canonical (X, Y, Z) array along ``axis`` as a (H, W) VIEW in display
    orientation: equal to ``get_slices(array, axis)[index]``, and writing into it writes into ``array``."""
    axis = check_axis(axis)
    count = array.shape[axis]
    if not -count <= index < count:
        raise IndexError(f"slice index {index} out of range 0..{count - 1} along axis {axis}")
    return np.moveaxis(array, axis, 0)[index].T[::-1, ::-1]


def stack_slices(slices: np.ndarray, axis: int = 2) -> np.ndarray:
    """Inverse of :func:`get_slices`: (N, H, W) display-oriented slices -> canonical 3D array."""
    s = np.asarray(slices)
    if s.ndim != 3:
        raise ValueError(f"slices of shape {s.shape}: expected (N, H, W)")
    axis = check_axis(axis)
    return np.ascontiguousarray(np.moveaxis(s[:, ::-1, ::-1].transpose(0, 2, 1), 0, axis))
