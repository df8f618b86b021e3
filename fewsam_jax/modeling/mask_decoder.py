"""SAM's mask decoder (``segment_anything.modeling.MaskDecoder``) in NHWC.

Unlike the reference, which repeats one image embedding per prompt (``repeat_interleave``),
``image_embeddings`` must already have the prompts' batch size (broadcast it in the caller, e.g.
``jnp.broadcast_to(emb, (num_prompts, *emb.shape[1:]))``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from fewsam_jax.modeling import common
from fewsam_jax.modeling.transformer import TwoWayTransformer


def _upconv(in_ch: int, out_ch: int, rngs: nnx.Rngs) -> common.StridedConvTranspose:
    """torch ``nn.ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2)``."""
    return common.StridedConvTranspose(in_ch, out_ch, 2, rngs)


class MaskDecoder(nnx.Module):
    """Predicts mask logits at 4x the embedding resolution and their IoU from prompt tokens.

    The transformer sees ``[iou_token, mask_tokens (1 + num_multimask_outputs), sparse prompts]``;
    each mask token's output passes through its own hypernetwork MLP and is dotted with the
    upscaled image embedding.
    """

    def __init__(self, transformer_dim: int, transformer: TwoWayTransformer, num_multimask_outputs: int = 3,
                 iou_head_depth: int = 3, iou_head_hidden_dim: int = 256, *, rngs: nnx.Rngs):
        c = transformer_dim
        self.transformer = transformer
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nnx.Embed(1, c, rngs=rngs)
        self.mask_tokens = nnx.Embed(self.num_mask_tokens, c, rngs=rngs)
        self.output_upscaling = nnx.List([
            _upconv(c, c // 4, rngs),
            common.layer_norm(c // 4, rngs),
            common.gelu,
            _upconv(c // 4, c // 8, rngs),
            common.gelu,
        ])
        self.output_hypernetworks_mlps = nnx.List(
            [common.MLP(c, c, c // 8, 3, rngs) for _ in range(self.num_mask_tokens)])
        self.iou_prediction_head = common.MLP(c, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth, rngs)

    def upscale(self, src: jax.Array) -> jax.Array:
        """Transformer image output (B, E, E, C) -> (B, 4E, 4E, C / 8) features the mask tokens are dotted with."""
        for layer in self.output_upscaling:
            src = layer(src)
        return src

    def predict_masks(self, image_embeddings: jax.Array, image_pe: jax.Array, sparse: jax.Array,
                      dense: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """All mask outputs and the transformer's output tokens.

        Args:
            image_embeddings: (B, E, E, C), one per prompt.
            image_pe: (E, E, C) positional encoding of the grid (``PromptEncoder.get_dense_pe``).
            sparse: (B, N, C) prompt tokens.
            dense: (B, E, E, C) dense prompt embeddings.

        Returns:
            masks (B, T, 4E, 4E) logits, iou (B, T), mask_tokens_out (B, T, C) and
            iou_token_out (B, C), with T = 1 + num_multimask_outputs (single-mask output first).
        """
        b, e, _, c = image_embeddings.shape
        output_tokens = jnp.concatenate([self.iou_token.embedding[...], self.mask_tokens.embedding[...]], axis=0)
        tokens = jnp.concatenate([jnp.broadcast_to(output_tokens, (b, *output_tokens.shape)), sparse], axis=1)
        hs, src = self.transformer(image_embeddings + dense, image_pe[None], tokens)
        iou_token_out = hs[:, 0]
        mask_tokens_out = hs[:, 1:1 + self.num_mask_tokens]

        upscaled = self.upscale(src.reshape(b, e, e, c))
        hyper_in = jnp.stack([mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
                             axis=1)
        masks = jnp.einsum("btc,bhwc->bthw", hyper_in, upscaled)
        return masks, self.iou_prediction_head(iou_token_out), mask_tokens_out, iou_token_out

    def __call__(self, image_embeddings: jax.Array, image_pe: jax.Array, sparse: jax.Array, dense: jax.Array,
                 multimask_output: bool) -> tuple[jax.Array, jax.Array]:
        """Masks (B, M, 4E, 4E) logits and IoU predictions (B, M); M = num_multimask_outputs if
        ``multimask_output`` (static) else 1. Arguments as in :meth:`predict_masks`."""
        masks, iou, _, _ = self.predict_masks(image_embeddings, image_pe, sparse, dense)
        sl = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, sl], iou[:, sl]
