"""LabelEditor and SamAssist without a widget: strokes, masks, empty slices, undo/redo, prompts."""

from __future__ import annotations

import numpy as np
import pytest

from fewsam_jax import from_array, get_slices
from fewsam_jax.label_editor import LabelEditor, brush_mask, check_classes
from fewsam_jax.preprocess import Intensity
from fewsam_jax.sam_assist import SamAssist

SHAPE = (12, 10, 5)  # axial slices are (10, 12)
CLASSES = {1: "left", 2: "right"}


def slices(editor: LabelEditor, axis: int = 2) -> np.ndarray:
    return get_slices(editor.labels, axis)


def test_slice_labels_is_a_writable_view_in_display_orientation():
    editor = LabelEditor(SHAPE, CLASSES)
    assert editor.slice_shape == (10, 12) and editor.num_slices == 5
    editor.slice_labels(3)[2, 7] = 2
    assert slices(editor)[3][2, 7] == 2 and editor.labels.sum() == 2


def test_stroke_paints_a_disk_and_the_eraser_never_adds_a_slice():
    editor = LabelEditor(SHAPE, CLASSES)
    assert editor.stroke(1, [(4, 5)], 1, radius=2.0) == brush_mask((10, 12), [(4, 5)], 2.0).sum() == 13
    assert editor.labelled_slices == [1]
    assert editor.stroke(2, [(4, 5), (4, 9)], 1, radius=1.0, erase=True) == 0
    assert editor.labelled_slices == [1]  # erasing an unlabelled slice does not label it
    editor.stroke(1, [(4, 5)], 2, radius=1.0)  # another class overwrites
    assert (slices(editor)[1] == 2).sum() == 5 and (slices(editor)[1] == 1).sum() == 8
    editor.stroke(1, [(0, 0), (9, 11)], 1, radius=20, erase=True)
    assert not editor.labels.any() and editor.labelled_slices == [1]  # erased to a negative example
    with pytest.raises(ValueError, match="points"):
        editor.stroke(1, np.zeros((0, 2)), 1, radius=1.0)
    with pytest.raises(ValueError, match="radius"):
        editor.stroke(1, [(1, 1)], 1, radius=0.1)
    with pytest.raises(ValueError, match="class_id"):
        editor.stroke(1, [(1, 1)], 3, radius=1.0)
    with pytest.raises(ValueError, match="out of range"):
        editor.stroke(5, [(1, 1)], 1, radius=1.0)


def test_paint_mark_empty_clear_and_per_slice_undo_redo():
    editor = LabelEditor(SHAPE, CLASSES, history=2)
    mask = np.zeros((10, 12), bool)
    mask[2:4, 3:6] = True
    assert editor.paint(0, mask, 2) == 6 and editor.labelled_slices == [0]
    assert editor.paint(4, np.zeros((10, 12), bool), 1) == 0 and editor.labelled_slices == [0]  # nothing painted
    assert editor.mark_empty(4) == 0 and editor.labelled_slices == [0, 4]
    assert editor.clear(0) == 6 and editor.labelled_slices == [4] and not editor.labels.any()
    assert editor.undo(0) and editor.labelled_slices == [0, 4] and (slices(editor)[0] == 2).sum() == 6
    assert editor.undo(0) and editor.labelled_slices == [4] and not editor.labels.any()
    assert not editor.undo(0)  # per slice: slice 4's mark_empty is not undone from slice 0
    assert editor.redo(0) and (slices(editor)[0] == 2).sum() == 6
    editor.stroke(0, [(8, 8)], 1, radius=0.5)  # a new change drops the redo steps
    assert not editor.redo(0)
    for _ in range(3):
        editor.stroke(1, [(5, 5)], 1 + _ % 2, radius=1.0)
    assert editor.undo(1) and editor.undo(1) and not editor.undo(1)  # history=2 steps kept
    with pytest.raises(ValueError, match="mask"):
        editor.paint(0, np.ones((12, 10), bool), 1)


def test_initial_labels_axis_and_classes():
    labels = np.zeros(SHAPE, np.int32)
    labels[3, 4, 2] = 1
    editor = LabelEditor(SHAPE, CLASSES, labels=labels.astype(float))
    assert editor.labels.dtype == np.int32 and editor.labelled_slices == [2]
    assert LabelEditor(SHAPE, CLASSES, labels=labels, labelled_slices=[0, 2]).labelled_slices == [0, 2]
    with pytest.raises(ValueError, match="labels: values"):
        LabelEditor(SHAPE, CLASSES, labels=np.full(SHAPE, 3))
    with pytest.raises(ValueError, match="labelled_slices"):
        LabelEditor(SHAPE, CLASSES, labelled_slices=[5])
    with pytest.raises(ValueError, match="single axis"):
        editor.set_axis(0)
    empty = LabelEditor(SHAPE, CLASSES)
    empty.set_axis(0)
    assert empty.slice_shape == (5, 10) and empty.num_slices == 12
    assert check_classes({2: "b", 1: "a"}) == {1: "a", 2: "b"}
    for bad in ({}, {0: "background"}, {True: "x"}, {40000: "x"}):
        with pytest.raises(ValueError, match="classes"):
            check_classes(bad)


def test_sam_assist_checks_prompts_and_is_off_without_a_model():
    volume = from_array(np.zeros(SHAPE, np.float32))
    assist = SamAssist(volume, None, Intensity.parse("minmax"))
    with pytest.raises(ValueError, match="outside the 10x12 slice"):
        assist.click(2, 0, (10, 12), 10.0, 3.0)
    assert assist.points == []
    with pytest.raises(RuntimeError, match="SAM assist is off"):
        assist.drag_box(2, 0, (10, 12), 1, 1, 5, 6)
    assert assist.box is None and assist.proposal is None  # a failed prompt leaves none behind
    with pytest.raises(TypeError, match="model"):
        SamAssist(volume, 3, Intensity.parse("minmax"))
