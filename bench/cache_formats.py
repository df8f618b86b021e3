"""Embedding-cache storages (:data:`fewsam_jax.cache.STORAGES`) side by side on real LiteMedSAM embeddings: size,
speed, error, and the masks SAM and the few-shot decoder predict from them, against float16.

Data:

* ``hippocampus``: the float16 entries of the hippocampus validation volumes (the last 8 of ``bench.fewshot``'s
  split) cut along ``--axis`` (default 2, axial) in an existing cache (``--source``, default
  ``$FEWSAM_HOME/embeddings``), only read;
* ``ct`` (``--ct``): TotalSegmentator's ``ct_small_3mm`` (30 axial slices, soft-tissue window, whole-body field of
  view where the hippocampus crops are mostly padding), embedded here into a temporary float16 cache; its labels
  come from the TotalSegmentator model, good enough to place boxes.

With ``--stage-inputs`` every entry also holds the slices' last-stage inputs (what the default decoder's adapted
encoder stage reads on a new volume): the hippocampus entries are copied into a temporary float16 cache first, where
the encoder's trunk adds them. Each float16 entry is copied with :func:`fewsam_jax.cache.copy_entry` (stage inputs
included) into a temporary cache per storage (float16 too, so every size is measured the same way). Per data set
and storage:

* **MB / slice**: bytes of the copied entries' folders over their slices (codes, offsets, checksums, flags, zarr
  metadata);
* **encode / decode ms**: one slice in memory, float32 -> stored bytes (float16 cast, or quantize + zstd) and back
  (median over a sample of slices); **read ms**: ``CachedEmbeddings.load`` of the copied entries (disk, checksum,
  dequantization) over their slices;
* **error** against the float16 values: max |difference| and RMS over the embeddings' standard deviation (and the
  RMS over the stage inputs' standard deviation, with ``--stage-inputs``);
* **box masks**: LiteMedSAM prompted with the tight ground-truth box of every (slice, class) present
  (``bench.baselines.prompted``), from float16 and from this storage: Dice between the two masks (mean over items),
  how many items differ at all, and Dice against the ground truth;
* **few-shot masks** (hippocampus, ``--decoder DIR``, a decoder trained on float16 embeddings): each volume
  segmented from each cache; Dice between the label maps (3D, per volume and class; mean and minimum) and the
  mean Dice against the ground truth.

    python -m bench.cache_formats --source CACHE --model MODEL_DIR [--decoder DECODER_DIR] [--ct] [--volumes 8]
        [--axis 2] [--stage-inputs]

Writes the "Compact embedding cache" section of ``bench/RESULTS.md`` and ``bench/results/cache_formats.json``
(``--out DIR``: DIR/RESULTS.md and DIR/results/ instead).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.fewshot import CLASSES, DATA, PHASES, PLANES, cases, read_labels
from bench.sections import BENCH, machine_info, save_report
from fewsam_jax.metrics import dice

START, END = "<!-- cache_formats:start -->", "<!-- cache_formats:end -->"
CT = DATA.parent / "totalseg_ct" / "ct_small_3mm"  # + .nii.gz, _seg.nii.gz


@dataclasses.dataclass
class Case:
    """One volume: its float16 cache entry, (X, Y, Z) int labels and the label ids to prompt."""

    volume: object
    entry: object
    labels: np.ndarray
    class_ids: list[int]


def hippocampus_cases(sam, source, count: int, axis: int = 2, stage_folder: Path | None = None) -> dict[str, Case]:
    """The validation volumes' float16 entries along ``axis``, looked up (never written) in the cache ``source``;
    with ``stage_folder``, copies of them there with their stage inputs added."""
    from fewsam_jax.cache import EmbeddingCache, copy_entry, embed_volume, entry_key
    from fewsam_jax.io import load_volume
    from fewsam_jax.preprocess import Intensity

    cache, intensity = EmbeddingCache(source), Intensity.parse("percentile").key()
    found = {}
    for case in cases(DATA)[PHASES["validation"]][:count]:
        volume = load_volume(DATA / "imagesTr" / f"{case}_0000.nii.gz")
        entry = cache.open(sam.config.name, entry_key(volume.array, sam.config.name, sam.weights_id, intensity, axis))
        if not entry.complete or entry.storage != "float16":
            raise SystemExit(f"{entry.path}: expected a complete float16 entry of {case}; embed it first")
        if stage_folder is not None:
            copy_entry(entry, stage_folder, storage="float16")
            entry = embed_volume(volume, sam, axis=axis, cache=stage_folder, stage_inputs=True, progress=False)
        found[case] = Case(volume, entry, read_labels(DATA / "labelsTr" / f"{case}.nii.gz"), list(CLASSES))
    return found


def ct_cases(sam, folder: Path, stage_inputs: bool = False) -> dict[str, Case]:
    """``ct_small_3mm`` embedded (soft-tissue window) into a float16 cache in ``folder`` (its stage inputs too)."""
    from fewsam_jax.cache import embed_volume
    from fewsam_jax.io import load_volume

    volume = load_volume(f"{CT}.nii.gz")
    entry = embed_volume(volume, sam, intensity="soft_tissue", cache=folder, storage="float16",
                         stage_inputs=stage_inputs, progress=False)
    labels = read_labels(Path(f"{CT}_seg.nii.gz"))
    return {CT.name: Case(volume, entry, labels, sorted(int(c) for c in np.unique(labels) if c))}


def codec_ms(slices: list[np.ndarray], storage: str) -> tuple[float, float]:
    """Median ms to turn one float32 slice into its stored bytes and back, in memory (a quantized storage: quantize,
    planar residuals, zstd, as a new entry stores them)."""
    from numcodecs import Zstd

    from fewsam_jax.cache import QUANTIZED, decode_slice, encode_slice

    encode, decode = [], []
    for values in slices:
        start = time.perf_counter()
        if storage in QUANTIZED:
            bits = QUANTIZED[storage]
            stored, low, scale = encode_slice(values, bits, "planar")
            blob = Zstd(level=3).encode(stored)
        else:
            blob = values.astype(np.float16)
        middle = time.perf_counter()
        if storage in QUANTIZED:
            stored = np.frombuffer(Zstd().decode(blob), np.uint8).reshape(values.shape)
            decode_slice(stored, low, scale, bits, "planar")
        else:
            blob.astype(np.float32)
        decode.append(time.perf_counter() - middle)
        encode.append(middle - start)
    return 1e3 * statistics.median(encode), 1e3 * statistics.median(decode)


def box_labels(sam, embeddings: np.ndarray, case: Case) -> np.ndarray:
    """(N, H, W) label map from LiteMedSAM prompted with a tight box on every (slice, class) of ``case``."""
    from bench.baselines.prompted import segment_prompted
    from bench.baselines.prompts import PromptSpec
    from fewsam_jax.io import get_slices

    gt = get_slices(case.labels, case.entry.axis)
    return segment_prompted(sam, embeddings, case.entry.slice_shape, gt, case.class_ids, PromptSpec("box"))


def measure_storage(sam, data: dict[str, Case], storage: str, folder: Path, segmenter) -> tuple[dict, dict]:
    """One storage on one data set: the row's numbers, and the masks ({"boxes"/"few": {case: labels}})."""
    from fewsam_jax.cache import CachedEmbeddings, EmbeddingCache, copy_entry

    cache = EmbeddingCache(folder, storage=storage)
    start = time.perf_counter()
    copies = {name: copy_entry(case.entry, cache) for name, case in data.items()}
    write_s = time.perf_counter() - start
    slices = sum(entry.num_slices for entry in copies.values())
    start = time.perf_counter()
    stored = {name: CachedEmbeddings(entry.path).load() for name, entry in copies.items()}
    read_s = time.perf_counter() - start
    reference = {name: case.entry.load() for name, case in data.items()}  # the float16 values, as float32
    encode_ms, decode_ms = codec_ms([v[n] for v in reference.values() for n in range(0, len(v), 8)], storage)
    errors = np.concatenate([(stored[name] - reference[name]).ravel() for name in data])
    row = {"slices": slices, "mb_per_slice": cache.info()[sam.config.name]["bytes"] / slices / 2**20,
           "write_ms": 1e3 * write_s / slices, "read_ms": 1e3 * read_s / slices, "encode_ms": encode_ms,
           "decode_ms": decode_ms, "max_abs_error": float(np.abs(errors).max()),
           "rms_error_over_std": relative_rms(errors, reference.values())}
    if all(case.entry.has_stage_inputs for case in data.values()):
        exact = {name: case.entry.load_stage_inputs() for name, case in data.items()}
        stage_errors = np.concatenate([(copies[name].load_stage_inputs() - exact[name]).ravel() for name in data])
        row["stage_rms_error_over_std"] = relative_rms(stage_errors, exact.values())
    masks = {"boxes": {name: box_labels(sam, stored[name], case) for name, case in data.items()}, "few": {}}
    if segmenter is not None:
        start = time.perf_counter()
        masks["few"] = {name: segmenter.segment(case.volume, cache=cache, progress=False)
                        for name, case in data.items()}
        row["segment_s_per_slice"] = (time.perf_counter() - start) / slices
    return row, masks


