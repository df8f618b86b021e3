"""SAM's prompt encoder (``segment_anything.modeling.PromptEncoder``) in NHWC.

Points, box corners and mask prompts become a sparse token set (B, Nt, C) and a dense map
(B, E, E, C), where ``E`` is the side of the image embedding grid.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from fewsam_jax.modeling import common


class PositionEmbeddingRandom(nnx.Module):
    """Fourier features of 2D coordinates with a fixed random Gaussian frequency matrix (2, F)."""

    def __init__(self, num_pos_feats: int, *, rngs: nnx.Rngs):
        self.positional_encoding_gaussian_matrix = nnx.Param(
            jax.random.normal(rngs.params(), (2, num_pos_feats)))

    def encode(self, coords: jax.Array) -> jax.Array:
        """``coords``: (..., 2) as (x, y) in [0, 1] -> (..., 2F) as [sin, cos]."""
        proj = (2.0 * coords - 1.0) @ self.positional_encoding_gaussian_matrix[...]
        proj = 2.0 * math.pi * proj
        return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)

    def grid(self, size: int) -> jax.Array:
        """Encoding of the pixel centres of a (size, size) grid -> (size, size, 2F)."""
        centres = (jnp.arange(size, dtype=jnp.float32) + 0.5) / size
        y, x = jnp.meshgrid(centres, centres, indexing="ij")
        return self.encode(jnp.stack([x, y], axis=-1))


class PromptEncoder(nnx.Module):
    """Embeds point, box and mask prompts for the mask decoder.

    Args:
        embed_dim: token width ``C``.
        image_embedding_size: side ``E`` of the image embedding grid.
        input_image_size: side of the (padded, square) encoder input; prompt coordinates are in
            these pixels.
        mask_in_chans: hidden channels of the mask downscaling convolutions.
    """

    def __init__(self, embed_dim: int, image_embedding_size: int, input_image_size: int,
                 mask_in_chans: int, *, rngs: nnx.Rngs):
        self.embed_dim = embed_dim
        self.image_embedding_size = image_embedding_size
        self.input_image_size = input_image_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2, rngs=rngs)
        # Negative point, positive point, box top-left corner, box bottom-right corner.
        self.point_embeddings = nnx.List([nnx.Embed(1, embed_dim, rngs=rngs) for _ in range(4)])
        self.not_a_point_embed = nnx.Embed(1, embed_dim, rngs=rngs)
        hidden = mask_in_chans // 4
        self.mask_downscaling = nnx.List([
            common.conv(1, hidden, 2, rngs, stride=2),
            common.layer_norm(hidden, rngs),
            common.gelu,
            common.conv(hidden, mask_in_chans, 2, rngs, stride=2),
            common.layer_norm(mask_in_chans, rngs),
            common.gelu,
            common.conv(mask_in_chans, embed_dim, 1, rngs),
        ])
        self.no_mask_embed = nnx.Embed(1, embed_dim, rngs=rngs)

    def get_dense_pe(self) -> jax.Array:
        """Positional encoding of the image embedding grid: (E, E, C)."""
        return self.pe_layer.grid(self.image_embedding_size)

    def _encode_coords(self, coords: jax.Array) -> jax.Array:
        """Pixel coordinates (..., 2) (x, y) -> (..., C), shifted to pixel centres."""
        return self.pe_layer.encode((coords + 0.5) / self.input_image_size)

    def _embed_points(self, coords: jax.Array, labels: jax.Array, pad: bool) -> jax.Array:
        """(B, N, 2), (B, N) -> (B, N + pad, C). Label -1: padding, 0: negative, 1: positive."""
        labels = labels[..., None]
        emb = self._encode_coords(coords)
        emb = emb + jnp.where(labels == 0, self.point_embeddings[0].embedding[...], 0.0)
        emb = emb + jnp.where(labels == 1, self.point_embeddings[1].embedding[...], 0.0)
        emb = jnp.where(labels == -1, self.not_a_point_embed.embedding[...], emb)
        if pad:  # SAM's padding point has label -1, so its coordinates don't matter.
            padding = jnp.broadcast_to(self.not_a_point_embed.embedding[...], (emb.shape[0], 1, emb.shape[2]))
            emb = jnp.concatenate([emb, padding], axis=1)
        return emb

    def _embed_boxes(self, boxes: jax.Array) -> jax.Array:
        """(B, 4) as (x0, y0, x1, y1) -> two corner tokens (B, 2, C)."""
        emb = self._encode_coords(boxes.reshape(-1, 2, 2))
        corners = jnp.concatenate([self.point_embeddings[2].embedding[...],
                                   self.point_embeddings[3].embedding[...]], axis=0)
        return emb + corners

    def _embed_masks(self, masks: jax.Array) -> jax.Array:
        """(B, 4E, 4E, 1) mask logits -> (B, E, E, C)."""
        for layer in self.mask_downscaling:
            masks = layer(masks)
        return masks

    def __call__(self, points: tuple[jax.Array, jax.Array] | None, boxes: jax.Array | None,
                 masks: jax.Array | None) -> tuple[jax.Array, jax.Array]:
        """Embed the given prompts (any may be None, as in SAM).

        Args:
            points: coordinates (B, N, 2) as (x, y) input pixels and int labels (B, N) in
                {-1 padding, 0 negative, 1 positive}. Without ``boxes`` a padding point is appended.
            boxes: (B, 4) as (x0, y0, x1, y1) input pixels.
            masks: (B, 4E, 4E, 1) low-resolution mask logits.

        Returns:
            sparse (B, Nt, C) tokens (points first, then the two box corners) and dense
            (B, E, E, C) embeddings (``no_mask_embed`` everywhere without ``masks``).
        """
        if points is not None:
            b = points[0].shape[0]
        elif boxes is not None:
            b = boxes.shape[0]
        elif masks is not None:
            b = masks.shape[0]
        else:
            b = 1
        sparse = [jnp.zeros((b, 0, self.embed_dim), jnp.float32)]
        if points is not None:
            sparse.append(self._embed_points(points[0], points[1], pad=boxes is None))
        if boxes is not None:
            sparse.append(self._embed_boxes(boxes))
        if masks is not None:
            dense = self._embed_masks(masks)
        else:
            e = self.image_embedding_size
            dense = jnp.broadcast_to(self.no_mask_embed.embedding[...][0], (b, e, e, self.embed_dim))
        return jnp.concatenate(sparse, axis=1), dense
