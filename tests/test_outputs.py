"""The output policy (fewsam_jax.outputs): no command or API destroys a user's files, outputs are checked
before any compute, and decoder / model folders refuse to load when their files changed on disk.

Each test of a reported case asserts that the user's files are byte-for-byte unchanged and that the
message names the problem.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest
from flax import nnx

from fewsam_jax import cli
from fewsam_jax.fewshot import DecoderConfig, FewShotSegmenter
from fewsam_jax.fewshot.decoder import FewShotDecoder
from fewsam_jax.fewshot.segmenter import DecoderFileError
from fewsam_jax.outputs import (
    MARKER,
    ChecksumError,
    OutputError,
    OutputExistsError,
    OutputIsInputError,
    check_output_dir,
    check_output_file,
    read_marker,
    save_finished,
    write_dir,
    write_marker,
)
from fewsam_jax.preprocess import Intensity
from fewsam_jax.provenance import written_by_library
from fewsam_jax.weights import load_model_dir, save_model

CLASSES = {1: "ellipse", 2: "bar"}


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def user_folder(folder: Path) -> dict[str, bytes]:
    """A folder a user works in: manifest, images, labels, notes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    image = rng.normal(0.1, 0.03, (24, 20, 6)).astype(np.float32)
    labels = np.zeros(image.shape, np.uint8)
    labels[6:14, 5:12] = 1
    labels[16:20, 5:12, 1:4] = 2
    nib.save(nib.Nifti1Image(image + 0.8 * (labels == 1), np.eye(4)), folder / "img.nii.gz")
    nib.save(nib.Nifti1Image(labels, np.eye(4)), folder / "img_seg.nii.gz")
    (folder / "ok.json").write_text(json.dumps({
        "classes": {str(k): v for k, v in CLASSES.items()}, "axis": 2,
        "support": [{"image": "img.nii.gz", "labels": "img_seg.nii.gz", "slices": [1, 2, 3]}],
    }))
    (folder / "notes.txt").write_text("three weeks of annotation notes")
    return snapshot(folder)


@pytest.fixture(scope="module")
def segmenter(tiny_sam):
    """An untrained segmenter (random tokens): enough for saving, loading and segmenting."""
    rng = np.random.default_rng(0)
    c = tiny_sam.config.prompt_embed_dim
    decoder = FewShotDecoder(tiny_sam, DecoderConfig(), rngs=nnx.Rngs(0))
    return FewShotSegmenter(decoder, jnp.asarray(rng.normal(size=(2, 5, c)), jnp.float32),
                            np.array([0.5, -0.5], np.float32), dict(CLASSES), "tiny", tiny_sam.weights_id,
                            Intensity.parse("percentile"), 2, {}, tiny_sam)


def fewsam(capsys, *argv) -> tuple[int, str]:
    """Runs the `fewsam` CLI in this process: (return code, stderr)."""
    rc = cli.main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def must_not_run(*args, **kwargs):
    raise AssertionError("computed before the output was checked")


# ---------------------------------------------------------------- row 1: --out DIR never deletes a folder


def test_train_out_dot_leaves_the_users_folder_untouched(tmp_path, capsys, monkeypatch):
    before = user_folder(tmp_path / "work")
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setattr(FewShotSegmenter, "train", must_not_run)
    rc, err = fewsam(capsys, "train", "ok.json", "--out", ".", "--steps", "1")
    assert rc == 2 and "holds the input" in err and "ok.json" in err
    rc, err = fewsam(capsys, "train", "ok.json", "--out", ".", "--steps", "1", "--overwrite")
    assert rc == 2 and "holds the input" in err
    assert snapshot(tmp_path / "work") == before


def test_train_into_a_non_library_folder_is_refused_even_with_overwrite(tmp_path, capsys, monkeypatch):
    user_folder(tmp_path / "work")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "precious.txt").write_text("precious")
    before = snapshot(tmp_path / "other")
    monkeypatch.setattr(FewShotSegmenter, "train", must_not_run)
    rc, err = fewsam(capsys, "train", tmp_path / "work" / "ok.json", "--out", tmp_path / "other", "--overwrite")
    assert rc == 2 and "not a fewsam_jax decoder folder" in err and "never deletes" in err
    assert snapshot(tmp_path / "other") == before


