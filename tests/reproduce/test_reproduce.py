"""The reproduction study end to end on a tiny synthetic task (tiny random SAM), its pieces, and the
adapters of the shared data sets."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import shared_data

from bench.baselines import PromptSpec, UNetConfig, predict_unet, train_unet
from bench.reproduce import Case, Fold, StudyConfig, Task, draw_support, load_task, run_study, score_item, study
from bench.reproduce.report import file_names, make_report, markdown, plot_dice, write_report
from bench.reproduce.runs import RUNS_SUFFIX
from fewsam_jax.io import get_slices, load_volume
from fewsam_jax.preprocess import Intensity

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


def _case(folder, name: str, rng: np.random.Generator, shape=(28, 24, 8)) -> Case:
    """A noisy volume with two boxes (classes 1 and 2) on its middle slices, written as .npy."""
    labels = np.zeros(shape, np.int32)
    x0, y0 = rng.integers(3, 7, size=2)
    labels[x0:x0 + 8, y0:y0 + 6, 2:6] = 1
    labels[x0 + 10:x0 + 16, y0 + 4:y0 + 12, 3:7] = 2
    image = (labels * 40 + rng.normal(100, 10, shape)).astype(np.float32)
    path = folder / f"{name}.npy"
    np.save(path, image)
    return Case(name, path, load_volume(path), labels)


@pytest.fixture(scope="module")
def synthetic_task(tmp_path_factory) -> Task:
    folder = tmp_path_factory.mktemp("synthetic")
    rng = np.random.default_rng(0)
    pool = tuple(_case(folder, f"pool{i}", rng) for i in range(2))
    test = tuple(_case(folder, f"test{i}", rng) for i in range(2))
    fold = Fold("synthetic", pool, tuple(tuple(range(8)) for _ in pool), test, tuple(tuple(range(8)) for _ in test))
    return Task(name="synthetic", classes={1: "left", 2: "right"}, axis=2, intensity="minmax",
                protocol="cross_volume", folds=(fold,), shots=(1,), notes=("Synthetic boxes.",),
                reference={"method": "published", "dice": {"left": 0.9, "right": 0.8}, "labelled": "all",
                           "source": "nowhere"})


def _numbers(cell: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+\.\d+", cell)]


def _markdown_matches(text: str, stored: dict) -> set[tuple[str, str]]:
    """Check every (method, class) row of the Markdown's per-class table against the JSON; return the
    pairs seen."""
    table = text.split("## Per class")[1].split("\n\n")[1].splitlines()[2:]
    seen = set()
    for line in table:
        method, name, dice, iou, hd95 = [cell.strip() for cell in line.strip("|").split("|")][:5]
        entry = next(r for r in stored["rows"] if r["method"] == method)["classes"][name]
        for cell, key, digits in ((dice, "dice", 3), (iou, "iou", 3), (hd95, "hd95", 2)):
            value = entry.get(key)
            if value is None:
                assert cell.startswith("–"), (method, name, key, cell)
                continue
            shown = _numbers(cell)
            assert shown[0] == round(value, digits), (method, name, key)
            if entry.get(f"{key}_spread") is not None:
                assert shown[1] == round(entry[f"{key}_spread"], digits), (method, name, key)
        seen.add((method, name))
    return seen


@pytest.mark.slow  # the whole study end to end: every method trains or compiles once
def test_study_writes_consistent_report(synthetic_task, tiny_sam, tmp_path, monkeypatch):
    # every training and prompt kind compiles afresh, so: one few-shot count, one seed, one prompt kind
    config = StudyConfig(seeds=1, fewshot_steps=2, full_steps=2, unet=UNetConfig.tiny(steps=2, features=(4, 8)),
                         prompts=(PromptSpec("points", 1),), student=True)
    unet_calls = []

    def spy(ctx, fold, support, seed):
        unet_calls.append((fold.name, support, seed))
        return train_unet_on(ctx, fold, support, seed)

    train_unet_on = study.train_unet_on
    monkeypatch.setattr(study, "train_unet_on", spy)
    import bench.reproduce as reproduce

    overlays, write_report = [], reproduce.write_report  # the overlay predictions each report is drawn with
    monkeypatch.setattr(reproduce, "write_report", lambda report, example, *a, **k: overlays.append(
        dict(example["predictions"])) or write_report(report, example, *a, **k))
    other = _case(tmp_path, "other", np.random.default_rng(5))  # an unlabelled volume: the student is taught as -i
    task = dataclasses.replace(synthetic_task, unlabelled=(other.image,))
    report = run_study(task, out=tmp_path / "results", model=tiny_sam, config=config,
                       cache=tmp_path / "cache", log=lambda message: None)

    names = file_names("synthetic", quick=False)
    for key, name in names.items():
        path = tmp_path / "results" / name
        assert path.is_file() and path.stat().st_size > 0, key
        assert report["files"][key] == path
    assert (tmp_path / "results" / names["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stored = json.loads((tmp_path / "results" / names["json"]).read_text())
    text = (tmp_path / "results" / names["markdown"]).read_text()

    methods = [row["method"] for row in stored["rows"]]
    assert methods == ["few-shot, 1 slice", "U-Net from scratch, 1 slice", "student, 1 slice", "SAM 1 point",
                       "decoder, all pool slices", "U-Net, all pool slices", "student, all pool slices", "published"]
    rows = {row["method"]: row for row in stored["rows"]}
    (run,) = stored["runs"]["fewshot"]
    assert (run["shots"], run["seed"], len(run["items"])) == (1, 0, 2)
    assert run["positive_slices"] == 1 and run["labelled_slices"] == 2  # + one empty slice
    assert rows["decoder, all pool slices"]["labelled_slices"] == 16  # every slice of both pool volumes
    # the fully supervised decoder's student (the default method's full-supervision path): every pool slice
    # labelled, plus the unlabelled volume's slices
    (_, _, full_student) = stored["runs"]["supervised"]
    assert (full_student["labelled_slices"], full_student["training_slices"]) == (16, 16 + 8)
    assert full_student["unlabelled_volumes"] == 1 and len(full_student["items"]) == 2
    assert "the default method's full-supervision path" in text
    full = stored["headline"]["full_supervision"]
    assert math.isclose(full["difference"], rows["student, all pool slices"]["mean"]["dice"]
                        - rows["U-Net, all pool slices"]["mean"]["dice"])
    assert f"({full['difference']:+.3f})." in text
    assert rows["SAM 1 point"]["interactions_per_item"] == 8  # 1 click x (4 + 4 slices with a class) per volume

    # the U-Net from scratch on exactly the few-shot draw's slices (its empty slice included), with its seed,
    # and on the whole pool, both through the one helper
    (unet,) = stored["runs"]["unet_fewshot"]
    for key in ("shots", "seed", "fold", "support", "labelled_slices", "positive_slices"):
        assert unet[key] == run[key], key
    assert len(unet["items"]) == 2 and unet["steps"] == 2 and unet["train_seconds"] >= 0
    fold = synthetic_task.folds[0]
    drawn = [(fold.name, [(i, tuple(s["slices"])) for s in run["support"]
                          for i, case in enumerate(fold.pool) if case.name == s["case"]], 0),
             (fold.name, [(i, tuple(range(8))) for i in range(2)], 0)]
    assert unet_calls == drawn
    scratch = rows["U-Net from scratch, 1 slice"]
    assert scratch["family"] == "from scratch" and (scratch["labelled_slices"], scratch["positive_slices"]) == (2, 1)
    arm = stored["headline"]["fewshot"][0]
    assert math.isclose(arm["dice_minus_unet_same_count"],
                        rows["few-shot, 1 slice"]["mean"]["dice"] - scratch["mean"]["dice"])
    assert stored["headline"]["same_count"]["counts"] == 1
    assert "## Few-shot minus U-Net from scratch at the same count" in text
    assert f"= {arm['dice_minus_unet_same_count']:+.3f}." in text

    # the student the draw's decoder taught: every slice of the draw's support volumes, the draw's seed, the
    # study's U-Net, scored on the same test slices and paired with the same U-Net from scratch
    (taught,) = stored["runs"]["student_fewshot"]
    for key in ("shots", "seed", "fold", "support", "labelled_slices", "positive_slices"):
        assert taught[key] == run[key], key
    # with the unlabelled volume, as `fewsam teach -i` teaches (StudentConfig.cohort: 3x the U-Net's steps)
    assert taught["training_slices"] == 8 * (len(run["support"]) + 1) and taught["unlabelled_volumes"] == 1
    assert taught["steps"] == 6 and len(taught["items"]) == 2
    student = rows["student, 1 slice"]
    assert student["family"] == "student" and math.isclose(
        student["minus_unet_same_count"]["dice"], student["mean"]["dice"] - scratch["mean"]["dice"])
    assert stored["headline"]["student_same_count"]["counts"] == 1
    assert "| student, 1 slice | 2 (1 + 1 empty) |" in text and "The student the decoder taught beats" in text

    assert _markdown_matches(text, stored) == {(m, c) for m in methods for c in ("left", "right")}
    # the summary's few-shot vs one-point ratio is computed from the rows
    arm = stored["headline"]["fewshot"][0]
    assert math.isclose(arm["iou_ratio_vs_one_point"],
                        rows["few-shot, 1 slice"]["mean"]["iou"] / rows["SAM 1 point"]["mean"]["iou"])
    assert f"{arm['iou_ratio_vs_one_point']:.2f}" in text

    # the finished study keeps its units: the same study resumed runs none of them again
    runs_file = tmp_path / "results" / "reproduce_synthetic.runs.json"
    assert sorted(json.loads(runs_file.read_text())["units"]) == [
        "U-Net 1, seed 0, fold synthetic", "few-shot 1, seed 0, fold synthetic", "fully supervised", "prompted SAM"]
    with monkeypatch.context() as patched:
        for name in ("_fewshot_run", "_unet_run", "run_prompted", "run_supervised"):
            patched.setattr(study, name, lambda *a, **k: pytest.fail("a kept unit ran again"))
        run_study(task, out=tmp_path / "results", model=tiny_sam, config=config, cache=tmp_path / "cache",
                  log=lambda message: None, resume=True, overwrite=True)
    rerendered = json.loads((tmp_path / "results" / names["json"]).read_text())
    assert [r["mean"] for r in rerendered["rows"]] == [r["mean"] for r in stored["rows"]]
    # an interrupted run keeps every unit finished before the interruption; resumed, it runs only the rest and
    # reports what the uninterrupted run did (the supervised unit is trained again: deterministic per seed)
    run_supervised = study.run_supervised
    monkeypatch.setattr(study, "run_supervised", lambda ctx: pytest.fail("interrupted"))
    with pytest.raises(pytest.fail.Exception, match="interrupted"):
        run_study(task, out=tmp_path / "results", model=tiny_sam, config=config, cache=tmp_path / "cache",
                  log=lambda message: None, overwrite=True)
    units = json.loads(runs_file.read_text())["units"]
    assert {key: sorted(unit["overlays"]) for key, unit in units.items()} == {
        "prompted SAM": ["SAM 1 point"], "few-shot 1, seed 0, fold synthetic": ["few-shot 1", "student 1"],
        "U-Net 1, seed 0, fold synthetic": ["U-Net 1"]}
    monkeypatch.setattr(study, "run_supervised", run_supervised)
    for name in ("_fewshot_run", "_unet_run", "run_prompted"):
        monkeypatch.setattr(study, name, lambda *a, **k: pytest.fail("a kept unit ran again"))
    run_study(task, out=tmp_path / "results", model=tiny_sam, config=config, cache=tmp_path / "cache",
              log=lambda message: None, resume=True, overwrite=True)
    again = json.loads((tmp_path / "results" / names["json"]).read_text())  # as JSON (NaN as null), like `stored`
    assert [(r["method"], r["classes"], r["mean"]) for r in again["rows"]] == [
        (r["method"], r["classes"], r["mean"]) for r in stored["rows"]]
    assert {k: [r["items"] for r in v] for k, v in again["runs"].items()} == {
        k: [r["items"] for r in v] for k, v in stored["runs"].items()}
    assert any("Resumed: 3 unit(s) kept" in note for note in again["notes"])
    assert "fully supervised" in json.loads(runs_file.read_text())["units"]  # kept with the report
    first, resumed = overlays[0], overlays[-1]
    assert sorted(first) == sorted(resumed) and all(np.array_equal(first[m], resumed[m]) for m in first)
    # --kept-only: a second seed asked for is left out and named, nothing trains or embeds, the rows are the kept ones
    monkeypatch.setattr(study, "run_supervised", lambda *a, **k: pytest.fail("a kept unit ran again"))
    monkeypatch.setattr(study, "_embed_everything", lambda *a, **k: pytest.fail("embedded"))
    two_seeds = dataclasses.replace(config, seeds=2)
    with pytest.raises(ValueError, match="kept units only: needs resume"):
        run_study(task, out=tmp_path / "results", model=tiny_sam, config=two_seeds, log=lambda message: None,
                  overwrite=True, kept_only=True)
    run_study(task, out=tmp_path / "results", model=tiny_sam, config=two_seeds, cache=tmp_path / "cache",
              log=lambda message: None, resume=True, overwrite=True, kept_only=True)
    partial = json.loads((tmp_path / "results" / names["json"]).read_text())
    assert [r["mean"] for r in partial["rows"]] == [r["mean"] for r in stored["rows"]]
    assert any("1 unit(s) left out (few-shot 1, seed 1, fold synthetic)" in note for note in partial["notes"])
    assert partial["left_out_units"] == ["few-shot 1, seed 1, fold synthetic"]
    assert sorted(json.loads(runs_file.read_text())["units"]) == [
        "U-Net 1, seed 0, fold synthetic", "few-shot 1, seed 0, fold synthetic", "fully supervised", "prompted SAM"]
    # a few-shot run kept without its U-Net is left out too (its difference would be over other seeds); a missing
    # baseline is refused
    units = json.loads(runs_file.read_text())
    del units["units"]["U-Net 1, seed 0, fold synthetic"]
    runs_file.write_text(json.dumps(units))
    run_study(task, out=tmp_path / "results", model=tiny_sam, config=config, cache=tmp_path / "cache",
              log=lambda message: None, resume=True, overwrite=True, kept_only=True)
    unpaired = json.loads((tmp_path / "results" / names["json"]).read_text())
    assert unpaired["runs"]["fewshot"] == unpaired["runs"]["unet_fewshot"] == unpaired["runs"]["student_fewshot"] == []
    assert unpaired["left_out_units"] == ["U-Net 1, seed 0, fold synthetic",
                                          "few-shot 1, seed 0, fold synthetic (kept, but its U-Net is not)"]
    del units["units"]["prompted SAM"]
    runs_file.write_text(json.dumps(units))
    with pytest.raises(ValueError, match="the runs file lacks prompted SAM"):
        run_study(task, out=tmp_path / "results", model=tiny_sam, config=config, cache=tmp_path / "cache",
                  log=lambda message: None, resume=True, overwrite=True, kept_only=True)


def test_runs_file_is_refused_for_another_study_and_kept_without_resume(synthetic_task, tiny_sam, tmp_path,
                                                                         monkeypatch):
    import bench.reproduce as reproduce
    from bench.reproduce.runs import RunStore
    from fewsam_jax.outputs import OutputExistsError

    store = RunStore(tmp_path / "a.runs.json", {"study": {"seeds": 3}, "model": "m"})
    assert store.put("unit", {"dice": math.inf, "items": (1, np.float32(0.5))}) == {"dice": math.inf, "items": [1, 0.5]}
    assert RunStore(tmp_path / "a.runs.json", {"study": {"seeds": 3}, "model": "m"}).get("unit")["dice"] == math.inf
    with pytest.raises(ValueError, match=r"a.runs.json: written for another study \(study.seeds: 3 in the file, 1"):
        RunStore(tmp_path / "a.runs.json", {"study": {"seeds": 1}, "model": "m"})
    RunStore(tmp_path / "c.runs.json", {"folds": [{"test": [1, 2]}]}).put("unit", {})
    with pytest.raises(ValueError, match=r"\(folds\[0\].test\[1\]: 2 in the file, 3 now\)"):
        RunStore(tmp_path / "c.runs.json", {"folds": [{"test": [1, 3]}]})
    with pytest.raises(ValueError, match="distinct positive counts"):  # a repeated count would be one unit twice
        StudyConfig(shots=(5, 5))
    fold = synthetic_task.folds[0]
    with pytest.raises(ValueError, match="fold names must be unique"):
        dataclasses.replace(synthetic_task, folds=(fold, fold))
    (tmp_path / "b.runs.json").write_text("notes")
    with pytest.raises(ValueError, match="b.runs.json: not a study's runs file"):
        RunStore(tmp_path / "b.runs.json", {})

    results = tmp_path / "results"
    results.mkdir()
    kept = results / "reproduce_synthetic.runs.json"
    kept.write_text("someone's notes")
    monkeypatch.setattr(reproduce, "run_methods", lambda *a, **k: pytest.fail("the study ran"))
    with pytest.raises(OutputExistsError, match="runs.json exists .* pass --resume to continue it, or --overwrite"):
        run_study(synthetic_task, out=results, model=tiny_sam, log=lambda message: None)
    for options in ({"resume": True}, {"overwrite": True}):  # neither reads nor removes what is not a runs file
        with pytest.raises(ValueError, match="not a study's runs file"):
            run_study(synthetic_task, out=results, model=tiny_sam, log=lambda message: None, **options)
    assert kept.read_text() == "someone's notes"
    kept.unlink()
    RunStore(kept, {"study": "another"}).put("unit", {})
    with pytest.raises(ValueError, match=r"written for another study \(methods: None in the file"):
        run_study(synthetic_task, out=results, model=tiny_sam, log=lambda message: None, resume=True)
    with pytest.raises(pytest.fail.Exception, match="the study ran"):  # --overwrite: the runs file starts afresh
        run_study(synthetic_task, out=results, model=tiny_sam, log=lambda message: None, overwrite=True)
    assert not kept.exists()  # the old units are gone; the first unit finished writes it anew
    with pytest.raises(ValueError, match="unlabelled: 2 volumes for the students, but the study teaches none"):
        run_study("hippocampus", out=results, unlabelled=2, log=lambda message: None)


def _run(seed: int, shots: int, dice: tuple[float, float], empty_right: bool = False) -> dict:
    def item(case, d, e):
        return {"fold": "f", "case": case, "scores": {
            "left": {"dice": d, "iou": d / (2 - d), "hd95": 2.0},
            "right": {"dice": e, "iou": e / (2 - e), "hd95": math.inf if empty_right else 3.0}}}
    return {"method": f"few-shot {shots}", "shots": shots, "seed": seed, "fold": "f", "labelled_slices": shots + 1,
            "positive_slices": shots, "train_seconds": 1.0, "segment_seconds": 1.0,
            "support": [{"case": "p", "slices": [seed, 9]}], "items": [item("a", *dice), item("b", *dice)]}


def test_report_spreads_over_seeds_and_matches_markdown(synthetic_task, tmp_path):
    raw = {
        "shots": [1], "notes": ["a note"], "timings": {"embed_seconds": 1.0}, "slices_encoded": 3, "load_average": 1.0,
        "fewshot": [_run(0, 1, (0.5, 0.2), empty_right=True), _run(1, 1, (0.7, 0.4))],
        "prompted": [{"method": "SAM 1 point", "spec": {"kind": "points"}, "interactions_per_slice": 1,
                      "interactions": 16, "seconds": 1.0,
                      "items": [{"fold": "f", "case": "a", "scores": {"left": {"dice": 0.4, "iou": 0.25, "hd95": 5.0},
                                                                      "right": {"dice": 0.8, "iou": 2 / 3, "hd95": 1.0}}}]}],
        "supervised": [],
    }
    report = make_report(synthetic_task, raw, StudyConfig(), model={"name": "tiny", "weights_id": "x" * 12},
                         quick=False, command="test", load_start=1.0, total_seconds=10.0)
    rows = {row["method"]: row for row in report["rows"]}
    left = rows["few-shot, 1 slice"]["classes"]["left"]
    assert left["dice"] == pytest.approx(0.6) and left["dice_spread"] == pytest.approx(0.1)  # mean, std over seeds
    right = rows["few-shot, 1 slice"]["classes"]["right"]
    assert right["hd95"] == pytest.approx(3.0) and (right["empty"], right["scored"]) == (2, 4)
    # few-shot beats one click on "left" but loses on "right" by 0.8 - 0.3
    (loss,) = [loss for loss in report["headline"]["losses"] if loss["method"] == "SAM 1 point"]
    assert loss["class"] == "right" and loss["difference"] == pytest.approx(-0.5)
    example = {"case": "a", "slice": 0, "volume_slice": 3, "image": np.zeros((8, 8)), "truth": np.eye(8, dtype=int),
               "predictions": {"SAM 1 point": np.eye(8, dtype=int) * 2}}
    files = write_report(report, example, tmp_path)
    text, stored = files["markdown"].read_text(), json.loads(files["json"].read_text())
    assert _markdown_matches(text, stored) == {(m, c) for m in rows for c in ("left", "right")}
    assert "0.600 ± 0.100" in text and "(2/4 empty)" in text and "a note" in text
    assert "SAM 1 point, right: 0.800 vs 0.300 (-0.500)" in text
    assert "| 2 | 1 | f | p: 1, 9 | 1 | 1 | 0.550 |" in text  # the draws, seed 1: mean of 0.7 and 0.4


def test_report_pairs_fewshot_with_unet_on_the_same_slices(synthetic_task, tmp_path):
    fewshot = [_run(0, 1, (0.5, 0.2)), _run(1, 1, (0.7, 0.4))]
    unet = [{**_run(0, 1, (0.3, 0.2)), "method": "U-Net 1", "steps": 5},
            {**_run(1, 1, (0.3, 0.0)), "method": "U-Net 1", "steps": 5}]
    raw = {"shots": [1], "notes": [], "timings": {"embed_seconds": 1.0}, "slices_encoded": 3, "load_average": 1.0,
           "fewshot": fewshot, "unet_fewshot": unet, "prompted": [], "supervised": []}
    report = make_report(synthetic_task, raw, StudyConfig(), model={"name": "tiny", "weights_id": "x" * 12},
                         quick=False, command="test", load_start=1.0, total_seconds=10.0)
    assert [r["method"] for r in report["rows"]] == ["few-shot, 1 slice", "U-Net from scratch, 1 slice", "published"]
    scratch = report["rows"][1]
    assert scratch["family"] == "from scratch" and scratch["steps"] == 5 and scratch["spread_over"] == "seeds"
    assert scratch["classes"]["right"]["dice"] == pytest.approx(0.1)
    assert scratch["classes"]["right"]["dice_spread"] == pytest.approx(0.1)
    # seed 0: 0.35 - 0.25, seed 1: 0.55 - 0.15; the mean over classes 0.45 - 0.2, spread over the pairs
    (arm,) = report["headline"]["fewshot"]
    assert arm["dice_minus_unet_same_count"] == pytest.approx(0.25)
    assert arm["dice_minus_unet_same_count_spread"] == pytest.approx(0.15)
    assert arm["dice_minus_unet_same_count_per_class"] == pytest.approx({"left": 0.3, "right": 0.2})
    assert report["headline"]["same_count"] == {"counts": 1, "fewshot_ahead": 1}
    assert report["runs"]["unet_fewshot"] == unet
    example = {"case": "a", "slice": 0, "volume_slice": 3, "image": np.zeros((8, 8)), "truth": np.eye(8, dtype=int),
               "predictions": {"U-Net 1": np.eye(8, dtype=int)}}
    files = write_report(report, example, tmp_path)
    text, stored = files["markdown"].read_text(), json.loads(files["json"].read_text())
    assert _markdown_matches(text, stored) == {(m, c) for m in [r["method"] for r in stored["rows"]]
                                               for c in ("left", "right")}
    assert ("| few-shot, 1 slice | 2 (1 + 1 empty) | 0.450 ± 0.100 | 0.200 ± 0.050 | +0.250 ± 0.150 | +0.300 | +0.200 |"
            in text)  # the few-shot minus U-Net table: both rows' Dice, the difference, then per class
    assert "few-shot minus U-Net from scratch on the same slices (Dice 0.200) = +0.250 ± 0.150" in text
    assert "at 1 of 1 counts" in text
    assert "| 2 | 1 | f | p: 1, 9 | 1 | 1 | 0.550 | 1 | 0.150 |" in text  # the draws, with the U-Net beside


def test_report_rows_the_student_beside_the_unet(synthetic_task, tmp_path, monkeypatch):
    """A student row follows the U-Net from scratch of its count, paired with it like the few-shot row; the
    draws table and the plot carry it; a cross-image task's study notes why it has none."""
    fewshot = [_run(0, 1, (0.5, 0.2)), _run(1, 1, (0.7, 0.4))]
    unet = [{**_run(0, 1, (0.3, 0.2)), "method": "U-Net 1", "steps": 5},
            {**_run(1, 1, (0.3, 0.0)), "method": "U-Net 1", "steps": 5}]
    students = [{**_run(0, 1, (0.6, 0.3)), "method": "student 1", "steps": 5, "train_seconds": 7.0},
                {**_run(1, 1, (0.4, 0.3)), "method": "student 1", "steps": 5, "train_seconds": 7.0}]
    raw = {"shots": [1], "notes": [], "timings": {"embed_seconds": 1.0}, "slices_encoded": 3, "load_average": 1.0,
           "fewshot": fewshot, "unet_fewshot": unet, "student_fewshot": students, "prompted": [], "supervised": []}
    report = make_report(synthetic_task, raw, StudyConfig(student=True), model={"name": "tiny", "weights_id": "x" * 12},
                         quick=False, command="test", load_start=1.0, total_seconds=10.0)
    assert [r["method"] for r in report["rows"]] == ["few-shot, 1 slice", "U-Net from scratch, 1 slice",
                                                     "student, 1 slice", "published"]
    student = report["rows"][2]
    # seed 0: 0.45 - 0.25, seed 1: 0.35 - 0.15: +0.2 on both
    assert student["minus_unet_same_count"]["dice"] == pytest.approx(0.2)
    assert student["minus_unet_same_count"]["dice_spread"] == pytest.approx(0.0)
    assert report["headline"]["student_same_count"] == {"counts": 1, "student_ahead": 1}
    assert [arm["method"] for arm in report["headline"]["fewshot"]] == ["few-shot, 1 slice"]  # the decoder's claims
    files = write_report(report, {"case": "a", "slice": 0, "volume_slice": 3, "image": np.zeros((8, 8)),
                                  "truth": np.eye(8, dtype=int), "predictions": {}}, tmp_path)
    text, stored = files["markdown"].read_text(), json.loads(files["json"].read_text())
    assert _markdown_matches(text, stored) == {(m, c) for m in [r["method"] for r in stored["rows"]]
                                               for c in ("left", "right")}
    assert "| student, 1 slice | 2 (1 + 1 empty) | 0.400 ± 0.050 | 0.200 ± 0.050 | +0.200 ± 0.000 |" in text
    assert "| 2 | 1 | f | p: 1, 9 | 1 | 1 | 0.550 | 1 | 0.150 | 7 | 0.350 |" in text  # U-Net, then student
    assert "at 1 of 1 counts (Dice)" in text and "Student, N slices" in text

    cross = Task(name="pairs", classes=synthetic_task.classes, axis=2, intensity="minmax", protocol="cross_image",
                 folds=synthetic_task.folds, shots=(1,))
    ctx = study._Context(cross, None, StudyConfig(student=True, seeds=1), None, tmp_path, lambda message: None,
                         {"slice": 0, "predictions": {}})
    trained = []
    monkeypatch.setattr(study.FewShotSegmenter, "train", lambda *a, **k: trained.append(1) or object())
    monkeypatch.setattr(study, "_segment_tests", lambda *a: lambda index: np.zeros((8, 24, 28), int))
    monkeypatch.setattr(study, "train_student", lambda *a, **k: pytest.fail("taught"))
    runs, taught, notes = study.run_fewshot(ctx, (1,))
    assert len(runs) == len(trained) == 1 and taught == [] and any("No student" in note for note in notes)


