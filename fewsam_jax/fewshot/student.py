"""The few-shot decoder as a teacher: a U-Net student that segments from the pixels alone.

:func:`train_student` takes a trained :class:`~fewsam_jax.fewshot.FewShotSegmenter` and the collection it was
trained on and trains a 2D U-Net (:mod:`fewsam_jax.fewshot.unet`; with ``StudentConfig.members``, a seed ensemble of
them) on every slice, along the collection's axis, of the support volumes and of any ``unlabelled`` volumes. The
labelled slices keep their labels; every other slice is labelled by the teacher: the decoder's class probabilities
(the sigmoid of its logits, 0 at each class's cut-off) averaged with those of a partner U-Net trained on the
labelled slices alone, a class where the average passes one half (:func:`fuse`; ``StudentConfig.teacher_weight`` is
the decoder's share, 0 makes it self-training). Unlabelled volumes are what a user has anyway: the rest of the
cohort, images only.

The student (:class:`StudentSegmenter`) segments a volume from its intensities: neither the base model nor the
embedding cache is needed once it is trained. ``save``/``load`` round-trip it (Orbax state + ``student.json``,
checksummed). What it scores against the decoder and the U-Net: bench/RESULTS.md; the choice of its options:
README, "The few-shot method, as implemented".
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple, get_args

import numpy as np
from flax import nnx

from fewsam_jax.fewshot.collection import Collection, load_collection, load_support_item, plane_coverage, plane_eligible
from fewsam_jax.fewshot.config import check_choice
from fewsam_jax.fewshot.infer import labels_from_logits, postprocess_3d
from fewsam_jax.fewshot.label_files import LabelFiles
from fewsam_jax.fewshot.unet import UNet, UNetConfig, predict_unet_probabilities, train_unet
from fewsam_jax.io import Volume, get_slices, load_volume, stack_slices
from fewsam_jax.logs import tqdm
from fewsam_jax.outputs import FewSamError, read_json_object, tree_checksums, verify_checksums, write_dir
from fewsam_jax.preprocess import Intensity
from fewsam_jax.weights import ShapeRngs, restore_pytree, save_pytree

__all__ = [
    "IGNORE", "Calibration", "ChosenPlanes", "Fusion", "StudentConfig", "StudentFileError", "StudentSegmenter",
    "TeacherPrediction", "UnlabelledTeacher", "auto_planes", "combine_views", "fuse", "labelled_slices", "neighbours",
    "partner_predictions", "pseudo_labels", "resliced", "support_volumes", "teacher_predictions", "train_partner",
    "train_student", "unet_probabilities", "volume_shifts",
]


Calibration = Literal["none", "volume"]
UnlabelledTeacher = Literal["fused", "student"]
Fusion = Literal["mean", "union"]
ChosenPlanes = Literal["auto", "all"]


def _is_count(value: Any, least: int) -> bool:
    """An integer (not a bool, not a float) of at least ``least``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


