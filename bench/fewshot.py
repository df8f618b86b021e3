"""Few-shot segmentation of the shared hippocampus MRI (MSD Task04, manual labels).

A collection of N labelled axial slices (N = 5, 10, 20 by default) taken evenly from the labelled
extent of the first ``--train-volumes`` volumes, plus one label-free slice per volume; the decoder is
trained on it and segments ``--test-volumes`` other volumes, scored in 3D (Dice per class on each
volume's own grid). Embeddings go through the package's cache, so a rerun only trains and segments.

Run ``python bench/fewshot.py`` (``--test-volumes 40`` encodes ~1,400 slices: about an hour on the
2-core CPU the first time). Results: the "Few-shot hippocampus" section of ``bench/RESULTS.md`` and
``bench/results/fewshot.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from encode import machine_info, write_section  # bench/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hippocampus"  # default of --data
START, END = "<!-- fewshot:start -->", "<!-- fewshot:end -->"
CLASSES = {1: "anterior", 2: "posterior"}


def cases(data: Path) -> list[str]:
    return sorted(p.name[: -len("_0000.nii.gz")] for p in (data / "imagesTr").glob("*_0000.nii.gz"))


def pick_slices(labels: np.ndarray, count: int) -> list[int]:
    """``count`` labelled axial slices at the centres of equal parts of the labelled extent, plus one
    empty slice."""
    from fewsam_jax.io import get_slices

    present = np.flatnonzero(get_slices(labels, 2).any(axis=(1, 2)))
    chosen = present[((np.arange(count) + 0.5) * present.size / count).astype(int)]  # centres of equal bins
    empty = max(int(present[0]) - 2, 0)
    return sorted({int(s) for s in chosen} | {empty})


def manifest(data: Path, train: list[str], shots: int, folder: Path) -> Path:
    from fewsam_jax.io import load_volume

    per_volume = np.diff(np.linspace(0, shots, len(train) + 1).round().astype(int))
    support = []
    for name, count in zip(train, per_volume):
        labels = np.rint(load_volume(data / "labelsTr" / f"{name}.nii.gz").array).astype(int)
        support.append({"image": str(data / "imagesTr" / f"{name}_0000.nii.gz"),
                        "labels": str(data / "labelsTr" / f"{name}.nii.gz"),
                        "slices": pick_slices(labels, int(count))})
    path = folder / f"hippocampus_{shots}.json"
    path.write_text(json.dumps({"classes": {str(k): v for k, v in CLASSES.items()}, "axis": 2, "support": support}))
    return path


def parse_variant(spec: str) -> tuple[str, dict]:
    """``NAME`` or ``NAME:key=value,key=value`` -> (name, overrides of FewShotConfig fields or ``augment``)."""
    name, _, body = spec.partition(":")
    overrides = {}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value) if value not in ("", "None") else None
    return name, overrides


def score(segmenter, volumes: list, cache) -> tuple[np.ndarray, list[float]]:
    """3D Dice per (volume, class) and segmentation seconds per volume (embeddings cached first)."""
    from fewsam_jax import metrics

    scores, seconds = [], []
    for volume, truth in volumes:
        segmenter.segment(volume, cache=cache, progress=False)  # embeds (cached) once
        started = time.perf_counter()
        pred = segmenter.segment(volume, cache=cache, progress=False)
        seconds.append(time.perf_counter() - started)
        result = metrics.evaluate(pred, truth, volume.spacing, CLASSES, per_slice_axis=None)
        scores.append([result[c]["dice"] for c in CLASSES.values()])
    return np.asarray(scores), seconds


def run(args: argparse.Namespace) -> dict:
    import jax

    from fewsam_jax.fewshot import AugmentConfig, FewShotConfig, FewShotSegmenter
    from fewsam_jax.io import load_volume
    from fewsam_jax.weights import load_model

    data = args.data.resolve()  # manifests hold absolute paths
    names = cases(data)
    train = names[: args.train_volumes]
    validation = names[args.train_volumes:][: args.val_volumes]
    test = names[args.train_volumes + args.val_volumes:][: args.test_volumes]

    def load(name):
        volume = load_volume(data / "imagesTr" / f"{name}_0000.nii.gz")
        return volume, np.rint(load_volume(data / "labelsTr" / f"{name}.nii.gz").array).astype(int)

    val_volumes, test_volumes = [load(n) for n in validation], [load(n) for n in test]
    sam = load_model("litemedsam")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name, overrides in map(parse_variant, args.variant):
            copies = overrides.pop("augment", args.augment)
            config = FewShotConfig(**{"seed": args.seed, **({"steps": args.steps} if args.steps else {}), **overrides})
            augment = AugmentConfig(copies=copies, seed=args.seed)
            for shots in args.shots:
                segmenter = FewShotSegmenter.train(manifest(data, train, shots, Path(scratch)), sam=sam, config=config,
                                                   augment=augment, cache=args.cache, progress=False)
                test_scores, seconds = score(segmenter, test_volumes, args.cache)
                val_scores, _ = score(segmenter, val_volumes, args.cache) if val_volumes else (np.zeros((0, 2)), [])
                rows.append({
                    "variant": name,
                    "overrides": {**overrides, "augment": copies},
                    "labelled_slices": segmenter.info["labelled_slices"],
                    "positive_slices": shots,
                    "dice_mean": test_scores.mean(axis=0).tolist(),
                    "dice_std": test_scores.std(axis=0).tolist(),
                    "val_dice_mean": val_scores.mean(axis=0).tolist() if len(val_scores) else None,
                    "train_seconds": segmenter.info["train_seconds"],
                    "thresholds": segmenter.info["thresholds"],
                    "segment_seconds_per_volume": float(np.mean(seconds)),
                    "slices_per_volume": float(np.mean([v.shape[2] for v, _ in test_volumes])),
                })
                print(json.dumps(rows[-1]), flush=True)
    return {
        "date": datetime.date.today().isoformat(),
        "machine": {**machine_info(), "jax_device": jax.devices()[0].device_kind},
        "command": "python bench/fewshot.py " + " ".join(args.argv),
        "train_volumes": train,
        "val_volumes": len(validation),
        "test_volumes": len(test),
        "fewshot": dataclasses.asdict(FewShotConfig(seed=args.seed, **({"steps": args.steps} if args.steps else {}))),
        "augment": dataclasses.asdict(AugmentConfig(copies=args.augment, seed=args.seed)),
        "rows": rows,
        "load_average": os.getloadavg()[0],
    }


def markdown(report: dict) -> str:
    machine = report["machine"]
    lines = [
        "## Few-shot hippocampus",
        "",
        f"{report['date']}, {machine.get('cpu', '?')} ({machine.get('cores', '?')} cores"
        f"{', JAX on ' + machine['jax_device'] if machine.get('jax_device', 'cpu') != 'cpu' else ''}), LiteMedSAM, "
        f"decoder trained {report['fewshot']['steps']} steps, {report['augment']['copies']} augmented copies per "
        f"labelled slice (unless a variant says otherwise). Support from {len(report['train_volumes'])} volumes, "
        f"scored in 3D on {report['test_volumes']} other volumes (mean ± std over volumes)"
        + (f"; variants compared on {report['val_volumes']} further validation volumes" if report.get("val_volumes")
           else "")
        + f". `{report.get('command', 'python bench/fewshot.py')}`."
        + (f" Load average (1 min) at the end: {report['load_average']:.1f}." if "load_average" in report else ""),
        "",
        "| variant | positive slices | labelled slices (incl. empty) | Dice anterior | Dice posterior | mean Dice | "
        "validation mean Dice | train s | segment s / volume | segment s / 100 slices |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        (a, p), (sa, sp) = row["dice_mean"], row["dice_std"]
        val = f"{np.mean(row['val_dice_mean']):.3f}" if row.get("val_dice_mean") else "-"
        lines.append(
            f"| {row.get('variant', 'default')} | {row['positive_slices']} | {row['labelled_slices']} | "
            f"{a:.3f} ± {sa:.3f} | {p:.3f} ± {sp:.3f} | {(a + p) / 2:.3f} | {val} | {row['train_seconds']:.1f} | "
            f"{row['segment_seconds_per_volume']:.2f} | "
            f"{100 * row['segment_seconds_per_volume'] / row['slices_per_volume']:.2f} |"
        )
    variants = {row.get("variant", "default"): row.get("overrides", {}) for row in report["rows"]}
    if len(variants) > 1:
        lines += ["", "Variants (changes from the defaults): " + "; ".join(
            f"**{name}** {json.dumps(overrides)}" for name, overrides in variants.items())]
    lines += ["", "Reference: nnU-Net, fully supervised on all training cases: ~0.90 / 0.89 (Decathlon test set)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shots", type=lambda s: [int(x) for x in s.split(",")], default=[5, 10, 20])
    parser.add_argument("--variant", action="append",
                        help="NAME or NAME:key=value,... (FewShotConfig fields or augment=COPIES); repeatable")
    parser.add_argument("--train-volumes", type=int, default=5)
    parser.add_argument("--val-volumes", type=int, default=0, help="volumes after the training ones to compare "
                        "variants on (the test volumes follow them)")
    parser.add_argument("--test-volumes", type=int, default=40)
    parser.add_argument("--steps", type=int, help="decoder training steps (default: FewShotConfig's)")
    parser.add_argument("--augment", type=int, default=0, help="augmented copies per labelled slice")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", help="embedding cache folder (default $FEWSAM_HOME/embeddings)")
    parser.add_argument("--data", type=Path, default=DATA, help="the hippocampus folder (imagesTr/, labelsTr/)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fewshot.json")
    parser.add_argument("--results-md", type=Path, default=ROOT / "bench" / "RESULTS.md",
                        help="Markdown file whose few-shot section is rewritten")
    args = parser.parse_args()
    args.argv = sys.argv[1:]
    args.variant = args.variant or ["default"]
    if not (args.data / "imagesTr").is_dir():
        raise SystemExit(f"needs the shared hippocampus data (imagesTr/, labelsTr/) at {args.data}")
    report = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    write_section(args.results_md, f"{START}\n{markdown(report)}\n{END}", START, END)


if __name__ == "__main__":
    main()
