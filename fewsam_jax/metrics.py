"""Segmentation metrics: Dice, IoU, HD95 and normalised surface Dice, per volume and per slice.

Pure numpy/scipy (no JAX): metrics run on host label maps after inference.

Conventions (each function repeats the ones it uses):

* Masks are boolean arrays of any dimension ``(*S)``; label maps are integer arrays ``(*S)``.
  ``spacing`` gives the voxel size in mm along each of the ``len(S)`` axes.
* Empty masks: Dice/IoU are 1.0 when both masks are empty and 0.0 when exactly one is.
  HD95 is 0.0 when both are empty and ``inf`` when exactly one is (``to_json`` writes ``null``);
  surface Dice is 1.0 when both are empty and 0.0 when exactly one is. :func:`evaluate` flags
  each class with ``gt_empty`` / ``pred_empty`` so these conventional values are never mistaken
  for measured ones, and its mean HD95 is ``inf`` when any class's is (the classes are named).
* Label maps hold integer ids: integer or bool arrays, or float arrays whose values are all
  integral (``float32`` label files are common); anything else is refused (:func:`label_map`).
* Surfaces are sets of boundary voxels, ``mask & ~binary_erosion(mask, structure)``, with voxels on
  the array border counting as boundary. The default structure has full connectivity (3x3x3 in 3D):
  a voxel touching the background through a face, an edge or a corner is on the boundary. On
  irregular shapes this tracks the surfel-based surface Dice of DeepMind's surface-distance (the
  reference implementation of Nikolov et al.) to ~0.02, where face connectivity under-counts by ~0.1
  at a 1.5 mm tolerance. ``connectivity=1`` (face neighbours only) reproduces MONAI's and medpy's
  edges, hence MONAI's HD95 and surface Dice, exactly.
  Distances are Euclidean, in mm, between boundary voxel centres.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import ndimage


def _masks(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both inputs as boolean arrays of one shape ``(*S)``; ``ValueError`` naming both shapes otherwise."""
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt shapes differ: pred {pred.shape} vs gt {gt.shape}")
    return pred, gt


def _overlap(inter: np.ndarray, p: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dice and IoU from voxel counts (arrays of any shape); 1.0 where both masks are empty."""
    total = p + g
    union = total - inter
    dice = np.where(total == 0, 1.0, 2.0 * inter / np.maximum(total, 1))
    iou = np.where(union == 0, 1.0, inter / np.maximum(union, 1))
    return dice, iou


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice coefficient ``2|P&G| / (|P|+|G|)`` of two masks ``(*S)``; 1.0 if both are empty."""
    pred, gt = _masks(pred, gt)
    return float(_overlap(np.sum(pred & gt), np.sum(pred), np.sum(gt))[0])


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union ``|P&G| / |P or G|`` of two masks ``(*S)``; 1.0 if both are empty."""
    pred, gt = _masks(pred, gt)
    return float(_overlap(np.sum(pred & gt), np.sum(pred), np.sum(gt))[1])


def _spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    """``spacing`` (one value or ``ndim`` values, mm) as ``ndim`` positive floats."""
    arr = np.asarray(spacing, dtype=float)
    arr = np.full(ndim, arr) if arr.ndim == 0 else arr
    if arr.shape != (ndim,) or not np.all(arr > 0):
        raise ValueError(f"spacing must be {ndim} positive values, got {tuple(arr.ravel().tolist())}")
    return tuple(arr.tolist())


def _boundary(mask: np.ndarray, connectivity: int) -> np.ndarray:
    """Boundary voxels ``(*S)`` of a mask ``(*S)``: those removed by one erosion (border counts as outside)."""
    structure = ndimage.generate_binary_structure(mask.ndim, connectivity)
    return mask & ~ndimage.binary_erosion(mask, structure, border_value=0)


def surface_distances(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float],
    connectivity: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm between two masks ``(*S)``.

    Args:
      pred, gt: boolean masks of one shape ``(*S)``.
      spacing: voxel size in mm, ``len(S)`` values (or one value for all axes).
      connectivity: connectivity of the erosion structure defining boundary voxels, 1..ndim;
        None (default) means full connectivity (ndim).

    Returns:
      ``(pred_to_gt, gt_to_pred)``: float64 arrays ``(Bp,)`` and ``(Bg,)`` holding, for every boundary
      voxel of ``pred`` (resp. ``gt``), the distance to the nearest boundary voxel of the other mask,
      ``inf`` when the other mask is empty. An empty mask has no boundary voxels (a ``(0,)`` array).
    """
    pred, gt = _masks(pred, gt)
    spacing = _spacing(spacing, pred.ndim)
    union = pred | gt
    if not union.any():
        return np.zeros(0), np.zeros(0)
    # Cropping to the union's bounding box is exact: every boundary voxel lies inside it, Euclidean
    # distances do not depend on the box, and voxels beyond it are background as the border is.
    box = ndimage.find_objects(union.astype(np.uint8))[0]
    connectivity = pred.ndim if connectivity is None else connectivity
    surf_p, surf_g = _boundary(pred[box], connectivity), _boundary(gt[box], connectivity)

    def directed(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        if not dst.any():
            return np.full(int(src.sum()), np.inf)
        return ndimage.distance_transform_edt(~dst, sampling=spacing)[src]

    return directed(surf_p, surf_g), directed(surf_g, surf_p)


def _hd95(pred_to_gt: np.ndarray, gt_to_pred: np.ndarray) -> float:
    if pred_to_gt.size == 0 and gt_to_pred.size == 0:
        return 0.0
    if pred_to_gt.size == 0 or gt_to_pred.size == 0:
        return math.inf
    return float(max(np.percentile(pred_to_gt, 95), np.percentile(gt_to_pred, 95)))


def _nsd(pred_to_gt: np.ndarray, gt_to_pred: np.ndarray, tolerance_mm: float) -> float:
    n = pred_to_gt.size + gt_to_pred.size
    if n == 0:
        return 1.0
    return float((np.sum(pred_to_gt <= tolerance_mm) + np.sum(gt_to_pred <= tolerance_mm)) / n)


def hd95(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], connectivity: int | None = None
) -> float:
    """95th-percentile Hausdorff distance in mm between two masks ``(*S)``.

    Convention of MONAI (``compute_hausdorff_distance(percentile=95)``) and DeepMind's
    surface-distance (``compute_robust_hausdorff(d, 95)``): the larger of the two directed 95th
    percentiles, ``max(P95(pred->gt), P95(gt->pred))`` (numpy's linear interpolation; surface-distance
    additionally weights by surfel area). medpy instead takes the 95th percentile of both directed sets
    pooled, which is never larger. Both empty -> 0.0; exactly one empty -> ``inf``.
    ``spacing``/``connectivity`` as in :func:`surface_distances`.
    """
    return _hd95(*surface_distances(pred, gt, spacing, connectivity))


def surface_dice(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float],
    tolerance_mm: float = 1.0,
    connectivity: int | None = None,
) -> float:
    """Normalised surface Dice (Nikolov et al., 2021) at ``tolerance_mm`` between two masks ``(*S)``.

    Approximated on boundary voxels (each counts as one surface element, as MONAI's
    ``compute_surface_dice(use_subvoxels=False)``): the number of boundary voxels of either mask lying
    within ``tolerance_mm`` (inclusive) of the other's boundary, over the total number of boundary
    voxels of both. Both empty -> 1.0; exactly one empty -> 0.0.
    ``spacing``/``connectivity`` as in :func:`surface_distances`.
    """
    return _nsd(*surface_distances(pred, gt, spacing, connectivity), tolerance_mm)


