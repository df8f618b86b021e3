"""The shared data sets as few-shot tasks: which slices may be labelled, which are scored.

A :class:`Task` is a list of :class:`Fold` s. A fold is one few-shot problem: a pool of cases whose
slices the user may label (the few-shot draws, the fully supervised references) and test cases whose
slices are scored. Every method of a study is scored on exactly the test slices of every fold.

Protocols:
  * ``cross_volume`` (hippocampus MRI): one fold; labelled slices come from a few training volumes,
    the test volumes are other patients, scored in 3D.
  * ``within_volume`` (TotalSegmentator CT): one fold per volume; the even slices along the axis are
    the pool, the odd slices are scored (in 3D, as the sub-volume of odd slices): "label a few slices,
    segment the rest", with one fixed test set for every number of labelled slices.
  * ``cross_image`` (2D sets): one fold per image that shows a class (leave one image out); the other
    images are the pool, the held-out image is scored in 2D.

2D images become one-slice volumes (:func:`fewsam_jax.load_volume` on the PNG/JPEG); pixel spacing is
unknown there, so HD95 is in pixels.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from fewsam_jax.io import Volume, get_slices, load_volume
from fewsam_jax.label_maps import read_labels

DATASETS = ("hippocampus", "totalseg_ct", "ct_slices_2d", "cxr_lungs")


def default_data_root() -> Path:
    """``../shared/data`` next to the project checkout."""
    return Path(__file__).resolve().parents[3] / "shared" / "data"


@dataclasses.dataclass(frozen=True, eq=False)
class Case:
    """One labelled image: ``volume`` read from ``image``; ``labels`` (X, Y, Z) int on its canonical
    grid, holding the task's class ids (0 elsewhere)."""

    name: str
    image: Path
    volume: Volume
    labels: np.ndarray

    def label_slices(self, axis: int) -> np.ndarray:
        """(N, H, W) label slices along ``axis``."""
        return get_slices(self.labels, axis)


@dataclasses.dataclass(frozen=True, eq=False)
class Fold:
    """One few-shot problem.

    pool: cases whose ``pool_slices`` (same order) may be labelled; test: cases whose ``test_slices``
    are scored. Slice indices are along the task's axis.
    """

    name: str
    pool: tuple[Case, ...]
    pool_slices: tuple[tuple[int, ...], ...]
    test: tuple[Case, ...]
    test_slices: tuple[tuple[int, ...], ...]

    def __post_init__(self):
        if len(self.pool) != len(self.pool_slices) or len(self.test) != len(self.test_slices):
            raise ValueError(f"fold {self.name}: one slice list per case is needed")
        if not self.pool or not self.test:
            raise ValueError(f"fold {self.name}: needs at least one pool case and one test case")
        for case, slices in zip(self.test, self.test_slices):
            if not slices or len(set(np.diff(slices).tolist())) > 1 or (len(slices) > 1 and slices[1] <= slices[0]):
                raise ValueError(f"fold {self.name}: test slices of {case.name} must be increasing and evenly "
                                 f"spaced (they are scored as one 3D stack), got {slices}")


