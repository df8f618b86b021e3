"""Start-up of the command line: ``fewsam --help``, and ``fewsam segment`` of one cached volume without, then
with JAX's persistent compilation cache (:mod:`fewsam_jax.home`), cold (first process) and warm (later ones).

Every run is a fresh ``python -m fewsam_jax.cli`` subprocess timed end to end (wall clock, start-up, imports,
model and decoder load, compiles, inference, writing the label map). The compilation cache is a new temporary
folder, so "cold" really compiles; the embedding cache is only read (``--cache``, default ``$FEWSAM_HOME``'s).
The load average is read before and after every run.

    python -m bench.startup --image IMG.nii.gz --decoder DECODER_DIR [--model MODEL_DIR] [--cache EMB_CACHE]

Results go to the "Start-up and compilation cache" section of ``bench/RESULTS.md`` (between its markers) and
to ``bench/results/startup.json``; ``--out DIR`` writes DIR/RESULTS.md and DIR/results/startup.json instead.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.sections import BENCH, machine_info, save_report

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- startup:start -->", "<!-- startup:end -->"


def timed_run(args: list[str], env: dict[str, str]) -> dict:
    """Wall seconds of ``python -m fewsam_jax.cli ARGS`` in a fresh process, with the 1-minute load before/after."""
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fewsam_jax.cli", *args], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return {"wall_s": round(time.perf_counter() - start, 3), "load": [load_before, os.getloadavg()[0]]}


def folder_stats(folder: Path) -> dict:
    files = [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []
    return {"files": len(files), "mb": round(sum(p.stat().st_size for p in files) / 2**20, 2)}


def measure(image: str, decoder: str, model: str | None, cache: str | None, warm_runs: int, work: Path) -> dict:
    """Best-of-5 ``--help``; then ``segment`` with the compilation cache off, cold and ``warm_runs`` times warm."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_") and k != "FEWSAM_JAX_CACHE"}
    help_runs = [timed_run(["--help"], env) for _ in range(5)]
    segment = ["segment", image, "-o", str(work / "pred.nii.gz"), "--decoder", decoder, "--overwrite", "-q",
               *(["--model", model] if model else []), *(["--cache", cache] if cache else [])]
    jax_cache = work / "jax_cache"
    runs = {"off": [timed_run(segment, {**env, "FEWSAM_JAX_CACHE": "off"})]}
    runs["cold"] = [timed_run(segment, {**env, "FEWSAM_JAX_CACHE": str(jax_cache)})]
    cold_cache = folder_stats(jax_cache)
    runs["warm"] = [timed_run(segment, {**env, "FEWSAM_JAX_CACHE": str(jax_cache)}) for _ in range(warm_runs)]
    return {"help": help_runs, "segment": runs, "jax_cache_after_cold": cold_cache}


def section(report: dict) -> str:
    m = report["machine"]
    help_best = min(r["wall_s"] for r in report["help"])
    loads = [x for r in report["help"] for x in r["load"]] + [
        x for runs in report["segment"].values() for r in runs for x in r["load"]]
    lines = [START, "## Start-up and compilation cache", "",
             (f"Written by `python -m bench.startup` on {report['date']} ({m['cpu']}, {m['cores']} cores; "
              f"jax {m['versions']['jax']}); 1-minute load {min(loads):.2f}-{max(loads):.2f} during the runs."),
             (f"Image `{report['image']}`, decoder `{report['decoder']}`; embeddings already cached. Every row is a "
              "fresh process, timed end to end."), "",
             "| run | wall s | load before / after |", "|---|---|---|",
             (f"| `fewsam --help` (best of 5) | {help_best:.2f} | "
              f"{report['help'][0]['load'][0]:.2f} / {report['help'][-1]['load'][1]:.2f} |")]
    names = {"off": "`fewsam segment`, compilation cache off", "cold": "`fewsam segment`, cache cold (1st process)",
             "warm": "`fewsam segment`, cache warm"}
    for kind, runs in report["segment"].items():
        for i, run in enumerate(runs):
            suffix = f" (process {i + 2})" if kind == "warm" else ""
            load = f"{run['load'][0]:.2f} / {run['load'][1]:.2f}"
            lines.append(f"| {names[kind]}{suffix} | {run['wall_s']:.2f} | {load} |")
    stats = report["jax_cache_after_cold"]
    lines += ["", f"After the cold run the compilation cache held {stats['files']} files, {stats['mb']} MB.", END]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", required=True, help="a volume whose embeddings are cached")
    parser.add_argument("--decoder", required=True, help="a trained decoder folder")
    parser.add_argument("--model", help="base model folder (default: found by the decoder's weights id)")
    parser.add_argument("--cache", help="embedding cache folder (read only here; default $FEWSAM_HOME/embeddings)")
    parser.add_argument("--warm-runs", type=int, default=2, help="warm-cache processes (default 2)")
    parser.add_argument("--out", type=Path, default=BENCH, help="folder of RESULTS.md and results/ (default bench/)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fewsam_startup_") as work:
        report = measure(args.image, args.decoder, args.model, args.cache, args.warm_runs, Path(work))
    report.update(date=datetime.date.today().isoformat(), machine=machine_info(), image=args.image,
                  decoder=args.decoder, command="python -m bench.startup " + " ".join(argv or sys.argv[1:]))
    save_report("startup", report, section(report), START, END, args.out)
    print(section(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
