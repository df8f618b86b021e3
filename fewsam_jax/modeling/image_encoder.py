"""SAM's ViT image encoder (``segment_anything.modeling.ImageEncoderViT``) in NHWC.

A ViTDet-style backbone: a strided patch embedding, an absolute position embedding, transformer
blocks that attend within non-overlapping windows (a few attend globally) with decomposed
relative position biases, and a convolutional neck down to ``out_chans`` channels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fewsam_jax.config import ViTConfig
from fewsam_jax.modeling.common import MLPBlock, conv, layer_norm, neck


def window_partition(x: jax.Array, window: int) -> jax.Array:
    """(B, H, W, C) -> (B * nh * nw, window, window, C), zero-padding H and W up to multiples of ``window``."""
    b, h, w, c = x.shape
    hp, wp = -(-h // window) * window, -(-w // window) * window
    x = jnp.pad(x, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)))
    x = x.reshape(b, hp // window, window, wp // window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window, window, c)


def window_unpartition(windows: jax.Array, window: int, hw: tuple[int, int]) -> jax.Array:
    """Inverse of :func:`window_partition`: (B * nh * nw, window, window, C) -> (B, H, W, C), padding cropped."""
    h, w = hw
    nh, nw = -(-h // window), -(-w // window)
    c = windows.shape[-1]
    x = windows.reshape(-1, nh, nw, window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, nh * window, nw * window, c)[:, :h, :w]


def resize_rel_pos(rel_pos: jax.Array, length: int) -> jax.Array:
    """(L, C) -> (length, C): linear resampling along L, as ``F.interpolate(mode="linear")`` (align_corners=False)."""
    size = rel_pos.shape[0]
    src = np.maximum((np.arange(length, dtype=np.float32) + 0.5) * np.float32(size / length) - 0.5, 0.0)
    lo = src.astype(np.int64)
    hi = np.minimum(lo + 1, size - 1)
    frac = jnp.asarray(src - lo, dtype=rel_pos.dtype)[:, None]
    return rel_pos[lo] * (1 - frac) + rel_pos[hi] * frac


def get_rel_pos(q_size: int, k_size: int, rel_pos: jax.Array) -> jax.Array:
    """Relative position embeddings for every (query, key) pair along one axis.

    ``rel_pos``: (L, C) table, resized to 2 * max(q_size, k_size) - 1 entries if L differs.
    Returns (q_size, k_size, C). The shorter axis' coordinates are stretched to the longer one.
    """
    length = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != length:
        rel_pos = resize_rel_pos(rel_pos, length)
    q_scale, k_scale = max(k_size / q_size, 1.0), max(q_size / k_size, 1.0)
    q_coords = np.arange(q_size, dtype=np.float32)[:, None] * np.float32(q_scale)
    k_coords = np.arange(k_size, dtype=np.float32)[None, :] * np.float32(k_scale)
    index = (q_coords - k_coords) + np.float32((k_size - 1) * k_scale)
    return rel_pos[index.astype(np.int64)]


# The largest score block: under glibc's largest dynamic mmap threshold (32 MiB), so blocks are recycled from the
# heap rather than mapped and page-faulted afresh; ViT-B's global blocks get 128 queries a block, 8% faster at
# batch 1 than 16 MiB's 64 (bench/RESULTS.md, "Encoder throughput: what bounds JAX").
SCORES_BLOCK_BYTES = 28 * 2**20


def blocked_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                      rel: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
    """Softmax attention computed a few MiB of scores at a time, with SAM's decomposed rel-pos bias.

    ``q``, ``k``, ``v``: (B, heads, N, D); ``rel``: ``(rel_h, rel_w)`` of shapes (B, heads, N, kh) and
    (B, heads, N, kw) with kh * kw = N, the bias of query i and key (y, x) being
    ``rel_h[..., i, y] + rel_w[..., i, x]``. Returns (B, heads, N, D).

    ``lax.map`` walks over the B items (several per step when they are small) and, when one item's
    (heads, N, N) scores exceed ``SCORES_BLOCK_BYTES``, over blocks of queries. Same result as one
    big softmax; but every intermediate stays small enough for malloc to recycle it from its heap,
    where a full (heads, 4096, 4096) float32 score tensor of a global block would be mmapped fresh
    and page-faulted in on every call (its kernel time: bench/RESULTS.md, "Encoder throughput: what
    bounds JAX").
    """
    b, heads, n, d = q.shape
    row_bytes = heads * k.shape[2] * q.dtype.itemsize
    block = max(c for c in range(1, n + 1) if n % c == 0 and (c * row_bytes <= SCORES_BLOCK_BYTES or c == 1))
    per_step = max(1, SCORES_BLOCK_BYTES // (n * row_bytes))

    def attend(q, k, v, rel):  # one query block of one item: q (heads, block, D)
        scores = jnp.einsum("nqd,nkd->nqk", q, k) * (d ** -0.5)
        if rel is not None:
            rel_h, rel_w = rel
            scores = scores + (rel_h[..., :, None] + rel_w[..., None, :]).reshape(scores.shape)
        return jnp.einsum("nqk,nkd->nqd", jax.nn.softmax(scores, axis=-1), v)

    def item(args):  # (heads, N, D) -> (heads, N, D)
        q, k, v, rel = args
        if block == n:
            return attend(q, k, v, rel)
        split = lambda a: jnp.moveaxis(a.reshape(heads, n // block, block, *a.shape[2:]), 1, 0)
        blocks = jax.lax.map(lambda a: attend(a[0], k, v, a[1]),
                             (split(q), None if rel is None else tuple(map(split, rel))))
        return jnp.moveaxis(blocks, 0, 1).reshape(heads, n, d)

    return jax.lax.map(item, (q, k, v, rel), batch_size=per_step)


class PatchEmbed(nnx.Module):
    """Non-overlapping patch projection: (B, H, W, in_chans) -> (B, H/p, W/p, embed_dim)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, *, rngs: nnx.Rngs):
        self.proj = conv(in_chans, embed_dim, patch_size, rngs, stride=patch_size)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.proj(x)


