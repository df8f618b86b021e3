"""``SliceAnnotator``: label slices of a volume for the few-shot collection, by brush or with SAM's help.

Coordinates are (row, col) pixels of the displayed slice ``get_slices(volume, axis)[i]`` (pixel
centres are integers, floats allowed). Labels live in ``.labels``, (X, Y, Z) int32 on the volume's
canonical grid, 0 = background.

Editing rules:
  * brush: every pixel whose centre lies within ``brush_radius`` of the stroke's polyline (and the
    pixel under each point) becomes the current class, whatever it was before;
  * eraser: the same pixels become 0 whatever their class (what you see under the eraser goes);
  * SAM assist: clicks (positive, or negative with the right button / shift / alt) accumulate on
    the current slice; a box replaces all earlier prompts (clicks after it refine it). Each prompt
    asks ``SamPredictor`` (on the slice's cached embedding) for a mask: with a single click and no
    box, the best of SAM's three masks by predicted IoU, otherwise one mask. Accepting writes the
    proposal into the current class (overwriting), rejecting or leaving the slice drops it;
  * a slice joins ``labelled_slices`` when a brush stroke or an accepted proposal paints on it, or
    when it is marked empty ("no structure on this slice": all 0, kept as a negative example);
    ``clear()`` sets it to 0 and removes it from the list; the eraser never adds or removes a slice
    (erasing a labelled slice entirely leaves an empty, i.e. negative, labelled slice);
  * undo/redo: per slice, over every action that changes the slice's labels or labelled state
    (stroke, accept, mark_empty, clear), ``history`` steps deep.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import ipywidgets as W
import nibabel as nib
import numpy as np

from fewsam_jax.cache import embed_volume
from fewsam_jax.fewshot.collection import (
    Collection,
    ManifestError,
    SupportItem,
    load_collection,
    save_collection,
)
from fewsam_jax.io import Volume, check_axis, load_volume, save_labels
from fewsam_jax.modeling.sam import Sam
from fewsam_jax.outputs import OutputExistsError, check_output_file, write_file
from fewsam_jax.predictor import SamPredictor
from fewsam_jax.preprocess import Intensity
from fewsam_jax.widgets.canvas import SliceCanvas, parse_pointer_event
from fewsam_jax.widgets.render import (
    ColorSpec,
    blend_labels,
    class_colors,
    default_window,
    draw_markers,
    grey,
    hex_color,
    outline_labels,
    plane_spacing,
    slice_view,
)

AXIS_NAMES = {0: "sagittal", 1: "coronal", 2: "axial"}
TOOL_NAMES = {"brush": "brush", "eraser": "eraser", "point": "SAM click", "box": "SAM box"}
_WHITE = np.array([255, 255, 255], np.uint8)


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


@dataclasses.dataclass(frozen=True)
class _Edit:
    """One undoable change of a slice: the pixels that changed and the labelled state around it."""

    rows: np.ndarray
    cols: np.ndarray
    before: np.ndarray
    after: np.ndarray
    labelled_before: bool
    labelled_after: bool


def _as_volume(volume, name: str) -> Volume:
    if isinstance(volume, Volume):
        return volume
    if isinstance(volume, (str, os.PathLike)):
        return load_volume(volume)
    raise TypeError(f"{name}: expected a fewsam_jax.Volume or a path, got {type(volume).__name__}")


def _check_classes(classes: Mapping[int, str]) -> dict[int, str]:
    if not isinstance(classes, Mapping) or not classes:
        raise ValueError(f"classes: expected a non-empty {{label id: name}} dict, got {classes!r}")
    out = {}
    for key, name in classes.items():
        if isinstance(key, bool) or not isinstance(key, (int, np.integer)) or not 0 < key < 2**15:
            raise ValueError(f"classes: label ids must be integers 1..32767 (0 is background), got {key!r}")
        out[int(key)] = str(name)
    return dict(sorted(out.items()))


def _labels(value, volume: Volume, name: str) -> np.ndarray:
    """A label map (array, Volume or path) as (X, Y, Z) int32 on ``volume``'s canonical grid."""
    if isinstance(value, (str, os.PathLike)):
        value = _as_volume(value, name)
    if isinstance(value, Volume):
        if value.shape != volume.shape or not np.allclose(value.affine, volume.affine, atol=1e-3):
            raise ValueError(f"{name}: grid of {value.source or 'the label volume'} (shape {value.shape}) differs "
                             f"from the image's (shape {volume.shape})")
        value = value.array
    array = np.asarray(value)
    if array.shape != volume.shape:
        raise ValueError(f"{name}: expected shape {volume.shape} (the volume's canonical grid), got {array.shape}")
    return np.rint(array).astype(np.int32)


