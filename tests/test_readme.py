"""README that cannot drift: its Python examples run, as written, on the shared data, and its command lines
parse.

Every ```python block of README.md is preceded by ``<!-- readme-test: NAME -->``; the runnable ones run in
order in one namespace, in a folder where the file names they use are the shared data (symbolic links):

* ``ct.nii.gz``, ``my_ct.nii.gz``: the TotalSegmentator CT ``ct_small_3mm.nii.gz`` (122x101x30, HU);
* ``a.nii.gz`` / ``a_seg.nii.gz``: hippocampus 003 (labelled on axial slices 10, 18 and 25, as the README's
  manifest says), ``new_volume.nii.gz``: hippocampus 004; ``manifest.json`` is the README's JSON block.

Between ``annotate`` and ``review`` the test plays the user: it paints liver and spleen (the reference
labels) on three slices. What is under test is that the examples run and produce what they say, not the scores:
training runs ``STEPS`` steps instead of the default's hundreds, and only the first example (the predictor, one
slice, whose box must segment something) runs LiteMedSAM; every later load gets the tiny random SAM, whose encoder
costs nothing beside LiteMedSAM's ~1-1.5 s for each of the ~70 slices the later examples embed on a 2-core CPU.
LiteMedSAM's few-shot path on real data has tests of its own (tests/fewshot/test_fewshot_hippocampus.py, the
notebooks).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from helpers import shared_data

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.DOTALL | re.MULTILINE)
MARK = re.compile(r"<!-- readme-test: ([\w-]+) -->\s*$")
RUNNABLE = ["predictor", "fewshot", "annotate", "review", "configs"]  # in README order
STEPS = 20


def blocks() -> list[tuple[str | None, str, str]]:
    """(marker name or None, language, code) of every fenced block at the start of a line."""
    text = README.read_text()
    out = []
    for match in BLOCK.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        mark = MARK.match(before.strip())
        out.append((mark[1] if mark else None, match[1], match[2]))
    return out


def named() -> dict[str, str]:
    return {name: code for name, _, code in blocks() if name}


def test_every_python_block_is_marked_and_run():
    found = [(name, code.splitlines()[0]) for name, lang, code in blocks() if lang == "python"]
    unmarked = [first for name, first in found if name is None]
    assert not unmarked, f"README Python blocks without <!-- readme-test: NAME --> (add them to this test): {unmarked}"
    assert [name for name, _ in found] == RUNNABLE


def test_configs_example_builds_the_default_configs():
    from fewsam_jax.fewshot import DecoderConfig, InferenceConfig, TrainConfig

    scope: dict = {}
    exec(compile(named()["configs"], "README.md:configs", "exec"), scope)
    assert scope["decoder"] == DecoderConfig() and scope["inference"] == InferenceConfig()
    assert scope["training"] == TrainConfig()  # the example spells out the defaults


def test_manifest_example_is_a_valid_manifest(tmp_path):
    from fewsam_jax.fewshot import load_collection

    (tmp_path / "manifest.json").write_text(named()["manifest"])
    for name in ("a.nii.gz", "a_seg.nii.gz"):
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 30), np.uint8), np.eye(4)), tmp_path / name)
    collection = load_collection(tmp_path / "manifest.json")
    assert collection.classes == {1: "anterior", 2: "posterior"} and collection.axis == 2
    assert collection.support[0].slices == (10, 18, 25)


def command_lines() -> list[str]:
    """Every ``fewsam ...`` line of the README's bash blocks, continuation lines joined, comments cut."""
    lines = []
    for _, lang, code in blocks():
        if lang != "bash":
            continue
        for line in code.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("fewsam "):
                lines.append(line)
    return lines


def test_every_command_line_parses():
    from fewsam_jax.cli import build_parser

    lines = command_lines()
    assert len(lines) >= 15 and any("--dicom-seg" in line for line in lines)
    for line in lines:
        argv = shlex.split(re.sub(r"\$\w+", "0", line))[1:]
        try:
            args = build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"README command does not parse: {line}")
        assert callable(args.run), line


# ---------------------------------------------------------------------------------------------- running them


def paint_like_a_user(annotator, reference: np.ndarray) -> None:
    """Liver (TotalSegmentator 5) and spleen (1) from the reference on three slices (the volume holds no slice
    without either, so none is marked empty)."""
    from fewsam_jax.io import get_slices

    slices = get_slices(reference, annotator.axis)
    liver, spleen = (slices == 5).sum(axis=(1, 2)), (slices == 1).sum(axis=(1, 2))
    both = np.flatnonzero((liver > 50) & (spleen > 50))
    for index in both[np.linspace(0, len(both) - 1, 3).round().astype(int)]:
        annotator.go_to(int(index))
        annotator.editor.paint(int(index), slices[index] == 5, 1)
        annotator.editor.paint(int(index), slices[index] == 1, 2)


