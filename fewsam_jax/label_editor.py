"""A label volume edited slice by slice: brush and eraser strokes, masks written in, undo and redo.

The state behind ``widgets.SliceAnnotator``, with no UI: every method is a plain call on arrays.

Conventions: ``labels`` is (X, Y, Z) int32 on the volume's canonical grid, 0 = background; a slice
is ``get_slices(labels, axis)[i]`` (a writable (H, W) view, see :meth:`LabelEditor.slice_labels`);
coordinates are (row, col) pixels of that slice (pixel centres are integers, floats allowed).

Rules:
  * brush: every pixel whose centre lies within ``radius`` of the stroke's polyline (and the pixel
    under each point) becomes the class, whatever it was before;
  * eraser: the same pixels become 0 whatever their class;
  * :meth:`LabelEditor.paint` (an accepted SAM proposal) writes a mask into the class, overwriting;
  * a slice joins ``labelled_slices`` when a brush stroke or a painted mask puts a pixel on it, or
    when it is marked empty (all 0, kept as a negative example); :meth:`LabelEditor.clear` sets it
    to 0 and removes it; the eraser never adds or removes a slice;
  * undo/redo: per slice, over every change of the slice's labels or labelled state, ``history``
    steps deep; a new change drops the slice's redo steps.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence

import numpy as np

from fewsam_jax.io import AXIS_NAMES, check_axis, slice_view
from fewsam_jax.label_maps import label_ids


def check_classes(classes: Mapping[int, str]) -> dict[int, str]:
    """``classes`` as {int id: str name} sorted by id; ValueError unless ids are 1..32767 and it is non-empty."""
    if not isinstance(classes, Mapping) or not classes:
        raise ValueError(f"classes: expected a non-empty {{label id: name}} dict, got {classes!r}")
    out = {}
    for key, name in classes.items():
        if isinstance(key, bool) or not isinstance(key, (int, np.integer)) or not 0 < key < 2**15:
            raise ValueError(f"classes: label ids must be integers 1..32767 (0 is background), got {key!r}")
        out[int(key)] = str(name)
    return dict(sorted(out.items()))


def brush_mask(shape: tuple[int, int], points, radius: float) -> np.ndarray:
    """(H, W) bool: pixels whose centre is within ``radius`` of the polyline through ``points``
    ((P, 2) row, col), plus the pixel nearest each point. Segments are swept continuously, so a
    fast stroke with far-apart points leaves no gaps."""
    h, w = shape
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    mask = np.zeros((h, w), bool)
    pairs = itertools.pairwise(pts) if len(pts) > 1 else [(pts[0], pts[0])]
    for a, b in pairs:
        r0 = max(int(np.floor(min(a[0], b[0]) - radius)), 0)
        r1 = min(int(np.ceil(max(a[0], b[0]) + radius)), h - 1)
        c0 = max(int(np.floor(min(a[1], b[1]) - radius)), 0)
        c1 = min(int(np.ceil(max(a[1], b[1]) + radius)), w - 1)
        if r0 > r1 or c0 > c1:
            continue
        rows, cols = np.mgrid[r0:r1 + 1, c0:c1 + 1].astype(np.float64)
        d = b - a
        length2 = float(d @ d)
        t = 0.0 if length2 == 0 else np.clip(((rows - a[0]) * d[0] + (cols - a[1]) * d[1]) / length2, 0, 1)
        dist2 = (rows - a[0] - t * d[0]) ** 2 + (cols - a[1] - t * d[1]) ** 2
        mask[r0:r1 + 1, c0:c1 + 1] |= dist2 <= radius * radius + 1e-9
    nearest = np.rint(pts).astype(np.int64)
    inside = (nearest[:, 0] >= 0) & (nearest[:, 0] < h) & (nearest[:, 1] >= 0) & (nearest[:, 1] < w)
    mask[nearest[inside, 0], nearest[inside, 1]] = True
    return mask


def check_points(points) -> np.ndarray:
    """``points`` as (P, 2) float64 (row, col), P >= 1 and finite; a single (row, col) is one point."""
    pts = np.asarray(points, np.float64)
    if pts.ndim == 1 and pts.shape == (2,):
        pts = pts[None]
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) == 0:
        raise ValueError(f"points: expected a non-empty (P, 2) sequence of (row, col), got shape {pts.shape}")
    if not np.isfinite(pts).all():
        raise ValueError("points: contains NaN or Inf")
    return pts


@dataclasses.dataclass(frozen=True)
class Edit:
    """One undoable change of a slice: the pixels that changed ((M,) rows, cols), their values
    before and after, and the slice's labelled state around it."""

    rows: np.ndarray
    cols: np.ndarray
    before: np.ndarray
    after: np.ndarray
    labelled_before: bool
    labelled_after: bool