@dataclasses.dataclass(frozen=True)
class StudentConfig:
    """How the student is taught.

    teacher_weight: the decoder's share of the teacher's class probabilities, in [0, 1] (the partner U-Net
      has the rest; 0: the partner alone, self-training; 1: the decoder alone).
    unet: architecture, optimisation and augmentation of both U-Nets (the partner and the student; the student's
      steps are ``student_steps`` when set); its ``feature_channels`` are the student's to set (``context``), so
      they must be 0 here.
    seed: of both U-Nets' initialisation, batches and augmentation (ensemble member i: ``seed + i``).
    rounds: teaching rounds; from the second on, the previous round's student replaces the partner U-Net in
      the teacher (the decoder's share stays ``teacher_weight``).
    margin: a pseudo-labelled pixel where some class's teacher probability lies within ``margin`` of one half
      is left out of the student's loss (0: every pixel counts; labelled slices always count whole).
    context: neighbouring slices on each side given to both U-Nets beside the slice itself (2.5D input,
      edge slices repeated at the volume's ends; they go in as the U-Net's extra features, so its training jitter
      moves them with the slice but leaves their contrast alone); 0: the slice alone.
    members: students taught in the last round, on the same pseudo-labels, member i with seed ``seed + i``; the
      student segments with their class probabilities combined by ``fusion`` (a seed ensemble; 1: one student;
      the union fusion was measured with one member only). Member 0 is
      the student ``members=1`` teaches. Costs a student training and a U-Net pass per member.
    student_steps: training steps of the student (each member, every round); None: ``unet.steps``, the partner's
      (from the second round on, the partner is the previous round's student, trained this long). The student
      trains on every slice of the support (and unlabelled) volumes, several times the partner's labelled slices,
      so at the partner's steps it visits each slice that many times less often.
    student_features: channels per level of the student's U-Net (each member, every round), as many levels as
      ``unet.features``; None: ``unet.features``, the partner's. A wider student has more capacity for what many
      pseudo-labelled slices teach, at a cost in training and inference time that grows with the width.
    planes: more slicing axes (0 sagittal, 1 coronal, 2 axial; not the collection's), one more student each in the
      last round: trained like member 0 (seed ``seed``) on the same pseudo-labelled volumes sliced along that axis
      (each volume's pseudo-label slices stacked back into 3D, then cut the other way); the student segments with
      every U-Net's class probabilities (members and planes, one vote each) combined by ``fusion`` on the volume's
      grid, which puts the shapes of the other planes into each label. (): the collection's axis alone. "auto":
      one plane, chosen on the last round's pseudo-labelled volumes (:func:`auto_planes`: of the two other axes,
      the one where the most slices holding a class hold every class; none when neither suits the volumes' voxel
      grids); "all": every other axis that suits the grids, highest coverage first (ties: axial, coronal,
      sagittal); the student keeps the planes chosen in its config. Costs a student training and a U-Net pass per
      plane; segmenting holds the volume's class probabilities whole.
    calibration: "volume": before each round's pseudo-labels, every class's decoder logits are shifted by one
      constant so that the decoder's predicted volume over the support volumes' unlabelled slices equals the
      partner's (:func:`volume_shifts`); the shift found there applies to every volume taught. "none": the logits
      as they are (how the two compare on the hippocampus: bench/RESULTS.md, "Seventeenth round").
    unlabelled_teacher: who labels ``train_student``'s unlabelled volumes. "student" (the default): the previous
      round's student alone, so they join from the second round on (``rounds`` >= 2 when any is given:
      :meth:`cohort`) and the decoder never reads them: no embedding, no decoder pass (self-training on the rest
      of the cohort, seeded by what the decoder taught on the support volumes, whose teacher is unchanged).
      "fused": the teacher of the support volumes (decoder and partner), in every round (the behaviour before
      this option; compared in bench/RESULTS.md, "Twentieth round").
    fusion: how the U-Nets' (members' and planes') class probabilities combine when segmenting
      (:func:`combine_views`): "mean", their average; "union", the classes' average with the background's lowest
      probability over the U-Nets, so a pixel stays background only where every U-Net puts it there (larger
      structures; compared in bench/RESULTS.md, "Twenty-seventh round"). Nothing changes with one U-Net.
    """

    teacher_weight: float = 0.5
    unet: UNetConfig = UNetConfig()
    seed: int = 0
    rounds: int = 1
    margin: float = 0.0
    context: int = 0
    members: int = 1
    student_steps: int | None = None
    student_features: tuple[int, ...] | None = None
    planes: tuple[int, ...] | ChosenPlanes = ()
    calibration: Calibration = "none"
    unlabelled_teacher: UnlabelledTeacher = "student"
    fusion: Fusion = "mean"

    def __post_init__(self):
        if not (isinstance(self.teacher_weight, (int, float)) and 0 <= self.teacher_weight <= 1):
            raise ValueError(f"teacher_weight: expected a number in [0, 1], got {self.teacher_weight!r}")
        if not isinstance(self.unet, UNetConfig):
            raise TypeError(f"unet: expected a UNetConfig, got {type(self.unet).__name__}")
        if self.unet.feature_channels:
            raise ValueError(f"unet.feature_channels: expected 0 (the student sets them from context), "
                             f"got {self.unet.feature_channels}")
        if not _is_count(self.rounds, 1):
            raise ValueError(f"rounds: expected a positive integer, got {self.rounds!r}")
        if self.rounds > 1 and self.teacher_weight == 1:
            raise ValueError("rounds: more than one round teaches nothing new with teacher_weight 1 (the partner, "
                             "which later rounds replace, has no share)")
        if not (isinstance(self.margin, (int, float)) and 0 <= self.margin < 0.5):
            raise ValueError(f"margin: expected a number in [0, 0.5), got {self.margin!r}")
        if not _is_count(self.context, 0):
            raise ValueError(f"context: expected a non-negative integer, got {self.context!r}")
        if not _is_count(self.members, 1):
            raise ValueError(f"members: expected a positive integer, got {self.members!r}")
        if self.student_steps is not None and not _is_count(self.student_steps, 1):
            raise ValueError(f"student_steps: expected a positive integer or None, got {self.student_steps!r}")
        if self.student_features is not None:
            features = self.student_features
            if not (isinstance(features, (tuple, list)) and len(features) >= 2
                    and all(_is_count(f, 1) for f in features)):
                raise ValueError(f"student_features: expected two or more positive channel counts or None, "
                                 f"got {features!r}")
            if len(features) != len(self.unet.features):
                raise ValueError(f"student_features: {len(features)} levels, but the partner's unet.features has "
                                 f"{len(self.unet.features)} (pad_multiple is set for that depth)")
            object.__setattr__(self, "student_features", tuple(features))
        planes = self.planes
        if planes not in get_args(ChosenPlanes):
            if not (isinstance(planes, (tuple, list)) and all(_is_count(a, 0) and a <= 2 for a in planes)
                    and len(set(planes)) == len(planes)):
                raise ValueError(f"planes: expected distinct slicing axes among 0, 1, 2, 'auto' or 'all', "
                                 f"got {planes!r}")
            object.__setattr__(self, "planes", tuple(planes))
        check_choice("calibration", self.calibration, Calibration)
        check_choice("unlabelled_teacher", self.unlabelled_teacher, UnlabelledTeacher)
        check_choice("fusion", self.fusion, Fusion)

    def replace(self, **changes) -> StudentConfig:
        return dataclasses.replace(self, **changes)

    def check_unlabelled(self, count: int) -> None:
        """ValueError when this config cannot teach ``count`` unlabelled volumes: with ``unlabelled_teacher``
        "student" they are labelled by the previous round's student, so they need ``rounds`` >= 2."""
        if count and self.unlabelled_teacher == "student" and self.rounds < 2:
            raise ValueError(f"{count} unlabelled volumes for the student to label, but with rounds = {self.rounds} "
                             "no round has a student before the last (unlabelled_teacher 'student' needs rounds >= 2: "
                             "StudentConfig.cohort(), or unlabelled_teacher='fused')")

    @classmethod
    def cohort(cls, unet: UNetConfig = UNetConfig(), **changes) -> StudentConfig:
        """How to teach with unlabelled volumes (what ``fewsam teach -i`` uses): two rounds, the first on the
        support volumes, the second also on the unlabelled ones labelled by the first round's student, each
        student trained ``3 x unet.steps`` steps (it sees every slice of many volumes), with one more student on
        the volumes cut along each other plane that suits their grids (``planes="all"``), the students fused as a
        union of foreground (``fusion="union"``); ``changes`` override any field. Chosen on hippocampus validation
        volumes with 40 unlabelled ones, confirmed once on test volumes: bench/RESULTS.md, "Twentieth round",
        "Twenty-sixth round", "Twenty-seventh round" and "Twenty-eighth round"."""
        return cls(**{"rounds": 2, "unlabelled_teacher": "student", "student_steps": 3 * unet.steps, "planes": "all",
                      "fusion": "union", "unet": unet, **changes})

    @property
    def unet_config(self) -> UNetConfig:
        """The partner U-Net's config as trained: ``unet`` with one input feature channel per neighbouring slice
        (the student's: :attr:`student_unet_config`)."""
        if not self.context:
            return self.unet
        return dataclasses.replace(self.unet, feature_channels=2 * self.context, feature_levels=(0,))

    @property
    def student_unet_config(self) -> UNetConfig:
        """The student's U-Net config as trained: :attr:`unet_config` with ``student_steps`` and
        ``student_features`` when set."""
        changes = {"steps": self.student_steps, "features": self.student_features}
        return dataclasses.replace(self.unet_config, **{k: v for k, v in changes.items() if v is not None})