@pytest.mark.slow
@pytest.mark.shared_data
def test_python_examples_run_on_the_shared_data(tmp_path, monkeypatch, litemedsam, tiny_sam):
    ct = shared_data("totalseg_ct", "ct_small_3mm.nii.gz")
    reference = np.rint(np.asarray(nib.as_closest_canonical(nib.load(
        shared_data("totalseg_ct", "ct_small_3mm_seg.nii.gz"))).dataobj)).astype(np.int32)
    hippocampus = shared_data("hippocampus")
    for name, target in {"ct.nii.gz": ct, "my_ct.nii.gz": ct,
                         "a.nii.gz": hippocampus / "imagesTr" / "hippocampus_003_0000.nii.gz",
                         "a_seg.nii.gz": hippocampus / "labelsTr" / "hippocampus_003.nii.gz",
                         "new_volume.nii.gz": hippocampus / "imagesTr" / "hippocampus_004_0000.nii.gz"}.items():
        (tmp_path / name).symlink_to(target)
    code = named()
    (tmp_path / "manifest.json").write_text(code["manifest"])
    monkeypatch.chdir(tmp_path)

    from fewsam_jax.fewshot import DecoderConfig, FewShotSegmenter, TrainConfig

    train = FewShotSegmenter.train
    # ... and with SAM's decoder alone: the adapted stage and the image branch (the default on LiteMedSAM) have tests
    # of their own, and the notebooks train and segment with them; here they would add minutes (their compilation,
    # the stage inputs of every slice, the branch's decoding at the mask frame) with nothing more under test
    monkeypatch.setattr(FewShotSegmenter, "train", staticmethod(
        lambda collection, *args, **kwargs: train(collection, *args, **{
            "training": TrainConfig(steps=STEPS), "config": DecoderConfig.sam_only(), **kwargs})))
    # Each example loads LiteMedSAM again (the predictor, both trainings, the annotator's SAM assist when used): the
    # first load runs as written, the later ones get the tiny random SAM (module docstring), every one recorded.
    import fewsam_jax
    from fewsam_jax import weights
    from fewsam_jax.fewshot import segmenter as segmenter_module

    load_model, loaded = weights.load_model, {}

    def load_once(name="litemedsam", checkpoint=None):
        if not loaded:
            loaded[str(name), checkpoint] = load_model(name, checkpoint)
            return loaded[str(name), checkpoint]
        loaded.setdefault((str(name), checkpoint), tiny_sam)
        return tiny_sam

    for module in (weights, segmenter_module, fewsam_jax):
        monkeypatch.setattr(module, "load_model", load_once)
    ns: dict = {}

    exec(compile(code["predictor"], "README:predictor", "exec"), ns)  # noqa: S102 - the README examples, as written
    masks, image = ns["masks"], ns["image"]
    assert masks.shape == (1, *image.shape) and masks.dtype == bool
    assert 0 < masks.sum() < masks.size, "the predictor example must segment something inside its box"

    exec(compile(code["fewshot"], "README:fewshot", "exec"), ns)  # noqa: S102 - the README examples, as written
    assert (tmp_path / "decoder" / "fewshot.json").is_file()
    written = nib.load(tmp_path / "new_volume_seg.nii.gz")
    source = nib.load(tmp_path / "new_volume.nii.gz")
    assert written.shape == source.shape and np.allclose(written.affine, source.affine, atol=1e-5)
    assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1, 2}
    described = json.loads((tmp_path / "new_volume_seg.labels.json").read_text())
    assert [row["name"] for row in described["labels"]] == ["anterior", "posterior"]

    exec(compile(code["annotate"], "README:annotate", "exec"), ns)  # noqa: S102 - the README examples, as written
    paint_like_a_user(ns["annotator"], reference)
    exec(compile(code["review"], "README:review", "exec"), ns)  # noqa: S102 - the README examples, as written
    manifest = json.loads((tmp_path / "liver" / "manifest.json").read_text())
    assert manifest["classes"] == {"1": "liver", "2": "spleen"} and len(manifest["support"][0]["slices"]) == 3
    segmenter, viewer = ns["segmenter"], ns["viewer"]
    assert segmenter.classes == {1: "liver", 2: "spleen"}
    logits, presence = ns["logits"], ns["presence"]
    assert logits.shape[:2] == (30, 2) and presence.shape == (30, 2)
    next_slices = viewer.least_certain(5)
    assert 0 < len(next_slices) <= 5 and all(0 <= int(i) < 30 for i in next_slices)
    assert list(loaded) == [("litemedsam", None)], loaded  # every example asked for the same model