def _labels_on_grid(labels, volume: Volume, classes: Mapping[int, str]) -> np.ndarray:
    """Initial labels (array, Volume or path) as (X, Y, Z) int32 on ``volume``'s canonical grid."""
    values = _labels(labels, volume, "labels")
    unknown = sorted(set(np.unique(values).tolist()) - {0, *classes})
    if unknown:
        raise ValueError(f"labels: values {unknown[:10]} are not among the classes {sorted(classes)}")
    return values


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".npy", ".png", ".jpg", ".jpeg", ".dcm"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _save_image(volume: Volume, path: Path) -> Path:
    """Writes ``volume`` as NIfTI on its source grid, atomically."""
    img = nib.Nifti1Image(volume.to_source(volume.array), volume.source_affine)
    img.set_sform(volume.source_affine, code=1)
    img.set_qform(volume.source_affine, code=1)
    with write_file(path, overwrite=False) as tmp:
        nib.save(img, tmp)
    return path


class SliceAnnotator:
    """Label slices of ``volume`` with the classes ``classes`` ({id: name}); see the module doc.

    Args:
      volume: a ``fewsam_jax.Volume`` or a path ``load_volume`` reads.
      classes: {label id (> 0): name}.
      axis: 0 sagittal, 1 coronal, 2 axial; the collection's slicing axis.
      intensity: the intensity mapping of the embeddings (``Intensity`` or a spec such as
        "soft_tissue"); the display window starts from it (or the 0.5-99.5 percentiles).
      model: a ``Sam``, a model name for ``load_model`` (loaded on the first SAM-assist use), or None
        (SAM assist off).
      cache: the embedding cache (``EmbeddingCache`` or root folder; default ``$FEWSAM_HOME``); each
        slice is encoded once ever.
      labels: initial labels ((X, Y, Z) array, Volume or path on the same grid).
      labelled_slices: slices counted as labelled (default: those with labels).
      colors: {id: matplotlib colour}, default tab10 in class order.
      brush_radius: in pixels (>= 0.5). history: undo steps kept per slice. zoom: display scale
        (default: the longer side shown at ~512 screen pixels).
    """

    def __init__(
        self,
        volume: Volume | str | os.PathLike,
        classes: Mapping[int, str],
        *,
        axis: int = 2,
        intensity: Intensity | str = "percentile",
        model: Sam | str | None = None,
        cache=None,
        labels=None,
        labelled_slices: Sequence[int] | None = None,
        colors: Mapping[int, ColorSpec] | None = None,
        brush_radius: float = 3.0,
        history: int = 100,
        zoom: float | None = None,
    ):
        self.volume = _as_volume(volume, "volume")
        self.classes = _check_classes(classes)
        self.intensity = intensity if isinstance(intensity, Intensity) else Intensity.parse(intensity)
        if model is not None and not isinstance(model, (Sam, str)):
            raise TypeError(f"model: expected a fewsam_jax.Sam, a model name or None, got {type(model).__name__}")
        if history < 1:
            raise ValueError(f"history: expected at least 1 undo step, got {history}")
        self._model = model
        self.cache = cache
        self.colors = class_colors(self.classes, colors)
        self.history = int(history)
        self._axis = check_axis(axis)
        self.labels = np.zeros(self.volume.shape, np.int32)
        self._labelled: set[int] = set()
        self._undo: dict[int, list[_Edit]] = {}
        self._redo: dict[int, list[_Edit]] = {}
        self._replace_labels(labels, labelled_slices)
        self._slice_index = self.num_slices // 2
        self._class_id = next(iter(self.classes))
        self._tool = "brush"
        self._brush_radius = 3.0
        self.points: list[tuple[float, float, bool]] = []
        self.box: tuple[float, float, float, float] | None = None
        self.proposal: np.ndarray | None = None
        self._predictor: SamPredictor | None = None
        self._entry = None
        self._embedded: tuple[int, int] | None = None
        self._gesture: list[tuple[float, float]] | None = None
        self._image_path: Path | None = None
        self.opacity = 0.45
        if self.intensity.mode == "window":
            self.level, self.width = float(self.intensity.level), float(self.intensity.width)
        else:
            self.level, self.width = default_window(self.volume.array)
        self._syncing = False
        self._build_ui(zoom)
        self.brush_radius = brush_radius
        self._refresh()

    # ----------------------------------------------------------------- state
    @property
    def axis(self) -> int:
        return self._axis

    @property
    def num_slices(self) -> int:
        return self.volume.shape[self._axis]

    @property
    def slice_shape(self) -> tuple[int, int]:
        return slice_view(self.volume.array, self._axis, 0).shape

    @property
    def slice_index(self) -> int:
        return self._slice_index

    @property
    def labelled_slices(self) -> list[int]:
        return sorted(self._labelled)

    @property
    def class_id(self) -> int:
        return self._class_id

    @class_id.setter
    def class_id(self, value: int) -> None:
        if value not in self.classes:
            raise ValueError(f"class_id: {value!r} is not one of the classes {self.classes}")
        self._class_id = int(value)
        self._sync_controls()
        self._refresh()

    @property
    def tool(self) -> str:
        return self._tool

    @tool.setter
    def tool(self, value: str) -> None:
        if value not in TOOL_NAMES:
            raise ValueError(f"tool: expected one of {tuple(TOOL_NAMES)}, got {value!r}")
        self._tool = value
        self._gesture = None
        self._sync_controls()

    @property
    def brush_radius(self) -> float:
        return self._brush_radius

    @brush_radius.setter
    def brush_radius(self, value: float) -> None:
        value = float(value)
        if not value >= 0.5:
            raise ValueError(f"brush_radius: expected a radius of at least 0.5 pixels, got {value}")
        self._brush_radius = value
        self._sync_controls()

    @property
    def model(self) -> Sam | None:
        """The SAM used for assist (a model name is loaded here, on first use), or None."""
        if isinstance(self._model, str):
            from fewsam_jax.weights import load_model

            self._model = load_model(self._model)
        return self._model

    def slice_labels(self, index: int | None = None) -> np.ndarray:
        """(H, W) view of the labels of slice ``index`` (default: the current one); writes go to ``labels``."""
        return slice_view(self.labels, self._axis, self._slice_index if index is None else index)

    def slice_image(self, index: int | None = None) -> np.ndarray:
        """(H, W) raw intensities of slice ``index`` (default: the current one)."""
        return slice_view(self.volume.array, self._axis, self._slice_index if index is None else index)

    # ------------------------------------------------------------ navigation
    def go_to(self, index: int) -> None:
        """Shows slice ``index``; pending SAM prompts and proposal are dropped when the slice changes."""
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"index: expected an integer slice index, got {index!r}")
        if not 0 <= index < self.num_slices:
            raise ValueError(f"index: slice {index} out of range 0..{self.num_slices - 1} along axis {self._axis}")
        if index != self._slice_index:
            self._slice_index = int(index)
            self._drop_prompts()
            self._gesture = None
            self._message("")
        self._sync_controls()
        self._refresh()

    def set_axis(self, axis: int) -> None:
        """Slices along ``axis`` from now on; only before anything is labelled (the collection has one axis)."""
        axis = check_axis(axis)
        if axis == self._axis:
            return
        if self._labelled or self.labels.any():
            raise ValueError(
                f"axis: slices are labelled along axis {self._axis} ({AXIS_NAMES[self._axis]}); the collection "
                "has a single axis, so clear them (or start a new annotator) to change it"
            )
        self._axis = axis
        self._undo.clear()
        self._redo.clear()
        self._drop_prompts()
        self._slice_index = self.num_slices // 2
        self._configure_view()
        self._sync_controls()
        self._refresh()

    def set_window(self, level: float, width: float) -> None:
        """Display window (intensity units of the volume); the embeddings are not affected."""
        if not (np.isfinite(level) and np.isfinite(width) and width > 0):
            raise ValueError(f"window: need a finite level and a positive width, got level={level}, width={width}")
        self.level, self.width = float(level), float(width)
        self._sync_controls()
        self._refresh()

    # --------------------------------------------------------------- editing
    def stroke(self, points, erase: bool = False) -> int:
        """Paints (or erases) along ``points`` ((P, 2) row, col; see ``brush_mask``). Returns the
        number of pixels that changed."""
        pts = np.asarray(points, np.float64)
        if pts.ndim == 1 and pts.shape == (2,):
            pts = pts[None]
        if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) == 0:
            raise ValueError(f"points: expected a non-empty (P, 2) sequence of (row, col), got shape {pts.shape}")
        if not np.isfinite(pts).all():
            raise ValueError("points: contains NaN or Inf")
        mask = brush_mask(self.slice_shape, pts, self._brush_radius)
        new = np.array(self.slice_labels())
        new[mask] = 0 if erase else self._class_id
        was = self._slice_index in self._labelled
        return self._commit(new, was or (not erase and bool(mask.any())))

    def sam_click(self, row: float, col: float, positive: bool = True) -> np.ndarray:
        """Adds a positive (or negative) point prompt and returns the new proposal (H, W) bool."""
        self._check_inside(row, col)
        self.points.append((float(row), float(col), bool(positive)))
        return self._propose()

    def sam_box(self, row0: float, col0: float, row1: float, col1: float) -> np.ndarray:
        """Replaces every prompt of this slice with the box spanning the two corners; returns the proposal."""
        self._check_inside(row0, col0)
        self._check_inside(row1, col1)
        self.points = []
        self.box = (min(row0, row1), min(col0, col1), max(row0, row1), max(col0, col1))
        return self._propose()

    def accept_proposal(self) -> int:
        """Writes the proposal into the current class; returns the number of pixels that changed."""
        if self.proposal is None:
            raise RuntimeError("no SAM proposal to accept: click or drag a box with a SAM tool first")
        new = np.array(self.slice_labels())
        new[self.proposal] = self._class_id
        proposal_painted = bool(self.proposal.any())
        self._drop_prompts()
        self._message(f"proposal accepted into {self._class_id}: {self.classes[self._class_id]}")
        return self._commit(new, self._slice_index in self._labelled or proposal_painted)

    def reject_proposal(self) -> None:
        """Drops the proposal and the prompts of this slice."""
        self._drop_prompts()
        self._message("proposal rejected")
        self._refresh()

    def mark_empty(self) -> int:
        """"No structure on this slice": all 0, labelled (a negative example). Returns pixels changed."""
        self._drop_prompts()
        return self._commit(np.zeros(self.slice_shape, np.int32), True)

    def clear(self) -> int:
        """Sets the slice to 0 and removes it from ``labelled_slices``. Returns pixels changed."""
        self._drop_prompts()
        return self._commit(np.zeros(self.slice_shape, np.int32), False)

    def undo(self) -> bool:
        """Reverts the last change of the current slice; False when there is none."""
        return self._step(self._undo, self._redo, forward=False)

    def redo(self) -> bool:
        """Re-applies the last undone change of the current slice; False when there is none."""
        return self._step(self._redo, self._undo, forward=True)

    def _step(self, source: dict, target: dict, forward: bool) -> bool:
        stack = source.get(self._slice_index)
        self._message(f"{'redone' if forward else 'undone'}" if stack else
                      f"nothing to {'redo' if forward else 'undo'} on this slice")
        if not stack:
            self._refresh()
            return False
        edit = stack.pop()
        view = self.slice_labels()
        view[edit.rows, edit.cols] = edit.after if forward else edit.before
        self._set_labelled(self._slice_index, edit.labelled_after if forward else edit.labelled_before)
        target.setdefault(self._slice_index, []).append(edit)
        self._drop_prompts()
        self._refresh()
        return True

    def _commit(self, new: np.ndarray, labelled_after: bool) -> int:
        view = self.slice_labels()
        rows, cols = np.nonzero(view != new)
        was = self._slice_index in self._labelled
        if rows.size or was != labelled_after:
            edit = _Edit(rows, cols, view[rows, cols].copy(), new[rows, cols].copy(), was, labelled_after)
            view[rows, cols] = edit.after
            self._set_labelled(self._slice_index, labelled_after)
            stack = self._undo.setdefault(self._slice_index, [])
            stack.append(edit)
            del stack[: -self.history]
            self._redo.pop(self._slice_index, None)
        self._refresh()
        return int(rows.size)

    def _set_labelled(self, index: int, labelled: bool) -> None:
        if labelled:
            self._labelled.add(index)
        else:
            self._labelled.discard(index)

    def _replace_labels(self, labels, labelled_slices) -> None:
        if labels is not None:
            self.labels = _labels_on_grid(labels, self.volume, self.classes)
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

    # ------------------------------------------------------------ SAM assist
    def _check_inside(self, row: float, col: float) -> None:
        h, w = self.slice_shape
        if not (np.isfinite(row) and np.isfinite(col) and -0.5 <= row <= h - 0.5 and -0.5 <= col <= w - 0.5):
            raise ValueError(f"point (row={row}, col={col}) is outside the {h}x{w} slice")

    def _drop_prompts(self) -> None:
        self.points, self.box, self.proposal = [], None, None

    def slice_embedding(self, index: int | None = None) -> np.ndarray:
        """(E, E, C) embedding of slice ``index`` (default: current) from the cache, encoding it if absent."""
        model = self.model
        if model is None:
            raise RuntimeError(
                "SAM assist is off: this annotator has no model; create it with model='litemedsam' (or a Sam)"
            )
        index = self._slice_index if index is None else int(index)
        entry = self._entry
        if entry is None or entry.axis != self._axis or not entry.done()[index]:
            entry = embed_volume(self.volume, model, axis=self._axis, intensity=self.intensity, cache=self.cache,
                                 slices=[index], batch_size=1, progress=False)  # batch 1: no padded work
            self._entry = entry
        return entry[index]

    def _propose(self) -> np.ndarray:
        try:
            if self._predictor is None or self._embedded != (self._axis, self._slice_index):
                self._message(f"encoding slice {self._slice_index} (once; it is cached)...")
                embedding = self.slice_embedding()
                if self._predictor is None:
                    self._predictor = SamPredictor(self.model)
                self._predictor.set_embedding(embedding, self.slice_shape)
                self._embedded = (self._axis, self._slice_index)
            coords = labels = box = None
            if self.points:
                coords = np.array([[col, row] for row, col, _ in self.points], np.float32)
                labels = np.array([int(positive) for _, _, positive in self.points], np.int32)
            if self.box is not None:
                r0, c0, r1, c1 = self.box
                box = np.array([c0, r0, c1, r1], np.float32)
            multimask = box is None and len(self.points) == 1
            masks, iou, _ = self._predictor.predict(coords, labels, box, multimask_output=multimask)
        except BaseException:
            self._drop_prompts()
            self._refresh()
            raise
        self.proposal = np.asarray(masks[int(np.argmax(iou))], bool)
        self._message(f"proposal: {int(self.proposal.sum())} pixels; accept or reject it")
        self._refresh()
        return self.proposal

    # -------------------------------------------------------------- manifest
    def save_manifest(self, path: str | os.PathLike, labels_path: str | os.PathLike | None = None,
                      overwrite: bool = False) -> Path:
        """Writes the labels (NIfTI on the source grid) and the collection manifest JSON at ``path``.

        The manifest lists this volume with ``labelled_slices``; an existing manifest at ``path`` with
        the same classes and axis keeps its other volumes' entries. The image is referenced where it
        was read from; a volume made from an array is written next to the manifest
        (``<manifest stem>_image.nii.gz``, numbered if that name is taken). ``labels_path`` defaults to
        ``<image stem>_labels.nii.gz`` beside the manifest. Returns the manifest path
        (``fewsam_jax.load_collection`` reads it).

        Nothing is written unless all of it may be: the labels file may replace an existing file only
        when the manifest already lists it as this volume's labels (a previous save) or with
        ``overwrite=True``; it is never the image or another volume's labels or image.
        """
        path = Path(path).absolute()
        if not self._labelled:
            raise ValueError("save_manifest: no slice is labelled yet; paint, accept a proposal or mark a slice empty")
        if not path.parent.is_dir():  # a new folder for the manifest (README: save_manifest("liver/manifest.json"))
            if path.parent.exists():
                raise ValueError(f"save_manifest: {path.parent} is a file, not a folder")
            path.parent.mkdir(parents=True)
        if path.is_dir():
            raise OutputExistsError(f"save_manifest: {path} is a folder; give a .json file path")
        image = self._source_image()
        check_output_file(path, overwrite=True, inputs=[image])  # before reading it as a manifest
        others = self._other_entries(path)
        protected = [p for item in others for p in (item.image, item.labels)]
        if image is not None:
            protected.append(image)
        previous = self._previous_labels(path, image)
        new_image = None
        if image is None:
            new_image = path.with_name(f"{path.stem}_image.nii.gz")
            number = 2
            while new_image.exists() or new_image.is_symlink():
                new_image = path.with_name(f"{path.stem}_image_{number}.nii.gz")
                number += 1
        labels_path = (Path(labels_path).absolute() if labels_path
                       else path.with_name(f"{_stem(image or new_image)}_labels.nii.gz"))
        mine = previous is not None and labels_path.resolve() == previous.resolve()
        check_output_file(labels_path, overwrite=overwrite or mine, inputs=protected + [new_image],
                          suffixes=(".nii.gz", ".nii"))
        check_output_file(path, overwrite=True, inputs=protected + [new_image, labels_path])
        if new_image is not None:
            image = _save_image(self.volume, new_image)
            self._image_path = image
        save_labels(self.labels, self.volume, labels_path)
        mine = SupportItem(image=image, labels=labels_path, slices=tuple(self.labelled_slices))
        save_collection(Collection(classes=self.classes, axis=self._axis, support=(*others, mine)), path)
        load_collection(path)  # the manifest must read back
        return path

    def _previous_labels(self, path: Path, image: Path | None) -> Path | None:
        """The labels file the manifest at ``path`` lists for this volume (a previous save), if any."""
        if image is None or not path.exists():
            return None
        for item in load_collection(path).support:
            if item.image.resolve() == image.resolve():
                return item.labels
        return None

    def _source_image(self) -> Path | None:
        if self._image_path is not None and self._image_path.exists():
            return self._image_path
        if self.volume.source and Path(self.volume.source).exists():
            return Path(self.volume.source).absolute()
        return None

    def _other_entries(self, path: Path) -> tuple[SupportItem, ...]:
        if not path.exists():
            return ()
        try:
            existing = load_collection(path)
        except ManifestError as err:
            raise ManifestError(f"{path} exists and cannot be extended ({err}); choose another path") from None
        if existing.classes != self.classes or existing.axis != self._axis:
            raise ManifestError(
                f"{path} exists with classes {existing.classes} along axis {existing.axis}, not {self.classes} "
                f"along axis {self._axis}; choose another path"
            )
        mine = self._source_image()
        mine = mine.resolve() if mine is not None else None
        return tuple(item for item in existing.support if item.image.resolve() != mine)

    def load_manifest(self, path: str | os.PathLike) -> None:
        """Replaces labels and labelled slices with this volume's entry in the manifest at ``path``
        (the entry whose image is this volume's file; a manifest with one entry on the same grid also
        matches). Clears the undo history."""
        collection = load_collection(path)
        if collection.axis != self._axis or collection.classes != self.classes:
            raise ManifestError(f"{path}: classes {collection.classes} along axis {collection.axis} differ from this "
                                f"annotator's {self.classes} along axis {self._axis}")
        mine = self._source_image()
        matches = [item for item in collection.support if mine is not None and item.image == mine.resolve()]
        if not matches and len(collection.support) == 1:
            matches = list(collection.support)
        if not matches:
            images = ", ".join(str(item.image) for item in collection.support)
            raise ManifestError(f"{path}: no entry for this volume ({mine or 'an in-memory array'}); it lists {images}")
        item = matches[0]
        self._replace_labels(item.labels, item.slices)
        if mine is None:
            self._image_path = item.image
        self._drop_prompts()
        self._refresh()

    @classmethod
    def from_manifest(cls, path: str | os.PathLike, model: Sam | str | None = None, *,
                      image: str | os.PathLike | None = None, **kwargs) -> SliceAnnotator:
        """An annotator on a volume of the manifest at ``path`` (the first, or the one whose image is
        ``image``) with its labels, labelled slices, classes and axis. ``kwargs`` go to the constructor."""
        collection = load_collection(path)
        items = collection.support
        if image is not None:
            wanted = Path(image).resolve()
            items = tuple(item for item in items if item.image.resolve() == wanted)
            if not items:
                raise ManifestError(f"{path}: no entry for image {wanted}")
        item = items[0]
        return cls(item.image, collection.classes, axis=collection.axis, model=model, labels=item.labels,
                   labelled_slices=item.slices, **kwargs)

    # ------------------------------------------------------------- rendering
    def render(self) -> np.ndarray:
        """The current slice as shown: (H, W, 3) uint8 with labels, proposal and prompts."""
        rgb = grey(self.slice_image(), self.level, self.width)
        labels = self.slice_labels()
        blend_labels(rgb, labels, self.colors, self.opacity)
        outline_labels(rgb, labels, self.colors)
        if self.proposal is not None:
            blend_labels(rgb, self.proposal.astype(np.int32), {1: self.colors[self._class_id]}, 0.35)
            outline_labels(rgb, self.proposal.astype(np.int32), {1: _WHITE})
        return draw_markers(rgb, self.points, self.box)

    def status(self) -> str:
        """'<n> labelled pixels on slice <i> (<state>)', as the status line shows it."""
        count = int(np.count_nonzero(self.slice_labels()))
        if self._slice_index not in self._labelled:
            state = "not labelled"
        else:
            state = "labelled" if count else "labelled: no structure (negative example)"
        return f"{count} labelled pixels on slice {self._slice_index} ({state})"

    # -------------------------------------------------------------------- UI
    def handle_canvas_event(self, event: dict) -> None:
        """Applies one canvas pointer event (``canvas.parse_pointer_event`` format) with the current tool:
        brush/eraser strokes and boxes complete on "up", SAM clicks happen on "down" (button 2, shift
        or alt: negative)."""
        event = parse_pointer_event(event)
        if event is None:
            return
        phase, point = event["phase"], (event["row"], event["col"])
        if phase == "cancel":
            self._gesture = None
        elif self._tool == "point":
            if phase == "down":
                self.sam_click(*point, positive=not (event["button"] == 2 or event["shift"] or event["alt"]))
        elif phase == "down":
            self._gesture = [point]
        elif self._gesture is not None:
            self._gesture.append(point)
            if phase == "up":
                points, self._gesture = self._gesture, None
                if self._tool == "box":
                    (r0, c0), (r1, c1) = points[0], points[-1]
                    if abs(r1 - r0) < 1 and abs(c1 - c0) < 1:
                        self._message("drag to draw a box (press, move, release)")
                    else:
                        self.sam_box(r0, c0, r1, c1)
                else:
                    self.stroke(points, erase=self._tool == "eraser")

    @property
    def widget(self) -> W.Widget:
        """The ipywidgets layout (displayed when the annotator is the value of a notebook cell)."""
        return self._widget

    def _repr_mimebundle_(self, **kwargs):
        return self._widget._repr_mimebundle_(**kwargs)

    def _guard(self, action: Callable) -> Callable:
        """Wraps a UI callback: errors are shown in the message line instead of being lost in the log."""

        def run(*args):
            try:
                action(*args)
            except Exception as err:  # noqa: BLE001 - shown to the user
                self._message(f"{type(err).__name__}: {err}", error=True)

        return run

    def _message(self, text: str, error: bool = False) -> None:
        self._msg.value = text
        self._msg.style.text_color = "#c62828" if error else None

    def _build_ui(self, zoom: float | None) -> None:
        self._zoom_request = zoom
        self.canvas = SliceCanvas()
        self.canvas.on_pointer(self._guard(self.handle_canvas_event))
        self._axis_box = W.Dropdown(options=[(AXIS_NAMES[a], a) for a in range(3)], value=self._axis,
                                    description="axis", layout=W.Layout(width="170px"))
        self._slider = W.IntSlider(description="slice", continuous_update=True, layout=W.Layout(width="420px"))
        self._zoom = W.BoundedFloatText(description="zoom", min=0.1, max=64, step=0.5, layout=W.Layout(width="140px"))
        self._class_buttons = {}
        for class_id, name in self.classes.items():
            button = W.Button(description=f"{class_id}: {name}", tooltip=f"paint class {class_id} ({name})",
                              layout=W.Layout(width="auto"))
            color = self.colors[class_id]
            button.style.button_color = hex_color(color)
            button.style.text_color = "black" if color @ [0.299, 0.587, 0.114] > 140 else "white"
            button.add_class(f"fewsam-class-{class_id}")
            button.on_click(self._guard(lambda _b, k=class_id: setattr(self, "class_id", k)))
            self._class_buttons[class_id] = button
        self._tools = W.ToggleButtons(options=[(label, key) for key, label in TOOL_NAMES.items()],
                                      style=W.ToggleButtonsStyle(button_width="92px"))
        self._tools.add_class("fewsam-tool")
        self._brush = W.FloatSlider(description="brush", min=0.5, max=30, step=0.5, layout=W.Layout(width="300px"))
        lo, hi = float(self.volume.array.min()), float(self.volume.array.max())
        span = max(hi - lo, 1e-6)
        self._level = W.FloatSlider(description="level", min=min(lo, self.level), max=max(hi, self.level),
                                    step=span / 500, layout=W.Layout(width="300px"))
        self._width = W.FloatSlider(description="width", min=span / 500, max=max(2 * span, self.width),
                                    step=span / 500, layout=W.Layout(width="300px"))

        def button(text, action, style="", css=None, tooltip=""):
            b = W.Button(description=text, button_style=style, tooltip=tooltip, layout=W.Layout(width="auto"))
            b.on_click(self._guard(lambda _b: action()))
            if css:
                b.add_class(css)
            return b

        actions = W.HBox([
            button("Accept", self.accept_proposal, "success", "fewsam-accept", "write the SAM proposal into the class"),
            button("Reject", self.reject_proposal, "warning", "fewsam-reject", "drop the SAM proposal and prompts"),
        ])
        edits = W.HBox([
            button("No structure here", self.mark_empty, "", "fewsam-empty", "label this slice as empty"),
            button("Clear slice", self.clear, "", "fewsam-clear", "unlabel this slice"),
            button("Undo", self.undo, "", "fewsam-undo"),
            button("Redo", self.redo, "", "fewsam-redo"),
        ])
        self._path = W.Text(value="manifest.json", description="manifest", layout=W.Layout(width="300px"))
        self._path.add_class("fewsam-manifest-path")
        files = W.HBox([
            self._path,
            button("Save", lambda: self._message(f"saved {self.save_manifest(self._path.value)}"), "primary",
                   "fewsam-save"),
            button("Load", lambda: (self.load_manifest(self._path.value), self._message("loaded")), "", "fewsam-load"),
        ])
        self._status = W.Label()
        self._status.add_class("fewsam-status")
        self._msg = W.Label()
        self._msg.add_class("fewsam-message")
        self._listing = W.Label()
        self._listing.add_class("fewsam-labelled")
        hint = W.HTML("<small>SAM click: left = include, right / shift = exclude. SAM box: drag.</small>")
        controls = W.VBox([W.HBox(list(self._class_buttons.values())), self._tools, self._brush, actions, hint, edits,
                           self._level, self._width, files])
        self._widget = W.VBox([
            W.HBox([self._axis_box, self._slider, self._zoom]),
            W.HBox([self.canvas, controls]),
            self._status, self._listing, self._msg,
        ])
        self._widget.add_class("fewsam-annotator")
        self._configure_view()

        def observe(control, action):
            def changed(change):
                if not self._syncing:
                    self._guard(action)(change["new"])

            control.observe(changed, names="value")

        observe(self._axis_box, self.set_axis)
        observe(self._slider, self.go_to)
        observe(self._zoom, lambda z: setattr(self.canvas, "zoom", z))
        observe(self._tools, lambda t: setattr(self, "tool", t))
        observe(self._brush, lambda r: setattr(self, "brush_radius", r))
        observe(self._level, lambda v: self.set_window(v, self.width))
        observe(self._width, lambda v: self.set_window(self.level, v))

    def _configure_view(self) -> None:
        """Slider range, zoom and pixel aspect for the current axis."""
        h, w = self.slice_shape
        row_mm, col_mm = plane_spacing(self.volume.spacing, self._axis)
        zoom = self._zoom_request or (max(1, 512 // max(h, w)) if max(h, w) <= 512 else 512 / max(h, w))
        self._syncing = True
        try:
            self._slider.max = self.num_slices - 1
            self._zoom.value = zoom
        finally:
            self._syncing = False
        self.canvas.zoom = zoom
        self.canvas.aspect = row_mm / col_mm

    def _sync_controls(self) -> None:
        """Puts the state into the controls without triggering their callbacks."""
        if not hasattr(self, "_widget"):
            return
        self._syncing = True
        try:
            self._axis_box.value = self._axis
            self._slider.value = self._slice_index
            self._tools.value = self._tool
            self._brush.value = self._brush_radius
            self._level.value = self.level
            self._width.value = self.width
            for class_id, b in self._class_buttons.items():
                b.icon = "check" if class_id == self._class_id else ""
                b.style.font_weight = "bold" if class_id == self._class_id else "normal"
        finally:
            self._syncing = False
        self.canvas.tool = self._tool
        self.canvas.brush_radius = self._brush_radius
        self.canvas.preview_color = hex_color(self.colors[self._class_id])

    def _refresh(self) -> None:
        if not hasattr(self, "_widget"):
            return
        self.canvas.set_image(self.render())
        self._status.value = self.status()
        shown = ", ".join(map(str, self.labelled_slices)) or "none yet"
        self._listing.value = f"labelled slices ({len(self._labelled)}): {shown}"

