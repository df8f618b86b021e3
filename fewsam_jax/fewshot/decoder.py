"""SAM's mask decoder reformulated for few-shot segmentation without clicks.

Each class becomes one query: its few-shot embeddings (masked-average prototypes of the labelled
regions, :mod:`fewsam_jax.fewshot.prompts`) plus learned prompt-type embeddings take the place of
the prompt encoder's point/box tokens, and the dense prompt is the learned no-mask embedding
(optionally plus a similarity prior). The decoder's single-mask output is the class's logits; its
IoU head output, trained as a presence logit, suppresses the class on slices where it is absent.
By default all classes share one decoder pass per slice (``class_decoding="joint"``): the image side,
nearly all of the decoder's cost, runs once instead of once per class.

Tokens per class:
  ``[mean foreground prototype + pos, mean background prototype + neg, (box corners),
  slice_tokens x one support slice's foreground prototype + pos]``, where ``pos``/``neg`` start from
  SAM's positive/negative point embeddings and each prototype may carry the positional encoding of its
  region's centroid (``region_position``), like a point prompt placed there. With ``region_box`` two
  more tokens place SAM's box-corner embeddings at the class's mean bounding box in the support
  slices, a location prior the pretrained decoder already understands.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from fewsam_jax.fewshot.image_branch import CellBranch, ImageBranch
from fewsam_jax.modeling.sam import Sam


def image_channels(cfg: FewShotConfig) -> int:
    """Channels of the image branch's input: the slice and ``image_context`` neighbours on either side."""
    return 1 + 2 * cfg.image_context


