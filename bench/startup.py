"""Start-up of the command line: ``fewsam --help``, and ``fewsam segment`` of one cached volume without, then
with JAX's persistent compilation cache (:mod:`fewsam_jax.home`), cold (first process) and warm (later ones);
then where a warm process spends its time.

Every run is a fresh ``python -m fewsam_jax.cli`` subprocess timed end to end (wall clock, start-up, imports,
model and decoder load, compiles, inference, writing the label map). Each tree gets a new temporary compilation
cache, so "cold" really compiles; the embedding cache is only read (``--cache``, default ``$FEWSAM_HOME``'s).
The load average is read before and after every run.

With ``--baseline TREE`` (another checkout of the project, e.g. ``git worktree add /tmp/old COMMIT``) every run
is made for that tree and for this one in turn, so the two are compared under the same load.

The phase breakdown runs in one process per tree (warm compilation cache): imports, decoder load, the first
``segment`` of the volume (tracing, compiled programs loaded, inference), a second one (inference alone), and
the decoder by itself on the volume's cached embeddings (``fewshot.infer.predict_logits``): what no start-up
work can remove.

With ``--student DIR`` (a ``fewsam teach`` folder) the same ``fewsam segment`` runs are made with the student in
this tree, under the same load, and its phases: imports, student load, two ``segment`` calls, and the student alone
on :data:`STUDENT_SLICES` slices (the volume's slices repeated): the student reads the image, not the cache.

    python -m bench.startup --image IMG.nii.gz --decoder DECODER_DIR [--model MODEL_DIR] [--cache EMB_CACHE]
                            [--baseline TREE] [--student STUDENT_DIR]

Results go to the "Start-up and compilation cache" section of ``bench/RESULTS.md`` (between its markers) and
to ``bench/results/startup.json``; ``--out DIR`` writes DIR/RESULTS.md and DIR/results/startup.json instead.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- startup:start -->", "<!-- startup:end -->"
KINDS = {"off": "`fewsam segment`, compilation cache off", "cold": "`fewsam segment`, cache cold (1st process)",
         "warm": "`fewsam segment`, cache warm"}
PHASES = {"imports": "imports", "load": "decoder load", "segment_first": "1st `segment` (trace, load programs, run)",
          "segment_second": "2nd `segment` (inference only)", "decode": "decoder alone on the cached embeddings"}
STUDENT_PHASES = {"imports": "imports", "load": "student load", "segment_first": "1st `segment` (trace, run)",
                  "segment_second": "2nd `segment` (inference only)", "predict": "the student alone on {n} slices"}
STUDENT_SLICES = 100


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def clean_env() -> dict[str, str]:
    """This process's environment without JAX settings, ``FEWSAM_JAX_CACHE`` or ``PYTHONPATH``: what a measured
    child process starts from, so no compilation-cache choice or tree leaks in from the shell."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("JAX_") and k not in ("FEWSAM_JAX_CACHE", "PYTHONPATH")}


def tree_env(env: dict[str, str], tree: Path) -> dict[str, str]:
    """``env`` with ``tree`` first on PYTHONPATH, so a process started in ``tree`` runs that tree's code."""
    return {**env, "PYTHONPATH": os.pathsep.join([str(tree), *filter(None, [env.get("PYTHONPATH")])])}


def timed_run(args: list[str], env: dict[str, str], tree: Path = ROOT) -> dict:
    """Wall seconds of ``python -m fewsam_jax.cli ARGS`` in a fresh process started in ``tree``, with the
    1-minute load before/after."""
    load_before = load1()
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fewsam_jax.cli", *args], cwd=tree, env=tree_env(env, tree), check=True,
                   stdout=subprocess.DEVNULL)
    return {"wall_s": round(time.perf_counter() - start, 3), "load": [load_before, load1()]}


