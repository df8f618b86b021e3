"""README screenshots of the widgets, from the same Voila apps the browser tests drive, on real content.

    .venv/bin/python tests/browser/screenshots.py [--work fewsam_demo] [--out docs]

Runs ``make demo``'s job (``fewsam_jax.demo.run_demo``: MNI152 template, LiteMedSAM, 4 labelled axial
slices; it reuses the decoder already trained in ``--work`` when that was trained with today's default
configs, and trains again otherwise), then photographs
  * ``widget_annotator.png``: ``SliceAnnotator`` on the template with the demo's labelled slices;
  * ``widget_viewer.png``: ``ResultViewer`` with the demo's prediction, the reference labels and the
    decoder's per-slice uncertainty;
and writes ``screenshots.json`` beside them (``screenshot_record``: what they were drawn from, the date, the
PNGs' hashes), which the fast test ``test_screenshot_record.py`` checks against the checkout.
Needs the same tools as the browser tests (Debian chromium, voila, playwright).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from screenshot_record import current_inputs, write_record
from voila_harness import PROJECT, app_url, chromium_page, voila_server

VIEWPORT = (1200, 1000)


def apps_folder(work: Path) -> Path:
    """Where the two apps' folders and the servers' logs go: beside the demo's folder, not inside it (the demo
    refuses to write again into a folder holding files it did not write)."""
    return work.with_name(f"{work.name}_screenshots")


def prepare(work: Path) -> tuple[Path, Path]:
    """Runs the demo in ``work`` and writes the two apps' folders (``app.json`` + files) in :func:`apps_folder`."""
    from fewsam_jax.demo import CLASSES, LABELLED_SLICES, pick_slices, run_demo
    from fewsam_jax.fewshot import FewShotSegmenter
    from fewsam_jax.io import load_volume, save_labels
    from fewsam_jax.label_maps import read_labels

    run_demo(work, retrain=(work / "decoder").exists() and not trained_with_defaults(work / "decoder"))
    volume = load_volume(work / "mni152.nii.gz")
    truth = read_labels(work / "mni152_labels.nii.gz")
    axis = 2
    labelled = pick_slices(truth, LABELLED_SLICES, axis=axis)
    classes = {str(k): v.replace("_", " ") for k, v in CLASSES.items()}

    annotator_dir = apps_folder(work) / "app_annotator"
    annotator_dir.mkdir(parents=True, exist_ok=True)
    on_labelled = np.isin(np.arange(truth.shape[axis]), labelled)
    support = np.where(np.expand_dims(on_labelled, tuple(d for d in range(3) if d != axis)), truth, 0)
    save_labels(support, volume, annotator_dir / "labels.nii.gz", overwrite=True)  # the last run's
    write_spec(annotator_dir, {
        "volume": os.path.relpath(work / "mni152.nii.gz", annotator_dir), "classes": classes,
        "labels": "labels.nii.gz", "labelled_slices": labelled, "slice_index": labelled[2], "model": "litemedsam",
    })

    viewer_dir = apps_folder(work) / "app_viewer"
    viewer_dir.mkdir(parents=True, exist_ok=True)
    logits, presence = FewShotSegmenter.load(work / "decoder").predict_volume(volume, progress=False)
    np.save(viewer_dir / "logits.npy", logits.astype(np.float16))
    np.save(viewer_dir / "presence.npy", presence)
    unlabelled_middle = round((labelled[1] + labelled[2]) / 2)
    write_spec(viewer_dir, {
        "volume": os.path.relpath(work / "mni152.nii.gz", viewer_dir), "classes": classes,
        "prediction": os.path.relpath(work / "prediction.nii.gz", viewer_dir),
        "ground_truth": os.path.relpath(work / "mni152_labels.nii.gz", viewer_dir),
        "logits": "logits.npy", "presence": "presence.npy", "slice_index": unlabelled_middle,
    })
    return annotator_dir, viewer_dir


