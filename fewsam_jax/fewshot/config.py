"""The few-shot method's options, each in one place: what the decoder is, how it is trained, how it predicts.

- :class:`DecoderConfig`, the architecture: it fixes the decoder's parameters and its outputs, is saved
  with every trained decoder and rebuilt from it on load.
- :class:`TrainConfig`, the training run: steps, optimiser, loss, episodes, augmentation (of the targets
  inside each step, and :class:`AugmentConfig`'s support copies made before encoding) and the one seed of
  all of it. A trained decoder keeps it as the record of how it was trained.
- :class:`InferenceConfig`, how logits become labels: the presence threshold, and whether the per-class
  logit thresholds are calibrated on the labelled slices after training.

Defaults are the method as benchmarked (README, "The few-shot method, as implemented"; measurements in
bench/RESULTS.md). Every config is frozen and checks its fields on construction: a ValueError names the
field and what it expects. :func:`configs_from_overrides` routes ``key=value`` options (the benchmark's
``--variant``) to the config that owns each key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal, Self, get_args

from fewsam_jax.config import TINYVIT_BLOCK_LINEARS, SamConfig

# the LoRA rank encoder_lora_rank="auto" stands for on a staged encoder (bench/RESULTS.md, "Eighth round")
AUTO_LORA_RANK = 4

ClassDecoding = Literal["joint", "separate"]
ImageFrame = Literal["mask", "embedding"]
EpisodeHoldout = Literal["slice", "volume"]


def check_choice(name: str, value: Any, choices: Any) -> None:
    """ValueError naming ``name`` and the allowed values when ``value`` is not one of the ``Literal`` ``choices``."""
    allowed = get_args(choices)
    if value not in allowed:
        expected = " or ".join(repr(a) for a in allowed)
        raise ValueError(f"{name}: expected {expected}, got {value!r}")


class _Replace:
    """``config.replace(field=value, ...)``: a copy with those fields changed (validated again)."""

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class DecoderConfig(_Replace):
    """The few-shot decoder's architecture (:class:`~fewsam_jax.fewshot.decoder.FewShotDecoder`)."""

    # "joint": every class's tokens in one decoder pass per slice (the image side, nearly all of the cost,
    # is shared; token self-attention stays within a class); "separate": one pass per (slice, class), as SAM
    # runs prompts
    class_decoding: ClassDecoding = "joint"
    # individual support-slice prototypes per class, besides the mean foreground and background ones
    slice_tokens: int = 4
    # add the region centroid's positional encoding to each prototype token
    region_position: bool = True
    # two box-corner tokens at the class's mean bounding box in the support slices
    region_box: bool = True
    # channels of the convolutional branch on the image itself (:mod:`fewsam_jax.fewshot.image_branch`),
    # fused into the mask upscaling; 0: off, SAM's decoder alone
    image_features: int = 16
    # neighbouring slices on either side the image branch also sees (2.5D); 0: the slice alone
    image_context: int = 0
    # where the image branch runs: "mask" (the L x L label frame, ImageBranch) or "embedding" (the E x E
    # grid, each cell holding its 4 x 4 pixels, CellBranch)
    image_frame: ImageFrame = "mask"
    # LoRA rank on the image encoder's last stage (:mod:`fewsam_jax.modeling.encoder_stage`; staged encoders,
    # i.e. LiteMedSAM's TinyViT, only): the targets' embeddings come from a copy of that stage and the neck run
    # on the cached stage inputs, its adapters trained with the decoder; prompts stay on the cached embeddings.
    # 0: off, the frozen embeddings alone; "auto": AUTO_LORA_RANK on a staged encoder, 0 on SAM's ViT
    # (resolved by for_model when a decoder is built; a saved decoder records the number)
    encoder_lora_rank: int | Literal["auto"] = "auto"
    # the linear layers of each block of that stage that get adapters, of TINYVIT_BLOCK_LINEARS (a list, or a
    # string joined by "+" as in a benchmark's --variant, is taken as the tuple)
    encoder_lora_targets: tuple[str, ...] = ("qkv", "proj")

    def __post_init__(self):
        check_choice("class_decoding", self.class_decoding, ClassDecoding)
        check_choice("image_frame", self.image_frame, ImageFrame)
        given = self.encoder_lora_targets
        targets = tuple(given.split("+")) if isinstance(given, str) else given
        targets = tuple(targets) if isinstance(targets, list) else targets
        if (not isinstance(targets, tuple) or not targets or len(set(map(str, targets))) != len(targets)
                or not all(t in TINYVIT_BLOCK_LINEARS for t in targets)):
            raise ValueError(f"encoder_lora_targets: expected distinct names from {TINYVIT_BLOCK_LINEARS}, got "
                             f"{given!r}")
        object.__setattr__(self, "encoder_lora_targets", targets)
        rank = self.encoder_lora_rank
        if rank != "auto" and (not isinstance(rank, int) or isinstance(rank, bool) or rank < 0):
            raise ValueError(f"encoder_lora_rank: expected an integer >= 0 or 'auto', got {rank!r}")
        if self.slice_tokens < 0:
            raise ValueError(f"slice_tokens: expected >= 0, got {self.slice_tokens}")
        if self.image_features < 0 or self.image_context < 0:
            raise ValueError(f"image_features / image_context: expected >= 0, got {self.image_features} / "
                             f"{self.image_context}")
        if self.image_features and self.class_decoding != "joint":
            raise ValueError("the image branch (image_features > 0) needs class_decoding='joint'")
        if self.image_context and not self.image_features:
            raise ValueError("image_context needs the image branch (image_features > 0)")

    @classmethod
    def default(cls) -> DecoderConfig:
        """SAM's decoder with the image branch in the mask frame and, on a staged encoder, the encoder's last
        stage adapted (the default)."""
        return cls()

    @classmethod
    def sam_only(cls) -> DecoderConfig:
        """SAM's decoder alone, without the image branch or an adapted encoder stage: reads nothing but the
        cached embeddings."""
        return cls(image_features=0, encoder_lora_rank=0)

    @classmethod
    def frozen_encoder(cls) -> DecoderConfig:
        """The default decoder without adapting the encoder (``encoder_lora_rank=0``): cheaper to train and to
        segment, no stage inputs in the cache (costs and scores: bench/RESULTS.md, "Adapting the encoder's last
        stage")."""
        return cls(encoder_lora_rank=0)

    def for_model(self, sam_config: SamConfig) -> DecoderConfig:
        """This config for a model of ``sam_config``: ``encoder_lora_rank="auto"`` becomes
        :data:`AUTO_LORA_RANK` on a staged (TinyViT) encoder and 0 on SAM's ViT; a number stays (a decoder
        checks that the encoder has stages)."""
        if self.encoder_lora_rank != "auto":
            return self
        return self.replace(encoder_lora_rank=AUTO_LORA_RANK if sam_config.staged else 0)

    @property
    def num_tokens(self) -> int:
        """Prompt tokens per class, T: the two means, the box corners (``region_box``) and ``slice_tokens``."""
        return 2 + 2 * self.region_box + self.slice_tokens

    @property
    def image_channels(self) -> int:
        """Channels of the image branch's input: the slice and ``image_context`` neighbours on either side."""
        return 1 + 2 * self.image_context


