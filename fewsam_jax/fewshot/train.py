"""Training the few-shot decoder with Optax, on cached embeddings only (the encoder is never run; a decoder
with ``encoder_lora_rank`` > 0 runs its copy of the encoder's last stage on the targets' cached stage inputs).

An episode takes a batch of support slices as targets and prompts every class with few-shot
embeddings from a random share of the *other* support slices (augmented copies of a target slice
are excluded with it), so the decoder learns to segment a slice from other slices' examples.
Loss: focal + Dice on the class masks (padding ignored), binary cross-entropy on the presence logit.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from fewsam_jax.fewshot.config import TrainConfig
from fewsam_jax.fewshot.decoder import FewShotDecoder, class_tokens
from fewsam_jax.fewshot.infer import pad_rows
from fewsam_jax.fewshot.prompts import IGNORE, region_boxes, region_embeddings, region_fractions, region_positions
from fewsam_jax.fewshot.warp import warp_targets
from fewsam_jax.logs import tqdm


@dataclasses.dataclass(frozen=True)
class SupportSet:
    """Labelled support slices in the model frame.

    embeddings: (S, E, E, C) cached image embeddings; labels: (S, L, L) class indices (0 background,
    k = ``class_ids[k-1]``, ``IGNORE`` padding); groups: (S,) id of the labelled slice each row comes
    from (augmented copies share their original's id); volumes: (S,) id of the volume it comes from
    (default: every labelled slice its own volume); images: (S, L, L, 1 + 2 * context) the slices (and
    their neighbours) in the low-resolution frame, for a decoder with an image branch, else None;
    stage_inputs: (S, E, E, D) their cached last-stage inputs (as float16), for a decoder that adapts
    the encoder's last stage (``encoder_lora_rank`` > 0), else None.
    """

    embeddings: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    class_ids: tuple[int, ...]
    volumes: np.ndarray | None = None
    images: np.ndarray | None = None
    stage_inputs: np.ndarray | None = None

    def __post_init__(self):
        s = len(self.embeddings)
        if s == 0:
            raise ValueError("the few-shot collection is empty: label at least one slice")
        if self.labels.shape[0] != s or self.groups.shape != (s,):
            raise ValueError(
                f"support arrays disagree: {s} embeddings, {self.labels.shape[0]} label slices, "
                f"{self.groups.shape[0]} groups"
            )
        if self.volumes is None:
            object.__setattr__(self, "volumes", self.groups)
        elif self.volumes.shape != (s,):
            raise ValueError(f"support arrays disagree: {s} embeddings, {self.volumes.shape[0]} volume ids")
        if self.images is not None and self.images.shape[:3] != self.labels.shape:
            raise ValueError(f"support arrays disagree: images {self.images.shape[:3]} vs labels {self.labels.shape}")
        if self.stage_inputs is not None and self.stage_inputs.shape[:3] != self.embeddings.shape[:3]:
            raise ValueError(f"support arrays disagree: stage inputs {self.stage_inputs.shape[:3]} vs embeddings "
                             f"{self.embeddings.shape[:3]}")
        present = [(self.labels == k).any() for k in range(1, len(self.class_ids) + 1)]
        missing = [c for c, p in zip(self.class_ids, present) if not p]
        if missing:
            raise ValueError(f"class ids {missing} are absent from every support slice; label at least one each")

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)


# Support arrays are padded with zero rows to a multiple of this (rows that never prompt or become targets): a
# support grown by a few labelled slices (the annotate -> retrain loop) runs the programs already compiled.
ROW_BUCKET = 8


def padded_rows(count: int) -> int:
    """The rows a support of ``count`` slices is padded to: the next multiple of :data:`ROW_BUCKET`."""
    return -(-count // ROW_BUCKET) * ROW_BUCKET


def region_stats(decoder: FewShotDecoder, embeddings: jax.Array, labels: jax.Array, num_classes: int):
    """Prototypes (S, R, C), areas (S, R), centroid encodings (S, R, C) and bounding boxes (S, R, 4,
    fractions of the frame) of every region."""
    fractions = region_fractions(labels, num_classes, embeddings.shape[1])
    prototypes, areas = region_embeddings(embeddings, fractions)
    boxes = region_boxes(fractions) / embeddings.shape[1]
    return prototypes, areas, region_positions(fractions, decoder.dense_pe()), boxes


def segmentation_loss(logits: jax.Array, presence: jax.Array, labels: jax.Array, cfg: TrainConfig) -> jax.Array:
    """Focal + Dice + presence BCE. logits (B, K, L, L), presence (B, K), labels (B, L, L)."""
    num_classes = logits.shape[1]
    target = (labels[:, None] == jnp.arange(1, num_classes + 1)[None, :, None, None]).astype(jnp.float32)
    valid = (labels != IGNORE)[:, None].astype(jnp.float32)
    focal = optax.sigmoid_focal_loss(logits, target, alpha=cfg.focal_alpha, gamma=cfg.focal_gamma)
    focal = (focal * valid).sum(axis=(2, 3)) / jnp.maximum(valid.sum(axis=(2, 3)), 1.0)
    prob = jax.nn.sigmoid(logits) * valid
    dice = 1.0 - (2.0 * (prob * target).sum(axis=(2, 3)) + 1.0) / (prob.sum(axis=(2, 3)) + target.sum(axis=(2, 3)) + 1.0)
    present = (target.sum(axis=(2, 3)) > 0).astype(jnp.float32)
    presence_loss = optax.sigmoid_binary_cross_entropy(presence, present)
    per_item = cfg.focal_weight * focal + cfg.dice_weight * dice + cfg.presence_weight * presence_loss
    return per_item.mean()


# the parameters training updates: all but the positional encoding, which stays as converted
TRAINABLE = nnx.All(nnx.Param, nnx.Not(nnx.PathContains("pe_layer")))


def trainable(decoder: FewShotDecoder):
    """The filter of what training updates in ``decoder``: :data:`TRAINABLE`, but of its ``encoder_stage``
    (when it has one) only the LoRA adapters, never the frozen copy of the encoder."""
    if decoder.encoder_stage is None:
        return TRAINABLE
    return nnx.Any(nnx.All(TRAINABLE, nnx.Not(nnx.PathContains("encoder_stage"))), nnx.LoRAParam)


def make_optimizer(decoder: FewShotDecoder, cfg: TrainConfig) -> nnx.Optimizer:
    """AdamW with warm-up and cosine decay after global-norm clipping; the image branch (trained from
    scratch, unlike SAM's decoder) may have a peak learning rate of its own (``image_learning_rate``); the
    encoder stage's adapters (:func:`trainable`) share ``learning_rate``. One transformation object per ``cfg``
    (:func:`_transformation`): the optimizer is part of what :func:`train_step` is compiled for, so a second
    training with the same config runs the step already compiled."""
    return nnx.Optimizer(decoder, _transformation(cfg), wrt=trainable(decoder))


def place_together(decoder: FewShotDecoder, optimizer: nnx.Optimizer) -> None:
    """Commit every array of ``decoder`` and ``optimizer`` to the one device that the decoder's committed arrays are
    on (none committed, or committed across several devices: left as they are).

    ``jax.jit`` compiles once per placement of its arguments. A decoder on a loaded model (Orbax restores onto a
    device) holds committed arrays beside its new, uncommitted ones and the optimizer's fresh state; a step's
    outputs are all committed, so the second step compiled :func:`train_step` again (measured 2026-12-04: twice
    ~20 s on a 2-core CPU for the default decoder on LiteMedSAM)."""
    shardings = {leaf.sharding for leaf in jax.tree.leaves(nnx.state(decoder))
                 if isinstance(leaf, jax.Array) and leaf.committed}
    if len(shardings) != 1 or len(next(iter(shardings)).device_set) != 1:
        return  # nothing committed, or a sharded model: its placement is the caller's
    (sharding,) = shardings
    for module in (decoder, optimizer):
        state = nnx.state(module)
        nnx.update(module, jax.tree.map(lambda x: jax.device_put(x, sharding) if isinstance(x, jax.Array) else x,
                                        state))


@functools.lru_cache(maxsize=16)
def _transformation(cfg: TrainConfig) -> optax.GradientTransformation:
    """:func:`make_optimizer`'s Optax transformation for ``cfg`` (cached: equal configs get the same object)."""

    def adamw(peak: float) -> optax.GradientTransformation:
        schedule = optax.warmup_cosine_decay_schedule(
            0.0, peak, min(cfg.warmup_steps, max(cfg.steps - 1, 1)), max(cfg.steps, 2))
        return optax.adamw(schedule, weight_decay=cfg.weight_decay)

    if cfg.image_learning_rate is None:
        update = adamw(cfg.learning_rate)
    else:
        def part(params):
            in_branch = lambda path, _: "branch" if "image_branch" in jax.tree_util.keystr(path) else "sam"
            return jax.tree_util.tree_map_with_path(in_branch, params)

        update = optax.multi_transform({"sam": adamw(cfg.learning_rate), "branch": adamw(cfg.image_learning_rate)},
                                       part)
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), update)


