"""SliceAnnotator: brush, eraser, undo/redo, SAM assist, canvas events and the manifest, on exact arrays."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

import fewsam_jax as fs
from fewsam_jax.fewshot.collection import load_support_item
from fewsam_jax.widgets import SliceAnnotator, brush_mask, slice_view

CLASSES = {1: "anterior", 2: "posterior"}
SHAPE = (40, 30, 6)  # axial slices are (30, 40): rows = Y reversed, columns = X reversed


def make_volume(seed=0):
    return fs.from_array(np.random.default_rng(seed).random(SHAPE, dtype=np.float32))


def disk(shape, row, col, radius):
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    return (rr - row) ** 2 + (cc - col) ** 2 <= radius**2


def pointer(phase, row, col, button=0, **keys):
    """A pointer message exactly as canvas.js sends it."""
    return {"kind": "pointer", "phase": phase, "row": row, "col": col, "button": button,
            "shift": keys.get("shift", False), "alt": False, "ctrl": False}


def send(annotator, *events):
    """Delivers browser messages through the widget's comm handler (the UI's own path)."""
    for event in events:
        annotator.canvas._handle_custom_msg(event, [])


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slice_view_is_a_writable_view_of_get_slices(axis):
    array = np.arange(np.prod(SHAPE)).reshape(SHAPE)
    for index in (0, SHAPE[axis] - 1):
        view = slice_view(array, axis, index)
        np.testing.assert_array_equal(view, fs.get_slices(array, axis)[index])
        view[0, 1] = -7
        assert fs.get_slices(array, axis)[index][0, 1] == -7


def test_brush_stroke_paints_a_disk_on_the_current_slice():
    annotator = SliceAnnotator(make_volume(), CLASSES, brush_radius=3)
    index = annotator.slice_index
    assert annotator.stroke([(10, 12)]) == disk((30, 40), 10, 12, 3).sum()
    expected = disk((30, 40), 10, 12, 3).astype(np.int32)
    np.testing.assert_array_equal(fs.get_slices(annotator.labels, 2)[index], expected)
    assert annotator.labels.sum() == expected.sum()  # nothing outside the slice
    assert annotator.labelled_slices == [index]
    assert annotator.status() == f"{expected.sum()} labelled pixels on slice {index} (labelled)"


def test_fast_stroke_has_no_gaps():
    radius = 1.5
    mask = brush_mask((30, 40), [(5, 2), (12, 35)], radius)
    samples = np.linspace(0, 1, 4097)[:, None] * np.array([7, 33]) + np.array([5, 2])
    expected = np.zeros((30, 40), bool)
    for row, col in samples:
        expected |= disk((30, 40), row, col, radius)
    # pixels whose centre is within the radius of the segment, up to the sampling's 1e-2 px error
    rr, cc = np.mgrid[:30, :40]
    t = np.clip(((rr - 5) * 7 + (cc - 2) * 33) / (7**2 + 33**2), 0, 1)
    dist = np.hypot(rr - 5 - 7 * t, cc - 2 - 33 * t)
    decided = np.abs(dist - radius) > 1e-2
    np.testing.assert_array_equal(mask[decided], expected[decided])
    assert np.all(np.diff(np.flatnonzero(mask.any(axis=0))) == 1)  # one connected run of columns


def test_eraser_removes_any_class_and_never_adds_a_slice():
    annotator = SliceAnnotator(make_volume(), CLASSES, brush_radius=2)
    annotator.stroke([(10, 10), (10, 20)])
    annotator.class_id = 2
    annotator.stroke([(14, 10), (14, 20)])
    before = annotator.slice_labels().copy()
    annotator.brush_radius = 1
    changed = annotator.stroke([(12, 8), (12, 22)], erase=True)
    erased = brush_mask((30, 40), [(12, 8), (12, 22)], 1)
    after = annotator.slice_labels()
    assert changed == np.count_nonzero(before[erased])
    assert not after[erased].any()
    np.testing.assert_array_equal(after[~erased], before[~erased])
    assert {1, 2} <= set(np.unique(before[erased]))  # both classes were under the eraser
    annotator.brush_radius = 30
    annotator.stroke([(15, 20)], erase=True)
    assert not annotator.labels.any()
    assert annotator.labelled_slices == [annotator.slice_index]  # now an empty (negative) labelled slice
    annotator.go_to(0)
    annotator.stroke([(5, 5)], erase=True)
    assert 0 not in annotator.labelled_slices


def test_undo_redo_per_slice_over_every_action():
    annotator = SliceAnnotator(make_volume(), CLASSES, brush_radius=2)
    annotator.go_to(4)
    annotator.stroke([(20, 20)])
    annotator.go_to(1)
    states = [(annotator.labels.copy(), annotator.labelled_slices)]
    annotator.stroke([(5, 5), (5, 15)])
    states.append((annotator.labels.copy(), annotator.labelled_slices))
    annotator.class_id = 2
    annotator.stroke([(6, 10)])
    states.append((annotator.labels.copy(), annotator.labelled_slices))
    annotator.mark_empty()
    assert not annotator.slice_labels().any() and annotator.labelled_slices == [1, 4]
    states.append((annotator.labels.copy(), annotator.labelled_slices))
    assert len({(labels.tobytes(), tuple(labelled)) for labels, labelled in states}) == 4
    for labels, labelled in reversed(states[:-1]):  # undo on slice 1 leaves slice 4 alone
        assert annotator.undo()
        np.testing.assert_array_equal(annotator.labels, labels)
        assert annotator.labelled_slices == labelled
    assert not annotator.undo()
    assert annotator.redo() and annotator.redo()
    np.testing.assert_array_equal(annotator.labels, states[2][0])
    annotator.stroke([(25, 30)])  # a new action drops the redo stack
    assert not annotator.redo()
    annotator.go_to(4)
    assert annotator.undo() and not annotator.labels[:, :, 4].any()


def test_history_is_bounded():
    annotator = SliceAnnotator(make_volume(), CLASSES, brush_radius=1, history=2)
    for col in (5, 10, 15):
        annotator.stroke([(5, col)])
    assert annotator.undo() and annotator.undo()
    assert not annotator.undo()
    assert annotator.slice_labels().sum() == disk((30, 40), 5, 5, 1).sum()  # the oldest stroke stays


def test_clear_unlabels_and_is_undoable():
    annotator = SliceAnnotator(make_volume(), CLASSES)
    annotator.stroke([(10, 10)])
    painted = annotator.labels.copy()
    annotator.clear()
    assert not annotator.labels.any() and annotator.labelled_slices == []
    annotator.undo()
    np.testing.assert_array_equal(annotator.labels, painted)
    assert annotator.labelled_slices == [annotator.slice_index]


def test_canvas_messages_do_what_the_methods_do():
    by_events = SliceAnnotator(make_volume(), CLASSES, brush_radius=2)
    by_calls = SliceAnnotator(make_volume(), CLASSES, brush_radius=2)
    stroke = [(3.2, 4.9), (3.4, 9.6), (8.0, 20.2), (8.1, 30.0)]
    send(by_events, pointer("down", *stroke[0]), *(pointer("move", *p) for p in stroke[1:-1]), pointer("up", *stroke[-1]))
    by_calls.stroke(stroke)
    np.testing.assert_array_equal(by_events.labels, by_calls.labels)
    assert by_events.labels.any()
    by_events.tool = "eraser"
    send(by_events, pointer("down", 8, 15), pointer("move", 8, 25), pointer("up", 8, 30))
    by_calls.stroke([(8, 15), (8, 25), (8, 30)], erase=True)
    np.testing.assert_array_equal(by_events.labels, by_calls.labels)
    by_events.tool = "brush"
    send(by_events, pointer("down", 20, 20), pointer("cancel", 20, 25))  # a cancelled stroke paints nothing
    np.testing.assert_array_equal(by_events.labels, by_calls.labels)
    send(by_events, {"kind": "pointer", "phase": "down"})  # malformed: reported, nothing changes
    assert "row" in by_events._msg.value
    np.testing.assert_array_equal(by_events.labels, by_calls.labels)


def key(name, **modifiers):
    """A key message exactly as canvas.js sends it (it sends only the annotator's keys, never with Ctrl)."""
    return {"kind": "key", "key": name, "shift": modifiers.get("shift", False)}


def test_keys_and_wheel_change_tool_slice_and_undo():
    annotator = SliceAnnotator(make_volume(), CLASSES, brush_radius=2)
    assert annotator.canvas.shortcut_keys == ["b", "e", "z", "y", "ArrowRight", "ArrowUp", "ArrowLeft", "ArrowDown"]
    assert annotator.canvas.wheel_slices
    start = annotator.slice_index
    send(annotator, pointer("down", 10, 10), pointer("up", 10, 20))
    painted = annotator.labels.copy()
    assert painted.any()

    send(annotator, key("e"))
    assert annotator.tool == "eraser" and annotator.canvas.tool == "eraser" and annotator._tools.value == "eraser"
    send(annotator, pointer("down", 10, 10), pointer("up", 10, 14))
    assert annotator.labels.sum() < painted.sum()
    send(annotator, key("z"))  # undo the erasing
    np.testing.assert_array_equal(annotator.labels, painted)
    send(annotator, key("y"), key("Z"))  # redo, undo again (letters in either case)
    np.testing.assert_array_equal(annotator.labels, painted)
    send(annotator, key("B", shift=True))
    assert annotator.tool == "brush"

    send(annotator, key("ArrowRight"), key("ArrowUp"))
    assert annotator.slice_index == start + 2 and annotator._slider.value == start + 2
    send(annotator, key("ArrowDown"), key("ArrowLeft"), key("ArrowLeft"))
    assert annotator.slice_index == start - 1
    send(annotator, {"kind": "wheel", "steps": 1})
    assert annotator.slice_index == start
    send(annotator, {"kind": "wheel", "steps": -100})  # stops at the first slice
    assert annotator.slice_index == 0 and annotator.status().endswith("on slice 0 (not labelled)")
    send(annotator, {"kind": "wheel", "steps": 100})
    assert annotator.slice_index == SHAPE[2] - 1
    send(annotator, key("q"), key("Enter"))  # not shortcuts: nothing changes
    assert annotator.tool == "brush" and annotator.slice_index == SHAPE[2] - 1
    np.testing.assert_array_equal(annotator.labels, painted)
    assert annotator.handle_key_event(key("q")) is False and annotator.handle_key_event(key("b")) is True
    # a malformed message is reported in the message line, not lost
    send(annotator, {"kind": "wheel", "steps": 0.5})
    assert "wheel event: expected an integer 'steps'" in annotator._msg.value


def test_widget_controls_drive_the_same_state():
    annotator = SliceAnnotator(make_volume(), CLASSES)
    annotator._slider.value = 2
    assert annotator.slice_index == 2
    annotator._class_buttons[2].click()
    assert annotator.class_id == 2 and annotator.canvas.preview_color == "#ff7f0e"
    annotator._tools.value = "eraser"
    assert annotator.tool == "eraser" and annotator.canvas.tool == "eraser"
    annotator._brush.value = 4.5
    assert annotator.brush_radius == 4.5 and annotator.canvas.brush_radius == 4.5
    annotator.tool = "box"
    assert annotator._tools.value == "box"
    annotator.go_to(5)
    assert annotator._slider.value == 5


def test_dom_hooks_and_display():
    annotator = SliceAnnotator(make_volume(), CLASSES)
    assert "fewsam-canvas" in annotator.canvas._esm
    assert "fewsam-status" in annotator._status._dom_classes
    assert annotator._status.value.startswith("0 labelled pixels on slice 3")
    assert annotator.canvas.image_width == 40 and annotator.canvas.image_height == 30
    assert annotator.canvas.png.startswith(b"\x89PNG")
    bundle = annotator._repr_mimebundle_()
    data = bundle[0] if isinstance(bundle, tuple) else bundle
    assert "application/vnd.jupyter.widget-view+json" in data


def test_each_new_image_follows_the_text_it_belongs_to():
    """The browser shows text on arrival but an image once decoded: text first keeps them in step."""
    annotator = SliceAnnotator(make_volume(), CLASSES)
    sent = []
    annotator._status.observe(lambda change: sent.append(("status", change["new"])), "value")
    annotator._listing.observe(lambda change: sent.append(("listing", change["new"])), "value")
    annotator.canvas.observe(lambda change: sent.append(("image", None)), "png")
    send(annotator, pointer("down", 10, 10), pointer("up", 10, 10))
    assert [kind for kind, _ in sent][-3:] == ["status", "listing", "image"], sent
    assert not sent[-3][1].startswith("0 labelled") and sent[-2][1] == "labelled slices (1): 3"


def test_sam_assist_off_without_model():
    annotator = SliceAnnotator(make_volume(), CLASSES)
    with pytest.raises(RuntimeError, match="SAM assist is off"):
        annotator.sam_click(5, 5)
    annotator.tool = "point"
    send(annotator, pointer("down", 5, 5))
    assert "SAM assist is off" in annotator._msg.value
    assert annotator.proposal is None and not annotator.labels.any()


def test_sam_click_box_accept_match_the_predictor(tiny_sam, tmp_path):
    volume = make_volume(1)
    annotator = SliceAnnotator(volume, CLASSES, model=tiny_sam, cache=tmp_path)
    index = annotator.slice_index
    proposal = annotator.sam_click(10, 12)

    entry = fs.embed_volume(volume, tiny_sam, axis=2, intensity="percentile", cache=tmp_path, slices=[index])
    assert entry.computed.size == 0  # the annotator put the slice in the cache
    predictor = fs.SamPredictor(tiny_sam)
    predictor.set_embedding(entry[index], (30, 40))
    masks, iou, _ = predictor.predict(np.array([[12.0, 10.0]]), np.array([1]), multimask_output=True)
    np.testing.assert_array_equal(proposal, masks[np.argmax(iou)])

    annotator.tool = "point"
    send(annotator, pointer("down", 20, 30, button=2), pointer("up", 20, 30, button=2))  # negative click
    masks, iou, _ = predictor.predict(np.array([[12.0, 10.0], [30.0, 20.0]]), np.array([1, 0]),
                                      multimask_output=False)
    np.testing.assert_array_equal(annotator.proposal, masks[0])
    assert annotator.points == [(10.0, 12.0, True), (20.0, 30.0, False)]

    annotator.class_id = 2
    expected = masks[0].astype(np.int32) * 2
    assert annotator.accept_proposal() == expected.astype(bool).sum()
    np.testing.assert_array_equal(fs.get_slices(annotator.labels, 2)[index], expected)
    assert annotator.proposal is None and annotator.points == []
    assert annotator.labelled_slices == [index]

    annotator.tool = "box"
    send(annotator, pointer("down", 22.0, 30.0), pointer("move", 10.0, 20.0), pointer("up", 4.0, 6.0))
    masks, _, _ = predictor.predict(box=np.array([6.0, 4.0, 30.0, 22.0]), multimask_output=False)
    np.testing.assert_array_equal(annotator.proposal, masks[0])
    assert annotator.box == (4.0, 6.0, 22.0, 30.0)
    annotator.reject_proposal()
    assert annotator.proposal is None and annotator.box is None
    np.testing.assert_array_equal(fs.get_slices(annotator.labels, 2)[index], expected)  # reject keeps labels

    annotator.sam_box(4, 6, 22, 30)
    np.testing.assert_array_equal(annotator.proposal, masks[0])
    annotator.go_to(0)  # leaving the slice drops the pending proposal
    assert annotator.proposal is None and annotator.box is None
    annotator.go_to(index)
    annotator.undo()  # undoes the accepted proposal
    assert not annotator.labels.any() and annotator.labelled_slices == []


def test_manifest_round_trip_from_array(tmp_path):
    volume = make_volume()
    annotator = SliceAnnotator(volume, CLASSES, brush_radius=2)
    annotator.go_to(1)
    annotator.stroke([(5, 5), (5, 20)])
    annotator.go_to(2)
    annotator.mark_empty()
    annotator.go_to(4)
    annotator.class_id = 2
    annotator.stroke([(20, 30)])
    manifest = annotator.save_manifest(tmp_path / "manifest.json")

    collection = fs.load_collection(manifest)
    assert collection.classes == CLASSES and collection.axis == 2
    (item,) = collection.support
    assert item.slices == (1, 2, 4)
    raw = json.loads(manifest.read_text())
    assert raw["support"][0] == {"image": "manifest_image.nii.gz", "labels": "manifest_image_labels.nii.gz",
                                 "slices": [1, 2, 4]}
    image, label_slices = load_support_item(item, 2)
    np.testing.assert_array_equal(image.array, volume.array)
    np.testing.assert_array_equal(label_slices, fs.get_slices(annotator.labels, 2)[[1, 2, 4]])

    loaded = SliceAnnotator.from_manifest(manifest)
    np.testing.assert_array_equal(loaded.labels, annotator.labels)
    assert loaded.labelled_slices == [1, 2, 4] and loaded.classes == CLASSES

    annotator.go_to(2)
    annotator.clear()
    annotator.load_manifest(manifest)  # back to what was saved
    assert annotator.labelled_slices == [1, 2, 4]
    np.testing.assert_array_equal(annotator.labels, loaded.labels)


def test_manifest_with_a_reoriented_nifti_and_a_second_volume(tmp_path):
    data = np.random.default_rng(2).random((12, 10, 8), dtype=np.float32)
    affine = np.array([[-2.0, 0, 0, 30], [0, 0, 1.5, -4], [0, -1.0, 0, 9], [0, 0, 0, 1]])  # LIP-ish
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "scan.nii.gz")
    annotator = SliceAnnotator(tmp_path / "scan.nii.gz", CLASSES, axis=1, brush_radius=1.5)
    annotator.stroke([(2, 3), (6, 3)])
    manifest = annotator.save_manifest(tmp_path / "collection.json")
    saved = nib.load(tmp_path / "scan_labels.nii.gz")
    np.testing.assert_allclose(saved.affine, affine)
    assert saved.shape == data.shape  # the source grid, not the canonical one
    np.testing.assert_array_equal(fs.load_volume(tmp_path / "scan_labels.nii.gz").array, annotator.labels)

    second = SliceAnnotator(make_volume(), CLASSES, axis=1)
    second.mark_empty()
    second.save_manifest(manifest)
    collection = fs.load_collection(manifest)
    assert [item.image.name for item in collection.support] == ["scan.nii.gz", "collection_image.nii.gz"]
    annotator.stroke([(8, 1)])
    annotator.save_manifest(manifest)  # re-saving replaces its own entry, keeps the other
    collection = fs.load_collection(manifest)
    assert len(collection.support) == 2
    reloaded = SliceAnnotator.from_manifest(manifest, image=tmp_path / "scan.nii.gz")
    np.testing.assert_array_equal(reloaded.labels, annotator.labels)
    assert reloaded.axis == 1

    other_classes = SliceAnnotator(make_volume(), {1: "liver"}, axis=1)
    other_classes.mark_empty()
    with pytest.raises(fs.ManifestError, match="choose another path"):
        other_classes.save_manifest(manifest)


