"""How much the demo's score depends on the training seed, per training variant.

The demo (``fewsam demo``: MNI152 template from nilearn's wheel, 4 labelled axial slices, one augmented copy
each, 600 steps) is one within-volume task; its Dice on the other 91 axial slices is what README quotes. This
harness trains the decoder on the demo's collection once per (variant, seed) and scores those slices, so a
single seed's result is not mistaken for a property of a variant.

``--variant NAME[:key=value,...]`` takes the options of the three configs as ``bench.fewshot`` does (its
``parse_variant``, then ``configs_from_overrides``); ``sam_only`` is :meth:`DecoderConfig.sam_only`. Rows
accumulate in ``bench/results/demo_seeds.json`` (a rerun of a variant and seed replaces its row); the section
"Demo: seeds" of ``bench/RESULTS.md`` is rewritten from it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.fewshot import parse_variant
from bench.sections import RESULTS_DIR, machine_info, save_report

START, END = "<!-- demo-seeds:start -->", "<!-- demo-seeds:end -->"


def run_row(work: Path, sam, name: str, overrides: dict, seed: int) -> dict:
    import fewsam_jax as fs
    from fewsam_jax import demo
    from fewsam_jax.label_maps import read_labels
    from fewsam_jax.fewshot.config import configs_from_overrides

    image_path, label_path = demo.mni_with_labels(work)
    volume = fs.load_volume(image_path)
    reference = read_labels(label_path)
    labelled = [int(s) for s in demo.pick_slices(reference, demo.LABELLED_SLICES, axis=2)]
    manifest = work / "manifest.json"
    manifest.write_text(json.dumps({"classes": {str(k): v for k, v in demo.CLASSES.items()}, "axis": 2,
                                    "support": [{"image": str(image_path), "labels": str(label_path),
                                                 "slices": labelled}]}))
    base = fs.DecoderConfig.sam_only() if name == "sam_only" else fs.DecoderConfig()
    config, training, inference = configs_from_overrides(
        {**overrides, "seed": seed}, decoder=base, training=fs.TrainConfig(augment=fs.AugmentConfig(copies=1)))
    load_before, started = os.getloadavg()[0], time.perf_counter()
    segmenter = fs.FewShotSegmenter.train(manifest, sam=sam, config=config, training=training, inference=inference,
                                          progress=False)
    train_seconds = time.perf_counter() - started
    pred = segmenter.segment(volume, progress=False)
    unlabelled = np.setdiff1d(np.arange(volume.shape[2]), labelled)
    scores = fs.metrics.evaluate(pred[:, :, unlabelled], reference[:, :, unlabelled], volume.spacing, demo.CLASSES,
                                 per_slice_axis=None)
    return {"variant": name, "overrides": overrides, "seed": seed, "labelled": labelled,
            "dice": {c: round(scores[c]["dice"], 3) for c in (*demo.CLASSES.values(), "mean")},
            "thresholds": segmenter.info["thresholds"], "train_seconds": round(train_seconds, 1),
            "load_average": [load_before, os.getloadavg()[0]], "date": datetime.date.today().isoformat()}


def markdown(report: dict) -> str:
    classes = ("white_matter", "grey_matter", "other_brain")
    lines = [f"## Demo: seeds (`python -m bench.demo_seeds`, last run {report['date']})", "",
             f"{report['machine'].get('cpu', '?')} ({report['machine'].get('cores', '?')} cores), LiteMedSAM. Dice on "
             "the demo's 91 unlabelled axial slices (MNI152, 4 labelled slices, one support copy each, 600 steps), "
             "one row per training seed; the last column of each variant's final row is its mean ± std over seeds. "
             "Load average before/after training in the JSON."
             + (" Rows with a `source` in the JSON came from this script's prototype (same procedure, scratch code)."
                if any("source" in r for r in report["rows"]) else ""), "",
             "| variant | seed | white matter | grey matter | other brain | mean | train s | mean over seeds |",
             "|---|---|---|---|---|---|---|---|"]
    by_variant: dict[str, list[dict]] = {}
    for row in sorted(report["rows"], key=lambda r: (r["variant"], r["seed"])):
        by_variant.setdefault(row["variant"], []).append(row)
    for name, rows in by_variant.items():
        means = np.asarray([r["dice"]["mean"] for r in rows])
        for i, r in enumerate(rows):
            summary = f"**{means.mean():.3f}** ± {means.std():.3f} ({len(rows)} seed{'s' * (len(rows) > 1)})" if i == len(rows) - 1 else ""
            lines.append(f"| {name} | {r['seed']} | " + " | ".join(f"{r['dice'][c]:.3f}" for c in classes)
                         + f" | {r['dice']['mean']:.3f} | {r['train_seconds']:.0f} | {summary} |")
    variants = {name: rows[0]["overrides"] for name, rows in by_variant.items()}
    lines += ["", "Variants (options over the defaults; `sam_only`: `DecoderConfig.sam_only()`): "
              + "; ".join(f"**{name}** `{json.dumps(o)}`" for name, o in variants.items())]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", default=None,
                        help="NAME or NAME:key=value,... (repeatable; default: the defaults, as 'default')")
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    args = parser.parse_args()
    variants = [parse_variant(v) for v in args.variant or ["default"]]
    from fewsam_jax.fewshot.config import configs_from_overrides
    from fewsam_jax.weights import load_model

    for name, overrides in variants:  # every variant's options checked before the model loads
        try:
            configs_from_overrides(overrides)
        except ValueError as err:
            raise SystemExit(f"--variant {name}: {err}") from None

    sam = load_model("litemedsam")
    path = RESULTS_DIR / "demo_seeds.json"
    with tempfile.TemporaryDirectory() as scratch:
        for name, overrides in variants:
            for seed in args.seeds:
                row = run_row(Path(scratch), sam, name, overrides, seed)
                print(json.dumps(row), flush=True)
                old = json.loads(path.read_text())["rows"] if path.exists() else []
                rows = [r for r in old if (r["variant"], r["seed"]) != (name, seed)] + [row]
                report = {"date": row["date"], "machine": machine_info(), "rows": rows}
                save_report("demo_seeds", report, f"{START}\n{markdown(report)}\n{END}", START, END)


if __name__ == "__main__":
    main()