@dataclasses.dataclass(frozen=True, eq=False)
class Task:
    """A data set prepared for the study.

    classes: label id -> name; axis: slicing axis; intensity: spec for ``Intensity.parse``;
    protocol: ``cross_volume`` | ``within_volume`` | ``cross_image``; shots: the few-shot sweep
    (positive labelled slices, or images for ``cross_image``); notes: lines printed with the results
    (where the data comes from, how labels were made, split sizes); hd95_unit: "mm" or "px";
    reference: a published result quoted as an external row, ``{"method", "dice": {class name: value},
    "labelled", "source"}``, or None; unlabelled: images of other cases, outside every fold, whose labels are
    never read (the student's unlabelled volumes).
    """

    name: str
    classes: dict[int, str]
    axis: int
    intensity: str
    protocol: str
    folds: tuple[Fold, ...]
    shots: tuple[int, ...]
    notes: tuple[str, ...] = ()
    hd95_unit: str = "mm"
    reference: dict | None = None
    unlabelled: tuple[Path, ...] = ()

    def __post_init__(self):
        if self.protocol not in ("cross_volume", "within_volume", "cross_image"):
            raise ValueError(f"task {self.name}: unknown protocol {self.protocol!r}")
        if not self.classes or 0 in self.classes:
            raise ValueError(f"task {self.name}: classes must name label ids other than 0")
        if not self.folds:
            raise ValueError(f"task {self.name}: no folds")
        if len({fold.name for fold in self.folds}) < len(self.folds):
            raise ValueError(f"task {self.name}: fold names must be unique (they name the study's units)")
        if not self.shots or min(self.shots) < 1:
            raise ValueError(f"task {self.name}: shots must be positive counts, got {self.shots}")

    @property
    def test_items(self) -> int:
        return sum(len(fold.test) for fold in self.folds)


