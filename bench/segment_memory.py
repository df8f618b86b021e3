"""Peak memory of segmenting a large CT from the embedding cache: the whole-volume path against streaming.

A 512 x 512 x N CT (default N = 300) is built from the shared TotalSegmentator DICOM series (20 slices of
512 x 512, repeated along z; TotalSegmentator's model labels for liver and spleen), written to a temporary
folder, embedded once into a temporary cache, and a decoder is trained briefly on three of its slices (the
memory of segmenting does not depend on how well it was trained). Then each path runs in a fresh process
and reports its peak resident set size (``ru_maxrss``):

- ``before``: the code path ``segment`` took until 2026-11-30 (every slice's embedding loaded as float32, then
  every class's logits of the whole volume, low-resolution and on the slice grid, at once);
- ``whole``: ``predict_volume`` + ``labels_from`` (embeddings read a chunk at a time, but every class's float32
  logits of the whole volume kept, as a notebook does to review them);
- ``stream``: ``segment(chunk=32)`` (one chunk's embeddings and logits at a time);
- ``baseline``: the same process up to the decoder load (imports, model, volume), no segmentation.

    python -m bench.segment_memory [--slices 300]

Writes ``bench/results/segment_memory.json`` and its section of ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.sections import machine_info, save_report

DICOM = Path(__file__).resolve().parents[2] / "shared" / "data" / "totalseg_ct" / "dicom_series"
START, END = "<!-- segment-memory:start -->", "<!-- segment-memory:end -->"
CLASSES = {5: "liver", 1: "spleen"}


def prepare(work: Path, slices: int) -> None:
    """The big CT, its labels, a 3-slice collection, the cache filled and a decoder trained, under ``work``."""
    from fewsam_jax.fewshot import FewShotSegmenter, TrainConfig
    from fewsam_jax.io import from_array, load_volume, save_image, save_labels
    from fewsam_jax.label_maps import read_labels

    ct = load_volume(DICOM)
    labels = read_labels(DICOM.parent / "dicom_series_seg.nii.gz").astype(np.int16)
    reps = -(-slices // ct.shape[2])
    big = from_array(np.tile(ct.array, (1, 1, reps))[..., :slices].astype(np.float32), spacing=ct.spacing)
    big_labels = np.tile(labels, (1, 1, reps))[..., :slices]
    big_labels = np.where(np.isin(big_labels, list(CLASSES)), big_labels, 0)
    save_image(big, work / "ct.nii.gz")
    save_labels(big_labels, big, work / "ct_seg.nii.gz")
    present = np.flatnonzero(np.isin(big_labels, list(CLASSES)).any(axis=(0, 1)))
    chosen = present[np.linspace(0, present.size - 1, 3).round().astype(int)].tolist()
    manifest = {"classes": {str(k): v for k, v in CLASSES.items()}, "axis": 2,
                "support": [{"image": str(work / "ct.nii.gz"), "labels": str(work / "ct_seg.nii.gz"), "slices": chosen}]}
    (work / "collection.json").write_text(json.dumps(manifest))
    segmenter = FewShotSegmenter.train(work / "collection.json", training=TrainConfig(steps=5), intensity="soft_tissue",
                                       cache=work / "cache", progress=False)
    segmenter.segment(load_volume(work / "ct.nii.gz"), cache=work / "cache", progress=False)  # embeds every slice
    segmenter.save(work / "decoder")


def _status_mib(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MiB."""
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def measure(work: Path, mode: str) -> dict:
    """Run in a fresh process: load, then (segment) with the peak-RSS counter reset (Linux ``clear_refs``), so
    the peak reported is the segmentation's own, beside the resident size before it; MiB and seconds."""
    from fewsam_jax.fewshot import FewShotSegmenter
    from fewsam_jax.io import load_volume

    segmenter = FewShotSegmenter.load(work / "decoder")
    volume = load_volume(work / "ct.nii.gz")
    segmenter.sam()
    lifetime_peak = _status_mib("VmHWM")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
    before = _status_mib("VmRSS")
    started = time.perf_counter()
    if mode == "before":
        from fewsam_jax.cache import embed_volume
        from fewsam_jax.fewshot.infer import logits_to_native, predict_logits
        from fewsam_jax.fewshot.segmenter import volume_images

        entry = embed_volume(volume, segmenter.sam(), axis=segmenter.axis, intensity=segmenter.intensity,
                             cache=work / "cache", progress=False)
        images = volume_images(volume, segmenter.intensity, segmenter.axis, segmenter.decoder.config,
                               segmenter.sam().config)
        logits, presence = predict_logits(segmenter.decoder, segmenter.tokens, entry.load(),
                                          images=images)
        logits = logits_to_native(logits - segmenter.cutoffs[None, :, None, None], entry.slice_shape)
        labels = segmenter.labels_from(logits, presence)
    elif mode == "whole":
        labels = segmenter.labels_from(*segmenter.predict_volume(volume, cache=work / "cache", progress=False))
    elif mode == "stream":
        labels = segmenter.segment(volume, cache=work / "cache", progress=False)
    else:
        labels = np.zeros(volume.shape, np.int32)
    return {"mode": mode, "rss_before_mib": before, "peak_rss_mib": _status_mib("VmHWM"),
            "load_peak_rss_mib": lifetime_peak, "seconds": time.perf_counter() - started, "shape": list(volume.shape),
            "labelled_voxels": int((labels > 0).sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--work", type=Path, help="folder for the CT, cache and decoder (kept; reused when it holds a "
                        "decoder already); default: a temporary folder")
    parser.add_argument("--_measure", nargs=2, metavar=("WORK", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._measure:
        print(json.dumps(measure(Path(args._measure[0]), args._measure[1])))
        return
    if not DICOM.is_dir():
        raise SystemExit(f"needs the shared TotalSegmentator DICOM series at {DICOM}")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        if not (work / "decoder").is_dir():
            work.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            prepare(work, args.slices)
            print(f"prepared in {time.perf_counter() - started:.0f} s", flush=True)
        for mode in ("baseline", "before", "whole", "stream"):
            load = os.getloadavg()[0]
            out = subprocess.run([sys.executable, "-m", "bench.segment_memory", "--_measure", str(work), mode],
                                 check=True, capture_output=True, text=True).stdout
            rows.append({**json.loads(out.strip().splitlines()[-1]), "load_average": [load, os.getloadavg()[0]]})
            print(json.dumps(rows[-1]), flush=True)
    import jax

    report = {"date": datetime.date.today().isoformat(), "machine": {**machine_info(),
              "jax_device": jax.devices()[0].device_kind}, "slices": args.slices, "rows": rows}
    lines = [f"## Segmenting a large CT from the cache: peak memory (`python -m bench.segment_memory`, {report['date']})",
             "", f"{report['machine']['cpu']} ({report['machine']['cores']} cores), LiteMedSAM, default decoder "
             f"design, 2 classes, a 512 x 512 x {args.slices} CT already in the cache; each path in a fresh process.",
             "Resident before segmenting = after loading the decoder, base model and volume; the peak is the "
             "segmentation's own (the counter is reset before it).",
             "", "| path | resident before MiB | peak while segmenting MiB | added MiB | seconds | load |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['rss_before_mib']:.0f} | {r['peak_rss_mib']:.0f} | "
                     f"{r['peak_rss_mib'] - r['rss_before_mib']:.0f} | {r['seconds']:.1f} | "
                     f"{r['load_average'][0]:.1f}-{r['load_average'][1]:.1f} |")
    save_report("segment_memory", report, f"{START}\n" + "\n".join(lines) + f"\n{END}", START, END)


if __name__ == "__main__":
    main()
