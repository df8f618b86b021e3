"""From a few-shot collection to label maps: the whole pipeline around the cached embeddings.

``FewShotSegmenter.train`` embeds the labelled slices (and augmented copies) through the cache,
trains the decoder on those arrays, and keeps everything needed to segment new volumes: decoder
parameters, class prompt tokens, the class map, the base model's identity, the intensity and axis
settings and the three configs (:mod:`fewsam_jax.fewshot.config`). ``save``/``load`` round-trip it with
Orbax, without the collection's images. A decoder that adapts the encoder's last stage
(``encoder_lora_rank`` > 0) also has the slices' last-stage inputs cached (training and segmenting), and
holds and saves its stage copy with the adapters, so a cached volume is segmented without the encoder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fewsam_jax.cache import embed_volume
from fewsam_jax.config import SamConfig, get_config
from fewsam_jax.fewshot.augment import augment_slices
from fewsam_jax.fewshot.collection import Collection, load_collection, load_support_item
from fewsam_jax.fewshot.config import DecoderConfig, InferenceConfig, TrainConfig
from fewsam_jax.fewshot.decoder import FewShotDecoder
from fewsam_jax.fewshot.image_branch import context_slices
from fewsam_jax.fewshot.infer import (
    calibrate_thresholds,
    labels_from_logits,
    logits_to_native,
    postprocess_3d,
    predict_logits,
)
from fewsam_jax.fewshot.label_files import LabelFiles
from fewsam_jax.fewshot.prompts import images_to_low_res, labels_to_low_res
from fewsam_jax.fewshot.self_prompt import VolumePrompts, frame_labels
from fewsam_jax.fewshot.train import SupportSet, support_images, support_sources, support_tokens, train_decoder
from fewsam_jax.io import Volume, check_volume_header, from_array, get_slices, load_volume, stack_slices
from fewsam_jax.logs import tqdm
from fewsam_jax.modeling.encoder_stage import check_staged, is_staged
from fewsam_jax.modeling.sam import Sam, build_image_encoder, build_prompt_side
from fewsam_jax.outputs import (
    ChecksumError,
    FewSamError,
    read_json_object,
    tree_checksums,
    verify_checksums,
    write_dir,
)
from fewsam_jax.preprocess import Intensity
from fewsam_jax.weights import (
    LazyModel,
    ShapeRngs,
    find_model,
    is_model_dir,
    load_model,
    load_model_dir,
    model_ids,
    model_matches,
    restore_pytree,
    save_pytree,
    tensors_id,
)

# Augmented copies are already normalised to [0, 1]; this window passes them through unchanged.
IDENTITY_INTENSITY = Intensity.parse("window:0.5,1")


def volume_images(volume: Volume, intensity: Intensity, axis: int, config: DecoderConfig, sam_config: SamConfig,
                  indices=None) -> np.ndarray | None:
    """The slices ``indices`` (default all) along ``axis`` as the decoder's image branch sees them:
    intensity-normalised, with ``config.image_context`` neighbours either side, in the low-resolution frame,
    (n, L, L, 1 + 2 * context); None when ``config`` has no image branch."""
    if not config.image_features:
        return None
    return branch_images(get_slices(intensity.apply(volume.array), axis), config, sam_config, indices)


def branch_images(slices: np.ndarray, config: DecoderConfig, sam_config: SamConfig, indices=None) -> np.ndarray:
    """:func:`volume_images` from the already normalised slices (N, H, W) of a volume."""
    indices = np.arange(len(slices)) if indices is None else indices
    return images_to_low_res(context_slices(slices, indices, config.image_context), sam_config)


def support_set(
    collection: Collection,
    sam: Sam,
    intensity: Intensity,
    config: DecoderConfig = DecoderConfig(),
    training: TrainConfig = TrainConfig(),
    cache: Any = None,
    progress: bool = True,
) -> SupportSet:
    """Embed the collection's labelled slices (and ``training.augment``'s copies, drawn from ``training.seed``)
    through the cache; with an image branch in ``config``, keep the slices themselves too (:func:`volume_images`);
    with ``encoder_lora_rank`` > 0, their last-stage inputs too (cached beside the embeddings)."""
    augment = training.augment
    config = config.for_model(sam.config)
    staged = bool(config.encoder_lora_rank)
    embeddings, labels, groups, volumes, images, stage_inputs = [], [], [], [], [], []
    channels = config.image_channels
    next_group = 0
    for item in collection.support:  # every file's header readable before the first file is read whole
        check_volume_header(item.image)
        check_volume_header(item.labels)
    # every item read and checked before the first slice is embedded: its labelled slices are kept, its image let go
    support_labels = [load_support_item(item, collection.axis, collection.classes)[1] for item in collection.support]
    for volume_id, (item, label_slices) in enumerate(zip(collection.support, support_labels)):
        image = load_volume(item.image)
        entry = embed_volume(image, sam, axis=collection.axis, intensity=intensity, cache=cache,
                             slices=item.slices, stage_inputs=staged, progress=progress)
        embeddings.append(entry.load(list(item.slices)))
        stage_inputs.append(entry.load_stage_inputs(list(item.slices)).astype(np.float16) if staged else None)
        labels.append(labels_to_low_res(label_slices, collection.class_ids, sam.config))
        images.append(volume_images(image, intensity, collection.axis, config, sam.config, list(item.slices)))
        groups.append(next_group + np.arange(len(item.slices)))
        volumes.append(np.full(len(item.slices), volume_id))
        if augment.copies:
            normalised = get_slices(intensity.apply(image.array), collection.axis)[list(item.slices)]
            aug_images, aug_labels, sources = augment_slices(normalised, label_slices, augment, training.seed)
            aug_entry = embed_volume(from_array(stack_slices(aug_images, 2)), sam, axis=2,
                                     intensity=IDENTITY_INTENSITY, cache=cache, stage_inputs=staged, progress=progress)
            embeddings.append(aug_entry.load())
            stage_inputs.append(aug_entry.load_stage_inputs().astype(np.float16) if staged else None)
            labels.append(labels_to_low_res(aug_labels, collection.class_ids, sam.config))
            # a warped copy has no warped neighbours: its own slice stands in for them
            images.append(images_to_low_res(np.repeat(aug_images[..., None], channels, axis=-1), sam.config)
                          if config.image_features else None)
            groups.append(next_group + sources)
            volumes.append(np.full(len(sources), volume_id))
        next_group += len(item.slices)
    return SupportSet(
        embeddings=np.concatenate(embeddings).astype(np.float32),
        labels=np.concatenate(labels),
        groups=np.concatenate(groups),
        class_ids=collection.class_ids,
        volumes=np.concatenate(volumes),
        images=np.concatenate(images) if config.image_features else None,
        stage_inputs=np.concatenate(stage_inputs) if staged else None,
    )


def calibration_logits(decoder: FewShotDecoder, support: SupportSet,
                       episode_holdout: str = "slice") -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of the original labelled slices for threshold calibration.

    With ``episode_holdout="volume"`` (:class:`TrainConfig`) and several support volumes, each volume's
    slices are predicted from the prompts of the other volumes only (as a new volume will be), skipping a
    volume whose absence would leave a class without examples; otherwise from the whole support set.
    """
    originals = np.zeros(len(support.groups), bool)
    originals[np.unique(support.groups, return_index=True)[1]] = True
    held_out = []
    if episode_holdout == "volume":
        for volume in np.unique(support.volumes):
            others = support.volumes != volume
            if all((support.labels[others] == k).any() for k in range(1, support.num_classes + 1)):
                held_out.append((originals & ~others, others))
    if len(held_out) < 2:
        held_out = [(originals, None)]
    logits, labels = [], []
    for targets, prompts in held_out:
        tokens = support_tokens(decoder, support, prompts)
        images = support_images(decoder, support)
        logits.append(predict_logits(decoder, tokens, support_sources(decoder, support)[targets],
                                     images=None if images is None else images[targets])[0])
        labels.append(support.labels[targets])
    return np.concatenate(logits), np.concatenate(labels)