@dataclasses.dataclass(frozen=True)
class AugmentConfig(_Replace):
    """Augmented copies of the support slices (:mod:`fewsam_jax.fewshot.augment`), made before encoding;
    drawn from :class:`TrainConfig`'s seed."""

    # augmented copies per labelled slice (0: none); each costs an encoder pass
    copies: int = 0
    # rotation drawn from [-rotation_deg, rotation_deg] degrees
    rotation_deg: float = 10.0
    # isotropic scale factor drawn from [1 - scale, 1 + scale]
    scale: float = 0.1
    # a left-right flip with probability 1/2 (off: it breaks the left/right priors of lateralised anatomy)
    flip: bool = False
    # intensity ** exp(uniform(-gamma, gamma))
    gamma: float = 0.25

    def __post_init__(self):
        if self.copies < 0 or self.rotation_deg < 0 or not 0 <= self.scale < 1 or self.gamma < 0:
            raise ValueError(f"copies / rotation_deg / scale / gamma: expected >= 0 / >= 0 / in [0, 1) / >= 0, got "
                             f"{self.copies} / {self.rotation_deg} / {self.scale} / {self.gamma}")


@dataclasses.dataclass(frozen=True)
class TrainConfig(_Replace):
    """One training run of the decoder (:func:`~fewsam_jax.fewshot.train.train_decoder`): Optax AdamW with
    warm-up and cosine decay, focal + Dice + presence loss, episodes drawn from the support set."""

    # optimiser steps
    steps: int = 600
    # target slices (crops) per step
    batch_slices: int = 2
    # train on crops of this many embedding cells a side (0: whole slices); inference runs on whole slices
    train_crop: int = 32
    # peak learning rate (AdamW), reached after warmup_steps, then cosine decay
    learning_rate: float = 5e-4
    # the image branch's peak learning rate (None: learning_rate); needs the image branch
    image_learning_rate: float | None = None
    warmup_steps: int = 10
    weight_decay: float = 1e-2
    # global-norm gradient clipping
    grad_clip: float = 1.0
    # loss = focal_weight x focal + dice_weight x Dice + presence_weight x presence BCE (SAM's 20:1 focal:Dice)
    focal_weight: float = 20.0
    dice_weight: float = 1.0
    presence_weight: float = 1.0
    focal_gamma: float = 2.0
    # the focal loss's class weighting (None: none)
    focal_alpha: float | None = 0.25
    # share of the other support slices a training episode prompts with
    episode_fraction: float = 0.5
    # prompts never come from the target's "slice", or (several support volumes) its whole "volume"
    episode_holdout: EpisodeHoldout = "slice"
    # training targets warped inside the step (:mod:`fewsam_jax.fewshot.warp`): rotation range (degrees) and
    # scale range (1 +- warp_scale); 0 and 0: off
    warp_rotation_deg: float = 10.0
    warp_scale: float = 0.1
    # contrast 1 +- image_jitter, brightness +- image_jitter / 2 of the image branch's input
    image_jitter: float = 0.1
    # augmented copies of the support slices, made before encoding (off by default)
    augment: AugmentConfig = AugmentConfig()
    # the one seed: decoder initialisation, episodes, warps and support copies
    seed: int = 0

    def __post_init__(self):
        check_choice("episode_holdout", self.episode_holdout, EpisodeHoldout)
        if not isinstance(self.augment, AugmentConfig):
            raise ValueError(f"augment: expected an AugmentConfig, got {type(self.augment).__name__}")
        if self.steps < 0 or self.batch_slices < 1:
            raise ValueError(f"steps / batch_slices: expected >= 0 / >= 1, got {self.steps} / {self.batch_slices}")
        if self.image_learning_rate is not None and self.image_learning_rate < 0:
            raise ValueError(f"image_learning_rate: expected None or >= 0, got {self.image_learning_rate}")
        if self.warp_rotation_deg < 0 or not 0 <= self.warp_scale < 1 or self.image_jitter < 0:
            raise ValueError(f"warp_rotation_deg / warp_scale / image_jitter: expected >= 0 / in [0, 1) / >= 0, got "
                             f"{self.warp_rotation_deg} / {self.warp_scale} / {self.image_jitter}")
        if not 0.0 < self.episode_fraction <= 1.0:
            raise ValueError(f"episode_fraction: expected a value in (0, 1], got {self.episode_fraction}")

    @property
    def warps_targets(self) -> bool:
        return bool(self.warp_rotation_deg or self.warp_scale or self.image_jitter)

    def check(self, decoder: DecoderConfig) -> None:
        """A ValueError when this run cannot train ``decoder`` (an option for a part it lacks)."""
        if self.image_learning_rate is not None and not decoder.image_features:
            raise ValueError(f"image_learning_rate: expected None without the image branch (image_features > 0), "
                             f"got {self.image_learning_rate} with image_features={decoder.image_features}")