def folder_stats(folder: Path) -> dict:
    files = [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []
    return {"files": len(files), "mb": round(sum(p.stat().st_size for p in files) / 2**20, 2)}


def time_segments(segmenter, volume, times: dict[str, float], **kwargs) -> None:
    """``times["segment_first"]`` / ``["segment_second"]``: two ``segmenter.segment(volume, **kwargs)`` calls."""
    for name in ("segment_first", "segment_second"):
        mark = time.perf_counter()
        segmenter.segment(volume, progress=False, **kwargs)
        times[name] = time.perf_counter() - mark


def phases_worker(image: str, decoder: str, model: str | None, cache: str | None) -> dict:
    """Seconds of each phase (:data:`PHASES`) in this process; uses only API that older trees have too."""
    times, started = {}, time.perf_counter()
    import fewsam_jax.cli  # noqa: F401  (what the command imports)
    from fewsam_jax.fewshot import FewShotSegmenter
    from fewsam_jax.home import enable_compilation_cache
    from fewsam_jax.io import load_volume

    enable_compilation_cache()
    times["imports"] = time.perf_counter() - started
    mark = time.perf_counter()
    segmenter = FewShotSegmenter.load(decoder, model=model)
    times["load"] = time.perf_counter() - mark
    volume = load_volume(image)
    time_segments(segmenter, volume, times, cache=cache)
    from fewsam_jax.cache import embed_volume
    from fewsam_jax.config import get_config
    from fewsam_jax.fewshot.infer import predict_logits
    from fewsam_jax.fewshot.segmenter import volume_images

    base = segmenter._sam  # loaded by now in trees that always load it; read lazily (a cache hit) otherwise
    if base is None:
        from fewsam_jax.weights import LazyModel

        base = LazyModel(segmenter.model_dir())
    staged = getattr(segmenter.decoder, "encoder_stage", None) is not None  # trees before the adapted stage lack it
    entry = embed_volume(volume, base, axis=segmenter.axis, intensity=segmenter.intensity, cache=cache,
                         progress=False, **({"stage_inputs": True} if staged else {}))
    embeddings = entry.load_stage_inputs() if staged else entry.load()  # what the decoder reads
    images = volume_images(volume, segmenter.intensity, segmenter.axis, segmenter.decoder.config,
                           get_config(segmenter.model_name))
    mark = time.perf_counter()
    predict_logits(segmenter.decoder, segmenter.tokens, embeddings, images=images)
    times["decode"] = time.perf_counter() - mark
    return {"seconds": {k: round(v, 3) for k, v in times.items()}, "slices": len(embeddings)}


def student_phases_worker(image: str, student: str) -> dict:
    """Seconds of each :data:`STUDENT_PHASES` phase of a ``fewsam teach`` student in this process."""
    import dataclasses

    import numpy as np

    times, started = {}, time.perf_counter()
    import fewsam_jax.cli  # noqa: F401  (what the command imports)
    from fewsam_jax.fewshot import StudentSegmenter
    from fewsam_jax.home import enable_compilation_cache
    from fewsam_jax.io import load_volume

    enable_compilation_cache()
    times["imports"] = time.perf_counter() - started
    mark = time.perf_counter()
    segmenter = StudentSegmenter.load(student)
    times["load"] = time.perf_counter() - mark
    volume = load_volume(image)
    time_segments(segmenter, volume, times)
    along = volume.array.shape[segmenter.axis]
    repeats = np.arange(STUDENT_SLICES) % along
    many = dataclasses.replace(volume, array=np.take(volume.array, repeats, axis=segmenter.axis))
    segmenter.predict_volume(many)  # traces the STUDENT_SLICES-row program once, untimed
    mark = time.perf_counter()
    probabilities = segmenter.predict_volume(many)
    times["predict"] = time.perf_counter() - mark
    return {"seconds": {k: round(v, 3) for k, v in times.items()}, "slices": along,
            "predicted": [int(n) for n in probabilities.shape]}


def run_phases(tree: Path, args: list[str], env: dict[str, str], worker: str = "--phases-worker") -> dict:
    """``worker``'s phases (:func:`phases_worker` or :func:`student_phases_worker`) in a fresh process running
    ``tree``'s library (this file's worker)."""
    load_before = load1()
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), worker, *args], cwd=tree,
                         env=tree_env(env, tree), check=True, capture_output=True, text=True).stdout
    report = json.loads(out.strip().splitlines()[-1])
    report["load"] = [load_before, load1()]
    return report


def run_kinds(warm_runs: int) -> list[str]:
    """The ``fewsam segment`` runs in order (:data:`KINDS`): cache off, cold, then ``warm_runs`` warm."""
    return ["off", "cold"] + ["warm"] * warm_runs


def jax_cache_env(env: dict[str, str], kind: str, folder: Path) -> dict[str, str]:
    """``env`` with the compilation cache a ``kind`` run uses: off, or ``folder``."""
    return {**env, "FEWSAM_JAX_CACHE": "off" if kind == "off" else str(folder)}


