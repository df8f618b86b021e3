"""DICOM-SEG: a label map of a DICOM series as a DICOM Segmentation object (needs ``highdicom``).

:func:`write_dicom_seg` writes one BINARY segmentation instance that references every image of the source
series (same study, same frame of reference), one segment per class: the class name is the segment label
and its colour the one :mod:`fewsam_jax.export` gives it in the ITK-SNAP, JSON and ``.seg.nrrd`` files. The
property codes are generic (SNOMED CT "Anatomical Structure"): the library knows a class by its name only.
Segments are numbered 1..K in class-id order; each carries the tracking id ``fewsam_jax label ID``, from
which :func:`read_dicom_seg` restores the label ids. Frames with no voxel of a class are omitted, as
highdicom does by default.

Anonymised series sometimes carry empty UIDs. An empty SOP Instance / SOP Class UID is taken from the
file's meta header (the same identifier); an empty Study or Series Instance UID is replaced by one derived
from the series' frame of reference and image UIDs (the same every time) and logged as a warning, since the
segmentation then cannot be linked to the images in a PACS.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

import numpy as np

from fewsam_jax.export import ExportError, check_class_ids, class_colours, grid_labels
from fewsam_jax.io import Volume, dicom_series_files
from fewsam_jax.outputs import check_output_file, write_file
from fewsam_jax.provenance import LIBRARY, check_own_file

log = logging.getLogger(__name__)

TRACKING_PREFIX = "fewsam_jax label "
SERIES_NUMBER = 9901  # the segmentation's series number (a series of its own in the study)


def require_highdicom():
    try:
        import highdicom
    except ModuleNotFoundError:
        raise ExportError("writing DICOM-SEG needs highdicom: pip install highdicom "
                          "(or 'fewsam_jax[dicom]')") from None
    return highdicom


def _version() -> str:
    try:
        return metadata.version("fewsam_jax")
    except metadata.PackageNotFoundError:
        return "unknown"


def series_headers(series: str | os.PathLike) -> list:
    """The headers (pydicom datasets without pixel data) of the DICOM series at ``series`` (its folder or
    one of its files), in the order of its source grid's slice axis (:func:`fewsam_jax.io.dicom_series_files`),
    with empty UIDs filled in as the module doc says."""
    import pydicom
    from pydicom.uid import generate_uid

    files = dicom_series_files(series)
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    for f, ds in zip(files, headers):
        meta = getattr(ds, "file_meta", None)
        for tag, meta_tag in (("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
                              ("SOPClassUID", "MediaStorageSOPClassUID")):
            if not str(ds.get(tag, "") or "").strip():
                value = str(meta.get(meta_tag, "") or "").strip() if meta is not None else ""
                if not value:
                    raise ExportError(f"{f}: no {tag} (nor {meta_tag} in its meta header); a DICOM-SEG must "
                                      "reference every source image by its UID")
                setattr(ds, tag, value)
        if not str(ds.get("FrameOfReferenceUID", "") or "").strip():
            raise ExportError(f"{f}: no FrameOfReferenceUID; a DICOM-SEG shares its source images' frame of "
                              "reference")
    seed = [str(headers[0].FrameOfReferenceUID), *sorted(str(ds.SOPInstanceUID) for ds in headers)]
    for tag in ("StudyInstanceUID", "SeriesInstanceUID"):
        values = {str(ds.get(tag, "") or "").strip() for ds in headers}
        if values == {""}:
            uid = generate_uid(entropy_srcs=[tag, *seed])
            log.warning("%s: the series has no %s; the DICOM-SEG references %s, derived from its image UIDs, "
                        "and will not be linked to the images in a PACS", series, tag, uid)
            for ds in headers:
                setattr(ds, tag, uid)
        elif len(values) > 1:
            raise ExportError(f"{series}: the images of one series carry different {tag}s "
                              f"({', '.join(sorted(values))}); expected one")
    return headers


def _check_grid(headers: list, like: Volume, series) -> None:
    """``like``'s source grid must be the series' (columns, rows, images), starting at the first image."""
    first = headers[0]
    grid = (int(first.Columns), int(first.Rows), len(headers))
    if tuple(like.source_shape) != grid:
        raise ExportError(f"{series}: the label map's source grid {tuple(like.source_shape)} is not this DICOM "
                          f"series' grid {grid} (columns, rows, images); pass the Volume read from the series")
    iop = np.asarray(first.ImageOrientationPatient, np.float64)
    row_spacing, column_spacing = (float(v) for v in first.PixelSpacing)
    first_pos = np.asarray(first.ImagePositionPatient, np.float64)
    last_pos = np.asarray(headers[-1].ImagePositionPatient, np.float64)
    expected = np.eye(4)  # voxel (column, row, image) -> LPS, as fewsam_jax.io reads the series
    expected[:3, 0], expected[:3, 1], expected[:3, 3] = iop[:3] * column_spacing, iop[3:] * row_spacing, first_pos
    expected[:3, 2] = (last_pos - first_pos) / max(len(headers) - 1, 1)
    got = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(like.source_affine, np.float64)
    compared = [0, 1, 2, 3] if len(headers) > 1 else [0, 1, 3]  # one image: no slice step to compare
    if not np.allclose(got[:3, compared], expected[:3, compared], atol=1e-2):
        raise ExportError(f"{series}: the label map's grid (voxel -> LPS {np.round(got[:3], 3).tolist()}) is not this "
                          f"DICOM series' grid ({np.round(expected[:3], 3).tolist()}); pass the Volume read from the "
                          "series, or a label map written on its grid")


def write_dicom_seg(labels: np.ndarray, like: Volume, path: str | os.PathLike, classes: Mapping[int, str], *,
                    series: str | os.PathLike | None = None, overwrite: bool = False,
                    series_description: str = "fewsam_jax segmentation") -> Path:
    """Write ``labels`` (X, Y, Z ids on ``like``'s canonical grid, ``like`` read from a DICOM series) as a
    DICOM-SEG referencing that series (``series``: its folder or one of its files; default ``like.source``).

    ``path`` is never an input (``like.source``, ``series``, or inside the series' folder); an existing file is
    replaced only with ``overwrite``. Raises ExportError when highdicom is missing, the series is not ``like``'s
    grid, or ``labels`` holds an id that is not a class (0 is the background).
    """
    hd = require_highdicom()
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    classes = check_class_ids(classes)
    if not classes:
        raise ExportError(f"{path}: classes is empty; expected at least one {{id: name}}")
    labels = grid_labels(labels, like, path)
    series = like.source if series is None else series
    if series is None:
        raise ExportError(f"{path}: the volume was not read from a file; pass series= (the DICOM series folder)")
    check_output_file(path, overwrite=overwrite, inputs=[like.source, series])
    headers = series_headers(series)
    _check_grid(headers, like, series)
    ids = np.unique(labels)
    stray = sorted(int(v) for v in ids if v != 0 and int(v) not in classes)
    if stray:
        raise ExportError(f"{path}: label values {stray} are not among the classes {sorted(classes)}")
    numbers = np.zeros(int(max(ids.max(), max(classes))) + 1, np.uint16)
    for number, class_id in enumerate(classes, 1):
        numbers[class_id] = number
    # source grid (columns, rows, images) -> frames (images, rows, columns), one per source image
    frames = numbers[like.to_source(labels).astype(np.int64)].transpose(2, 1, 0)
    frames = np.ascontiguousarray(frames.astype(np.uint8 if len(classes) < 256 else np.uint16))
    colours = class_colours(classes)
    algorithm = hd.AlgorithmIdentificationSequence(name="fewsam_jax", version=_version(),
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number, segment_label=name[:64],
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=codes.SCT.AnatomicalStructure,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
            tracking_uid=generate_uid(), tracking_id=f"{TRACKING_PREFIX}{class_id}",
            display_color=hd.color.CIELabColor.from_rgb(*colours[class_id]))
        for number, (class_id, name) in enumerate(classes.items(), 1)
    ]
    seg = hd.seg.Segmentation(
        source_images=headers, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=generate_uid(), series_number=SERIES_NUMBER,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer=LIBRARY,  # the library's mark
        manufacturer_model_name="fewsam_jax few-shot SAM", software_versions=_version(),
        device_serial_number="0", series_description=series_description[:64],
        omit_empty_frames=bool(frames.any()))  # an empty map keeps its frames: a SEG needs at least one
    path = Path(path)
    with write_file(path, overwrite=overwrite) as tmp:
        seg.save_as(tmp)
    return path


def read_dicom_seg(path: str | os.PathLike, series: str | os.PathLike
                   ) -> tuple[np.ndarray, dict[int, tuple[str, tuple[int, int, int]]]]:
    """(labels on ``series``' source grid (columns, rows, images), ``{label id: (name, (r, g, b))}``) of a
    DICOM-SEG referencing the DICOM series ``series``: the layout of the NIfTI label map written beside it.

    Label ids come from the segments' ``fewsam_jax label ID`` tracking ids (segment numbers otherwise).
    """
    hd = require_highdicom()
    seg = hd.seg.segread(str(path))
    headers = series_headers(series)
    segments, ids = {}, {}
    for number in seg.segment_numbers:
        item = seg.get_segment_description(number)
        tracking = str(item.get("TrackingID", "") or "")
        class_id = int(tracking[len(TRACKING_PREFIX):]) if tracking.startswith(TRACKING_PREFIX) else int(number)
        colour = (hd.color.CIELabColor.from_dicom_value(item.RecommendedDisplayCIELabValue).to_rgb()
                  if "RecommendedDisplayCIELabValue" in item else (0, 0, 0))
        segments[class_id] = (str(item.SegmentLabel), tuple(int(c) for c in colour))
        ids[int(number)] = class_id
    uids = [str(ds.SOPInstanceUID) for ds in headers]
    frames = seg.get_pixels_by_source_instance(uids, combine_segments=True, assert_missing_frames_are_empty=True)
    lookup = np.zeros(max(ids) + 1, np.int32)
    for number, class_id in ids.items():
        lookup[number] = class_id
    return lookup[np.asarray(frames, np.int64)].transpose(2, 1, 0), dict(sorted(segments.items()))


def check_dicom_seg_output(image: str | os.PathLike, label_path: str | os.PathLike, *, overwrite: bool = False,
                           inputs=()) -> Path:
    """Check, before anything is computed, that a DICOM-SEG can be written beside ``label_path``
    (``CASE.seg.dcm``) for ``image``: highdicom is installed, ``image`` is a DICOM series (folder or one of
    its files) whose headers carry what a DICOM-SEG references (:func:`series_headers`: reads no pixel data),
    and the output may be written (:func:`fewsam_jax.outputs.check_output_file`). Returns its path."""
    from fewsam_jax.export import sidecar_paths
    from fewsam_jax.io import VolumeError

    require_highdicom()
    try:
        dicom_series_files(image)
    except VolumeError as e:
        raise ExportError(f"dicom_seg (--dicom-seg) needs a DICOM series as input; {e}") from None
    series_headers(image)  # missing UIDs or a series of several studies: now, not after segmenting
    return check_output_file(sidecar_paths(label_path)["dicom"], overwrite=overwrite, inputs=[image, *inputs],
                             replace=check_own_file)


def dicom_seg_from_label_file(label_path: str | os.PathLike, series: str | os.PathLike, classes: Mapping[int, str],
                              out: str | os.PathLike | None = None, *, overwrite: bool = False) -> Path:
    """Write the label map ``label_path`` (a NIfTI on the grid of the DICOM series ``series``, as
    ``fewsam segment`` writes it) as a DICOM-SEG referencing that series: ``out``, by default ``CASE.seg.dcm``
    beside the label map. Reads no pixel data of the series."""
    from fewsam_jax.export import sidecar_paths
    from fewsam_jax.io import load_volume
    from fewsam_jax.label_maps import read_labels

    out = sidecar_paths(label_path)["dicom"] if out is None else Path(out)
    like = load_volume(label_path)  # its source grid is the series' (save_labels writes the source affine)
    try:
        labels = read_labels(like)
    except ValueError as err:  # a probability map, say: refused as write_dicom_seg refuses it
        raise ExportError(str(err)) from None
    return write_dicom_seg(labels, like, out, classes, series=series, overwrite=overwrite)
