"""Few-shot hippocampus: the decision harness (MSD Task04, manual labels), few-shot decoder beside a U-Net.

Fixed splits of the 200 shared volumes (sorted by name), never changed between runs:

- support draws ``A`` = volumes 0-4, ``B`` = 45-49, ``C`` = 50-54: where the labelled slices come from;
- ``validation`` = the last 8 volumes: every method decision is made here;
- ``test`` = volumes 5-44 (40): scored once per candidate default, never used to choose.

A collection takes N labelled slices (``--shots``, default 5, 10, 20; axial, or the plane ``--axis`` names) at the
centres of equal parts of the labelled extent of the draw's 5 volumes, plus one label-free slice per volume. The
decoder is trained on it (``--variant``: options of the three configs, routed by
:func:`fewsam_jax.fewshot.config.configs_from_overrides`) and, with ``--unet``, the project's 2D U-Net from scratch on
exactly the same slices; both are scored in 3D on every volume of the phase's split: Dice, HD95 (mm) and predicted /
true volume per class. ``--offsets`` also scores other threshold offsets (``InferenceConfig.threshold_offset``) and
``--presence`` other presence thresholds from the same trained decoder, one row each (``VARIANT@OFFSET``,
``VARIANT@pTHRESHOLD``), without training again; ``--ensemble W`` scores the decoder's class probabilities averaged
with the U-Net's (decoder weight W; ``--ensemble-control N`` trains N - 1 more U-Nets and scores the N averaged, what
averaging alone gains; ``--unet-seed-ensemble`` the U-Nets of every ``--seeds`` averaged); ``--pseudo W`` trains a
U-Net on every slice of the support volumes, the unlabelled ones labelled by that average (W 0: by the U-Net itself,
the self-training control), and with ``--unlabelled N`` on every slice of N more cohort volumes (55 onwards, labels
never read) labelled the same way; ``--student NAME:fields`` teaches one with the library's ``train_student`` and
those ``StudentConfig`` fields (rows ``VARIANT>NAME``; a 2.5D partner is scored too, rows ``unet-cK``; a seed
ensemble's member 0 alone, ``VARIANT>NAME#0``). ``--curve N`` adds a learning curve: validation Dice (threshold 0)
every N steps. Embeddings go through the package's cache, and with ``--decoders DIR`` trained decoders are kept and
reused (training is deterministic per seed), so a rerun only trains what is new and segments; ``--no-decoder-rows``
leaves the decoder's own scoring out (a decoder that only teaches: the test split's students).

Rows accumulate in ``bench/results/fewshot_<phase>.json`` (a rerun of the same variant, draw, seed and shot
count replaces its row); the "Few-shot hippocampus" sections of ``bench/RESULTS.md`` are rewritten from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from bench.sections import machine_info, write_section
from fewsam_jax.label_maps import read_labels  # also the other hippocampus harnesses'
from fewsam_jax.outputs import write_text

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hippocampus"  # default of --data
CLASSES = {1: "anterior", 2: "posterior"}
DRAWS = {"A": slice(0, 5), "B": slice(45, 50), "C": slice(50, 55)}
PHASES = {"validation": slice(-8, None), "test": slice(5, 45)}
# cohort volumes outside the draws and both phases whose labels are never read: ``--unlabelled N`` takes the first N,
# what a user's other unlabelled scans are to the method (only their images reach the student)
UNLABELLED = slice(55, -8)
# the slicing planes of the data's RAS grid (``--axis``): sagittal slices hold both classes far more often (81 % of
# the slices with a label, against 32 % of axial ones, on volumes 0-59)
PLANES = {0: "sagittal", 1: "coronal", 2: "axial"}


def cases(data: Path) -> list[str]:
    return sorted(p.name[: -len("_0000.nii.gz")] for p in (data / "imagesTr").glob("*_0000.nii.gz"))


def draw_label(draw: str, axis: int = 2) -> str:
    """A draw's name in the rows: the draw itself along the axial axis (2, every round's), else with the plane
    (``A-sagittal``, ``A-coronal``): the same volumes sliced another way are another draw of labelled slices."""
    return draw if axis == 2 else f"{draw}-{PLANES[axis]}"


def row_plane(row: dict) -> str:
    """The plane a result row's labelled slices lie in, read back from its draw's name (``draw_label``)."""
    for plane in PLANES.values():
        if row["draw"].endswith(f"-{plane}"):
            return plane
    return PLANES[2]


def manifest(data: Path, train: list[str], shots: int, folder: Path, axis: int = 2) -> Path:
    """The draw's support manifest: ``shots`` labelled slices spread over the ``train`` volumes, each volume's
    picked as ``fewsam train --nnunet`` picks them (``collection.pick_slices``: plus one empty slice)."""
    from fewsam_jax.fewshot.collection import pick_slices

    per_volume = np.diff(np.linspace(0, shots, len(train) + 1).round().astype(int))
    support = []
    for name, count in zip(train, per_volume):
        labels = read_labels(data / "labelsTr" / f"{name}.nii.gz")
        support.append({"image": str(data / "imagesTr" / f"{name}_0000.nii.gz"),
                        "labels": str(data / "labelsTr" / f"{name}.nii.gz"),
                        "slices": pick_slices(labels, int(count), axis=axis)})
    path = folder / f"hippocampus_{shots}.json"
    path.write_text(json.dumps({"classes": {str(k): v for k, v in CLASSES.items()}, "axis": axis,
                                "support": support}))
    return path


def parse_variant(spec: str, flag: str = "--variant") -> tuple[str, dict]:
    """``NAME`` or ``NAME:key=value,key=value`` -> (name, overrides of the few-shot configs, routed by
    :func:`~fewsam_jax.fewshot.config.configs_from_overrides`); values are JSON (numbers, true/false, lists
    ``[32,64]``), ``None``/empty, or else taken as strings (``image_frame=embedding``); an item without ``=``
    exits with the error."""
    name, _, body = spec.partition(":")
    overrides = {}
    for item in filter(None, re.split(r",(?![^\[]*\])", body)):  # commas inside [...] belong to a list
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"{flag} {spec!r}: expected key=value, got {item!r}")
        try:
            overrides[key] = json.loads(value) if value not in ("", "None") else None
        except json.JSONDecodeError:
            overrides[key] = value
    return name, overrides


def offset_name(variant: str, offset: float) -> str:
    """The row name of ``variant``'s decoder segmenting at another threshold offset (``--offsets``)."""
    return f"{variant}@{offset:+g}"