class LabelEditor:
    """The labels of one volume and which of its slices are labelled, with per-slice undo/redo.

    Args:
      shape: (X, Y, Z) of the volume's canonical grid.
      classes: {label id (> 0): name}.
      axis: 0, 1 or 2, the slicing axis (changeable with :meth:`set_axis` while nothing is labelled).
      labels: initial (X, Y, Z) integer labels whose values are 0 or class ids (default: all 0).
      labelled_slices: slices counted as labelled (default: those with a label).
      history: undo steps kept per slice (>= 1).
    """

    def __init__(self, shape: tuple[int, int, int], classes: Mapping[int, str], *, axis: int = 2,
                 labels: np.ndarray | None = None, labelled_slices: Sequence[int] | None = None,
                 history: int = 100):
        if history < 1:
            raise ValueError(f"history: expected at least 1 undo step, got {history}")
        self.shape = tuple(int(s) for s in shape)
        self.classes = check_classes(classes)
        self.history = int(history)
        self._axis = check_axis(axis)
        self.labels = np.zeros(self.shape, np.int32)
        self._labelled: set[int] = set()
        self._undo: dict[int, list[Edit]] = {}
        self._redo: dict[int, list[Edit]] = {}
        self.replace(labels, labelled_slices)

    # ----------------------------------------------------------------- state
    @property
    def axis(self) -> int:
        return self._axis

    @property
    def num_slices(self) -> int:
        return self.shape[self._axis]

    @property
    def slice_shape(self) -> tuple[int, int]:
        """(H, W) of a slice along the current axis."""
        return self.slice_labels(0).shape

    @property
    def labelled_slices(self) -> list[int]:
        return sorted(self._labelled)

    def is_labelled(self, index: int) -> bool:
        return index in self._labelled

    def slice_labels(self, index: int) -> np.ndarray:
        """(H, W) int32 view of slice ``index`` (as ``get_slices(labels, axis)[index]``); writes go to ``labels``
        (bypassing the undo history)."""
        return slice_view(self.labels, self._axis, index)

    def check_index(self, index: int) -> int:
        """``index`` as an int; TypeError unless an integer, ValueError unless a slice of the current axis."""
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"index: expected an integer slice index, got {index!r}")
        if not 0 <= index < self.num_slices:
            raise ValueError(f"index: slice {index} out of range 0..{self.num_slices - 1} along axis {self._axis}")
        return int(index)

    def check_class(self, class_id: int) -> int:
        if class_id not in self.classes:
            raise ValueError(f"class_id: {class_id!r} is not one of the classes {self.classes}")
        return int(class_id)

    def set_axis(self, axis: int) -> None:
        """Slices along ``axis`` from now on; ValueError once anything is labelled (a collection has one axis)."""
        axis = check_axis(axis)
        if axis == self._axis:
            return
        if self._labelled or self.labels.any():
            raise ValueError(
                f"axis: slices are labelled along axis {self._axis} ({AXIS_NAMES[self._axis]}); the collection has "
                "a single axis, so clear them (or start a new annotator) to change it"
            )
        self._axis = axis
        self._undo.clear()
        self._redo.clear()

    def replace(self, labels: np.ndarray | None, labelled_slices: Sequence[int] | None = None) -> None:
        """New labels ((X, Y, Z) integers in 0 or the class ids; None keeps the current ones) and labelled
        slices (None: those with a label). Clears the undo history."""
        if labels is not None:
            array = np.asarray(labels)
            if array.shape != self.shape:
                raise ValueError(f"labels: expected shape {self.shape} (the volume's canonical grid), got {array.shape}")
            array = label_ids(array, "labels")
            unknown = sorted(set(np.unique(array).tolist()) - {0, *self.classes})
            if unknown:
                raise ValueError(f"labels: values {unknown[:10]} are not among the classes {sorted(self.classes)}")
            self.labels = array
        if labelled_slices is None:
            moved = np.moveaxis(self.labels, self._axis, 0).reshape(self.num_slices, -1)
            self._labelled = set(np.flatnonzero(moved.any(axis=1)).tolist())
        else:
            indices = [int(s) for s in labelled_slices]
            bad = [s for s in indices if not 0 <= s < self.num_slices]
            if bad:
                raise ValueError(f"labelled_slices: {bad} out of range 0..{self.num_slices - 1} along axis {self._axis}")
            self._labelled = set(indices)
        self._undo.clear()
        self._redo.clear()

    # --------------------------------------------------------------- editing
    def stroke(self, index: int, points, class_id: int, radius: float, erase: bool = False) -> int:
        """Paints ``class_id`` (or erases) on slice ``index`` along ``points`` ((P, 2) row, col; see
        :func:`brush_mask`). Returns the number of pixels that changed."""
        index, class_id = self.check_index(index), self.check_class(class_id)
        if not radius >= 0.5:
            raise ValueError(f"radius: expected a brush radius of at least 0.5 pixels, got {radius}")
        mask = brush_mask(self.slice_shape, check_points(points), radius)
        new = np.array(self.slice_labels(index))
        new[mask] = 0 if erase else class_id
        return self.commit(index, new, self.is_labelled(index) or (not erase and bool(mask.any())))

    def paint(self, index: int, mask: np.ndarray, class_id: int) -> int:
        """Writes (H, W) bool ``mask`` into ``class_id`` on slice ``index`` (overwriting); the slice becomes
        labelled when the mask has a pixel. Returns the number of pixels that changed."""
        index, class_id = self.check_index(index), self.check_class(class_id)
        mask = np.asarray(mask, bool)
        if mask.shape != self.slice_shape:
            raise ValueError(f"mask: expected the slice's shape {self.slice_shape}, got {mask.shape}")
        new = np.array(self.slice_labels(index))
        new[mask] = class_id
        return self.commit(index, new, self.is_labelled(index) or bool(mask.any()))

    def mark_empty(self, index: int) -> int:
        """"No structure on this slice": all 0, labelled (a negative example). Returns pixels changed."""
        return self.commit(self.check_index(index), np.zeros(self.slice_shape, np.int32), True)

    def clear(self, index: int) -> int:
        """Sets slice ``index`` to 0 and removes it from ``labelled_slices``. Returns pixels changed."""
        return self.commit(self.check_index(index), np.zeros(self.slice_shape, np.int32), False)

    def commit(self, index: int, new: np.ndarray, labelled_after: bool) -> int:
        """Replaces slice ``index`` with (H, W) ``new`` and sets its labelled state, as one undo step
        (none when nothing changes). Returns the number of pixels that changed."""
        view = self.slice_labels(index)
        rows, cols = np.nonzero(view != new)
        was = index in self._labelled
        if rows.size or was != labelled_after:
            edit = Edit(rows, cols, view[rows, cols].copy(), new[rows, cols].copy(), was, labelled_after)
            view[rows, cols] = edit.after
            self._set_labelled(index, labelled_after)
            stack = self._undo.setdefault(index, [])
            stack.append(edit)
            del stack[: -self.history]
            self._redo.pop(index, None)
        return int(rows.size)

    def undo(self, index: int) -> bool:
        """Reverts the last change of slice ``index``; False when there is none."""
        return self._step(index, self._undo, self._redo, forward=False)

    def redo(self, index: int) -> bool:
        """Re-applies the last undone change of slice ``index``; False when there is none."""
        return self._step(index, self._redo, self._undo, forward=True)

    def _step(self, index: int, source: dict, target: dict, forward: bool) -> bool:
        stack = source.get(index)
        if not stack:
            return False
        edit = stack.pop()
        self.slice_labels(index)[edit.rows, edit.cols] = edit.after if forward else edit.before
        self._set_labelled(index, edit.labelled_after if forward else edit.labelled_before)
        target.setdefault(index, []).append(edit)
        return True

    def _set_labelled(self, index: int, labelled: bool) -> None:
        if labelled:
            self._labelled.add(index)
        else:
            self._labelled.discard(index)
