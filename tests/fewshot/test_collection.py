"""Manifest reading and the clear errors a user gets for a collection that can't be used."""

import json

import nibabel as nib
import numpy as np
import pytest

from fewsam_jax.fewshot.collection import (
    Collection,
    ManifestError,
    SupportItem,
    entry_for,
    listed_labels,
    load_collection,
    load_support_item,
    other_entries,
    save_collection,
    save_entry,
)
from fewsam_jax.io import VolumeError, from_array, load_volume
from fewsam_jax.outputs import OutputExistsError, OutputIsInputError


def write_nifti(path, array, affine=np.eye(4)):
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path.name


@pytest.fixture
def manifest(tmp_path):
    labels = np.zeros((8, 9, 6), np.uint8)
    labels[2:5, 3:6, 1:4] = 1
    write_nifti(tmp_path / "a.nii.gz", np.random.default_rng(0).random((8, 9, 6)).astype(np.float32))
    write_nifti(tmp_path / "a_seg.nii.gz", labels)
    raw = {"classes": {"1": "organ"}, "axis": 2,
           "support": [{"image": "a.nii.gz", "labels": "a_seg.nii.gz", "slices": [1, 2, 5]}]}
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(raw))
    return path, raw


def rewrite(path, raw):
    path.write_text(json.dumps(raw))
    return path


def test_round_trip(manifest, tmp_path):
    path, _ = manifest
    collection = load_collection(path)
    assert collection.class_ids == (1,) and collection.num_slices == 3
    again = load_collection(save_collection(collection, tmp_path / "sub" / "copy.json"))
    assert again == collection
    _, label_slices = load_support_item(collection.support[0], collection.axis)
    assert label_slices.shape == (3, 9, 8)
    assert label_slices[2].max() == 0  # slice 5 is a labelled "none of the classes" slice


def test_missing_file_is_named(manifest):
    path, raw = manifest
    raw["support"][0]["labels"] = "nope.nii.gz"
    with pytest.raises(ManifestError, match=r"support\[0\]\.labels not found: .*nope\.nii\.gz"):
        load_collection(rewrite(path, raw))


@pytest.mark.parametrize("damage, error, message", [
    ("header", VolumeError, "b_seg.nii.gz: cannot read NIfTI file"),  # cut inside its header
    ("grid", ManifestError, r"label grid of .*b_seg\.nii\.gz .*differs"),  # readable, but not on the image's grid
    ("slices", ManifestError, r"slice indices \[9\] out of range"),
])
def test_every_labelled_volume_is_read_before_the_first_slice_is_embedded(manifest, tiny_sam, tmp_path,
                                                                         monkeypatch, damage, error, message):
    from fewsam_jax.fewshot import segmenter
    from fewsam_jax.preprocess import Intensity

    path, raw = manifest
    if damage == "header":
        (tmp_path / "b_seg.nii.gz").write_bytes((tmp_path / "a_seg.nii.gz").read_bytes()[:60])
    else:
        write_nifti(tmp_path / "b_seg.nii.gz", np.zeros((8, 9, 7 if damage == "grid" else 6), np.uint8))
    raw["support"].append({"image": "a.nii.gz", "labels": "b_seg.nii.gz", "slices": [9 if damage == "slices" else 1]})
    collection = load_collection(rewrite(path, raw))
    monkeypatch.setattr(segmenter, "embed_volume", lambda *a, **k: pytest.fail("embedded before the check"))
    with pytest.raises(error, match=message):
        segmenter.support_set(collection, tiny_sam, Intensity.parse("minmax"))


def test_slice_out_of_range(manifest):
    path, raw = manifest
    raw["support"][0]["slices"] = [1, 6]
    item = load_collection(rewrite(path, raw)).support[0]
    with pytest.raises(ManifestError, match=r"a\.nii\.gz: slice indices \[6\] out of range 0\.\.5"):
        load_support_item(item, 2)