def presence_name(variant: str, presence_threshold: float) -> str:
    """The row name of ``variant``'s decoder segmenting at another presence threshold (``--presence``)."""
    return f"{variant}@p{presence_threshold:g}"


def postprocess_name(variant: str) -> str:
    """The row name of a row's labels after 3D post-processing (``--postprocess``)."""
    return f"{variant}+3d"


def score_volume(pred: np.ndarray, truth: np.ndarray, spacing) -> dict[str, list[float]]:
    """Per class (in CLASSES order): Dice, HD95 (mm) and predicted / true voxel count."""
    from fewsam_jax import metrics

    result = metrics.evaluate(pred, truth, spacing, CLASSES, per_slice_axis=None)
    names = list(CLASSES.values())
    return {"dice": [result[c]["dice"] for c in names], "hd95": [result[c]["hd95"] for c in names],
            "volume_ratio": [result[c]["pred_voxels"] / max(result[c]["gt_voxels"], 1) for c in names]}


def summarise(per_volume: list[dict[str, list[float]]], seconds: float, slices: int) -> dict:
    """Means (and Dice spread) over volumes; HD95's mean counts an infinite distance (a missed class) as such."""
    out = {}
    for key in ("dice", "hd95", "volume_ratio"):
        values = np.asarray([v[key] for v in per_volume], float)  # (volumes, classes)
        out[key] = values.mean(axis=0).tolist()
        if key == "dice":
            out["dice_std"] = values.std(axis=0).tolist()
    out["segment_seconds_per_100_slices"] = 100 * seconds / max(slices, 1)
    return out


