"""The comparison of the paper, run on a :class:`~bench.reproduce.datasets.Task`.

Methods, all scored on the same test slices of every fold (per class, only on test items whose
ground truth contains the class):

* **few-shot**: :class:`FewShotSegmenter` with its default settings, trained on N labelled slices
  (the sweep) drawn from the fold's pool, ``seeds`` draws each. Spread: standard deviation over seeds.
* **prompted SAM**: the same frozen model prompted on every test slice and class present there
  (:data:`bench.baselines.PROMPT_SUITE`: 1/3/5 points with and without negatives, a tight and a
  ±10 % box), from the same cached embeddings. Spread: over test items.
* **U-Net from scratch, same slices** (``unet_per_count``): the 2D U-Net (``StudyConfig.unet``) trained
  from scratch on exactly the labelled slices of every few-shot run (the empty ones included), with the
  run's seed: what SAM's prior adds over training from scratch on the same labels. Spread: over seeds.
* **student** (``StudyConfig.student``, off by default): every few-shot run's decoder teaches a U-Net student
  (:func:`fewsam_jax.fewshot.train_student`, ``fewsam teach``: :class:`StudentConfig`'s defaults with the
  study's U-Net config and the run's seed) on every slice of the run's support volumes, scored on the same test
  slices; with the task's unlabelled volumes (``Task.unlabelled``, ``--unlabelled N``) on those too, as
  ``fewsam teach -i`` teaches (:meth:`StudentConfig.cohort`). Not run for ``cross_image`` tasks, where every
  support image is labelled whole (nothing to teach).
* **fully supervised decoder**: the few-shot decoder trained on every slice of the pool (no augmented
  copies; ``full_steps`` steps), and the **2D U-Net** from scratch on the same slices (seed 0); with
  ``StudyConfig.student``, also the **student** that decoder teaches (seed 0, as a few-shot run's decoder
  teaches): the default method's full-supervision path. Not run for ``cross_image`` tasks, whose pool is two or
  three images.

Every U-Net of a fold pads its slices onto the canvas of the fold's largest pool slice.

A drawn support set: for N slices, min(N, pool cases) cases are drawn, the N slices split evenly
over them, each case's share taken one per equal part of its slices with structure (a random slice in
each part), redrawn until every class appears; plus one slice without any class from each drawn case
that has one (a negative example, counted in the labelled slices).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.baselines import PROMPT_SUITE, PromptSpec, UNetConfig, predict_unet, segment_prompted, train_unet
from bench.reproduce.datasets import Case, Fold, Task
from bench.reproduce.runs import RunStore
from fewsam_jax import metrics
from fewsam_jax.cache import embed_volume
from fewsam_jax.fewshot import (
    Collection, DecoderConfig, FewShotSegmenter, InferenceConfig, StudentConfig, StudentSegmenter, SupportItem,
    TrainConfig, train_student)
from fewsam_jax.io import get_slices, save_labels
from fewsam_jax.modeling.sam import Sam
from fewsam_jax.preprocess import Intensity

METRICS = ("dice", "iou", "hd95")


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """Sizes of the study. ``fewshot_steps`` None keeps :class:`TrainConfig`'s default; ``shots``
    None runs the task's sweep; ``unet`` configures every U-Net (per count, on the whole pool, and the
    student's); ``unet_per_count`` False skips the U-Net on the slices of each few-shot run; ``student`` True
    teaches a student with each few-shot run's decoder (module docstring)."""

    seeds: int = 3
    shots: tuple[int, ...] | None = None
    fewshot_steps: int | None = None
    full_steps: int = 600
    unet: UNetConfig = dataclasses.field(default_factory=UNetConfig)
    prompts: tuple[PromptSpec, ...] = PROMPT_SUITE
    prompt_seed: int = 0
    unet_per_count: bool = True
    student: bool = False

    def __post_init__(self):
        if self.seeds < 1:
            raise ValueError(f"seeds: expected at least 1, got {self.seeds}")
        if self.shots is not None and (not self.shots or min(self.shots) < 1 or len(set(self.shots)) < len(self.shots)):
            raise ValueError(f"shots: expected distinct positive counts, got {self.shots}")

    @classmethod
    def quick(cls) -> StudyConfig:
        """One seed, the few-shot decoder trained as the defaults train it (a shorter budget scores the default
        architecture below what a user gets: bench/RESULTS.md, tenth round), a short reference training on the
        whole pool and the tiny U-Net."""
        return cls(seeds=1, fewshot_steps=None, full_steps=100, unet=UNetConfig.tiny(steps=300))