def test_label_grid_differs(manifest, tmp_path):
    path, raw = manifest
    raw["support"][0]["labels"] = write_nifti(tmp_path / "b_seg.nii.gz", np.zeros((8, 9, 7), np.uint8))
    item = load_collection(rewrite(path, raw)).support[0]
    with pytest.raises(ManifestError, match=r"label grid of .*b_seg\.nii\.gz .*differs"):
        load_support_item(item, 2)


@pytest.mark.parametrize("values, message", [
    (np.float32(0.5), r"b_seg\.nii\.gz: a label map must hold integer ids, but 27 of 432 voxels are not integers"),
    (np.int16(-3), r"b_seg\.nii\.gz: a label map holds ids >= 0, but this one holds -3"),
    (np.uint32(2**32 - 1), r"b_seg\.nii\.gz: label ids must lie in -2147483648\.\.2147483647, but this map holds "
                           r"0\.\.4294967295"),  # would wrap to id -1
])
def test_labels_must_be_integer_ids(manifest, tmp_path, values, message):
    """An intensity image or a probability map given as labels is refused, not rounded."""
    path, raw = manifest
    labels = np.zeros((8, 9, 6), values.dtype)
    labels[2:5, 3:6, 1:4] = values
    raw["support"][0]["labels"] = write_nifti(tmp_path / "b_seg.nii.gz", labels)
    item = load_collection(rewrite(path, raw)).support[0]
    with pytest.raises(ManifestError, match=message):
        load_support_item(item, 2)


def test_ids_outside_the_classes_are_learnt_as_background_with_a_warning(manifest, tmp_path, caplog):
    path, raw = manifest
    labels = np.zeros((8, 9, 6), np.uint8)
    labels[2:5, 3:6, 1:4] = 1
    labels[6:8, 0:2, 2] = 7  # another structure of the same label map, on a labelled slice
    raw["support"][0]["labels"] = write_nifti(tmp_path / "c_seg.nii.gz", labels)
    collection = load_collection(rewrite(path, raw))
    with caplog.at_level("WARNING", logger="fewsam_jax.fewshot.collection"):
        _, label_slices = load_support_item(collection.support[0], 2, collection.classes)
    assert "c_seg.nii.gz: label ids [7] on the labelled slices are not among the classes [1]" in caplog.text
    assert label_slices.max() == 7  # read as they are; the prompts take them as background
    caplog.clear()
    with caplog.at_level("WARNING", logger="fewsam_jax.fewshot.collection"):
        load_support_item(collection.support[0], 2, {1: "organ", 7: "other"})
    assert not caplog.text


@pytest.mark.parametrize("field, value, message", [
    ("support", [], "the collection is empty"),
    ("classes", {}, "at least one label id"),
    ("axis", 3, "'axis' must be 0, 1 or 2"),
])
def test_bad_fields(manifest, field, value, message):
    path, raw = manifest
    raw[field] = value
    with pytest.raises(ManifestError, match=message):
        load_collection(rewrite(path, raw))


def test_not_json(tmp_path):
    path = tmp_path / "m.json"
    path.write_text("{oops")
    with pytest.raises(ManifestError, match="m.json: not valid JSON"):
        load_collection(path)


