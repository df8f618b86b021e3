"""Layers shared by the SAM components.

Attribute names follow the PyTorch ``state_dict`` keys of ``segment_anything`` so that weight
conversion is a handful of generic rules (``_RULES`` in ``converters/torch_to_flax.py``). Arrays are NHWC.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx


def gelu(x: jax.Array) -> jax.Array:
    """PyTorch's ``nn.GELU``: the exact erf form (``jax.nn.gelu`` defaults to the tanh approximation,
    and its exact form goes through erfc, which XLA on CPU splits into extra full-size passes)."""
    return 0.5 * x * (1.0 + jax.lax.erf(x * (0.5**0.5)))


def layer_norm(dim: int, rngs: nnx.Rngs, eps: float = 1e-6) -> nnx.LayerNorm:
    """LayerNorm over the channel (last) axis; also SAM's ``LayerNorm2d`` in NHWC."""
    return nnx.LayerNorm(dim, epsilon=eps, rngs=rngs)


class MLPBlock(nnx.Module):
    """``lin1 -> act -> lin2`` (``segment_anything.modeling.common.MLPBlock``)."""

    def __init__(self, dim: int, hidden: int, rngs: nnx.Rngs, act: Callable = gelu):
        self.lin1 = nnx.Linear(dim, hidden, rngs=rngs)
        self.lin2 = nnx.Linear(hidden, dim, rngs=rngs)
        self.act = act

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.lin2(self.act(self.lin1(x)))


class MLP(nnx.Module):
    """``layers.0 .. layers.{n-1}`` Linear layers with ReLU between (SAM mask decoder's MLP)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int, rngs: nnx.Rngs,
                 sigmoid_output: bool = False):
        dims = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(dims[:-1], dims[1:])])
        self.sigmoid_output = sigmoid_output

    def __call__(self, x: jax.Array) -> jax.Array:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = jax.nn.relu(x)
        return jax.nn.sigmoid(x) if self.sigmoid_output else x


def conv(in_ch: int, out_ch: int, kernel: int, rngs: nnx.Rngs, stride: int = 1, padding: int = 0,
         groups: int = 1, bias: bool = True) -> nnx.Conv:
    """A PyTorch-style ``nn.Conv2d`` (explicit symmetric padding) on NHWC arrays."""
    return nnx.Conv(in_ch, out_ch, (kernel, kernel), strides=stride, padding=[(padding, padding)] * 2,
                    feature_group_count=groups, use_bias=bias, rngs=rngs)


def neck(in_ch: int, out_ch: int, rngs: nnx.Rngs) -> nnx.List:
    """SAM's convolutional neck, shared by both encoders: 1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d
    (no conv biases); applied layer by layer, (B, H, W, in_ch) -> (B, H, W, out_ch). Keys ``neck.0..3``."""
    return nnx.List([
        conv(in_ch, out_ch, 1, rngs, bias=False),
        layer_norm(out_ch, rngs),
        conv(out_ch, out_ch, 3, rngs, padding=1, bias=False),
        layer_norm(out_ch, rngs),
    ])


class StridedConvTranspose(nnx.ConvTranspose):
    """``nn.ConvTranspose2d`` with stride == kernel size (no overlap) as one matmul + pixel shuffle.

    Same parameters and layout as ``nnx.ConvTranspose``, but its gradient avoids the dilated
    convolution that makes the generic backward pass many times slower than the forward on CPU.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, rngs: nnx.Rngs):
        super().__init__(in_ch, out_ch, (kernel, kernel), strides=(kernel, kernel), padding="VALID", rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, I) -> (B, kH, kW, O)."""
        kernel = self.kernel[...][::-1, ::-1]  # lax.conv_transpose's kernel is spatially flipped
        kh, kw, _, out = kernel.shape
        y = jnp.einsum("bhwi,pqio->bhpwqo", x, kernel)
        b, h, _, w, _, _ = y.shape
        return y.reshape(b, h * kh, w * kw, out) + self.bias[...]


def softmax_attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None = None) -> jax.Array:
    """Scaled dot-product attention. ``q``: (..., Nq, D), ``k``/``v``: (..., Nk, D)."""
    scores = jnp.einsum("...qd,...kd->...qk", q, k) * (q.shape[-1] ** -0.5)
    if bias is not None:
        scores = scores + bias
    return jnp.einsum("...qk,...kd->...qd", jax.nn.softmax(scores, axis=-1), v)
