"""Aggregating a study's runs into method rows, and writing them: Markdown, JSON and PNG plots.

Every number in the Markdown is printed from the JSON written beside it (3 decimals for Dice and
IoU, 2 for HD95), so the two always agree. Reports of studies without the U-Net per count (no
``runs["unet_fewshot"]``, as in older JSON files) render without its rows, table and curve; without students
(no ``runs["student_fewshot"]``), without theirs.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

from bench.reproduce.datasets import Task
from bench.reproduce.study import method_configs
from fewsam_jax.fewshot import TrainConfig
from fewsam_jax.metrics import to_json
from fewsam_jax.outputs import OutputError, OutputExistsError, check_output_file, write_file, write_text

ONE_POINT = "SAM 1 point"
FULL_DECODER = "decoder, all pool slices"
UNET = "U-Net, all pool slices"
FULL_STUDENT = "student, all pool slices"  # the student the fully supervised decoder taught (with --student)
FROM_SCRATCH = "from scratch"  # the family of the U-Net rows trained on each few-shot run's slices
STUDENT = "student"  # the family of the rows of the students the few-shot decoders taught


def _finite_mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def _class_values(items: list[dict], name: str) -> dict[str, list[float]]:
    scores = [item["scores"][name] for item in items if name in item["scores"]]
    return {key: [s[key] for s in scores] for key in ("dice", "iou", "hd95")}


def _over_items(items: list[dict], classes: list[str]) -> dict[str, dict[str, Any]]:
    """Per class: mean and standard deviation over the test items that show it."""
    out = {}
    for name in classes:
        values = _class_values(items, name)
        if not values["dice"]:
            continue
        out[name] = {
            "dice": float(np.mean(values["dice"])), "dice_spread": float(np.std(values["dice"])),
            "iou": float(np.mean(values["iou"])), "iou_spread": float(np.std(values["iou"])),
            "hd95": _finite_mean(values["hd95"]),
            "hd95_spread": float(np.std([v for v in values["hd95"] if math.isfinite(v)] or [math.nan])),
            "empty": sum(not math.isfinite(v) for v in values["hd95"]), "scored": len(values["dice"]),
        }
    return out


def _over_seeds(runs: list[dict], classes: list[str]) -> dict[str, dict[str, Any]]:
    """Per class: the mean over seeds of each seed's mean over test items (all folds pooled), and the
    standard deviation over seeds (None for one seed)."""
    seeds = sorted({run["seed"] for run in runs})
    per_seed = [_over_items([i for run in runs if run["seed"] == s for i in run["items"]], classes) for s in seeds]
    out = {}
    for name in classes:
        rows = [p[name] for p in per_seed if name in p]
        if not rows:
            continue
        entry = {"empty": sum(r["empty"] for r in rows), "scored": sum(r["scored"] for r in rows)}
        for key in ("dice", "iou", "hd95"):
            values = [r[key] for r in rows]
            entry[key] = _finite_mean(values)
            entry[f"{key}_spread"] = float(np.std(values)) if len(rows) > 1 else None
        out[name] = entry
    return out


def _macro(classes: dict[str, dict[str, Any]]) -> dict[str, float]:
    return {key: _finite_mean([c[key] for c in classes.values() if c.get(key) is not None])
            for key in ("dice", "iou", "hd95")}


def _seed_macros(runs: list[dict], classes: list[str]) -> dict[int, float]:
    """Per seed: the mean Dice over classes of that seed's runs (all folds pooled)."""
    return {s: _macro(_over_items([i for run in runs if run["seed"] == s for i in run["items"]], classes))["dice"]
            for s in sorted({run["seed"] for run in runs})}


def _seed_macro_spread(runs: list[dict], classes: list[str]) -> float | None:
    values = list(_seed_macros(runs, classes).values())
    return float(np.std(values)) if len(values) > 1 else None


def _count_text(task: Task, shots: int) -> str:
    return f"{shots} {'image' if task.protocol == 'cross_image' else 'slice'}{'s' if shots > 1 else ''}"