def run(args: argparse.Namespace, save) -> list[dict]:
    """Train and score every (variant, draw, seed, shots) (with ``--no-decoder-rows`` the decoder is only trained or
    loaded, to teach); ``save(rows)`` after each row, so a crash keeps them."""
    from fewsam_jax.cache import embed_volume
    from fewsam_jax.fewshot import FewShotSegmenter, TrainConfig
    from fewsam_jax.fewshot.config import configs_from_overrides
    from fewsam_jax.fewshot.infer import labels_from_logits, logits_to_native, predict_logits
    from fewsam_jax.fewshot.segmenter import volume_images
    from fewsam_jax.fewshot.student import fuse, pseudo_labels
    from fewsam_jax.fewshot.train import support_tokens
    from fewsam_jax.io import load_volume, stack_slices
    from fewsam_jax.preprocess import Intensity
    from fewsam_jax.weights import load_model

    data = args.data.resolve()  # manifests hold absolute paths
    names = cases(data)
    scored = names[PHASES[args.phase]][: args.volumes]
    intensity = Intensity.parse("percentile")

    def load(name):
        return load_volume(data / "imagesTr" / f"{name}_0000.nii.gz"), read_labels(data / "labelsTr" / f"{name}.nii.gz")

    volumes = [load(n) for n in scored]
    unlabelled = [data / "imagesTr" / f"{n}_0000.nii.gz" for n in names[UNLABELLED][: args.unlabelled]]
    axis = args.axis
    total_slices = sum(v.shape[axis] for v, _ in volumes)
    sam = load_model("litemedsam")
    # a variant that adapts the encoder's last stage needs its inputs: computed in the same encoder pass
    staged = any(configs_from_overrides(overrides)[0].for_model(sam.config).encoder_lora_rank
                 for _, overrides in map(parse_variant, args.variant))
    scores_decoder = not (args.unet_only or args.no_decoder_rows)
    entries = [embed_volume(v, sam, axis=axis, intensity=intensity, cache=args.cache, stage_inputs=staged,
                            progress=False) for v, _ in volumes] if scores_decoder else []
    curve_volumes = volumes[: args.curve_volumes]
    rows, unet = [], {}  # unet: (draw, seed, shots) -> each scored volume's U-Net probabilities
    partners = {}  # (draw, seed, shots, context) -> a 2.5D partner U-Net shared by --student's students
    with tempfile.TemporaryDirectory() as scratch:
        for name, overrides in map(parse_variant, args.variant):
            for raw_draw in args.draws:
                draw = draw_label(raw_draw, axis)
                for seed in args.seeds:
                    config, training, inference = configs_from_overrides(overrides, training=TrainConfig(seed=seed))
                    for shots in args.shots:
                        path = manifest(data, names[DRAWS[raw_draw]], shots, Path(scratch), axis)
                        if (args.unet or args.unet_only or args.ensemble or args.pseudo or args.student) \
                                and name == args.variant_names[0]:
                            unet[draw, seed, shots] = baseline_rows(args, path, draw, seed, shots, volumes,
                                                                    total_slices, intensity, rows, save)
                        if args.unet_only:
                            continue
                        curve, curve_seconds = [], [0.0]

                        def learning_curve(step, decoder, support, config=config):
                            started = time.perf_counter()
                            tokens = support_tokens(decoder, support)
                            dice = []
                            for (volume, truth), entry in zip(curve_volumes, entries):
                                logits, presence = predict_logits(
                                    decoder, tokens, entry.load(),
                                    images=volume_images(volume, intensity, axis, config, sam.config))
                                pred = stack_slices(labels_from_logits(logits_to_native(logits, entry.slice_shape),
                                                                       presence, (1, 2)), axis)
                                dice.append(score_volume(pred, truth, volume.spacing)["dice"])
                            curve.append({"step": step, "dice": np.mean(dice, axis=0).tolist()})
                            curve_seconds[0] += time.perf_counter() - started

                        load_before = os.getloadavg()[0]
                        kept = decoder_folder(args.decoders, path, config, training, inference) \
                            if args.decoders and not args.curve else None
                        reused = kept is not None and kept.exists()
                        if reused:  # its inference but for self_prompt (decoder_folder), which is the variant's
                            segmenter = FewShotSegmenter.load(kept, model=sam)
                            segmenter.inference = inference
                        else:
                            segmenter = FewShotSegmenter.train(path, sam=sam, config=config, training=training,
                                                               inference=inference, cache=args.cache, progress=False,
                                                               callback=learning_curve if args.curve else None,
                                                               callback_every=args.curve)
                            if kept is not None:
                                segmenter.save(kept)
                        # the trained decoder's logits once per volume; every threshold offset, presence
                        # threshold (and, with --postprocess, the post-processed labels too) labels from them
                        offsets = [inference.threshold_offset, *(o for o in args.offsets
                                                                 if o != inference.threshold_offset)]
                        presences = [inference.presence_threshold, *(p for p in args.presence
                                                                     if p != inference.presence_threshold)]
                        labelings = [(o, p, post) for o in offsets for p in presences
                                     for post in ((False, True) if args.postprocess else (False,))]
                        # another offset shifts the logits (predict_volume applied the trained cut-offs); another
                        # presence threshold is the segmenter's own, on a copy of it
                        labellers = {cut: dataclasses.replace(segmenter, inference=inference.replace(
                            presence_threshold=cut)) for cut in presences}
                        # --ensemble: the default labelling of the decoder averaged with the U-Net's probabilities
                        fusions = [(w, post) for w in args.ensemble
                                   for post in ((False, True) if args.postprocess else (False,))]
                        if args.no_decoder_rows:  # trained or loaded only to teach
                            labelings, fusions = [], []
                        started, per_labeling = time.perf_counter(), {lab: [] for lab in labelings + fusions}
                        for index, (volume, truth) in enumerate(volumes if labelings or fusions else []):
                            logits, presence = segmenter.predict_volume(volume, cache=args.cache, progress=False)
                            for offset, cut, post in labelings:
                                pred = labellers[cut].labels_from(logits - (offset - inference.threshold_offset),
                                                                  presence, postprocess=post)
                                per_labeling[offset, cut, post].append(score_volume(pred, truth, volume.spacing))
                            for weight, post in fusions:
                                fused = fuse(logits, unet[draw, seed, shots].probabilities[index], weight)
                                pred = segmenter.labels_from(fused, presence, postprocess=post)
                                per_labeling[weight, post].append(score_volume(pred, truth, volume.spacing))
                        seconds = time.perf_counter() - started
                        for offset, cut, post in labelings:
                            shifted = offset != inference.threshold_offset
                            gated = cut != inference.presence_threshold
                            derived = shifted or gated or post
                            row_name = offset_name(name, offset) if shifted else name
                            row_name = presence_name(row_name, cut) if gated else row_name
                            row_name = postprocess_name(row_name) if post else row_name
                            row_overrides = {**overrides, **({"threshold_offset": offset} if shifted else {}),
                                             **({"presence_threshold": cut} if gated else {}),
                                             **({"postprocess": True} if post else {})}
                            row = {"method": "few-shot", "variant": row_name, "overrides": row_overrides,
                                   "same_training_as": name if derived else None,
                                   "config": {"decoder": dataclasses.asdict(config),
                                              "training": dataclasses.asdict(training),
                                              "inference": dataclasses.asdict(
                                                  inference.replace(threshold_offset=offset,
                                                                    presence_threshold=cut))}, "draw": draw,
                                   "seed": seed, "positive_slices": shots,
                                   "labelled_slices": segmenter.info["labelled_slices"],
                                   "train_seconds": segmenter.info["train_seconds"] - curve_seconds[0],
                                   "thresholds": segmenter.info["thresholds"], "curve": [] if derived else curve,
                                   **({"decoder_reused": True} if reused else {}),
                                   "load_average": [load_before, os.getloadavg()[0]], "volumes": len(volumes),
                                   "postprocess": post, **summarise(per_labeling[offset, cut, post], seconds,
                                                                    total_slices)}
                            rows.append(row)
                            save(rows)
                            print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
                        for weight, post in fusions:
                            row_name = ensemble_name(name, weight)
                            row = {"method": "few-shot + U-Net", "variant": postprocess_name(row_name) if post
                                   else row_name, "overrides": {**overrides, "ensemble_weight": weight,
                                                                **({"postprocess": True} if post else {})},
                                   "same_training_as": name, "draw": draw, "seed": seed, "positive_slices": shots,
                                   "labelled_slices": segmenter.info["labelled_slices"],
                                   "train_seconds": segmenter.info["train_seconds"] - curve_seconds[0]
                                   + unet[draw, seed, shots].train_seconds,
                                   "load_average": [load_before, os.getloadavg()[0]], "volumes": len(volumes),
                                   "postprocess": post, **summarise(per_labeling[weight, post], seconds,
                                                                    total_slices)}
                            rows.append(row)
                            save(rows)
                            print(json.dumps(row), flush=True)
                        predictions = teacher(segmenter, unet[draw, seed, shots].model, path, args.cache,
                                              unlabelled) if args.pseudo else []
                        for weight in args.pseudo:
                            slices = pseudo_labels(predictions, weight, inference.presence_threshold)
                            new, _, _ = unet_rows(path, draw, seed, shots, volumes, total_slices, intensity,
                                                  args.postprocess, slices=slices,
                                                  variant=pseudo_name(name, weight, len(unlabelled)))
                            for row in new:
                                row.update(method="U-Net on pseudo-labels", same_training_as=name,
                                           unlabelled_volumes=len(unlabelled),
                                           overrides={**overrides, "pseudo_weight": weight,
                                                      **({"unlabelled_volumes": len(unlabelled)} if unlabelled
                                                         else {}), **row["overrides"]},
                                           train_seconds=row["train_seconds"] + segmenter.info["train_seconds"]
                                           - curve_seconds[0] + unet[draw, seed, shots].train_seconds)
                                rows.append(row)
                                save(rows)
                                print(json.dumps(row), flush=True)
                        for spec in args.student:
                            student_rows(args, spec, name, overrides, segmenter, path, draw, seed, shots, volumes,
                                         total_slices, unet[draw, seed, shots], unlabelled, partners, rows, save)
                        if curve:
                            print("curve", json.dumps(curve), flush=True)
    if args.unet_seed_ensemble and len(args.seeds) > 1:
        name = "unet-seeds" + "+".join(map(str, args.seeds))  # a row per set of seeds
        for draw, shots in ((draw_label(d, axis), n) for d in args.draws for n in args.shots):
            runs = [unet[draw, seed, shots] for seed in args.seeds]
            for row in averaged_rows([(run.probabilities, run.row) for run in runs], volumes, args.postprocess, name,
                                     total_slices, axis):
                row.update(seeds=args.seeds)
                rows.append(row)
                save(rows)
                print(json.dumps(row), flush=True)
    return rows