@dataclasses.dataclass
class FewShotSegmenter(LabelFiles):
    """A trained few-shot decoder and all it needs to segment a new volume: ``decoder.config`` is its
    :class:`DecoderConfig`, ``inference`` how its outputs become labels, ``training`` the record of how it
    was trained (None for decoders saved before the record existed)."""

    decoder: FewShotDecoder
    tokens: jax.Array  # (K, T, C)
    thresholds: np.ndarray  # (K,) logit threshold per class
    classes: dict[int, str]
    model_name: str
    weights_id: str
    intensity: Intensity
    axis: int
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    _sam: Sam | None = dataclasses.field(default=None, repr=False)
    tensors_id: str | None = dataclasses.field(default=None, repr=False)  # weights.tensors_id of the base model
    _model_source: Any = dataclasses.field(default=None, repr=False)  # model folder or preset to load from
    inference: InferenceConfig = dataclasses.field(default=InferenceConfig(), kw_only=True)
    training: TrainConfig | None = dataclasses.field(default=None, kw_only=True)

    @property
    def weights_ids(self) -> set[str]:
        """The ids the base model's weights go by (the weights id recorded at training, and the tensors id)."""
        return {i for i in (self.weights_id, self.tensors_id) if i}

    @property
    def class_ids(self) -> tuple[int, ...]:
        return tuple(sorted(self.classes))

    @property
    def cutoffs(self) -> np.ndarray:
        """(K,) the logit each class must exceed when segmenting: its threshold plus
        ``inference.threshold_offset``."""
        return np.asarray(self.thresholds, np.float32) + np.float32(self.inference.threshold_offset)

    @classmethod
    def train(
        cls,
        collection: Collection | str | os.PathLike,
        model: Sam | str = "litemedsam",
        config: DecoderConfig = DecoderConfig(),
        training: TrainConfig = TrainConfig(),
        inference: InferenceConfig = InferenceConfig(),
        intensity: Intensity | str = "percentile",
        cache: Any = None,
        progress: bool = True,
        callback: Callable[[int, FewShotDecoder, SupportSet], None] | None = None,
        callback_every: int = 0,
        *,
        sam: Sam | str | None = None,
    ) -> FewShotSegmenter:
        """Embed the collection's slices (cached), then train a decoder built as ``config`` says on the cached
        arrays as ``training`` says; ``inference``: how it will turn logits into labels (whether its thresholds
        are calibrated now, the presence threshold later).

        ``model``: the base model, a preset name, a converted model folder or a loaded ``Sam`` (``sam=`` is
        the older name of the same argument). ``callback``/``callback_every``: see
        :func:`~fewsam_jax.fewshot.train.train_decoder`."""
        for name, value, kind in (("config", config, DecoderConfig), ("training", training, TrainConfig),
                                  ("inference", inference, InferenceConfig)):
            if not isinstance(value, kind):
                raise TypeError(f"{name}: expected a {kind.__name__}, got {type(value).__name__}")
        training.check(config)
        if sam is not None:
            model = sam
        if not isinstance(collection, Collection):
            collection = load_collection(collection)
        sam = load_model(str(model)) if isinstance(model, (str, os.PathLike)) else model
        config = config.for_model(sam.config)
        if config.encoder_lora_rank:  # before any slice is embedded
            check_staged(sam.config, "encoder_lora_rank")
        intensity = Intensity.coerce(intensity)
        started = time.perf_counter()
        support = support_set(collection, sam, intensity, config, training, cache, progress)
        embedded = time.perf_counter()
        decoder = FewShotDecoder(sam, config, rngs=nnx.Rngs(training.seed))
        losses, tokens = train_decoder(decoder, support, training, progress=progress, callback=callback,
                                       callback_every=callback_every)
        thresholds = np.zeros(support.num_classes, np.float32)
        if inference.calibrate_threshold:
            thresholds = calibrate_thresholds(*calibration_logits(decoder, support, training.episode_holdout))
        info = {
            "labelled_slices": collection.num_slices,
            "support_rows": len(support.groups),
            "embed_seconds": round(embedded - started, 2),
            "train_seconds": round(time.perf_counter() - embedded, 2),
            "loss_first": losses[0] if losses else None,
            "loss_last": float(np.mean(losses[-10:])) if losses else None,
            "thresholds": thresholds.tolist(),
        }
        return cls(decoder, tokens, thresholds, dict(collection.classes), sam.config.name, sam.weights_id,
                   intensity, collection.axis, info, sam, tensors_id(sam), inference=inference, training=training)

    def use_model(self, model: Sam | str | os.PathLike) -> None:
        """Take ``model`` (a loaded ``Sam``, a converted model folder or a preset name) as the base model,
        after checking it holds the weights the decoder was trained on (a ValueError names both otherwise)."""
        if isinstance(model, Sam):
            self._check_model(model, "the given model")
            self._sam = model
            return
        path = Path(model).expanduser()
        if is_model_dir(path):
            preset = read_json_object(path / "config.json", DecoderFileError, "convert the model again").get("model")
            if preset != self.model_name:
                raise ValueError(f"{path} is a {preset!r} model, but the decoder was trained on {self.model_name!r}")
            if not model_ids(path) & self.weights_ids:
                sam = load_model_dir(path)
                self._check_model(sam, str(path))
                self._sam = sam
                return
            self._model_source, self._sam = path, None
            return
        if str(model) != self.model_name:
            raise ValueError(f"--model {model}: not a converted model folder, nor the decoder's base model "
                             f"{self.model_name!r}; pass the folder written by `fewsam convert`")
        self._model_source, self._sam = None, None

    def _check_model(self, sam: Sam, where: str) -> None:
        if sam.config.name != self.model_name:
            raise ValueError(f"{where} is a {sam.config.name!r} model, but the decoder was trained on "
                             f"{self.model_name!r}")
        if not model_matches(sam, self.weights_ids):
            raise ValueError(f"{where} holds {self.model_name} weights {sam.weights_id[:12]}, but the decoder was "
                             f"trained on weights {self.weights_id[:12]}; use the checkpoint it was trained with")

    def model_dir(self) -> Path:
        """The converted model folder the base model loads from: the one given to :meth:`use_model`, else the
        folder in ``$FEWSAM_HOME/models`` whose weights match (BaseModelNotFoundError says what to convert)."""
        if self._model_source is None:
            self._model_source = find_model(self.model_name, self.weights_ids)
        return self._model_source

    def sam(self) -> Sam:
        """The base model (for encoding slices not cached yet), loaded on first use."""
        if self._sam is None:
            self._sam = load_model_dir(self.model_dir())
        return self._sam

    @property
    def sam_config(self) -> SamConfig:
        """The base model's config (its preset), known without loading the model."""
        return self._sam.config if self._sam is not None else get_config(self.model_name)

    def base_model(self) -> Sam | LazyModel:
        """The base model if loaded, else a :class:`~fewsam_jax.model_dir.LazyModel` of :meth:`model_dir`:
        what :func:`~fewsam_jax.cache.embed_volume` needs, so a volume whose slices are all cached is
        segmented without ever reading the image encoder's weights."""
        return self._sam if self._sam is not None else LazyModel(self.model_dir())

    def iter_predictions(self, volume: Volume, cache: Any = None, progress: bool = True,
                         chunk: int = 32) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """:meth:`predict_volume` in chunks of ``chunk`` consecutive slices, so memory stays bounded by a
        chunk whatever the volume's size: yields ``(start, logits (n, K, H, W), presence (n, K))`` for slices
        ``start .. start + n - 1`` along ``axis``. Embeds the slices missing from the cache first (with an
        encoder stage in the decoder, their last-stage inputs too, which that stage embeds chunk by chunk). With
        ``inference.self_prompt`` a first pass over the chunks labels the volume and the tokens of the pass that
        yields are built from those labels (:mod:`~fewsam_jax.fewshot.self_prompt`), twice the decoding (also
        when the first pass labels nothing, and the second repeats it with the support's tokens)."""
        if chunk < 1:
            raise ValueError(f"chunk: expected a positive number of slices, got {chunk}")
        model = self.base_model()
        staged = self.decoder.encoder_stage is not None
        entry = embed_volume(volume, model, axis=self.axis, intensity=self.intensity, cache=cache,
                             stage_inputs=staged, progress=progress)
        if isinstance(model, LazyModel) and model.loaded is not None:  # a slice was missing: keep the model
            self._sam = model.loaded
        config = self.decoder.config
        slices = get_slices(self.intensity.apply(volume.array), self.axis) if config.image_features else None

        def decode(indices, tokens, embeddings=None):  # (n, K, L, L) logits shifted to the cut-offs, (n, K) presence
            images = None if slices is None else branch_images(slices, config, self.sam_config, indices)
            sources = entry.load_stage_inputs(indices) if staged else (
                entry.load(indices) if embeddings is None else embeddings)
            logits, presence = predict_logits(self.decoder, tokens, sources, images=images)
            return logits - self.cutoffs[None, :, None, None], presence

        chunks = [np.arange(start, min(start + chunk, len(entry))) for start in range(0, len(entry), chunk)]
        tokens = self.tokens
        if self.inference.self_prompt:  # a first pass, whose labels prompt the second
            prompts = VolumePrompts(self.decoder, len(self.classes), chunk)
            for indices in tqdm(chunks, desc="self-prompt", disable=not progress, unit="chunk"):
                embeddings = entry.load(indices)  # the prototypes' (and, without an encoder stage, the decoder's)
                logits, presence = decode(indices, tokens, embeddings)
                prompts.add(embeddings, frame_labels(logits, presence, self.inference.presence_threshold,
                                                     entry.slice_shape))
            tokens = prompts.tokens(tokens, self.inference.self_prompt)
        for indices in tqdm(chunks, desc="segment", disable=not progress, unit="chunk"):
            logits, presence = decode(indices, tokens)
            yield int(indices[0]), _native_chunk(logits, entry.slice_shape, chunk), presence

    def predict_volume(self, volume: Volume, cache: Any = None, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Per-class logits on the slice grid, shifted so 0 is each class's cut-off (:attr:`cutoffs`),
        and presence probabilities: (N, K, H, W) and (N, K), N slices along ``axis``. Holds every class's
        float32 logits of the whole volume at once; :meth:`segment` streams instead."""
        parts = list(self.iter_predictions(volume, cache, progress))
        return np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])

    def _slice_labels(self, logits: np.ndarray, presence: np.ndarray) -> np.ndarray:
        """(n, K, H, W) logits and (n, K) presence -> (n, H, W) label slices."""
        return labels_from_logits(logits, presence, self.class_ids, self.inference.presence_threshold)

    def labels_from(self, logits: np.ndarray, presence: np.ndarray, postprocess: bool = False) -> np.ndarray:
        """Label map (X, Y, Z) on the volume's canonical grid from :meth:`predict_volume`'s outputs
        (so a notebook can keep the logits for review without decoding twice)."""
        labels = stack_slices(self._slice_labels(logits, presence), self.axis)
        return postprocess_3d(labels, self.class_ids) if postprocess else labels

    def segment(self, volume: Volume | str | os.PathLike, cache: Any = None, postprocess: bool = False,
                progress: bool = True, chunk: int = 32) -> np.ndarray:
        """Label map (X, Y, Z) on the volume's canonical grid, decoded ``chunk`` slices at a time (peak
        memory: one chunk's logits and embeddings, besides the volume and its label map)."""
        volume = volume if isinstance(volume, Volume) else load_volume(volume)
        parts = [self._slice_labels(logits, presence)
                 for _, logits, presence in self.iter_predictions(volume, cache, progress, chunk)]
        labels = stack_slices(np.concatenate(parts), self.axis)
        return postprocess_3d(labels, self.class_ids) if postprocess else labels

    def save(self, directory: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write decoder, prompts and settings to ``directory`` (Orbax + JSON), atomically.

        An existing decoder folder is replaced only with ``overwrite=True``; a folder the library did not
        write is never replaced (:mod:`fewsam_jax.outputs`). ``fewshot.json`` records the SHA-256 of
        every state file, checked by :meth:`load`.
        """
        with write_dir(directory, "decoder", overwrite=overwrite) as staging:
            save_pytree(staging / "state", {"decoder": nnx.state(self.decoder), "tokens": self.tokens})
            meta = {
                "classes": {str(k): v for k, v in self.classes.items()},
                "model": self.model_name,
                "weights_id": self.weights_id,
                **({"tensors_id": self.tensors_id or tensors_id(self._sam)} if self.tensors_id or self._sam else {}),
                "intensity": self.intensity.key(),
                "axis": self.axis,
                "decoder": dataclasses.asdict(self.decoder.config),
                **({"training": dataclasses.asdict(self.training)} if self.training is not None else {}),
                "inference": dataclasses.asdict(self.inference),
                "tokens_shape": list(self.tokens.shape),
                "thresholds": [float(t) for t in self.thresholds],
                "info": self.info,
                "checksums": tree_checksums(staging),
            }
            (staging / "fewshot.json").write_text(json.dumps(meta, indent=2))
        return Path(directory)

    @classmethod
    def load(cls, directory: str | os.PathLike, model: Sam | str | os.PathLike | None = None, *,
             sam: Sam | str | os.PathLike | None = None) -> FewShotSegmenter:
        """Read a decoder folder written by :meth:`save`. ``fewshot.json`` is validated (keys, types,
        thresholds and token shape consistent with the classes) and the state files checked against their
        recorded SHA-256 (folders saved before checksums existed load unverified): a DecoderFileError
        (a ValueError) names the file and key otherwise.

        ``model`` (``sam=`` is the older name): the base model, a loaded ``Sam`` or a converted model
        folder, checked against the weights the decoder was trained on. By default the base model is found,
        when first needed, among the converted models in ``$FEWSAM_HOME/models`` by the preset and weights
        id recorded in the decoder (:meth:`model_dir`)."""
        model = sam if sam is not None else model
        directory = Path(directory)
        meta = read_decoder_meta(directory)
        config, legacy = meta["decoder"], "fewshot" in meta
        sam_config = get_config(meta["model"])

        def build():  # shape-only: the decoder takes the prompt side of the base model (and an encoder stage)
            prompt_encoder, mask_decoder = build_prompt_side(sam_config, rngs=ShapeRngs())
            encoder = build_image_encoder(sam_config.encoder, rngs=ShapeRngs()) if config.encoder_lora_rank else None
            base = _PromptSide(sam_config, prompt_encoder, mask_decoder, encoder)
            decoder = FewShotDecoder(base, config, rngs=ShapeRngs())
            if legacy:  # decoders saved with a flat "fewshot" config hold the removed similarity prior's vector
                decoder.similarity_embed = nnx.Param(jnp.zeros((sam_config.prompt_embed_dim,), jnp.float32))
            return decoder

        graphdef, abstract_state = nnx.split(nnx.eval_shape(build))
        k, t, c = meta["tokens_shape"]
        abstract = {"decoder": abstract_state, "tokens": jax.ShapeDtypeStruct((k, t, c), jnp.float32)}
        if legacy:  # and the mean class prototypes it read
            abstract["prototypes"] = jax.ShapeDtypeStruct((k, c), jnp.float32)
        restored = restore_pytree(directory / "state", abstract, "decoder", DecoderFileError,
                                  "; does fewshot.json match the state it was saved with?")
        decoder = nnx.merge(graphdef, restored["decoder"])
        if legacy:
            del decoder.similarity_embed
        segmenter = cls(
            decoder, restored["tokens"], np.asarray(meta["thresholds"], np.float32),
            {int(k): v for k, v in meta["classes"].items()}, meta["model"], meta["weights_id"],
            Intensity.parse(meta["intensity"]), meta["axis"], meta["info"], tensors_id=meta.get("tensors_id"),
            inference=meta["inference"], training=meta["training"],
        )
        if model is not None:
            segmenter.use_model(model)
        return segmenter


def _native_chunk(logits: np.ndarray, slice_shape: tuple[int, int], chunk: int) -> np.ndarray:
    """:func:`logits_to_native` of a chunk's (n <= chunk, K, L, L) logits, padded to ``chunk`` rows first, so
    every chunk of every volume with this slice shape runs one compiled resize (a shorter last chunk would
    trace and compile another)."""
    n = len(logits)
    if n < chunk:
        logits = np.concatenate([logits, np.zeros((chunk - n, *logits.shape[1:]), logits.dtype)])
    return logits_to_native(logits, slice_shape)[:n]


@dataclasses.dataclass
class _PromptSide:
    """What :class:`FewShotDecoder` reads of a ``Sam`` (config, prompt encoder, mask decoder; the image
    encoder only for an encoder stage to copy, else None): :meth:`FewShotSegmenter.load` builds the decoder's
    shapes from it."""

    config: SamConfig
    prompt_encoder: Any
    mask_decoder: Any
    image_encoder: Any = None


class DecoderFileError(FewSamError, ValueError):
    """A decoder folder's fewshot.json or state does not read back as what was saved."""


_META_TYPES = {
    "classes": dict, "model": str, "weights_id": str, "intensity": str, "axis": int, "decoder": dict,
    "training": dict, "inference": dict, "fewshot": dict, "tokens_shape": list, "thresholds": list, "info": dict,
    "checksums": dict, "tensors_id": str,
}
_META_OPTIONAL = {"info", "checksums", "tensors_id", "training"}
_META_CONFIGS = {"decoder": DecoderConfig, "training": TrainConfig, "inference": InferenceConfig}
# Decoders saved before the configs were split hold one flat "fewshot" object (FewShotConfig) instead of
# "decoder", "training" and "inference". What those were trained with where a field did not exist yet: one
# pass per class before ``class_decoding``, no image branch and no target augmentation before the image branch.
LEGACY_CONFIG = {"class_decoding": "separate", "image_features": 0, "image_context": 0, "warp_rotation_deg": 0.0,
                 "warp_scale": 0.0, "image_jitter": 0.0, "image_frame": "mask"}
# FewShotConfig fields since removed: the value every loadable decoder had (``trainable`` only chose what
# training updated, so any value loads)
_LEGACY_REMOVED = {"similarity_prior": False, "trainable": None}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _config_value(path: Path, key: str, field: dataclasses.Field, value: Any) -> Any:
    """``value`` from JSON as config field ``field``, type-checked against the field's default."""
    default = field.default if field.default is not dataclasses.MISSING else None
    annotation = str(field.type)
    where = f"{path}: key '{key}.{field.name}'"
    if value is None:
        if default is None or "None" in annotation:
            return None
        raise DecoderFileError(f"{where} is null; expected {type(default).__name__}")
    if dataclasses.is_dataclass(default):
        if not isinstance(value, dict):
            raise DecoderFileError(f"{where} is {type(value).__name__}; expected an object")
        return _config_from_json(path, f"{key}.{field.name}", type(default), value)
    if isinstance(default, bool) or annotation == "bool":
        ok = isinstance(value, bool)
    elif isinstance(default, float) or annotation.startswith("float"):
        ok = _is_number(value)
        value = float(value) if ok else value
    elif isinstance(default, int) or annotation.startswith("int"):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, str) or annotation.startswith("str"):
        ok = isinstance(value, str)
    elif isinstance(default, tuple) or annotation.startswith("tuple"):
        ok = isinstance(value, (list, tuple))
        value = tuple(tuple(v) if isinstance(v, list) else v for v in value) if ok else value
    else:
        ok = True  # a type this check does not know: the config validates it
    if not ok:
        expected = type(default).__name__ if default is not None else annotation
        raise DecoderFileError(f"{where} is {value!r} ({type(value).__name__}); expected {expected}")
    return value


def _config_from_json(path: Path, key: str, cls: type, raw: dict[str, Any]) -> Any:
    """``cls`` (one of the configs) from the JSON object at ``key``: fields type-checked, then validated by
    ``cls`` itself; a DecoderFileError names the key otherwise. Missing fields take their defaults."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise DecoderFileError(f"{path}: unknown key '{key}.{unknown[0]}' (not a {cls.__name__} field)")
    values = {name: _config_value(path, key, fields[name], v) for name, v in raw.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise DecoderFileError(f"{path}: key '{key}': {err}") from None


def _split_legacy(path: Path, meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A flat ``fewshot`` object (with LEGACY_CONFIG for fields it lacks) as the three configs' objects; the
    support copies' options come from ``info.augment``, where such decoders recorded them (their own seed was
    always the training seed)."""
    raw = {**LEGACY_CONFIG, **meta["fewshot"]}
    for name, loadable in _LEGACY_REMOVED.items():
        value = raw.pop(name, loadable)
        if loadable is not None and value != loadable:
            raise DecoderFileError(f"{path}: key 'fewshot.{name}' is {value!r}: this option was removed and the "
                                   "decoder cannot run without it; train it again")
    owner = {f.name: key for key, cls in _META_CONFIGS.items() for f in dataclasses.fields(cls)}
    split: dict[str, dict[str, Any]] = {key: {} for key in _META_CONFIGS}
    for name, value in raw.items():
        if name not in owner or name == "augment":
            raise DecoderFileError(f"{path}: unknown key 'fewshot.{name}' (not a FewShotConfig field)")
        split[owner[name]][name] = value
    augment = meta.get("info", {}).get("augment")
    if isinstance(augment, dict):
        split["training"]["augment"] = {k: v for k, v in augment.items() if k != "seed"}
    return split


def read_decoder_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """``fewshot.json`` of a decoder folder, validated, with ``decoder``, ``training`` and ``inference`` as the
    configs (``training`` None when not recorded); older decoders' flat ``fewshot`` object is split into them.
    The state files are checked against the recorded checksums."""
    directory = Path(directory)
    path = directory / "fewshot.json"
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a trained decoder directory (no fewshot.json); "
                                "create one with `fewsam train`")
    meta = read_json_object(path, DecoderFileError, "train the decoder again")
    unknown = sorted(set(meta) - set(_META_TYPES))
    if unknown:
        raise DecoderFileError(f"{path}: unknown key {unknown[0]!r}; expected {', '.join(_META_TYPES)}")
    legacy = "fewshot" in meta
    if legacy and any(key in meta for key in _META_CONFIGS):
        raise DecoderFileError(f"{path}: key 'fewshot' (older decoders) next to 'decoder', 'training' or "
                               "'inference'; expected one or the other")
    required = {"fewshot"} if legacy else {"decoder", "inference"}
    for key, kind in _META_TYPES.items():
        if key not in meta:
            if key in _META_OPTIONAL or (key in _META_CONFIGS or key == "fewshot") and key not in required:
                continue
            raise DecoderFileError(f"{path}: key {key!r} is missing")
        value = meta[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise DecoderFileError(f"{path}: key {key!r} is {type(value).__name__}; expected {kind.__name__}")
    meta.setdefault("info", {})
    if "checksums" in meta:
        try:
            verify_checksums(directory, meta["checksums"], "fewshot.json")
        except ChecksumError as err:
            raise DecoderFileError(str(err)) from None
    classes = meta["classes"]
    if not classes or not all(k.lstrip("-").isdigit() and int(k) > 0 and isinstance(v, str) for k, v in classes.items()):
        raise DecoderFileError(f"{path}: key 'classes' must map label ids > 0 to names, got {classes}")
    num_classes = len(classes)
    if meta["axis"] not in (0, 1, 2):
        raise DecoderFileError(f"{path}: key 'axis' is {meta['axis']}; expected 0, 1 or 2")
    shape = meta["tokens_shape"]
    if len(shape) != 3 or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape):
        raise DecoderFileError(f"{path}: key 'tokens_shape' is {shape}; expected [classes, tokens, channels]")
    if shape[0] != num_classes:
        raise DecoderFileError(f"{path}: key 'tokens_shape' has {shape[0]} classes but 'classes' lists {num_classes}")
    thresholds = meta["thresholds"]
    if len(thresholds) != num_classes or not all(_is_number(t) and not np.isnan(t) for t in thresholds):
        raise DecoderFileError(f"{path}: key 'thresholds' must hold {num_classes} numbers (one per class), "
                               f"got {thresholds}")
    try:
        sam_config = get_config(meta["model"])
        Intensity.parse(meta["intensity"])
    except ValueError as err:
        raise DecoderFileError(f"{path}: {err}") from None
    if shape[2] != sam_config.prompt_embed_dim:
        raise DecoderFileError(f"{path}: key 'tokens_shape' has {shape[2]} channels; model {meta['model']!r} "
                               f"has {sam_config.prompt_embed_dim}")
    raw = _split_legacy(path, meta) if legacy else {key: meta[key] for key in _META_CONFIGS if key in meta}
    if "inference" in raw:  # a key missing from an older file: what that decoder segmented with, as it still will
        # (no threshold offset before the option; presence gating at 0.5 before the default became 0)
        raw["inference"] = {"threshold_offset": 0.0, "presence_threshold": 0.5, **raw["inference"]}
    if "decoder" in raw:  # saved before encoder_lora_rank existed: the frozen encoder, whatever the default is now
        raw["decoder"] = {"encoder_lora_rank": 0, **raw["decoder"]}
    prefix = {key: "fewshot" if legacy else key for key in _META_CONFIGS}
    for key, cls in _META_CONFIGS.items():
        meta[key] = _config_from_json(path, prefix[key], cls, raw[key]) if key in raw else None
    meta["decoder"] = meta["decoder"].for_model(sam_config)
    if meta["decoder"].encoder_lora_rank and not is_staged(sam_config):
        raise DecoderFileError(f"{path}: key 'decoder.encoder_lora_rank' is {meta['decoder'].encoder_lora_rank}, "
                               f"but model {meta['model']!r} has no staged (TinyViT) encoder")
    return meta
