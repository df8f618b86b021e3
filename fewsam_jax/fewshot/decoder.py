"""SAM's mask decoder reformulated for few-shot segmentation without clicks.

Each class becomes one query: its few-shot embeddings (masked-average prototypes of the labelled
regions, :mod:`fewsam_jax.fewshot.prompts`) plus learned prompt-type embeddings take the place of
the prompt encoder's point/box tokens, and the dense prompt is the learned no-mask embedding
(optionally plus a similarity prior). The decoder's single-mask output is the class's logits; its
IoU head output, trained as a presence logit, suppresses the class on slices where it is absent.

Tokens per class (``T = 2 + slice_tokens``):
  ``[mean foreground prototype + pos, mean background prototype + neg, slice_tokens x one support
  slice's foreground prototype + pos]``, where ``pos``/``neg`` start from SAM's positive/negative
  point embeddings and each prototype may carry the positional encoding of its region's centroid
  (``region_position``), like a point prompt placed there.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from fewsam_jax.modeling.sam import Sam


@dataclasses.dataclass(frozen=True)
class FewShotConfig:
    """Every choice of the method that the paper leaves open; defaults are documented in README."""

    slice_tokens: int = 4  # individual support-slice prototypes per class, besides the two means
    region_position: bool = True  # add the region centroid's positional encoding to each prototype
    similarity_prior: bool = True  # dense prompt += learned vector x cosine(embedding, class prototype)
    trainable: str = "decoder"  # "decoder": whole mask decoder; "heads": upscaling + hypernetworks + IoU head
    steps: int = 300
    batch_slices: int = 4
    learning_rate: float = 1e-4
    warmup_steps: int = 20
    weight_decay: float = 1e-2
    grad_clip: float = 1.0
    focal_weight: float = 20.0  # SAM's 20:1 focal:dice
    dice_weight: float = 1.0
    presence_weight: float = 1.0
    focal_gamma: float = 2.0
    focal_alpha: float | None = 0.25  # None: no class weighting
    episode_fraction: float = 0.5  # share of the other support slices a training episode prompts with
    presence_threshold: float = 0.5
    seed: int = 0

    def __post_init__(self):
        if self.trainable not in ("decoder", "heads"):
            raise ValueError(f"trainable: expected 'decoder' or 'heads', got {self.trainable!r}")
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
        dim = sam.config.prompt_embed_dim
        self.similarity_embed = nnx.Param(jnp.zeros((dim,), jnp.float32))

    def dense_pe(self) -> jax.Array:
        return self.pe_layer.grid(self.embedding_size)

    def __call__(self, embeddings: jax.Array, tokens: jax.Array, prototypes: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Logits for every (slice, class).

        Args:
          embeddings: (B, E, E, C) image embeddings.
          tokens: (K, T, C) class prompt tokens (:func:`class_tokens`).
          prototypes: (K, C) mean foreground prototype per class (for the similarity prior).
        Returns:
          mask logits (B, K, L, L) and presence logits (B, K).
        """
        b = embeddings.shape[0]
        k, t, c = tokens.shape
        image = jnp.repeat(embeddings, k, axis=0)  # (B*K, E, E, C), slice-major
        sparse = jnp.tile(tokens, (b, 1, 1))
        dense = jnp.broadcast_to(self.no_mask_embed.embedding[...][0], image.shape)
        if self.config.similarity_prior:
            unit = embeddings / (jnp.linalg.norm(embeddings, axis=-1, keepdims=True) + 1e-6)
            proto = prototypes / (jnp.linalg.norm(prototypes, axis=-1, keepdims=True) + 1e-6)
            cosine = jnp.einsum("bhwc,kc->bkhw", unit, proto).reshape(b * k, *embeddings.shape[1:3], 1)
            dense = dense + cosine * self.similarity_embed[...]
        masks, iou, _, _ = self.mask_decoder.predict_masks(image, self.dense_pe(), sparse, dense)
        low = masks.shape[-1]
        return masks[:, 0].reshape(b, k, low, low), iou[:, 0].reshape(b, k)


def class_tokens(
    decoder: FewShotDecoder,
    prototypes: jax.Array,
    areas: jax.Array,
    positions: jax.Array,
    weights: jax.Array,
    slice_choice: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Prompt tokens of every class from a pool of support slices.

    Args:
      prototypes: (S, R, C) region prototypes of the pool (R = 1 + K; region 0 is background).
      areas: (S, R) region areas; positions: (S, R, C) region centroid encodings.
      weights: (S,) 1 for slices that may prompt (0 excludes a slice, e.g. the episode's target).
      slice_choice: (K, slice_tokens) pool indices of the slices whose prototypes become the
        individual tokens of each class (absent ones fall back to the class mean).
    Returns:
      tokens (K, 2 + slice_tokens, C) and mean foreground prototypes (K, C).
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
    tokens = jnp.concatenate(
        [
            (fg_proto + fg_pos + pos_type)[:, None],
            (bg_proto + bg_pos + neg_type)[:, None],
            chosen + chosen_pos + pos_type,
        ],
        axis=1,
    )
    return tokens, fg_proto