def test_a_decoder_whose_out_was_taken_while_training_is_kept_beside_it(segmenter, tmp_path, capsys, monkeypatch):
    """`fewsam train --out X` checks X before training and again when saving: a folder that appeared there in
    between (a second run with the same --out) is left alone, and the finished decoder is saved beside it."""
    user_folder(tmp_path / "work")
    out = tmp_path / "dec"

    def train(*args, **kwargs):  # the training, during which another program takes the output folder
        out.mkdir()
        (out / "notes.txt").write_text("the other run's")
        return segmenter

    monkeypatch.setattr(FewShotSegmenter, "train", train)
    rc, err = fewsam(capsys, "train", tmp_path / "work" / "ok.json", "--out", out, "--steps", "1",
                     "--cache", tmp_path / "cache")
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("dec.fewsam-kept.")]
    assert rc == 2 and len(kept) == 1 and f"the finished decoder folder is kept as {kept[0]}" in err
    assert snapshot(out) == {"notes.txt": b"the other run's"}
    assert FewShotSegmenter.load(kept[0]).classes == CLASSES


def test_convert_never_deletes_files_in_out(tmp_path, capsys, monkeypatch):
    import converters.convert

    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "precious.txt").write_text("precious")
    monkeypatch.setattr(converters.convert, "read_state_dict", must_not_run)
    for extra in ((), ("--overwrite",)):
        rc, err = fewsam(capsys, "convert", "--model", "litemedsam", "--out", tmp_path / "o", *extra)
        assert rc == 2 and str(tmp_path / "o") in err and "precious.txt" in err and "never deletes" in err
    assert (tmp_path / "o" / "precious.txt").read_text() == "precious"
    assert sorted(os.listdir(tmp_path)) == ["o"]  # no staging folder left behind


