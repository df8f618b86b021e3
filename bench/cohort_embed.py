"""Cohort scale: how close ``fewsam embed`` over a folder of volumes comes to the bare encoder's rate.

A folder of shared hippocampus volumes (symbolic links in a temporary folder; nothing is copied or cached in
the user's cache) is embedded into new temporary caches, so every slice is encoded. In one process, in turn:

- ``bare encoder``: the compiled :class:`~fewsam_jax.encode.SliceEncoder` alone on the volumes' slices, already
  read and normalised in memory (no reading, no cache writes): the rate nothing around it can beat;
- ``read ahead``: :func:`fewsam_jax.cohort.embed_cases` with ``prefetch=1`` (what ``fewsam embed FOLDER`` does): a
  background thread reads and normalises the next volume while the current one is encoded and written;
- ``in turn``: the same with ``prefetch=0`` (each volume read, then encoded).

The encoder is compiled before the first timed pass. Then ``fewsam embed FOLDER`` itself runs in a fresh process
(start-up, model load and compilation included). Rates are slices per second; the load average is read before
and after every pass.

    python -m bench.cohort_embed [--volumes 4] [--batch-size 4] [--rounds 1]

Writes ``bench/results/cohort_embed.json`` and its section of ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HIPPOCAMPUS = ROOT.parent / "shared" / "data" / "hippocampus" / "imagesTr"
START, END = "<!-- cohort-embed:start -->", "<!-- cohort-embed:end -->"


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def pick_volumes(count: int) -> list[Path]:
    """``count`` hippocampus images spread over the sorted list (the same ones on every run)."""
    files = sorted(HIPPOCAMPUS.glob("hippocampus_*_0000.nii.gz"))
    if len(files) < count:
        raise SystemExit(f"needs {count} volumes in {HIPPOCAMPUS}; found {len(files)}")
    return [files[i] for i in np.linspace(0, len(files) - 1, count).round().astype(int)]


def timed(fn) -> dict:
    load_before, start = load1(), time.perf_counter()
    slices = fn()
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 3), "slices": slices, "slices_per_s": round(slices / seconds, 3),
            "load": [load_before, load1()]}


def measure(volumes: list[Path], batch_size: int, rounds: int, work: Path) -> dict:
    from fewsam_jax.cache import encoder_for
    from fewsam_jax.cohort import embed_cases, find_cases
    from fewsam_jax.io import get_slices, load_volume
    from fewsam_jax.preprocess import Intensity
    from fewsam_jax.weights import load_model

    folder = work / "cohort"
    folder.mkdir()
    for path in volumes:
        (folder / path.name).symlink_to(path)
    cases = find_cases([folder])
    model = load_model("litemedsam")
    encoder = encoder_for(model, batch_size, "float32")  # the one embed_cases uses
    intensity = Intensity.parse("percentile")
    slices = [get_slices(intensity.apply(load_volume(case.image).array), 2) for case in cases]
    encoder.encode(slices[0][:batch_size])  # compile before timing

    def bare() -> int:
        for s in slices:
            encoder.encode(s)
        return sum(len(s) for s in slices)

    def pipeline(prefetch: int, cache: Path):
        def run() -> int:
            return sum(entry.num_slices for _, entry in embed_cases(
                cases, model, cache=cache, intensity=intensity, batch_size=batch_size, prefetch=prefetch,
                progress=False))
        return run

    passes: dict[str, list[dict]] = {"bare": [], "ahead": [], "in_turn": []}
    for r in range(rounds):
        passes["bare"].append(timed(bare))
        passes["ahead"].append(timed(pipeline(1, work / f"cache_ahead_{r}")))
        passes["in_turn"].append(timed(pipeline(0, work / f"cache_in_turn_{r}")))
    cli = run_cli(folder, work / "cache_cli", batch_size, work / "jax_cache")
    return {"volumes": [str(p) for p in volumes], "slices": sum(len(s) for s in slices), "batch_size": batch_size,
            "passes": passes, "cli": cli}


def run_cli(folder: Path, cache: Path, batch_size: int, jax_cache: Path) -> dict:
    """``fewsam embed FOLDER`` in a fresh process: wall seconds, and the encoding rate it reports."""
    env = {**os.environ, "FEWSAM_JAX_CACHE": str(jax_cache), "PYTHONPATH": str(ROOT)}
    load_before, start = load1(), time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "fewsam_jax.cli", "embed", str(folder), "--cache", str(cache), "-q",
                          "--batch-size", str(batch_size)], cwd=ROOT, env=env, check=True, capture_output=True,
                         text=True).stdout
    wall = time.perf_counter() - start
    match = re.search(r"(\d+) volumes, (\d+) slices: (\d+) encoded.*in ([\d.]+) s", out)
    encoded, seconds = int(match[3]), float(match[4])
    return {"wall_s": round(wall, 3), "encoded": encoded, "embed_s": seconds,
            "slices_per_s": round(encoded / seconds, 3), "load": [load_before, load1()]}


def section(report: dict) -> str:
    m = report["machine"]
    passes = report["passes"]
    loads = [x for runs in passes.values() for r in runs for x in r["load"]] + report["cli"]["load"]
    lines = [START, "## Cohort embedding: `fewsam embed` over a folder against the bare encoder", "",
             (f"Written by `python -m bench.cohort_embed` on {report['date']} ({m['cpu']}, {m['cores']} cores; jax "
              f"{m['versions']['jax']}); 1-minute load {min(loads):.2f}-{max(loads):.2f} during the runs."),
             (f"{len(report['volumes'])} shared hippocampus volumes ({report['slices']} axial slices), LiteMedSAM, "
              f"batch {report['batch_size']}, float32, new temporary caches (every slice encoded). Passes in one "
              "process, in turn, the encoder compiled first:"), "",
             "| pass | slices/s | of the bare encoder's | seconds | load before / after |", "|---|---|---|---|---|"]
    labels = {"bare": "bare encoder (slices in memory; no reading, no cache)",
              "ahead": "`embed_cases`, next volume read ahead (`fewsam embed` default)",
              "in_turn": "`embed_cases`, volumes read in turn (`--prefetch 0`)"}
    for r in range(len(passes["bare"])):
        bare = passes["bare"][r]["slices_per_s"]
        for key, label in labels.items():
            run = passes[key][r]
            lines.append(f"| {label}{f' (round {r + 1})' if len(passes['bare']) > 1 else ''} | "
                         f"{run['slices_per_s']:.3f} | {run['slices_per_s'] / bare:.1%} | {run['seconds']:.1f} | "
                         f"{run['load'][0]:.2f} / {run['load'][1]:.2f} |")
    cli = report["cli"]
    lines += ["", (f"`fewsam embed FOLDER` in a fresh process: {cli['wall_s']:.1f} s wall, of which {cli['embed_s']:.1f} s "
                   f"embedding ({cli['slices_per_s']:.3f} slices/s, {cli['encoded']} slices; the rest is start-up, "
                   f"model load and compilation); load {cli['load'][0]:.2f} / {cli['load'][1]:.2f}."), END]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cohort_embed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--volumes", type=int, default=4, help="hippocampus volumes in the folder (default 4)")
    parser.add_argument("--batch-size", type=int, default=4, help="slices per encoder call (default 4, as fewsam embed)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of the three passes (default 1)")
    parser.add_argument("--out", type=Path, default=None, help="folder of RESULTS.md and results/ (default bench/)")
    args = parser.parse_args(argv)
    from bench.sections import BENCH, machine_info, save_report

    with tempfile.TemporaryDirectory(prefix="fewsam_cohort_embed_") as work:
        report = measure(pick_volumes(args.volumes), args.batch_size, args.rounds, Path(work))
    report.update(date=datetime.date.today().isoformat(), machine=machine_info(),
                  command="python -m bench.cohort_embed " + " ".join(argv if argv is not None else sys.argv[1:]))
    save_report("cohort_embed", report, section(report), START, END, args.out or BENCH)
    print(section(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
