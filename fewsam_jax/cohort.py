"""Folders and cohorts: which files are cases, where their label maps go, and scoring a folder of predictions.

Naming follows nnU-Net where it has a convention:

* an image ``CASE_0000.nii.gz`` (channel suffix ``_XXXX``) is case ``CASE``; its label map is
  ``CASE.nii.gz``. In a folder where every NIfTI name carries a 4-digit channel suffix (an nnU-Net
  ``imagesTr`` / ``imagesTs`` folder), only the chosen channel (default 0) is read.
* any other file ``NAME.nii.gz`` (``.nii``, ``.npy``, ``.png``, ``.jpg``) is case ``NAME``;
  a folder without such files is one DICOM series, named after the folder.
* predictions and references are matched by file name (``fewsam evaluate -ref labelsTr -pred OUT``).

A cohort is split between processes with ``num_parts``/``part_id`` (every ``num_parts``-th case of the
sorted list, starting at ``part_id``): processes sharing one embedding cache never encode the same
volume twice at once (:mod:`fewsam_jax.cache` locks each entry), and a label map is written atomically,
so a finished output is complete and ``resume=True`` (``--continue``) skips it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import queue
import re
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

import numpy as np

from fewsam_jax.export import sidecar_paths
from fewsam_jax.outputs import (
    FewSamError,
    OutputError,
    OutputExistsError,
    _check_not_input,
    _check_parent,
    check_output_file,
    write_text,
)
from fewsam_jax.provenance import LIBRARY, check_own_file

log = logging.getLogger(__name__)

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".npy", ".png", ".jpg", ".jpeg")
LABEL_SUFFIXES = (".nii.gz", ".nii")  # label maps a folder evaluation reads
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


class CohortError(FewSamError, ValueError):
    """Inputs that do not form a cohort as asked (no cases, two cases of one name, a bad part...)."""


class CaseReadError(FewSamError, ValueError):
    """A case's image could not be read or prepared; the message names the file (the reader's error is the
    ``__cause__``)."""

    def __init__(self, image: str | os.PathLike, error: BaseException):
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        super().__init__(f"{image}: cannot read this image ({type(error).__name__}: {detail})")
        self.image = Path(image)


@dataclasses.dataclass(frozen=True)
class Case:
    """One volume of a cohort: its name (the output's file name without suffix) and its image."""

    name: str
    image: Path


def split_suffix(name: str) -> tuple[str, str]:
    """(stem, suffix) of a file name with one of :data:`VOLUME_SUFFIXES` (suffix '' when none)."""
    lower = name.lower()
    for suffix in VOLUME_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)], name[-len(suffix):]
    return name, ""


def _is_volume_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and split_suffix(path.name)[1] != ""


def _folder_cases(folder: Path, channel: int) -> list[Case]:
    files = sorted(p for p in folder.iterdir() if _is_volume_file(p))
    if not files:
        if is_series_folder(folder):
            # a DICOM series: load_volume reads (and checks) the folder; "." is named as the folder it is
            return [Case(folder.resolve().name or "series", folder)]
        raise CohortError(f"{folder}: no images in this folder; expected NIfTI (.nii.gz, .nii), .npy, PNG/JPEG "
                          "files or the files of one DICOM series")
    stems = [split_suffix(p.name)[0] for p in files]
    if all(_CHANNEL.match(stem) for stem in stems):  # nnU-Net: CASE_XXXX
        wanted = f"{channel:04d}"
        cases = [Case(_CHANNEL.match(stem)["case"], p) for stem, p in zip(stems, files)
                 if _CHANNEL.match(stem)["channel"] == wanted]
        others = sorted({_CHANNEL.match(stem)["channel"] for stem in stems} - {wanted})
        if not cases:
            raise CohortError(f"{folder}: nnU-Net channel files (_XXXX) but none of channel {wanted}; "
                              f"channels present: {', '.join(others)}. Choose one with --channel")
        if others:
            log.warning("%s: using channel %s of each case; channels %s are not read", folder, wanted,
                        ", ".join(others))
        return cases
    return [Case(stem, p) for stem, p in zip(stems, files)]


