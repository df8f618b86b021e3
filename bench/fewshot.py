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
import tempfile
import time
from pathlib import Path

import numpy as np

from encode import machine_info, write_section  # bench/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hippocampus"
START, END = "<!-- fewshot:start -->", "<!-- fewshot:end -->"
CLASSES = {1: "anterior", 2: "posterior"}


def cases() -> list[str]:
    return sorted(p.name[: -len("_0000.nii.gz")] for p in (DATA / "imagesTr").glob("*_0000.nii.gz"))


def pick_slices(labels: np.ndarray, count: int) -> list[int]:
    """``count`` labelled axial slices at the centres of equal parts of the labelled extent, plus one
    empty slice."""
    from fewsam_jax.io import get_slices

    present = np.flatnonzero(get_slices(labels, 2).any(axis=(1, 2)))
    chosen = present[((np.arange(count) + 0.5) * present.size / count).astype(int)]  # centres of equal bins
    empty = max(int(present[0]) - 2, 0)
    return sorted({int(s) for s in chosen} | {empty})


def manifest(train: list[str], shots: int, folder: Path) -> Path:
    from fewsam_jax.io import load_volume

    per_volume = np.diff(np.linspace(0, shots, len(train) + 1).round().astype(int))
    support = []
    for name, count in zip(train, per_volume):
        labels = np.rint(load_volume(DATA / "labelsTr" / f"{name}.nii.gz").array).astype(int)
        support.append({"image": str(DATA / "imagesTr" / f"{name}_0000.nii.gz"),
                        "labels": str(DATA / "labelsTr" / f"{name}.nii.gz"),
                        "slices": pick_slices(labels, int(count))})
    path = folder / f"hippocampus_{shots}.json"
    path.write_text(json.dumps({"classes": {str(k): v for k, v in CLASSES.items()}, "axis": 2, "support": support}))
    return path


def run(args: argparse.Namespace) -> dict:
    from fewsam_jax import metrics
    from fewsam_jax.fewshot import AugmentConfig, FewShotConfig, FewShotSegmenter
    from fewsam_jax.io import load_volume
    from fewsam_jax.weights import load_model

    names = cases()
    train, test = names[: args.train_volumes], names[args.train_volumes:][: args.test_volumes]
    sam = load_model("litemedsam")
    config = FewShotConfig(seed=args.seed, **({"steps": args.steps} if args.steps else {}))
    augment = AugmentConfig(copies=args.augment, seed=args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for shots in args.shots:
            segmenter = FewShotSegmenter.train(manifest(train, shots, Path(scratch)), sam=sam, config=config,
                                               augment=augment, cache=args.cache)
            scores, seconds, slice_counts = [], [], []
            for name in test:
                volume = load_volume(DATA / "imagesTr" / f"{name}_0000.nii.gz")
                slice_counts.append(volume.shape[2])
                truth = np.rint(load_volume(DATA / "labelsTr" / f"{name}.nii.gz").array).astype(int)
                segmenter.segment(volume, cache=args.cache, progress=False)  # embeds (cached) once
                started = time.perf_counter()
                pred = segmenter.segment(volume, cache=args.cache, progress=False)
                seconds.append(time.perf_counter() - started)
                result = metrics.evaluate(pred, truth, volume.spacing, CLASSES, per_slice_axis=None)
                scores.append([result[c]["dice"] for c in CLASSES.values()])
            scores = np.asarray(scores)
            rows.append({
                "labelled_slices": segmenter.info["labelled_slices"],
                "positive_slices": shots,
                "dice_mean": scores.mean(axis=0).tolist(),
                "dice_std": scores.std(axis=0).tolist(),
                "train_seconds": segmenter.info["train_seconds"],
                "segment_seconds_per_volume": float(np.mean(seconds)),
                "slices_per_volume": float(np.mean(slice_counts)),
            })
            print(json.dumps(rows[-1]), flush=True)
    return {
        "date": datetime.date.today().isoformat(),
        "machine": machine_info(),
        "train_volumes": train,
        "test_volumes": len(test),
        "fewshot": dataclasses.asdict(config),
        "augment": dataclasses.asdict(augment),
        "rows": rows,
        "load_average": os.getloadavg()[0],
    }


def markdown(report: dict) -> str:
    machine = report["machine"]
    lines = [
        "## Few-shot hippocampus",
        "",
        f"{report['date']}, {machine.get('cpu', '?')} ({machine.get('cores', '?')} cores), LiteMedSAM, "
        f"decoder trained {report['fewshot']['steps']} steps, {report['augment']['copies']} augmented copies per "
        f"labelled slice. Support from {len(report['train_volumes'])} volumes, scored in 3D on "
        f"{report['test_volumes']} other volumes. `python bench/fewshot.py --test-volumes {report['test_volumes']}`."
        + (f" Load average (1 min) at the end: {report['load_average']:.1f}." if "load_average" in report else ""),
        "",
        "| positive slices | labelled slices (incl. empty) | Dice anterior | Dice posterior | mean Dice | "
        "train s | segment s / volume |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        (a, p), (sa, sp) = row["dice_mean"], row["dice_std"]
        lines.append(
            f"| {row['positive_slices']} | {row['labelled_slices']} | {a:.3f} ± {sa:.3f} | {p:.3f} ± {sp:.3f} | "
            f"{(a + p) / 2:.3f} | {row['train_seconds']:.0f} | {row['segment_seconds_per_volume']:.2f} |"
        )
    lines += ["", "Reference: nnU-Net, fully supervised on all training cases: ~0.90 / 0.89 (Decathlon test set)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shots", type=lambda s: [int(x) for x in s.split(",")], default=[5, 10, 20])
    parser.add_argument("--train-volumes", type=int, default=5)
    parser.add_argument("--test-volumes", type=int, default=40)
    parser.add_argument("--steps", type=int, help="decoder training steps (default: FewShotConfig's)")
    parser.add_argument("--augment", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", help="embedding cache folder (default $FEWSAM_HOME/embeddings)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fewshot.json")
    args = parser.parse_args()
    if not DATA.exists():
        raise SystemExit(f"needs the shared hippocampus data at {DATA}")
    report = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    write_section(ROOT / "bench" / "RESULTS.md", f"{START}\n{markdown(report)}\n{END}", START, END)


if __name__ == "__main__":
    main()