def test_reports_without_unet_per_count_still_render(synthetic_task, tmp_path):
    # raw runs of before the U-Net per count (no "unet_fewshot"), and the JSON files written then
    raw = {"shots": [1], "notes": [], "timings": {"embed_seconds": 1.0}, "slices_encoded": 3, "load_average": 1.0,
           "fewshot": [_run(0, 1, (0.5, 0.2))], "prompted": [], "supervised": []}
    report = make_report(synthetic_task, raw, StudyConfig(unet_per_count=False),
                         model={"name": "tiny", "weights_id": "x" * 12}, quick=False, command="test", load_start=1.0,
                         total_seconds=10.0)
    assert [r["method"] for r in report["rows"]] == ["few-shot, 1 slice", "published"]
    assert report["runs"]["unet_fewshot"] == [] and "same_count" not in report["headline"]
    stored_reports = [json.loads(path.read_text()) for path in sorted(RESULTS.glob("reproduce_*.json"))
                      if not path.name.endswith(RUNS_SUFFIX)]  # a study's unfinished units, not a report
    old = [stored for stored in stored_reports if "unet_fewshot" not in stored["runs"]]
    assert old, f"no report written before the U-Net per count in {RESULTS}"
    for stored in stored_reports:  # old ones render without the same-count section, newer ones with it
        names = file_names(stored["dataset"], stored["quick"])
        text = markdown(stored, names)
        per_count = bool(stored["runs"].get("unet_fewshot"))
        assert "## Mean over classes" in text and ("U-Net from scratch at the same count" in text) == per_count
        assert _markdown_matches(text, stored)
        plot_dice(stored, tmp_path / names["plot"])
        assert (tmp_path / names["plot"]).stat().st_size > 0