def _seed_row(method: str, family: str, shots: int, runs: list[dict], classes: list[str]) -> dict[str, Any]:
    """The row of the runs of one labelled-slice count (any seeds and folds): spread over seeds."""
    per_class = _over_seeds(runs, classes)
    seeds = len({run["seed"] for run in runs})
    return {
        "method": method, "family": family, "shots": shots,
        "labelled_slices": float(np.mean([run["labelled_slices"] for run in runs])),
        "positive_slices": float(np.mean([run["positive_slices"] for run in runs])),
        "interaction": "none", "interactions_per_item": 0.0,
        "spread_over": "seeds" if seeds > 1 else None, "seeds": seeds, "runs": len(runs),
        "classes": per_class, "mean": {**_macro(per_class), "dice_spread": _seed_macro_spread(runs, classes)},
        "train_seconds": float(np.mean([run["train_seconds"] for run in runs])),
    }


def _difference(row: dict, runs: list[dict], other_row: dict, other_runs: list[dict],
                classes: list[str]) -> dict[str, Any]:
    """``row`` minus ``other_row`` in Dice: the mean over classes (its spread: the standard deviation
    over seeds of the seed-paired differences, None for one seed) and per class."""
    mine, theirs = _seed_macros(runs, classes), _seed_macros(other_runs, classes)
    paired = [mine[s] - theirs[s] for s in mine if s in theirs]
    return {
        "method": other_row["method"], "other_dice": other_row["mean"]["dice"],
        "dice": row["mean"]["dice"] - other_row["mean"]["dice"],
        "dice_spread": float(np.std(paired)) if len(paired) > 1 else None,
        "classes": {name: c["dice"] - other_row["classes"][name]["dice"]
                    for name, c in row["classes"].items() if name in other_row["classes"]},
    }


def _interaction_text(per_slice: int, kind: str) -> str:
    if kind == "box":
        return "1 box / class / slice"
    return f"{per_slice} click{'s' if per_slice > 1 else ''} / class / slice"


