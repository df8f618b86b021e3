"""Which existing files this library wrote and nobody changed since: the test behind "``--overwrite`` replaces only
the commands' own outputs".

``fewsam segment``, ``fewsam evaluate`` and ``--dicom-seg`` mark what they write (a folder carries
:data:`fewsam_jax.outputs.MARKER` instead):

* a predicted NIfTI label map: the header's ``descrip`` field holds :data:`NIFTI_DESCRIP` and a digest of its
  voxels (:func:`label_mark`), so a map corrected and saved again (its header copied, as editors do) no longer
  counts; label maps saved for other reasons (``save_labels`` without ``mark``, the annotator's ground truth) carry
  no mark;
* a predicted PNG label map: a text chunk :data:`PNG_KEY` holding the same digest of its pixels;
* ``CASE.labels.txt``: the first line :data:`ITKSNAP_HEADER` with a digest of the lines after it
  (:func:`itksnap_mark`); ``CASE.labels.json``: ``"writer"`` with a digest of the rest (:func:`json_mark`): an edited
  name or colour makes the file the user's;
* ``CASE.seg.nrrd``: the header field :data:`NRRD_WRITER_FIELD` (3D Slicer drops it on saving the file again, which
  makes an edited segmentation the user's);
* ``CASE.seg.dcm``: the DICOM Manufacturer :data:`LIBRARY`;
* ``summary.json`` of ``fewsam evaluate``: ``"writer": "fewsam_jax"``;
* the demo's ``mni152.nii.gz`` and ``mni152_labels.nii.gz`` (:func:`fewsam_jax.demo.mni_with_labels`): as a label map.

:func:`written_by_library` reads headers and, for label maps, the voxels (only when ``--overwrite`` meets an
existing file). A file it cannot read, or one written before these marks existed (2026-12-05), is not the
library's: it is never replaced; the user moves or deletes it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from fewsam_jax.outputs import OutputExistsError

LIBRARY = "fewsam_jax"
NIFTI_DESCRIP = "fewsam_jax labels"  # + " sha1:<16 hex>" of the voxels: fits the field's 80 bytes
PNG_KEY = "fewsam_jax labels"  # a PNG text chunk holding the digest of the pixels
ITKSNAP_HEADER = "# ITK-SNAP label description file written by fewsam_jax"
NRRD_WRITER_FIELD = "fewsam_jax_writer"


def text_digest(text: str) -> str:
    """16 hex digits of SHA-1 over ``text`` (UTF-8)."""
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def itksnap_mark(body: str) -> str:
    """The first line of a ``CASE.labels.txt`` whose following lines are ``body``."""
    return f"{ITKSNAP_HEADER} (sha1:{text_digest(body)})"


def json_mark(table: dict) -> str:
    """The ``"writer"`` of a ``CASE.labels.json`` holding ``table`` besides it."""
    return f"{LIBRARY} sha1:{text_digest(json.dumps(table, sort_keys=True))}"


def label_digest(array: np.ndarray) -> str:
    """16 hex digits of SHA-1 over ``array``'s dtype, shape and C-order bytes: what a label map's mark records."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha1(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def label_mark(array: np.ndarray) -> str:
    """The NIfTI ``descrip`` of a predicted label map whose stored voxels are ``array`` (source order, stored dtype)."""
    return f"{NIFTI_DESCRIP} sha1:{label_digest(array)}"


def _nifti(path: Path) -> bool:
    import nibabel as nib

    image = nib.load(path)
    descrip = image.header["descrip"].tobytes().split(b"\0", 1)[0].decode("ascii", "replace")
    if not descrip.startswith(f"{NIFTI_DESCRIP} sha1:"):
        return False
    return descrip == label_mark(np.asarray(image.dataobj.get_unscaled()))


def _png(path: Path) -> bool:
    from PIL import Image

    with Image.open(path) as image:
        recorded = image.info.get(PNG_KEY)
        return recorded is not None and recorded == label_digest(np.asarray(image))


def _itksnap(path: Path) -> bool:
    first, _, body = Path(path).read_text().partition("\n")
    return first == itksnap_mark(body)


def _labels_json(path: Path) -> bool:
    table = json.loads(Path(path).read_text())
    return isinstance(table, dict) and table.pop("writer", None) == json_mark(table)


def _nrrd(path: Path) -> bool:
    import nrrd

    return nrrd.read_header(str(path)).get(NRRD_WRITER_FIELD) == LIBRARY


def _dicom(path: Path) -> bool:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).get("Manufacturer", "")) == LIBRARY


def _summary(path: Path) -> bool:
    table = json.loads(Path(path).read_text())
    return isinstance(table, dict) and table.get("writer") == LIBRARY


# (name ending, test), most specific ending first
_KINDS = ((".labels.txt", _itksnap), (".labels.json", _labels_json), (".seg.nrrd", _nrrd), (".seg.dcm", _dicom),
          (".nii.gz", _nifti), (".nii", _nifti), (".png", _png), (".json", _summary))


def written_by_library(path: str | os.PathLike) -> bool:
    """Whether the existing file ``path`` carries this library's mark for its kind, unchanged (module docstring).
    A file of another kind, an unreadable one or a symbolic link is not the library's. A cohort asks about each
    existing output several times (planned, checked before compute, before and after writing): the answer is
    kept per file version (inode, size, modification time), so a label map's voxels are digested once."""
    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return False
    stat = path.stat()
    return _marked(str(path.resolve()), (stat.st_ino, stat.st_size, stat.st_mtime_ns))


@functools.lru_cache(maxsize=1024)
def _marked(path: str, version: tuple[int, int, int]) -> bool:
    """:func:`written_by_library` of the file ``path`` as it is at ``version`` (inode, size, mtime in ns)."""
    name = path.lower()
    for ending, test in _KINDS:
        if name.endswith(ending):
            with contextlib.suppress(Exception):  # unreadable, or not that format at all: not ours
                return bool(test(Path(path)))
            return False
    return False


def check_own_file(out: str | os.PathLike) -> None:
    """OutputExistsError unless the existing file ``out`` is one of the commands' outputs, unchanged
    (:func:`written_by_library`): ``--overwrite`` never replaces another program's or the user's file. Passed as
    ``replace=`` to :func:`fewsam_jax.outputs.check_output_file`."""
    if not written_by_library(out):
        raise OutputExistsError(f"{out} exists and is not an unchanged output of fewsam_jax (it lacks the library's "
                                "mark, or was edited since); --overwrite replaces only those. Move or delete it "
                                "yourself, or choose another path")