@pytest.mark.slow  # trains the pool U-Net twice
def test_unet_helper_trains_the_pool_unet_as_before(synthetic_task, tiny_sam, tmp_path):
    """The shared helper on every pool slice with seed 0 is the pool U-Net the study trained inline before."""
    cfg = UNetConfig.tiny(steps=2, features=(4, 8))
    ctx = study._Context(synthetic_task, tiny_sam, StudyConfig(unet=cfg), None, tmp_path, lambda message: None)
    fold, axis = synthetic_task.folds[0], synthetic_task.axis
    predict, seconds = study.train_unet_on(ctx, fold, [(i, tuple(s)) for i, s in enumerate(fold.pool_slices)], 0)
    assert seconds > 0
    intensity = Intensity.parse(synthetic_task.intensity)
    images, labels = [], []
    for case, slices in zip(fold.pool, fold.pool_slices):
        images += list(get_slices(intensity.apply(case.volume.array), axis)[list(slices)])
        labels += list(case.label_slices(axis)[list(slices)])  # class ids 1, 2: already 1..K
    model, _ = train_unet(images, labels, 3, cfg, seed=0, progress=False)
    for index, case in enumerate(fold.test):
        slices = get_slices(intensity.apply(case.volume.array), axis)[list(fold.test_slices[index])]
        np.testing.assert_array_equal(predict(index), np.stack(predict_unet(model, list(slices))))


