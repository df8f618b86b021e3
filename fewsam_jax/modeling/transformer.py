"""SAM's two-way transformer (``segment_anything.modeling.transformer``).

Prompt tokens and image tokens attend to each other in turn; the image keeps its positional
encoding added at every attention and the tokens their initial embedding.
"""

from __future__ import annotations

import jax
from flax import nnx

from fewsam_jax.modeling import common

_LN_EPS = 1e-5  # torch nn.LayerNorm default, as used by the reference


class Attention(nnx.Module):
    """Multi-head attention whose q/k/v projections shrink the width by ``downsample_rate``."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1, *, rngs: nnx.Rngs):
        internal_dim = embedding_dim // downsample_rate
        if internal_dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the internal width {internal_dim}")
        self.num_heads = num_heads
        self.q_proj = nnx.Linear(embedding_dim, internal_dim, rngs=rngs)
        self.k_proj = nnx.Linear(embedding_dim, internal_dim, rngs=rngs)
        self.v_proj = nnx.Linear(embedding_dim, internal_dim, rngs=rngs)
        self.out_proj = nnx.Linear(internal_dim, embedding_dim, rngs=rngs)

    def _heads(self, x: jax.Array) -> jax.Array:
        """(B, N, D) -> (B, heads, N, D / heads)."""
        b, n, d = x.shape
        return x.reshape(b, n, self.num_heads, d // self.num_heads).transpose(0, 2, 1, 3)

    def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None = None) -> jax.Array:
        """``q``: (B, Nq, C), ``k``/``v``: (B, Nk, C) -> (B, Nq, C); ``bias``: (Nq, Nk) added to the scores."""
        out = common.softmax_attention(self._heads(self.q_proj(q)), self._heads(self.k_proj(k)),
                                       self._heads(self.v_proj(v)), bias)
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(0, 2, 1, 3).reshape(b, n, -1))


class TwoWayAttentionBlock(nnx.Module):
    """Token self-attention, tokens->image attention, token MLP, image->tokens attention.

    ``skip_first_layer_pe`` (the first block): self-attention without the token positional
    embedding and without a residual connection.
    """

    def __init__(self, embedding_dim: int, num_heads: int, mlp_dim: int, attention_downsample_rate: int = 2,
                 skip_first_layer_pe: bool = False, *, rngs: nnx.Rngs):
        self.self_attn = Attention(embedding_dim, num_heads, rngs=rngs)
        self.norm1 = common.layer_norm(embedding_dim, rngs, eps=_LN_EPS)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate, rngs=rngs)
        self.norm2 = common.layer_norm(embedding_dim, rngs, eps=_LN_EPS)
        self.mlp = common.MLPBlock(embedding_dim, mlp_dim, rngs, act=jax.nn.relu)
        self.norm3 = common.layer_norm(embedding_dim, rngs, eps=_LN_EPS)
        self.norm4 = common.layer_norm(embedding_dim, rngs, eps=_LN_EPS)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, attention_downsample_rate, rngs=rngs)
        self.skip_first_layer_pe = skip_first_layer_pe

    def __call__(self, queries: jax.Array, keys: jax.Array, query_pe: jax.Array, key_pe: jax.Array,
                 token_bias: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """``queries``/``query_pe``: (B, N, C); ``keys``/``key_pe``: (B or 1, HW, C); ``token_bias``: (N, N)
        added to the token self-attention scores (e.g. -inf between tokens that must not see each other)."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries, token_bias)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries, token_bias)
        queries = self.norm1(queries)

        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(queries + query_pe, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, queries + query_pe, queries))
        return queries, keys


class TwoWayTransformer(nnx.Module):
    """``depth`` two-way blocks, then a last tokens->image attention and LayerNorm."""

    def __init__(self, depth: int, embedding_dim: int, num_heads: int, mlp_dim: int,
                 attention_downsample_rate: int = 2, *, rngs: nnx.Rngs):
        self.layers = nnx.List([
            TwoWayAttentionBlock(embedding_dim, num_heads, mlp_dim, attention_downsample_rate,
                                 skip_first_layer_pe=i == 0, rngs=rngs)
            for i in range(depth)
        ])
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate, rngs=rngs)
        self.norm_final_attn = common.layer_norm(embedding_dim, rngs, eps=_LN_EPS)

    def __call__(self, image_embedding: jax.Array, image_pe: jax.Array, point_embedding: jax.Array,
                 token_bias: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """Run the decoder transformer.

        Args:
            image_embedding: (B, H, W, C).
            image_pe: (B or 1, H, W, C) positional encoding of the image grid.
            point_embedding: (B, N, C) prompt/output tokens.
            token_bias: optional (N, N) bias of the token self-attention scores.

        Returns:
            queries (B, N, C) and keys (B, H*W, C).
        """
        b, h, w, c = image_embedding.shape
        keys = image_embedding.reshape(b, h * w, c)
        key_pe = image_pe.reshape(image_pe.shape[0], h * w, c)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe, token_bias)
        attn = self.final_attn_token_to_image(queries + point_embedding, keys + key_pe, keys)
        return self.norm_final_attn(queries + attn), keys