def fuse(logits: np.ndarray | None, unet_probabilities: np.ndarray, weight: float) -> np.ndarray:
    """The decoder's (N, K, H, W) logits (0 at each class's cut-off) averaged with a U-Net's (N, K+1, H, W)
    class probabilities (background first): ``weight`` x sigmoid(logit) + (1 - weight) x the U-Net's, returned
    as (N, K, H, W) scores with 0 at probability one half, for the decoder's own labelling
    (:func:`~fewsam_jax.fewshot.infer.labels_from_logits`: the class with the highest positive score). ``logits``
    None: the U-Net's alone, as at ``weight`` 0."""
    unet = np.asarray(unet_probabilities, np.float32)[:, 1:]
    if logits is None:
        return unet - 0.5
    decoder = 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float32)))
    return weight * decoder + (1.0 - weight) * unet - 0.5


# how a student saved before these StudentConfig fields existed was taught (its student.json lacks them): a load
# fills them with these, never with today's defaults
_SAVED_BEFORE_OPTIONS = {"rounds": 1, "margin": 0.0, "context": 0, "members": 1, "student_steps": None,
                         "student_features": None, "planes": (), "calibration": "none", "unlabelled_teacher": "fused",
                         "fusion": "mean"}


class StudentFileError(FewSamError, ValueError):
    """A student folder's ``student.json`` or state does not hold what :meth:`StudentSegmenter.save` writes."""