def test_draw_support_covers_classes_and_differs_between_seeds(synthetic_task):
    fold = synthetic_task.folds[0]
    draws = [draw_support(fold, (1, 2), 2, 3, seed) for seed in range(3)]
    for draw in draws:
        slices = [s for _, chosen in draw for s in chosen]
        labels = np.concatenate([fold.pool[i].label_slices(2)[list(chosen)] for i, chosen in draw])
        assert {1, 2} <= set(np.unique(labels).tolist())
        positives = sum(int(np.isin(fold.pool[i].label_slices(2)[list(c)], (1, 2)).any(axis=(1, 2)).sum())
                        for i, c in draw)
        assert positives == 3 and len(slices) == 3 + len(draw)  # + one empty slice per drawn volume
    assert draws[0] != draws[1]
    assert draw_support(fold, (1, 2), 2, 3, 0) == draws[0]  # deterministic
    assert draw_support(fold, (1, 2), 2, 99, 0) is None  # more slices than the pool has


def test_score_item_per_class_in_3d_and_2d():
    truth = np.zeros((3, 10, 10), np.int32)
    truth[:, 2:6, 2:6] = 1
    pred = truth.copy()
    pred[:, 2:6, 2:4] = 0
    scores = score_item(pred, truth, (2.0, 1.0, 1.0), {1: "a", 2: "b"})
    assert set(scores) == {"a"}  # absent classes are not scored
    assert scores["a"]["dice"] == pytest.approx(2 * 24 / (24 + 48))
    assert scores["a"]["iou"] == pytest.approx(0.5)
    flat = score_item(pred[:1], truth[:1], (2.0, 1.0, 1.0), {1: "a"})
    assert flat["a"]["hd95"] == pytest.approx(2.0)  # in-plane only for one slice