@dataclasses.dataclass(frozen=True)
class FewShotConfig:
    """Every choice of the method that the paper leaves open; defaults are documented in README."""

    # "joint": every class's tokens in one decoder pass per slice (the image side, ~all of the cost, is shared;
    # token self-attention stays within a class); "separate": one pass per (slice, class), as SAM runs prompts
    class_decoding: str = "joint"
    slice_tokens: int = 4  # individual support-slice prototypes per class, besides the two means
    region_position: bool = True  # add the region centroid's positional encoding to each prototype
    # dense prompt += learned vector x cosine(embedding, class prototype); off: 0.44 vs 0.37 mean Dice on hippocampus
    similarity_prior: bool = False
    region_box: bool = True  # two box-corner tokens at the class's mean bounding box in the support slices
    train_crop: int = 32  # train on crops of this many embedding cells a side (0: whole slices); ~4x cheaper at 32/64
    trainable: str = "decoder"  # "decoder": whole mask decoder; "heads": upscaling + hypernetworks + IoU head
    steps: int = 600  # hippocampus, 4 unseen volumes: mean Dice 0.22 at 150 steps, 0.44 at 600, 0.45 at 1500
    batch_slices: int = 2  # target slices (crops) per step
    learning_rate: float = 5e-4
    warmup_steps: int = 10
    weight_decay: float = 1e-2
    grad_clip: float = 1.0
    focal_weight: float = 20.0  # SAM's 20:1 focal:dice
    dice_weight: float = 1.0
    presence_weight: float = 1.0
    focal_gamma: float = 2.0
    focal_alpha: float | None = 0.25  # None: no class weighting
    episode_fraction: float = 0.5  # share of the other support slices a training episode prompts with
    # prompts never come from the target's "slice", or (several support volumes) its whole "volume"; "volume"
    # measured worse on hippocampus (mean Dice 0.19 vs 0.27 on 3 unseen volumes, 30 support slices, 1 seed)
    episode_holdout: str = "slice"
    presence_threshold: float = 0.5
    calibrate_threshold: bool = True  # per-class logit threshold maximising Dice on the labelled slices (else 0),
    # each slice predicted from prompts of the other volumes when the support spans several (as at inference)
    # the image itself (:mod:`fewsam_jax.fewshot.image_branch`): channels of a small convolutional branch on the
    # normalised slice, fused into the mask upscaling (0: off, SAM's decoder alone), and the neighbouring slices
    # on either side it also sees (2.5D; worse on hippocampus validation). Measured: bench/RESULTS.md, README.
    image_features: int = 16
    image_context: int = 0
    # where the branch runs: "mask" (the L x L label frame, ImageBranch) or "embedding" (the E x E grid, each cell
    # holding its 4 x 4 pixels, CellBranch: about half the training time; bench/RESULTS.md has both measured)
    image_frame: str = "mask"
    image_learning_rate: float | None = None  # the image branch's peak learning rate (None: learning_rate)
    # training targets warped inside the step (:mod:`fewsam_jax.fewshot.warp`): rotation range (degrees), scale
    # range (1 +- warp_scale); 0 and 0: off. image_jitter: contrast 1 +- j, brightness +- j / 2 of the image branch input
    warp_rotation_deg: float = 10.0
    warp_scale: float = 0.1
    image_jitter: float = 0.1
    seed: int = 0

    def __post_init__(self):
        if self.class_decoding not in ("joint", "separate"):
            raise ValueError(f"class_decoding: expected 'joint' or 'separate', got {self.class_decoding!r}")
        if self.trainable not in ("decoder", "heads"):
            raise ValueError(f"trainable: expected 'decoder' or 'heads', got {self.trainable!r}")
        if self.image_frame not in ("mask", "embedding"):
            raise ValueError(f"image_frame: expected 'mask' or 'embedding', got {self.image_frame!r}")
        if self.episode_holdout not in ("slice", "volume"):
            raise ValueError(f"episode_holdout: expected 'slice' or 'volume', got {self.episode_holdout!r}")
        if self.image_features < 0 or self.image_context < 0:
            raise ValueError(f"image_features / image_context: expected >= 0, got {self.image_features} / "
                             f"{self.image_context}")
        if self.image_features and self.class_decoding != "joint":
            raise ValueError("the image branch (image_features > 0) needs class_decoding='joint'")
        if self.warp_rotation_deg < 0 or not 0 <= self.warp_scale < 1 or self.image_jitter < 0:
            raise ValueError(f"warp_rotation_deg / warp_scale / image_jitter: expected >= 0 / in [0, 1) / >= 0, got "
                             f"{self.warp_rotation_deg} / {self.warp_scale} / {self.image_jitter}")
        if self.image_context and not self.image_features:
            raise ValueError("image_context needs the image branch (image_features > 0)")
        if self.image_learning_rate is not None and (not self.image_features or self.image_learning_rate < 0):
            raise ValueError(f"image_learning_rate: expected None, or >= 0 with the image branch (image_features > 0), "
                             f"got {self.image_learning_rate} with image_features={self.image_features}")
        if not 0.0 < self.episode_fraction <= 1.0:
            raise ValueError(f"episode_fraction: expected a value in (0, 1], got {self.episode_fraction}")