@dataclasses.dataclass
class StudentSegmenter(LabelFiles):
    """U-Nets taught by a few-shot decoder, and what they need to segment a volume: ``unets`` (one per
    ``config.members``, then one per ``config.planes``; a single UNet is taken as one member), ``classes``
    ({id: name}, the U-Nets' outputs 1..K in id order), the slicing ``axis``, the ``intensity`` normalisation of
    its inputs, how it was taught (``config``, ``info``)."""

    unets: tuple[UNet, ...]
    classes: dict[int, str]
    axis: int
    intensity: Intensity
    config: StudentConfig = StudentConfig()
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.unets = (self.unets,) if isinstance(self.unets, UNet) else tuple(self.unets)
        if self.config.planes in get_args(ChosenPlanes):
            raise ValueError(f"config.planes: {self.config.planes!r} is resolved when teaching; a student holds the "
                             "planes chosen")
        expected = self.config.members + len(self.config.planes)
        if len(self.unets) != expected:
            raise ValueError(f"unets: {len(self.unets)} U-Nets for config.members = {self.config.members} and "
                             f"{len(self.config.planes)} planes")
        if self.axis in self.config.planes:
            raise ValueError(f"config.planes {self.config.planes}: holds the student's own axis {self.axis}")

    @property
    def axes(self) -> tuple[int, ...]:
        """Each U-Net's slicing axis: ``axis`` for the members, then ``config.planes``."""
        return (self.axis,) * self.config.members + self.config.planes

    @property
    def unet(self) -> UNet:
        """The first member (the whole student when ``config.members`` is 1)."""
        return self.unets[0]

    @property
    def class_ids(self) -> tuple[int, ...]:
        return tuple(sorted(self.classes))

    def member(self, index: int) -> StudentSegmenter:
        """Member ``index`` (0..members-1) of a seed ensemble as a one-member student: its config's seed is the
        member's and ``info["member"]`` its index. Member 0 is exactly what ``train_student`` teaches with
        ``members=1``; a later member learned from the same partner and pseudo-labels (those of ``seed``), so its
        config alone does not reproduce it."""
        if not 0 <= index < self.config.members:
            raise IndexError(f"member: expected an index in 0..{self.config.members - 1}, got {index}")
        config = self.config.replace(members=1, seed=self.config.seed + index, planes=())
        return dataclasses.replace(self, unets=(self.unets[index],), config=config,
                                   info={**self.info, "member": index})

    def views(self, volume: Volume) -> Iterator[np.ndarray]:
        """Each U-Net's class probabilities (N, K+1, H, W), background first, of the N slices along ``axis``, in
        ``unets`` order (the planes' students read the volume along their own axes; their probabilities are
        brought onto these slices)."""
        image = self.intensity.apply(volume.array)
        slices = get_slices(image, self.axis)
        for unet, plane in zip(self.unets, self.axes):
            if plane == self.axis:
                yield unet_probabilities(unet, slices, self.config.context)
                continue
            across = unet_probabilities(unet, get_slices(image, plane), self.config.context)  # (M, K+1, h, w)
            yield np.stack([get_slices(stack_slices(across[:, c], plane), self.axis)
                            for c in range(across.shape[1])], axis=1)

    def predict_volume(self, volume: Volume) -> np.ndarray:
        """Class probabilities (N, K+1, H, W), background first, of the N slices along ``axis``: every U-Net's
        :meth:`views` combined by ``config.fusion`` (:func:`combine_views`; "union" gives scores to take the most
        probable class of, not probabilities)."""
        return combine_views(self.views(volume), self.config.fusion)

    def _slice_labels(self, probabilities: np.ndarray) -> np.ndarray:
        """(n, K+1, H, W) probabilities -> (n, H, W) label slices: each pixel's most probable class id."""
        return np.asarray((0, *self.class_ids), np.int32)[probabilities.argmax(axis=1)]

    def labels_from(self, probabilities: np.ndarray, postprocess: bool = False) -> np.ndarray:
        """Label map (X, Y, Z) on the volume's canonical grid from :meth:`predict_volume`'s probabilities (with
        ``postprocess``, 3D largest component and hole filling per class)."""
        labels = stack_slices(self._slice_labels(probabilities), self.axis)
        return postprocess_3d(labels, self.class_ids) if postprocess else labels

    def segment(self, volume: Volume | str | os.PathLike, cache: Any = None, postprocess: bool = False,
                progress: bool = True, chunk: int = 32) -> np.ndarray:
        """Label map (X, Y, Z) on the volume's canonical grid, ``chunk`` slices at a time (memory: one chunk's
        probabilities; with ``config.planes``, the whole volume's at once). ``cache`` is accepted for the decoder's
        interface (cohorts, :meth:`segment_file`) and not used: the student reads the image alone."""
        if chunk < 1:
            raise ValueError(f"chunk: expected a positive number of slices, got {chunk}")
        volume = volume if isinstance(volume, Volume) else load_volume(volume)
        if self.config.planes:  # the other planes' students see the volume whole
            return self.labels_from(self.predict_volume(volume), postprocess)
        slices = get_slices(self.intensity.apply(volume.array), self.axis)
        parts = []
        for start in tqdm(range(0, len(slices), chunk), desc="segment", disable=not progress, unit="chunk"):
            rows = slice(start, start + chunk)
            views = (unet_probabilities(unet, slices, self.config.context, rows) for unet in self.unets)
            parts.append(self._slice_labels(combine_views(views, self.config.fusion)))
        labels = stack_slices(np.concatenate(parts), self.axis)
        return postprocess_3d(labels, self.class_ids) if postprocess else labels

    def save(self, directory: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the student to ``directory`` (Orbax state + ``student.json``), atomically. An existing student
        folder is replaced only with ``overwrite=True``; a folder the library did not write never is
        (:mod:`fewsam_jax.outputs`). ``student.json`` records every state file's SHA-256, checked by
        :meth:`load`."""
        with write_dir(directory, "student", overwrite=overwrite) as staging:
            save_pytree(staging / "state", _member_tree([nnx.state(unet) for unet in self.unets]))
            meta = {"classes": {str(k): v for k, v in self.classes.items()}, "axis": self.axis,
                    "intensity": self.intensity.key(), "num_outputs": len(self.classes) + 1,
                    "canvas": list(self.unet.canvas), "canvases": [list(unet.canvas) for unet in self.unets],
                    "config": dataclasses.asdict(self.config), "info": self.info,
                    "checksums": tree_checksums(staging)}
            (staging / "student.json").write_text(json.dumps(meta, indent=2))
        return Path(directory)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> StudentSegmenter:
        """Read a folder written by :meth:`save`: ``student.json`` validated and the state checked against its
        recorded SHA-256; a StudentFileError (a ValueError) names the file and what is wrong otherwise."""
        directory = Path(directory)
        path = directory / "student.json"
        if not path.is_file():
            raise StudentFileError(f"{directory}: no student.json; expected a folder written by "
                                   "StudentSegmenter.save (fewsam teach)")
        meta = read_json_object(path, StudentFileError, "write the student again")
        try:
            classes = {int(k): str(v) for k, v in meta["classes"].items()}
            raw = {**_SAVED_BEFORE_OPTIONS, **meta["config"]}
            unet = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.pop("unet").items()}
            config = StudentConfig(**raw, unet=UNetConfig(**unet))
            axis, outputs = int(meta["axis"]), int(meta["num_outputs"])
            count = config.members + len(config.planes)
            canvases = [tuple(int(c) for c in canvas) for canvas in meta.get("canvases", [meta["canvas"]] * count)]
            intensity = Intensity.parse(meta["intensity"])
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise StudentFileError(f"{path}: {type(err).__name__}: {err}; expected what StudentSegmenter.save "
                                   "writes") from None
        if len(canvases) != count:
            raise StudentFileError(f"{path}: {len(canvases)} canvases for {count} U-Nets (members and planes)")
        if outputs != len(classes) + 1 or axis not in (0, 1, 2):
            raise StudentFileError(f"{path}: {len(classes)} classes, {outputs} outputs and axis {axis} do not fit "
                                   "(outputs = classes + background, axis 0-2)")
        verify_checksums(directory, meta.get("checksums", {}), "student.json")
        unet_config = config.student_unet_config
        graphdef, abstract = nnx.split(nnx.eval_shape(lambda: UNet(unet_config, outputs, rngs=ShapeRngs())))
        states = restore_pytree(directory / "state", _member_tree([abstract] * count), "student", StudentFileError)
        unets = tuple(nnx.merge(graphdef, states[_member_key(i)]) for i in range(count))
        for unet, canvas in zip(unets, canvases):
            unet.canvas = canvas
        try:
            return cls(unets, classes, axis, intensity, config, meta.get("info", {}))
        except ValueError as err:
            raise StudentFileError(f"{path}: {err}") from None


def _member_key(index: int) -> str:
    """Member ``index``'s key in the saved state: ``unet`` for member 0 (as one-member students were always
    saved), then ``unet_1``, ``unet_2``..."""
    return f"unet_{index}" if index else "unet"


def _member_tree(states: Sequence[Any]) -> dict[str, Any]:
    """The members' states as the saved tree (:func:`_member_key`)."""
    return {_member_key(i): state for i, state in enumerate(states)}