@pytest.mark.shared_data
@pytest.mark.parametrize("dataset", ["hippocampus", "totalseg_ct", "ct_slices_2d", "cxr_lungs"])
def test_shared_datasets_become_tasks(dataset):
    root = shared_data(dataset).parent
    task = load_task(dataset, quick=True, data_root=root)
    ids = tuple(sorted(task.classes))
    for fold in task.folds:
        for case, slices in zip(fold.test, fold.test_slices):
            assert case.labels.shape == case.volume.shape
            assert set(np.unique(case.labels).tolist()) <= {0, *ids}
            assert max(slices) < case.volume.shape[task.axis]
        assert draw_support(fold, ids, task.axis, min(task.shots), 0) is not None
    if dataset == "totalseg_ct":
        assert {"liver", "spleen", "aorta"} <= set(task.classes.values())
        assert any("model" in note for note in task.notes)
        fold = task.folds[0]
        assert not set(fold.pool_slices[0]) & set(fold.test_slices[0])  # within-volume: disjoint slices
    if dataset in ("ct_slices_2d", "cxr_lungs"):
        assert all(case.volume.shape[2] == 1 for fold in task.folds for case in fold.test)
        assert all(fold.test[0] not in fold.pool for fold in task.folds)


@pytest.mark.shared_data
def test_hippocampus_along_another_axis_with_unlabelled_volumes():
    root = shared_data("hippocampus").parent
    task = load_task("hippocampus", quick=True, data_root=root, axis=0, unlabelled=3)
    (fold,) = task.folds
    assert (task.name, task.axis) == ("hippocampus_sagittal", 0) and "sagittal slices" in task.notes[0]
    assert all(slices == tuple(range(case.volume.shape[0])) for case, slices in zip(fold.pool, fold.pool_slices))
    scored = {case.name for case in (*fold.pool, *fold.test)}
    assert len(task.unlabelled) == 3 and not {p.name.removesuffix("_0000.nii.gz") for p in task.unlabelled} & scored
    assert load_task("hippocampus", quick=True, data_root=root).name == "hippocampus"
    with pytest.raises(ValueError, match="only the hippocampus study slices along another axis"):
        load_task("totalseg_ct", quick=True, data_root=root, axis=0)
    with pytest.raises(ValueError, match="unlabelled: expected 0 to"):
        load_task("hippocampus", quick=True, data_root=root, unlabelled=10_000)