def test_save_manifest_creates_its_folder(tmp_path):
    """As the README writes it: save_manifest("liver/manifest.json") into a folder that does not exist yet."""
    annotator = SliceAnnotator(make_volume(), CLASSES, brush_radius=2)
    annotator.go_to(1)
    annotator.stroke([(5, 5), (5, 20)])
    manifest = annotator.save_manifest(tmp_path / "liver" / "manifest.json")
    assert manifest == tmp_path / "liver" / "manifest.json"
    assert fs.load_collection(manifest).support[0].slices == (1,)
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(ValueError, match="a-file is a file, not a folder"):
        annotator.save_manifest(tmp_path / "a-file" / "manifest.json")


def test_errors_name_the_problem(tmp_path):
    annotator = SliceAnnotator(make_volume(), CLASSES)
    with pytest.raises(ValueError, match="no slice is labelled"):
        annotator.save_manifest(tmp_path / "m.json")
    with pytest.raises(ValueError, match="out of range"):
        annotator.go_to(6)
    with pytest.raises(ValueError, match="class_id"):
        annotator.class_id = 3
    with pytest.raises(ValueError, match="brush_radius"):
        annotator.brush_radius = 0.2
    with pytest.raises(ValueError, match="classes"):
        SliceAnnotator(make_volume(), {0: "background"})
    with pytest.raises(ValueError, match="labels: values"):
        SliceAnnotator(make_volume(), CLASSES, labels=np.full(SHAPE, 3))
    annotator.stroke([(4, 4)])
    with pytest.raises(ValueError, match="single axis"):
        annotator.set_axis(0)