def is_series_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder read as one DICOM series (files, none with a volume suffix)."""
    path = Path(path).expanduser()
    return path.is_dir() and any(p.is_file() for p in path.iterdir()) and not any(
        _is_volume_file(p) for p in path.iterdir())


def find_cases(inputs: Sequence[str | os.PathLike], channel: int = 0) -> list[Case]:
    """The cases of ``inputs`` (files and folders, see the module doc), sorted by name.

    Raises CohortError naming the path when an input is missing or two inputs give one case name.
    """
    if not inputs:
        raise CohortError("no input given; pass image files or folders (-i IN)")
    cases: list[Case] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            cases += _folder_cases(path, channel)
        elif path.is_file():
            stem, suffix = split_suffix(path.name)
            match = _CHANNEL.match(stem)
            if match and match["channel"] == f"{channel:04d}":
                stem = match["case"]
            cases.append(Case(stem or path.name, path))
        else:
            raise CohortError(f"{path}: no such file or folder")
    seen: dict[str, Path] = {}
    for case in cases:
        if case.name in seen:
            raise CohortError(f"two inputs give the case name {case.name!r} ({seen[case.name]} and {case.image}); "
                              "their label maps would have one file name. Segment them into separate folders")
        seen[case.name] = case.image
    return sorted(cases, key=lambda c: c.name)


def select_part(cases: Sequence[Case], num_parts: int = 1, part_id: int = 0) -> list[Case]:
    """Part ``part_id`` of ``num_parts`` (every ``num_parts``-th case of the sorted list from ``part_id``)."""
    if isinstance(num_parts, bool) or not isinstance(num_parts, int) or num_parts < 1:
        raise CohortError(f"--num-parts {num_parts!r}: expected an integer >= 1")
    if isinstance(part_id, bool) or not isinstance(part_id, int) or not 0 <= part_id < num_parts:
        raise CohortError(f"--part-id {part_id!r}: expected an integer from 0 to {num_parts - 1} (--num-parts {num_parts})")
    return list(sorted(cases, key=lambda c: c.name))[part_id::num_parts]


def output_path(out_dir: str | os.PathLike, case: Case, suffix: str = ".nii.gz") -> Path:
    return Path(out_dir) / f"{case.name}{suffix}"


def plan_outputs(cases: Sequence[Case], out_dir: str | os.PathLike, *, overwrite: bool = False,
                 resume: bool = False, inputs: Iterable[str | os.PathLike] = (),
                 suffix: str = ".nii.gz") -> tuple[list[tuple[Case, Path]], list[tuple[Case, Path]]]:
    """(to compute, already finished) as (case, output) pairs; checked before any compute.

    An existing output is skipped with ``resume``, replaced with ``overwrite`` when this library wrote it
    (:mod:`fewsam_jax.provenance`; another file is an error naming it) and an error otherwise (naming the first
    one and how many). No output may be an input or lie inside an input folder; the output folder is created
    when missing (never emptied: only the cases' own files are written).
    """
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir} is a file; the output of a folder or of several images is a folder")
    _check_parent(out_dir / "probe", create=True)
    inputs = list(inputs) + [case.image for case in cases]
    todo, done, existing = [], [], []
    named: dict[str, Case] = {}  # on a case-insensitive disk (macOS, Windows) A.nii.gz and a.nii.gz are one file
    for case in cases:
        other = named.setdefault(case.name.casefold(), case)
        if other is not case:
            raise CohortError(f"the cases {other.name!r} ({other.image}) and {case.name!r} ({case.image}) differ in "
                              "letter case only: on many disks their label maps would be one file. Segment them "
                              "into separate folders")
        out = output_path(out_dir, case, suffix)
        _check_not_input(out, inputs, folder_output=False)
        if out.exists() or out.is_symlink():
            if out.is_dir() or not (out.is_file() or out.is_symlink()):
                raise OutputError(f"{out} exists and is not a file; move it away or choose another output folder")
            if resume:
                done.append((case, out))
                continue
            if not overwrite:
                existing.append(out)
            else:
                check_own_file(out)
        todo.append((case, out))
    if existing:
        raise OutputExistsError(f"{existing[0]} exists ({len(existing)} of the {len(cases)} outputs exist); pass "
                                "--continue to skip finished cases, --overwrite to replace them, or choose another "
                                "output folder")
    return todo, done


# ---------------------------------------------------------------------------------------------- evaluation


def load_label_pair(pred_path: str | os.PathLike, ref_path: str | os.PathLike):
    """(prediction, reference) label maps as int64 arrays, and the reference Volume; a ValueError names the
    file when the grids differ or a map is not a label map (fractional or negative values)."""
    from fewsam_jax import metrics
    from fewsam_jax.io import load_volume
    from fewsam_jax.label_maps import same_grid

    pred, ref = load_volume(pred_path), load_volume(ref_path)
    if not same_grid(pred, ref):
        raise ValueError(f"{pred_path} (shape {pred.shape}) and {ref_path} (shape {ref.shape}) are not on one grid")
    pred_labels, ref_labels = metrics.label_map(pred.array, str(pred_path)), metrics.label_map(ref.array, str(ref_path))
    for path, labels in ((pred_path, pred_labels), (ref_path, ref_labels)):
        if labels.min() < 0:
            raise ValueError(f"{path}: a label map holds ids >= 0, but this one holds {int(labels.min())}: "
                             "an intensity image (CT in HU?) rather than a label map")
    return pred_labels, ref_labels, ref


def dataset_json_paths(folder: str | os.PathLike) -> tuple[Path, Path]:
    """Where a labels folder's nnU-Net ``dataset.json`` may be: in ``folder``, then in its parent."""
    return Path(folder) / "dataset.json", Path(folder).parent / "dataset.json"


def dataset_classes(folder: str | os.PathLike) -> dict[int, str] | None:
    """Label id -> name from the ``dataset.json`` in ``folder`` or its parent (nnU-Net v1/v2), or None."""
    for candidate in dataset_json_paths(folder):
        if candidate.is_file():
            return read_dataset_labels(candidate)
    return None


def read_dataset_labels(path: str | os.PathLike) -> dict[int, str]:
    """The classes of an nnU-Net ``dataset.json``: v2 ``{"name": id}`` or v1/MSD ``{"id": "name"}``;
    background (0) left out. A CohortError names the file and key otherwise."""
    from fewsam_jax.io import MAX_LABEL_ID

    path = Path(path)
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CohortError(f"{path}: not a readable JSON file ({err})") from None
    labels = meta.get("labels") if isinstance(meta, dict) else None
    if not isinstance(labels, dict) or not labels:
        raise CohortError(f"{path}: key 'labels' missing or empty; expected {{\"background\": 0, \"NAME\": ID, ...}}")
    classes: dict[int, str] = {}
    for key, value in labels.items():
        if isinstance(value, int) and not isinstance(value, bool):  # v2: name -> id
            label, name = value, key
        elif isinstance(value, str) and key.isdigit():  # v1 / MSD: "id" -> name
            label, name = int(key), value
        else:
            raise CohortError(f"{path}: labels[{key!r}] is {value!r}; expected a label id (nnU-Net v2 "
                              "{\"name\": id}) or a name (v1 {\"id\": \"name\"}); region-based labels are not supported")
        if not 0 <= label <= MAX_LABEL_ID:
            raise CohortError(f"{path}: labels[{key!r}]: expected a label id from 0 to {MAX_LABEL_ID} (label maps "
                              f"are written as 8- or 16-bit integers), got {label}")
        if label != 0:
            classes[label] = name
    if not classes:
        raise CohortError(f"{path}: 'labels' names no class other than the background (0)")
    return dict(sorted(classes.items()))


def _case_mean(rows: Sequence[Mapping[str, Any]], key: str) -> float | None:
    values = [row[key] for row in rows]
    return float(np.mean(values)) if values else math.nan


def evaluate_folders(ref_dir: str | os.PathLike, pred_dir: str | os.PathLike,
                     classes: Mapping[int, str] | None = None, out: str | os.PathLike | None = None,
                     overwrite: bool = False, tolerance_mm: float = 1.0) -> dict[str, Any]:
    """Score every prediction of ``pred_dir`` against the reference of the same file name in ``ref_dir``.

    Classes: ``classes``, else the ``dataset.json`` beside or above ``ref_dir``, else every id found in
    either folder. Returns (and writes to ``out``, default ``pred_dir/summary.json``; an existing one is replaced
    with ``overwrite`` when this library wrote it) ``{"writer": "fewsam_jax", "classes", "reference",
    "prediction", "num_cases", "metric_per_case": [{"case", "reference_file", "prediction_file", "metrics":
    {class: {dice, iou, hd95, surface_dice, ...}}}], "mean": {class: {dice, iou, hd95, hd95_finite,
    surface_dice}}, "foreground_mean": {...}}``. A reference without a prediction is an
    error (listing them) checked before anything is scored; predictions without a reference are ignored.
    """
    from fewsam_jax import metrics

    ref_dir, pred_dir = Path(ref_dir).expanduser(), Path(pred_dir).expanduser()
    for label, folder in (("-ref", ref_dir), ("-pred", pred_dir)):
        if not folder.is_dir():
            raise CohortError(f"{label} {folder}: not a folder; expected a folder of label maps (.nii.gz)")
    refs = {p.name: p for p in sorted(ref_dir.iterdir()) if p.is_file() and not p.name.startswith(".")
            and p.name.lower().endswith(LABEL_SUFFIXES)}
    if not refs:
        raise CohortError(f"-ref {ref_dir}: no label maps (.nii.gz, .nii) in it")
    missing = [name for name in refs if not (pred_dir / name).is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise CohortError(f"-pred {pred_dir}: {len(missing)} of the {len(refs)} references have no prediction of "
                          f"the same name ({shown})")
    out = Path(out).expanduser() if out is not None else pred_dir / "summary.json"
    check_output_file(out, overwrite=overwrite,  # dataset.json: read for the class names
                      inputs=[*refs.values(), *(pred_dir / n for n in refs), *dataset_json_paths(ref_dir)],
                      suffixes=(".json",), replace=check_own_file)
    pairs = [(name, pred_dir / name, path) for name, path in refs.items()]
    loaded = None
    if classes is None:
        classes = dataset_classes(ref_dir)
    if classes is None:  # every id of either folder: needs a first pass over the maps
        loaded, ids = [], set()
        for name, pred_path, ref_path in pairs:
            pred_labels, ref_labels, ref = load_label_pair(pred_path, ref_path)
            loaded.append((pred_labels, ref_labels, ref))
            ids |= {int(c) for c in np.unique(ref_labels)} | {int(c) for c in np.unique(pred_labels)}
        classes = {c: str(c) for c in sorted(ids - {0})}
        if not classes:
            raise CohortError(f"{ref_dir} and {pred_dir} hold no label other than 0; pass --classes ID=NAME")
    per_case = []
    for i, (name, pred_path, ref_path) in enumerate(pairs):
        pred_labels, ref_labels, ref = loaded[i] if loaded else load_label_pair(pred_path, ref_path)
        result = metrics.evaluate(pred_labels, ref_labels, ref.spacing, classes, per_slice_axis=None,
                                  tolerance_mm=tolerance_mm)
        result.pop("mean")
        per_case.append({"case": split_suffix(name)[0], "reference_file": str(ref_path),
                         "prediction_file": str(pred_path), "metrics": result})
        log.info("%s: mean Dice %.3f", name, np.mean([row["dice"] for row in result.values()]))
    mean = {}
    for class_name in classes.values():
        rows = [case["metrics"][class_name] for case in per_case]
        finite = [row for row in rows if math.isfinite(row["hd95"])]
        mean[class_name] = {"dice": _case_mean(rows, "dice"), "iou": _case_mean(rows, "iou"),
                            "hd95": _case_mean(rows, "hd95"), "hd95_finite": _case_mean(finite, "hd95"),
                            "surface_dice": _case_mean(rows, "surface_dice"),
                            "cases_missed": sum(row["pred_empty"] and not row["gt_empty"] for row in rows)}
    foreground = {key: float(np.mean([m[key] for m in mean.values()])) for key in ("dice", "iou", "surface_dice")}
    foreground["hd95"] = float(np.mean([m["hd95"] for m in mean.values()]))
    summary = {"writer": LIBRARY, "classes": {str(k): v for k, v in classes.items()}, "reference": str(ref_dir),
               "prediction": str(pred_dir), "num_cases": len(per_case), "metric_per_case": per_case,
               "mean": mean, "foreground_mean": foreground}
    write_text(out, metrics.to_json(summary) + "\n", overwrite=overwrite)
    summary["file"] = str(out)
    return summary


def segment_to_files(segmenter, image: str | os.PathLike, out: str | os.PathLike, *, dicom_seg: bool = False,
                     overwrite: bool = False, inputs: Iterable[str | os.PathLike] = (), **kwargs) -> Path:
    """``segmenter.segment_file(image, out, ...)`` (the label map, its descriptions and, with ``seg_nrrd``,
    ``CASE.seg.nrrd``) and, with ``dicom_seg``, ``CASE.seg.dcm``: a DICOM-SEG referencing the DICOM series
    ``image`` (:mod:`fewsam_jax.dicom_seg`), checked before anything is computed. Returns the label map's path."""
    if not dicom_seg:
        return segmenter.segment_file(image, out, overwrite=overwrite, **kwargs)
    from fewsam_jax.dicom_seg import check_dicom_seg_output, dicom_seg_from_label_file

    seg_path = check_dicom_seg_output(image, out, overwrite=overwrite, inputs=inputs)
    path = segmenter.segment_file(image, out, overwrite=overwrite, **kwargs)
    dicom_seg_from_label_file(path, image, segmenter.classes, seg_path, overwrite=overwrite)
    return path


def finish_dicom_seg(segmenter, image: str | os.PathLike, out: str | os.PathLike, *,
                     inputs: Iterable[str | os.PathLike] = ()) -> Path | None:
    """Resuming: write the DICOM-SEG of the finished label map ``out`` of the DICOM series ``image`` from that
    label map when a run stopped before writing it; its path, or None when it exists already."""
    from fewsam_jax.dicom_seg import check_dicom_seg_output, dicom_seg_from_label_file

    if sidecar_paths(out)["dicom"].exists():
        return None
    seg_path = check_dicom_seg_output(image, out, inputs=inputs)
    dicom_seg_from_label_file(out, image, segmenter.classes, seg_path)
    log.info("%s: DICOM-SEG written to %s from the label map", out, seg_path)
    return seg_path


def segment_cases(segmenter, cases: Sequence[Case], out_dir: str | os.PathLike, *, cache: Any = None,
                  postprocess: bool = False, overwrite: bool = False, resume: bool = False, progress: bool = True,
                  inputs: Iterable[str | os.PathLike] = (), seg_nrrd: bool = False,
                  dicom_seg: bool = False) -> dict[str, list[Path]]:
    """Segment ``cases`` with a :class:`~fewsam_jax.fewshot.FewShotSegmenter` into ``out_dir/CASE.nii.gz``.

    Every output is checked first (:func:`plan_outputs`); with ``resume`` finished cases are skipped. Beside
    each label map: its class names and colours (``CASE.labels.txt``, ``CASE.labels.json``), with
    ``seg_nrrd``, ``CASE.seg.nrrd`` for 3D Slicer and, with ``dicom_seg`` (every case a DICOM series),
    ``CASE.seg.dcm``, a DICOM-SEG; resuming, a finished case without its DICOM-SEG gets it from its label map.
    Returns ``{"written": [...], "skipped": [...]}``.
    """
    todo, done = plan_outputs(cases, out_dir, overwrite=overwrite, resume=resume, inputs=inputs)
    Path(out_dir).expanduser().mkdir(parents=True, exist_ok=True)
    for case, out in todo:  # the files beside every label map too, before the first case is computed
        segmenter.check_outputs(case.image, out, overwrite=overwrite, seg_nrrd=seg_nrrd, replace_own=resume)
    if dicom_seg:
        from fewsam_jax.dicom_seg import check_dicom_seg_output

        for case, out in todo:  # written after its label map: beside a case still to do, it is not from our run
            check_dicom_seg_output(case.image, out, overwrite=overwrite, inputs=inputs)
        for case, out in done:
            if not sidecar_paths(out)["dicom"].exists():
                check_dicom_seg_output(case.image, out, inputs=inputs)
    for case, out in done:
        log.info("%s: %s exists, skipped (--continue)", case.name, out)
        if dicom_seg:
            finish_dicom_seg(segmenter, case.image, out, inputs=inputs)
    written = []
    for i, (case, out) in enumerate(todo, 1):
        log.info("[%d/%d] %s: segmenting %s", i, len(todo), case.name, case.image)
        # resuming, a case still to do has no label map: a .seg.nrrd of ours beside it is from the interrupted run
        written.append(segment_to_files(segmenter, case.image, out, overwrite=overwrite, replace_own=resume,
                                        cache=cache, seg_nrrd=seg_nrrd, dicom_seg=dicom_seg, inputs=inputs,
                                        postprocess=postprocess, progress=progress))
        log.info("[%d/%d] %s: labels written to %s", i, len(todo), case.name, out)
    return {"written": written, "skipped": [out for _, out in done]}


T = TypeVar("T")
R = TypeVar("R")
_DONE = object()


def read_ahead(items: Iterable[T], read: Callable[[T], R], depth: int = 1,
               name: Callable[[T], str | os.PathLike] = str) -> Iterator[tuple[T, R]]:
    """``(item, read(item))`` for each of ``items`` in order, ``read`` running in one background thread up to
    ``depth`` items ahead of the consumer, so reading the next volume overlaps whatever the consumer does
    with the current one (encoding it). At most ``depth`` results wait in the queue, one more is being read
    and one is with the consumer: memory stays bounded whatever the number of items.

    An exception in ``read`` is raised in the consumer, at that item, as :class:`CaseReadError` naming
    ``name(item)`` (KeyboardInterrupt and other BaseExceptions pass unchanged); items after it are not
    read. Closing the generator early (``break``, an error in the consumer) stops the thread.
    """
    if int(depth) < 1:
        raise ValueError(f"depth: expected a positive number of items to read ahead, got {depth}")
    slots: queue.Queue = queue.Queue(maxsize=int(depth))
    stop = threading.Event()

    def put(value) -> bool:
        while not stop.is_set():
            try:
                slots.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def worker() -> None:
        item = None
        try:
            for item in items:
                if stop.is_set() or not put((item, read(item), None)):
                    return
        except BaseException as err:  # handed to the consumer, which raises it with the file's name
            put((item, None, err))
            return
        put(_DONE)

    thread = threading.Thread(target=worker, name="fewsam-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            try:
                got = slots.get(timeout=0.5)
            except queue.Empty:
                if not thread.is_alive() and slots.empty():
                    raise RuntimeError("read_ahead: the reader thread ended without a result") from None
                continue
            if got is _DONE:
                return
            item, result, error = got
            if isinstance(error, Exception):
                raise CaseReadError(name(item), error) from error
            if error is not None:
                raise error
            yield item, result
    finally:
        stop.set()
        thread.join()


def embed_cases(cases: Sequence[Case], model: Any, *, cache: Any = None, axis: int = 2,
                intensity: Any = "percentile", batch_size: int = 4, dtype: str = "float32",
                storage: str | None = None, stage_inputs: bool = False, prefetch: int = 1,
                progress: bool = True) -> Iterator[tuple[Case, Any]]:
    """Embed every case's slices into the cache (:func:`fewsam_jax.cache.embed_volume`), yielding
    ``(case, entry)`` in order.

    ``model``: a ``Sam``, a SliceEncoder or a LazyModel (loaded at the first missing slice). With
    ``prefetch`` >= 1, a background thread reads and normalises the next ``prefetch`` volumes
    (:func:`fewsam_jax.cache.prepare_volume`) while the current one is encoded (:func:`read_ahead`); 0 reads
    each volume in turn. Both give the same cache entries. ``stage_inputs``: also store each slice's
    last-stage input (:func:`~fewsam_jax.cache.embed_volume`; a staged encoder only, checked before the first
    volume is read). A case that cannot be read raises :class:`CaseReadError` naming its image."""
    from fewsam_jax.cache import check_stage_model, embed_volume, prepare_volume  # lazy: importable without jax

    if stage_inputs:
        check_stage_model(model)

    def prepare(case: Case):
        return prepare_volume(case.image, model, axis=axis, intensity=intensity, dtype=dtype)

    if prefetch:
        prepared = read_ahead(cases, prepare, depth=prefetch, name=lambda case: case.image)
    else:
        prepared = ((case, _read_now(prepare, case)) for case in cases)
    for case, volume in prepared:
        yield case, embed_volume(volume, model, axis=axis, intensity=intensity, cache=cache,
                                 batch_size=batch_size, dtype=dtype, storage=storage, stage_inputs=stage_inputs,
                                 progress=progress)


def _read_now(prepare: Callable[[Case], R], case: Case) -> R:
    try:
        return prepare(case)
    except Exception as err:
        raise CaseReadError(case.image, err) from err
