"""``SliceAnnotator``: label slices of a volume for the few-shot collection, by brush or with SAM's help.

A thin view: the labels, labelled slices and undo history are a :class:`~fewsam_jax.label_editor.LabelEditor`
(``.editor``; its module doc states the editing rules), the SAM prompts and proposal a
:class:`~fewsam_jax.sam_assist.SamAssist` (``.assist``), and merging into an existing manifest is
:mod:`fewsam_jax.fewshot.collection`'s. This class holds what the user is doing (slice, class, tool,
brush radius, display window), binds the canvas and controls to those calls and renders the slice. Keyboard
shortcuts and wheel scrolling are :mod:`fewsam_jax.shortcuts`'s.

Coordinates are (row, col) pixels of the displayed slice ``get_slices(volume, axis)[i]`` (pixel
centres are integers, floats allowed). Labels live in ``.labels``, (X, Y, Z) int32 on the volume's
canonical grid, 0 = background. Leaving a slice drops its pending SAM prompts and proposal.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import ipywidgets as W
import numpy as np

from fewsam_jax.fewshot.collection import EarlierLabelsError, ManifestError, entry_for, load_collection, save_entry
from fewsam_jax.io import AXIS_NAMES, Volume
from fewsam_jax.label_editor import LabelEditor, brush_mask, check_classes
from fewsam_jax.label_maps import as_volume, labels_on_grid
from fewsam_jax.modeling.sam import Sam
from fewsam_jax.preprocess import Intensity
from fewsam_jax.sam_assist import SamAssist
from fewsam_jax.shortcuts import KEYS, key_action, scrolled_index
from fewsam_jax.widgets.canvas import SliceCanvas, parse_key_event, parse_pointer_event, parse_wheel_event
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

__all__ = ["SliceAnnotator", "brush_mask"]

TOOL_NAMES = {"brush": "brush", "eraser": "eraser", "point": "SAM click", "box": "SAM box"}
_WHITE = np.array([255, 255, 255], np.uint8)


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
        self.volume = as_volume(volume, "volume")
        classes = check_classes(classes)
        self.intensity = Intensity.coerce(intensity)
        initial = None if labels is None else labels_on_grid(labels, self.volume, "labels")
        self.editor = LabelEditor(self.volume.shape, classes, axis=axis, labels=initial,
                                  labelled_slices=labelled_slices, history=history)
        self.assist = SamAssist(self.volume, model, self.intensity, cache)
        self.colors = class_colors(self.classes, colors)
        self._slice_index = self.num_slices // 2
        self._class_id = next(iter(self.classes))
        self._tool = "brush"
        self._brush_radius = 3.0
        self._gesture: list[tuple[float, float]] | None = None
        self._image_path: Path | None = None
        # the labels file this annotator's labels were read from or last saved to: the one save_manifest may replace
        self._labels_file = Path(labels).absolute() if isinstance(labels, (str, os.PathLike)) else None
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
    def labels(self) -> np.ndarray:
        """(X, Y, Z) int32 labels on the volume's canonical grid (the editor's array, edited in place)."""
        return self.editor.labels

    @property
    def classes(self) -> dict[int, str]:
        return self.editor.classes

    @property
    def history(self) -> int:
        return self.editor.history

    @property
    def cache(self):
        return self.assist.cache

    @property
    def points(self) -> list[tuple[float, float, bool]]:
        """The SAM click prompts of this slice: (row, col, positive)."""
        return self.assist.points

    @property
    def box(self) -> tuple[float, float, float, float] | None:
        """The SAM box prompt of this slice: (row0, col0, row1, col1), or None."""
        return self.assist.box

    @property
    def proposal(self) -> np.ndarray | None:
        """SAM's proposal for the prompts, (H, W) bool, or None."""
        return self.assist.proposal

    @property
    def axis(self) -> int:
        return self.editor.axis

    @property
    def num_slices(self) -> int:
        return self.editor.num_slices

    @property
    def slice_shape(self) -> tuple[int, int]:
        return self.editor.slice_shape

    @property
    def slice_index(self) -> int:
        return self._slice_index

    @property
    def labelled_slices(self) -> list[int]:
        return self.editor.labelled_slices

    @property
    def class_id(self) -> int:
        return self._class_id

    @class_id.setter
    def class_id(self, value: int) -> None:
        self._class_id = self.editor.check_class(value)
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
        return self.assist.model

    def slice_labels(self, index: int | None = None) -> np.ndarray:
        """(H, W) view of the labels of slice ``index`` (default: the current one); writes go to ``labels``."""
        return self.editor.slice_labels(self._slice_index if index is None else index)

    def slice_image(self, index: int | None = None) -> np.ndarray:
        """(H, W) raw intensities of slice ``index`` (default: the current one)."""
        return slice_view(self.volume.array, self.axis, self._slice_index if index is None else index)

    # ------------------------------------------------------------ navigation
    def go_to(self, index: int) -> None:
        """Shows slice ``index``; pending SAM prompts and proposal are dropped when the slice changes."""
        index = self.editor.check_index(index)
        if index != self._slice_index:
            self._slice_index = index
            self.assist.drop()
            self._gesture = None
            self._message("")
        self._sync_controls()
        self._refresh()

    def scroll(self, steps: int) -> int:
        """Moves ``steps`` slices on (negative: back), stopping at the first and last; returns the new index."""
        self.go_to(scrolled_index(self._slice_index, steps, self.num_slices))
        return self._slice_index

    def set_axis(self, axis: int) -> None:
        """Slices along ``axis`` from now on; only before anything is labelled (the collection has one axis)."""
        before = self.axis
        self.editor.set_axis(axis)
        if self.axis == before:
            return
        self.assist.drop()
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
        """Paints (or erases) along ``points`` ((P, 2) row, col; see ``brush_mask``) with the current class
        and brush radius. Returns the number of pixels that changed."""
        changed = self.editor.stroke(self._slice_index, points, self._class_id, self._brush_radius, erase=erase)
        self._refresh()
        return changed

    def sam_click(self, row: float, col: float, positive: bool = True) -> np.ndarray:
        """Adds a positive (or negative) point prompt and returns the new proposal (H, W) bool."""
        return self._propose(lambda: self.assist.click(self.axis, self._slice_index, self.slice_shape, row, col,
                                                       positive))

    def sam_box(self, row0: float, col0: float, row1: float, col1: float) -> np.ndarray:
        """Replaces every prompt of this slice with the box spanning the two corners; returns the proposal."""
        return self._propose(lambda: self.assist.drag_box(self.axis, self._slice_index, self.slice_shape,
                                                          row0, col0, row1, col1))

    def accept_proposal(self) -> int:
        """Writes the proposal into the current class; returns the number of pixels that changed."""
        if self.proposal is None:
            raise RuntimeError("no SAM proposal to accept: click or drag a box with a SAM tool first")
        proposal = self.proposal
        self.assist.drop()
        self._message(f"proposal accepted into {self._class_id}: {self.classes[self._class_id]}")
        changed = self.editor.paint(self._slice_index, proposal, self._class_id)
        self._refresh()
        return changed

    def reject_proposal(self) -> None:
        """Drops the proposal and the prompts of this slice."""
        self.assist.drop()
        self._message("proposal rejected")
        self._refresh()

    def mark_empty(self) -> int:
        """"No structure on this slice": all 0, labelled (a negative example). Returns pixels changed."""
        self.assist.drop()
        changed = self.editor.mark_empty(self._slice_index)
        self._refresh()
        return changed

    def clear(self) -> int:
        """Sets the slice to 0 and removes it from ``labelled_slices``. Returns pixels changed."""
        self.assist.drop()
        changed = self.editor.clear(self._slice_index)
        self._refresh()
        return changed

    def undo(self) -> bool:
        """Reverts the last change of the current slice; False when there is none."""
        return self._step(self.editor.undo, "undone", "undo")

    def redo(self) -> bool:
        """Re-applies the last undone change of the current slice; False when there is none."""
        return self._step(self.editor.redo, "redone", "redo")

    def _step(self, action: Callable[[int], bool], done: str, verb: str) -> bool:
        stepped = action(self._slice_index)
        self._message(done if stepped else f"nothing to {verb} on this slice")
        if stepped:
            self.assist.drop()
        self._refresh()
        return stepped

    # ------------------------------------------------------------ SAM assist
    def slice_embedding(self, index: int | None = None) -> np.ndarray:
        """(E, E, C) embedding of slice ``index`` (default: current) from the cache, encoding it if absent."""
        return self.assist.slice_embedding(self.axis, self._slice_index if index is None else int(index))

    def _propose(self, prompt: Callable[[], np.ndarray]) -> np.ndarray:
        if not self.assist.is_embedded(self.axis, self._slice_index):
            self._message(f"encoding slice {self._slice_index} (once; it is cached)...")
        try:
            proposal = prompt()
        finally:
            self._refresh()
        self._message(f"proposal: {int(proposal.sum())} pixels; accept or reject it")
        return proposal

    # -------------------------------------------------------------- manifest
    def save_manifest(self, path: str | os.PathLike, labels_path: str | os.PathLike | None = None,
                      overwrite: bool = False) -> Path:
        """Writes the labels (NIfTI on the source grid) and the collection manifest JSON at ``path``.

        The manifest lists this volume with ``labelled_slices``; an existing manifest at ``path`` with
        the same classes and axis keeps its other volumes' entries (:func:`~fewsam_jax.fewshot.collection.other_entries`).
        The image is referenced where it was read from; a volume made from an array is written next to
        the manifest (``<manifest stem>_image.nii.gz``, numbered if that name is taken). ``labels_path``
        defaults to ``<image stem>_labels.nii.gz`` beside the manifest. Returns the manifest path
        (``fewsam_jax.load_collection`` reads it).

        Nothing is written unless all of it may be (:func:`~fewsam_jax.fewshot.collection.save_entry`): the labels
        file may replace an existing file only when this annotator's labels came from it or were saved to it
        (``from_manifest``, ``load_manifest``, an earlier ``save_manifest``) or with ``overwrite=True``: a fresh
        annotator never replaces labels saved before, even those the manifest lists for this volume. It is never
        the image or another volume's labels or image.
        """
        if not self.labelled_slices:
            raise ValueError("save_manifest: no slice is labelled yet; paint, accept a proposal or mark a slice empty")
        try:
            entry = save_entry(path, self.volume, self.labels, self.labelled_slices, self.classes, self.axis,
                               image=self._source_image(), labels_path=labels_path, owned_labels=self._labels_file,
                               overwrite=overwrite)
        except EarlierLabelsError as err:  # the same refusal, with this class's ways to load them
            raise EarlierLabelsError(err.labels, f"{err} (here: load_manifest({str(Path(path).absolute())!r}) or "
                                     "SliceAnnotator.from_manifest)") from None
        self._image_path, self._labels_file = entry.image, entry.labels
        return Path(path).absolute()

    def _source_image(self) -> Path | None:
        if self._image_path is not None and self._image_path.exists():
            return self._image_path
        if self.volume.source and Path(self.volume.source).exists():
            return Path(self.volume.source).absolute()
        return None

    def load_manifest(self, path: str | os.PathLike) -> None:
        """Replaces labels and labelled slices with this volume's entry in the manifest at ``path``
        (:func:`~fewsam_jax.fewshot.collection.entry_for`: the entry whose image is this volume's file; a
        manifest with one entry also matches). Clears the undo history."""
        collection = load_collection(path)
        if collection.axis != self.axis or collection.classes != self.classes:
            raise ManifestError(f"{path}: classes {collection.classes} along axis {collection.axis} differ from this "
                                f"annotator's {self.classes} along axis {self.axis}")
        mine = self._source_image()
        item = entry_for(collection, mine, path)
        self.editor.replace(labels_on_grid(item.labels, self.volume, "labels"), item.slices)
        self._labels_file = Path(item.labels).absolute()
        if mine is None:
            self._image_path = item.image
        self.assist.drop()
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
        if not self.editor.is_labelled(self._slice_index):
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

    def handle_key_event(self, event: dict) -> bool:
        """Applies one canvas key message (:func:`fewsam_jax.shortcuts.key_action`: b brush, e eraser, z undo,
        y redo, arrows previous/next slice); False when the key is not a shortcut."""
        event = parse_key_event(event)
        action = None if event is None else key_action(event["key"])
        if action is None:
            return False
        if action.kind == "tool":
            self.tool = action.value
        elif action.kind == "undo":
            self.undo()
        elif action.kind == "redo":
            self.redo()
        else:
            self.scroll(action.value)
        return True

    def handle_wheel_event(self, event: dict) -> None:
        """Applies one canvas wheel message: ``steps`` slices on (wheel down: next)."""
        event = parse_wheel_event(event)
        if event is not None:
            self.scroll(event["steps"])

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
        self.canvas.on_key(self._guard(self.handle_key_event))
        self.canvas.on_wheel(self._guard(self.handle_wheel_event))
        self.canvas.shortcut_keys = list(KEYS)
        self.canvas.wheel_slices = True
        self._axis_box = W.Dropdown(options=[(AXIS_NAMES[a], a) for a in range(3)], value=self.axis,
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
        hint = W.HTML("<small>SAM click: left = include, right / shift = exclude. SAM box: drag.<br>"
                      "Keys (click the image first): b brush, e eraser, z undo, y redo, arrows or mouse wheel: "
                      "slice.</small>")
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
        row_mm, col_mm = plane_spacing(self.volume.spacing, self.axis)
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
            self._axis_box.value = self.axis
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
        # the text first: the browser applies it on arrival but draws the image once decoded, so a
        # newly drawn image never sits beside the previous status line
        self._status.value = self.status()
        shown = ", ".join(map(str, self.labelled_slices)) or "none yet"
        self._listing.value = f"labelled slices ({len(self.labelled_slices)}): {shown}"
        self.canvas.set_image(self.render())