def test_save_replaces_only_library_folders_and_only_with_overwrite(segmenter, tmp_path):
    decoder = tmp_path / "decoder"
    segmenter.save(decoder)
    assert json.loads((decoder / MARKER).read_text())["kind"] == "decoder"
    first = snapshot(decoder)
    with pytest.raises(OutputExistsError, match=r"decoder exists .*--overwrite"):
        segmenter.save(decoder)
    assert snapshot(decoder) == first
    segmenter.save(decoder, overwrite=True)  # the library's own folder: replaced
    (decoder / "my_notes.txt").write_text("notes")  # ... until the user keeps a file in it
    kept = snapshot(decoder)
    with pytest.raises(OutputExistsError, match=r"did not write \(my_notes.txt\).*never deletes"):
        segmenter.save(decoder, overwrite=True)
    assert snapshot(decoder) == kept
    (tmp_path / "model").mkdir()
    write_marker(tmp_path / "model", "model")
    with pytest.raises(OutputExistsError, match="is a fewsam_jax model folder, not a decoder folder"):
        segmenter.save(tmp_path / "model", overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["decoder", "model"]  # no staging folders left


def test_folders_saved_before_markers_are_recognised(segmenter, tmp_path):
    segmenter.save(tmp_path / "decoder")
    (tmp_path / "decoder" / MARKER).unlink()  # as saved by earlier versions: fewshot.json + state/
    segmenter.save(tmp_path / "decoder", overwrite=True)
    assert (tmp_path / "decoder" / MARKER).is_file()


def test_failed_save_leaves_no_staging_and_the_old_folder_intact(segmenter, tmp_path, monkeypatch):
    import fewsam_jax.fewshot.segmenter as module

    segmenter.save(tmp_path / "decoder")
    before = snapshot(tmp_path / "decoder")
    monkeypatch.setattr(module, "save_pytree", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        segmenter.save(tmp_path / "decoder", overwrite=True)
    assert snapshot(tmp_path / "decoder") == before and sorted(os.listdir(tmp_path)) == ["decoder"]


def test_a_finished_folder_that_cannot_be_put_in_place_is_kept(tmp_path, monkeypatch):
    """Hours of training are not thrown away when the last rename fails (a busy mount, a file held open)."""
    (tmp_path / "decoder").mkdir()
    real_rename = Path.rename

    def busy(self, target):
        if Path(target).name == "decoder" and ".fewsam-staging." in self.name:
            raise OSError(16, "Device or resource busy")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", busy)
    with pytest.raises(OutputError, match="could not be put in place .*busy.*kept as .*decoder.fewsam-kept") as err:
        with write_dir(tmp_path / "decoder", "decoder") as staging:
            (staging / "fewshot.json").write_text("{}")
    kept = [p for p in tmp_path.iterdir() if ".fewsam-kept." in p.name]
    assert len(kept) == 1 and str(kept[0]) in str(err.value)
    assert (kept[0] / "fewshot.json").read_text() == "{}" and read_marker(kept[0])["kind"] == "decoder"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["decoder", kept[0].name])  # no staging left
    # another folder appearing at the destination meanwhile: refused, the result kept all the same
    with pytest.raises(OutputExistsError, match="new exists .* the finished decoder folder is kept as"):
        with write_dir(tmp_path / "new", "decoder") as staging:
            (staging / "fewshot.json").write_text("{}")
            (tmp_path / "new").mkdir()
            (tmp_path / "new" / "notes.txt").write_text("the user's")
    assert (tmp_path / "new" / "notes.txt").read_text() == "the user's"
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("new.fewsam-kept.")]) == 1
    for extra in tmp_path.iterdir():
        if extra.name.startswith("new"):
            shutil.rmtree(extra)
    # a folder appearing at the destination while computing, before the save begins (a second run with the same
    # --out): save_finished keeps the finished result beside it and names it
    def save(out, overwrite=False):
        with write_dir(out, "decoder", overwrite=overwrite) as staging:
            (staging / "fewshot.json").write_text("{}")

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("the user's")
    with pytest.raises(OutputExistsError, match="taken exists .* the finished decoder folder is kept as .*taken.fews"):
        save_finished(save, tmp_path / "taken", "decoder", overwrite=True)
    assert snapshot(tmp_path / "taken") == {"notes.txt": b"the user's"}
    kept_taken = [p for p in tmp_path.iterdir() if p.name.startswith("taken.fewsam-kept.")]
    assert len(kept_taken) == 1 and (kept_taken[0] / "fewshot.json").read_text() == "{}"
    assert save_finished(save, tmp_path / "free", "decoder") == tmp_path / "free"
    assert (tmp_path / "free" / "fewshot.json").is_file()
    for extra in tmp_path.iterdir():
        if extra.name.startswith(("taken", "free")):
            shutil.rmtree(extra)
    # a failure while computing still leaves nothing behind
    with pytest.raises(RuntimeError, match="diverged"):
        with write_dir(tmp_path / "other", "decoder"):
            raise RuntimeError("diverged")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["decoder", kept[0].name])


def test_a_mount_point_is_refused_before_compute(tmp_path, monkeypatch):
    (tmp_path / "out").mkdir()
    monkeypatch.setattr(os.path, "ismount", lambda path: Path(path) == tmp_path / "out")
    with pytest.raises(OutputError, match="out is a mount point.*new folder inside it"):
        check_output_dir(tmp_path / "out", "decoder")
    check_output_dir(tmp_path / "out", "demo", overwrite=True, in_place=True)  # the demo writes into it: fine


def test_one_dicom_file_stands_for_its_series_folder(tmp_path):
    from helpers import write_dicom_series

    uids = write_dicom_series(tmp_path / "series", np.zeros((3, 8, 8)))
    one = next(p for p in (tmp_path / "series").iterdir())
    assert uids["instances"]
    with pytest.raises(OutputIsInputError, match="inside the folder of the DICOM series"):
        check_output_file(tmp_path / "series" / "seg.nii.gz", inputs=[one])
    check_output_file(tmp_path / "seg.nii.gz", inputs=[one])  # beside the folder: fine