@dataclasses.dataclass(frozen=True)
class InferenceConfig(_Replace):
    """How a trained decoder's outputs become a label map."""

    # a class is kept on a slice only where its presence probability reaches this; 0: the presence head does
    # not gate, every class competes for pixels on every slice (its mask logits alone decide; the default: a
    # presence head that under-rates a class on new volumes erases it from whole slices, bench/RESULTS.md)
    presence_threshold: float = 0.0
    # after training, tune a per-class logit threshold maximising Dice on the labelled slices (else 0);
    # with episode_holdout="volume" each support volume is predicted from the others' prompts for it
    calibrate_threshold: bool = True
    # added to every class's logit threshold (calibrated or 0) when segmenting; negative labels more pixels (the
    # calibration on the training slices sits too high for slices the decoder did not train on)
    threshold_offset: float = -0.5
    # the volume's own share of the prompt tokens of a second pass (fewshot/self_prompt.py): prototypes of what the
    # first pass labelled, on the volume's own embeddings, blended with the support's; 0: one pass, the support's
    # tokens alone. Doubles the decoding
    self_prompt: float = 0.0

    def __post_init__(self):
        if not (isinstance(self.self_prompt, (int, float)) and not isinstance(self.self_prompt, bool)
                and 0.0 <= self.self_prompt <= 1.0):
            raise ValueError(f"self_prompt: expected a number in [0, 1], got {self.self_prompt!r}")
        if not 0.0 <= self.presence_threshold <= 1.0:
            raise ValueError(f"presence_threshold: expected a value in [0, 1], got {self.presence_threshold}")
        if not (isinstance(self.threshold_offset, (int, float)) and not isinstance(self.threshold_offset, bool)
                and -10.0 <= self.threshold_offset <= 10.0):
            raise ValueError(f"threshold_offset: expected a number of logits in [-10, 10], got {self.threshold_offset!r}")


