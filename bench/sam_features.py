"""Does SAM's frozen embedding help a pixel model trained on the same few slices?

The direct test of what bounds the few-shot method on the hippocampus: the U-Net baseline (``baselines.unet``,
default config) trained on exactly the labelled slices of ``bench.fewshot``'s draw, once on the image alone and
once with LiteMedSAM's cached embedding as extra input: projected onto its first ``--pca`` principal
components (fitted on the support's cells, unsupervised), resampled from the embedding grid to the slice grid
(``fewshot.infer.logits_to_native``, the map the decoder's logits take) and concatenated at the chosen U-Net
levels (``--levels``: 0 = input resolution; 2,3 = 1/4 and 1/8). Everything else (steps, augmentation, seed)
is the baseline's, so the difference is what the embedding adds. Scored in 3D on the validation volumes of
``bench.fewshot`` (the test split is not used: this is a screen, not a candidate default).

``--source`` screens an earlier feature map of the TinyViT encoder instead of the final embedding (the quality
issue's "screen early features with a convolutional head, not per cell"): ``patch`` (the patch embedding, 256 x 256
x 64 in the encoder's frame), ``stage0`` (the first stage's output after its patch merging, 128 x 128 x 128) or
``stage1`` (64 x 64 x 160). They are not cached: the encoder's front runs on every slice the row needs. ``--axis``
picks the plane of the labelled and scored slices (2, axial, as in the first rows; 0, sagittal, the default
method's plane).

Rows accumulate in ``bench/results/sam_features.json``; its section of ``bench/RESULTS.md`` is rewritten.

    python -m bench.sam_features --shots 5,10,20 --levels none --levels 0 --levels 2,3
    python -m bench.sam_features --axis 0 --shots 5,10,20 --levels none --levels 0 --source stage0
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


# --source: which encoder feature map is screened, and how many of TinyViT's layers run after its patch embedding
# to reach it (None: the final embedding, read from the embedding cache)
SOURCES = {"embedding": None, "patch": 0, "stage0": 1, "stage1": 2}


class EncoderFront:
    """A TinyViT encoder run up to one of :data:`SOURCES` (not cached: this is a screen).

    ``front(slices)``: (N, H, W) slices in [0, 1] of one size -> (N, G, G, D) float32 feature maps in the encoder's
    square frame (the slice resized to fit, padded at the bottom and right, as for the embedding)."""

    def __init__(self, sam, source: str, batch: int = 4):
        import jax
        import jax.numpy as jnp
        from flax import nnx

        from fewsam_jax.transforms import prepare_images

        graphdef, self._state = nnx.split(sam.image_encoder)
        layers, cfg = SOURCES[source], sam.config

        def run(state, images):
            encoder = nnx.merge(graphdef, state)
            rgb = jnp.broadcast_to(images[..., None] * 255.0, (*images.shape, 3))
            x = encoder.patch_embed(prepare_images(rgb, cfg))
            for layer in list(encoder.layers)[:layers]:
                x = layer(x)
            return x

        self._run, self.batch = jax.jit(run), batch

    def __call__(self, slices: np.ndarray) -> np.ndarray:
        slices = np.asarray(slices, np.float32)
        out = []
        for start in range(0, len(slices), self.batch):
            chunk = slices[start:start + self.batch]
            padded = np.zeros((self.batch, *chunk.shape[1:]), np.float32)  # one compiled shape per slice size
            padded[:len(chunk)] = chunk
            out.append(np.asarray(self._run(self._state, padded))[:len(chunk)])
        return np.concatenate(out)


def run_row(shots: int, levels: tuple[int, ...] | None, components: int, draw: str, seed: int, volumes, sam,
            cache, source: str = "embedding", axis: int = 2) -> dict:
    """Train (image alone when ``levels`` is None) and score one row: ``source``'s feature map (:data:`SOURCES`)
    fed at ``levels``; slices along ``axis``."""
    from bench.baselines import UNetConfig, predict_unet, train_unet
    from fewsam_jax.cache import embed_volume
    from fewsam_jax.fewshot import load_collection
    from fewsam_jax.fewshot.collection import load_support_item
    from fewsam_jax.io import get_slices, stack_slices
    from fewsam_jax.preprocess import Intensity

    intensity = Intensity.parse("percentile")
    front = EncoderFront(sam, source) if levels is not None and source != "embedding" else None

    def feature_maps(volume, slices: np.ndarray, index: list[int] | None = None) -> np.ndarray:
        """The screened map of ``slices`` (the volume's slices ``index``, or all of them)."""
        if front is not None:
            return front(slices)
        entry = embed_volume(volume, sam, axis=axis, intensity=intensity, cache=cache, slices=index, progress=False)
        return entry.load(index)

    names = cases(DATA)
    images, labels, embeddings = [], [], []
    with tempfile.TemporaryDirectory() as scratch:
        collection = load_collection(manifest(DATA, names[DRAWS[draw]], shots, Path(scratch), axis=axis))
        for item in collection.support:
            volume, label_slices = load_support_item(item, axis)
            picked = get_slices(intensity.apply(volume.array), axis)[list(item.slices)]
            images += list(picked)
            labels += list(np.clip(label_slices, 0, 2).astype(np.int32))
            if levels is not None:
                embeddings += list(feature_maps(volume, picked, list(item.slices)))
    config, features, project = UNetConfig(), None, None
    if levels is not None:
        mean, basis, scale = pca_basis(embeddings, [im.shape for im in images], components)
        project = lambda emb, shape: slice_features(emb, shape, mean, basis, scale)
        features = [project(e[None], im.shape)[0] for e, im in zip(embeddings, images)]
        del embeddings
        config = UNetConfig(feature_channels=components, feature_levels=levels)
    load_before, started = os.getloadavg()[0], time.perf_counter()
    model, losses = train_unet(images, labels, 3, config, seed=seed, progress=False, features=features)
    train_seconds = time.perf_counter() - started
    per_volume = []
    for volume, truth in volumes:
        slices = get_slices(intensity.apply(volume.array), axis)
        extra = None
        if project is not None:
            extra = list(project(feature_maps(volume, slices), slices.shape[1:]))
        pred = stack_slices(np.stack(predict_unet(model, list(slices), extra)), axis)
        per_volume.append(score_volume(pred, truth, volume.spacing))
    dice = np.asarray([v["dice"] for v in per_volume])
    return {"levels": None if levels is None else list(levels), "components": components if levels else 0,
            "source": source if levels else None, "axis": axis,
            "positive_slices": shots, "draw": draw, "seed": seed, "volumes": len(volumes),
            "dice": dice.mean(axis=0).tolist(), "mean_dice": float(dice.mean()),
            "volume_ratio": np.mean([v["volume_ratio"] for v in per_volume], axis=0).tolist(),
            "final_loss": losses[-1], "train_seconds": train_seconds,
            "load_average": [load_before, os.getloadavg()[0]]}


def markdown(report: dict) -> str:
    lines = [f"## Does SAM's embedding help a pixel model? (`python -m bench.sam_features`, last run {report['date']})", "",
             f"{report['machine'].get('cpu', '?')} ({report['machine'].get('cores', '?')} cores). The U-Net baseline "
             "(default config) on exactly the labelled slices of `bench.fewshot`'s draw, on the image alone and with "
             "LiteMedSAM's embedding, or an earlier feature map of its encoder (*source*: `patch`, the patch "
             "embedding at 256 x 256; `stage0`, the first stage's output at 128 x 128; `stage1`, 64 x 64), as "
             "whitened principal components fitted on the support's cells, resampled to the slice grid, concatenated "
             "at the given levels (0: input resolution; 2,3: 1/4 and 1/8). Slices along the given axis (2 axial, 0 "
             "sagittal). 3D Dice on the validation volumes. Load average before/after training in the JSON.", "",
             "| axis | source | at levels | components | positive slices | draw | seed | Dice anterior | "
             "Dice posterior | mean Dice | volume ratio ant / post | train s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = sorted(report["rows"], key=lambda r: (r.get("axis", 2), r["positive_slices"], r["draw"], r["seed"],
                                                 str(r.get("source")), str(r["levels"])))
    for r in rows:
        levels = "none (image only)" if r["levels"] is None else ",".join(map(str, r["levels"]))
        source = "-" if r["levels"] is None else r.get("source") or "embedding"
        lines.append(f"| {r.get('axis', 2)} | {source} | {levels} | {r['components']} | {r['positive_slices']} | "
                     f"{r['draw']} | {r['seed']} | "
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
    parser.add_argument("--components", type=int, default=32, help="principal components of the feature map fed")
    parser.add_argument("--source", choices=tuple(SOURCES), default="embedding",
                        help="the encoder's feature map screened: the cached final embedding (default) or an "
                             "earlier one, computed on the fly")
    parser.add_argument("--axis", type=int, choices=(0, 1, 2), default=2,
                        help="plane of the labelled and scored slices (default 2, axial; 0 sagittal)")
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
    key = lambda r: (str(r["levels"]), r["components"], (r.get("source") or "embedding") if r["levels"] else None,
                     r.get("axis", 2), r["positive_slices"], r["draw"], r["seed"])
    for shots in args.shots:
        for draw in args.draws:
            for seed in args.seeds:
                for levels in levels_list:
                    row = run_row(shots, levels, args.components, draw, seed, volumes, sam, args.cache,
                                  source=args.source, axis=args.axis)
                    row["command"] = "python -m bench.sam_features " + " ".join(sys.argv[1:])
                    print(json.dumps(row), flush=True)
                    report["rows"] = [r for r in report["rows"] if key(r) != key(row)] + [row]
                    report.update(date=datetime.date.today().isoformat(),
                                  machine={**machine_info(), "jax_device": jax.devices()[0].device_kind})
                    save_report("sam_features", report, f"{START}\n{markdown(report)}\n{END}", START, END)


if __name__ == "__main__":
    main()