def crop_size(cfg: TrainConfig, embedding_size: int) -> int:
    return embedding_size if cfg.train_crop <= 0 else min(cfg.train_crop, embedding_size)


@nnx.jit(static_argnames="cfg")
def train_step(decoder, optimizer, embeddings, labels, images, stats, targets, weights, slice_choice, offset, seed, *,
               cfg: TrainConfig):
    """One episode: predict the ``targets`` slices, cropped at ``offset`` (cells, (y, x)), from
    prompts built on the weighted pool of whole support slices (``stats``: :func:`region_stats` of the
    pool's cached embeddings, fixed during training since they and the positional encoding are frozen).
    Every support array has R rows (:func:`padded_rows`; ``weights`` (R,) is 0 on the padding, which ``targets``
    never name). ``embeddings``: what the decoder reads of the support slices (:func:`support_sources`: their cached
    embeddings, or their stage inputs for a decoder with an encoder stage). ``images``: the support's
    low-resolution-frame slices for the image branch, or None. ``seed``: this step's augmentation
    (:func:`~fewsam_jax.fewshot.warp.warp_targets`, when ``cfg`` asks for it)."""
    b, size, c = len(targets), crop_size(cfg, embeddings.shape[1]), embeddings.shape[-1]
    scale = labels.shape[1] // embeddings.shape[1]
    target_emb, target_labels = embeddings[targets], labels[targets]
    target_images = None if images is None else images[targets]
    if cfg.warps_targets:
        target_emb, target_labels, target_images = warp_targets(
            jax.random.key(seed), target_emb, target_labels, target_images, cfg.warp_rotation_deg, cfg.warp_scale,
            cfg.image_jitter)
    target_emb = jax.lax.dynamic_slice(target_emb, (0, offset[0], offset[1], 0), (b, size, size, c))
    target_labels = jax.lax.dynamic_slice(target_labels, (0, scale * offset[0], scale * offset[1]),
                                          (b, scale * size, scale * size))
    if target_images is not None:
        target_images = jax.lax.dynamic_slice(target_images, (0, scale * offset[0], scale * offset[1], 0),
                                              (b, scale * size, scale * size, images.shape[-1]))

    def loss_fn(model):
        tokens = class_tokens(model, *stats, weights, slice_choice)
        dense_pe = model.dense_pe()
        pe = jax.lax.dynamic_slice(dense_pe, (offset[0], offset[1], 0), (size, size, dense_pe.shape[-1]))
        logits, presence = model(model.target_embeddings(target_emb), tokens, pe, target_images)
        return segmentation_loss(logits, presence, target_labels, cfg)

    loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, trainable(decoder)))(decoder)
    optimizer.update(decoder, grads)
    return loss