def test_a_hard_link_to_an_input_is_the_input(tmp_path):
    (tmp_path / "img.nii.gz").write_bytes(b"the scan")
    os.link(tmp_path / "img.nii.gz", tmp_path / "copy.nii.gz")
    with pytest.raises(OutputIsInputError, match="also an input"):
        check_output_file(tmp_path / "copy.nii.gz", overwrite=True, inputs=[tmp_path / "img.nii.gz"])
    assert (tmp_path / "img.nii.gz").read_bytes() == b"the scan"


def test_staging_folders_of_killed_runs_are_removed_by_the_next_write(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / ".decoder.fewsam-staging.0000dead"
    live = tmp_path / ".decoder.fewsam-staging.1111live"
    foreign = tmp_path / ".decoder.fewsam-staging.2222user"  # the name but no marker: not ours
    for folder in (stale, live, foreign):
        (folder / "state").mkdir(parents=True)
    write_marker(stale, "decoder")
    marker = json.loads((stale / MARKER).read_text())
    (stale / MARKER).write_text(json.dumps({**marker, "pid": dead_pid}))
    write_marker(live, "decoder")  # this process: still writing
    with write_dir(tmp_path / "decoder", "decoder") as staging:
        (staging / "fewshot.json").write_text("{}")
        (staging / "state").mkdir()
    assert not stale.exists() and live.exists() and foreign.exists()


# ---------------------------------------------------------------- rows 3-5: segment outputs


def test_segment_refuses_to_write_over_its_input_image(segmenter, tmp_path, capsys, monkeypatch):
    before = user_folder(tmp_path)
    segmenter.save(tmp_path / "d")
    monkeypatch.setattr(FewShotSegmenter, "load", must_not_run)
    for extra in ((), ("--overwrite",)):
        rc, err = fewsam(capsys, "segment", tmp_path / "img.nii.gz", "--decoder", tmp_path / "d",
                         "--out", tmp_path / "img.nii.gz", *extra)
        assert rc == 2 and "img.nii.gz is also an input" in err
    rc, err = fewsam(capsys, "segment", tmp_path / "img.nii.gz", "--decoder", tmp_path / "d",
                     "--out", tmp_path / "d" / "labels.nii.gz")
    assert rc == 2 and "inside the input folder" in err
    with pytest.raises(OutputIsInputError, match="also an input"):
        segmenter.segment_file(tmp_path / "img.nii.gz", tmp_path / "." / "img.nii.gz", overwrite=True)
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("d/")} == before


def test_segment_needs_overwrite_to_replace_an_output(segmenter, tiny_sam, tmp_path, capsys, monkeypatch):

    user_folder(tmp_path)
    segmenter.save(tmp_path / "d")
    (tmp_path / "pred.nii.gz").write_bytes(b"yesterday's labels")
    save_model(tiny_sam, tmp_path / "tiny_model")
    args = ("segment", tmp_path / "img.nii.gz", "--decoder", tmp_path / "d", "--out", tmp_path / "pred.nii.gz",
            "--cache", tmp_path / "cache", "--model", tmp_path / "tiny_model")
    rc, err = fewsam(capsys, *args)
    assert rc == 2 and "pred.nii.gz exists; pass --overwrite" in err
    assert (tmp_path / "pred.nii.gz").read_bytes() == b"yesterday's labels"
    with pytest.raises(OutputExistsError, match="pred.nii.gz exists"):
        segmenter.segment_file(tmp_path / "img.nii.gz", tmp_path / "pred.nii.gz")
    # --overwrite replaces only a label map this library wrote: not the user's (or another tool's) file
    rc, err = fewsam(capsys, *args, "--overwrite")
    assert rc == 2 and "pred.nii.gz exists and is not an unchanged output of fewsam_jax" in err
    assert (tmp_path / "pred.nii.gz").read_bytes() == b"yesterday's labels"
    (tmp_path / "pred.nii.gz").unlink()
    assert fewsam(capsys, *args)[0] == 0
    assert written_by_library(tmp_path / "pred.nii.gz")
    first = (tmp_path / "pred.nii.gz").stat().st_mtime_ns
    assert fewsam(capsys, *args, "--overwrite")[0] == 0  # its own output: replaced
    assert (tmp_path / "pred.nii.gz").stat().st_mtime_ns != first
    written = nib.load(tmp_path / "pred.nii.gz")
    assert written.shape == (24, 20, 6)
    assert not [p for p in os.listdir(tmp_path) if "fewsam-tmp" in p]