class FewShotDecoder(nnx.Module):
    """Mask decoder + prompt-encoder pieces it needs, initialised from a converted SAM."""

    def __init__(self, sam: Sam, cfg: FewShotConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        self.embedding_size = sam.config.embedding_size
        self.mask_decoder = nnx.clone(sam.mask_decoder)
        self.pe_layer = nnx.clone(sam.prompt_encoder.pe_layer)
        self.no_mask_embed = nnx.clone(sam.prompt_encoder.no_mask_embed)
        points = sam.prompt_encoder.point_embeddings
        self.prompt_type = nnx.Param(
            jnp.concatenate([points[1].embedding[...], points[0].embedding[...]], axis=0)
        )  # (2, C): positive, negative
        self.box_type = nnx.Param(
            jnp.concatenate([points[2].embedding[...], points[3].embedding[...]], axis=0)
        )  # (2, C): box top-left, bottom-right corner
        dim = sam.config.prompt_embed_dim
        self.similarity_embed = nnx.Param(jnp.zeros((dim,), jnp.float32))
        branch = CellBranch if cfg.image_frame == "embedding" else ImageBranch
        self.image_branch = (branch(image_channels(cfg), cfg.image_features, dim, rngs=rngs)
                             if cfg.image_features else None)

    def dense_pe(self) -> jax.Array:
        return self.pe_layer.grid(self.embedding_size)

    def __call__(self, embeddings: jax.Array, tokens: jax.Array, prototypes: jax.Array,
                 image_pe: jax.Array | None = None, images: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """Logits for every (slice, class).

        Args:
          embeddings: (B, h, w, C) image embeddings (the whole E x E grid, or a crop of it).
          tokens: (K, T, C) class prompt tokens (:func:`class_tokens`).
          prototypes: (K, C) mean foreground prototype per class (for the similarity prior).
          image_pe: (h, w, C) positional encoding of the grid; the whole grid's by default.
          images: (B, 4h, 4w, 1 + 2 * image_context) the slices in the low-resolution frame
            (:func:`~fewsam_jax.fewshot.prompts.images_to_low_res`); required with the image branch.
        Returns:
          mask logits (B, K, 4h, 4w) and presence logits (B, K).
        """
        image_pe = self.dense_pe() if image_pe is None else image_pe
        if (self.image_branch is None) != (images is None):
            raise ValueError("images must be given exactly when the decoder has an image branch "
                             f"(image_features={self.config.image_features})")
        cosine = None
        if self.config.similarity_prior:
            unit = embeddings / (jnp.linalg.norm(embeddings, axis=-1, keepdims=True) + 1e-6)
            proto = prototypes / (jnp.linalg.norm(prototypes, axis=-1, keepdims=True) + 1e-6)
            cosine = jnp.einsum("bhwc,kc->bkhw", unit, proto)[..., None]  # (B, K, h, w, 1)
        if self.config.class_decoding == "joint":
            return self._decode_joint(embeddings, tokens, cosine, image_pe, images)
        if images is not None:
            raise ValueError("the image branch needs class_decoding='joint'")
        b, k = embeddings.shape[0], tokens.shape[0]
        image = jnp.repeat(embeddings, k, axis=0)  # (B*K, h, w, C), slice-major
        dense = jnp.broadcast_to(self.no_mask_embed.embedding[...][0], image.shape)
        if cosine is not None:
            dense = dense + cosine.reshape(b * k, *cosine.shape[2:]) * self.similarity_embed[...]
        masks, iou, _, _ = self.mask_decoder.predict_masks(image, image_pe, jnp.tile(tokens, (b, 1, 1)), dense)
        return masks[:, 0].reshape(b, k, *masks.shape[-2:]), iou[:, 0].reshape(b, k)

    def _decode_joint(self, embeddings: jax.Array, tokens: jax.Array, cosine: jax.Array | None,
                      image_pe: jax.Array, images: jax.Array | None) -> tuple[jax.Array, jax.Array]:
        """One decoder pass per slice. Each class is the token group SAM's decoder sees for one prompt,
        ``[IoU token, mask tokens, the class's prompts]``; groups attend only within themselves, the image
        tokens attend to (and are read by) all of them, so one class alone decodes exactly as in
        ``"separate"``. The similarity prior takes each cell's best cosine over the classes."""
        decoder = self.mask_decoder
        b, h, w, c = embeddings.shape
        k, t, _ = tokens.shape
        output = jnp.concatenate([decoder.iou_token.embedding[...], decoder.mask_tokens.embedding[...]])
        width = output.shape[0] + t
        groups = jnp.concatenate([jnp.broadcast_to(output, (k, *output.shape)), tokens], axis=1)  # (K, width, C)
        sequence = jnp.broadcast_to(groups.reshape(1, k * width, c), (b, k * width, c))
        group_of = jnp.repeat(jnp.arange(k), width)
        token_bias = jnp.where(group_of[:, None] == group_of[None, :], 0.0, -jnp.inf)
        dense = self.no_mask_embed.embedding[...][0]
        if cosine is not None:
            dense = dense + cosine.max(axis=1) * self.similarity_embed[...]
        hs, src = decoder.transformer(embeddings + dense, image_pe[None], sequence, token_bias)
        starts = jnp.arange(k) * width
        hyper = decoder.output_hypernetworks_mlps[0](hs[:, starts + 1])  # (B, K, C / 8): single-mask output
        src = src.reshape(b, h, w, c)
        upscaled = (decoder.upscale(src) if images is None
                    else self.image_branch.upscale(decoder.output_upscaling, src, images))
        masks = jnp.einsum("bkc,bhwc->bkhw", hyper, upscaled)
        return masks, decoder.iou_prediction_head(hs[:, starts])[:, :, 0]


def class_tokens(
    decoder: FewShotDecoder,
    prototypes: jax.Array,
    areas: jax.Array,
    positions: jax.Array,
    boxes: jax.Array,
    weights: jax.Array,
    slice_choice: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Prompt tokens of every class from a pool of support slices.

    Args:
      prototypes: (S, R, C) region prototypes of the pool (R = 1 + K; region 0 is background).
      areas: (S, R) region areas; positions: (S, R, C) region centroid encodings; boxes: (S, R, 4)
        region bounding boxes as fractions of the frame.
      weights: (S,) 1 for slices that may prompt (0 excludes a slice, e.g. the episode's target).
      slice_choice: (K, slice_tokens) pool indices of the slices whose prototypes become the
        individual tokens of each class (absent ones fall back to the class mean).
    Returns:
      tokens (K, T, C), T = 2 + 2 * region_box + slice_tokens, and mean foreground prototypes (K, C).
    """
    cfg = decoder.config
    pos_type, neg_type = decoder.prompt_type[...][0], decoder.prompt_type[...][1]
    if not cfg.region_position:
        positions = jnp.zeros_like(positions)
    w = weights[:, None] * areas  # (S, R)
    num_regions = areas.shape[1]
    # mean foreground per class (regions 1..K) and mean "everything else" per class
    fg_w = w[:, 1:]  # (S, K)
    fg_proto = jnp.einsum("sk,skc->kc", fg_w, prototypes[:, 1:]) / jnp.maximum(fg_w.sum(0), 1e-6)[:, None]
    fg_pos = jnp.einsum("sk,skc->kc", fg_w, positions[:, 1:]) / jnp.maximum(fg_w.sum(0), 1e-6)[:, None]
    others = 1.0 - jnp.eye(num_regions)[1:]  # (K, R): every region but the class itself
    bg_w = jnp.einsum("sr,kr->skr", w, others)
    bg_norm = jnp.maximum(bg_w.sum(axis=(0, 2)), 1e-6)[:, None]
    bg_proto = jnp.einsum("skr,src->kc", bg_w, prototypes) / bg_norm
    bg_pos = jnp.einsum("skr,src->kc", bg_w, positions) / bg_norm
    class_index = jnp.arange(1, num_regions)[:, None]
    chosen_area = areas[slice_choice, class_index] * weights[slice_choice]  # (K, J)
    present = (chosen_area > 0)[..., None]
    chosen = jnp.where(present, prototypes[slice_choice, class_index], fg_proto[:, None])
    chosen_pos = jnp.where(present, positions[slice_choice, class_index], fg_pos[:, None])
    parts = [(fg_proto + fg_pos + pos_type)[:, None], (bg_proto + bg_pos + neg_type)[:, None]]
    if cfg.region_box:
        present_w = weights[:, None] * (areas[:, 1:] > 0)  # (S, K)
        mean_box = jnp.einsum("sk,skf->kf", present_w, boxes[:, 1:]) / jnp.maximum(present_w.sum(0), 1e-6)[:, None]
        corners = decoder.pe_layer.encode(mean_box.reshape(-1, 2, 2))  # (K, 2, C)
        parts.append(corners + decoder.box_type[...])
    parts.append(chosen + chosen_pos + pos_type)
    return jnp.concatenate(parts, axis=1), fg_proto
