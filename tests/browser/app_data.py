"""What the app notebooks show: a small synthetic phantom (the browser tests), or the real volume,
labels and prediction that ``screenshots.py`` prepared in ``$FEWSAM_APP_DIR`` (its ``app.json``)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import fewsam_jax as fs

PHANTOM_SHAPE = (64, 56, 12)  # (X, Y, Z); axial slices are 56 x 64 pixels
PHANTOM_CLASSES = {1: "organ", 2: "lesion"}


@dataclass(frozen=True)
class AppData:
    volume: fs.Volume
    classes: dict[int, str]
    labels: np.ndarray | str | None  # the annotator's initial labels
    labelled_slices: list[int] | None
    slice_index: int
    model: object  # a model name (loaded on the first SAM-assist use) or None
    prediction: np.ndarray | str | None = None
    ground_truth: np.ndarray | str | None = None
    logits: np.ndarray | None = None
    presence: np.ndarray | None = None


def phantom() -> tuple[np.ndarray, np.ndarray]:
    """A (64, 56, 12) float32 volume (an ellipsoid "organ" with a brighter "lesion" core, radius changing
    along Z so every axial slice differs) and its (X, Y, Z) int32 label map."""
    x, y, z = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in PHANTOM_SHAPE), indexing="ij")
    radius = ((x - 32) / 22) ** 2 + ((y - 28) / 18) ** 2 + ((z - 5.5) / 7) ** 2
    core = ((x - 36) / 7) ** 2 + ((y - 30) / 6) ** 2 + ((z - 6) / 4) ** 2
    labels = np.where(core <= 1, 2, np.where(radius <= 1, 1, 0)).astype(np.int32)
    image = 20 + 0.5 * x + np.select([labels == 2, labels == 1], [180.0, 110.0], 0.0)
    return image.astype(np.float32), labels


def load_app_data() -> AppData:
    """The phantom (no SAM: the tests drive the brush), or the content of ``$FEWSAM_APP_DIR/app.json``."""
    folder = os.environ.get("FEWSAM_APP_DIR")
    if not folder:
        image, labels = phantom()
        volume = fs.from_array(image, spacing=(1.0, 1.0, 2.0))
        return AppData(
            volume=volume, classes=PHANTOM_CLASSES, labels=None, labelled_slices=None, slice_index=6,
            model=None, prediction=np.roll(labels, 2, axis=0), ground_truth=labels,
        )
    folder = Path(folder)
    spec = json.loads((folder / "app.json").read_text())

    def path(key):
        return str(folder / spec[key]) if spec.get(key) else None

    def array(key):
        return np.load(folder / spec[key]) if spec.get(key) else None

    return AppData(
        volume=fs.load_volume(folder / spec["volume"]), classes={int(k): v for k, v in spec["classes"].items()},
        labels=path("labels"), labelled_slices=spec.get("labelled_slices"), slice_index=spec["slice_index"],
        model=spec.get("model", "litemedsam"), prediction=path("prediction"), ground_truth=path("ground_truth"),
        logits=array("logits"), presence=array("presence"),
    )
