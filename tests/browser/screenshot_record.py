"""The record of what the README's widget screenshots were drawn from: ``docs/screenshots.json``.

``screenshots.py`` writes it beside the PNGs; ``test_screenshot_record.py`` (fast, no browser) recomputes
:func:`current_inputs` and fails when the pictures are stale. The record holds

* ``inputs``: what the pictures depend on: the library's default few-shot configs (``DecoderConfig.default()``,
  ``TrainConfig()``, ``InferenceConfig()`` as JSON), the base-model preset the demo trains on, the demo's
  classes and number of labelled slices, and the SHA-256 of each file in :data:`DRAWING_FILES`;
* ``inputs_sha256``: the SHA-256 of ``inputs`` as canonical JSON (sorted keys, no spaces);
* ``date`` (UTC, ISO 8601) and ``images``: file name (in the record's folder) -> SHA-256 of the PNG.

Imports no browser tool, so the check runs anywhere the library imports.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import inspect
import json
from pathlib import Path
from typing import Any

from fewsam_jax.outputs import sha256_file, write_text

PROJECT = Path(__file__).resolve().parents[2]
DOCS = PROJECT / "docs"
RECORD = DOCS / "screenshots.json"
# the files that prepare, serve and photograph the apps (paths relative to the checkout root)
DRAWING_FILES = (
    "tests/browser/screenshots.py",
    "tests/browser/app_data.py",
    "tests/browser/app_annotator.ipynb",
    "tests/browser/app_viewer.ipynb",
)
IMAGES = ("widget_annotator.png", "widget_viewer.png")
REMEDY = "run `make screenshots`"


def canonical_json(value: Any) -> str:
    """``value`` as JSON with sorted keys and no whitespace: equal values give equal strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def current_inputs(project: Path = PROJECT) -> dict[str, Any]:
    """What the screenshots depend on, as it stands in the checkout ``project`` now (see the module doc), as
    plain JSON values (tuples as lists), so that it compares equal to a record read back from its file."""
    from fewsam_jax import demo
    from fewsam_jax.fewshot import FewShotSegmenter
    from fewsam_jax.fewshot.config import DecoderConfig, InferenceConfig, TrainConfig

    return json.loads(canonical_json({
        "decoder": dataclasses.asdict(DecoderConfig.default()),
        "training": dataclasses.asdict(TrainConfig()),
        "inference": dataclasses.asdict(InferenceConfig()),
        "model": inspect.signature(FewShotSegmenter.train).parameters["model"].default,
        "demo": {"classes": {str(k): v for k, v in demo.CLASSES.items()}, "labelled_slices": demo.LABELLED_SLICES},
        "files": {name: sha256_file(project / name) for name in DRAWING_FILES},
    }))


def inputs_hash(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(inputs).encode()).hexdigest()


def write_record(folder: Path = DOCS, project: Path = PROJECT) -> Path:
    """Write ``folder/screenshots.json`` for the PNGs of :data:`IMAGES` now in ``folder`` (all must exist)."""
    missing = [name for name in IMAGES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: no {', '.join(missing)}; the record describes pictures that exist")
    inputs = current_inputs(project)
    record = {
        "inputs_sha256": inputs_hash(inputs),
        "date": datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat(),
        "images": {name: sha256_file(folder / name) for name in IMAGES},
        "inputs": inputs,
    }
    return write_text(folder / RECORD.name, json.dumps(record, indent=2) + "\n")


def _differences(recorded: Any, current: Any, key: str = "") -> list[str]:
    """The keys (dotted) whose values differ between two JSON-like values."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        return [d for k in sorted(set(recorded) | set(current), key=str)
                for d in _differences(recorded.get(k), current.get(k), f"{key}.{k}" if key else str(k))]
    return [] if recorded == current else [f"{key}: recorded {recorded!r}, now {current!r}"]


def staleness(folder: Path = DOCS, project: Path = PROJECT) -> list[str]:
    """Why the screenshots in ``folder`` are stale (empty when they are not): no record, inputs that changed
    since it was written, or a recorded PNG that is missing or differs from its recorded hash."""
    path = folder / RECORD.name
    if not path.is_file():
        return [f"{path} is missing"]
    record = json.loads(path.read_text())
    problems = []
    current = current_inputs(project)
    if record.get("inputs_sha256") != inputs_hash(current):
        changed = _differences(record.get("inputs"), current) or ["inputs_sha256 does not match the inputs"]
        problems += [f"what they were drawn from changed: {c}" for c in changed]
    images = record.get("images", {})
    for name in sorted(set(IMAGES) - set(images)):
        problems.append(f"{name} is not in the record")
    for name, digest in sorted(images.items()):
        image = folder / name
        if not image.is_file():
            problems.append(f"{image} is missing")
        elif sha256_file(image) != digest:
            problems.append(f"{image} differs from the recorded picture")
    return problems