def _require(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; the reproduction study reads ../shared/data (see its README)")
    return path


def _int_labels(path: Path) -> np.ndarray:
    return read_labels(path)


def _all_slices(case: Case, axis: int) -> tuple[int, ...]:
    return tuple(range(case.volume.shape[axis]))


PLANES = {0: "sagittal", 1: "coronal", 2: "axial"}  # axes of the canonical (RAS) grid


def task_name(dataset: str, axis: int | None = None) -> str:
    """The name a study of ``dataset`` sliced along ``axis`` reports under (its files' stem): the data set's own
    name for its usual axis (None or 2), ``hippocampus_sagittal`` / ``_coronal`` for another."""
    if axis is None or axis == 2:
        return dataset
    if dataset != "hippocampus" or axis not in PLANES:
        raise ValueError(f"axis: only the hippocampus study slices along another axis (0 or 1), got {dataset} "
                         f"with axis {axis}")
    return f"{dataset}_{PLANES[axis]}"


def hippocampus(root: Path, quick: bool = False, axis: int = 2, unlabelled: int = 0) -> Task:
    """MSD Task04 hippocampus (manual labels). Full: 10 pool volumes, 20 test volumes; quick: 2 and 2. ``axis``:
    the plane of the labelled and scored slices (0 sagittal, 1 coronal, 2 axial); ``unlabelled``: the images of
    that many further volumes (after the pool and test ones, labels never read) for the students."""
    folder = _require(root / "hippocampus")
    names = sorted(p.name[: -len("_0000.nii.gz")] for p in (folder / "imagesTr").glob("*_0000.nii.gz"))
    pool_names, test_names = (names[:2], names[5:7]) if quick else (names[:10], names[10:30])
    others = names[7:] if quick else names[30:]
    if not 0 <= unlabelled <= len(others):
        raise ValueError(f"unlabelled: expected 0 to {len(others)} volumes (outside the pool and test volumes), "
                         f"got {unlabelled}")
    unlabelled_images = tuple(_require(folder / "imagesTr" / f"{n}_0000.nii.gz") for n in others[:unlabelled])

    def case(name: str) -> Case:
        image = folder / "imagesTr" / f"{name}_0000.nii.gz"
        return Case(name, image, load_volume(image), _int_labels(folder / "labelsTr" / f"{name}.nii.gz"))

    pool = tuple(case(n) for n in pool_names)
    test = tuple(case(n) for n in test_names)
    fold = Fold("hippocampus", pool, tuple(_all_slices(c, axis) for c in pool), test,
                tuple(_all_slices(c, axis) for c in test))
    pool_slices = sum(c.volume.shape[axis] for c in pool)
    test_slices = sum(c.volume.shape[axis] for c in test)
    return Task(
        name=task_name("hippocampus", axis),
        classes={1: "anterior", 2: "posterior"},
        axis=axis,
        intensity="percentile",
        protocol="cross_volume",
        folds=(fold,),
        shots=(1, 5, 10) if quick else (1, 3, 5, 10, 20, 50),
        notes=(
            f"Hippocampus MRI (Medical Segmentation Decathlon Task04, manual labels), {PLANES[axis]} slices.",
            (f"Pool (labelled slices are drawn from it): {len(pool)} volumes, {pool_slices} slices "
             f"({', '.join(pool_names)}); test: {len(test)} other volumes, {test_slices} slices, scored in 3D."),
            *([f"Unlabelled volumes for the students (images only): {len(unlabelled_images)} "
               f"({others[0]} to {others[unlabelled - 1]})."] if unlabelled else []),
        ),
        unlabelled=unlabelled_images,
        reference={"method": "nnU-Net, published", "dice": {"anterior": 0.90, "posterior": 0.89},
                   "labelled": "all 260 training volumes",
                   "source": "Medical Segmentation Decathlon test set (quoted, not run here)"},
    )


# TotalSegmentator ids of the abdominal structures the CT task scores (kept where large enough).
TOTALSEG_CLASSES = {1: "spleen", 2: "kidney_right", 3: "kidney_left", 5: "liver", 6: "stomach", 52: "aorta",
                    63: "inferior_vena_cava"}
TOTALSEG_MIN_VOXELS = 500


def totalseg_ct(root: Path, quick: bool = False) -> Task:
    """TotalSegmentator CT (model-generated labels), within-volume: even axial slices are the pool,
    odd slices are scored. Classes: those of :data:`TOTALSEG_CLASSES` with at least
    :data:`TOTALSEG_MIN_VOXELS` voxels in every volume used."""
    folder = _require(root / "totalseg_ct")
    names = {int(k): v for k, v in json.loads((folder / "class_map.json").read_text())["total"].items()}
    sources = [("ct_small_3mm", folder / "ct_small_3mm.nii.gz", folder / "ct_small_3mm_seg.nii.gz")]
    if not quick:
        sources = [("ct_3mm", folder / "ct_3mm.nii.gz", folder / "ct_3mm_seg.nii.gz"), *sources]
    raw = [(name, _require(image), load_volume(image), _int_labels(_require(seg))) for name, image, seg in sources]
    kept = {i: n for i, n in TOTALSEG_CLASSES.items()
            if names.get(i) == n and all((labels == i).sum() >= TOTALSEG_MIN_VOXELS for *_, labels in raw)}
    if not kept:
        raise ValueError(f"{folder}: none of {sorted(TOTALSEG_CLASSES.values())} has {TOTALSEG_MIN_VOXELS} voxels "
                         "in every volume")
    folds, sizes = [], []
    for name, image, volume, labels in raw:
        case = Case(name, image, volume, np.where(np.isin(labels, list(kept)), labels, 0).astype(np.int32))
        count = volume.shape[2]
        folds.append(Fold(name, (case,), (tuple(range(0, count, 2)),), (case,), (tuple(range(1, count, 2)),)))
        sizes.append(f"{name} ({count} slices, {volume.spacing[2]:g} mm)")
    return Task(
        name="totalseg_ct",
        classes=kept,
        axis=2,
        intensity="soft_tissue",
        protocol="within_volume",
        folds=tuple(folds),
        shots=(1, 5) if quick else (1, 3, 5, 10),
        notes=(
            ("TotalSegmentator CT: the labels were produced by the TotalSegmentator model, not by people; "
             "read the scores as agreement with that model."),
            (f"Within-volume, one decoder per volume: {', '.join(sizes)}; labelled slices are drawn from the even "
             "axial slices, the odd slices are scored (in 3D on the odd-slice sub-volume)."),
            (f"Classes: the listed abdominal structures with at least {TOTALSEG_MIN_VOXELS} voxels in every volume; "
             "soft-tissue window (40/400 HU)."),
        ),
    )


def _images_task(name: str, cases: list[Case], classes: dict[int, str], notes: tuple[str, ...]) -> Task:
    """Leave-one-image-out folds over the images that show at least one class."""
    shown = [c for c in cases if np.isin(c.labels, list(classes)).any()]
    folds = []
    for held_out in shown:
        pool = tuple(c for c in shown if c is not held_out)
        folds.append(Fold(held_out.name, pool, tuple((0,) for _ in pool), (held_out,), ((0,),)))
    return Task(name=name, classes=classes, axis=2, intensity="window:127.5,255", protocol="cross_image",
                folds=tuple(folds), shots=(1, 2), hd95_unit="px",
                notes=(*notes, (f"Leave one image out over {len(shown)} images: the decoder learns from 1 or 2 "
                                 "of the others and segments the held-out one (scored in 2D, HD95 in pixels).")))


def _mask_image_case(name: str, image: Path, masks: dict[int, list[Path]]) -> Case:
    """A 2D case whose label map is built from 0/255 mask images (one or more per class id)."""
    volume = load_volume(image)
    labels = np.zeros(volume.shape, np.int32)
    for class_id, paths in masks.items():
        for path in paths:
            mask = load_volume(path).array > 127
            if mask.shape != volume.shape:
                raise ValueError(f"{path}: mask of shape {mask.shape} does not match {image} ({volume.shape})")
            labels[mask & (labels == 0)] = class_id
    return Case(name, image, volume, labels)


CT_2D_CLASSES = ("aorta", "inferior_vena_cava", "liver")


def ct_slices_2d(root: Path, quick: bool = False) -> Task:
    """SAM-Med2D demo CT slices: the structures annotated on at least two images."""
    folder = _require(root / "ct_slices_2d")
    classes = {i + 1: n for i, n in enumerate(CT_2D_CLASSES)}
    cases = []
    for image in sorted((folder / "images").glob("*.png")):
        masks = {i: sorted((folder / "masks").glob(f"{image.stem}_{n}_[0-9][0-9][0-9].png")) for i, n in classes.items()}
        cases.append(_mask_image_case(image.stem, image, masks))
    return _images_task("ct_slices_2d", cases, classes, (
        ("2D CT slices (SAM-Med2D demo data: AMOS and TotalSegmentator images, manual or expert-refined masks), "
         "already windowed 8-bit PNGs; classes annotated on at least two images."),
    ))


def cxr_lungs(root: Path, quick: bool = False) -> Task:
    """Chest X-rays with one mask of both lung fields."""
    folder = _require(root / "cxr_lungs")
    images = sorted(folder.glob("[0-9]*.jpg"), key=lambda p: int(p.stem))
    cases = [_mask_image_case(p.stem, p, {1: [_require(folder / f"{p.stem}-mask.png")]}) for p in images]
    return _images_task("cxr_lungs", cases, {1: "lungs"}, (
        "Chest X-rays (512x512 JPEG) with manual masks of both lung fields (one class).",
    ))


def load_task(dataset: str, quick: bool = False, data_root: str | Path | None = None, axis: int | None = None,
              unlabelled: int = 0) -> Task:
    """The named data set (one of :data:`DATASETS`) as a Task; ``quick`` picks the small split. ``axis`` (another
    slicing plane) and ``unlabelled`` (volumes for the students) only for hippocampus (:func:`hippocampus`)."""
    loaders = {"hippocampus": hippocampus, "totalseg_ct": totalseg_ct, "ct_slices_2d": ct_slices_2d,
               "cxr_lungs": cxr_lungs}
    if dataset not in loaders:
        raise ValueError(f"dataset: expected one of {', '.join(DATASETS)}, got {dataset!r}")
    task_name(dataset, axis)  # another axis than the data set's: hippocampus only
    if unlabelled and dataset != "hippocampus":
        raise ValueError(f"unlabelled: only the hippocampus study has unlabelled volumes, got {unlabelled} for "
                         f"{dataset}")
    root = Path(data_root) if data_root is not None else default_data_root()
    if dataset == "hippocampus":
        return hippocampus(root, quick, 2 if axis is None else axis, unlabelled)
    return loaders[dataset](root, quick)