def relative_rms(errors: np.ndarray, reference) -> float:
    """RMS of ``errors`` over the standard deviation of the ``reference`` arrays' values."""
    spread = float(np.concatenate([v.ravel() for v in reference]).std())
    return float(np.sqrt(np.mean(errors.astype(np.float64) ** 2)) / spread)


def agreement(data: dict[str, Case], masks: dict, baseline: dict) -> dict:
    """Dice of this storage's masks against float16's and against the ground truth: box masks per prompted
    (slice, class) item; few-shot label maps in 3D per volume and class."""
    from fewsam_jax.io import get_slices

    items, differ, vs_truth = [], 0, []
    for name, case in data.items():
        labels, reference = masks["boxes"][name], baseline["boxes"][name]
        gt = get_slices(case.labels, case.entry.axis)
        for n in range(len(gt)):
            for c in case.class_ids:
                if (gt[n] == c).any():
                    a, b = labels[n] == c, reference[n] == c
                    items.append(dice(a, b))
                    differ += bool((a != b).any())
                    vs_truth.append(dice(a, gt[n] == c))
    row = {"box_items": len(items), "box_dice_vs_float16": float(np.mean(items)), "box_items_differing": differ,
           "box_dice_vs_truth": float(np.mean(vs_truth))}
    if masks["few"]:
        pairs = [(masks["few"][name] == c, baseline["few"][name] == c, data[name].labels == c)
                 for name in masks["few"] for c in data[name].class_ids]
        vs_float16 = [dice(a, b) for a, b, _ in pairs]
        row.update(fewshot_dice_vs_float16=float(np.mean(vs_float16)), fewshot_min_dice_vs_float16=min(vs_float16),
                   fewshot_dice_vs_truth=float(np.mean([dice(a, t) for a, _, t in pairs])))
    return row