IGNORE = -1
"""The label of a pseudo-labelled pixel left out of the student's loss (:class:`StudentConfig` ``margin``)."""


def neighbours(slices: np.ndarray, context: int, rows: slice = slice(None)) -> list[np.ndarray] | None:
    """The ``context`` neighbouring slices on each side of each of ``slices[rows]`` ((N, H, W) slices of one
    volume, in order), as (H, W, 2 x context) arrays (offsets -context..-1, 1..context; the end slices repeated
    past the volume's ends): the U-Nets' 2.5D input. None when ``context`` is 0."""
    if not context:
        return None
    count = len(slices)
    offsets = [o for o in range(-context, context + 1) if o]
    return [np.stack([slices[min(max(i + o, 0), count - 1)] for o in offsets], axis=-1)
            for i in range(count)[rows]]


def _loaded(sources: Iterable[Volume | str | os.PathLike], grids: list) -> Iterator[Volume]:
    """Each of ``sources`` as a Volume, one at a time, its (shape, spacing) appended to ``grids`` as it is read."""
    for source in sources:
        volume = source if isinstance(source, Volume) else load_volume(source)
        grids.append((volume.shape, volume.spacing))
        yield volume


def combine_views(views: Iterable[np.ndarray], fusion: Fusion = "mean") -> np.ndarray:
    """One (n, K+1, H, W) array from U-Nets' class probabilities on the same slices (each (n, K+1, H, W),
    background first; the first is added into): "mean", their average; "union", their average with the
    background's replaced by its lowest value over the views (a pixel stays background only where every view puts
    it there), scores for taking the most probable class. One view comes back as it is."""
    check_choice("fusion", fusion, Fusion)
    views = iter(views)
    total = next(views)
    lowest = total[:, :1].copy() if fusion == "union" else None
    count = 1
    for view in views:
        total += view
        if lowest is not None:
            np.minimum(lowest, view[:, :1], out=lowest)
        count += 1
    total /= count  # exact for one view (x / 1 == x)
    if lowest is not None:
        total[:, :1] = lowest
    return total


def auto_planes(labels: Sequence[np.ndarray], counts: Sequence[int], axis: int, classes: int,
                grids: Sequence[tuple[Sequence[int], Sequence[float]]],
                every: bool = False) -> tuple[tuple[int, ...], np.ndarray]:
    """``StudentConfig.planes="auto"``: the plane a second student learns from, and the coverage it was chosen by
    (``every``, ``planes="all"``: every plane that suits, highest coverage first).
    ``labels`` are the pseudo-labelled volumes' slices along ``axis`` (``counts[i]`` from volume i, U-Net indices
    1..``classes``), ``grids`` each volume's (shape, spacing). Of the two other axes, those whose slices suit every
    volume's grid (:func:`~fewsam_jax.fewshot.collection.plane_eligible`), the one with the highest
    :func:`~fewsam_jax.fewshot.collection.plane_coverage` on the pseudo-labelled volumes (a tie: the higher axis,
    axial before coronal); () when neither suits."""
    if sum(counts) != len(labels) or len(counts) != len(grids):
        raise ValueError(f"auto_planes: {len(labels)} label slices and {len(grids)} grids for counts {list(counts)}")
    starts = np.cumsum([0, *counts])
    volumes = [stack_slices(np.stack(labels[start: start + count]), axis) for start, count in zip(starts, counts)]
    coverage = plane_coverage(volumes, range(1, classes + 1))
    eligible = sorted((a for a in (2, 1, 0) if a != axis and plane_eligible(a, grids)), key=lambda a: -coverage[a])
    return tuple(eligible if every else eligible[:1]), coverage