def test_fold_rejects_unevenly_spaced_test_slices(synthetic_task):
    case = synthetic_task.folds[0].pool[0]
    with pytest.raises(ValueError, match="evenly spaced"):
        Fold("bad", (case,), ((0, 2),), (case,), ((1, 3, 4),))
    with pytest.raises(ValueError, match="dataset"):
        load_task("nonexistent")


def test_cli_reproduce_arguments(monkeypatch):
    from bench.reproduce.__main__ import build_parser as study_parser
    from fewsam_jax.cli import build_parser, main

    args = study_parser().parse_args(["--dataset", "cxr_lungs", "--quick", "--out", "x"])
    assert (args.dataset, args.quick, args.out, args.model) == ("cxr_lungs", True, "x", "litemedsam")
    with pytest.raises(SystemExit):
        study_parser().parse_args(["--dataset", "mnist"])
    # `fewsam reproduce` hands every argument to the study's own parser, unparsed
    args = build_parser().parse_args(["reproduce", "--dataset", "cxr_lungs", "--quick", "--out", "x"])
    assert args.study_args == ["--dataset", "cxr_lungs", "--quick", "--out", "x"]
    assert args.run.__name__ == "_reproduce"
    with pytest.raises(SystemExit):
        main(["reproduce", "--dataset", "mnist"])
    seen = []
    monkeypatch.setattr("bench.reproduce.__main__.run", seen.append)
    assert main(["reproduce", "--dataset", "cxr_lungs", "--quick"]) == 0
    assert (seen[0].dataset, seen[0].quick) == ("cxr_lungs", True)
    args = study_parser().parse_args(["--axis", "0", "--shots", "5,10,20", "--seeds", "2", "--student",
                                      "--unlabelled", "40", "--resume", "--kept-only"])
    assert (args.axis, args.shots, args.seeds, args.unlabelled, args.resume, args.kept_only) == (
        0, (5, 10, 20), 2, 40, True, True)
    with pytest.raises(SystemExit):
        study_parser().parse_args(["--shots", "five"])