def trained_with_defaults(decoder: Path) -> bool:
    """Whether the decoder folder was trained on today's base model with today's default decoder, training and
    inference configs (its support copies, ``augment``, are the demo's own choice and not compared)."""
    from fewsam_jax.fewshot.config import DecoderConfig, InferenceConfig, TrainConfig
    from fewsam_jax.fewshot.segmenter import DecoderFileError, read_decoder_meta

    try:
        meta = read_decoder_meta(decoder)
    except (OSError, DecoderFileError):
        return False
    training = meta["training"]
    return (meta["model"] == current_inputs()["model"] and meta["decoder"] == DecoderConfig.default()
            and meta["inference"] == InferenceConfig() and training is not None
            and training.replace(augment=TrainConfig().augment) == TrainConfig())


def write_spec(folder: Path, spec: dict) -> None:
    tmp = folder / "app.json.tmp"
    tmp.write_text(json.dumps(spec, indent=2))
    os.replace(tmp, folder / "app.json")


def photograph(app_dir: Path, notebook: str, widget: str, ready: list[str], out: Path, log: Path) -> None:
    """Serves ``notebook`` on ``app_dir``'s content, waits for every ``ready`` selector, saves ``widget``."""
    with voila_server(log, env={"FEWSAM_APP_DIR": str(app_dir.resolve())}) as base, \
            chromium_page(*VIEWPORT) as (page, problems):
        page.goto(app_url(base, notebook), timeout=120_000, wait_until="domcontentloaded")
        for selector in ready:
            page.wait_for_selector(selector, timeout=120_000)
        page.mouse.move(0, 0)  # no hover outline on the canvas
        tmp = out.with_name(f".{out.name}.tmp.png")
        page.screenshot(path=str(tmp), clip=content_box(page, widget), full_page=True)
        os.replace(tmp, out)
        if problems.unexpected():
            raise RuntimeError(f"{notebook}: the page reported errors:\n" + "\n".join(problems.unexpected()))
    print(f"wrote {out}")


def content_box(page, selector: str, margin: int = 12) -> dict:
    """The page region the element's content covers (text, canvases, controls; not the stretched
    boxes around them), plus ``margin`` pixels."""
    left, top, right, bottom = page.evaluate(
        """(selector) => {
            const root = document.querySelector(selector);
            const rects = [...root.querySelectorAll("canvas, input, select, button, .noUi-target")]
                .map((e) => e.getBoundingClientRect());
            const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
            for (let node = walker.nextNode(); node; node = walker.nextNode()) {
                if (!node.textContent.trim()) continue;
                const range = document.createRange();
                range.selectNodeContents(node);
                rects.push(range.getBoundingClientRect());
            }
            const shown = rects.filter((r) => r.width > 0 && r.height > 0);
            return [Math.min(...shown.map((r) => r.left)), Math.min(...shown.map((r) => r.top)),
                    Math.max(...shown.map((r) => r.right)), Math.max(...shown.map((r) => r.bottom))];
        }""", selector)
    left, top = max(left - margin, 0), max(top - margin, 0)
    return {"x": left, "y": top, "width": right + margin - left, "height": bottom + margin - top}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=PROJECT / "fewsam_demo",
                        help="the demo's folder (default: fewsam_demo/, as make demo)")
    parser.add_argument("--out", type=Path, default=PROJECT / "docs", help="where the PNGs go (default: docs/)")
    args = parser.parse_args()
    started = time.perf_counter()
    annotator_dir, viewer_dir = prepare(args.work)
    drawn = "canvas.fewsam-canvas:not([data-render-count='0'])"
    photograph(annotator_dir, "app_annotator.ipynb", ".fewsam-annotator", [f".fewsam-annotator {drawn}"],
               args.out / "widget_annotator.png", apps_folder(args.work) / "voila_annotator.log")
    photograph(viewer_dir, "app_viewer.ipynb", ".fewsam-viewer",
               [f".fewsam-viewer .fewsam-plane-axial {drawn}", f".fewsam-viewer .fewsam-dice-plot {drawn}"],
               args.out / "widget_viewer.png", apps_folder(args.work) / "voila_viewer.log")
    print(f"wrote {write_record(args.out)}")
    print(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