def measure(args: argparse.Namespace, work: Path) -> dict:
    from fewsam_jax.cache import STORAGES
    from fewsam_jax.model_dir import load_model_dir

    sam = load_model_dir(args.model)
    stage_folder = work / "hippocampus_source" if args.stage_inputs else None
    datasets = {"hippocampus": hippocampus_cases(sam, args.source, args.volumes, args.axis, stage_folder)}
    if args.ct:
        datasets["ct"] = ct_cases(sam, work / "ct_source", args.stage_inputs)
    segmenter = None
    if args.decoder:
        from fewsam_jax.fewshot import FewShotSegmenter

        segmenter = FewShotSegmenter.load(args.decoder, model=args.model)
    rows = {}
    for name, data in datasets.items():
        baseline = None
        for storage in STORAGES:
            row, masks = measure_storage(sam, data, storage, work / name / storage,
                                         segmenter if name == "hippocampus" else None)
            baseline = baseline or masks  # float16 comes first
            row.update(agreement(data, masks, baseline))
            rows[f"{name} {storage}"] = {"data": name, "storage": storage, **row}
            print(name, storage, json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()}),
                  flush=True)
    return {"volumes": {name: list(data) for name, data in datasets.items()}, "rows": rows, "decoder": args.decoder,
            "axis": args.axis, "stage_inputs": args.stage_inputs}


