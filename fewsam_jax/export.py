"""Label maps that open with their class names: description files beside every label map, and 3D Slicer's
``.seg.nrrd``.

Beside ``CASE.nii.gz`` the library writes

* ``CASE.labels.txt``: an ITK-SNAP label description file (Segmentation > Import Label Descriptions);
  one line per label: id, red, green, blue (0-255), opacity (0-1), visibility, mesh visibility, "name".
* ``CASE.labels.json``: ``{"labels": [{"id", "name", "color": [r, g, b]}], "background": 0, "writer"}`` for
  scripts and other viewers (``writer``: the library's mark, :mod:`fewsam_jax.provenance`).

and, on request, ``CASE.seg.nrrd``: a 3D Slicer segmentation (one layer; each class a named, coloured
segment; the grid and orientation of the source image, in LPS), which needs ``pynrrd``, and, for a DICOM
series, ``CASE.seg.dcm``: a DICOM-SEG (:mod:`fewsam_jax.dicom_seg`, needs ``highdicom``).
"""

from __future__ import annotations

import colorsys
import json
import logging
import os
import re
from pathlib import Path
from typing import Mapping

import numpy as np

from fewsam_jax.metrics import integer_labels
from fewsam_jax.outputs import FewSamError, check_output_file, write_file, write_text
from fewsam_jax.provenance import LIBRARY, NRRD_WRITER_FIELD, itksnap_mark, json_mark

log = logging.getLogger(__name__)

# distinct, saturated colours for the first classes; later ones step round the hue circle
_PALETTE = [(230, 60, 50), (60, 160, 70), (50, 110, 220), (245, 190, 30), (150, 80, 200), (30, 190, 200),
            (240, 120, 180), (140, 100, 60), (120, 200, 60), (250, 140, 40)]


class ExportError(FewSamError, ValueError):
    """A label description or segmentation file that cannot be written or read back as expected."""


def class_colours(class_ids) -> dict[int, tuple[int, int, int]]:
    """A colour (0-255 RGB) per class id: the palette in id order, then evenly spaced hues."""
    colours = {}
    for i, class_id in enumerate(sorted(class_ids)):
        if i < len(_PALETTE):
            colours[class_id] = _PALETTE[i]
        else:
            r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.75, 0.9)
            colours[class_id] = (int(r * 255), int(g * 255), int(b * 255))
    return colours