class UNetRun(NamedTuple):
    """A U-Net trained on one (draw, seed, shots): each scored volume's probabilities (N, C, H, W), the model, its
    (labels as predicted) row."""
    probabilities: list[np.ndarray]
    model: object
    row: dict

    @property
    def train_seconds(self) -> float:
        return self.row["train_seconds"]


def averaged_rows(members: list[tuple[list[np.ndarray], dict]], volumes: list, postprocess: bool, variant: str,
                  total_slices: int, axis: int = 2) -> list[dict]:
    """Rows scoring several U-Nets' probabilities averaged: ``members`` are (each scored volume's probabilities,
    that U-Net's row); the rows take the first member's draw, seed, count and labelled slices, the members' summed
    training and segmenting seconds, and the load from the first's start to the last's end."""
    mean = [sum(probs) / len(members) for probs in zip(*(probabilities for probabilities, _ in members))]
    firsts = [row for _, row in members]
    segment = sum(r["segment_seconds_per_100_slices"] for r in firsts) * total_slices / 100
    info = {k: firsts[0][k] for k in ("draw", "seed", "positive_slices", "labelled_slices")}
    return [{**row, **info, "train_seconds": sum(r["train_seconds"] for r in firsts),
             "load_average": [firsts[0]["load_average"][0], firsts[-1]["load_average"][1]]}
            for row in score_unet(mean, volumes, postprocess, variant, segment, total_slices, axis)]


def baseline_rows(args: argparse.Namespace, path: Path, draw: str, seed: int, shots: int, volumes: list,
                  total_slices: int, intensity, rows: list[dict], save) -> UNetRun:
    """The U-Net rows of one (draw, seed, shots), added to ``rows`` and saved, and that U-Net's run. With
    ``--ensemble-control N`` also N - 1 more U-Nets (seeds seed + 1000, seed + 2000, ...; rows ``unet-seedK``) and
    the N averaged (row ``unet-xN``): what a seed ensemble gains without SAM."""
    new, probabilities, model = unet_rows(path, draw, seed, shots, volumes, total_slices, intensity,
                                          args.postprocess)
    if args.ensemble_control > 1:
        members = [(probabilities, new[0])]
        for k in range(1, args.ensemble_control):
            more, others, _ = unet_rows(path, draw, seed + 1000 * k, shots, volumes, total_slices, intensity,
                                        args.postprocess, variant=f"unet-seed{k + 1}")
            new += [{**row, "seed": seed, "unet_seed": seed + 1000 * k} for row in more]
            members.append((others, more[0]))
        new += averaged_rows(members, volumes, args.postprocess, f"unet-x{args.ensemble_control}", total_slices,
                             args.axis)
    for row in new:
        rows.append(row)
        save(rows)
        print(json.dumps(row), flush=True)
    return UNetRun(probabilities, model, new[0])


def unet_rows(path: Path, draw: str, seed: int, shots: int, volumes: list, total_slices: int, intensity,
              postprocess: bool = False, variant: str = "unet", slices: tuple[list, list] | None = None
              ) -> tuple[list[dict], list[np.ndarray], object]:
    """The U-Net from scratch (``baselines.unet``, default config) on exactly the collection's slices (or on
    ``slices``, (images, label maps), for ``--pseudo``); with ``postprocess`` a second row (``unet+3d``) scores the
    same predictions after 3D largest component + hole filling, as the few-shot rows get it. Also returns each
    volume's class probabilities (N, C, H, W), N axial slices, background first, for ``--ensemble``, and the
    model."""
    from bench.baselines import UNetConfig, train_unet
    from fewsam_jax.fewshot import load_collection
    from fewsam_jax.fewshot.student import labelled_slices, support_volumes

    collection = load_collection(path)
    images, labels = slices if slices is not None else labelled_slices(
        support_volumes(collection, tuple(CLASSES)), intensity, collection.axis)[:2]
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    model, _ = train_unet(images, labels, 3, UNetConfig(), seed=seed, progress=False)
    train_seconds = time.perf_counter() - started
    started = time.perf_counter()
    probabilities = [unet_probabilities(model, volume, intensity, axis=collection.axis) for volume, _ in volumes]
    seconds = time.perf_counter() - started
    rows = score_unet(probabilities, volumes, postprocess, variant, seconds, total_slices, collection.axis)
    info = {"draw": draw, "seed": seed, "positive_slices": shots, "labelled_slices": collection.num_slices,
            "train_seconds": train_seconds, "load_average": [load_before, os.getloadavg()[0]],
            **({"training_slices": len(images)} if slices is not None else {})}
    return [{**row, **info} for row in rows], probabilities, model


def unet_probabilities(model, volume, intensity, context: int = 0, axis: int = 2) -> np.ndarray:
    """The U-Net's class probabilities (N, C, H, W) on every slice along ``axis`` of ``volume`` (with ``context``,
    each slice's neighbouring slices as its extra input: a 2.5D U-Net)."""
    from fewsam_jax.fewshot import student
    from fewsam_jax.io import get_slices

    return student.unet_probabilities(model, get_slices(intensity.apply(volume.array), axis), context)