def resliced(slices: Sequence[np.ndarray], counts: Sequence[int], axis: int,
             plane: int) -> tuple[list[np.ndarray], list[int]]:
    """Slices of several volumes along ``axis`` (``counts[i]`` consecutive (H, W) slices from volume i, in order)
    -> the same volumes' slices along ``plane``, volume by volume (each stacked back into 3D, then cut the other
    way), and their counts per volume: how a plane's student sees the pseudo-labelled volumes."""
    out, out_counts, start = [], [], 0
    for count in counts:
        across = get_slices(stack_slices(np.stack(slices[start: start + count]), axis), plane)
        out += list(across)
        out_counts.append(len(across))
        start += count
    return out, out_counts


def unet_probabilities(unet: UNet, slices: np.ndarray, context: int = 0, rows: slice = slice(None)) -> np.ndarray:
    """A U-Net's class probabilities (n, C, H, W), background first, of ``slices[rows]``, of (N, H, W) slices
    in [0, 1] of one volume (with ``context``, each slice's :func:`neighbours` are its extra input)."""
    return np.stack(predict_unet_probabilities(unet, list(slices[rows]), neighbours(slices, context, rows))
                    ).transpose(0, 3, 1, 2)


def _index_labels(label_slices: np.ndarray, class_ids: Sequence[int]) -> np.ndarray:
    """Label slices holding class ids -> the U-Net's indices (class_ids[i] -> i + 1; any other id -> 0)."""
    lut = np.zeros(max(int(label_slices.max(initial=0)), *class_ids) + 1, np.int32)
    lut[list(class_ids)] = np.arange(1, len(class_ids) + 1)
    return lut[np.clip(label_slices, 0, None)]


class TeacherPrediction(NamedTuple):
    """One volume as the teacher sees it: its slices along the axis (N, H, W) in [0, 1], the labelled slices'
    indices and label slices (as U-Net indices; None when none is labelled), the decoder's logits (N, K, H, W;
    0 at each cut-off) and presence (N, K), the partner U-Net's probabilities (N, K+1, H, W). ``logits`` and
    ``presence`` are None where the partner alone teaches (:func:`partner_predictions`)."""
    slices: np.ndarray
    labelled: list[int]
    true: np.ndarray | None
    logits: np.ndarray | None
    presence: np.ndarray | None
    partner: np.ndarray


def support_volumes(collection: Collection, class_ids: Sequence[int]) -> list[tuple[Volume, list[int], np.ndarray]]:
    """The collection's support volumes: (volume, labelled slice indices, their label slices as U-Net indices)."""
    out = []
    for item in collection.support:
        volume, label_slices = load_support_item(item, collection.axis, class_ids)
        out.append((volume, list(item.slices), _index_labels(label_slices, class_ids)))
    return out


def labelled_slices(support: Sequence[tuple[Volume, list[int], np.ndarray]], intensity: Intensity, axis: int,
                    context: int = 0) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray] | None]:
    """The labelled slices of :func:`support_volumes` in [0, 1] (``intensity``), their label maps as U-Net
    indices and, with ``context``, their :func:`neighbours` (else None): what the partner U-Net (and the U-Net
    baseline) trains on."""
    images, features = [], [] if context else None
    for volume, labelled, _ in support:
        slices = get_slices(intensity.apply(volume.array), axis)
        images += list(slices[labelled])
        if context:
            features += [neighbours(slices, context, slice(i, i + 1))[0] for i in labelled]
    return images, [s for _, _, true in support for s in true], features


def teacher_predictions(segmenter, partner: UNet, volumes: Iterable[tuple[Volume, list[int], np.ndarray | None]],
                        cache: Any = None, context: int = 0) -> Iterator[TeacherPrediction]:
    """The decoder's and the partner U-Net's predictions (the partner given ``context`` neighbouring slices) on
    every slice of each (volume, labelled slice indices, their label slices or None), one volume at a time;
    labelled by :func:`pseudo_labels`, for any teacher weight."""
    for volume, labelled, true in volumes:
        slices = get_slices(segmenter.intensity.apply(volume.array), segmenter.axis)
        logits, presence = segmenter.predict_volume(volume, cache=cache, progress=False)
        yield TeacherPrediction(slices, labelled, true, logits, presence,
                                unet_probabilities(partner, slices, context))


def partner_predictions(partner: UNet, volumes: Iterable[Volume], intensity: Intensity, axis: int,
                        context: int = 0) -> Iterator[TeacherPrediction]:
    """The partner U-Net's predictions alone on every slice of each unlabelled volume (``intensity``, slices along
    ``axis``), one volume at a time: the teacher of ``StudentConfig.unlabelled_teacher="student"``, which never
    asks the decoder (or its embedding cache) about these volumes."""
    for volume in volumes:
        slices = get_slices(intensity.apply(volume.array), axis)
        yield TeacherPrediction(slices, [], None, None, None, unet_probabilities(partner, slices, context))