CONFIGS = {"decoder": DecoderConfig, "training": TrainConfig, "inference": InferenceConfig}


def option_names() -> list[str]:
    """Every option :func:`configs_from_overrides` takes: the fields of the three configs, the support
    copies' as ``augment.FIELD``."""
    names = [f.name for cls in CONFIGS.values() for f in dataclasses.fields(cls) if f.name != "augment"]
    return names + [f"augment.{f.name}" for f in dataclasses.fields(AugmentConfig)]


def configs_from_overrides(overrides: Mapping[str, Any], decoder: DecoderConfig = DecoderConfig(),
                           training: TrainConfig = TrainConfig(), inference: InferenceConfig = InferenceConfig(),
                           ) -> tuple[DecoderConfig, TrainConfig, InferenceConfig]:
    """``decoder``, ``training`` and ``inference`` with ``overrides`` applied, each key to the config that
    owns it (``augment.copies`` to ``training.augment``); a ValueError names an unknown key."""
    changes: dict[str, dict[str, Any]] = {name: {} for name in (*CONFIGS, "augment")}
    owner = {f.name: name for name, cls in CONFIGS.items() for f in dataclasses.fields(cls) if f.name != "augment"}
    owner.update({f"augment.{f.name}": "augment" for f in dataclasses.fields(AugmentConfig)})
    for key, value in overrides.items():
        if key not in owner:
            raise ValueError(f"unknown option {key!r}; expected one of {', '.join(option_names())}")
        changes[owner[key]][key.removeprefix("augment.")] = value
    training = dataclasses.replace(training, augment=dataclasses.replace(training.augment, **changes["augment"]),
                                   **changes["training"])
    return (dataclasses.replace(decoder, **changes["decoder"]), training,
            dataclasses.replace(inference, **changes["inference"]))