def method_rows(task: Task, raw: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per method: per-class Dice, IoU, HD95 (+ spreads), labelled slices, interaction cost.

    Each few-shot row is followed by the U-Net from scratch on the same slices (``raw["unet_fewshot"]``,
    when there) and carries ``minus_unet_same_count``: few-shot minus that U-Net in Dice; then by the student
    its decoders taught (``raw["student_fewshot"]``, when there), which carries the same difference."""
    classes = [task.classes[i] for i in sorted(task.classes)]
    rows = []
    for shots in raw["shots"]:
        runs = [run for run in raw["fewshot"] if run["shots"] == shots]
        if not runs:
            continue
        fewshot = _seed_row(f"few-shot, {_count_text(task, shots)}", "few-shot", shots, runs, classes)
        rows.append(fewshot)
        scratch = [run for run in raw.get("unet_fewshot") or () if run["shots"] == shots]
        if scratch:
            unet = _seed_row(f"U-Net from scratch, {_count_text(task, shots)}", FROM_SCRATCH, shots, scratch, classes)
            rows.append({**unet, "steps": scratch[0]["steps"]})
            fewshot["minus_unet_same_count"] = _difference(fewshot, runs, unet, scratch, classes)
        taught = [run for run in raw.get("student_fewshot") or () if run["shots"] == shots]
        if taught:
            student = _seed_row(f"student, {_count_text(task, shots)}", STUDENT, shots, taught, classes)
            if scratch:
                student["minus_unet_same_count"] = _difference(student, taught, unet, scratch, classes)
            rows.append({**student, "steps": taught[0]["steps"]})
    for run in raw["prompted"]:
        per_class = _over_items(run["items"], classes)
        rows.append({
            "method": run["method"], "family": "prompted SAM", "prompt": run["spec"]["kind"],
            "labelled_slices": 0.0, "positive_slices": 0.0,
            "interaction": _interaction_text(run["interactions_per_slice"], run["spec"]["kind"]),
            "interactions_per_item": run["interactions"] / max(len(run["items"]), 1),
            "spread_over": "test items", "classes": per_class, "mean": {**_macro(per_class), "dice_spread": None},
            "seconds": run["seconds"],
        })
    for run in raw["supervised"]:
        per_class = _over_items(run["items"], classes)
        rows.append({
            "method": run["method"], "family": "supervised", "labelled_slices": run["labelled_slices"],
            "positive_slices": run["positive_slices"], "interaction": "none", "interactions_per_item": 0.0,
            "spread_over": "test items", "classes": per_class, "mean": {**_macro(per_class), "dice_spread": None},
            "train_seconds": run["train_seconds"], "steps": run["steps"],
        })
    if task.reference:
        per_class = {name: {"dice": value} for name, value in task.reference["dice"].items()}
        rows.append({
            "method": task.reference["method"], "family": "external", "labelled_slices": None,
            "labelled_text": task.reference["labelled"], "interaction": "none", "source": task.reference["source"],
            "spread_over": None, "classes": per_class,
            "mean": {"dice": float(np.mean(list(task.reference["dice"].values()))), "iou": None, "hd95": None,
                     "dice_spread": None},
        })
    return rows


def _row(rows: list[dict], name: str) -> dict | None:
    return next((r for r in rows if r["method"] == name), None)


def headline(task: Task, rows: list[dict]) -> dict[str, Any]:
    """The paper's claims measured: few-shot IoU / one-point IoU, few-shot Dice vs full supervision,
    the labels each used, few-shot minus the U-Net from scratch on the same slices (what SAM's prior
    adds; ``same_count``: at how many counts it is positive; ``student_same_count``: the same for the students),
    and every method that beats the best few-shot arm (per class, in Dice)."""
    fewshot = [r for r in rows if r["family"] == "few-shot"]
    if not fewshot:
        return {"fewshot": [], "losses": []}
    one_point, full, unet = _row(rows, ONE_POINT), _row(rows, FULL_DECODER), _row(rows, UNET)
    points = [r for r in rows if r.get("prompt") == "points" and r["mean"]["iou"]]
    best_points = max(points, key=lambda r: r["mean"]["iou"]) if points else None
    arms = []
    for r in fewshot:
        arm = {"method": r["method"], "labelled_slices": r["labelled_slices"], "dice": r["mean"]["dice"],
               "iou": r["mean"]["iou"]}
        if one_point and one_point["mean"]["iou"]:
            arm["one_point_iou"] = one_point["mean"]["iou"]
            arm["iou_ratio_vs_one_point"] = r["mean"]["iou"] / one_point["mean"]["iou"]
            arm["iou_ratio_vs_one_point_per_class"] = {
                name: c["iou"] / one_point["classes"][name]["iou"]
                for name, c in r["classes"].items() if one_point["classes"].get(name, {}).get("iou")}
        if best_points:
            arm["best_points"] = best_points["method"]
            arm["best_points_iou"] = best_points["mean"]["iou"]
            arm["iou_ratio_vs_best_points"] = r["mean"]["iou"] / best_points["mean"]["iou"]
        for label, ref in (("full_decoder", full), ("unet", unet)):
            if ref:
                arm[f"dice_minus_{label}"] = r["mean"]["dice"] - ref["mean"]["dice"]
                arm[f"label_ratio_{label}"] = ref["labelled_slices"] / r["labelled_slices"]
        if "minus_unet_same_count" in r:
            same = r["minus_unet_same_count"]
            arm.update(unet_same_count=same["method"], unet_same_count_dice=same["other_dice"],
                       dice_minus_unet_same_count=same["dice"], dice_minus_unet_same_count_spread=same["dice_spread"],
                       dice_minus_unet_same_count_per_class=same["classes"])
        arms.append(arm)
    best = max(fewshot, key=lambda r: r["mean"]["dice"])
    losses = []
    for r in rows:
        if r["family"] == "few-shot":
            continue
        for name, c in r["classes"].items():
            mine = best["classes"].get(name)
            if mine and c.get("dice") is not None and c["dice"] > mine["dice"]:
                losses.append({"method": r["method"], "class": name, "dice": c["dice"], "fewshot_dice": mine["dice"],
                               "difference": mine["dice"] - c["dice"]})
    losses.sort(key=lambda loss: loss["difference"])
    result = {"best": best["method"], "fewshot": arms, "losses": losses}
    differences = [arm["dice_minus_unet_same_count"] for arm in arms if "dice_minus_unet_same_count" in arm]
    if differences:
        result["same_count"] = {"counts": len(differences),
                                "fewshot_ahead": sum(d > 0 for d in differences if math.isfinite(d))}
    taught = [r["minus_unet_same_count"]["dice"] for r in rows if r["family"] == STUDENT
              and "minus_unet_same_count" in r]
    if taught:
        result["student_same_count"] = {"counts": len(taught),
                                        "student_ahead": sum(d > 0 for d in taught if math.isfinite(d))}
    full_student = _row(rows, FULL_STUDENT)
    if full_student and unet:
        result["full_supervision"] = {"student_dice": full_student["mean"]["dice"], "unet_dice": unet["mean"]["dice"],
                                      "difference": full_student["mean"]["dice"] - unet["mean"]["dice"]}
    return result


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or "?"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                    if line.startswith("model name")), cpu)
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


def make_report(task: Task, raw: dict[str, Any], config: Any, *, model: dict[str, str], quick: bool, command: str,
                load_start: float, total_seconds: float) -> dict[str, Any]:
    """The report of a study: settings, data, method rows, the measured claims and the raw runs.

    raw: the output of :func:`bench.reproduce.study.run_methods`; config: its StudyConfig;
    model: {"name", "weights_id"}.
    """
    rows = method_rows(task, raw)
    return {
        "dataset": task.name,
        "quick": quick,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command,
        "machine": machine_info(),
        "load_average": {"start": load_start, "end": raw["load_average"]},
        "model": model,
        "task": {
            "classes": {str(k): v for k, v in sorted(task.classes.items())}, "axis": task.axis,
            "intensity": task.intensity, "protocol": task.protocol, "hd95_unit": task.hd95_unit,
            "notes": list(task.notes), "reference": task.reference, "unlabelled": [p.name for p in task.unlabelled],
            "folds": [{"name": f.name, "pool": [c.name for c in f.pool], "pool_slices": sum(map(len, f.pool_slices)),
                       "test": [c.name for c in f.test], "test_slices": sum(map(len, f.test_slices))}
                      for f in task.folds],
        },
        "config": {**dataclasses.asdict(config), "fewshot_steps": config.fewshot_steps or TrainConfig().steps,
                   **method_configs(task, config)},
        "notes": raw["notes"],
        **({"left_out_units": raw["left_out_units"]} if raw.get("left_out_units") else {}),
        "slices_encoded": raw["slices_encoded"],
        "timings": {**raw["timings"], "total_seconds": round(total_seconds, 1)},
        "rows": rows,
        "headline": headline(task, rows),
        "runs": {key: raw.get(key, []) for key in ("fewshot", "unet_fewshot", "student_fewshot", "prompted",
                                                   "supervised")},
    }


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _cell(entry: dict | None, key: str, digits: int = 3) -> str:
    if not entry:
        return "–"
    text = _fmt(entry.get(key), digits)
    spread = entry.get(f"{key}_spread")
    if spread is not None and math.isfinite(spread) and text != "–":
        text += f" ± {spread:.{digits}f}"
    if key == "hd95" and entry.get("empty"):
        text += f" ({entry['empty']}/{entry['scored']} empty)"
    return text


def _signed(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:+.{digits}f}"


def _signed_cell(entry: dict) -> str:
    """A difference with its spread, when there is one."""
    text, spread = _signed(entry.get("dice")), entry.get("dice_spread")
    if spread is not None and math.isfinite(spread) and text != "–":
        text += f" ± {spread:.3f}"
    return text


def _run_dice(run: dict) -> float:
    """A run's mean Dice over every (test item, class) it scored."""
    return _finite_mean([score["dice"] for item in run["items"] for score in item["scores"].values()])


def _labelled_text(row: dict) -> str:
    if row.get("labelled_text"):
        return row["labelled_text"]
    total, positive = row["labelled_slices"], row["positive_slices"]
    if not total:
        return "0"
    empty = total - positive
    return f"{total:g}" + (f" ({positive:g} + {empty:g} empty)" if empty > 0 else "")


def _interaction_cell(row: dict) -> str:
    if row["family"] != "prompted SAM":
        return row["interaction"]
    return f"{row['interaction']} ({row['interactions_per_item']:.0f} per test item)"


def markdown(report: dict[str, Any], files: dict[str, str]) -> str:
    """The Markdown page of a study report (numbers printed from ``report``)."""
    task, rows, unit = report["task"], report["rows"], report["task"]["hd95_unit"]
    classes = [task["classes"][k] for k in sorted(task["classes"], key=int)]
    machine, timing = report["machine"], report["timings"]
    title = f"# Few-shot SAM vs prompted SAM vs full supervision: {report['dataset']}"
    lines = [title + (" (quick)" if report["quick"] else ""), ""]
    lines.append(
        f"{report['date']}, {machine['cpu']} ({machine['cores']} cores), model `{report['model']['name']}` "
        f"(weights {report['model']['weights_id'][:12]}). `{report['command']}`: {timing['total_seconds'] / 60:.1f} min "
        f"in all ({report['slices_encoded']} slices encoded, {timing['embed_seconds'] / 60:.1f} min; the rest came "
        f"from the embedding cache). Load average (1 min) {report['load_average']['start']:.1f} at the start, "
        f"{report['load_average']['end']:.1f} at the end.")
    lines += ["", *[f"- {note}" for note in task["notes"] + report["notes"]]]
    config = report["config"]
    lines.append(
        f"- Few-shot: `DecoderConfig`, `TrainConfig` and `InferenceConfig` defaults ({config['fewshot_steps']} steps); "
        f"{config['seeds']} seed(s) per count (which cases and slices; ± is the standard deviation over seeds). "
        "Each draw adds one slice without any class per drawn volume where there is one (counted in the labels). "
        "Prompted SAM: points and boxes simulated from the ground truth on every test slice and class present "
        "there (± over test items); it is told which classes are on each slice, the few-shot decoder is not.")
    if report["rows"] and any(r["family"] == "supervised" for r in rows):
        lines.append(
            f"- Full supervision: the same decoder trained on every pool slice ({config['full_steps']} steps, no "
            f"augmented copies) and a 2D U-Net from scratch on the same slices ({config['unet']['steps']} steps, "
            f"features {tuple(config['unet']['features'])})" + (
                "; the student that decoder teaches, as each few-shot draw's decoder does (seed 0): the default "
                "method's full-supervision path" if _row(rows, FULL_STUDENT) else "") + ".")
    if any(r["family"] == FROM_SCRATCH for r in rows):
        lines.append(
            f"- U-Net from scratch, N slices: the same 2D U-Net ({config['unet']['steps']} steps, features "
            f"{tuple(config['unet']['features'])}) trained on exactly the labelled slices of each few-shot draw (its "
            "empty slices included), with the draw's seed; ± over seeds. Few-shot minus this U-Net is what SAM's "
            "prior adds over training from scratch on the same labels.")
    if any(r["family"] == STUDENT for r in rows):
        unlabelled, student = len(report["task"].get("unlabelled", [])), config.get("student") or {}
        lines.append(
            "- Student, N slices: each few-shot draw's decoder teaches a 2D U-Net (`fewsam teach`, `StudentConfig` "
            "defaults, the same U-Net config, the draw's seed) on every slice of the draw's support volumes: the "
            "labelled slices as labelled, the others as the decoder averaged with a U-Net on the labelled slices "
            "labels them; ± over seeds." if not unlabelled else
            f"- Student, N slices: each few-shot draw's decoder teaches as `fewsam teach -i` does "
            f"(`StudentConfig.cohort()`, the same U-Net config, the draw's seed): {student.get('rounds')} rounds of "
            f"students ({student.get('student_steps')} steps each), the first on every slice of the draw's support "
            f"volumes, the second also on every slice of {unlabelled} unlabelled volumes labelled by the first; then "
            f"one more student along each other plane that suits (planes {student.get('planes')!r}), the students "
            f"fused ({student.get('fusion')}); ± over seeds.")
    if report["model"]["name"] == "litemedsam":
        lines.append("- LiteMedSAM, like MedSAM, was trained with box prompts; clicks are outside its training, so the "
                     "point rows understate SAM with clicks. The paper's point baseline is SAM ViT: "
                     "`--model vit_b --checkpoint sam_vit_b_01ec64.pth`.")
    lines.append("- Scores per class over the test items that show the class; HD95 in "
                 f"{unit}, averaged where both masks are non-empty (\"k/n empty\": predictions that missed the class).")

    result = report["headline"]
    if result["fewshot"]:
        lines += ["", "## The claims, measured", ""]
        for arm in result["fewshot"]:
            parts = [f"**{arm['method']}** ({arm['labelled_slices']:g} labelled): Dice {_fmt(arm['dice'])}",
                     f"IoU {_fmt(arm['iou'])}"]
            if "iou_ratio_vs_one_point" in arm:
                parts.append(f"IoU / SAM 1 point IoU ({_fmt(arm['one_point_iou'])}) = "
                             f"{arm['iou_ratio_vs_one_point']:.2f} (paper: ~1.5)")
            if "iou_ratio_vs_best_points" in arm:
                parts.append(f"IoU / {arm['best_points']} IoU ({_fmt(arm['best_points_iou'])}) = "
                             f"{arm['iou_ratio_vs_best_points']:.2f}")
            if "dice_minus_full_decoder" in arm:
                parts.append(f"Dice minus fully supervised decoder = {arm['dice_minus_full_decoder']:+.3f} with "
                             f"{arm['label_ratio_full_decoder']:.1f}x fewer labelled slices")
            if "dice_minus_unet" in arm:
                parts.append(f"minus U-Net on all pool slices = {arm['dice_minus_unet']:+.3f}")
            if "dice_minus_unet_same_count" in arm:
                same = {"dice": arm["dice_minus_unet_same_count"],
                        "dice_spread": arm["dice_minus_unet_same_count_spread"]}
                parts.append(f"few-shot minus U-Net from scratch on the same slices "
                             f"(Dice {_fmt(arm['unet_same_count_dice'])}) = {_signed_cell(same)}")
            lines.append("- " + "; ".join(parts) + ".")
        if "same_count" in result:
            same = result["same_count"]
            lines.append(f"- SAM's prior over training from scratch: the few-shot decoder beats the U-Net trained on "
                         f"the same slices at {same['fewshot_ahead']} of {same['counts']} counts (Dice).")
        if "student_same_count" in result:
            same = result["student_same_count"]
            lines.append(f"- The student the decoder taught beats the U-Net trained on the same slices at "
                         f"{same['student_ahead']} of {same['counts']} counts (Dice).")
        if "full_supervision" in result:
            full = result["full_supervision"]
            lines.append(f"- Full supervision, the default method's path (the fully supervised decoder's student): "
                         f"Dice {_fmt(full['student_dice'])} against the U-Net from scratch on the same slices' "
                         f"{_fmt(full['unet_dice'])} ({full['difference']:+.3f}).")
        if result["losses"]:
            lines.append(f"- Where few-shot loses (best arm, {result['best']}, per class, Dice):")
            lines += [f"  - {loss['method']}, {loss['class']}: {_fmt(loss['dice'])} vs {_fmt(loss['fewshot_dice'])} "
                      f"({loss['difference']:+.3f})" for loss in result["losses"]]
        else:
            lines.append(f"- The best few-shot arm ({result['best']}) is not beaten in Dice on any class.")

    lines += ["", "## Mean over classes", "",
              f"| method | labelled slices | interaction | Dice | IoU | HD95 ({unit}) |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {_labelled_text(r)} | {_interaction_cell(r)} | {_cell(r['mean'], 'dice')} | "
                     f"{_cell(r['mean'], 'iou')} | {_cell(r['mean'], 'hd95', 2)} |")
    paired = [r for r in rows if "minus_unet_same_count" in r]
    if paired:
        lines += ["", "## Few-shot minus U-Net from scratch at the same count", "",
                  "Dice, both trained on the same labelled slices (± over seeds, of the seed-paired differences).", "",
                  "| method | labelled slices | its Dice | U-Net Dice | minus U-Net | "
                  + " | ".join(classes) + " |", "|---|---|---|---|---|" + "---|" * len(classes)]
        for r in paired:
            same = r["minus_unet_same_count"]
            unet = _row(rows, same["method"])
            lines.append(f"| {r['method']} | {_labelled_text(r)} | {_cell(r['mean'], 'dice')} | "
                         f"{_cell(unet['mean'] if unet else None, 'dice')} | {_signed_cell(same)} | "
                         + " | ".join(_signed(same["classes"].get(name)) for name in classes) + " |")
    lines += ["", "## Per class", "",
              f"| method | class | Dice | IoU | HD95 ({unit}) | labelled slices | interaction |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        for name in classes:
            entry = r["classes"].get(name)
            if entry is None:
                continue
            lines.append(f"| {r['method']} | {name} | {_cell(entry, 'dice')} | {_cell(entry, 'iou')} | "
                         f"{_cell(entry, 'hd95', 2)} | {_labelled_text(r)} | {_interaction_cell(r)} |")
    if any(r["family"] == "external" for r in rows):
        lines += ["", *[f"{r['method']}: {r['source']}." for r in rows if r["family"] == "external"]]
    runs = report["runs"]["fewshot"]
    beside = [(name, {(run["shots"], run["seed"], run["fold"]): run for run in report["runs"].get(key) or ()})
              for name, key in (("U-Net", "unet_fewshot"), ("student", "student_fewshot"))]
    beside = [(name, found) for name, found in beside if found]
    if runs:
        header = "| labelled slices | seed | fold | support (case: slices) | train s | segment s | mean Dice |"
        lines += ["", "## Few-shot draws", "",
                  header + "".join(f" {name} train s | {name} mean Dice |" for name, _ in beside),
                  "|---|---|---|---|---|---|---|" + "---|---|" * len(beside)]
        for run in runs:
            support = "; ".join(f"{s['case']}: {', '.join(map(str, s['slices']))}" for s in run["support"])
            line = (f"| {run['labelled_slices']} | {run['seed']} | {run['fold']} | {support} | "
                    f"{run['train_seconds']:.0f} | {run['segment_seconds']:.0f} | {_fmt(_run_dice(run))} |")
            for _, found in beside:
                other = found.get((run["shots"], run["seed"], run["fold"]))
                line += f" {other['train_seconds']:.0f} | {_fmt(_run_dice(other))} |" if other else " – | – |"
            lines.append(line)
    lines += ["", f"![Dice vs labelled slices]({files['plot']})", "", f"![Example overlays]({files['overlays']})", ""]
    return "\n".join(lines)


def plot_dice(report: dict[str, Any], path: Path) -> None:
    """Dice vs labelled slices per class: few-shot and the U-Net from scratch on the same slices (mean ±
    spread over seeds), the references as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    rows = report["rows"]
    classes = [report["task"]["classes"][k] for k in sorted(report["task"]["classes"], key=int)]
    panels = classes + (["mean"] if len(classes) > 1 else [])
    cols = min(len(panels), 4)
    grid_rows = -(-len(panels) // cols)
    height = 3.6 * grid_rows + 1.0  # inches, with room for the legend
    fig, axes = plt.subplots(grid_rows, cols, figsize=(max(4.2 * cols, 8.0), height), squeeze=False)
    curves = (("few-shot", "tab:blue", "o", "few-shot decoder"),
              (FROM_SCRATCH, "tab:brown", "s", "U-Net from scratch, same slices"),
              (STUDENT, "tab:olive", "^", "student taught by the decoder"))
    styles = {ONE_POINT: ("tab:orange", ":"), "SAM 5 points + neg": ("tab:red", ":"), "SAM box": ("tab:purple", ":"),
              FULL_DECODER: ("tab:green", "--"), UNET: ("tab:brown", "--"), FULL_STUDENT: ("tab:olive", "--")}
    for ax, name in zip(axes.flat, panels):
        def pick(r: dict, name: str = name) -> dict | None:
            return r["mean"] if name == "mean" else r["classes"].get(name)

        xs = []
        for family, color, marker, label in curves:
            points = [(r["labelled_slices"], pick(r)) for r in rows if r["family"] == family and pick(r)]
            if points:
                ax.errorbar([x for x, _ in points], [e["dice"] for _, e in points], marker=marker, capsize=3,
                            yerr=[e.get("dice_spread") or 0.0 for _, e in points], color=color, label=label)
                xs += [x for x, _ in points]
        for r in rows:
            entry = pick(r)
            if r["family"] in ("few-shot", FROM_SCRATCH, STUDENT) or not entry or entry.get("dice") is None:
                continue
            if r["method"] in styles:
                color, style = styles[r["method"]]
            elif r["family"] == "external":
                color, style = "black", "-."
            else:
                continue
            label = r["method"] + (" (every slice)" if r["family"] == "prompted SAM" else "")
            ax.axhline(entry["dice"], color=color, linestyle=style, label=label)
            if r["family"] == "supervised":
                ax.plot([r["labelled_slices"]], [entry["dice"]], marker="s", color=color)
        ax.set_xscale("log")
        ticks = sorted({round(x) for x in xs} | {round(r["labelled_slices"]) for r in rows
                                                 if r["family"] == "supervised"})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(0, 1)
        ax.set_title(name)
        ax.set_xlabel("labelled slices")
        ax.set_ylabel("Dice")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    ncol = min(len(labels), 2 if cols == 1 else 4)
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8)
    legend_inches = 0.2 * -(-len(labels) // ncol) + 0.15
    fig.suptitle(f"{report['dataset']}: Dice vs labelled slices" + (" (quick)" if report["quick"] else ""))
    fig.tight_layout(rect=(0, legend_inches / height, 1, 0.96))
    with write_file(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def plot_overlays(report: dict[str, Any], example: dict[str, Any], path: Path) -> None:
    """The example slice with the ground truth and every method's labels overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    ids = sorted(int(k) for k in report["task"]["classes"])
    colors = plt.get_cmap("tab10")(np.arange(len(ids)) % 10)
    cmap = ListedColormap(colors)
    panels = [("ground truth", example["truth"]), *example["predictions"].items()]
    cols = min(len(panels), 5)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    for ax, (name, labels) in zip(axes.flat, panels):
        ax.imshow(example["image"], cmap="gray", vmin=0, vmax=1)
        index = np.searchsorted(ids, labels).astype(float)
        index[~np.isin(labels, ids)] = np.nan
        ax.imshow(np.ma.masked_invalid(index), cmap=cmap, vmin=-0.5, vmax=len(ids) - 0.5, alpha=0.45,
                  interpolation="nearest")
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    names = [report["task"]["classes"][str(i)] for i in ids]
    fig.legend(handles=[Patch(color=c, alpha=0.6, label=n) for c, n in zip(colors, names)], loc="lower center",
               ncol=min(len(names), 7), fontsize=8)
    fig.suptitle(f"{report['dataset']}: {example['case']}, slice {example['volume_slice']}", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    with write_file(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def file_names(dataset: str, quick: bool) -> dict[str, str]:
    stem = f"reproduce_{dataset}" + ("_quick" if quick else "")
    return {"markdown": f"{stem}.md", "json": f"{stem}.json", "plot": f"{stem}_dice_vs_shots.png",
            "overlays": f"{stem}_overlays.png"}


def check_report_files(out: str | os.PathLike, dataset: str, quick: bool, overwrite: bool = False) -> dict[str, Path]:
    """The report's paths in folder ``out``, checked before the study runs: ``out`` must be a folder (or
    not exist yet) and existing report files are replaced only with ``overwrite`` (OutputError)."""
    out = Path(out)
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputExistsError(f"{out}: {existing} is a file; --out must be a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{out}: folder {existing} is not writable; choose another --out")
    paths = {key: out / name for key, name in file_names(dataset, quick).items()}
    if out.is_dir():
        for path in paths.values():
            check_output_file(path, overwrite=overwrite)
    return paths


def write_report(report: dict[str, Any], example: dict[str, Any], out: str | os.PathLike,
                 overwrite: bool = False) -> dict[str, Path]:
    """Write the JSON, the Markdown and both plots into ``out``; returns their paths. The Markdown is
    rendered from the JSON as written (non-finite numbers are null there). Existing report files are
    replaced only with ``overwrite=True``; other files in ``out`` are never touched."""
    paths = check_report_files(out, report["dataset"], report["quick"], overwrite)
    Path(out).mkdir(parents=True, exist_ok=True)
    names = file_names(report["dataset"], report["quick"])
    text = to_json(report)
    stored = json.loads(text)
    write_text(paths["json"], text + "\n")
    write_text(paths["markdown"], markdown(stored, names))
    plot_dice(stored, paths["plot"])
    plot_overlays(stored, example, paths["overlays"])
    return paths