# ----------------------------------------------------------------- strict schema (issue #11)
@pytest.mark.parametrize("edit, message", [
    # an unknown key is an error, with the closest known key suggested ("axsi": 1 used to train on axis 2)
    (lambda raw: raw.update(axsi=1), r"manifest\.json: unknown key 'axsi'; did you mean 'axis'\?"),
    (lambda raw: raw["support"][0].update(slice=[1]),
     r"manifest\.json: support\[0\]: unknown key 'slice'; did you mean 'slices'\?"),
    # exact types: true is not 1, 2.9 is not 2, "035" is not [0, 3, 5], 2.0 is not 2
    (lambda raw: raw.update(axis=True), r"manifest\.json: axis: 'axis' must be 0, 1 or 2 \(an integer\), got true"),
    (lambda raw: raw.update(axis=2.9), r"axis: 'axis' must be 0, 1 or 2 \(an integer\), got the number 2\.9"),
    (lambda raw: raw["support"][0].update(slices="035"),
     (r"manifest\.json: support\[0\]\.slices: expected an array of slice indices \(integers >= 0\), "
      r"got the string '035'")),
    (lambda raw: raw["support"][0].update(slices=[1, 2.0]),
     r"support\[0\]\.slices\[1\]: expected a slice index \(an integer >= 0\), got the number 2\.0"),
    (lambda raw: raw["support"][0].update(slices=[1, True]), r"support\[0\]\.slices\[1\]: expected .*, got true"),
    (lambda raw: raw["support"][0].update(slices=[-1]), r"support\[0\]\.slices\[0\]: expected .*, got the integer -1"),
    (lambda raw: raw["support"][0].update(slices=[1, 2, 1]),
     r"support\[0\]\.slices\[2\]: slice 1 is listed twice \(also at slices\[0\]\)"),
    (lambda raw: raw["support"][0].update(slices=[]), r"support\[0\]\.slices: lists no slices"),
    (lambda raw: raw["support"][0].update(image=7), r"support\[0\]\.image: expected a non-empty string .*got the integer 7"),
    (lambda raw: raw["support"][0].update(labels="bad\u0000name"), r"support\[0\]\.labels: not a usable path"),
    (lambda raw: raw["support"][0].pop("labels"), r"missing key 'labels' in support\[0\]"),
    (lambda raw: raw["support"].append("b.nii.gz"), r"support\[1\]: expected an object .*got the string 'b\.nii\.gz'"),
    (lambda raw: raw.update(classes={"1.0": "organ"}), r'classes\["1\.0"\]: expected a label id written as a decimal integer'),
    (lambda raw: raw.update(classes={"01": "organ"}), r'classes\["01"\]: expected a label id'),
    (lambda raw: raw.update(classes={"0": "bg", "1": "organ"}), r'classes\["0"\]: label 0 is the background'),
    (lambda raw: raw.update(classes={"1": "organ", "2": "organ"}), r'classes\["2"\]: class name \'organ\' is used twice'),
    (lambda raw: raw.update(classes={"1": None}), r'classes\["1"\]: expected a non-empty string \(the class name\), got null'),
    (lambda raw: raw.update(version=2), r"version: manifest version 2 is newer than this fewsam_jax reads"),
    (lambda raw: raw.update(version="1"), r"version: expected a positive integer .*got the string '1'"),
])
def test_strict_schema_names_file_key_and_expectation(manifest, edit, message):
    path, raw = manifest
    edit(raw)
    with pytest.raises(ManifestError, match=message):
        load_collection(rewrite(path, raw))


def test_symlink_loop_is_a_manifest_error(manifest, tmp_path):
    path, raw = manifest
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    raw["support"][0]["image"] = "loop1"
    with pytest.raises(ManifestError, match=r"support\[0\]\.image: not a usable path \(RuntimeError: Symlink loop"):
        load_collection(rewrite(path, raw))


def test_version_optional_and_written(manifest, tmp_path):
    path, raw = manifest
    assert "version" not in raw
    collection = load_collection(path)  # an older manifest without "version" reads as version 1
    written = save_collection(collection, tmp_path / "copy.json")
    assert json.loads(written.read_text())["version"] == 1
    assert load_collection(written) == collection


@pytest.mark.parametrize("text, message", [
    ('{"classes": {"1": "a"}, "classes": {"2": "b"}, "support": []}', r"the key 'classes' appears twice"),
    ('{"classes": {"1": "a"}, "axis": NaN, "support": []}', r"not valid JSON \(NaN is not a JSON number"),
    ('[1, 2]', r"top level: expected an object .*got an array of 2 items"),
    (b'\xff\xfe{}', r"not UTF-8 text"),
    ("[" * 100_000, r"nested too deeply|not valid JSON"),
])
def test_malformed_json(tmp_path, text, message):
    path = tmp_path / "m.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ManifestError, match=message):
        load_collection(path)


