"""Which existing files this library wrote: the test behind "``--overwrite`` replaces only our own files".

Every file kind the commands write carries a mark of the library (a folder carries
:data:`fewsam_jax.outputs.MARKER` instead):

* NIfTI label maps: the header's ``descrip`` field starts with :data:`NIFTI_DESCRIP`;
* PNG label maps: a ``Software`` text chunk equal to :data:`LIBRARY`;
* ``CASE.labels.txt``: the ITK-SNAP header comment :data:`ITKSNAP_HEADER` on its first line;
* ``CASE.labels.json``: the library's layout, ``{"background": 0, "labels": [{"id", "name", "color"}, ...]}``
  and nothing else;
* ``CASE.seg.nrrd``: the header field :data:`NRRD_WRITER_FIELD` (3D Slicer drops it on saving the file again,
  which makes an edited segmentation the user's);
* ``CASE.seg.dcm``: the DICOM Manufacturer :data:`LIBRARY`;
* ``summary.json`` of ``fewsam evaluate``: ``"writer": "fewsam_jax"``.

:func:`written_by_library` reads only headers (nibabel, PIL, pynrrd and pydicom are imported when a file of
their kind is asked about). A file it cannot read, or one written before these marks existed, is not the
library's: it is never replaced; the user moves or deletes it.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

LIBRARY = "fewsam_jax"
NIFTI_DESCRIP = "fewsam_jax labels"
ITKSNAP_HEADER = "# ITK-SNAP label description file written by fewsam_jax"
NRRD_WRITER_FIELD = "fewsam_jax_writer"


def _nifti(path: Path) -> bool:
    import nibabel as nib

    descrip = nib.load(path).header["descrip"].tobytes().split(b"\0", 1)[0]
    return descrip.decode("ascii", "replace").startswith(NIFTI_DESCRIP)


def _png(path: Path) -> bool:
    from PIL import Image

    with Image.open(path) as image:
        return image.info.get("Software") == LIBRARY


def _itksnap(path: Path) -> bool:
    with open(path, encoding="utf-8", errors="replace") as handle:
        return handle.readline().rstrip("\r\n") == ITKSNAP_HEADER


def _labels_json(path: Path) -> bool:
    table = json.loads(Path(path).read_text())
    return (isinstance(table, dict) and set(table) == {"background", "labels"} and isinstance(table["labels"], list)
            and all(isinstance(row, dict) and set(row) == {"id", "name", "color"} for row in table["labels"]))


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
    """Whether the existing file ``path`` carries this library's mark for its kind (module docstring). A file of
    another kind, an unreadable one or a symbolic link is not the library's."""
    path = Path(path)
    name = path.name.lower()
    if path.is_symlink() or not path.is_file():
        return False
    for ending, test in _KINDS:
        if name.endswith(ending):
            with contextlib.suppress(Exception):  # unreadable, or not that format at all: not ours
                return bool(test(path))
            return False
    return False