def measure(image: str, decoder: str, model: str | None, cache: str | None, warm_runs: int, work: Path,
            baseline: Path | None = None) -> dict:
    """Best-of-5 ``--help``; ``segment`` with the compilation cache off, cold and ``warm_runs`` times warm; the
    phases; each for ``baseline`` (when given) and this tree in turn."""
    env = clean_env()
    trees = {"baseline": baseline, "current": ROOT} if baseline else {"current": ROOT}
    help_runs = {name: [] for name in trees}
    for _ in range(5):
        for name, tree in trees.items():
            help_runs[name].append(timed_run(["--help"], env, tree))
    segment = ["segment", image, "-o", str(work / "pred.nii.gz"), "--decoder", decoder, "--overwrite", "-q",
               *(["--model", model] if model else []), *(["--cache", cache] if cache else [])]
    runs = {name: {kind: [] for kind in KINDS} for name in trees}
    caches = {name: work / f"jax_cache_{name}" for name in trees}
    for kind in run_kinds(warm_runs):
        for name, tree in trees.items():
            runs[name][kind].append(timed_run(segment, jax_cache_env(env, kind, caches[name]), tree))
    worker_args = [image, decoder, model or "", cache or ""]
    phases = {name: run_phases(tree, worker_args, {**env, "FEWSAM_JAX_CACHE": str(caches[name])})
              for name, tree in trees.items()}
    return {"help": help_runs, "segment": runs, "phases": phases,
            "jax_cache_after_cold": {name: folder_stats(caches[name]) for name in trees},
            "trees": {name: str(tree) for name, tree in trees.items()}}


def measure_student(image: str, student: str, warm_runs: int, work: Path) -> dict:
    """``fewsam segment --decoder STUDENT`` with the compilation cache off, cold and ``warm_runs`` times warm, then
    the student's phases, in this tree."""
    env = clean_env()
    segment = ["segment", image, "-o", str(work / "student_pred.nii.gz"), "--decoder", student, "--overwrite", "-q"]
    runs = {kind: [] for kind in KINDS}
    jax_cache = work / "jax_cache_student"
    for kind in run_kinds(warm_runs):
        runs[kind].append(timed_run(segment, jax_cache_env(env, kind, jax_cache)))
    phases = run_phases(ROOT, [image, student], {**env, "FEWSAM_JAX_CACHE": str(jax_cache)},
                        worker="--student-phases-worker")
    return {"segment": runs, "phases": phases}


def _row(label: str, runs: list[dict | None]) -> str:
    cells = [f"{r['wall_s']:.2f}" if r else "-" for r in runs]
    loads = " ; ".join(f"{r['load'][0]:.2f} / {r['load'][1]:.2f}" for r in runs if r)
    ratio = (f" | {runs[0]['wall_s'] / runs[1]['wall_s']:.2f}x" if len(runs) == 2 and all(runs) else
             (" | " if len(runs) == 2 else ""))
    return f"| {label} | {' | '.join(cells)}{ratio} | {loads} |"