def test_outputs_are_checked_before_any_compute(tmp_path, capsys, monkeypatch):
    user_folder(tmp_path)
    (tmp_path / "labels_dir").mkdir()
    (tmp_path / "decoder_file").write_text("not a folder")
    monkeypatch.setattr(FewShotSegmenter, "load", must_not_run)
    monkeypatch.setattr(FewShotSegmenter, "train", must_not_run)
    (tmp_path / "labels_dir" / "img.nii.gz").write_bytes(b"earlier labels")  # -o DIR writes DIR/CASE.nii.gz
    rc, err = fewsam(capsys, "segment", tmp_path / "img.nii.gz", "--decoder", tmp_path / "d",
                     "--out", tmp_path / "labels_dir")
    assert rc == 2 and "img.nii.gz exists" in err and "--continue" in err and "Traceback" not in err
    rc, err = fewsam(capsys, "segment", tmp_path / "img.nii.gz", "--decoder", tmp_path / "d",
                     "--out", tmp_path / "labels.txt")
    assert rc == 2 and "unsupported output type" in err
    rc, err = fewsam(capsys, "segment", tmp_path / "img.nii.gz", "--decoder", tmp_path / "d",
                     "--out", tmp_path / "labels.png")
    assert rc == 2 and "labels.png: PNG output needs a one-slice volume, but" in err and "(24, 20, 6)" in err
    assert not list(tmp_path.glob("labels.*"))
    rc, err = fewsam(capsys, "segment", tmp_path / "img.nii.gz", "--decoder", tmp_path / "d",
                     "--out", tmp_path / "missing" / "labels.nii.gz")
    assert rc == 2 and "does not exist" in err
    rc, err = fewsam(capsys, "train", tmp_path / "ok.json", "--out", tmp_path / "decoder_file")
    assert rc == 2 and "decoder_file exists and is a file" in err and "Traceback" not in err
    rc, err = fewsam(capsys, "train", tmp_path / "ok.json", "--out", tmp_path / "d", "--cache", tmp_path / "notes.txt")
    assert rc == 2 and "notes.txt is a file" in err
    for command in ("train", "teach"):  # the cache inside the output folder: refused now, not after training
        rc, err = fewsam(capsys, command, tmp_path / "ok.json", *(("--decoder", tmp_path / "d") * (command == "teach")),
                         "--out", tmp_path / "new", "--cache", tmp_path / "new" / "cache")
        assert rc == 2 and "new holds the input" in err and "cache" in err, err
    assert (tmp_path / "decoder_file").read_text() == "not a folder"
    assert (tmp_path / "labels_dir" / "img.nii.gz").read_bytes() == b"earlier labels"


def test_output_checks(tmp_path):
    (tmp_path / "a.nii.gz").write_bytes(b"a")
    (tmp_path / "link.nii.gz").symlink_to(tmp_path / "a.nii.gz")
    with pytest.raises(OutputIsInputError):
        check_output_file(tmp_path / "link.nii.gz", overwrite=True, inputs=[tmp_path / "a.nii.gz"])
    check_output_file(tmp_path / "b.nii.gz", inputs=[tmp_path / "a.nii.gz"])
    check_output_dir(tmp_path / "new" / "deep", "decoder")  # parents are created when writing
    (tmp_path / "empty").mkdir()
    check_output_dir(tmp_path / "empty", "decoder")  # an empty folder has nothing to lose
    with pytest.raises(OutputExistsError, match="is a file"):
        check_output_dir(tmp_path / "a.nii.gz", "model", overwrite=True)


# ---------------------------------------------------------------- decoder and model files on load