def test_cli_reproduce_refuses_unlabelled_volumes_without_students(capsys):
    from bench.reproduce.__main__ import main

    assert main(["--dataset", "hippocampus", "--unlabelled", "4"]) == 2
    assert "teaches none (set StudyConfig.student: --student)" in capsys.readouterr().err


def test_cli_reproduce_without_the_research_tree_says_where_it_is(monkeypatch, capsys):
    import sys

    from fewsam_jax.cli import main

    monkeypatch.setitem(sys.modules, "bench.reproduce.__main__", None)  # as in an installed wheel: not importable
    assert main(["reproduce", "--quick"]) == 2
    assert "python -m bench.reproduce" in capsys.readouterr().err


def test_existing_report_files_are_checked_before_the_study(synthetic_task, tiny_sam, tmp_path, monkeypatch):
    import bench.reproduce as reproduce
    from fewsam_jax.outputs import OutputError, OutputExistsError

    results = tmp_path / "results"
    results.mkdir()
    (results / "other.md").write_text("someone else's notes")
    (results / file_names("synthetic", quick=False)["json"]).write_text("last week's report")
    monkeypatch.setattr(reproduce, "run_methods", lambda *a, **k: pytest.fail("the study ran first"))
    with pytest.raises(OutputExistsError, match=r"reproduce_synthetic.json exists; pass --overwrite"):
        run_study(synthetic_task, out=results, model=tiny_sam, log=lambda message: None)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputExistsError, match="is a file; --out must be a folder"):
        run_study(synthetic_task, out=tmp_path / "file" / "results", model=tiny_sam, log=lambda message: None)
    (tmp_path / "locked").mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path / "locked" and real_access(path, mode))
    with pytest.raises(OutputError, match="locked is not writable; choose another --out"):
        run_study(synthetic_task, out=tmp_path / "locked" / "new", model=tiny_sam, log=lambda message: None)
    assert (results / "reproduce_synthetic.json").read_text() == "last week's report"
    assert (results / "other.md").read_text() == "someone else's notes"