Log = Callable[[str], None]


def student_config(task: Task, config: StudyConfig, seed: int = 0) -> StudentConfig:
    """The student a few-shot run teaches: ``fewsam teach``'s (:meth:`StudentConfig.cohort` when the task has
    unlabelled volumes, as with ``-i``, else :class:`StudentConfig`'s defaults) with the study's U-Net and ``seed``."""
    base = StudentConfig.cohort(config.unet) if task.unlabelled else StudentConfig(unet=config.unet)
    return base.replace(seed=seed)


def method_configs(task: Task, config: StudyConfig) -> dict[str, Any]:
    """The configs the study's methods run with (JSON-able): the few-shot decoder's defaults and the student's."""
    return {"fewshot": {"decoder": dataclasses.asdict(DecoderConfig()), "training": dataclasses.asdict(TrainConfig()),
                        "inference": dataclasses.asdict(InferenceConfig())},
            "student": dataclasses.asdict(student_config(task, config)) if config.student else None}


def _present(labels: np.ndarray, class_ids: tuple[int, ...]) -> np.ndarray:
    """(N,) bool: slices of (N, H, W) that contain any of ``class_ids``."""
    return np.isin(labels, class_ids).any(axis=(1, 2))


def draw_support(fold: Fold, class_ids: tuple[int, ...], axis: int, shots: int, seed: int,
                 attempts: int = 500) -> list[tuple[int, tuple[int, ...]]] | None:
    """A support set of ``shots`` slices with structure (+ one empty slice per drawn case where there is
    one): ``[(pool case index, sorted slices)]``, or None when no draw covers every class.

    Seeds draw in turn (``default_rng([s, shots])`` for s = 0..seed) and a seed avoids the draws of the
    seeds before it while another covering draw can be found, so small pools still give distinct draws.
    """
    label_slices = [case.label_slices(axis) for case in fold.pool]
    positives, empties = [], []
    for labels, allowed in zip(label_slices, fold.pool_slices):
        allowed = np.asarray(allowed)
        has = _present(labels[allowed], class_ids)
        positives.append(allowed[has])
        empties.append(allowed[~has])
    usable = [i for i, p in enumerate(positives) if len(p)]
    if sum(len(positives[i]) for i in usable) < shots:
        return None

    def candidate(rng: np.random.Generator) -> dict[int, list[int]] | None:
        chosen = sorted(rng.choice(usable, min(shots, len(usable)), replace=False).tolist())
        counts = dict.fromkeys(chosen, 0)
        for _ in range(shots):  # round robin over the cases that still have slices to give
            open_cases = [i for i in chosen if counts[i] < len(positives[i])]
            if not open_cases:
                return None
            counts[min(open_cases, key=lambda i: counts[i])] += 1
        picks = {i: sorted(int(rng.choice(part)) for part in np.array_split(positives[i], counts[i]))
                 for i in chosen if counts[i]}
        covered = set()
        for i, slices in picks.items():
            covered |= set(np.unique(label_slices[i][slices]).tolist())
        return picks if set(class_ids) <= covered else None

    taken: list[dict[int, list[int]]] = []
    for s in range(seed + 1):
        rng = np.random.default_rng([s, shots])
        first = None
        for _ in range(attempts):
            picks = candidate(rng)
            if picks is None:
                continue
            first = first or picks
            if picks not in taken:
                break
        else:
            picks = first
        if picks is None:
            return None
        taken.append(picks)
    return [(i, tuple(sorted(slices + ([int(rng.choice(empties[i]))] if len(empties[i]) else []))))
            for i, slices in taken[-1].items()]


def _slice_spacing(case: Case, axis: int, step: int) -> tuple[float, float, float]:
    """Spacing (mm) of a (N, H, W) stack of every ``step``-th slice along ``axis``."""
    a, b = [d for d in range(3) if d != axis]
    spacing = case.volume.spacing
    return (spacing[axis] * step, spacing[b], spacing[a])


