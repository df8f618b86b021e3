"""The paper's comparison on the shared data: few-shot decoder vs prompted SAM vs full supervision,
and vs a U-Net from scratch on the same labelled slices at every count.

``run_study("hippocampus", quick=True)`` (or ``python -m bench.reproduce --dataset hippocampus --quick``)
writes ``reproduce_{dataset}[_quick].md``, ``.json``, ``_dice_vs_shots.png`` and ``_overlays.png``
into ``out`` (default: this checkout's ``bench/results``). Data sets: :mod:`bench.reproduce.datasets`; methods
and scoring: :mod:`bench.reproduce.study`; aggregation and files: :mod:`bench.reproduce.report`.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from bench.reproduce.datasets import DATASETS, Case, Fold, Task, load_task
from bench.reproduce.report import check_report_files, make_report, write_report
from bench.reproduce.study import StudyConfig, draw_support, run_methods, score_item
from bench.sections import RESULTS_DIR
from fewsam_jax.modeling.sam import Sam
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
        without it an existing report is an OutputExistsError). Other files in ``out`` are never touched.
    Returns:
      the report as written to JSON, plus ``files``: {"markdown", "json", "plot", "overlays"} paths.
    """
    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    check_report_files(out, dataset.name if isinstance(dataset, Task) else dataset, quick, overwrite)
    task = dataset if isinstance(dataset, Task) else load_task(dataset, quick, data_root)
    config = config or (StudyConfig.quick() if quick else StudyConfig())
    sam = model if isinstance(model, Sam) else load_model(model, checkpoint)
    log(f"{task.name}: {len(task.folds)} fold(s), {task.test_items} test item(s), model {sam.config.name}")
    raw = run_methods(task, sam, config, cache=cache, log=log)
    report = make_report(task, raw, config, model={"name": sam.config.name, "weights_id": sam.weights_id},
                         quick=quick, command=command or f"run_study({task.name!r}, quick={quick})",
                         load_start=load_start, total_seconds=time.perf_counter() - started)
    files = write_report(report, raw["example"], out, overwrite=overwrite)
    log(f"wrote {', '.join(str(p) for p in files.values())} ({report['timings']['total_seconds'] / 60:.1f} min)")
    return {**report, "files": files}