def test_bit_flipped_decoder_state_is_an_error_naming_the_file(segmenter, tmp_path, capsys):
    segmenter.save(tmp_path / "d")
    state = max((p for p in (tmp_path / "d" / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0x10
    state.write_bytes(bytes(data))
    name = state.relative_to(tmp_path / "d").as_posix()
    with pytest.raises(DecoderFileError, match=rf"{name} is corrupted"):
        FewShotSegmenter.load(tmp_path / "d")
    user_folder(tmp_path / "w")
    rc, err = fewsam(capsys, "segment", tmp_path / "w" / "img.nii.gz", "--decoder", tmp_path / "d",
                     "--out", tmp_path / "w" / "pred.nii.gz")
    assert rc == 2 and f"{name} is corrupted" in err and not (tmp_path / "w" / "pred.nii.gz").exists()


def _edit_meta(folder: Path, edit) -> None:
    path = folder / "fewshot.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(thresholds=m["thresholds"][:1]), "key 'thresholds' must hold 2 numbers"),
        (lambda m: m.update(thresholds=[0.5, "x"]), "key 'thresholds' must hold 2 numbers"),
        (lambda m: m.update(tokens_shape=[3, 5, 32]), "key 'tokens_shape' has 3 classes but 'classes' lists 2"),
        (lambda m: m.update(tokens_shape=[2, 5, 64]), "'tokens_shape' has 64 channels"),
        (lambda m: m.update(axis="2"), "key 'axis' is str; expected int"),
        (lambda m: m.update(colour="red"), "unknown key 'colour'"),
        (lambda m: m.pop("classes"), "key 'classes' is missing"),
        (lambda m: m["decoder"].update(slice_tokens="many"),
         r"key 'decoder.slice_tokens' is 'many' \(str\); expected int"),
        (lambda m: m["decoder"].update(region_box=1), "key 'decoder.region_box' is 1 .*expected bool"),
        (lambda m: m["decoder"].update(no_such_option=True), "unknown key 'decoder.no_such_option'"),
        (lambda m: m["decoder"].update(class_decoding="sideways"), "key 'decoder': class_decoding"),
        (lambda m: m["inference"].update(presence_threshold=2), "key 'inference': presence_threshold"),
        (lambda m: m.update(training={"steps": -1}), "key 'training': steps / batch_slices"),
        (lambda m: m.update(training={"augment": {"copies": "two"}}), "key 'training.augment.copies' is 'two'"),
        (lambda m: m.pop("inference"), "key 'inference' is missing"),
        (lambda m: m.update(fewshot={}), "key 'fewshot' .*next to 'decoder'"),
        (lambda m: m["checksums"].update({"state/extra": "0" * 64}), "state/extra is missing"),
    ],
)
def test_fewshot_json_is_validated_on_load(segmenter, tmp_path, edit, message):
    segmenter.save(tmp_path / "d")
    _edit_meta(tmp_path / "d", edit)
    with pytest.raises(DecoderFileError, match=message) as err:
        FewShotSegmenter.load(tmp_path / "d")
    assert "fewshot.json" in str(err.value) or "state/extra" in str(err.value)


def test_decoders_saved_before_checksums_still_load(segmenter, tmp_path):
    segmenter.save(tmp_path / "d")
    _edit_meta(tmp_path / "d", lambda m: m.pop("checksums"))  # older config fields: tests/fewshot/test_fewshot.py
    loaded = FewShotSegmenter.load(tmp_path / "d")
    assert loaded.decoder.config == segmenter.decoder.config and loaded.classes == CLASSES
    np.testing.assert_array_equal(loaded.thresholds, segmenter.thresholds)


def test_model_folder_checksums(tiny_sam, tmp_path):
    save_model(tiny_sam, tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["checksums"] and all(name.startswith("state/") for name in meta["checksums"])
    assert load_model_dir(tmp_path / "m").weights_id == tiny_sam.weights_id
    with pytest.raises(OutputExistsError, match="--overwrite"):
        save_model(tiny_sam, tmp_path / "m")
    name = max(meta["checksums"], key=lambda n: (tmp_path / "m" / n).stat().st_size)
    data = bytearray((tmp_path / "m" / name).read_bytes())
    data[-100] ^= 0x01
    (tmp_path / "m" / name).write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=rf"{name} is corrupted"):
        load_model_dir(tmp_path / "m")


def test_save_labels_replaces_a_file_only_when_asked_and_never_the_image(tmp_path):
    from fewsam_jax.io import load_volume, save_labels

    image = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.eye(4)), image)
    volume = load_volume(image)
    before = snapshot(tmp_path)
    for overwrite in (False, True):  # the image itself: refused even with overwrite
        with pytest.raises(OutputIsInputError, match="ct.nii.gz is also an input"):
            save_labels(np.zeros(volume.shape, np.uint8), volume, image, overwrite=overwrite)
    assert snapshot(tmp_path) == before
    mine = tmp_path / "mine_seg.nii.gz"
    mine.write_bytes(b"the user's own labels")
    with pytest.raises(OutputExistsError, match=r"mine_seg.nii.gz exists; pass --overwrite"):
        save_labels(np.ones(volume.shape, np.uint8), volume, mine)
    assert mine.read_bytes() == b"the user's own labels"
    save_labels(np.ones(volume.shape, np.uint8), volume, mine, overwrite=True)
    assert np.asarray(nib.load(mine).dataobj).sum() == 24


