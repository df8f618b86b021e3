"""The whole Segment Anything model and the pure, jitted encode / decode functions around it."""

from __future__ import annotations

import jax
from flax import nnx

from fewsam_jax.config import SamConfig, TinyViTConfig, ViTConfig
from fewsam_jax.modeling.image_encoder import ImageEncoderViT
from fewsam_jax.modeling.mask_decoder import MaskDecoder
from fewsam_jax.modeling.prompt_encoder import PromptEncoder
from fewsam_jax.modeling.tiny_vit import TinyViT
from fewsam_jax.modeling.transformer import TwoWayTransformer


def build_image_encoder(cfg: ViTConfig | TinyViTConfig, *, rngs: nnx.Rngs) -> nnx.Module:
    if isinstance(cfg, TinyViTConfig):
        return TinyViT(cfg, rngs=rngs)
    return ImageEncoderViT(cfg, rngs=rngs)


def build_prompt_side(cfg: SamConfig, *, rngs: nnx.Rngs) -> tuple[PromptEncoder, MaskDecoder]:
    """``Sam``'s prompt encoder and mask decoder for ``cfg``: everything but the image encoder."""
    dim = cfg.prompt_embed_dim
    prompt_encoder = PromptEncoder(dim, cfg.embedding_size, cfg.image_size, cfg.mask_in_chans, rngs=rngs)
    mask_decoder = MaskDecoder(
        dim,
        TwoWayTransformer(
            cfg.decoder_depth, dim, cfg.decoder_num_heads, cfg.decoder_mlp_dim,
            cfg.attention_downsample_rate, rngs=rngs,
        ),
        num_multimask_outputs=cfg.num_multimask_outputs,
        iou_head_depth=cfg.iou_head_depth,
        iou_head_hidden_dim=cfg.iou_head_hidden_dim,
        rngs=rngs,
    )
    return prompt_encoder, mask_decoder


class Sam(nnx.Module):
    """``image_encoder``, ``prompt_encoder`` and ``mask_decoder``, named as in segment-anything.

    ``weights_id`` names the weights the model holds (the source checkpoint's SHA-256 after
    conversion, ``"random-init"`` otherwise); caches key on it.
    """

    def __init__(self, cfg: SamConfig, *, rngs: nnx.Rngs, weights_id: str = "random-init"):
        self.config = cfg
        self.weights_id = weights_id
        self.image_encoder = build_image_encoder(cfg.encoder, rngs=rngs)
        self.prompt_encoder, self.mask_decoder = build_prompt_side(cfg, rngs=rngs)


@nnx.jit
def encode_images(image_encoder: nnx.Module, images: jax.Array) -> jax.Array:
    """Image embeddings. ``images``: (B, S, S, 3) preprocessed -> (B, E, E, C)."""
    return image_encoder(images)


@nnx.jit(static_argnames="multimask_output")
def decode_masks(
    model: Sam,
    image_embeddings: jax.Array,
    point_coords: jax.Array | None = None,
    point_labels: jax.Array | None = None,
    boxes: jax.Array | None = None,
    mask_inputs: jax.Array | None = None,
    multimask_output: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """Low-resolution mask logits and IoU predictions for a batch of prompts.

    Args:
      image_embeddings: (B, E, E, C), one per prompt (broadcast by the caller).
      point_coords: (B, N, 2) xy in the model's input frame (after resizing); with ``point_labels``
        (B, N): 1 foreground, 0 background, -1 padding.
      boxes: (B, 4) xyxy in the input frame.
      mask_inputs: (B, 4E, 4E, 1) low-resolution logits from a previous prediction.
    Returns:
      masks (B, M, 4E, 4E) logits and iou (B, M); M = 3 with ``multimask_output`` else 1.
    """
    points = None if point_coords is None else (point_coords, point_labels)
    sparse, dense = model.prompt_encoder(points, boxes, mask_inputs)
    return model.mask_decoder(
        image_embeddings, model.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output
    )
