"""``ResultViewer``: a segmentation over its volume, with ground truth, per-slice Dice and the slices
the decoder is least sure of (the ones worth labelling next).

A thin view: the scores are :func:`fewsam_jax.metrics.per_slice_overlap` and
:mod:`fewsam_jax.uncertainty`; this class holds the cursor and display state and renders them.

Display: prediction filled in each class's colour at ``opacity``, ground truth as 1-pixel outlines in
the same colour; three orthogonal planes through a cursor (the large one is ``axis``); a per-slice
plot (Dice per class when there is ground truth, else each class's predicted area relative to its
largest; plus the uncertainty curve when logits or presence are given) whose click jumps to that slice.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import ipywidgets as W
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fewsam_jax.fewshot.config import InferenceConfig
from fewsam_jax.io import AXIS_NAMES, Volume, check_axis
from fewsam_jax.label_maps import as_volume, labels_on_grid
from fewsam_jax.metrics import per_slice_overlap
from fewsam_jax.preprocess import Intensity
from fewsam_jax.uncertainty import least_certain, slice_uncertainty
from fewsam_jax.widgets.canvas import SliceCanvas, parse_pointer_event
from fewsam_jax.widgets.render import (
    ColorSpec,
    blend_labels,
    class_colors,
    default_window,
    grey,
    hex_color,
    outline_labels,
    plane_spacing,
    slice_view,
)


class ResultViewer:
    """Shows ``prediction`` (and ``ground_truth``) over ``volume``.

    Args:
      volume: a Volume or a path. prediction, ground_truth: (X, Y, Z) label maps on the volume's
        canonical grid, Volumes or paths.
      classes: {id: name} (default: every label present, named "class <id>"); names must differ.
      axis: the slicing axis of the slider, the plot and ``logits``/``presence``.
      intensity: the display window starts from it ("window" specs) or from the 0.5-99.5 percentiles.
      logits, presence: (N, K, H, W) and (N, K) from ``FewShotSegmenter.predict_volume`` (classes in
        sorted id order), for :func:`slice_uncertainty`.
      presence_threshold: the decoder's ``InferenceConfig.presence_threshold`` (default: the default's), so that
        the uncertainty judges the decisions the labels came from (0: presence decided nothing).
      colors: {id: matplotlib colour}. zoom: display scale of the large plane (default: ~512 px).
    """

    def __init__(
        self,
        volume: Volume | str | os.PathLike,
        prediction,
        *,
        ground_truth=None,
        classes: Mapping[int, str] | None = None,
        axis: int = 2,
        intensity: Intensity | str = "percentile",
        logits: np.ndarray | None = None,
        presence: np.ndarray | None = None,
        presence_threshold: float = InferenceConfig().presence_threshold,
        colors: Mapping[int, ColorSpec] | None = None,
        zoom: float | None = None,
    ):
        self.volume = as_volume(volume, "volume")
        self.prediction = labels_on_grid(prediction, self.volume, "prediction")
        self.ground_truth = None if ground_truth is None else labels_on_grid(ground_truth, self.volume, "ground_truth")
        self.axis = check_axis(axis)
        if classes is None:
            present = set(np.unique(self.prediction).tolist())
            if self.ground_truth is not None:
                present |= set(np.unique(self.ground_truth).tolist())
            classes = {k: f"class {k}" for k in sorted(present - {0})} or {1: "class 1"}
        self.classes = {int(k): str(v) for k, v in sorted(classes.items())}
        if 0 in self.classes or len(set(self.classes.values())) != len(self.classes):
            raise ValueError(f"classes: ids must be > 0 and names distinct, got {self.classes}")
        self.colors = class_colors(self.classes, colors)
        n, (h, w) = self.num_slices, slice_view(self.volume.array, self.axis, 0).shape
        if logits is not None:
            logits = np.asarray(logits)
            if logits.shape != (n, len(self.classes), h, w):
                raise ValueError(f"logits: expected shape {(n, len(self.classes), h, w)} (slices along axis {self.axis}, "
                                 f"classes, slice rows, columns), got {logits.shape}")
        if presence is not None:
            presence = np.asarray(presence)
            if presence.shape != (n, len(self.classes)):
                raise ValueError(f"presence: expected shape {(n, len(self.classes))}, got {presence.shape}")
        self.logits, self.presence = logits, presence
        scored = logits is not None or (presence is not None and presence_threshold > 0)
        self.uncertainty = slice_uncertainty(logits, presence, presence_threshold) if scored else None
        intensity = Intensity.coerce(intensity)
        if intensity.mode == "window":
            self.level, self.width = float(intensity.level), float(intensity.width)
        else:
            self.level, self.width = default_window(self.volume.array)
        self.cursor = [s // 2 for s in self.volume.shape]
        self.visible = set(self.classes)
        self.opacity = 0.45
        self.show_prediction = True
        self.show_ground_truth = self.ground_truth is not None
        self._dice = self.per_slice_dice() if self.ground_truth is not None else None
        self._build_ui(zoom)
        self._refresh()

    @property
    def num_slices(self) -> int:
        return self.volume.shape[self.axis]

    @property
    def slice_index(self) -> int:
        return self.cursor[self.axis]

    # ------------------------------------------------------------ analysis
    def per_slice_dice(self) -> dict[str, np.ndarray]:
        """{class name: (N,) Dice per slice along ``axis``}, NaN where both masks are empty."""
        if self.ground_truth is None:
            raise ValueError("per_slice_dice: needs ground_truth")
        out = {}
        for class_id, name in self.classes.items():
            dice, _, empty = per_slice_overlap(self.prediction == class_id, self.ground_truth == class_id, self.axis)
            out[name] = np.where(empty, np.nan, dice)
        return out

    def least_certain(self, count: int = 5, min_gap: int = 2) -> list[int]:
        """Up to ``count`` slices to label next (:func:`fewsam_jax.uncertainty.least_certain` of ``uncertainty``)."""
        if self.uncertainty is None:
            raise ValueError("least_certain: needs logits and/or presence (from FewShotSegmenter.predict_volume)")
        return least_certain(self.uncertainty, count, min_gap)

    # ---------------------------------------------------------- navigation
    def go_to(self, index: int) -> None:
        """Moves the cursor to slice ``index`` along ``axis``."""
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"index: expected an integer slice index, got {index!r}")
        if not 0 <= index < self.num_slices:
            raise ValueError(f"index: slice {index} out of range 0..{self.num_slices - 1} along axis {self.axis}")
        self.cursor[self.axis] = int(index)
        self._refresh()

    def set_cursor(self, x: int, y: int, z: int) -> None:
        """Moves the cursor to canonical voxel (x, y, z) (clipped into the volume)."""
        self.cursor = [int(np.clip(v, 0, s - 1)) for v, s in zip((x, y, z), self.volume.shape)]
        self._refresh()

    def set_visible(self, class_id: int, visible: bool) -> None:
        if class_id not in self.classes:
            raise ValueError(f"class_id: {class_id!r} is not one of the classes {self.classes}")
        (self.visible.add if visible else self.visible.discard)(class_id)
        self._refresh()

    def set_opacity(self, alpha: float) -> None:
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha: expected an opacity in [0, 1], got {alpha}")
        self.opacity = float(alpha)
        self._refresh()

    def set_layers(self, prediction: bool | None = None, ground_truth: bool | None = None) -> None:
        """Shows or hides the prediction fill and the ground-truth outlines."""
        if prediction is not None:
            self.show_prediction = bool(prediction)
        if ground_truth is not None:
            self.show_ground_truth = bool(ground_truth) and self.ground_truth is not None
        self._refresh()

    def plane_point(self, plane: int, row: float, col: float) -> tuple[int, int, int]:
        """The canonical voxel under (row, col) of the plane along ``plane`` through the cursor."""
        plane = check_axis(plane)
        a, b = (d for d in range(3) if d != plane)
        point = list(self.cursor)
        point[b] = int(np.clip(self.volume.shape[b] - 1 - round(row), 0, self.volume.shape[b] - 1))
        point[a] = int(np.clip(self.volume.shape[a] - 1 - round(col), 0, self.volume.shape[a] - 1))
        return tuple(point)

    # ------------------------------------------------------------ rendering
    def render_plane(self, plane: int) -> np.ndarray:
        """(H, W, 3) uint8: the plane along ``plane`` through the cursor, overlays and crosshair."""
        plane = check_axis(plane)
        index = self.cursor[plane]
        rgb = grey(slice_view(self.volume.array, plane, index), self.level, self.width)
        if self.show_prediction:
            blend_labels(rgb, slice_view(self.prediction, plane, index), self.colors, self.opacity, self.visible)
        if self.show_ground_truth:
            outline_labels(rgb, slice_view(self.ground_truth, plane, index), self.colors, self.visible)
        a, b = (d for d in range(3) if d != plane)
        row, col = self.volume.shape[b] - 1 - self.cursor[b], self.volume.shape[a] - 1 - self.cursor[a]
        dashed = (np.arange(max(rgb.shape[:2])) // 2) % 2 == 0
        rgb[row, dashed[: rgb.shape[1]]] = (250, 220, 0)
        rgb[dashed[: rgb.shape[0]], col] = (250, 220, 0)
        return rgb

    def _plot(self) -> None:
        """Draws the per-slice plot once; keeps its pixels and the pixel <-> slice mapping. The legend
        (class names, "uncertainty") sits above the axes in as many columns as fit the figure's width;
        the y-label names the metric."""
        figure = Figure(figsize=(6.4, 2.4), dpi=100, layout="constrained")
        canvas = FigureCanvasAgg(figure)
        ax = figure.add_subplot()
        x = np.arange(self.num_slices)
        if self._dice is not None:
            curves, metric = self._dice, "Dice"
        else:
            slices = np.moveaxis(self.prediction, self.axis, 0).reshape(self.num_slices, -1)
            areas = {name: (slices == class_id).sum(axis=1) for class_id, name in self.classes.items()}
            curves, metric = {name: area / max(area.max(), 1) for name, area in areas.items()}, "area / largest"
        for class_id, name in self.classes.items():
            ax.plot(x, curves[name], ".-", color=self.colors[class_id] / 255, label=name, lw=1, ms=3)
        if self.uncertainty is not None:
            ax.plot(x, self.uncertainty, "--", color="0.35", lw=1, label="uncertainty")
        ax.set_xlim(-0.5, self.num_slices - 0.5)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(f"{AXIS_NAMES[self.axis]} slice (click to go there)", fontsize=8)
        ax.set_ylabel(metric, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        renderer = canvas.get_renderer()
        for columns in range(len(handles), 0, -1):  # the most columns whose row fits the figure
            legend = figure.legend(handles, labels, loc="outside upper center", ncols=columns, fontsize=7,
                                   frameon=False, columnspacing=1.2, handlelength=2.2)
            if columns == 1 or legend.get_window_extent(renderer).width <= 0.98 * figure.bbox.width:
                break
            legend.remove()
        canvas.draw()
        self._plot_figure = figure
        self._plot_rgb = np.asarray(canvas.buffer_rgba())[..., :3].copy()
        self._plot_transform = ax.transData
        self._plot_axes_box = ax.get_window_extent()

    def plot_slice_at(self, row: float, col: float) -> int | None:
        """The slice index under pixel (row, col) of the plot image; None outside the plot's axes."""
        height = self._plot_rgb.shape[0]
        x, y = col + 0.5, height - row - 0.5
        box = self._plot_axes_box
        if not (box.x0 <= x <= box.x1 and box.y0 <= y <= box.y1):
            return None
        data_x = self._plot_transform.inverted().transform((x, y))[0]
        return int(np.clip(round(data_x), 0, self.num_slices - 1))

    def render_plot(self) -> np.ndarray:
        """(H, W, 3) uint8: the per-slice plot with a line at the current slice."""
        rgb = self._plot_rgb.copy()
        height = rgb.shape[0]
        x = self._plot_transform.transform((self.slice_index, 0))[0]
        col = int(np.clip(round(x - 0.5), 0, rgb.shape[1] - 1))
        box = self._plot_axes_box
        top, bottom = int(height - box.y1), int(height - box.y0)
        rgb[max(top, 0):bottom, max(col - 1, 0):col + 1] = (220, 30, 30)
        return rgb

    def status(self) -> str:
        """One line: slice, cursor, Dice and uncertainty of the current slice."""
        i = self.slice_index
        parts = [f"slice {i}/{self.num_slices - 1}", f"cursor (x, y, z) = {tuple(self.cursor)}"]
        if self._dice is not None:
            scores = ", ".join(f"{name} {'-' if np.isnan(d[i]) else f'{d[i]:.3f}'}" for name, d in self._dice.items())
            parts.append(f"Dice: {scores}")
        if self.uncertainty is not None:
            parts.append(f"uncertainty {self.uncertainty[i]:.3f}")
        return " | ".join(parts)

    # ------------------------------------------------------------------ UI
    def handle_plane_event(self, plane: int, event: dict) -> None:
        """A pointer press or drag on the plane along ``plane`` moves the cursor there."""
        event = parse_pointer_event(event)
        if event is not None and event["phase"] in ("down", "move"):
            self.set_cursor(*self.plane_point(plane, event["row"], event["col"]))

    def handle_plot_event(self, event: dict) -> None:
        """A press (or drag) on the per-slice plot jumps to the slice under the pointer."""
        event = parse_pointer_event(event)
        if event is not None and event["phase"] in ("down", "move"):
            index = self.plot_slice_at(event["row"], event["col"])
            if index is not None and index != self.slice_index:
                self.go_to(index)

    @property
    def widget(self) -> W.Widget:
        return self._widget

    def _repr_mimebundle_(self, **kwargs):
        return self._widget._repr_mimebundle_(**kwargs)

    def _build_ui(self, zoom: float | None) -> None:
        self._syncing = False
        self._msg = W.Label()
        self._msg.add_class("fewsam-message")

        def guard(action):
            def run(*args):
                try:
                    action(*args)
                except Exception as err:  # noqa: BLE001 - shown to the user
                    self._msg.value = f"{type(err).__name__}: {err}"

            return run

        self.canvases = {}
        others = [p for p in range(3) if p != self.axis]
        for plane in (self.axis, *others):
            h, w = slice_view(self.volume.array, plane, 0).shape
            row_mm, col_mm = plane_spacing(self.volume.spacing, plane)
            target = 512 if plane == self.axis else 256
            scale = zoom if zoom and plane == self.axis else (zoom / 2 if zoom else None)
            if scale is None:
                scale = max(1, target // max(h, w)) if max(h, w) <= target else target / max(h, w)
            canvas = SliceCanvas(tool="click", zoom=scale, aspect=row_mm / col_mm)
            canvas.add_class(f"fewsam-plane-{AXIS_NAMES[plane]}")
            canvas.on_pointer(guard(lambda event, p=plane: self.handle_plane_event(p, event)))
            self.canvases[plane] = canvas
        self._plot()
        self.plot_canvas = SliceCanvas(tool="click")
        self.plot_canvas.add_class("fewsam-dice-plot")
        self.plot_canvas.on_pointer(guard(self.handle_plot_event))

        self._slider = W.IntSlider(min=0, max=self.num_slices - 1, description=AXIS_NAMES[self.axis],
                                   layout=W.Layout(width="420px"))
        self._opacity = W.FloatSlider(min=0, max=1, step=0.05, value=self.opacity, description="opacity",
                                      layout=W.Layout(width="260px"))
        self._toggles = {}
        for class_id, name in self.classes.items():
            box = W.Checkbox(value=True, description=name, indent=False, layout=W.Layout(width="auto"))
            box.add_class(f"fewsam-toggle-{class_id}")
            self._toggles[class_id] = box
        swatches = [W.HBox([W.HTML(f'<span style="display:inline-block;width:12px;height:12px;margin-top:9px;'
                                   f'background:{hex_color(self.colors[k])}"></span>'), box])
                    for k, box in self._toggles.items()]
        self._layer_pred = W.Checkbox(value=True, description="prediction (filled)", indent=False,
                                      layout=W.Layout(width="auto"))
        self._layer_truth = W.Checkbox(value=self.show_ground_truth, description="ground truth (outline)",
                                       indent=False, disabled=self.ground_truth is None, layout=W.Layout(width="auto"))
        uncertain = []
        if self.uncertainty is not None:
            for index in self.least_certain(5):
                button = W.Button(description=f"slice {index} ({self.uncertainty[index]:.2f})",
                                  tooltip="jump to this slice", layout=W.Layout(width="auto"))
                button.add_class("fewsam-uncertain")
                button.on_click(guard(lambda _b, i=index: self.go_to(i)))
                uncertain.append(button)
        self._status = W.Label()
        self._status.add_class("fewsam-status")
        rows = [
            W.HBox([self._slider, self._opacity]),
            W.HBox([*swatches, self._layer_pred, self._layer_truth]),
            W.HBox([self.canvases[self.axis], W.VBox([self.canvases[p] for p in others])]),
            self.plot_canvas,
        ]
        if uncertain:
            rows.append(W.HBox([W.Label("least certain (label these next):"), *uncertain]))
        self._widget = W.VBox([*rows, self._status, self._msg])
        self._widget.add_class("fewsam-viewer")

        def observe(control, action):
            def changed(change):
                if not self._syncing:
                    guard(action)(change["new"])

            control.observe(changed, names="value")

        observe(self._slider, self.go_to)
        observe(self._opacity, self.set_opacity)
        for class_id, box in self._toggles.items():
            observe(box, lambda v, k=class_id: self.set_visible(k, v))
        observe(self._layer_pred, lambda v: self.set_layers(prediction=v))
        observe(self._layer_truth, lambda v: self.set_layers(ground_truth=v))

    def _refresh(self) -> None:
        if not hasattr(self, "_widget"):
            return
        self._syncing = True
        try:
            self._slider.value = self.slice_index
            self._opacity.value = self.opacity
            for class_id, box in self._toggles.items():
                box.value = class_id in self.visible
        finally:
            self._syncing = False
        self._status.value = self.status()  # before the images, as in the annotator
        for plane, canvas in self.canvases.items():
            canvas.set_image(self.render_plane(plane))
        self.plot_canvas.set_image(self.render_plot())