def section(report: dict) -> str:
    m, rows = report["machine"], report["rows"]
    few = any("fewshot_dice_vs_float16" in r for r in rows.values())
    staged = all("stage_rms_error_over_std" in r for r in rows.values())
    head = ["data", "storage", "MB / slice", "vs float16", "encode ms", "decode ms", "read ms", "max abs err",
            "RMS err / std", *(["stage inputs RMS err / std"] if staged else []),
            "box Dice vs float16 (items differing / items)", "box Dice vs truth"]
    head += ["few-shot Dice vs float16 (min)", "few-shot Dice vs truth", "segment s / slice"] if few else []
    volumes = report["volumes"]
    lines = [START, "## Compact embedding cache", "",
             (f"Written by `{report['command']}` on {report['date']} ({m['cpu']}, {m['cores']} cores), 1-minute "
              f"load {report['load'][0]:.2f} before, {report['load'][1]:.2f} after. LiteMedSAM embeddings of the "
              f"{len(volumes['hippocampus'])} hippocampus validation volumes ({PLANES[report.get('axis', 2)]} "
              "slices, read from a float16 cache)"
              + (" and of TotalSegmentator's ct_small_3mm (30 axial slices, soft-tissue window)" if "ct" in volumes
                 else "") + (", with their last-stage inputs (in MB / slice, and quantized alike)" if staged else "")
              + ", copied into one temporary cache per storage. Errors and Dice are against the float16 "
              "values (themselves within half a float16 ulp of float32). Box: LiteMedSAM prompted with the tight "
              "ground-truth box of every (slice, class) present. ms are per slice." +
              (f" Few-shot: decoder `{report['decoder']}` (trained on float16 embeddings), each volume segmented "
               "from each cache; Dice in 3D per volume and class." if few else "")),
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows.values():
        base = rows[f"{r['data']} float16"]["mb_per_slice"]
        cells = [r["data"], r["storage"], f"{r['mb_per_slice']:.3f}", f"{base / r['mb_per_slice']:.2f}x",
                 f"{r['encode_ms']:.1f}", f"{r['decode_ms']:.1f}", f"{r['read_ms']:.1f}", f"{r['max_abs_error']:.2e}",
                 f"{r['rms_error_over_std']:.4f}",
                 *([f"{r['stage_rms_error_over_std']:.4f}"] if staged else []),
                 f"{r['box_dice_vs_float16']:.4f} ({r['box_items_differing']} / {r['box_items']})",
                 f"{r['box_dice_vs_truth']:.4f}"]
        if few:
            cells += ([f"{r['fewshot_dice_vs_float16']:.4f} ({r['fewshot_min_dice_vs_float16']:.4f})",
                       f"{r['fewshot_dice_vs_truth']:.4f}", f"{r['segment_s_per_slice']:.3f}"]
                      if "fewshot_dice_vs_float16" in r else ["-", "-", "-"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + [END]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cache_formats", description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", help="cache of the float16 entries (only read; default $FEWSAM_HOME/embeddings)")
    parser.add_argument("--model", required=True, help="converted LiteMedSAM model folder")
    parser.add_argument("--decoder", help="a few-shot decoder trained on this model's embeddings (optional)")
    parser.add_argument("--ct", action="store_true", help="also embed and measure TotalSegmentator's ct_small_3mm")
    parser.add_argument("--volumes", type=int, default=8, help="hippocampus validation volumes used (default all 8)")
    parser.add_argument("--axis", type=int, choices=(0, 1, 2), default=2,
                        help="slicing axis of the hippocampus entries (default 2, axial)")
    parser.add_argument("--stage-inputs", action="store_true",
                        help="entries with the slices' last-stage inputs too (the default decoder reads them)")
    parser.add_argument("--out", type=Path, default=BENCH, help="folder of RESULTS.md and results/ (default bench/)")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="fewsam_cache_formats_") as work:
        report = measure(args, Path(work))
    report.update(date=datetime.date.today().isoformat(), machine=machine_info(), load=[load, os.getloadavg()[0]],
                  command="python -m bench.cache_formats " + " ".join(argv if argv is not None else sys.argv[1:]))
    save_report("cache_formats", report, section(report), START, END, args.out)
    print(section(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
