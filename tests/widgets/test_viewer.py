"""ResultViewer: per-slice Dice, uncertainty ranking, plot clicks, orthogonal planes and overlays.

The scores themselves without a widget: tests/test_uncertainty.py.
"""

from __future__ import annotations

import numpy as np
import pytest

import fewsam_jax as fs
from fewsam_jax.widgets import ResultViewer, slice_view
from fewsam_jax.widgets.render import grey, png_bytes

SHAPE = (24, 20, 10)
H90 = 0.4689956  # binary entropy in bits of p = 0.9
CLASSES = {1: "liver", 2: "spleen"}


def pointer(phase, row, col):
    return {"kind": "pointer", "phase": phase, "row": row, "col": col, "button": 0,
            "shift": False, "alt": False, "ctrl": False}


@pytest.fixture
def case():
    rng = np.random.default_rng(0)
    volume = fs.from_array(rng.random(SHAPE, dtype=np.float32) * 100, spacing=(1.0, 1.0, 2.5))
    truth = np.zeros(SHAPE, np.int32)
    truth[4:12, 5:15, 2:8] = 1
    truth[15:20, 2:6, 4:9] = 2
    prediction = truth.copy()
    prediction[4:8, 5:15, 6:8] = 0  # under-segment the top of class 1
    prediction[15:20, 2:6, 9] = 2  # a false positive slice of class 2
    return volume, prediction, truth


def test_per_slice_dice_is_exact_with_nan_where_both_empty(case):
    volume, prediction, truth = case
    viewer = ResultViewer(volume, prediction, ground_truth=truth, classes=CLASSES)
    dice = viewer.per_slice_dice()
    assert set(dice) == {"liver", "spleen"}
    liver = np.full(10, np.nan)
    liver[2:6] = 1.0
    liver[6:8] = 2 * 40 / (40 + 80)  # prediction keeps x 8..11 (40 px) of the 80 true pixels
    np.testing.assert_allclose(dice["liver"], liver)
    spleen = np.full(10, np.nan)
    spleen[4:9] = 1.0
    spleen[9] = 0.0
    np.testing.assert_allclose(dice["spleen"], spleen)
    with pytest.raises(ValueError, match="needs ground_truth"):
        ResultViewer(volume, prediction).per_slice_dice()


def test_least_certain_picks_the_ambiguous_slice_at_any_logit_scale(case):
    volume, prediction, truth = case
    scale = 0.05  # an under-confident decoder: no logit reaches 1
    logits = np.full((10, 2, 20, 24), -10 * scale, np.float32)
    logits[:, 0, 5:15, 5:15] = scale  # class 1 decided alike on every slice...
    logits[7, 0, 5:15, 5:15] = 0.04 * scale  # ...except slice 7, all but at the threshold,
    logits[3, 0, 5:10, 5:15] = 0.2 * scale  # slice 3, half of it close,
    logits[4, 0, 5:8, 5:15] = 0.2 * scale  # and slice 4, a third of it close
    viewer = ResultViewer(volume, prediction, ground_truth=truth, classes=CLASSES, logits=logits)
    assert viewer.least_certain(2) == [7, 3]
    assert viewer.least_certain(3, min_gap=1) == [7, 3, 4]
    assert viewer.least_certain(3) == [7, 3, 0]  # 4 neighbours 3; then the lowest of the tied rest
    # Slice 7: H(sigmoid(0.04 ln 9)) ~ 0.997; slice 3: (H(0.9) + H(sigmoid(0.2 ln 9))) / 2 = 0.717.
    buttons = [w for w in viewer.widget.children[-3].children if "fewsam-uncertain" in w._dom_classes]
    assert [b.description for b in buttons[:2]] == ["slice 7 (1.00)", "slice 3 (0.72)"]
    np.testing.assert_allclose(viewer.uncertainty[[0, 1, 2, 5, 6, 8, 9]], H90, rtol=1e-5)
    buttons[1].click()
    assert viewer.slice_index == 3 and viewer._slider.value == 3
    with pytest.raises(ValueError, match="min_gap"):
        viewer.least_certain(3, min_gap=0)
    with pytest.raises(ValueError, match="needs logits"):
        ResultViewer(volume, prediction).least_certain()
    with pytest.raises(ValueError, match="logits: expected shape"):
        ResultViewer(volume, prediction, classes=CLASSES, logits=logits[:, :, :, :20])