class Attention(nnx.Module):
    """Multi-head self-attention over a (B, H, W, C) grid with optional decomposed relative position bias.

    ``size`` is the grid side the relative position tables are built for: ``rel_pos_h`` and
    ``rel_pos_w`` have shape (2 * size - 1, C // num_heads).
    """

    def __init__(self, dim: int, num_heads: int, size: int, *, qkv_bias: bool = True,
                 use_rel_pos: bool = False, rngs: nnx.Rngs):
        self.num_heads = num_heads
        self.qkv = nnx.Linear(dim, 3 * dim, use_bias=qkv_bias, rngs=rngs)
        self.proj = nnx.Linear(dim, dim, rngs=rngs)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            self.rel_pos_h = nnx.Param(jnp.zeros((2 * size - 1, dim // num_heads)))
            self.rel_pos_w = nnx.Param(jnp.zeros((2 * size - 1, dim // num_heads)))

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, C) -> (B, H, W, C)."""
        b, h, w, c = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.transpose(2, 0, 3, 1, 4)  # each (B, heads, H*W, head_dim)
        rel = None
        if self.use_rel_pos:
            rq = q.reshape(b, self.num_heads, h, w, -1)
            rel_h = jnp.einsum("bnhwc,hkc->bnhwk", rq, get_rel_pos(h, h, self.rel_pos_h[...]))
            rel_w = jnp.einsum("bnhwc,wkc->bnhwk", rq, get_rel_pos(w, w, self.rel_pos_w[...]))
            rel = (rel_h.reshape(b, self.num_heads, h * w, h), rel_w.reshape(b, self.num_heads, h * w, w))
        out = blocked_attention(q, k, v, rel)  # (B, heads, H*W, head_dim)
        return self.proj(out.transpose(0, 2, 1, 3).reshape(b, h, w, c))


class Block(nnx.Module):
    """Pre-norm transformer block; attention is windowed when ``window_size > 0``, global otherwise.

    ``input_size`` is the token grid side, used for the relative position tables of global blocks.
    """

    def __init__(self, dim: int, num_heads: int, input_size: int, *, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, use_rel_pos: bool = False, window_size: int = 0, rngs: nnx.Rngs):
        self.norm1 = layer_norm(dim, rngs)
        self.attn = Attention(dim, num_heads, window_size or input_size, qkv_bias=qkv_bias,
                              use_rel_pos=use_rel_pos, rngs=rngs)
        self.norm2 = layer_norm(dim, rngs)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), rngs)
        self.window_size = window_size

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, C) -> (B, H, W, C)."""
        y = self.norm1(x)
        if self.window_size > 0:
            y = window_unpartition(self.attn(window_partition(y, self.window_size)), self.window_size,
                                   x.shape[1:3])
        else:
            y = self.attn(y)
        x = x + y
        return x + self.mlp(self.norm2(x))


class ImageEncoderViT(nnx.Module):
    """(B, img_size, img_size, in_chans) images -> (B, E, E, out_chans) embeddings, E = img_size // patch_size."""

    def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
        self.img_size = cfg.img_size
        e = cfg.embedding_size
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, cfg.embed_dim, rngs=rngs)
        self.pos_embed = nnx.Param(jnp.zeros((1, e, e, cfg.embed_dim))) if cfg.use_abs_pos else None
        self.blocks = nnx.List([
            Block(cfg.embed_dim, cfg.num_heads, e, mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias,
                  use_rel_pos=cfg.use_rel_pos,
                  window_size=0 if i in cfg.global_attn_indexes else cfg.window_size, rngs=rngs)
            for i in range(cfg.depth)
        ])
        self.neck = neck(cfg.embed_dim, cfg.out_chans, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, img_size, img_size, in_chans) -> (B, E, E, out_chans)."""
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed[...]
        for block in self.blocks:
            x = block(x)
        for layer in self.neck:
            x = layer(x)
        return x
