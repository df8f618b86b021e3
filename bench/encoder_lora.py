"""Screen: adapt LiteMedSAM's last encoder stage with LoRA while training the few-shot decoder.

The frozen final embedding is what bounds the few-shot decoder on new volumes (bench/RESULTS.md, "Fourth
round"). This harness measures the one lever that changes the embedding and still keeps the cache, the library's
decoder option ``encoder_lora_rank`` (:mod:`fewsam_jax.modeling.encoder_stage`): the input of TinyViT's last stage
is cached beside each slice's embedding; training runs that stage and the neck on each step's (warped, cropped)
target slices, with low-rank adapters (``flax.nnx.LoRA``, B initialised to zero, so training starts from the
frozen encoder) on the chosen linear layers of its blocks, trained together with the default few-shot decoder.
Prompts (the support's region prototypes) stay on the cached frozen embeddings; at inference every slice of a new
volume runs the adapted stage.

``--ranks 0`` is the default decoder with the frozen encoder (the baseline every row is compared with). Splits,
support draws and scores are ``bench.fewshot``'s; every row is ``FewShotSegmenter.train`` then ``segment``, with
logits thresholded at 0 (``calibrate_threshold=False``), so rows compare with each other, not with
``bench.fewshot``'s calibrated rows. Embeddings and stage inputs go through the package's cache (``--cache``).

Rows accumulate in ``bench/results/encoder_lora.json``; the section "Adapting the encoder's last stage" of
``bench/RESULTS.md`` is rewritten from it.
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

from bench.fewshot import DATA, DRAWS, PHASES, cases, manifest, read_labels, score_volume
from bench.sections import RESULTS_DIR, machine_info, save_report
from fewsam_jax.config import TINYVIT_BLOCK_LINEARS

START, END = "<!-- encoder-lora:start -->", "<!-- encoder-lora:end -->"


def configs(rank: int, targets: tuple[str, ...], seed: int, steps: int):
    """The library configs of a row: the default decoder with ``rank`` (0: off) LoRA on ``targets``, ``steps``
    of training from ``seed``, logits at threshold 0."""
    from fewsam_jax.fewshot import DecoderConfig, InferenceConfig, TrainConfig

    return (DecoderConfig(encoder_lora_rank=rank, encoder_lora_targets=targets), TrainConfig(seed=seed, steps=steps),
            InferenceConfig(calibrate_threshold=False))


def run_row(args, sam, intensity, rank: int, targets: tuple[str, ...], draw: str, seed: int, shots: int) -> dict:
    """Train on ``draw``'s ``shots``-slice collection and score the validation volumes in 3D."""
    from fewsam_jax.fewshot import FewShotSegmenter
    from fewsam_jax.io import load_volume

    names = cases(args.data)
    config, training, inference = configs(rank, targets, seed, args.steps)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        segmenter = FewShotSegmenter.train(manifest(args.data, names[DRAWS[draw]], shots, Path(scratch)), sam,
                                           config, training, inference, intensity, cache=args.cache, progress=False)
    started, per_volume, total = time.perf_counter(), [], 0
    for name in names[PHASES["validation"]][: args.volumes]:
        volume = load_volume(args.data / "imagesTr" / f"{name}_0000.nii.gz")
        pred = segmenter.segment(volume, cache=args.cache, progress=False)
        per_volume.append(score_volume(pred, read_labels(args.data / "labelsTr" / f"{name}.nii.gz"), volume.spacing))
        total += volume.shape[2]
    dice = np.asarray([v["dice"] for v in per_volume])
    info = segmenter.info
    return {"rank": rank, "targets": list(targets) if rank else [], "draw": draw, "seed": seed, "positive_slices": shots,
            "steps": args.steps, "volumes": len(per_volume), "dice": dice.mean(axis=0).tolist(),
            "mean_dice": float(dice.mean()),
            "volume_ratio": np.asarray([v["volume_ratio"] for v in per_volume]).mean(axis=0).tolist(),
            "train_seconds": info["train_seconds"], "loss_last": info["loss_last"],
            "segment_seconds_per_100_slices": round(100 * (time.perf_counter() - started) / max(total, 1), 1),
            "load_average": [load_before, os.getloadavg()[0]], "date": datetime.date.today().isoformat()}