def test_plot_legend_and_labels_fit_the_figure(case):
    volume, prediction, truth = case
    long_names = {1: "left anterior hippocampus head", 2: "right posterior hippocampus tail"}
    presence = np.full((10, 2), 0.7, np.float32)
    # presence alone is scored only for a decoder whose presence gates its labels (the default's does not)
    assert ResultViewer(volume, prediction, classes=long_names, presence=presence).uncertainty is None
    viewer = ResultViewer(volume, prediction, ground_truth=truth, classes=long_names, presence=presence,
                          presence_threshold=0.5)
    figure = viewer._plot_figure
    renderer = figure.canvas.get_renderer()
    (ax,) = figure.axes
    legend = figure.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == [*long_names.values(), "uncertainty"]
    assert ax.get_ylabel() == "Dice"
    bounds = figure.bbox
    for box in (legend.get_window_extent(renderer), ax.get_tightbbox(renderer)):  # the axes with its labels
        assert bounds.x0 <= box.x0 and box.x1 <= bounds.x1 and bounds.y0 <= box.y0 and box.y1 <= bounds.y1, box
    assert legend.get_window_extent(renderer).y0 >= ax.get_window_extent(renderer).y1  # above the axes


def test_plot_click_jumps_to_the_slice_under_it(case):
    volume, prediction, truth = case
    viewer = ResultViewer(volume, prediction, ground_truth=truth, classes=CLASSES)
    height = viewer._plot_rgb.shape[0]
    box = viewer._plot_axes_box
    row = height - (box.y0 + box.y1) / 2
    for index in range(viewer.num_slices):
        col = viewer._plot_transform.transform((index, 0.5))[0] - 0.5
        assert viewer.plot_slice_at(row, col) == index
        viewer.plot_canvas._handle_custom_msg(pointer("down", row, col), [])
        assert viewer.slice_index == index
        assert viewer.plot_canvas.png == png_bytes(viewer.render_plot())
    assert viewer.plot_slice_at(row, 1.0) is None  # left of the axes: no jump
    viewer.plot_canvas._handle_custom_msg(pointer("down", row, 1.0), [])
    assert viewer.slice_index == viewer.num_slices - 1


def test_orthogonal_planes_follow_the_cursor(case):
    volume, prediction, truth = case
    viewer = ResultViewer(volume, prediction, ground_truth=truth, classes=CLASSES)
    assert set(viewer.canvases) == {0, 1, 2}
    viewer.canvases[1]._handle_custom_msg(pointer("down", 3.0, 7.0), [])  # click on the coronal plane
    x, y, z = viewer.cursor
    assert y == SHAPE[1] // 2
    coronal = slice_view(volume.array, 1, y)
    assert volume.array[x, y, z] == coronal[3, 7]
    assert viewer.slice_index == z
    axial = slice_view(volume.array, 2, z)
    row, col = SHAPE[1] - 1 - y, SHAPE[0] - 1 - x
    assert axial[row, col] == volume.array[x, y, z]
    assert viewer.plane_point(2, row, col) == (x, y, z)
    assert viewer.canvases[1].aspect == 2.5  # coronal rows are z, 2.5 mm
    viewer.go_to(4)
    assert viewer.cursor[2] == 4 and viewer._status.value.startswith("slice 4/9")


def test_overlay_toggles_and_opacity(case):
    volume, prediction, truth = case
    viewer = ResultViewer(volume, prediction, ground_truth=truth, classes=CLASSES)
    viewer.go_to(5)
    plain = grey(slice_view(volume.array, 2, 5), viewer.level, viewer.width)
    pred = slice_view(prediction, 2, 5)
    shown = viewer.render_plane(2)
    assert (shown[pred == 1] != plain[pred == 1]).any(axis=-1).all()
    viewer.set_layers(ground_truth=False)
    viewer._toggles[1].value = False  # the checkbox, as a user unticks it
    assert viewer.visible == {2}
    hidden = viewer.render_plane(2)
    crosshair = np.zeros(pred.shape, bool)
    crosshair[SHAPE[1] - 1 - viewer.cursor[1], :] = True
    crosshair[:, SHAPE[0] - 1 - viewer.cursor[0]] = True
    np.testing.assert_array_equal(hidden[(pred == 1) & ~crosshair], plain[(pred == 1) & ~crosshair])
    viewer.set_visible(1, True)
    viewer.set_opacity(0.0)
    np.testing.assert_array_equal(viewer.render_plane(2)[~crosshair], plain[~crosshair])
    viewer.set_layers(ground_truth=True)
    outlined = viewer.render_plane(2)
    assert (outlined[(slice_view(truth, 2, 5) == 1) & ~crosshair] != plain[(slice_view(truth, 2, 5) == 1)
                                                                           & ~crosshair]).any()
    with pytest.raises(ValueError, match="opacity"):
        viewer.set_opacity(1.5)


def test_viewer_without_ground_truth_plots_areas(case):
    volume, prediction, _ = case
    viewer = ResultViewer(volume, prediction)
    assert viewer.classes == {1: "class 1", 2: "class 2"}
    assert viewer.show_ground_truth is False and viewer._layer_truth.disabled
    assert "Dice" not in viewer.status()
    assert viewer.plot_canvas.png.startswith(b"\x89PNG")
