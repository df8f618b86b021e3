"""SAM's mask decoder reformulated for few-shot segmentation without clicks.

Each class becomes one query: its few-shot embeddings (masked-average prototypes of the labelled
regions, :mod:`fewsam_jax.fewshot.prompts`) plus learned prompt-type embeddings take the place of
the prompt encoder's point/box tokens, and the dense prompt is the learned no-mask embedding. The
decoder's single-mask output is the class's logits; its IoU head output, trained as a presence logit,
suppresses the class on slices where it is absent.
By default all classes share one decoder pass per slice (``class_decoding="joint"``): the image side,
nearly all of the decoder's cost, runs once instead of once per class.
With ``encoder_lora_rank`` > 0 the decoder also holds an adapted copy of the image encoder's last stage
(:class:`~fewsam_jax.modeling.encoder_stage.EncoderStage`): the slices it segments are given as cached
last-stage inputs and embedded by that copy (:meth:`FewShotDecoder.target_embeddings`), while the prompts'
prototypes stay on the cached frozen embeddings.

Tokens per class:
  ``[mean foreground prototype + pos, mean background prototype + neg, (box corners),
  slice_tokens x one support slice's foreground prototype + pos]``, where ``pos``/``neg`` start from
  SAM's positive/negative point embeddings and each prototype may carry the positional encoding of its
  region's centroid (``region_position``), like a point prompt placed there. With ``region_box`` two
  more tokens place SAM's box-corner embeddings at the class's mean bounding box in the support
  slices, a location prior the pretrained decoder already understands.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from fewsam_jax.fewshot.config import DecoderConfig
from fewsam_jax.fewshot.image_branch import CellBranch, ImageBranch
from fewsam_jax.modeling.encoder_stage import EncoderStage, check_staged
from fewsam_jax.modeling.sam import Sam


class FewShotDecoder(nnx.Module):
    """Mask decoder + prompt-encoder pieces it needs, initialised from a converted SAM; ``cfg`` fixes its
    parameters (the image branch; with ``encoder_lora_rank`` > 0, ``encoder_stage``: a copy of ``sam``'s
    image encoder's last stage and neck with LoRA adapters, a ValueError unless that encoder is staged) and
    its tokens (:func:`class_tokens`). ``config`` is ``cfg`` for ``sam`` (:meth:`DecoderConfig.for_model`:
    ``encoder_lora_rank="auto"`` resolved)."""

    def __init__(self, sam: Sam, cfg: DecoderConfig, *, rngs: nnx.Rngs):
        cfg = cfg.for_model(sam.config)
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
        branch = CellBranch if cfg.image_frame == "embedding" else ImageBranch
        self.image_branch = (branch(cfg.image_channels, cfg.image_features, dim, rngs=rngs)
                             if cfg.image_features else None)
        if cfg.encoder_lora_rank:
            check_staged(sam.config, "encoder_lora_rank")
        self.encoder_stage = (EncoderStage(sam.image_encoder, cfg.encoder_lora_rank, cfg.encoder_lora_targets,
                                           rngs=rngs) if cfg.encoder_lora_rank else None)

    def dense_pe(self) -> jax.Array:
        return self.pe_layer.grid(self.embedding_size)

    def target_embeddings(self, sources: jax.Array) -> jax.Array:
        """The embeddings (B, h, w, C) of the slices to segment from what is cached for them: ``sources``
        itself (cached embeddings), or with ``encoder_stage`` its output on ``sources``, their last-stage
        inputs (B, h, w, D)."""
        return sources if self.encoder_stage is None else self.encoder_stage(sources)

    def __call__(self, embeddings: jax.Array, tokens: jax.Array, image_pe: jax.Array | None = None,
                 images: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """Logits for every (slice, class).

        Args:
          embeddings: (B, h, w, C) image embeddings (the whole E x E grid, or a crop of it).
          tokens: (K, T, C) class prompt tokens (:func:`class_tokens`).
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
        if self.config.class_decoding == "joint":
            return self._decode_joint(embeddings, tokens, image_pe, images)
        if images is not None:
            raise ValueError("the image branch needs class_decoding='joint'")
        b, k = embeddings.shape[0], tokens.shape[0]
        image = jnp.repeat(embeddings, k, axis=0)  # (B*K, h, w, C), slice-major
        dense = jnp.broadcast_to(self.no_mask_embed.embedding[...][0], image.shape)
        masks, iou, _, _ = self.mask_decoder.predict_masks(image, image_pe, jnp.tile(tokens, (b, 1, 1)), dense)
        return masks[:, 0].reshape(b, k, *masks.shape[-2:]), iou[:, 0].reshape(b, k)

    def _decode_joint(self, embeddings: jax.Array, tokens: jax.Array, image_pe: jax.Array,
                      images: jax.Array | None) -> tuple[jax.Array, jax.Array]:
        """One decoder pass per slice. Each class is the token group SAM's decoder sees for one prompt,
        ``[IoU token, mask tokens, the class's prompts]``; groups attend only within themselves, the image
        tokens attend to (and are read by) all of them, so one class alone decodes exactly as in
        ``"separate"``."""
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
) -> jax.Array:
    """Prompt tokens of every class from a pool of support slices.

    Args:
      prototypes: (S, R, C) region prototypes of the pool (R = 1 + K; region 0 is background).
      areas: (S, R) region areas; positions: (S, R, C) region centroid encodings; boxes: (S, R, 4)
        region bounding boxes as fractions of the frame.
      weights: (S,) 1 for slices that may prompt (0 excludes a slice, e.g. the episode's target).
      slice_choice: (K, slice_tokens) pool indices of the slices whose prototypes become the
        individual tokens of each class (absent ones fall back to the class mean).
    Returns:
      tokens (K, T, C), T = ``decoder.config.num_tokens`` (2 + 2 * region_box + slice_tokens).
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
    return jnp.concatenate(parts, axis=1)