def markdown(report: dict) -> str:
    lines = [
        f"## Adapting the encoder's last stage (`python -m bench.encoder_lora`, last run {report['date']})", "",
        f"{report['machine'].get('cpu', '?')} ({report['machine'].get('cores', '?')} cores), LiteMedSAM. The default "
        "few-shot decoder trained with LoRA on TinyViT's last stage (rank, adapted layers of both blocks) against "
        "the same code with the frozen encoder (rank 0). Validation volumes, `bench.fewshot`'s draws; logits "
        "thresholded at 0 (no calibration) in every row. Load average before/after training in the JSON; other jobs "
        "shared the CPU, so seconds compare only roughly.", "",
        "| rank | adapted layers | draw | seed | positive slices | Dice anterior / posterior | mean Dice | "
        "volume ratio ant / post | train s | segment s / 100 slices |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(report["rows"], key=lambda r: (r["positive_slices"], r["draw"], r["seed"], r["rank"], r["targets"])):
        lines.append(f"| {r['rank']} | {', '.join(r['targets']) or '-'} | {r['draw']} | {r['seed']} | "
                     f"{r['positive_slices']} | {r['dice'][0]:.3f} / {r['dice'][1]:.3f} | **{r['mean_dice']:.3f}** | "
                     f"{r['volume_ratio'][0]:.2f} / {r['volume_ratio'][1]:.2f} | {r['train_seconds']:.0f} | "
                     f"{r['segment_seconds_per_100_slices']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=lambda s: [int(x) for x in s.split(",")], default=[0, 4],
                        help="LoRA ranks to run (0: the frozen encoder)")
    parser.add_argument("--targets", type=lambda s: tuple(s.split(",")), default=("qkv", "proj"),
                        help=f"adapted linear layers of each block, of {','.join(TINYVIT_BLOCK_LINEARS)}")
    parser.add_argument("--shots", type=lambda s: [int(x) for x in s.split(",")], default=[20])
    parser.add_argument("--draws", type=lambda s: s.split(","), default=["A"])
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--volumes", type=int, help="score only the first N validation volumes")
    parser.add_argument("--cache",
                        help="embedding cache folder, stage inputs included (default $FEWSAM_HOME/embeddings)")
    parser.add_argument("--data", type=Path, default=DATA, help="the hippocampus folder (imagesTr/, labelsTr/)")
    args = parser.parse_args()
    if not (args.data / "imagesTr").is_dir():
        raise SystemExit(f"needs the shared hippocampus data (imagesTr/, labelsTr/) at {args.data}")
    if not set(args.draws) <= set(DRAWS):
        raise SystemExit(f"--draws: expected names from {sorted(DRAWS)}, got {args.draws}")
    try:
        configs(1, args.targets, 0, args.steps)
    except ValueError as err:
        raise SystemExit(f"--targets: {err}") from None
    args.data = args.data.resolve()
    from fewsam_jax.preprocess import Intensity
    from fewsam_jax.weights import load_model

    sam = load_model("litemedsam")
    intensity = Intensity.parse("percentile")
    path = RESULTS_DIR / "encoder_lora.json"
    key = lambda r: (r["rank"], tuple(r["targets"]), r["draw"], r["seed"], r["positive_slices"])
    for draw in args.draws:
        for seed in args.seeds:
            for shots in args.shots:
                for rank in args.ranks:
                    row = run_row(args, sam, intensity, rank, args.targets, draw, seed, shots)
                    print(json.dumps(row), flush=True)
                    old = json.loads(path.read_text())["rows"] if path.exists() else []
                    rows = [r for r in old if key(r) != key(row)] + [row]
                    report = {"date": row["date"], "machine": machine_info(), "rows": rows}
                    save_report("encoder_lora", report, f"{START}\n{markdown(report)}\n{END}", START, END)


if __name__ == "__main__":
    main()