def test_merging_into_an_existing_manifest(manifest, tmp_path):
    """What an annotator keeps when it writes its volume's entry into a manifest that lists others."""
    path, _ = manifest
    a, b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    assert other_entries(tmp_path / "none.json", {1: "organ"}, 2, a) == ()  # no manifest yet
    assert other_entries(path, {1: "organ"}, 2, a) == ()  # a's own entry is replaced, not kept
    (kept,) = other_entries(path, {1: "organ"}, 2, b)
    assert kept.image == a.resolve()
    assert listed_labels(path, a) == (tmp_path / "a_seg.nii.gz").resolve()
    assert listed_labels(path, b) is None and listed_labels(path, None) is None
    with pytest.raises(ManifestError, match="choose another path"):
        other_entries(path, {1: "organ", 2: "other"}, 2, b)
    with pytest.raises(ManifestError, match="choose another path"):
        other_entries(path, {1: "organ"}, 0, b)
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(ManifestError, match="cannot be extended"):
        other_entries(tmp_path / "bad.json", {1: "organ"}, 2, a)


def test_entry_for_an_image(manifest, tmp_path):
    path, _ = manifest
    collection = load_collection(path)
    assert entry_for(collection, tmp_path / "a.nii.gz", path) == collection.support[0]
    assert entry_for(collection, None, path) == collection.support[0]  # the only entry
    two = Collection(collection.classes, 2, (*collection.support,
                                             SupportItem(tmp_path / "b.nii.gz", tmp_path / "b_seg.nii.gz", (0,))))
    assert entry_for(two, tmp_path / "b.nii.gz", path).slices == (0,)
    with pytest.raises(ManifestError, match="no entry for this volume"):
        entry_for(two, tmp_path / "c.nii.gz", path)


def test_save_entry_adds_a_volume_to_a_manifest_and_never_replaces_what_it_does_not_own(manifest, tmp_path):
    """save_entry: an array volume is written beside the manifest (numbered when the name is taken), its labels
    on its grid, the other entries kept; labels an earlier save wrote are replaced only by their owner or with
    overwrite; another entry's files and the image are never outputs."""
    path, raw = manifest
    (tmp_path / "manifest_image.nii.gz").write_bytes(b"a user's file")
    volume = from_array(np.random.default_rng(1).random((8, 9, 6)).astype(np.float32))
    labels = np.zeros((8, 9, 6), np.int32)
    labels[1:4, 2:5, 2] = 1
    entry = save_entry(path, volume, labels, [2], {1: "organ"}, 2)
    assert entry.image == tmp_path / "manifest_image_2.nii.gz"  # the taken name is left alone
    assert (tmp_path / "manifest_image.nii.gz").read_bytes() == b"a user's file"
    assert entry.labels == tmp_path / "manifest_image_2_labels.nii.gz" and entry.slices == (2,)
    collection = load_collection(path)
    assert [item.image.name for item in collection.support] == ["a.nii.gz", "manifest_image_2.nii.gz"]
    np.testing.assert_array_equal(np.asarray(nib.load(entry.labels).dataobj), labels)
    np.testing.assert_allclose(load_volume(entry.image).array, volume.array, atol=1e-6)

    again = labels.copy()
    again[1:4, 2:5, 3] = 1
    with pytest.raises(OutputExistsError, match="earlier save"):  # a caller that did not load those labels
        save_entry(path, load_volume(entry.image), again, [2, 3], {1: "organ"}, 2, image=entry.image)
    assert load_collection(path).support[1].slices == (2,)
    owned = save_entry(path, load_volume(entry.image), again, [2, 3], {1: "organ"}, 2, image=entry.image,
                       owned_labels=entry.labels)
    assert owned.labels == entry.labels and load_collection(path).support[1].slices == (2, 3)
    with pytest.raises(OutputIsInputError, match="also an input"):  # another entry's labels, even with overwrite
        save_entry(path, load_volume(entry.image), again, [3], {1: "organ"}, 2, image=entry.image,
                   labels_path=tmp_path / "a_seg.nii.gz", overwrite=True)
    with pytest.raises(ManifestError):  # another axis than the manifest's
        save_entry(path, volume, labels, [2], {1: "organ"}, 0)
    assert len(load_collection(path).support) == 2