def per_slice_overlap(pred: np.ndarray, gt: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2D Dice and IoU of every slice along ``axis`` of two masks ``(*S)``: three ``(S[axis],)`` arrays,
    Dice and IoU (1.0 where both slices are empty, as :func:`dice`) and "both empty" (bool)."""
    pred, gt = _masks(pred, gt)
    p = np.moveaxis(pred, axis, 0).reshape(pred.shape[axis], -1)
    g = np.moveaxis(gt, axis, 0).reshape(gt.shape[axis], -1)
    ps, gs = p.sum(1), g.sum(1)
    d, j = _overlap((p & g).sum(1), ps, gs)
    return d, j, (ps + gs) == 0


def _per_slice(pred: np.ndarray, gt: np.ndarray, axis: int) -> list[dict[str, Any]]:
    """:func:`per_slice_overlap` as ``S[axis]`` records {"slice", "dice", "iou", "empty"}."""
    d, j, empty = per_slice_overlap(pred, gt, axis)
    return [
        {"slice": k, "dice": float(d[k]), "iou": float(j[k]), "empty": bool(empty[k])}
        for k in range(len(d))
    ]


LABEL_ID_TOLERANCE = 0.01
"""How far from a whole number a float label value may lie and still be read as that id: label files stored as
scaled integers (NIfTI ``scl_slope``) read back as 1.0000153 or 0.99608; a probability map or an intensity image has
values far from any whole number."""


def label_map(array: np.ndarray, name: str = "label map") -> np.ndarray:
    """``array`` as an integer (int64) label map (:func:`integer_labels`)."""
    return integer_labels(array, name).astype(np.int64, copy=False)


def integer_labels(array: np.ndarray, name: str = "label map") -> np.ndarray:
    """``array`` as integer label ids: integer/bool arrays as they are (no copy), float arrays rounded to the nearest
    whole number (int64) when every value is finite and within ``LABEL_ID_TOLERANCE`` of one; ``ValueError`` naming
    ``name`` otherwise. What every label reader and writer uses, so none truncates 0.996 to 0.

    A float image with fractional values is an intensity image or a probability map, not labels;
    rounding it would score garbage without a word.
    """
    array = np.asarray(array)
    if array.dtype == bool or np.issubdtype(array.dtype, np.integer):
        return array
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{name}: a label map must hold integer ids, got dtype {array.dtype}")
    finite = np.isfinite(array)
    values = np.where(finite, array, 0)
    bad = ~finite | (np.abs(values - np.rint(values)) > LABEL_ID_TOLERANCE) | (np.abs(values) >= 2.0**63)
    if bad.any():
        example = array[bad].ravel()[0]
        raise ValueError(
            f"{name}: a label map must hold integer ids, but {int(bad.sum())} of {array.size} voxels are not "
            f"integers (e.g. {float(example)!r}, dtype {array.dtype}); is it an intensity image or a probability "
            "map? Threshold or argmax it into integer labels first"
        )
    return np.rint(values).astype(np.int64)


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def evaluate(
    pred_labels: np.ndarray,
    gt_labels: np.ndarray,
    spacing: Sequence[float],
    classes: Mapping[int, str],
    per_slice_axis: int | None = 2,
    tolerance_mm: float = 1.0,
    connectivity: int | None = None,
) -> dict[str, Any]:
    """All metrics for every class of two label maps ``(*S)``.

    Args:
      pred_labels, gt_labels: integer label maps of one shape ``(*S)`` (``ValueError`` otherwise; float
        arrays are accepted when every value is integral, see :func:`label_map`).
      spacing: voxel size in mm, ``len(S)`` values.
      classes: label id -> class name. Label ids absent from ``classes`` (e.g. background 0, or
        structures not under evaluation) are ignored, in both maps. No name may be ``"mean"``.
      per_slice_axis: axis along which 2D per-slice Dice/IoU are listed; None skips them (and the
        ``"per_slice"`` key).
      tolerance_mm: surface Dice tolerance.
      connectivity: boundary definition, as in :func:`surface_distances`.

    Returns:
      ``{name: {"dice", "iou", "hd95", "surface_dice", "pred_voxels", "gt_voxels", "gt_empty",
      "pred_empty", "per_slice": [{"slice": k, "dice", "iou", "empty"}, ...]}, ..., "mean": {...}}``.
      Volume conventions are those of :func:`dice`, :func:`hd95`, :func:`surface_dice`: a class absent
      from both maps (``gt_empty`` and ``pred_empty``) scores Dice 1, HD95 0; absent from one, Dice 0,
      HD95 ``inf``. Per-slice entries of slices where both masks are empty have ``dice == iou == 1.0``
      and ``"empty": True`` (``False`` elsewhere); filter them out to average over informative slices
      only. ``"mean"`` averages dice, iou and surface_dice over classes; its ``"hd95"`` averages every
      class, so it is ``inf`` when a structure is missed or hallucinated: those classes are listed in
      ``"hd95_infinite_classes"``, and ``"hd95_finite"`` averages the ``"hd95_finite_classes"`` others
      (``nan`` when there is none).
      Values are Python floats/ints/bools (``inf``/``nan`` possible): use :func:`to_json` to serialise.
    """
    pred_labels, gt_labels = label_map(pred_labels, "pred_labels"), label_map(gt_labels, "gt_labels")
    if pred_labels.shape != gt_labels.shape:
        raise ValueError(f"pred and gt shapes differ: pred {pred_labels.shape} vs gt {gt_labels.shape}")
    if "mean" in classes.values():
        raise ValueError("'mean' is reserved and cannot be a class name")
    spacing = _spacing(spacing, pred_labels.ndim)
    result: dict[str, Any] = {}
    for label, name in classes.items():
        pred, gt = pred_labels == label, gt_labels == label
        d_pg, d_gp = surface_distances(pred, gt, spacing, connectivity)
        entry = {
            "dice": dice(pred, gt),
            "iou": iou(pred, gt),
            "hd95": _hd95(d_pg, d_gp),
            "surface_dice": _nsd(d_pg, d_gp, tolerance_mm),
            "pred_voxels": int(pred.sum()),
            "gt_voxels": int(gt.sum()),
            "gt_empty": not gt.any(),
            "pred_empty": not pred.any(),
        }
        if per_slice_axis is not None:
            entry["per_slice"] = _per_slice(pred, gt, per_slice_axis)
        result[name] = entry
    entries = list(result.values())
    finite_hd = [e["hd95"] for e in entries if math.isfinite(e["hd95"])]
    infinite_hd = [name for name, e in result.items() if not math.isfinite(e["hd95"])]
    result["mean"] = {key: _mean([e[key] for e in entries]) for key in ("dice", "iou", "surface_dice")}
    result["mean"].update(
        hd95=_mean([e["hd95"] for e in entries]),  # inf as soon as one class is missed: never dropped
        hd95_finite=_mean(finite_hd),
        hd95_finite_classes=len(finite_hd),
        hd95_infinite_classes=infinite_hd,
    )
    return result


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def to_json(result: Mapping[str, Any], indent: int | None = 2) -> str:
    """Strict JSON text of an :func:`evaluate` result; ``inf``/``nan`` become ``null``."""
    return json.dumps(_jsonable(result), indent=indent, allow_nan=False)