def teacher(segmenter, unet_model, path: Path, cache, unlabelled: list[Path] = ()) -> list:
    """The decoder's and the U-Net's predictions on every slice of the collection's support volumes, then of the
    ``unlabelled`` volumes (image files; no slice labelled), computed once for every ``--pseudo`` weight
    (:func:`fewsam_jax.fewshot.student.teacher_predictions`, as ``train_student`` teaches)."""
    from fewsam_jax.fewshot import load_collection
    from fewsam_jax.fewshot.student import support_volumes, teacher_predictions
    from fewsam_jax.io import load_volume

    volumes = support_volumes(load_collection(path), segmenter.class_ids)
    return list(teacher_predictions(segmenter, unet_model, volumes + [(load_volume(i), [], None) for i in unlabelled],
                                    cache))


def decoder_folder(root: Path, path: Path, config, training, inference) -> Path:
    """Where ``--decoders`` keeps the decoder trained on the manifest at ``path`` with these configs: a folder
    named by the SHA-256 of the manifest's text and the configs (training is deterministic per seed, so a decoder
    trained once serves every later run that asks for the same). ``inference.self_prompt`` is left out: training never
    reads it, so a variant that only self-prompts segments with the decoder trained for the one that does not."""
    inference = inference.replace(self_prompt=0.0)
    key = json.dumps({"manifest": path.read_text(), "decoder": dataclasses.asdict(config),
                      "training": dataclasses.asdict(training), "inference": dataclasses.asdict(inference),
                      "code": library_version()}, sort_keys=True, default=str)
    return root / hashlib.sha256(key.encode()).hexdigest()[:16]