def pseudo_labels(predictions: Sequence[TeacherPrediction], weight: float, presence_threshold: float = 0.0,
                  margin: float = 0.0, shift: np.ndarray | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Every slice of the predicted volumes and its label map as U-Net indices: the true labels on labelled
    slices, elsewhere the teacher's (:func:`fuse` with decoder weight ``weight``; classes judged absent on a slice
    by the decoder's presence head below ``presence_threshold`` are left out, as the decoder does). With
    ``margin``, a pseudo-labelled pixel where a class present on its slice has a teacher probability within
    ``margin`` of one half is :data:`IGNORE`. ``shift`` (K,) is added to each class's decoder logits first
    (:func:`volume_shifts`). A prediction without decoder logits (:func:`partner_predictions`) is labelled by the
    partner alone, every class present (``weight`` 0)."""
    images, labels = [], []
    for p in predictions:
        if p.logits is None:
            scores = fuse(None, p.partner, weight)
            presence = np.ones(scores.shape[:2], np.float32)
        else:
            logits = p.logits if shift is None else np.asarray(p.logits) + np.asarray(shift, np.float32)[:, None, None]
            scores, presence = fuse(logits, p.partner, weight), p.presence
        pseudo = labels_from_logits(scores, presence, tuple(range(1, p.partner.shape[1])), presence_threshold)
        if margin:
            present = (np.asarray(presence) >= presence_threshold)[..., None, None]
            pseudo[((np.abs(scores) < margin) & present).any(axis=1)] = IGNORE
        if p.labelled:
            pseudo[p.labelled] = p.true
        images += list(p.slices)
        labels += list(pseudo.astype(np.int32))
    return images, labels


def volume_shifts(predictions: Sequence[TeacherPrediction], presence_threshold: float = 0.0) -> np.ndarray:
    """Per class, the shift (K,) of the decoder's logits that makes its predicted volume over the predictions'
    unlabelled slices equal the partner U-Net's there. Both count one class at a time, on the slices where the
    decoder's presence head passes ``presence_threshold`` for it (the decoder labels nothing elsewhere): the
    decoder's volume is its pixels with a positive shifted logit, the partner's the pixels whose most probable
    class it is. The shift is 0 for a class with no such slice. Labelled slices are left out: the decoder was
    trained on them, and they keep their true labels anyway."""
    classes = predictions[0].logits.shape[1] if predictions else 0
    values, targets = [[] for _ in range(classes)], np.zeros(classes, int)
    for p in predictions:
        rows = np.setdiff1d(np.arange(len(p.slices)), p.labelled)
        logits, partner = np.asarray(p.logits, np.float32)[rows], np.asarray(p.partner)[rows].argmax(axis=1)
        present = np.asarray(p.presence)[rows] >= presence_threshold  # (n, K)
        for k in range(classes):
            values[k].append(logits[present[:, k], k].ravel())
            targets[k] += int((partner[present[:, k]] == k + 1).sum())
    shifts = np.zeros(classes, np.float32)
    for k, target in enumerate(targets):
        ranked = -np.sort(-np.concatenate(values[k]))  # descending
        if not len(ranked):
            continue
        # a cut-off between the target-th and the next largest logit keeps exactly the target's count (ties aside)
        upper = ranked[min(target, len(ranked)) - 1] if target else ranked[0] + 1.0
        lower = ranked[target] if target < len(ranked) else ranked[-1] - 1.0
        shifts[k] = -(upper + lower) / 2
    return shifts


def train_partner(segmenter, support: Sequence[tuple[Volume, list[int], np.ndarray]], config: StudentConfig,
                  progress: bool = True) -> UNet:
    """The partner U-Net: trained from scratch on the labelled slices of :func:`support_volumes` alone (the U-Net
    baseline, with ``config``'s context), on ``segmenter``'s axis and intensities."""
    images, labels, features = labelled_slices(support, segmenter.intensity, segmenter.axis, config.context)
    return train_unet(images, labels, len(segmenter.classes) + 1, config.unet_config, seed=config.seed,
                      progress=progress, features=features)[0]


def train_student(segmenter, collection: Collection | str | os.PathLike,
                  unlabelled: Sequence[Volume | str | os.PathLike] = (), config: StudentConfig | None = None,
                  cache: Any = None, progress: bool = True, partner: UNet | None = None) -> StudentSegmenter:
    """Teach a U-Net with ``segmenter`` (a trained :class:`~fewsam_jax.fewshot.FewShotSegmenter`).

    Args:
      collection: the collection ``segmenter`` was trained on (a manifest path or a Collection): same classes
        and axis.
      unlabelled: more volumes (paths or Volumes) whose every slice the teacher labels; their labels, if any
        exist, are never read.
      config: :class:`StudentConfig`; default: ``StudentConfig()``, or :meth:`StudentConfig.cohort` when
        ``unlabelled`` volumes are given.
      cache: the embedding cache the decoder reads (its volumes are embedded there once, as when segmenting).
      partner: the partner U-Net, if already trained (:func:`train_partner` with this collection and config:
        several students with one partner share it); default: trained here.
    Returns:
      the :class:`StudentSegmenter`; ``info`` holds the slice counts, each phase's seconds (``student_seconds``:
      every round's training; ``member_seconds``: each member's in the last round) and member 0's final loss.
    """
    if config is None:
        config = StudentConfig.cohort() if unlabelled else StudentConfig()
    if not isinstance(config, StudentConfig):
        raise TypeError(f"config: expected a StudentConfig, got {type(config).__name__}")
    if not isinstance(collection, Collection):
        collection = load_collection(collection)
    if dict(collection.classes) != dict(segmenter.classes) or collection.axis != segmenter.axis:
        raise ValueError(f"collection: classes {dict(collection.classes)} along axis {collection.axis}, but the "
                         f"decoder segments {dict(segmenter.classes)} along axis {segmenter.axis}: pass the "
                         f"collection it was trained on (fewsam teach --nnunet: --axis {segmenter.axis})")
    missing = [str(v) for v in unlabelled if not isinstance(v, Volume) and not Path(v).exists()]
    if missing:
        raise FileNotFoundError(f"unlabelled: no such file or folder: {', '.join(missing)}")
    try:
        config.check_unlabelled(len(unlabelled))
    except ValueError as err:
        raise ValueError(f"unlabelled: {err}") from None
    if config.planes not in get_args(ChosenPlanes) and segmenter.axis in config.planes:
        raise ValueError(f"config.planes {config.planes}: holds the collection's own axis {segmenter.axis} (planes "
                         "are the other slicing axes)")
    if partner is not None and (partner.config != config.unet_config
                                or partner.num_classes != len(segmenter.classes) + 1):
        raise ValueError("partner: trained with another U-Net config or class count than this StudentConfig's "
                         "unet_config and the decoder's classes (train_partner with the same config and decoder)")
    segmenter.base_model()  # where the decoder's base model comes from: not found fails now, not after the partner
    for source in unlabelled:  # each read once now (and let go): a bad one fails here, not rounds into teaching
        if not isinstance(source, Volume):
            load_volume(source)
    started = time.perf_counter()
    support = support_volumes(collection, segmenter.class_ids)
    if partner is None:
        partner = train_partner(segmenter, support, config, progress)
    partner_done = time.perf_counter()
    outputs, teacher_seconds, student_seconds = len(segmenter.classes) + 1, 0.0, 0.0
    threshold, shifts = segmenter.inference.presence_threshold, []
    for round_ in range(config.rounds):
        taught = time.perf_counter()
        # one volume at a time: its slices and pseudo-labels are kept, the teacher's logits and probabilities not
        # (but the support volumes' when calibrating: the shift is found on all of them)
        predictions = teacher_predictions(segmenter, partner, support, cache, config.context)
        shift = None
        if config.calibration == "volume":
            predictions = list(predictions)
            shift = volume_shifts(predictions, threshold)
            shifts.append([round(float(s), 4) for s in shift])
        # "student": the unlabelled volumes join from the second round on, labelled by the last round's student
        # (now the partner) alone; "fused": in every round, by the decoder and the partner
        joining = unlabelled if config.unlabelled_teacher == "fused" or round_ else ()
        grids = [(v.shape, v.spacing) for v, _, _ in support]  # the taught volumes' grids (planes "auto", "all")
        volumes = _loaded(joining, grids)
        if config.unlabelled_teacher == "fused":
            more = teacher_predictions(segmenter, partner, ((v, [], None) for v in volumes), cache, config.context)
        else:
            more = partner_predictions(partner, volumes, segmenter.intensity, segmenter.axis, config.context)
        images, labels, features, counts = [], [], [] if config.context else None, []
        for prediction in tqdm(itertools.chain(predictions, more), desc="teacher", unit="volume",
                               total=len(support) + len(joining), disable=not progress):
            more_images, more_labels = pseudo_labels([prediction], config.teacher_weight, threshold, config.margin,
                                                     shift)
            images += more_images
            labels += more_labels
            counts.append(len(more_images))
            if config.context:
                features += neighbours(prediction.slices, config.context)
        teacher_seconds += time.perf_counter() - taught
        # the last round trains every member on these pseudo-labels; an earlier one, member 0 alone (the partner)
        trained, member_seconds = [], []
        for i in range(config.members if round_ == config.rounds - 1 else 1):
            taught = time.perf_counter()
            trained.append(train_unet(images, labels, outputs, config.student_unet_config, seed=config.seed + i,
                                      progress=progress, features=features))
            member_seconds.append(round(time.perf_counter() - taught, 2))
        partner, losses = trained[0]
        student_seconds += sum(member_seconds)
    planes, coverage = config.planes, None
    if planes in get_args(ChosenPlanes):
        planes, coverage = auto_planes(labels, counts, segmenter.axis, len(segmenter.classes), grids,
                                       every=planes == "all")
        config = config.replace(planes=planes)
    plane_seconds = []
    for plane in planes:  # the last round's pseudo-labelled volumes, cut along another axis
        taught = time.perf_counter()
        across_images, across_counts = resliced(images, counts, segmenter.axis, plane)
        across_labels, _ = resliced(labels, counts, segmenter.axis, plane)
        across_features = [f for start, count in zip(np.cumsum([0, *across_counts]), across_counts)
                           for f in neighbours(np.stack(across_images[start: start + count]), config.context)] \
            if config.context else None
        trained.append(train_unet(across_images, across_labels, outputs, config.student_unet_config,
                                  seed=config.seed, progress=progress, features=across_features))
        plane_seconds.append(round(time.perf_counter() - taught, 2))
    student_seconds += sum(plane_seconds)
    unets = tuple(unet for unet, _ in trained)
    info = {"labelled_slices": sum(len(s) for _, s, _ in support), "training_slices": len(images),
            "support_volumes": len(support), "unlabelled_volumes": len(unlabelled), "rounds": config.rounds,
            "members": config.members,
            "ignored_fraction": float(np.mean([np.mean(lab == IGNORE) for lab in labels])),
            "partner_seconds": round(partner_done - started, 2), "teacher_seconds": round(teacher_seconds, 2),
            "student_seconds": round(student_seconds, 2), "member_seconds": member_seconds,
            **({"plane_seconds": plane_seconds} if plane_seconds else {}),
            **({"plane_coverage": [round(float(c), 4) for c in coverage]} if coverage is not None else {}),
            "loss_last": float(np.mean(losses[-10:])) if losses else None,
            **({"decoder_shifts": shifts} if shifts else {}),
            "decoder_train_seconds": segmenter.info.get("train_seconds")}
    return StudentSegmenter(unets, dict(segmenter.classes), segmenter.axis, segmenter.intensity, config, info)
