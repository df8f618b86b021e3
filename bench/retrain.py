"""Retraining after labelling one more slice: the annotate -> retrain loop of notebook 02, in one process.

One fresh process per tree trains the default decoder on the demo volume (the MNI152 template with its labels,
what `fewsam demo` and the notebooks use) three times in a row, on 3, 4 and 5 labelled slices, as a user who
labels one more slice and retrains does; every slice is embedded (with its stage inputs) before the first
training, so the rows time training alone (support set, compilation, steps, calibration). JAX's persistent
compilation cache is off, as in a notebook that never called ``fewsam_jax.enable_compilation_cache()``: what a
retraining does not compile again, the process already holds.

With ``--baseline TREE`` (another checkout, e.g. ``git worktree add /tmp/old COMMIT``) the same runs are made for
that tree and this one in turn, under the same load.

    python -m bench.retrain [--steps 20] [--baseline TREE --baseline-label TEXT]

Results go to the "Retraining after one more labelled slice" section of ``bench/RESULTS.md`` (between its
markers) and to ``bench/results/retrain.json``; ``--out DIR`` writes DIR/RESULTS.md and DIR/results/retrain.json.
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
START, END = "<!-- retrain:start -->", "<!-- retrain:end -->"
COUNTS = (3, 4, 5)


def worker(folder: Path, steps: int) -> dict:
    """In this process (the tree on PYTHONPATH): the three trainings; seconds and load around each."""
    import fewsam_jax as fs
    from fewsam_jax import demo
    from fewsam_jax.fewshot import Collection, SupportItem
    from fewsam_jax.label_maps import read_labels

    image_path, label_path = demo.mni_with_labels(folder / "data")
    reference = read_labels(label_path)
    spread = demo.pick_slices(reference, max(COUNTS), axis=2)
    chosen = [spread[i] for i in (0, 4, 2, 1, 3)]  # the first three spread out; then one more, and one more
    model = fs.load_model("litemedsam")
    volume = fs.load_volume(image_path)
    fs.embed_volume(volume, model, axis=2, intensity="percentile", cache=folder / "cache", slices=list(chosen),
                    stage_inputs=True, progress=False)
    rows = []
    for count in COUNTS:
        collection = Collection(classes=dict(demo.CLASSES), axis=2, support=(
            SupportItem(image_path, label_path, tuple(sorted(int(i) for i in chosen[:count]))),))
        load = os.getloadavg()[0]
        started = time.perf_counter()
        fs.FewShotSegmenter.train(collection, sam=model, training=fs.TrainConfig(steps=steps), cache=folder / "cache",
                                  progress=False)
        rows.append({"labelled": count, "seconds": round(time.perf_counter() - started, 2),
                     "load": [round(load, 2), round(os.getloadavg()[0], 2)]})
    return {"rows": rows}


def run_tree(tree: Path, steps: int, env: dict[str, str]) -> dict:
    """The worker run in a fresh process with ``tree``'s code."""
    from bench.startup import tree_env

    with tempfile.TemporaryDirectory(prefix="fewsam-retrain-") as folder:
        out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", folder, "--steps", str(steps)],
                             cwd=tree, env=tree_env(env, tree), check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(steps: int, baseline: Path | None, baseline_label: str) -> dict:
    """Both trees' runs (the baseline first, when given), with no JAX or fewsam compilation-cache setting inherited."""
    from bench.sections import machine_info
    from bench.startup import clean_env

    env = {**clean_env(), "JAX_ENABLE_COMPILATION_CACHE": "false"}
    trees = {"baseline": baseline, "current": ROOT} if baseline else {"current": ROOT}
    results = {name: run_tree(tree, steps, env) for name, tree in trees.items()}
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(), "steps": steps, "trees": {k: str(v) for k, v in trees.items()},
            "baseline_label": baseline_label, "results": results}


def render(report: dict) -> str:
    machine, results = report["machine"], report["results"]
    compared = "baseline" in results
    lines = [
        START,
        "## Retraining after one more labelled slice",
        "",
        f"Written by `python -m bench.retrain` on {report['date'][:10]} ({machine['cpu']}, {machine['cores']} cores; "
        f"jax {machine['versions']['jax']}). The default decoder (LiteMedSAM: adapted last stage and image branch), "
        f"{report['steps']} steps, trained three times in one process on the demo volume with 3, 4 and 5 labelled "
        "slices (embeddings cached first; JAX's persistent compilation cache off, as in a notebook that did not "
        "enable it)."
        + (f" \"Before\" is `{report['trees']['baseline']}`"
           f"{' (' + report['baseline_label'] + ')' if report['baseline_label'] else ''}, run before this tree."
           if compared else ""),
        "",
        "| labelled slices | " + ("before s | after s | 1-minute load at start / end (before ; after) |" if compared
                                  else "seconds | 1-minute load at start / end |"),
        "|---|---|---|" + ("---|" if compared else ""),
    ]
    current = results["current"]["rows"]
    for i, row in enumerate(current):
        load = f"{row['load'][0]} / {row['load'][1]}"
        if compared:
            before = results["baseline"]["rows"][i]
            lines.append(f"| {row['labelled']} | {before['seconds']} | {row['seconds']} | "
                         f"{before['load'][0]} / {before['load'][1]} ; {load} |")
        else:
            lines.append(f"| {row['labelled']} | {row['seconds']} | {load} |")
    return "\n".join([*lines, END]) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench.retrain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="training steps of each of the three trainings")
    parser.add_argument("--baseline", type=Path, help="another checkout of the project, measured before this one")
    parser.add_argument("--baseline-label", default="", help="what the baseline is (e.g. a commit), for the report")
    parser.add_argument("--out", type=Path, help="write DIR/RESULTS.md and DIR/results/retrain.json instead")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps: expected a positive number, got {args.steps}")
    if args.worker:  # in the tree under test: imports nothing from bench/, which an older tree may lack
        print(json.dumps(worker(Path(args.worker), args.steps)))
        return 0
    if args.baseline is not None and not (args.baseline / "fewsam_jax").is_dir():
        parser.error(f"--baseline {args.baseline}: not a checkout of this project (no fewsam_jax/ folder)")
    from bench.sections import BENCH, save_report

    report = measure(args.steps, args.baseline.resolve() if args.baseline else None, args.baseline_label)
    report["command"] = "python -m bench.retrain " + " ".join(argv)
    save_report("retrain", report, render(report), START, END, root=args.out or BENCH)
    print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