class EpisodeSampler:
    """Targets and prompt pools for each step, from a NumPy generator (deterministic per seed)."""

    def __init__(self, support: SupportSet, cfg: TrainConfig, slice_tokens: int, embedding_size: int):
        self.cfg = cfg
        self.slice_tokens = slice_tokens
        # rows a target's prompts must not come from: its own slice, or with "volume" its whole volume
        # (when the support spans several volumes), as at inference on a new volume
        spans = cfg.episode_holdout == "volume" and len(np.unique(support.volumes)) > 1
        self.groups = support.volumes if spans else support.groups
        self.grid = embedding_size
        self.crop = crop_size(cfg, embedding_size)
        scale = support.labels.shape[1] // embedding_size
        self.foreground = [np.argwhere(l[::scale, ::scale] > 0) for l in support.labels]
        self.present = np.stack([(support.labels == k).any(axis=(1, 2)) for k in range(1, support.num_classes + 1)])
        self.rows = padded_rows(len(support.groups))  # the weights' length: the padded support arrays'
        self.rng = np.random.default_rng(cfg.seed)
        self.augment_rng = np.random.default_rng([cfg.seed, 1])  # its own stream: episodes stay as without it

    def crop_offset(self, targets: np.ndarray) -> np.ndarray:
        """Top-left cell of the training crop: centred (with jitter) on a labelled cell of a target
        three times in four, anywhere otherwise."""
        span = self.grid - self.crop
        cells = np.concatenate([self.foreground[t] for t in targets])
        if span == 0:
            return np.zeros(2, np.int32)
        if cells.size and self.rng.random() < 0.75:
            centre = cells[self.rng.integers(len(cells))] + self.rng.integers(-self.crop // 4, self.crop // 4 + 1, 2)
            return np.clip(centre - self.crop // 2, 0, span).astype(np.int32)
        return self.rng.integers(0, span + 1, 2).astype(np.int32)

    def __call__(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Targets (B,), prompt weights (R,) (R = :func:`padded_rows` of S: the padding rows' weights are 0),
        individual-token choice (K, slice_tokens), crop offset (2,) and the step's augmentation seed."""
        cfg, groups = self.cfg, self.groups
        targets = self.rng.choice(len(groups), size=cfg.batch_slices, replace=len(groups) < cfg.batch_slices)
        others = ~np.isin(groups, groups[targets])
        if not others.any():  # a single labelled slice: it has to prompt itself
            others = np.ones_like(others)
        keep = others & (self.rng.random(len(groups)) < cfg.episode_fraction)
        # every class needs at least one prompting slice where it is present
        for present in self.present:
            if not (keep & present).any():
                candidates = np.flatnonzero(others & present)
                if candidates.size == 0:
                    candidates = np.flatnonzero(present)
                keep[self.rng.choice(candidates)] = True
        choice = np.stack([
            self.rng.choice(np.flatnonzero(keep & present), size=self.slice_tokens) for present in self.present
        ])
        seed = np.uint32(self.augment_rng.integers(2**32))
        weights = pad_rows(keep.astype(np.float32), self.rows)
        return targets.astype(np.int32), weights, choice.astype(np.int32), self.crop_offset(targets), seed


def inference_choice(support: SupportSet, slice_tokens: int, rows: np.ndarray) -> np.ndarray:
    """Support slices whose prototypes become each class's individual tokens at inference:
    evenly spread over the original (first-seen) slices among ``rows`` where the class is present."""
    _, first = np.unique(support.groups, return_index=True)
    first = np.sort(first)[rows[np.sort(first)]]
    choice = []
    for k in range(1, support.num_classes + 1):
        present = np.array([i for i in first if (support.labels[i] == k).any()])
        if present.size == 0:  # only augmented copies show it
            present = np.flatnonzero(rows & (support.labels == k).any(axis=(1, 2)))
        choice.append(evenly_spread(present, slice_tokens))
    return np.stack(choice).astype(np.int32)


def evenly_spread(items: np.ndarray, count: int) -> np.ndarray:
    """``count`` of ``items`` (1-D, non-empty) spread evenly from the first to the last, repeating items when there
    are fewer than ``count``: the slices whose prototypes become a class's individual tokens."""
    return items[np.linspace(0, items.size - 1, count).round().astype(int)]


def support_sources(decoder: FewShotDecoder, support: SupportSet) -> np.ndarray:
    """What ``decoder`` reads of the support slices as targets (:meth:`FewShotDecoder.target_embeddings`):
    their embeddings, or their stage inputs for a decoder with an encoder stage (a clear error when missing)."""
    if decoder.encoder_stage is None:
        return support.embeddings
    if support.stage_inputs is None:
        raise ValueError("this decoder adapts the encoder's last stage (encoder_lora_rank > 0): the support set "
                         "needs its stage inputs")
    return support.stage_inputs


def support_images(decoder: FewShotDecoder, support: SupportSet) -> np.ndarray | None:
    """The support's images for ``decoder``'s image branch (None without one); a clear error when missing."""
    if decoder.image_branch is None:
        return None
    if support.images is None:
        raise ValueError("this decoder has an image branch (image_features > 0): the support set needs its images")
    return support.images


# region_stats compiled (num_classes static): the support's statistics, and a volume's (self_prompt.py)
region_stats_jit = nnx.jit(region_stats, static_argnums=3)


@nnx.jit
def _tokens(decoder, stats, weights, slice_choice):
    return class_tokens(decoder, *stats, weights, slice_choice)


def support_tokens(decoder: FewShotDecoder, support: SupportSet, rows: np.ndarray | None = None) -> jax.Array:
    """Inference prompt tokens (K, T, C) from the support rows selected by the boolean mask ``rows``
    (default all); every class must be present in them."""
    rows = np.ones(len(support.groups), bool) if rows is None else np.asarray(rows, bool)
    for k, class_id in enumerate(support.class_ids, start=1):
        if not (support.labels[rows] == k).any():
            raise ValueError(f"class id {class_id} is absent from the selected support slices")
    choice = inference_choice(support, decoder.config.slice_tokens, rows)
    embeddings, labels = padded_support(support)
    stats = region_stats_jit(decoder, embeddings, labels, support.num_classes)
    weights = pad_rows(rows.astype(np.float32), len(labels))
    return _tokens(decoder, stats, jnp.asarray(weights), jnp.asarray(choice))


def padded_support(support: SupportSet) -> tuple[jax.Array, jax.Array]:
    """The support's embeddings (R, E, E, C) float32 and labels (R, L, L) int32 padded with zero rows (background,
    never prompting) to R = :func:`padded_rows` of S."""
    rows = padded_rows(len(support.groups))
    return (jnp.asarray(pad_rows(support.embeddings, rows), jnp.float32),
            jnp.asarray(pad_rows(support.labels, rows), jnp.int32))


def train_decoder(decoder: FewShotDecoder, support: SupportSet, cfg: TrainConfig = TrainConfig(),
                  progress: bool = True, callback: Callable[[int, FewShotDecoder, SupportSet], None] | None = None,
                  callback_every: int = 0) -> tuple[list[float], jax.Array]:
    """Train ``decoder`` in place as ``cfg`` says; returns the loss per step and the inference tokens
    (K, T, C) built from the whole support set. With an encoder stage (``encoder_lora_rank`` > 0) the targets
    are embedded by it from ``support.stage_inputs`` and its LoRA adapters train with the decoder
    (:func:`trainable`); prompts always come from ``support.embeddings``. ``callback(step, decoder,
    support)`` runs after every ``callback_every``-th step (e.g. a learning curve on validation volumes); it
    must not train."""
    cfg.check(decoder.config)
    embeddings, labels = padded_support(support)  # every support array padded alike (padded_rows)
    rows = len(labels)
    sources = embeddings if decoder.encoder_stage is None else jnp.asarray(
        pad_rows(support_sources(decoder, support), rows), jnp.float32)
    images = None if decoder.image_branch is None else jnp.asarray(pad_rows(support_images(decoder, support), rows))
    optimizer = make_optimizer(decoder, cfg)
    place_together(decoder, optimizer)  # the step compiles once
    sampler = EpisodeSampler(support, cfg, decoder.config.slice_tokens, embeddings.shape[1])
    stats = region_stats_jit(decoder, embeddings, labels, support.num_classes)
    # the decoder's and optimizer's graph traversed once, not at every step (same arithmetic: 2-10% of a step on
    # a 2-core CPU, 2026-12-05)
    step_fn = nnx.cached_partial(train_step, decoder, optimizer)
    losses = []
    with tqdm(range(cfg.steps), desc="train decoder", disable=not progress, unit="step") as bar:
        for step in bar:
            loss = float(step_fn(sources, labels, images, stats, *sampler(), cfg=cfg))
            losses.append(loss)
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            if callback is not None and callback_every and (step + 1) % callback_every == 0:
                callback(step + 1, decoder, support)
    return losses, support_tokens(decoder, support)