def library_version() -> str:
    """The library's code as git sees it: the tree of ``fewsam_jax/`` at HEAD and any uncommitted change to it (a
    decoder kept by ``--decoders`` is reused only by the same code); the package version outside a checkout."""
    import subprocess

    try:
        tree = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD:fewsam_jax"], capture_output=True,
                              text=True, check=True).stdout.strip()
        diff = subprocess.run(["git", "-C", str(ROOT), "diff", "HEAD", "--", "fewsam_jax"], capture_output=True,
                              check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        from importlib.metadata import version

        return version("fewsam_jax")
    return f"{tree}+{hashlib.sha256(diff).hexdigest()[:12]}" if diff else tree


def parse_student(spec: str):
    """``NAME:key=value,...`` -> (name, StudentConfig fields); exits naming the spec on a bad one."""
    from fewsam_jax.fewshot import StudentConfig

    name, fields = parse_variant(spec, "--student")
    if "seed" in fields:
        raise SystemExit(f"--student {spec}: seed is the run's (--seeds)")
    try:
        StudentConfig(**fields)
    except (TypeError, ValueError) as err:
        raise SystemExit(f"--student {spec}: {err}") from None
    return name, fields


def student_rows(args, spec: str, variant: str, overrides: dict, segmenter, path: Path, draw: str, seed: int,
                 shots: int, volumes: list, total_slices: int, baseline: UNetRun, unlabelled: list[Path],
                 partners: dict, rows: list[dict], save) -> None:
    """``--student NAME:fields``: :func:`~fewsam_jax.fewshot.student.train_student` with this StudentConfig (the
    run's seed) taught by ``segmenter``, scored like the U-Net (rows ``VARIANT>NAME``). Its partner is the U-Net
    baseline of these slices when it has no context; a 2.5D partner is trained once per context, shared, and
    scored too (rows ``unet-cK``: the U-Net from scratch with K neighbouring slices)."""
    from fewsam_jax.fewshot import StudentConfig, load_collection, train_student
    from fewsam_jax.fewshot.student import support_volumes, train_partner

    name, fields = parse_student(spec)
    config = StudentConfig(**{**fields, "seed": seed})
    key = (draw, seed, shots, config.context)
    if not config.context:
        partner, partner_seconds = baseline.model, baseline.train_seconds
    elif key in partners:
        partner, partner_seconds = partners[key]
    else:
        load_before, started = os.getloadavg()[0], time.perf_counter()
        support = support_volumes(load_collection(path), segmenter.class_ids)
        partner = train_partner(segmenter, support, config, progress=False)
        partner_seconds = time.perf_counter() - started
        partners[key] = partner, partner_seconds
        started = time.perf_counter()
        probabilities = [unet_probabilities(partner, volume, segmenter.intensity, config.context, segmenter.axis)
                         for volume, _ in volumes]
        for row in score_unet(probabilities, volumes, args.postprocess, f"unet-c{config.context}",
                              time.perf_counter() - started, total_slices, segmenter.axis):
            row.update(draw=draw, seed=seed, positive_slices=shots, labelled_slices=segmenter.info["labelled_slices"],
                       train_seconds=partner_seconds, load_average=[load_before, os.getloadavg()[0]],
                       overrides={"context": config.context, **row["overrides"]})
            rows.append(row)
            save(rows)
            print(json.dumps(row), flush=True)
    load_before = os.getloadavg()[0]
    taught = train_student(segmenter, path, unlabelled, config, cache=args.cache, progress=False, partner=partner)
    row_name = f"{variant}>{name}" + (f"u{len(unlabelled)}" if unlabelled else "")
    # member 0 of a seed ensemble or of a student with planes is the student members=1 (no planes) teaches: scored
    # too (row NAME#0), at no training cost; its seconds are the teaching's less the other U-Nets' trainings
    first_member_seconds = (taught.info["student_seconds"] - sum(taught.info["member_seconds"][1:])
                            - sum(taught.info.get("plane_seconds", [])))
    students = [(row_name, taught, fields, taught.info["student_seconds"])] + (
        [(f"{row_name}#0", taught.member(0),
          {**fields, "members": 1, **({"planes": []} if taught.config.planes else {})}, first_member_seconds)]
        if config.members > 1 or taught.config.planes else [])  # planes as taught ("auto" may add none)
    for student_name, student, student_fields, student_seconds in students:
        started = time.perf_counter()
        if args.save_probabilities and student is taught:
            probabilities = saved_views(student, volumes, args.save_probabilities / f"{draw}-s{seed}-n{shots}-{name}")
        else:
            probabilities = [student.predict_volume(volume) for volume, _ in volumes]
        seconds = time.perf_counter() - started
        for row in score_unet(probabilities, volumes, args.postprocess, student_name, seconds, total_slices,
                              segmenter.axis):
            row.update(method="student", same_training_as=variant, draw=draw, seed=seed, positive_slices=shots,
                       labelled_slices=segmenter.info["labelled_slices"], unlabelled_volumes=len(unlabelled),
                       student={k: v for k, v in dataclasses.asdict(student.config).items() if k != "unet"},
                       student_info=taught.info, training_slices=taught.info["training_slices"],
                       train_seconds=segmenter.info["train_seconds"] + partner_seconds
                       + taught.info["teacher_seconds"] + student_seconds,
                       load_average=[load_before, os.getloadavg()[0]],
                       overrides={**overrides, **student_fields,
                                  **({"unlabelled_volumes": len(unlabelled)} if unlabelled else {}),
                                  **row["overrides"]})
            rows.append(row)
            save(rows)
            print(json.dumps(row), flush=True)


def saved_views(student, volumes: list, folder: Path) -> list[np.ndarray]:
    """``student.predict_volume`` of each scored volume, its U-Nets' views also written to ``folder/NNN.npz``
    (``views`` (U, N, K+1, H, W) float16 in ``student.unets`` order, ``axes`` each U-Net's slicing axis, ``truth`` the
    label map, ``spacing``, ``axis``), for decoding rules screened afterwards (``--save-probabilities``)."""
    from fewsam_jax.fewshot.student import combine_views

    folder.mkdir(parents=True, exist_ok=True)
    probabilities = []
    for index, (volume, truth) in enumerate(volumes):
        views = list(student.views(volume))
        np.savez_compressed(folder / f"{index:03d}.npz", views=np.stack(views).astype(np.float16),
                            axes=np.asarray(student.axes), truth=np.asarray(truth, np.int8),
                            spacing=np.asarray(volume.spacing), axis=student.axis)
        probabilities.append(combine_views(views, student.config.fusion))  # predict_volume's, from the same views
    return probabilities


def pseudo_name(variant: str, weight: float, unlabelled: int = 0) -> str:
    """The row name of a U-Net trained on ``variant``'s pseudo-labelled support volumes (``--pseudo``) and
    ``unlabelled`` more cohort volumes (``--unlabelled``)."""
    return f"{variant}>unet@w{weight:g}" + (f"u{unlabelled}" if unlabelled else "")


def score_unet(probabilities: list[np.ndarray], volumes: list, postprocess: bool, variant: str, seconds: float,
               total_slices: int, axis: int = 2) -> list[dict]:
    """Rows scoring the most probable class of each volume's (N, C, H, W) ``probabilities``, N slices along
    ``axis`` (and, with
    ``postprocess``, the same labels post-processed: row ``VARIANT+3d``)."""
    from fewsam_jax.fewshot.infer import postprocess_3d
    from fewsam_jax.io import stack_slices

    posts = (False, True) if postprocess else (False,)
    per_volume = {post: [] for post in posts}
    for probs, (volume, truth) in zip(probabilities, volumes):
        pred = stack_slices(probs.argmax(axis=1).astype(np.int32), axis)
        for post in posts:
            per_volume[post].append(score_volume(postprocess_3d(pred, (1, 2)) if post else pred, truth, volume.spacing))
    return [{"method": "U-Net", "variant": postprocess_name(variant) if post else variant,
             "overrides": {"postprocess": True} if post else {}, "same_training_as": variant if post else None,
             "volumes": len(volumes), "postprocess": post, **summarise(per_volume[post], seconds, total_slices)}
            for post in posts]


def ensemble_name(variant: str, weight: float) -> str:
    """The row name of ``variant``'s decoder averaged with the U-Net on the same slices (``--ensemble``)."""
    return f"{variant}+unet@w{weight:g}"


def merge(path: Path, rows: list[dict], report: dict) -> dict:
    """Add ``rows`` to the report at ``path``; a row with the same (variant, draw, seed, shots) is replaced."""
    old = json.loads(path.read_text()) if path.exists() else {"rows": []}
    key = lambda r: (r["variant"], r["draw"], r["seed"], r["positive_slices"])
    fresh = {key(r) for r in rows}
    return {**report, "rows": [r for r in old["rows"] if key(r) not in fresh] + rows}


def markdown(report: dict) -> str:
    machine = report["machine"]
    phase = report["phase"]
    lines = [
        f"## Few-shot hippocampus: {phase} split",
        "",
        f"Last run {report['date']}, {machine.get('cpu', '?')} ({machine.get('cores', '?')} cores), LiteMedSAM. "
        f"Support draws A/B/C = volumes 0-4 / 45-49 / 50-54 (sorted names); scored in 3D on "
        f"{'the 8 validation volumes (the last 8)' if phase == 'validation' else 'test volumes from 5-44 (count per row)'}. "
        f"Mean over draws x seeds of "
        f"the per-volume mean; ± is the spread (std) of that mean over draws x seeds. Volume ratio = predicted / true "
        f"voxels. `python -m bench.fewshot --phase {phase} ...` (rows accumulate; each row's command options are in "
        f"`results/fewshot_{phase}.json`). Load average (1 min) before/after each training is in the JSON.",
        "",
        "| method / variant | plane | positive slices | volumes | runs (draws x seeds) | Dice anterior | "
        "Dice posterior | mean Dice | HD95 mm (mean) | volume ratio ant / post | train s | segment s / 100 slices |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple, list[dict]] = {}  # another plane or another number of volumes scored is another row
    for row in report["rows"]:
        key = (row["variant"], row["positive_slices"], row_plane(row), row.get("volumes", report.get("volumes")))
        groups.setdefault(key, []).append(row)
    for (variant, shots, plane, volumes), rows in sorted(
            groups.items(), key=lambda kv: (kv[0][1], kv[0][2], not kv[0][0].startswith("unet"), kv[0][0], kv[0][3])):
        dice = np.asarray([r["dice"] for r in rows])
        mean = dice.mean(axis=1)
        hd = np.asarray([np.mean(r["hd95"]) for r in rows])
        ratio = np.asarray([r["volume_ratio"] for r in rows]).mean(axis=0)
        draws, seeds = len({r["draw"] for r in rows}), len({r["seed"] for r in rows})
        # a full grid reads "draws x seeds"; otherwise the run count (e.g. 3 seeds of one draw, 1 of another)
        runs = f"{draws} x {seeds}" if draws * seeds == len(rows) else f"{len(rows)} ({draws} draws)"
        lines.append(
            f"| {variant} | {plane} | {shots} | {volumes} | {runs} | {dice[:, 0].mean():.3f} | "
            f"{dice[:, 1].mean():.3f} | "
            f"**{mean.mean():.3f}** ± {mean.std():.3f} | {hd.mean():.2f} | {ratio[0]:.2f} / {ratio[1]:.2f} | "
            f"{np.mean([r['train_seconds'] for r in rows]):.0f} | "
            f"{np.mean([r['segment_seconds_per_100_slices'] for r in rows]):.2f} |")
    variants = {r["variant"]: r.get("overrides", {}) for r in report["rows"] if r["method"] != "U-Net"}
    lines += ["", "Variants (config changes from the defaults of their day; `unet`: `baselines.unet`, default "
              "config, same slices; `unet+3d`: its labels post-processed): " + "; ".join(f"**{n}** `{json.dumps(o)}`" for n, o in sorted(variants.items()))]
    lines += ["", "Reference: nnU-Net, fully supervised on all training cases: ~0.90 / 0.89 (Decathlon test set)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", choices=sorted(PHASES), default="validation",
                        help="validation: decide; test: score a candidate default once")
    parser.add_argument("--shots", type=lambda s: [int(x) for x in s.split(",")], default=[5, 10, 20])
    parser.add_argument("--draws", type=lambda s: s.split(","), default=["A"], help="support draws, of A,B,C")
    parser.add_argument("--axis", type=int, choices=sorted(PLANES), default=2,
                        help="the slicing axis of the labelled slices, the decoder and the U-Nets (RAS grid: 0 "
                        "sagittal, 1 coronal, 2 axial, every round's until the twenty-second); rows of another axis "
                        "than 2 name their draw with the plane (A-sagittal)")
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0])
    parser.add_argument("--variant", action="append",
                        help="NAME or NAME:key=value,... (DecoderConfig, TrainConfig or InferenceConfig fields, "
                        "augment.FIELD for AugmentConfig's); repeatable (default: the defaults)")
    parser.add_argument("--unet", action="store_true", help="also train the U-Net on the same slices")
    parser.add_argument("--unet-only", action="store_true", help="only the U-Net (no few-shot training)")
    parser.add_argument("--ensemble", type=lambda s: [float(x) for x in s.split(",")], default=[],
                        help="also score the decoder's class probabilities averaged with the U-Net's on the same "
                        "slices, the decoder weighted W (rows VARIANT+unet@wW; trains the U-Net)")
    parser.add_argument("--pseudo", type=lambda s: [float(x) for x in s.split(",")], default=[],
                        help="also train a U-Net on every slice of the support volumes, labelled by the decoder "
                        "averaged with the U-Net (decoder weight W; 0: the U-Net alone, self-training) where no "
                        "label was given (rows VARIANT>unet@wW; trains the U-Net)")
    parser.add_argument("--unlabelled", type=int, default=0,
                        help="--pseudo's student also trains on every slice of the first N unlabelled cohort volumes "
                        "(from volume 55 on; labels never read), labelled by the same teacher (rows VARIANT>unet@wWuN)")
    parser.add_argument("--student", action="append", default=[], metavar="NAME:key=value,...",
                        help="also teach a student with the library's train_student (StudentConfig fields: "
                        "teacher_weight, rounds, margin, context, members, student_steps, student_features=[a,b,...], "
                        "planes=[a,...] (or auto, all), calibration, unlabelled_teacher, fusion; the run's seed), "
                        "rows VARIANT>NAME (and "
                        "NAME#0, member 0 of a seed ensemble or of a student with planes); repeatable")
    parser.add_argument("--decoders", type=Path,
                        help="keep each trained decoder in this folder and reuse one trained on the same manifest "
                        "with the same configs (training is deterministic per seed; not with --curve)")
    parser.add_argument("--no-decoder-rows", action="store_true",
                        help="do not score the decoder itself: it is trained (or loaded from --decoders) only to "
                        "teach --student / --pseudo (its own rows cost about a second a slice on a CPU)")
    parser.add_argument("--ensemble-control", type=int, nargs="?", const=2, default=0, metavar="N",
                        help="also train N - 1 more U-Nets (seeds + 1000, + 2000, ...; N 2 when bare) and score the "
                        "N averaged (row unet-xN): what a seed ensemble gains without SAM")
    parser.add_argument("--unet-seed-ensemble", action="store_true",
                        help="also score the U-Nets of every --seeds averaged, per draw and count (row unet-seedsN; "
                        "no training of its own): the U-Net ensemble a student's seed ensemble is held against")
    parser.add_argument("--postprocess", action="store_true",
                        help="also score every row's labels after 3D largest component + hole filling (rows NAME+3d, "
                             "same training)")
    parser.add_argument("--offsets", type=lambda s: [float(x) for x in s.split(",")], default=[],
                        help="also score these threshold offsets (InferenceConfig.threshold_offset) from the same "
                        "trained decoder, one row each, named VARIANT@OFFSET (no training of their own)")
    parser.add_argument("--presence", type=lambda s: [float(x) for x in s.split(",")], default=[],
                        help="also score these presence thresholds (InferenceConfig.presence_threshold; 0: every "
                        "class present on every slice) from the same trained decoder, rows VARIANT@pTHRESHOLD")
    parser.add_argument("--save-probabilities", type=Path, metavar="DIR",
                        help="also write each --student's per-U-Net class probabilities on every scored volume to "
                        "DIR/DRAW-sSEED-nSHOTS-NAME/NNN.npz (with the true labels), to screen decoding rules after "
                        "the run")
    parser.add_argument("--volumes", type=int, help="score only the first N volumes of the phase's split")
    parser.add_argument("--curve", type=int, default=0, help="learning curve: score every N steps (0: off)")
    parser.add_argument("--curve-volumes", type=int, default=4, help="phase volumes the learning curve scores")
    parser.add_argument("--cache", help="embedding cache folder (default $FEWSAM_HOME/embeddings)")
    parser.add_argument("--data", type=Path, default=DATA, help="the hippocampus folder (imagesTr/, labelsTr/)")
    parser.add_argument("--results-md", type=Path, default=ROOT / "bench" / "RESULTS.md",
                        help="Markdown file whose few-shot section is rewritten")
    args = parser.parse_args()
    args.variant = args.variant or ["default"]
    args.variant_names = [parse_variant(v)[0] for v in args.variant]
    from fewsam_jax.fewshot.config import configs_from_overrides

    for spec in args.variant:
        try:
            inference = configs_from_overrides(parse_variant(spec)[1])[2]
        except (TypeError, ValueError) as err:
            raise SystemExit(f"--variant {spec}: {err}") from None
        if inference.self_prompt and (args.offsets or args.presence):
            # the sweeps relabel one pass's logits; a self-prompted pass depends on the cut-offs its first pass used
            raise SystemExit(f"--variant {spec}: --offsets / --presence relabel one decoding, which a self-prompting "
                             "variant's cut-offs change; run them as variants of their own")
    from fewsam_jax.fewshot import InferenceConfig

    for flag, field, values in (("--offsets", "threshold_offset", args.offsets),
                                ("--presence", "presence_threshold", args.presence)):
        for value in values:
            try:
                InferenceConfig(**{field: value})
            except ValueError as err:
                raise SystemExit(f"{flag}: {err}") from None
    for flag, weights in (("--ensemble", args.ensemble), ("--pseudo", args.pseudo)):
        if not all(0 <= w <= 1 for w in weights):
            raise SystemExit(f"{flag}: expected weights in [0, 1], got {weights}")
    if not set(args.draws) <= set(DRAWS):
        raise SystemExit(f"--draws: expected names from {sorted(DRAWS)}, got {args.draws}")
    if not (args.data / "imagesTr").is_dir():
        raise SystemExit(f"needs the shared hippocampus data (imagesTr/, labelsTr/) at {args.data}")
    pool = len(cases(args.data)[UNLABELLED])
    taught = args.pseudo or args.student
    if args.unlabelled and not (taught and 0 < args.unlabelled <= pool):
        raise SystemExit(f"--unlabelled: expected a count in [1, {pool}] (the unlabelled cohort volumes) with "
                         f"--pseudo or --student, got {args.unlabelled}" + ("" if taught else " without either"))
    if args.unlabelled:
        from fewsam_jax.fewshot import StudentConfig

        for spec in args.student:
            try:
                StudentConfig(**parse_student(spec)[1]).check_unlabelled(args.unlabelled)
            except ValueError as err:
                raise SystemExit(f"--student {spec}: with --unlabelled, {err}; add rounds=2 (or "
                                 "unlabelled_teacher=fused)") from None
    if args.decoders is not None and args.decoders.exists() and not args.decoders.is_dir():
        raise SystemExit(f"--decoders: {args.decoders} is not a folder")
    if args.no_decoder_rows:
        clash = [flag for flag, value in (("--ensemble", args.ensemble), ("--offsets", args.offsets),
                                          ("--presence", args.presence), ("--curve", args.curve)) if value]
        if clash or args.unet_only or not taught:
            raise SystemExit("--no-decoder-rows: expected with --student or --pseudo (a decoder that only teaches)"
                             + (" and without --unet-only (no decoder to teach)" if args.unet_only else "")
                             + (f" and without {', '.join(clash)}, which score the decoder" if clash else ""))
    trains_unet = args.unet or args.unet_only or args.ensemble or args.pseudo or args.student
    if args.ensemble_control and not (trains_unet and args.ensemble_control > 1):
        raise SystemExit(f"--ensemble-control: expected N >= 2 U-Nets and a U-Net (--unet, --unet-only, --ensemble, "
                         f"--pseudo or --student), got {args.ensemble_control}")
    if args.unet_seed_ensemble and not (trains_unet and len(args.seeds) > 1):
        raise SystemExit(f"--unet-seed-ensemble: expected two or more --seeds (got {len(args.seeds)}) and a U-Net "
                         "(--unet, --unet-only, --ensemble, --pseudo or --student)")
    names = [parse_student(spec)[0] for spec in args.student]
    if len(set(names)) < len(names):
        raise SystemExit(f"--student: each needs its own NAME (rows are named by it), got {names}")
    import jax

    out = ROOT / "bench" / "results" / f"fewshot_{args.phase}.json"
    start, end = f"<!-- fewshot-{args.phase}:start -->", f"<!-- fewshot-{args.phase}:end -->"

    def save(rows: list[dict]) -> None:
        for row in rows:
            row["command"] = "python -m bench.fewshot " + " ".join(sys.argv[1:])
        report = {"date": datetime.date.today().isoformat(), "phase": args.phase,
                  "machine": {**machine_info(), "jax_device": jax.devices()[0].device_kind},
                  "volumes": len(cases(args.data)[PHASES[args.phase]][: args.volumes])}
        report = merge(out, rows, report)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text(out, json.dumps(report, indent=2))  # atomic: an interrupted run keeps the old rows
        write_section(args.results_md, f"{start}\n{markdown(report)}\n{end}", start, end)

    run(args, save)


if __name__ == "__main__":
    main()