def sidecar_paths(label_path: str | os.PathLike) -> dict[str, Path]:
    """``{"itksnap": CASE.labels.txt, "json": CASE.labels.json, "nrrd": CASE.seg.nrrd, "dicom": CASE.seg.dcm}``
    beside a label map."""
    path = Path(label_path)
    name = path.name
    for suffix in (".nii.gz", ".nii", ".png", ".seg.nrrd", ".nrrd", ".seg.dcm"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return {"itksnap": path.with_name(f"{name}.labels.txt"), "json": path.with_name(f"{name}.labels.json"),
            "nrrd": path.with_name(f"{name}.seg.nrrd"), "dicom": path.with_name(f"{name}.seg.dcm")}


def check_class_ids(classes: Mapping[int, str]) -> dict[int, str]:
    """``classes`` as {int id: str name} sorted by id; ExportError naming an id that is not an integer > 0 (empty
    is allowed here: a description with the background alone; the annotator's stricter check is
    :func:`fewsam_jax.label_editor.check_classes`)."""
    out = {}
    for class_id, name in classes.items():
        if isinstance(class_id, bool) or not isinstance(class_id, (int, np.integer)) or class_id <= 0:
            raise ExportError(f"class id {class_id!r}: expected an integer > 0 (0 is the background)")
        out[int(class_id)] = str(name)
    return dict(sorted(out.items()))


def itksnap_text(classes: Mapping[int, str]) -> str:
    """An ITK-SNAP label description file naming ``classes``; its first line marks it as the library's
    (:func:`fewsam_jax.provenance.itksnap_mark`)."""
    classes = check_class_ids(classes)
    colours = class_colours(classes)
    lines = ["# columns: label id, red, green, blue (0-255), opacity (0-1), visible, visible in 3D, \"name\"",
             f'{0:5d} {0:5d} {0:5d} {0:5d} {0.0:8.2f} {0:2d} {0:2d}    "Clear Label"']
    for class_id, name in classes.items():
        r, g, b = colours[class_id]
        label = name.replace('"', "'")
        lines.append(f'{class_id:5d} {r:5d} {g:5d} {b:5d} {1.0:8.2f} {1:2d} {1:2d}    "{label}"')
    body = "\n".join(lines) + "\n"
    return f"{itksnap_mark(body)}\n{body}"


def labels_json(classes: Mapping[int, str]) -> str:
    """``{"background": 0, "labels": [{"id", "name", "color"}], "writer"}``: ``writer`` marks it as the library's
    (:func:`fewsam_jax.provenance.json_mark`)."""
    classes = check_class_ids(classes)
    colours = class_colours(classes)
    table = {"background": 0, "labels": [{"id": k, "name": v, "color": list(colours[k])} for k, v in classes.items()]}
    return json.dumps({**table, "writer": json_mark(table)}, indent=2) + "\n"


_ITKSNAP_LINE = re.compile(r'^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+([0-9.eE+-]+)\s+(\d+)\s+(\d+)\s+"(.*)"\s*$')


def read_itksnap_labels(path: str | os.PathLike) -> dict[int, tuple[str, tuple[int, int, int]]]:
    """``{id: (name, (r, g, b))}`` of an ITK-SNAP label description file, background (0) left out."""
    path = Path(path)
    table = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _ITKSNAP_LINE.match(line)
        if match is None:
            raise ExportError(f"{path}, line {number}: not an ITK-SNAP label line (IDX R G B A VIS MSH \"NAME\")")
        class_id = int(match[1])
        if class_id:
            table[class_id] = (match[8], (int(match[2]), int(match[3]), int(match[4])))
    return table


def write_label_descriptions(label_path: str | os.PathLike, classes: Mapping[int, str],
                             overwrite: bool = False) -> dict[str, Path]:
    """Write the ITK-SNAP and JSON label descriptions beside ``label_path``; returns their paths. Neither may be
    the label map itself; an existing one is replaced only with ``overwrite``."""
    paths = sidecar_paths(label_path)
    texts = {"itksnap": itksnap_text(classes), "json": labels_json(classes)}
    for kind in texts:  # both checked before either is written
        check_output_file(paths[kind], overwrite=overwrite, inputs=[label_path])
    for kind, text in texts.items():
        write_text(paths[kind], text, overwrite=overwrite)
    return {"itksnap": paths["itksnap"], "json": paths["json"]}


# ---------------------------------------------------------------------------------------------- 3D Slicer


def require_pynrrd():
    try:
        import nrrd
    except ModuleNotFoundError:
        raise ExportError("writing .seg.nrrd needs pynrrd: pip install pynrrd (or 'fewsam_jax[slicer]')") from None
    return nrrd


def grid_labels(labels, like, path: str | os.PathLike) -> np.ndarray:
    """``labels`` as integer ids (:func:`~fewsam_jax.metrics.integer_labels`), checked to lie on ``like``'s grid
    (a :class:`~fewsam_jax.io.Volume`, canonical order): the check of every writer of a label file, raising
    :class:`ExportError` naming ``path``."""
    labels = np.asarray(labels)
    if labels.shape != like.shape:
        raise ExportError(f"{path}: labels of shape {labels.shape} are not on the grid of {like._name()} ({like.shape})")
    try:  # the one integer-id check
        return integer_labels(labels, f"{path}: labels")
    except ValueError as err:
        raise ExportError(str(err)) from None


def write_seg_nrrd(labels: np.ndarray, like, path: str | os.PathLike, classes: Mapping[int, str],
                   overwrite: bool = False) -> Path:
    """Write ``labels`` (on ``like``'s canonical grid, a :class:`~fewsam_jax.io.Volume`) as a 3D Slicer
    segmentation on the source grid: one label layer, a named and coloured segment per class. ``path`` is never
    ``like.source`` (the image); an existing file is replaced only with ``overwrite``."""
    nrrd = require_pynrrd()
    check_output_file(path, overwrite=overwrite, inputs=[like.source])
    classes = check_class_ids(classes)
    labels = grid_labels(labels, like, path)
    if labels.min() < 0 or labels.max() > 255:
        raise ExportError(f"{path}: label values {labels.min()}..{labels.max()} do not fit a Slicer label layer (0-255)")
    data = like.to_source(labels).astype(np.uint8)
    ras_to_lps = np.diag([-1.0, -1.0, 1.0])
    affine = np.asarray(like.source_affine, np.float64)
    xforms = getattr(like, "source_xforms", None)
    if xforms is not None and xforms.qform_code > 0 and xforms.sform_code > 0 and not np.allclose(
            xforms.qform, xforms.sform, atol=1e-3):
        log.warning("%s: %s's qform and sform place the image differently; the segmentation follows the sform "
                    "(as nibabel reads it), so a viewer that shows the image at its qform shows the two apart",
                    path, like.source)
    header = {
        "type": "unsigned char",
        "space": "left-posterior-superior",
        "space directions": (ras_to_lps @ affine[:3, :3]).T,
        "space origin": ras_to_lps @ affine[:3, 3],
        "kinds": ["domain", "domain", "domain"],
        "encoding": "gzip",
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
        NRRD_WRITER_FIELD: LIBRARY,  # Slicer's writer sets its own fields only: a file it saved again is the user's
    }
    colours = class_colours(classes)
    extent = " ".join(f"0 {n - 1}" for n in data.shape)
    for i, (class_id, name) in enumerate(classes.items()):
        r, g, b = colours[class_id]
        header.update({
            f"Segment{i}_ID": f"Segment_{class_id}", f"Segment{i}_Name": name,
            f"Segment{i}_Color": f"{r / 255:.6g} {g / 255:.6g} {b / 255:.6g}", f"Segment{i}_ColorAutoGenerated": "0",
            f"Segment{i}_LabelValue": str(class_id), f"Segment{i}_Layer": "0", f"Segment{i}_Extent": extent,
            f"Segment{i}_NameAutoGenerated": "0", f"Segment{i}_Tags": "|",
        })
    path = Path(path)
    with write_file(path, overwrite=overwrite) as tmp:
        nrrd.write(str(tmp), data, header, index_order="F")
    return path


# NRRD's anatomical spaces (its specification's names and their abbreviations) -> the signs that take them to RAS
NRRD_SPACES = {**dict.fromkeys(("right-anterior-superior", "ras"), (1.0, 1.0, 1.0)),
               **dict.fromkeys(("left-anterior-superior", "las"), (-1.0, 1.0, 1.0)),
               **dict.fromkeys(("left-posterior-superior", "lps"), (-1.0, -1.0, 1.0))}


def read_seg_nrrd(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict[int, tuple[str, tuple[int, int, int]]]]:
    """(labels on the file's grid, 4x4 voxel -> RAS affine, ``{label value: (name, (r, g, b))}``) of a
    ``.seg.nrrd`` with one label layer in one of NRRD's 3D anatomical spaces (:data:`NRRD_SPACES`); anything else
    (several layers, another space) is a ValueError naming the file."""
    nrrd = require_pynrrd()
    data, header = nrrd.read(str(path), index_order="F")
    space = str(header.get("space", "")).lower()
    if space not in NRRD_SPACES:
        raise ValueError(f"{path}: NRRD space {header.get('space')!r}: expected one of {sorted(NRRD_SPACES)}")
    if data.ndim != 3:
        raise ValueError(f"{path}: a label volume of shape {data.shape}: expected one 3D label layer")
    directions = np.asarray(header["space directions"], np.float64).T
    origin = np.asarray(header["space origin"], np.float64)
    to_ras = np.diag(NRRD_SPACES[space])
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = to_ras @ directions, to_ras @ origin
    segments = {}
    i = 0
    while f"Segment{i}_LabelValue" in header:
        colour = tuple(int(round(float(c) * 255)) for c in header[f"Segment{i}_Color"].split())
        segments[int(header[f"Segment{i}_LabelValue"])] = (header[f"Segment{i}_Name"], colour)
        i += 1
    return np.asarray(data), affine, segments