def test_axis_choice_before_labelling():
    annotator = SliceAnnotator(make_volume(), CLASSES)
    annotator._axis_box.value = 0
    assert annotator.axis == 0 and annotator.slice_shape == (6, 30) and annotator._slider.max == 39
    annotator.stroke([(2, 10)])
    assert annotator.labelled_slices == [20]
    np.testing.assert_array_equal(fs.get_slices(annotator.labels, 0)[20], annotator.slice_labels())


def test_save_manifest_never_replaces_files_it_did_not_write(tmp_path):
    """A labels file beside the manifest that the manifest does not list as this volume's is the user's."""
    from fewsam_jax.outputs import OutputExistsError, OutputIsInputError

    data = np.random.default_rng(3).random(SHAPE, dtype=np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "scan.nii.gz")
    (tmp_path / "scan_labels.nii.gz").write_bytes(b"the user's own ground truth")
    image_bytes = (tmp_path / "scan.nii.gz").read_bytes()
    annotator = SliceAnnotator(tmp_path / "scan.nii.gz", CLASSES)
    annotator.stroke([(4, 4)])
    with pytest.raises(OutputExistsError, match=r"scan_labels.nii.gz exists; pass --overwrite \(overwrite=True\)"):
        annotator.save_manifest(tmp_path / "manifest.json")
    with pytest.raises(OutputIsInputError, match="scan.nii.gz is also an input"):
        annotator.save_manifest(tmp_path / "manifest.json", labels_path=tmp_path / "scan.nii.gz", overwrite=True)
    with pytest.raises(OutputIsInputError, match="scan.nii.gz is also an input"):
        annotator.save_manifest(tmp_path / "scan.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.nii.gz", "scan_labels.nii.gz"]  # nothing written
    assert (tmp_path / "scan_labels.nii.gz").read_bytes() == b"the user's own ground truth"
    assert (tmp_path / "scan.nii.gz").read_bytes() == image_bytes

    manifest = annotator.save_manifest(tmp_path / "manifest.json", labels_path=tmp_path / "mine.nii.gz")
    annotator.stroke([(8, 8)])
    annotator.save_manifest(manifest, labels_path=tmp_path / "mine.nii.gz")  # its own labels: replaced
    np.testing.assert_array_equal(fs.load_volume(tmp_path / "mine.nii.gz").array, annotator.labels)

    first, second = SliceAnnotator(make_volume(1), CLASSES), SliceAnnotator(make_volume(2), CLASSES)
    for other in (first, second):  # two in-memory volumes: each gets its own image file
        other.mark_empty()
        other.save_manifest(manifest)
    images = [item.image.name for item in fs.load_collection(manifest).support]
    assert images == ["scan.nii.gz", "manifest_image.nii.gz", "manifest_image_2.nii.gz"]
    np.testing.assert_array_equal(fs.load_volume(tmp_path / "manifest_image.nii.gz").array, make_volume(1).array)
    assert (tmp_path / "scan_labels.nii.gz").read_bytes() == b"the user's own ground truth"


