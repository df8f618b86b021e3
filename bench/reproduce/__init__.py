"""The paper's comparison on the shared data: few-shot decoder vs prompted SAM vs full supervision,
and vs a U-Net from scratch on the same labelled slices at every count.

``run_study("hippocampus", quick=True)`` (or ``python -m bench.reproduce --dataset hippocampus --quick``)
writes ``reproduce_{dataset}[_quick].md``, ``.json``, ``_dice_vs_shots.png`` and ``_overlays.png``
into ``out`` (default: this checkout's ``bench/results``), and keeps every finished unit of the study in
``reproduce_{dataset}[_quick].runs.json`` there as it goes (kept after the report), so that an interrupted run
continues with ``--resume``, and a finished one takes more seeds or counts without running its units again.
Data sets: :mod:`bench.reproduce.datasets`; methods and scoring: :mod:`bench.reproduce.study`; the runs file:
:mod:`bench.reproduce.runs`; aggregation and files: :mod:`bench.reproduce.report`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench.reproduce.datasets import DATASETS, Case, Fold, Task, load_task, task_name
from bench.reproduce.report import check_report_files, file_names, make_report, write_report
from bench.reproduce.runs import RUNS_SUFFIX, RunStore, read_runs
from bench.reproduce.study import StudyConfig, draw_support, method_configs, run_methods, score_item
from bench.sections import RESULTS_DIR
from fewsam_jax.modeling.sam import Sam
from fewsam_jax.outputs import OutputExistsError, check_output_file
from fewsam_jax.weights import load_model

__all__ = ["DATASETS", "Case", "Fold", "StudyConfig", "Task", "draw_support", "load_task", "run_study", "score_item"]


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_study(
    dataset: str | Task,
    quick: bool = False,
    out: str | os.PathLike = RESULTS_DIR,
    model: str | Sam = "litemedsam",
    checkpoint: str | os.PathLike | None = None,
    config: StudyConfig | None = None,
    cache: Any = None,
    data_root: str | os.PathLike | None = None,
    command: str | None = None,
    log=_log,
    overwrite: bool = False,
    axis: int | None = None,
    unlabelled: int = 0,
    resume: bool = False,
    kept_only: bool = False,
) -> dict[str, Any]:
    """Run the comparison on ``dataset`` and write its report into ``out``.

    Args:
      dataset: a name from :data:`DATASETS` (read from ``data_root``, default ``../shared/data``) or a Task.
      quick: the small split and :meth:`StudyConfig.quick` (one seed, fewer steps).
      model: a preset name or converted model directory (``checkpoint`` as for ``load_model``), or a Sam.
      config: overrides the sizes chosen by ``quick``.
      cache: embedding cache (default ``$FEWSAM_HOME/embeddings``).
      command: the command line recorded in the report.
      overwrite: replace this study's report files in ``out`` if they exist (checked before the study runs;
        without it an existing report is an OutputExistsError); without ``resume`` also start its runs file afresh.
        Other files in ``out`` are never touched.
      axis: hippocampus only, the plane of the labelled and scored slices (0 sagittal, 1 coronal; the report is
        then named ``reproduce_hippocampus_sagittal...``).
      unlabelled: hippocampus only, that many more volumes' images for the students (needs ``config.student``).
      resume: take the units an earlier run of the same study left in its runs file (``out/reproduce_NAME.runs.json``,
        :mod:`bench.reproduce.runs`: written after every unit of every run, and kept with the report) and compute
        only the others. Without it an existing runs file is an OutputExistsError (``overwrite`` starts
        over).
      kept_only: with ``resume``, render the report from the kept units alone: nothing is trained, units not run
        yet are left out and named in the report's notes (e.g. more seeds for some counts than for others).
    Returns:
      the report as written to JSON, plus ``files``: {"markdown", "json", "plot", "overlays"} paths.
    """
    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    config = config or (StudyConfig.quick() if quick else StudyConfig())
    if unlabelled and not config.student:
        raise ValueError(f"unlabelled: {unlabelled} volumes for the students, but the study teaches none (set "
                         "StudyConfig.student: --student)")
    name = dataset.name if isinstance(dataset, Task) else task_name(dataset, axis)
    runs_file = runs_path(out, name, quick)
    if kept_only and not (resume and runs_file.exists()):
        raise ValueError(f"kept units only: needs resume and the study's runs file {runs_file}"
                         f"{'' if runs_file.exists() else ' (not found)'}")
    check_report_files(out, name, quick, overwrite)
    start_over = runs_file.exists() and not resume
    if start_over:  # the units of an earlier run: kept unless asked
        if not overwrite:
            raise OutputExistsError(f"{runs_file} exists (the finished units of an earlier run of this study): pass "
                                    "--resume to continue it, or --overwrite to start over")
        check_output_file(runs_file, overwrite=True)  # a regular file
        read_runs(runs_file)  # and a runs file: anything else there is not the library's to remove
    task = dataset if isinstance(dataset, Task) else load_task(dataset, quick, data_root, axis, unlabelled)
    sam = model if isinstance(model, Sam) else load_model(model, checkpoint)
    log(f"{task.name}: {len(task.folds)} fold(s), {task.test_items} test item(s), model {sam.config.name}")
    if start_over:  # --overwrite, checked above; removed only once the task and the model have loaded
        runs_file.unlink()
    store = RunStore(runs_file, fingerprint(task, config, sam))
    raw = run_methods(task, sam, config, cache=cache, log=log, store=store, kept_only=kept_only)
    report = make_report(task, raw, config, model={"name": sam.config.name, "weights_id": sam.weights_id},
                         quick=quick, command=command or f"run_study({task.name!r}, quick={quick})",
                         load_start=load_start, total_seconds=time.perf_counter() - started)
    files = write_report(report, raw["example"], out, overwrite=overwrite)
    # the runs file stays: a later --resume with more seeds or counts adds to this study without rerunning its units
    log(f"wrote {', '.join(str(p) for p in files.values())} ({report['timings']['total_seconds'] / 60:.1f} min)")
    return {**report, "files": files}


def runs_path(out: str | os.PathLike, name: str, quick: bool) -> Path:
    """Where the study ``name`` keeps its finished units in ``out`` (:mod:`bench.reproduce.runs`)."""
    return Path(out) / (file_names(name, quick)["json"].removesuffix(".json") + RUNS_SUFFIX)


def fingerprint(task: Task, config: StudyConfig, sam: Sam) -> dict[str, Any]:
    """What a study measures, for its runs file: the task's split and settings, the study's config but its seeds
    and counts (a resumed run may add some), the methods' configs, the model's weights, JAX and the device kind."""
    import jax

    return {
        "task": {"name": task.name, "axis": task.axis, "intensity": task.intensity, "protocol": task.protocol,
                 "classes": {str(k): v for k, v in sorted(task.classes.items())},
                 "folds": [{"name": f.name, "pool": [c.name for c in f.pool], "pool_slices": f.pool_slices,
                            "test": [c.name for c in f.test], "test_slices": f.test_slices} for f in task.folds],
                 "unlabelled": [p.name for p in task.unlabelled]},
        "study": {k: v for k, v in dataclasses.asdict(config).items() if k not in ("seeds", "shots")},
        "methods": method_configs(task, config),
        "model": {"name": sam.config.name, "weights_id": sam.weights_id},
        "software": {"jax": jax.__version__, "device": jax.devices()[0].device_kind},
    }
