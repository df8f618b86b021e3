"""Does SAM's frozen embedding help a pixel model trained on the same few slices?

The direct test of what bounds the few-shot method on the hippocampus: the U-Net baseline (``baselines.unet``,
default config) trained on exactly the labelled slices of ``bench.fewshot``'s draw, once on the image alone and
once with LiteMedSAM's cached embedding as extra input: projected onto its first ``--pca`` principal
components (fitted on the support's cells, unsupervised), resampled from the embedding grid to the slice grid
(``fewshot.infer.logits_to_native``, the map the decoder's logits take) and concatenated at the chosen U-Net
levels (``--levels``: 0 = input resolution; 2,3 = 1/4 and 1/8). Everything else (steps, augmentation, seed)
is the baseline's, so the difference is what the embedding adds. Scored in 3D on the validation volumes of
``bench.fewshot`` (the test split is not used: this is a screen, not a candidate default).

Rows accumulate in ``bench/results/sam_features.json``; its section of ``bench/RESULTS.md`` is rewritten.

    python -m bench.sam_features --shots 5,10,20 --levels none --levels 0 --levels 2,3
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.fewshot import DATA, DRAWS, PHASES, cases, manifest, read_labels, score_volume
from bench.sections import RESULTS_DIR, machine_info, save_report

START, END = "<!-- sam-features:start -->", "<!-- sam-features:end -->"


def pca_basis(embeddings: list[np.ndarray], slice_shapes: list[tuple[int, int]], components: int):
    """Mean (C,), basis (C, P) and per-component scale (P,) of the embedding cells that cover the slices
    (the padding cells of the encoder's square frame are left out)."""
    from fewsam_jax.transforms import resized_shape

    cells = []
    for embedding, shape in zip(embeddings, slice_shapes):
        h, w = resized_shape(*shape, embedding.shape[0])
        cells.append(embedding[:h, :w].reshape(-1, embedding.shape[-1]))
    cells = np.concatenate(cells).astype(np.float32)
    mean = cells.mean(axis=0)
    _, singular, vt = np.linalg.svd(cells - mean, full_matrices=False)
    return mean, vt[:components].T, singular[:components] / np.sqrt(len(cells))


def slice_features(embeddings: np.ndarray, slice_shape: tuple[int, int], mean, basis, scale) -> np.ndarray:
    """(N, E, E, C) embeddings -> (N, H, W, P) whitened principal components on the slice grid."""
    from fewsam_jax.fewshot.infer import logits_to_native

    projected = ((embeddings.astype(np.float32) - mean) @ basis) / scale  # (N, E, E, P)
    return np.moveaxis(logits_to_native(np.moveaxis(projected, -1, 1), slice_shape), 1, -1)


def run_row(shots: int, levels: tuple[int, ...] | None, components: int, draw: str, seed: int, volumes, sam,
            cache) -> dict:
    """Train (image alone when ``levels`` is None) and score one row."""
    from bench.baselines import UNetConfig, predict_unet, train_unet
    from fewsam_jax.cache import embed_volume
    from fewsam_jax.fewshot import load_collection
    from fewsam_jax.fewshot.collection import load_support_item
    from fewsam_jax.io import get_slices, stack_slices
    from fewsam_jax.preprocess import Intensity

    intensity = Intensity.parse("percentile")
    names = cases(DATA)
    images, labels, embeddings = [], [], []
    with tempfile.TemporaryDirectory() as scratch:
        collection = load_collection(manifest(DATA, names[DRAWS[draw]], shots, Path(scratch)))
        for item in collection.support:
            volume, label_slices = load_support_item(item, 2)
            images += list(get_slices(intensity.apply(volume.array), 2)[list(item.slices)])
            labels += list(np.clip(label_slices, 0, 2).astype(np.int32))
            if levels is not None:
                entry = embed_volume(volume, sam, axis=2, intensity=intensity, cache=cache, slices=list(item.slices),
                                     progress=False)
                embeddings += list(entry.load(list(item.slices)))
    config, features, project = UNetConfig(), None, None
    if levels is not None:
        mean, basis, scale = pca_basis(embeddings, [im.shape for im in images], components)
        project = lambda emb, shape: slice_features(emb, shape, mean, basis, scale)
        features = [project(e[None], im.shape)[0] for e, im in zip(embeddings, images)]
        config = UNetConfig(feature_channels=components, feature_levels=levels)
    load_before, started = os.getloadavg()[0], time.perf_counter()
    model, losses = train_unet(images, labels, 3, config, seed=seed, progress=False, features=features)
    train_seconds = time.perf_counter() - started
    per_volume = []
    for volume, truth in volumes:
        slices = get_slices(intensity.apply(volume.array), 2)
        extra = None
        if project is not None:
            entry = embed_volume(volume, sam, axis=2, intensity=intensity, cache=cache, progress=False)
            extra = list(project(entry.load(), slices.shape[1:]))
        pred = stack_slices(np.stack(predict_unet(model, list(slices), extra)), 2)
        per_volume.append(score_volume(pred, truth, volume.spacing))
    dice = np.asarray([v["dice"] for v in per_volume])
    return {"levels": None if levels is None else list(levels), "components": components if levels else 0,
            "positive_slices": shots, "draw": draw, "seed": seed, "volumes": len(volumes),
            "dice": dice.mean(axis=0).tolist(), "mean_dice": float(dice.mean()),
            "volume_ratio": np.mean([v["volume_ratio"] for v in per_volume], axis=0).tolist(),
            "final_loss": losses[-1], "train_seconds": train_seconds,
            "load_average": [load_before, os.getloadavg()[0]]}


def markdown(report: dict) -> str:
    lines = [f"## Does SAM's embedding help a pixel model? (`python -m bench.sam_features`, last run {report['date']})", "",
             f"{report['machine'].get('cpu', '?')} ({report['machine'].get('cores', '?')} cores). The U-Net baseline "
             "(default config) on exactly the labelled slices of `bench.fewshot`'s draw, on the image alone and with "
             "LiteMedSAM's embedding (whitened principal components fitted on the support's cells, resampled to the "
             "slice grid) concatenated at the given levels (0: input resolution; 2,3: 1/4 and 1/8). 3D Dice on the "
             "validation volumes. Load average before/after training in the JSON.", "",
             "| embedding at levels | components | positive slices | draw | seed | Dice anterior | Dice posterior | "
             "mean Dice | volume ratio ant / post | train s |", "|---|---|---|---|---|---|---|---|---|---|"]
    rows = sorted(report["rows"], key=lambda r: (r["positive_slices"], r["draw"], r["seed"], str(r["levels"])))
    for r in rows:
        levels = "none (image only)" if r["levels"] is None else ",".join(map(str, r["levels"]))
        lines.append(f"| {levels} | {r['components']} | {r['positive_slices']} | {r['draw']} | {r['seed']} | "
                     f"{r['dice'][0]:.3f} | {r['dice'][1]:.3f} | **{r['mean_dice']:.3f}** | "
                     f"{r['volume_ratio'][0]:.2f} / {r['volume_ratio'][1]:.2f} | {r['train_seconds']:.0f} |")
    return "\n".join(lines)


def parse_levels(spec: str) -> tuple[int, ...] | None:
    return None if spec == "none" else tuple(int(v) for v in spec.split(","))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shots", type=lambda s: [int(x) for x in s.split(",")], default=[20])
    parser.add_argument("--levels", action="append", type=parse_levels,
                        help="'none' (image only) or comma-separated U-Net levels; repeatable (default: none, 0)")
    parser.add_argument("--components", type=int, default=32, help="principal components of the embedding fed")
    parser.add_argument("--draws", type=lambda s: s.split(","), default=["A"])
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0])
    parser.add_argument("--cache", help="embedding cache folder (default $FEWSAM_HOME/embeddings)")
    args = parser.parse_args()
    levels_list = args.levels or [None, (0,)]
    if not (DATA / "imagesTr").is_dir():
        raise SystemExit(f"needs the shared hippocampus data (imagesTr/, labelsTr/) at {DATA}")
    import jax

    from fewsam_jax.io import load_volume
    from fewsam_jax.weights import load_model

    names = cases(DATA)
    volumes = [(load_volume(DATA / "imagesTr" / f"{n}_0000.nii.gz"), read_labels(DATA / "labelsTr" / f"{n}.nii.gz"))
               for n in names[PHASES["validation"]]]
    sam = load_model("litemedsam")
    out = RESULTS_DIR / "sam_features.json"
    report = json.loads(out.read_text()) if out.exists() else {"rows": []}
    key = lambda r: (str(r["levels"]), r["components"], r["positive_slices"], r["draw"], r["seed"])
    for shots in args.shots:
        for draw in args.draws:
            for seed in args.seeds:
                for levels in levels_list:
                    row = run_row(shots, levels, args.components, draw, seed, volumes, sam, args.cache)
                    row["command"] = "python -m bench.sam_features " + " ".join(sys.argv[1:])
                    print(json.dumps(row), flush=True)
                    report["rows"] = [r for r in report["rows"] if key(r) != key(row)] + [row]
                    report.update(date=datetime.date.today().isoformat(),
                                  machine={**machine_info(), "jax_device": jax.devices()[0].device_kind})
                    save_report("sam_features", report, f"{START}\n{markdown(report)}\n{END}", START, END)


if __name__ == "__main__":
    main()