def test_a_fresh_annotator_never_replaces_labels_a_manifest_lists_for_its_volume(tmp_path):
    """The user's complete label map, listed by their own manifest: a new annotator on the same image saving into
    that manifest must not replace it with its few slices; after loading it, saving replaces it (the user's edit)."""
    from fewsam_jax.outputs import OutputExistsError

    data = np.random.default_rng(4).random(SHAPE, dtype=np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "scan.nii.gz")
    truth = np.zeros(SHAPE, np.uint8)
    truth[2:6, 2:6, :] = 1
    nib.save(nib.Nifti1Image(truth, np.eye(4)), tmp_path / "scan_labels.nii.gz")
    (tmp_path / "manifest.json").write_text(json.dumps({"classes": {str(k): v for k, v in CLASSES.items()},
                                                        "axis": 2, "support": [{"image": "scan.nii.gz",
                                                        "labels": "scan_labels.nii.gz", "slices": [0, 1]}]}))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    fresh = SliceAnnotator(tmp_path / "scan.nii.gz", CLASSES)
    fresh.stroke([(4, 4)])
    with pytest.raises(OutputExistsError, match=r"scan_labels.nii.gz holds this volume's labels from an earlier "
                                                r"save.*load_manifest"):
        fresh.save_manifest(tmp_path / "manifest.json")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    fresh.load_manifest(tmp_path / "manifest.json")  # continue from them: now its own
    fresh.stroke([(8, 8)])
    fresh.save_manifest(tmp_path / "manifest.json")
    saved = fs.load_volume(tmp_path / "scan_labels.nii.gz").array
    assert saved[2:6, 2:6, :].all() and saved.sum() > truth.sum()