def section(report: dict) -> str:
    m = report["machine"]
    names = list(report["segment"])
    loads = [x for runs in report["help"].values() for r in runs for x in r["load"]] + [
        x for tree in report["segment"].values() for runs in tree.values() for r in runs for x in r["load"]]
    compared = len(names) == 2
    header = ("| run | before (baseline) s | after (this tree) s | speed-up | load before / after |" if compared
              else "| run | wall s | load before / after |")
    lines = [START, "## Start-up and compilation cache", "",
             (f"Written by `python -m bench.startup` on {report['date']} ({m['cpu']}, {m['cores']} cores; "
              f"jax {m['versions']['jax']}); 1-minute load {min(loads):.2f}-{max(loads):.2f} during the runs."),
             (f"Image `{report['image']}`, decoder `{report['decoder']}`; embeddings already cached. Every row is a "
              "fresh process, timed end to end" + (
                  f"; \"before\" is `{report['trees']['baseline']}`"
                  f"{' (' + report['baseline_label'] + ')' if report.get('baseline_label') else ''}, run in turn "
                  "with this tree under the same load." if compared else ".")), "",
             header, "|---|" + "---|" * (4 if compared else 2)]
    best = {name: min(report["help"][name], key=lambda r: r["wall_s"]) for name in names}
    lines.append(_row("`fewsam --help` (best of 5)", [best[n] for n in names]))
    for kind, label in KINDS.items():
        for i in range(len(report["segment"][names[-1]][kind])):
            suffix = f" (process {i + 2})" if kind == "warm" else ""
            lines.append(_row(label + suffix, [report["segment"][n][kind][i] for n in names]))
    stats = report["jax_cache_after_cold"]
    lines += ["", "After the cold run the compilation cache held " + ", ".join(
        f"{stats[n]['files']} files, {stats[n]['mb']} MB ({n})" for n in names) + "."]
    if report.get("phases"):
        phases = report["phases"]
        lines += ["", "Where a warm process spends its time (one process per tree, seconds):", "",
                  "| phase | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for key, label in PHASES.items():
            lines.append(f"| {label} | " + " | ".join(f"{phases[n]['seconds'][key]:.2f}" for n in names) + " |")
        lines.append("| 1-minute load before / after | " + " | ".join(
            f"{phases[n]['load'][0]:.2f} / {phases[n]['load'][1]:.2f}" for n in names) + " |")
        cur = phases[names[-1]]
        lines += ["", (f"The decoder alone ({cur['slices']} slices, batches of 8, the last padded) took "
                       f"{cur['seconds']['decode']:.2f} s in this tree's process: the part of `fewsam segment` that no "
                       "start-up work removes.")]
    if report.get("student"):
        lines += student_lines(report)
    lines.append(END)
    return "\n".join(lines) + "\n"


def student_info(student: str) -> dict:
    """What ``student.json`` records of how the student was taught (``info``), or {} if it cannot be read."""
    try:
        return json.loads((Path(student) / "student.json").read_text()).get("info", {})
    except (OSError, ValueError):
        return {}


def student_lines(report: dict) -> list[str]:
    """The student's table and phases (``--student``), for :func:`section`."""
    student, info = report["student"], report.get("student_info", {})
    taught = ", ".join(f"{k} {info[k]}" for k in ("labelled_slices", "training_slices", "rounds") if k in info)
    lines = ["", (f"The same command with a student (`fewsam teach`, `{report['student_dir']}`"
                  f"{'; ' + taught if taught else ''}) in place of the decoder, run after the rows above; it reads "
                  "the image, not the embedding cache, and no base model:"), "",
             "| run | wall s | load before / after |", "|---|---|---|"]
    for kind, label in KINDS.items():
        for i, run in enumerate(student["segment"][kind]):
            suffix = f" (process {i + 2})" if kind == "warm" else ""
            lines.append(_row(label.replace("`fewsam segment`", "`fewsam segment`, student") + suffix, [run]))
    phases = student["phases"]
    lines += ["", f"Where a warm student process spends its time ({phases['slices']} slices; seconds):", "",
              "| phase | seconds |", "|---|---|"]
    for key, label in STUDENT_PHASES.items():
        lines.append(f"| {label.format(n=STUDENT_SLICES)} | {phases['seconds'][key]:.2f} |")
    lines.append(f"| 1-minute load before / after | {phases['load'][0]:.2f} / {phases['load'][1]:.2f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--phases-worker"]:
        image, decoder, model, cache = argv[1:5]
        print(json.dumps(phases_worker(image, decoder, model or None, cache or None)))
        return 0
    if argv[:1] == ["--student-phases-worker"]:
        print(json.dumps(student_phases_worker(*argv[1:3])))
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", required=True, help="a volume whose embeddings are cached")
    parser.add_argument("--decoder", required=True, help="a trained decoder folder")
    parser.add_argument("--model", help="base model folder (default: found by the decoder's weights id)")
    parser.add_argument("--cache", help="embedding cache folder (read only here; default $FEWSAM_HOME/embeddings)")
    parser.add_argument("--warm-runs", type=int, default=2, help="warm-cache processes (default 2)")
    parser.add_argument("--baseline", type=Path, help="another checkout of the project, measured in turn with this one")
    parser.add_argument("--baseline-label", default="", help="what the baseline is (e.g. a commit), for the report")
    parser.add_argument("--student", help="a student folder (fewsam teach --out): its fewsam segment runs too")
    parser.add_argument("--out", type=Path, default=None, help="folder of RESULTS.md and results/ (default bench/)")
    args = parser.parse_args(argv)
    if args.student and not (Path(args.student) / "student.json").is_file():
        parser.error(f"--student: {args.student} has no student.json; expected a folder written by fewsam teach")
    from bench.sections import BENCH, machine_info, save_report

    with tempfile.TemporaryDirectory(prefix="fewsam_startup_") as work:
        report = measure(args.image, args.decoder, args.model, args.cache, args.warm_runs, Path(work),
                         args.baseline.resolve() if args.baseline else None)
        if args.student:
            report.update(student=measure_student(args.image, args.student, args.warm_runs, Path(work)),
                          student_dir=args.student, student_info=student_info(args.student))
    report.update(date=datetime.date.today().isoformat(), machine=machine_info(), image=args.image,
                  decoder=args.decoder, baseline_label=args.baseline_label,
                  command="python -m bench.startup " + " ".join(argv))
    save_report("startup", report, section(report), START, END, args.out or BENCH)
    print(section(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