def score_item(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, float, float],
               classes: dict[int, str]) -> dict[str, dict[str, float]]:
    """Dice, IoU, HD95 per class present in ``truth``; (N, H, W) slice stacks, scored in 3D (in 2D when
    N == 1). ``spacing``: (between slices, rows, columns)."""
    present = {i: n for i, n in classes.items() if (truth == i).any()}
    if not present:
        return {}
    if pred.shape[0] == 1:
        pred, truth, spacing = pred[0], truth[0], spacing[1:]
    result = metrics.evaluate(pred, truth, spacing, present, per_slice_axis=None)
    return {name: {key: float(result[name][key]) for key in METRICS} for name in present.values()}


@dataclasses.dataclass
class _Context:
    task: Task
    sam: Sam
    config: StudyConfig
    cache: Any
    scratch: Path
    log: Log
    example: dict[str, Any] = dataclasses.field(default_factory=dict)
    normalised: dict[Case, np.ndarray] = dataclasses.field(default_factory=dict)
    store: RunStore | None = None
    kept: list[str] = dataclasses.field(default_factory=list)
    kept_only: bool = False
    left_out: list[str] = dataclasses.field(default_factory=list)

    def left_out_now(self, key: str) -> bool:
        """True (and ``key`` recorded in :attr:`left_out`) when the study renders from kept units only
        (:attr:`kept_only`) and its store lacks the unit ``key``, which is then not run."""
        if self.kept_only and (self.store is None or key not in self.store):
            self.left_out.append(key)
            return True
        return False

    def unit(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()``'s result for the unit ``key`` of the study: taken from :attr:`store` when it holds the unit
        (with the overlay predictions the unit kept), else computed and, with a store, written there at once. With
        a store the result is returned as the store gives it back (JSON values) whether kept or computed now, so a
        resumed study reports exactly what an uninterrupted one does."""
        if self.store is not None and key in self.store:
            record = self.store.get(key)
            self.example["predictions"].update({m: np.asarray(p) for m, p in record["overlays"].items()})
            self.kept.append(key)
            self.log(f"{key}: kept from {self.store.path.name}")
            return record["result"]
        before = dict(self.example["predictions"])
        result = compute()
        overlays = {m: p for m, p in self.example["predictions"].items() if before.get(m) is not p}
        if self.store is None:
            return result
        return self.store.put(key, {"result": result, "overlays": overlays})["result"]

    @property
    def class_ids(self) -> tuple[int, ...]:
        return tuple(sorted(self.task.classes))

    def labels_file(self, case: Case) -> Path:
        """The case's task labels as NIfTI on its source grid (written once per study)."""
        path = self.scratch / f"{case.name}_labels.nii.gz"
        if not path.exists():
            save_labels(case.labels, case.volume, path)
        return path

    def image_slices(self, case: Case) -> np.ndarray:
        """(N, H, W) slices of the case along the task's axis, in [0, 1] by the task's intensity
        (normalised once per study)."""
        if case not in self.normalised:
            intensity = Intensity.parse(self.task.intensity)
            self.normalised[case] = get_slices(intensity.apply(case.volume.array), self.task.axis)
        return self.normalised[case]

    def support_counts(self, fold: Fold, support: list[tuple[int, tuple[int, ...]]]) -> tuple[int, int]:
        """(labelled slices, slices showing a class) of ``[(pool case index, slices)]``."""
        positives = sum(int(_present(fold.pool[i].label_slices(self.task.axis)[list(s)], self.class_ids).sum())
                        for i, s in support)
        return sum(len(s) for _, s in support), positives

    def test_truth(self, fold: Fold, index: int) -> np.ndarray:
        return fold.test[index].label_slices(self.task.axis)[list(fold.test_slices[index])]

    def spacing(self, fold: Fold, index: int) -> tuple[float, float, float]:
        slices = fold.test_slices[index]
        step = slices[1] - slices[0] if len(slices) > 1 else 1
        return _slice_spacing(fold.test[index], self.task.axis, step)

    def keep_example(self, method: str | None, fold_index: int, item: int, pred: np.ndarray) -> None:
        """Keep the prediction on the overlay slice (first fold, first test item) under ``method``."""
        if method and fold_index == 0 and item == 0:
            self.example["predictions"][method] = pred[self.example["slice"]]

    def score_fold(self, method: str | None, fold_index: int, predict: Callable[[int], np.ndarray]) -> list[dict]:
        """Scores of ``predict(test item index) -> (n, H, W)`` on every test item of a fold; the overlay
        keeps the prediction under ``method`` (None: not kept)."""
        fold = self.task.folds[fold_index]
        items = []
        for index, case in enumerate(fold.test):
            pred = predict(index)
            self.keep_example(method, fold_index, index, pred)
            items.append({"fold": fold.name, "case": case.name,
                          "scores": score_item(pred, self.test_truth(fold, index), self.spacing(fold, index),
                                               self.task.classes)})
        return items


def _support_collection(ctx: _Context, fold: Fold, support: list[tuple[int, tuple[int, ...]]]) -> Collection:
    items = tuple(SupportItem(fold.pool[i].image, ctx.labels_file(fold.pool[i]), slices) for i, slices in support)
    return Collection(classes=dict(ctx.task.classes), axis=ctx.task.axis, support=items)


def _segment_tests(ctx: _Context, segmenter: FewShotSegmenter | StudentSegmenter,
                   fold: Fold) -> Callable[[int], np.ndarray]:
    """``predict(test item index) -> (n, H, W)`` labels of a decoder or student on the item's test slices."""
    def predict(index: int) -> np.ndarray:
        labels = segmenter.segment(fold.test[index].volume, cache=ctx.cache, progress=False)
        return get_slices(labels, ctx.task.axis)[list(fold.test_slices[index])]
    return predict


def run_fewshot(ctx: _Context, shots_list: tuple[int, ...]) -> tuple[list[dict], list[dict], list[str]]:
    """Every (shots, seed, fold) run; with ``StudyConfig.student`` the student each run's decoder taught (one
    record per run, same fields); notes on shot counts a fold cannot supply."""
    runs, students, notes = [], [], []
    base = TrainConfig()
    teach = ctx.config.student and ctx.task.protocol != "cross_image"
    for shots in shots_list:
        for seed in range(ctx.config.seeds):
            for fold_index, fold in enumerate(ctx.task.folds):
                support = draw_support(fold, ctx.class_ids, ctx.task.axis, shots, seed)
                if support is None:
                    notes.append(f"{shots} labelled slices: fold {fold.name} cannot supply a draw covering every "
                                 "class; skipped")
                    continue
                key = _unit_key("few-shot", shots, seed, fold.name)
                if ctx.left_out_now(key):
                    continue
                done = ctx.unit(key, lambda: _fewshot_run(ctx, fold_index, support, shots, seed, base, teach))
                runs.append(done["run"])
                if done["student"] is not None:
                    students.append(done["student"])
    if ctx.config.student and not teach:
        notes.append("No student: every support image of a cross-image task is labelled whole, so a student would "
                     "be the U-Net from scratch on the same images.")
    return runs, students, sorted(set(notes))


def _fewshot_run(ctx: _Context, fold_index: int, support: list[tuple[int, tuple[int, ...]]], shots: int, seed: int,
                 base: TrainConfig, teach: bool) -> dict[str, dict | None]:
    """One few-shot run (the decoder trained on ``support`` of fold ``fold_index`` with ``seed``, scored on the fold's
    test slices) and, with ``teach``, the student it taught: ``{"run": record, "student": record or None}``."""
    fold = ctx.task.folds[fold_index]
    training = base.replace(seed=seed, **({"steps": ctx.config.fewshot_steps} if ctx.config.fewshot_steps else {}))
    collection = _support_collection(ctx, fold, support)
    started = time.perf_counter()
    segmenter = FewShotSegmenter.train(collection, sam=ctx.sam, training=training,
                                       intensity=ctx.task.intensity, cache=ctx.cache, progress=False)
    trained = time.perf_counter()
    method = f"few-shot {shots}"
    items = ctx.score_fold(method if seed == 0 else None, fold_index, _segment_tests(ctx, segmenter, fold))
    labelled, positives = ctx.support_counts(fold, support)
    run = {
        "method": method, "shots": shots, "seed": seed, "fold": fold.name,
        "support": [{"case": fold.pool[i].name, "slices": list(s)} for i, s in support],
        "labelled_slices": labelled, "positive_slices": positives,
        "steps": training.steps, "train_seconds": round(trained - started, 1),
        "segment_seconds": round(time.perf_counter() - trained, 1), "items": items,
    }
    ctx.log(f"few-shot {shots} slices, seed {seed}, fold {fold.name}: trained in "
            f"{trained - started:.0f} s, {len(items)} test items segmented")
    return {"run": run, "student": _teach(ctx, fold_index, segmenter, collection, run) if teach else None}


def _teach(ctx: _Context, fold_index: int, segmenter: FewShotSegmenter, collection: Collection,
           run: dict) -> dict:
    """The student ``segmenter`` (few-shot ``run``'s decoder, trained on ``collection``) teaches, scored on the
    fold's test slices: a record with ``run``'s fields."""
    fold, shots, seed = ctx.task.folds[fold_index], run["shots"], run["seed"]
    unlabelled = list(ctx.task.unlabelled)
    config = student_config(ctx.task, ctx.config, seed)
    started = time.perf_counter()
    student = train_student(segmenter, collection, unlabelled, config=config, cache=ctx.cache, progress=False)
    taught = time.perf_counter()

    method = f"student {shots}"
    items = ctx.score_fold(method if seed == 0 else None, fold_index, _segment_tests(ctx, student, fold))
    ctx.log(f"student, {shots} slices, seed {seed}, fold {fold.name}: taught on {student.info['training_slices']} "
            f"slices in {taught - started:.0f} s")
    return {**{key: run[key] for key in ("shots", "seed", "fold", "support", "labelled_slices", "positive_slices")},
            "method": method, "steps": config.student_unet_config.steps, "training_slices":
            student.info["training_slices"], "unlabelled_volumes": len(unlabelled),
            "train_seconds": round(taught - started, 1),
            "segment_seconds": round(time.perf_counter() - taught, 1), "items": items}


def run_prompted(ctx: _Context) -> list[dict]:
    """Every prompt spec on every test item, from the cached embeddings."""
    runs = {spec.name: {"method": spec.name, "spec": dataclasses.asdict(spec), "items": [], "interactions": 0,
                        "seconds": 0.0} for spec in ctx.config.prompts}
    for fold_index, fold in enumerate(ctx.task.folds):
        for index, case in enumerate(fold.test):
            slices = list(fold.test_slices[index])
            entry = embed_volume(case.volume, ctx.sam, axis=ctx.task.axis, intensity=ctx.task.intensity,
                                 cache=ctx.cache, slices=slices, progress=False)
            embeddings = entry.load(slices)
            truth = ctx.test_truth(fold, index)
            prompted = sum(int((truth == c).any(axis=(1, 2)).sum()) for c in ctx.class_ids)
            for spec in ctx.config.prompts:
                started = time.perf_counter()
                pred = segment_prompted(ctx.sam, embeddings, entry.slice_shape, truth, ctx.class_ids, spec,
                                        seed=ctx.config.prompt_seed)
                run = runs[spec.name]
                run["seconds"] += time.perf_counter() - started
                run["interactions"] += prompted * spec.interactions_per_slice
                ctx.keep_example(spec.name, fold_index, index, pred)
                run["items"].append({"fold": fold.name, "case": case.name,
                                     "scores": score_item(pred, truth, ctx.spacing(fold, index), ctx.task.classes)})
        ctx.log(f"prompted SAM ({len(ctx.config.prompts)} prompt kinds): fold {fold.name} done")
    for spec in ctx.config.prompts:
        runs[spec.name]["interactions_per_slice"] = spec.interactions_per_slice
        runs[spec.name]["seconds"] = round(runs[spec.name]["seconds"], 1)
    return list(runs.values())


def train_unet_on(ctx: _Context, fold: Fold, support: list[tuple[int, tuple[int, ...]]],
                  seed: int) -> tuple[Callable[[int], np.ndarray], float]:
    """The U-Net (``StudyConfig.unet``) trained from scratch with ``seed`` on ``support``, ``[(pool case
    index, slices)]`` of ``fold``, padded onto the canvas of the fold's largest pool slice.

    Returns ``predict(test item index) -> (n, H, W)`` labels (task class ids) on the item's test
    slices, and the training time in seconds.
    """
    class_ids = ctx.class_ids
    lut = np.zeros(max(class_ids) + 1, np.int32)
    lut[list(class_ids)] = np.arange(1, len(class_ids) + 1)
    inverse = np.asarray((0, *class_ids), np.int32)
    images, labels = [], []
    for i, slices in support:
        images += list(ctx.image_slices(fold.pool[i])[list(slices)])
        labels += list(lut[fold.pool[i].label_slices(ctx.task.axis)[list(slices)]])
    shapes = [ctx.image_slices(case).shape[1:] for case in fold.pool]
    canvas = (max(h for h, _ in shapes), max(w for _, w in shapes))
    started = time.perf_counter()
    model, _ = train_unet(images, labels, len(class_ids) + 1, ctx.config.unet, seed=seed, progress=False,
                          canvas=canvas)
    seconds = time.perf_counter() - started

    def predict(index: int) -> np.ndarray:
        slices = ctx.image_slices(fold.test[index])[list(fold.test_slices[index])]
        return inverse[np.stack(predict_unet(model, list(slices)))]
    return predict, seconds


def run_unet_per_count(ctx: _Context, fewshot_runs: list[dict]) -> list[dict]:
    """The U-Net from scratch on exactly the support slices of every few-shot run (empty slices
    included), with the run's seed; one run record per few-shot run, with the same fields."""
    folds = {fold.name: (index, fold) for index, fold in enumerate(ctx.task.folds)}  # unique: Task checks them
    keys = [_unit_key("U-Net", *_draw(fewshot)) for fewshot in fewshot_runs]
    return [ctx.unit(key, lambda fewshot=fewshot: _unet_run(ctx, *folds[fewshot["fold"]], fewshot))
            for key, fewshot in zip(keys, fewshot_runs) if not ctx.left_out_now(key)]


def _draw(run: dict) -> tuple[int, int, str]:
    """(shots, seed, fold) of a few-shot, U-Net or student run record: the draw it was trained on."""
    return run["shots"], run["seed"], run["fold"]


def _unit_key(kind: str, shots: int, seed: int, fold: str) -> str:
    """The runs-file key of one per-draw unit: ``kind`` "few-shot" (with its student) or "U-Net"."""
    return f"{kind} {shots}, seed {seed}, fold {fold}"


def _unet_run(ctx: _Context, fold_index: int, fold: Fold, fewshot: dict) -> dict:
    """The U-Net from scratch on the support slices of the few-shot run record ``fewshot``, with its seed."""
    pool = {case.name: i for i, case in enumerate(fold.pool)}
    support = [(pool[entry["case"]], tuple(entry["slices"])) for entry in fewshot["support"]]
    shots, seed = fewshot["shots"], fewshot["seed"]
    predict, seconds = train_unet_on(ctx, fold, support, seed)
    started = time.perf_counter()
    method = f"U-Net {shots}"
    items = ctx.score_fold(method if seed == 0 else None, fold_index, predict)
    labelled, positives = ctx.support_counts(fold, support)
    ctx.log(f"U-Net from scratch, {shots} slices, seed {seed}, fold {fold.name}: {labelled} slices, "
            f"trained in {seconds:.0f} s")
    return {
        "method": method, "shots": shots, "seed": seed, "fold": fold.name, "support": fewshot["support"],
        "labelled_slices": labelled, "positive_slices": positives, "steps": ctx.config.unet.steps,
        "train_seconds": round(seconds, 1), "segment_seconds": round(time.perf_counter() - started, 1),
        "items": items,
    }


def run_supervised(ctx: _Context) -> list[dict]:
    """The decoder on every pool slice, the U-Net from scratch on the same slices (seed 0) and, with
    ``StudyConfig.student``, the student that decoder teaches (seed 0)."""
    def record(method: str) -> dict:
        return {"method": method, "items": [], "labelled_slices": 0, "positive_slices": 0, "train_seconds": 0.0}

    decoder_run, unet_run = record("decoder, all pool slices"), record("U-Net, all pool slices")
    student_run = record("student, all pool slices") if ctx.config.student else None
    runs = [r for r in (decoder_run, unet_run, student_run) if r is not None]
    unlabelled = list(ctx.task.unlabelled)
    for fold_index, fold in enumerate(ctx.task.folds):
        support = [(i, tuple(s)) for i, s in enumerate(fold.pool_slices)]
        labelled, positives = ctx.support_counts(fold, support)
        training = TrainConfig(steps=ctx.config.full_steps)  # no support copies (the default)
        collection = _support_collection(ctx, fold, support)
        started = time.perf_counter()
        segmenter = FewShotSegmenter.train(collection, sam=ctx.sam, training=training, intensity=ctx.task.intensity,
                                           cache=ctx.cache, progress=False)
        decoder_run["train_seconds"] += time.perf_counter() - started
        decoder_run["items"] += ctx.score_fold(decoder_run["method"], fold_index, _segment_tests(ctx, segmenter, fold))
        ctx.log(f"fully supervised decoder, fold {fold.name}: {labelled} slices, {training.steps} steps, "
                f"{time.perf_counter() - started:.0f} s")

        started = time.perf_counter()
        predict, seconds = train_unet_on(ctx, fold, support, seed=0)
        unet_run["train_seconds"] += seconds
        unet_run["items"] += ctx.score_fold(unet_run["method"], fold_index, predict)
        ctx.log(f"U-Net, fold {fold.name}: {labelled} slices, {ctx.config.unet.steps} steps, "
                f"{time.perf_counter() - started:.0f} s")

        if student_run is not None:
            config = student_config(ctx.task, ctx.config, seed=0)
            started = time.perf_counter()
            student = train_student(segmenter, collection, unlabelled, config=config, cache=ctx.cache, progress=False)
            student_run["train_seconds"] += time.perf_counter() - started
            student_run["items"] += ctx.score_fold(student_run["method"], fold_index,
                                                   _segment_tests(ctx, student, fold))
            student_run.update(steps=config.student_unet_config.steps, unlabelled_volumes=len(unlabelled),
                               training_slices=student.info["training_slices"])
            ctx.log(f"student of the fully supervised decoder, fold {fold.name}: taught on "
                    f"{student.info['training_slices']} slices in {time.perf_counter() - started:.0f} s")
        for run in runs:
            run["labelled_slices"] += labelled
            run["positive_slices"] += positives
    decoder_run.update(steps=ctx.config.full_steps, augment_copies=0)
    unet_run.update(steps=ctx.config.unet.steps, unet=dataclasses.asdict(ctx.config.unet))
    folds = len(ctx.task.folds)
    for run in runs:  # per trained model: the mean over folds
        run["labelled_slices"] /= folds
        run["positive_slices"] /= folds
        run["train_seconds"] = round(run["train_seconds"] / folds, 1)
    return runs


def _embed_everything(ctx: _Context) -> int:
    """Embed every test slice and every pool slice a method may use (once, through the cache)."""
    computed = 0
    for fold in ctx.task.folds:
        needs = [(c, s) for c, s in zip(fold.test, fold.test_slices)]
        if ctx.task.protocol != "cross_image":
            needs += list(zip(fold.pool, fold.pool_slices))
        for case, slices in needs:
            entry = embed_volume(case.volume, ctx.sam, axis=ctx.task.axis, intensity=ctx.task.intensity,
                                 cache=ctx.cache, slices=list(slices), progress=False)
            computed += len(entry.computed)
    return computed


def _example(task: Task) -> dict[str, Any]:
    """The overlay slice: the first test item's slice with the most labelled pixels."""
    fold = task.folds[0]
    truth = fold.test[0].label_slices(task.axis)[list(fold.test_slices[0])]
    index = int(np.isin(truth, list(task.classes)).sum(axis=(1, 2)).argmax())
    image = get_slices(Intensity.parse(task.intensity).apply(fold.test[0].volume.array), task.axis)
    return {"case": fold.test[0].name, "slice": index, "volume_slice": int(fold.test_slices[0][index]),
            "image": image[fold.test_slices[0][index]], "truth": truth[index], "predictions": {}}


def run_methods(task: Task, sam: Sam, config: StudyConfig, cache: Any = None, log: Log = print,
                store: RunStore | None = None, kept_only: bool = False) -> dict[str, Any]:
    """Run every method of the study on ``task``; raw runs (per-item scores; ``unet_fewshot``: the U-Net
    on each few-shot run's slices, empty when ``config.unet_per_count`` is off; ``student_fewshot``: the student
    each run's decoder taught, empty without ``config.student``), timings (the students' inside
    ``fewshot_seconds``) and the overlay example. With ``store`` every finished unit is kept there and the units
    it already holds are not run again (:mod:`bench.reproduce.runs`; the timings then cover this run's units only,
    ``kept_units`` names the others). With ``kept_only`` nothing is trained or embedded: the few-shot and per-count
    U-Net units the store lacks are left out (named in the notes and ``left_out_units``), and a missing prompted or
    fully supervised unit is a ValueError. Aggregation and files: :mod:`bench.reproduce.report`."""
    shots = tuple(config.shots or task.shots)
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="fewsam-reproduce-") as scratch:
        ctx = _Context(task, sam, config, cache, Path(scratch), log, _example(task), store=store, kept_only=kept_only)
        if kept_only:
            baselines = ["prompted SAM"] + (["fully supervised"] if task.protocol != "cross_image" else [])
            missing = [key for key in baselines if store is None or key not in store]
            if missing:
                raise ValueError(f"kept units only: the runs file lacks {', '.join(missing)}; run the study without "
                                 "--kept-only first")
        started = time.perf_counter()
        computed = 0 if kept_only else _embed_everything(ctx)
        timings["embed_seconds"] = round(time.perf_counter() - started, 1)
        log(f"embeddings ready: {computed} slices encoded now, the rest from the cache "
            f"({timings['embed_seconds']:.0f} s)")
        started = time.perf_counter()
        prompted = ctx.unit("prompted SAM", lambda: run_prompted(ctx))
        timings["prompted_seconds"] = round(time.perf_counter() - started, 1)
        started = time.perf_counter()
        fewshot, students, notes = run_fewshot(ctx, shots)
        timings["fewshot_seconds"] = round(time.perf_counter() - started, 1)
        unet_fewshot = []
        if config.unet_per_count:
            started = time.perf_counter()
            unet_fewshot = run_unet_per_count(ctx, fewshot)
            timings["unet_fewshot_seconds"] = round(time.perf_counter() - started, 1)
        supervised = []
        if task.protocol != "cross_image":
            started = time.perf_counter()
            supervised = ctx.unit("fully supervised", lambda: run_supervised(ctx))
            timings["supervised_seconds"] = round(time.perf_counter() - started, 1)
        else:
            notes.append("No fully supervised reference: the pool of each fold is two or three images.")
        if ctx.kept:
            notes.append(f"Resumed: {len(ctx.kept)} unit(s) kept from an earlier run of the same study "
                         f"({store.path.name}); the study's timings cover only the others.")
        if kept_only and config.unet_per_count:  # a few-shot run is compared with its own U-Net only
            paired = {_draw(r) for r in unet_fewshot}
            unpaired = [_unit_key("few-shot", *_draw(r)) for r in fewshot if _draw(r) not in paired]
            fewshot, students = ([r for r in runs if _draw(r) in paired] for runs in (fewshot, students))
            ctx.left_out += [f"{key} (kept, but its U-Net is not)" for key in unpaired]
        if ctx.left_out:
            notes.append(f"Rendered from kept units only (--kept-only): {len(ctx.left_out)} unit(s) left out "
                         f"({'; '.join(ctx.left_out)}), so not every count has every seed.")
    return {"fewshot": fewshot, "unet_fewshot": unet_fewshot, "student_fewshot": students, "prompted": prompted,
            "supervised": supervised,
            "notes": notes, "timings": timings, "slices_encoded": computed, "shots": list(shots),
            "example": ctx.example, "load_average": os.getloadavg()[0], "kept_units": ctx.kept,
            "left_out_units": ctx.left_out}

