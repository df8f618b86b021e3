"""The few-shot collection: which slices of which volumes the user labelled, as a JSON manifest.

```json
{"version": 1, "classes": {"1": "anterior", "2": "posterior"}, "axis": 2,
 "support": [{"image": "a.nii.gz", "labels": "a_seg.nii.gz", "slices": [10, 18, 25]}]}
```
Paths are relative to the manifest. ``version`` (default 1) and ``axis`` (default 2) may be left
out; any other key is an error, and every value must have exactly its type (no coercion). A listed slice with no labelled voxel says "none of the
classes is on this slice" (a negative example).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterable, Literal, NoReturn, Sequence

import numpy as np

from fewsam_jax.cohort import split_suffix
from fewsam_jax.io import MAX_LABEL_ID, Volume, get_slices, load_volume, save_image, save_labels
from fewsam_jax.label_maps import label_ids, same_grid
from fewsam_jax.metrics import label_map
from fewsam_jax.outputs import OutputExistsError, check_output_file, write_text

log = logging.getLogger(__name__)


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
    def files(self) -> tuple[Path, ...]:
        """Every image and label map the collection reads (what nothing written from it may replace)."""
        return tuple(path for item in self.support for path in (item.image, item.labels))

    @property
    def num_slices(self) -> int:
        return sum(len(item.slices) for item in self.support)

    @classmethod
    def from_nnunet(cls, folder: str | os.PathLike, slices_per_case: int, cases: int | Sequence[str] | None = None,
                    axis: int | Literal["auto"] = "auto", channel: int = 0) -> Collection:
        """The labelled slices of an nnU-Net raw dataset (``dataset.json``, ``imagesTr``, ``labelsTr``):
        ``slices_per_case`` slices of each case spread over its labelled extent, plus one without labels
        (:func:`pick_slices`); ``cases``: how many cases
        (the first by name) or their names; ``axis``: 0, 1, 2 or "auto" (the default), the plane whose slices
        most often hold every class. See :func:`nnunet_collection`."""

        return nnunet_collection(folder, slices_per_case, cases=cases, axis=axis, channel=channel)


MANIFEST_VERSION = 1
"""The manifest format this code writes; it reads this version and every older one."""


_TOP_KEYS = ("version", "classes", "axis", "support")
_ENTRY_KEYS = ("image", "labels", "slices")
_LABEL_ID = re.compile(r"[1-9][0-9]*")


def _json_type(value: Any) -> str:
    """A parsed JSON value as an error message shows it: 'true', 'the number 2.9', "the string '035'"..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value!r}"
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:37] + "..."
        return f"the string {text!r}"
    if isinstance(value, list):
        return f"an array of {len(value)} item{'s' * (len(value) != 1)}"
    return "an object"


def _is_int(value: Any) -> bool:
    """A JSON integer: not a bool (``true`` is not 1) and not a float (``2.0`` is not 2)."""
    return isinstance(value, int) and not isinstance(value, bool)


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        self.key = key


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json object hook: ``{"axis": 0, "axis": 2}`` is an error, not the last value silently."""
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


class _Checker:
    """Raises ManifestError naming the file, the JSON path of the value and what was expected."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, where: str, message: str) -> ManifestError:
        return ManifestError(f"{self.path}: {where}: {message}")

    def expect(self, where: str, what: str, value: Any) -> ManifestError:
        return self.fail(where, f"expected {what}, got {_json_type(value)}")

    def keys(self, obj: dict, where: str, known: tuple[str, ...], required: tuple[str, ...]) -> None:
        for key in obj:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                inside = f"{where}: " if where else ""
                raise ManifestError(
                    f"{self.path}: {inside}unknown key {key!r}{hint} (known keys: {', '.join(known)})"
                )
        for key in required:
            if key not in obj:
                inside = f" in {where}" if where else ""
                raise ManifestError(f"{self.path}: missing key {key!r}{inside} (required: {', '.join(required)})")

    def file(self, entry: dict, i: int, name: str) -> Path:
        where = f"support[{i}].{name}"
        value = entry[name]
        if not isinstance(value, str) or not value.strip():
            raise self.expect(where, "a non-empty string (a path relative to the manifest)", value)
        try:
            resolved = (self.path.parent / value).resolve()
            exists = resolved.exists()
        except (OSError, ValueError, RuntimeError) as err:  # NUL, name too long, unencodable, symlink loop
            raise self.fail(where, f"not a usable path ({type(err).__name__}: {err})") from None
        if not exists:
            raise ManifestError(f"{self.path}: {where} not found: {resolved}")
        return resolved