def test_save_collection_replaces_a_manifest_only_when_asked_and_never_its_files(tmp_path):
    from fewsam_jax.fewshot import Collection, SupportItem, load_collection, save_collection

    user_folder(tmp_path)
    collection = load_collection(tmp_path / "ok.json")
    before = snapshot(tmp_path)
    with pytest.raises(OutputExistsError, match=r"ok.json exists; pass --overwrite"):
        save_collection(collection, tmp_path / "ok.json")
    image = collection.support[0].image
    with pytest.raises(OutputIsInputError, match="is also an input"):
        save_collection(collection, image, overwrite=True)
    assert snapshot(tmp_path) == before
    save_collection(Collection(collection.classes, collection.axis, (SupportItem(image, collection.support[0].labels,
                                                                                 (0,)),)),
                    tmp_path / "ok.json", overwrite=True)
    assert load_collection(tmp_path / "ok.json").support[0].slices == (0,)


@pytest.mark.parametrize(("kind", "lone_file"), [("demo", "manifest.json"), ("decoder", "state"),
                                                 ("model", "state"), ("decoder", "fewshot.json")])
def test_a_user_folder_holding_one_name_of_a_library_layout_is_not_the_librarys(tmp_path, kind, lone_file):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / lone_file).write_text("the user's")
    with pytest.raises(OutputExistsError, match=f"not a fewsam_jax {kind} folder.*never deletes"):
        check_output_dir(folder, kind, overwrite=True)
    assert (folder / lone_file).read_text() == "the user's"


def test_another_tools_checkpoint_with_config_and_state_is_not_a_model_folder(tmp_path):
    folder = tmp_path / "ckpt"
    (folder / "state").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"learning_rate": 1e-3}))  # another JAX tool's checkpoint
    with pytest.raises(OutputExistsError, match="not a fewsam_jax model folder.*config.json is not one"):
        check_output_dir(folder, "model", overwrite=True)
    (folder / "config.json").write_text(json.dumps({"model": "vit_b", "weights_id": "0" * 64}))  # ours, pre-marker
    check_output_dir(folder, "model", overwrite=True)


@pytest.mark.parametrize(("name", "seg_nrrd"), [("pred.nii.gz", True), ("pred.png", False)])
def test_class_ids_too_large_for_an_8_bit_output_are_refused_before_segmenting(segmenter, tmp_path, monkeypatch,
                                                                               name, seg_nrrd):
    import dataclasses

    from fewsam_jax.export import ExportError

    user_folder(tmp_path)
    wide = dataclasses.replace(segmenter, classes={1: "ellipse", 300: "bar"})
    monkeypatch.setattr(FewShotSegmenter, "segment", must_not_run)
    with pytest.raises(ExportError, match=r"class ids up to 300 do not fit its 8-bit labels"):
        wide.segment_file(tmp_path / "img.nii.gz", tmp_path / name, seg_nrrd=seg_nrrd)
    assert not (tmp_path / name).exists()
