"""The few-shot collection: which slices of which volumes the user labelled, as a JSON manifest.

```json
{"classes": {"1": "anterior", "2": "posterior"}, "axis": 2,
 "support": [{"image": "a.nii.gz", "labels": "a_seg.nii.gz", "slices": [10, 18, 25]}]}
```
Paths are relative to the manifest. A listed slice with no labelled voxel says "none of the
classes is on this slice" (a negative example).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from fewsam_jax.io import Volume, get_slices, load_volume


class ManifestError(ValueError):
    """A few-shot collection manifest that cannot be used as written."""


@dataclasses.dataclass(frozen=True)
class SupportItem:
    image: Path
    labels: Path
    slices: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Collection:
    classes: dict[int, str]
    axis: int
    support: tuple[SupportItem, ...]

    @property
    def class_ids(self) -> tuple[int, ...]:
        return tuple(sorted(self.classes))

    @property
    def num_slices(self) -> int:
        return sum(len(item.slices) for item in self.support)


def load_collection(path: str | os.PathLike) -> Collection:
    """Read and check a manifest: every file exists, slices are in range, grids agree."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ManifestError(f"{path}: not valid JSON ({err})") from None
    try:
        classes = {int(k): str(v) for k, v in raw["classes"].items()}
        axis = int(raw.get("axis", 2))
        entries = raw["support"]
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ManifestError(
            f"{path}: expected {{'classes': {{id: name}}, 'axis': int, 'support': [...]}} ({err!r})"
        ) from None
    if not classes or 0 in classes:
        raise ManifestError(f"{path}: 'classes' must name at least one label id other than 0 (background)")
    if axis not in (0, 1, 2):
        raise ManifestError(f"{path}: 'axis' must be 0, 1 or 2, got {axis}")
    if not entries:
        raise ManifestError(f"{path}: the collection is empty; list at least one labelled slice in 'support'")
    items = []
    for i, entry in enumerate(entries):
        try:
            item = SupportItem(
                image=(path.parent / entry["image"]).resolve(),
                labels=(path.parent / entry["labels"]).resolve(),
                slices=tuple(int(s) for s in entry["slices"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ManifestError(f"{path}: support[{i}] needs 'image', 'labels' and 'slices' ({err!r})") from None
        for name in ("image", "labels"):
            if not getattr(item, name).exists():
                raise ManifestError(f"{path}: support[{i}].{name} not found: {getattr(item, name)}")
        if not item.slices:
            raise ManifestError(f"{path}: support[{i}] lists no slices")
        items.append(item)
    return Collection(classes=classes, axis=axis, support=tuple(items))


def save_collection(collection: Collection, path: str | os.PathLike) -> Path:
    """Write the manifest atomically, with paths relative to its folder where possible."""
    path = Path(path).absolute()

    def rel(p: Path) -> str:
        return os.path.relpath(p, path.parent)

    raw = {
        "classes": {str(k): v for k, v in sorted(collection.classes.items())},
        "axis": collection.axis,
        "support": [
            {"image": rel(item.image), "labels": rel(item.labels), "slices": list(item.slices)}
            for item in collection.support
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        json.dump(raw, tmp, indent=2)
    os.replace(tmp.name, path)
    return path


def load_support_item(item: SupportItem, axis: int) -> tuple[Volume, np.ndarray]:
    """The image volume and its label slices (len(item.slices), H, W), checked against each other."""
    image = load_volume(item.image)
    labels = load_volume(item.labels)
    if image.shape != labels.shape or not np.allclose(image.affine, labels.affine, atol=1e-3):
        raise ManifestError(
            f"label grid of {item.labels} (shape {labels.shape}) differs from image {item.image} "
            f"(shape {image.shape}); labels must be on the image's grid"
        )
    count = image.shape[axis]
    bad = [s for s in item.slices if not 0 <= s < count]
    if bad:
        raise ManifestError(f"{item.image}: slice indices {bad} out of range 0..{count - 1} along axis {axis}")
    label_slices = get_slices(np.rint(labels.array).astype(np.int32), axis)[list(item.slices)]
    return image, label_slices