def load_collection(path: str | os.PathLike) -> Collection:
    """Read and check a manifest: every file exists, slices are in range, grids agree.

    The schema is strict: an unknown key (``"axsi"``), a boolean or float where an integer belongs
    (``"axis": true``, ``"slices": [2.9]``), a string for the slice list (``"slices": "035"``), a
    negative or repeated slice all raise :class:`ManifestError` naming the file, the JSON path of the
    value (``support[2].slices[1]``) and what was expected. Nothing is coerced.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    try:
        raw = json.loads(path.read_bytes().decode("utf-8"), object_pairs_hook=_reject_duplicates,
                         parse_constant=_reject_constant)
    except _DuplicateKey as dup:
        raise ManifestError(f"{path}: not valid as a manifest: the key {dup.key!r} appears twice in one object") from None
    except UnicodeDecodeError as err:
        raise ManifestError(f"{path}: not UTF-8 text ({err})") from None
    except RecursionError:
        raise ManifestError(f"{path}: JSON nested too deeply to be a manifest") from None
    except ValueError as err:  # json.JSONDecodeError, and NaN/Infinity
        raise ManifestError(f"{path}: not valid JSON ({err})") from None
    check = _Checker(path)
    if not isinstance(raw, dict):
        raise check.expect("top level", "an object {'version', 'classes', 'axis', 'support'}", raw)
    check.keys(raw, "", _TOP_KEYS, required=("classes", "support"))

    version = raw.get("version", 1)
    if not _is_int(version) or version < 1:
        raise check.expect("version", f"a positive integer (this code reads 1..{MANIFEST_VERSION})", version)
    if version > MANIFEST_VERSION:
        raise check.fail("version", f"manifest version {version} is newer than this fewsam_jax reads "
                                    f"(1..{MANIFEST_VERSION}); upgrade fewsam_jax")

    raw_classes = raw["classes"]
    if not isinstance(raw_classes, dict):
        raise check.expect("classes", 'an object {"<label id>": "<class name>"}', raw_classes)
    if not raw_classes:
        raise check.fail("classes", "must name at least one label id other than 0 (background)")
    classes: dict[int, str] = {}
    for key, name in raw_classes.items():
        if key == "0":
            raise check.fail('classes["0"]', "label 0 is the background and cannot be a class")
        if not _LABEL_ID.fullmatch(key) or int(key) > MAX_LABEL_ID:
            raise check.fail(f"classes[{json.dumps(key)}]",
                             f"expected a label id written as a decimal integer 1..{MAX_LABEL_ID} (e.g. \"1\"), got {key!r}")
        if not isinstance(name, str) or not name.strip():
            raise check.expect(f"classes[{json.dumps(key)}]", "a non-empty string (the class name)", name)
        if name in classes.values():
            raise check.fail(f"classes[{json.dumps(key)}]", f"class name {name!r} is used twice; names must differ")
        classes[int(key)] = name

    axis = raw.get("axis", 2)
    if not _is_int(axis) or axis not in (0, 1, 2):
        raise check.fail("axis", f"'axis' must be 0, 1 or 2 (an integer), got {_json_type(axis)}")

    entries = raw["support"]
    if not isinstance(entries, list):
        raise check.expect("support", "an array of {'image', 'labels', 'slices'} objects", entries)
    if not entries:
        raise check.fail("support", "the collection is empty; list at least one labelled slice in 'support'")
    items = []
    for i, entry in enumerate(entries):
        where = f"support[{i}]"
        if not isinstance(entry, dict):
            raise check.expect(where, "an object {'image', 'labels', 'slices'}", entry)
        check.keys(entry, where, _ENTRY_KEYS, required=_ENTRY_KEYS)
        image, labels = check.file(entry, i, "image"), check.file(entry, i, "labels")
        slices = entry["slices"]
        if not isinstance(slices, list):
            raise check.expect(f"{where}.slices", "an array of slice indices (integers >= 0)", slices)
        if not slices:
            raise check.fail(f"{where}.slices", "lists no slices; label at least one")
        seen: dict[int, int] = {}
        for j, s in enumerate(slices):
            if not _is_int(s) or s < 0:
                raise check.expect(f"{where}.slices[{j}]", "a slice index (an integer >= 0)", s)
            if s in seen:
                raise check.fail(f"{where}.slices[{j}]", f"slice {s} is listed twice (also at slices[{seen[s]}])")
            seen[s] = j
        items.append(SupportItem(image=image, labels=labels, slices=tuple(slices)))
    return Collection(classes=classes, axis=axis, support=tuple(items))


def save_collection(collection: Collection, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write the manifest atomically, with paths relative to its folder where possible. An existing file at
    ``path`` is replaced only with ``overwrite`` (else OutputExistsError); never one of the collection's images
    or label maps."""
    path = Path(path).absolute()

    def rel(p: Path) -> str:
        return os.path.relpath(p, path.parent)

    raw = {
        "version": MANIFEST_VERSION,
        "classes": {str(k): v for k, v in sorted(collection.classes.items())},
        "axis": collection.axis,
        "support": [
            {"image": rel(item.image), "labels": rel(item.labels), "slices": list(item.slices)}
            for item in collection.support
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    check_output_file(path, overwrite=overwrite, inputs=collection.files)
    return write_text(path, json.dumps(raw, indent=2), overwrite=overwrite)


def _same_file(a: Path | None, b: Path | None) -> bool:
    return a is not None and b is not None and Path(a).resolve() == Path(b).resolve()


def other_entries(path: str | os.PathLike, classes: dict[int, str], axis: int,
                  image: Path | None) -> tuple[SupportItem, ...]:
    """The entries of the manifest at ``path`` other than ``image``'s, to keep when ``image``'s entry is
    written again (none when there is no manifest yet).

    Raises ManifestError when the manifest cannot be read or lists other ``classes`` or another ``axis``
    (one collection has one set of classes and one slicing axis).
    """
    path = Path(path)
    if not path.exists():
        return ()
    try:
        existing = load_collection(path)
    except ManifestError as err:
        raise ManifestError(f"{path} exists and cannot be extended ({err}); choose another path") from None
    if existing.classes != classes or existing.axis != axis:
        raise ManifestError(
            f"{path} exists with classes {existing.classes} along axis {existing.axis}, not {classes} "
            f"along axis {axis}; choose another path"
        )
    return tuple(item for item in existing.support if not _same_file(item.image, image))


def listed_labels(path: str | os.PathLike, image: Path | None) -> Path | None:
    """The labels file the manifest at ``path`` lists for ``image`` (a previous save), or None."""
    path = Path(path)
    if image is None or not path.exists():
        return None
    return next((item.labels for item in load_collection(path).support if _same_file(item.image, image)), None)


def entry_for(collection: Collection, image: Path | None, path: str | os.PathLike) -> SupportItem:
    """The entry of ``collection`` (read from ``path``) whose image is ``image``; with none, the only entry
    of a one-entry collection (an in-memory volume saved before); ManifestError otherwise."""
    matches = [item for item in collection.support if _same_file(item.image, image)]
    if not matches and len(collection.support) == 1:
        matches = list(collection.support)
    if not matches:
        images = ", ".join(str(item.image) for item in collection.support)
        raise ManifestError(f"{path}: no entry for this volume ({image or 'an in-memory array'}); it lists {images}")
    return matches[0]


class EarlierLabelsError(OutputExistsError):
    """:func:`save_entry` would replace labels an earlier save wrote for this volume (``labels``: that file), which
    the caller did not load."""

    def __init__(self, labels: Path, message: str):
        super().__init__(message)
        self.labels = labels


def save_entry(path: str | os.PathLike, volume: Volume, labels: np.ndarray, slices: Sequence[int],
               classes: dict[int, str], axis: int, *, image: Path | None = None,
               labels_path: str | os.PathLike | None = None, owned_labels: Path | None = None,
               overwrite: bool = False) -> SupportItem:
    """Write ``volume``'s (X, Y, Z) ``labels`` (NIfTI on its source grid) and its entry, labelled ``slices``, into
    the collection manifest at ``path`` (created, with its folder, when missing); returns the entry written.

    An existing manifest at ``path`` must have the same ``classes`` and ``axis``; its other volumes' entries are
    kept (:func:`other_entries`). ``image``: the file ``volume`` was read from, referenced as it is; None (a
    volume made from an array): ``volume`` is written beside the manifest as ``<manifest stem>_image.nii.gz``
    (numbered when that name is taken). ``labels_path`` defaults to ``<image stem>_labels.nii.gz`` beside the
    manifest.

    Nothing is written unless all of it may be (:mod:`fewsam_jax.outputs`): the labels file may replace an existing
    file only when it is ``owned_labels`` (the caller's labels came from it or were saved to it) or with
    ``overwrite``, so labels the manifest lists for this volume from an earlier save are never replaced by a
    caller that did not load them; it is never the image, nor another entry's labels or image. The manifest is
    read back before returning.
    """
    path = Path(path).absolute()
    if not path.parent.is_dir():
        if path.parent.exists():
            raise ValueError(f"{path}: its folder {path.parent} is a file, not a folder")
        path.parent.mkdir(parents=True)
    if path.is_dir():
        raise OutputExistsError(f"{path} is a folder; give a .json file path for the manifest")
    check_output_file(path, overwrite=True, inputs=[image])  # before reading it as a manifest
    others = other_entries(path, classes, axis, image)
    protected = [p for item in others for p in (item.image, item.labels)] + ([image] if image is not None else [])
    previous = listed_labels(path, image)  # this volume's labels saved before (by whoever)
    new_image = None
    if image is None:
        new_image, number = path.with_name(f"{path.stem}_image.nii.gz"), 2
        while new_image.exists() or new_image.is_symlink():
            new_image, number = path.with_name(f"{path.stem}_image_{number}.nii.gz"), number + 1
    labels_path = (Path(labels_path).absolute() if labels_path
                   else path.with_name(f"{_file_stem(image or new_image)}_labels.nii.gz"))
    owned = owned_labels is not None and labels_path.resolve() == Path(owned_labels).resolve()
    if (not (overwrite or owned) and previous is not None and labels_path.resolve() == previous.resolve()
            and labels_path.exists()):
        raise EarlierLabelsError(labels_path, f"{labels_path} holds this volume's labels from an earlier save, "
                                 f"which were not loaded here; continue from them (the manifest {path}) or pass "
                                 "overwrite=True to replace them")
    check_output_file(labels_path, overwrite=overwrite or owned, inputs=protected + [new_image],
                      suffixes=(".nii.gz", ".nii"))
    check_output_file(path, overwrite=True, inputs=protected + [new_image, labels_path])
    if new_image is not None:
        image = save_image(volume, new_image)
    save_labels(labels, volume, labels_path, overwrite=True)  # checked above
    entry = SupportItem(image=image, labels=labels_path, slices=tuple(int(s) for s in slices))
    save_collection(Collection(classes=classes, axis=axis, support=(*others, entry)), path, overwrite=True)
    load_collection(path)  # the manifest must read back
    return entry


def _file_stem(path: Path) -> str:
    """A file name without its volume suffix (``.nii.gz`` and the others :func:`~fewsam_jax.cohort.split_suffix`
    knows), else without its last suffix (``.dcm``, a DICOM series folder's name as it is)."""
    stem, suffix = split_suffix(path.name)
    return stem if suffix else path.stem


def load_support_item(item: SupportItem, axis: int, classes: Iterable[int] = ()) -> tuple[Volume, np.ndarray]:
    """The image volume and its label slices (len(item.slices), H, W), checked against each other. With the
    collection's ``classes`` (ids), other ids on the labelled slices are logged as a warning naming the file: they
    are learnt as background (a subset of a label map's structures is a valid choice, but should not be silent)."""
    image = load_volume(item.image)
    labels = load_volume(item.labels)
    if not same_grid(image, labels):
        raise ManifestError(
            f"label grid of {item.labels} (shape {labels.shape}) differs from image {item.image} "
            f"(shape {image.shape}); labels must be on the image's grid"
        )
    count = image.shape[axis]
    bad = [s for s in item.slices if not 0 <= s < count]
    if bad:
        raise ManifestError(f"{item.image}: slice indices {bad} out of range 0..{count - 1} along axis {axis}")
    try:
        ids = label_ids(labels.array, str(item.labels))
    except ValueError as err:
        raise ManifestError(str(err)) from None
    if ids.min() < 0:
        raise ManifestError(f"{item.labels}: a label map holds ids >= 0, but this one holds {int(ids.min())}: "
                            "an intensity image rather than labels?")
    label_slices = get_slices(ids, axis)[list(item.slices)]
    classes = set(classes)
    other = sorted(set(np.unique(label_slices).tolist()) - classes - {0}) if classes else []
    if other:
        log.warning("%s: label ids %s on the labelled slices are not among the classes %s; they are learnt as "
                    "background", item.labels, other, sorted(classes))
    return image, label_slices


# ---------------------------------------------------------------------------------------------- nnU-Net datasets


def centres_of_parts(slices: Sequence[int] | np.ndarray, count: int) -> np.ndarray:
    """``count`` of the sorted ``slices``, evenly spread: cut the list into ``count`` equal parts and take
    the element at the centre of each (``slices[int((i + 0.5) * n / count)]``; repeats when ``count`` > n)."""
    slices = np.asarray(slices)
    return slices[((np.arange(count) + 0.5) * len(slices) / count).astype(int)]


def pick_slices(labels: np.ndarray, count: int, *, axis: int = 2, empty: bool = True) -> list[int]:
    """Sorted slice indices along ``axis`` of the integer ``labels``: :func:`spread_over_labelled` of the
    slices holding a label. [] when no slice holds one."""
    axes = tuple(a for a in range(labels.ndim) if a != axis)
    return spread_over_labelled(np.flatnonzero((labels > 0).any(axis=axes)), count, empty)


def spread_over_labelled(labelled: Sequence[int] | np.ndarray, count: int, empty: bool = True) -> list[int]:
    """``count`` of the sorted ``labelled`` slice indices at the centres of equal parts of them
    (:func:`centres_of_parts`; all of them when fewer), and with ``empty`` one slice without labels, two before
    the first labelled one (slice 0 at the edge, left out when that one is labelled), so that the decoder also
    learns to leave a slice empty. The benchmark's pick (bench/fewshot.py): every few-shot score in
    bench/RESULTS.md was measured on slices picked this way (there a volume given ``count`` 0, when there are fewer
    labelled slices than volumes, gives its empty slice alone). [] when ``labelled`` is empty."""
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
        raise ValueError(f"count={count!r}: expected an integer >= 0")
    labelled = np.asarray(labelled)
    if not len(labelled):
        return []
    chosen = {int(s) for s in centres_of_parts(labelled, count)}
    below = max(int(labelled[0]) - 2, 0)
    if empty and below not in labelled:
        chosen.add(below)
    return sorted(chosen)


def class_presence(labels: np.ndarray, class_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which of ``class_ids`` each slice of the integer 3D ``labels`` holds, per slicing axis 0, 1, 2: three
    bool arrays of shape (K, labels.shape[axis])."""
    if not len(class_ids):
        raise ValueError("class_ids: expected at least one class id")
    per_class = []
    for c in class_ids:  # one pass over the volume per class, then three small reductions
        mask = labels == c
        per_class.append([mask.any(axis=tuple(a for a in range(3) if a != axis)) for axis in range(3)])
    return tuple(np.stack([axes[axis] for axes in per_class]) for axis in range(3))


def _presence_along(labels: np.ndarray, axis: int) -> dict[int, np.ndarray]:
    """Which slices along ``axis`` hold any label, as (1, n) under key ``axis`` (what picking needs of a case
    when the axis is fixed: one pass over the volume instead of one per class)."""
    return {axis: (labels > 0).any(axis=tuple(a for a in range(3) if a != axis))[None]}


def plane_coverage(label_volumes: Iterable[np.ndarray], class_ids: Sequence[int]) -> np.ndarray:
    """Per slicing axis 0, 1, 2 (sagittal, coronal, axial of a canonical (X, Y, Z) grid): of the slices holding
    any of ``class_ids``, pooled over the integer ``label_volumes``, the fraction holding every one of them
    (0 where no slice holds a class). Shape (3,). A labelled slice where every class shows teaches the boundaries
    between them (on the hippocampus the plane with the higher coverage scored higher at every slice count:
    bench/RESULTS.md, "Twenty-second round")."""
    return coverage_of_presence(class_presence(labels, class_ids) for labels in label_volumes)


def coverage_of_presence(presences: Iterable[Sequence[np.ndarray]]) -> np.ndarray:
    """:func:`plane_coverage` from the cases' :func:`class_presence` (what ``nnunet_collection`` keeps of each
    label map, so that it reads each once)."""
    every, any_ = np.zeros(3), np.zeros(3)
    for per_axis in presences:
        for axis, present in enumerate(per_axis):
            any_[axis] += present.any(axis=0).sum()
            every[axis] += present.all(axis=0).sum()
    return np.divide(every, any_, out=np.zeros(3), where=any_ > 0)


PLANE_LEAD = 0.1
"""How much more of its labelled slices must hold every class for "auto" to leave the axial plane."""
MAX_IN_PLANE_ANISOTROPY = 2.0
"""The largest ratio of a plane's two pixel sizes that "auto" slices along (thick-slice scans: axial only)."""


def best_plane(coverage: Sequence[float], grids: Iterable[tuple[Sequence[int], Sequence[float]]] = ()) -> int:
    """The slicing axis for ``axis="auto"``: the plane of the highest :func:`plane_coverage` among those that lead
    the axial plane (2) by at least ``PLANE_LEAD``, else axial (a tie, as with one class where every plane scores
    1, keeps it). A plane is eligible only where, on every case's ``grids`` ((shape, spacing in mm) of the
    canonical grid), it is more than one voxel wide both ways and its pixels are at most
    ``MAX_IN_PLANE_ANISOTROPY`` times longer one way than the other (:func:`plane_eligible`)."""
    grids = list(grids)
    leads = [axis for axis in (0, 1) if plane_eligible(axis, grids) and coverage[axis] >= coverage[2] + PLANE_LEAD]
    return max(leads, key=lambda axis: coverage[axis]) if leads else 2


def plane_eligible(axis: int, grids: Iterable[tuple[Sequence[int], Sequence[float]]]) -> bool:
    """Whether slices along ``axis`` are fit to label or learn from on every case's ``grids`` ((shape, spacing in
    mm) of the canonical grid): more than one voxel wide both ways, pixels at most ``MAX_IN_PLANE_ANISOTROPY``
    times longer one way than the other (a sagittal slice of a 5 mm CT is a strip)."""
    others = [a for a in range(3) if a != axis]
    return all(min(shape[a] for a in others) > 1
               and max(spacing[a] for a in others) <= MAX_IN_PLANE_ANISOTROPY * min(spacing[a] for a in others)
               for shape, spacing in grids)


def nnunet_collection(folder: str | os.PathLike, slices_per_case: int, cases: int | Sequence[str] | None = None,
                      axis: int | Literal["auto"] = "auto", channel: int = 0):
    """A :class:`Collection` from an nnU-Net raw dataset (``dataset.json``,
    ``imagesTr/CASE_0000.nii.gz``, ``labelsTr/CASE.nii.gz``; v1, v2 and the Decathlon's layout).

    Args:
      slices_per_case: labelled slices taken from each case, spread evenly over the slices where the
        labels are, plus one slice without labels (:func:`spread_over_labelled`, the benchmark's pick).
      cases: how many cases (the first ones by name), or their names; default all.
      axis: slicing axis (0 sagittal, 1 coronal, 2 axial), or "auto" (the default): the plane where the cases'
        labelled slices most often hold every class, when it leads the axial plane clearly and its pixels are near
        square (:func:`plane_coverage`, :func:`best_plane`; one class, or a tie: axial).
      channel: which image channel (``_0000`` default).
    """
    from fewsam_jax.cohort import read_dataset_labels
    from fewsam_jax.io import check_axis

    folder = Path(folder).expanduser()
    axis = axis if axis == "auto" else check_axis(axis)
    if isinstance(slices_per_case, bool) or not isinstance(slices_per_case, int) or slices_per_case < 1:
        raise ManifestError(f"slices_per_case={slices_per_case!r}: expected an integer >= 1")
    dataset = folder / "dataset.json"
    if not dataset.is_file():
        raise ManifestError(f"{folder}: no dataset.json; expected an nnU-Net raw dataset folder (dataset.json, "
                            "imagesTr/, labelsTr/)")
    classes = read_dataset_labels(dataset)
    meta = json.loads(dataset.read_text())
    ending = meta.get("file_ending", ".nii.gz") if isinstance(meta.get("file_ending", ".nii.gz"), str) else ".nii.gz"
    labels_dir, images_dir = folder / "labelsTr", folder / "imagesTr"
    for sub in (labels_dir, images_dir):
        if not sub.is_dir():
            raise ManifestError(f"{folder}: no {sub.name}/ folder; expected nnU-Net's imagesTr/ and labelsTr/")
    names = sorted(p.name[: -len(ending)] for p in labels_dir.iterdir()
                   if p.name.endswith(ending) and not p.name.startswith("."))
    if not names:
        raise ManifestError(f"{labels_dir}: no label maps ending in {ending!r} (dataset.json 'file_ending')")
    if cases is not None:
        if isinstance(cases, int) and not isinstance(cases, bool):
            if cases < 1:
                raise ManifestError(f"cases={cases}: expected at least 1")
            names = names[:cases]
        else:
            unknown = [c for c in cases if c not in names]
            if unknown:
                raise ManifestError(f"{labels_dir}: no label map for case(s) {', '.join(map(str, unknown[:5]))}")
            names = list(cases)
    cases_found, presences, grids = [], [], []
    for name in names:  # each label map read once: its class presence per slice is all that is kept
        image = images_dir / f"{name}_{channel:04d}{ending}"
        if not image.is_file() and channel == 0 and (images_dir / f"{name}{ending}").is_file():
            image = images_dir / f"{name}{ending}"  # the Decathlon's own layout: no channel suffix
        if not image.is_file():
            raise ManifestError(f"{folder}: case {name!r} has labels but no image {image.relative_to(folder)}")
        label_path = labels_dir / f"{name}{ending}"
        volume = load_volume(label_path)
        labels = label_map(volume.array, str(label_path))
        unknown_ids = sorted(set(np.unique(labels).tolist()) - set(classes) - {0})
        if unknown_ids:
            raise ManifestError(f"{label_path}: label ids {unknown_ids} are not in {dataset} 'labels'")
        cases_found.append((name, image, label_path))
        presences.append(class_presence(labels, sorted(classes)) if axis == "auto" else
                         _presence_along(labels, axis))
        grids.append((labels.shape, volume.spacing))
    if axis == "auto":
        coverage = coverage_of_presence(presences)
        axis = best_plane(coverage, grids)
        log.info("%s: labelled slices holding every class, sagittal / coronal / axial: %s; slicing along axis %d",
                 folder, " / ".join(f"{c:.2f}" for c in coverage), axis)
    items = []
    for (name, image, label_path), presence in zip(cases_found, presences):
        slices = spread_over_labelled(np.flatnonzero(presence[axis].any(axis=0)), slices_per_case)
        if not slices:
            log.warning("%s: no labelled voxel; case %s left out", label_path, name)
            continue
        items.append(SupportItem(image=image.resolve(), labels=label_path.resolve(), slices=tuple(slices)))
    if not items:
        raise ManifestError(f"{folder}: none of the {len(names)} case(s) holds a labelled voxel")
    log.info("%s: %d case(s), %d labelled slices along axis %d", folder, len(items),
             sum(len(i.slices) for i in items), axis)
    return Collection(classes=classes, axis=axis, support=tuple(items))
