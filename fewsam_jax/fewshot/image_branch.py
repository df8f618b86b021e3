"""The image itself beside SAM's embedding: a small convolutional branch fused into the mask upscaling.

The frozen encoder's final embedding is a coarse summary; fine boundaries and local intensity
patterns it dropped are still in the pixels. As HQ-SAM brings early, high-resolution features into
SAM's decoder, this branch brings the normalised slice (and optionally its neighbours, 2.5D) into the
decoder's upscaling path, in the decoder's low-resolution mask frame (L = 4E, the frame the labels
live in):

  image (B, L, L, 1 + 2 * context)
    -> level 0: two 3x3 convolutions at L           -> f0 (B, L,   L,   w)   fused after the 2nd upscaling
    -> level 1: 2x2 average pool, two convolutions   -> f1 (B, L/2, L/2, 2w)  fused after the 1st upscaling
    -> level 2: pool, two convolutions               -> (B, E, E, 4w)
    -> levels 3, 4: pool, two convolutions each      -> (B, E/2, E/2, 8w), (B, E/4, E/4, 8w)
    -> back up to E: x2 upsampling, concatenation with the level's features, two convolutions
                                                     -> f2 (B, E, E, 4w)      fused into the transformer output

The levels below E give the branch the receptive field of a small U-Net (structures that the encoder's
resize magnifies span many frame pixels); they cost little, at E/2 and E/4. Each fusion is a 1x1
projection into the decoder's channels, initialised to zero, and at L/2 a residual 3x3 convolution
(last layer zero too) mixes the fused features: an untrained branch leaves SAM's decoder exactly as
converted, and training grows the branch's contribution from there. Every normalisation is per pixel
(LayerNorm over channels), so a training crop and a whole slice are normalised alike. Crops and frames
must be multiples of 16 pixels (E/4 cells).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fewsam_jax.modeling.common import gelu, layer_norm


def _conv3(in_ch: int, out_ch: int, rngs: nnx.Rngs, zero: bool = False) -> nnx.Conv:
    init = nnx.initializers.zeros_init() if zero else nnx.initializers.lecun_normal()
    return nnx.Conv(in_ch, out_ch, (3, 3), padding="SAME", kernel_init=init, rngs=rngs)


def _project(in_ch: int, out_ch: int, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(in_ch, out_ch, kernel_init=nnx.initializers.zeros_init(), rngs=rngs)


def _pool(x: jax.Array) -> jax.Array:
    """2x2 average pooling, (B, H, W, C) -> (B, H/2, W/2, C)."""
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def _upsample(x: jax.Array) -> jax.Array:
    """x2 nearest-neighbour upsampling, (B, H, W, C) -> (B, 2H, 2W, C)."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class ConvBlock(nnx.Module):
    """Two 3x3 convolutions, each followed by a per-pixel LayerNorm and GELU."""

    def __init__(self, in_ch: int, out_ch: int, rngs: nnx.Rngs):
        self.conv1, self.norm1 = _conv3(in_ch, out_ch, rngs), layer_norm(out_ch, rngs)
        self.conv2, self.norm2 = _conv3(out_ch, out_ch, rngs), layer_norm(out_ch, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return gelu(self.norm2(self.conv2(gelu(self.norm1(self.conv1(x))))))


class Refine(nnx.Module):
    """Residual 3x3 conv -> GELU -> 3x3 conv (the last starts at zero): mixes fused features locally."""

    def __init__(self, ch: int, rngs: nnx.Rngs):
        self.conv1, self.conv2 = _conv3(ch, ch, rngs), _conv3(ch, ch, rngs, zero=True)

    def __call__(self, x: jax.Array) -> jax.Array:
        return x + self.conv2(gelu(self.conv1(x)))


class ImageBranch(nnx.Module):
    """Features of the slice at three scales and their fusion into SAM's mask upscaling.

    Args:
      in_ch: input channels, 1 + 2 * context slices.
      width: channels at the finest level (doubled at each coarser one).
      dim: the decoder's transformer width C (upscaled features have C / 4 and C / 8 channels).
    """

    def __init__(self, in_ch: int, width: int, dim: int, *, rngs: nnx.Rngs):
        w = width
        self.levels = nnx.List([ConvBlock(in_ch, w, rngs), ConvBlock(w, 2 * w, rngs), ConvBlock(2 * w, 4 * w, rngs),
                                ConvBlock(4 * w, 8 * w, rngs), ConvBlock(8 * w, 8 * w, rngs)])
        self.up = nnx.List([ConvBlock(16 * w, 8 * w, rngs), ConvBlock(12 * w, 4 * w, rngs)])  # to E/2, then E
        self.fuse = nnx.List([_project(w, dim // 8, rngs), _project(2 * w, dim // 4, rngs),
                              _project(4 * w, dim, rngs)])
        self.refine = Refine(dim // 4, rngs)

    def features(self, images: jax.Array) -> list[jax.Array]:
        """(B, L, L, in_ch) -> [(B, L, L, w), (B, L/2, L/2, 2w), (B, L/4, L/4, 4w)]."""
        skips, x = [], images
        for i, level in enumerate(self.levels):
            x = level(_pool(x) if i else x)
            skips.append(x)
        for up, skip in zip(self.up, (skips[3], skips[2])):
            x = up(jnp.concatenate([_upsample(x), skip], axis=-1))
        return [skips[0], skips[1], x]

    def upscale(self, upscaling, src: jax.Array, images: jax.Array) -> jax.Array:
        """SAM's ``output_upscaling`` layers ``[convT, LayerNorm, GELU, convT, GELU]`` applied to the
        transformer's image output ``src`` (B, E, E, C) with the image's features fused in at each scale;
        returns (B, 4E, 4E, C / 8), what the mask tokens are dotted with."""
        up1, norm, act, up2, act2 = upscaling
        f0, f1, f2 = self.features(images)
        x = up1(src + self.fuse[2](f2)) + self.fuse[1](f1)
        x = self.refine(act(norm(x)))
        return act2(up2(x) + self.fuse[0](f0))


def _space_to_depth(x: jax.Array, f: int) -> jax.Array:
    """(B, H, W, C) -> (B, H/f, W/f, f * f * C): each f x f block of pixels becomes one cell's channels."""
    b, h, w, c = x.shape
    return x.reshape(b, h // f, f, w // f, f, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, h // f, w // f, f * f * c)


def _depth_to_space(x: jax.Array, f: int) -> jax.Array:
    """(B, H, W, f * f * C) -> (B, f * H, f * W, C), the inverse of :func:`_space_to_depth`."""
    b, h, w, c = x.shape
    c //= f * f
    return x.reshape(b, h, w, f, f, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, f * h, f * w, c)


class CellBranch(nnx.Module):
    """The image branch run on the embedding grid instead of the mask frame (``image_frame="embedding"``).

    Each 4 x 4 block of mask-frame pixels becomes one cell's channels (a lossless space-to-depth stem),
    so a U-Net on the E x E grid sees every pixel at 1/16 of the mask frame's cost and with a
    receptive field four times wider in pixels:

      image (B, L, L, c) -> (B, E, E, 16c)
        -> levels at E, E/2, E/4, E/8 (two 3x3 convolutions each; 2w, 4w, 8w, 8w channels)
        -> back up to E (x2 upsampling, concatenation, two convolutions) -> g (B, E, E, 4w)
      fusions (1x1, zero-initialised): g -> C at E (into the transformer output), g -> 4 x C/4
      unfolded to L/2, g -> 16 x C/8 unfolded to L (depth-to-space).

    Same contract as :class:`ImageBranch`; frames must be multiples of 32 pixels (E/8 cells).
    """

    def __init__(self, in_ch: int, width: int, dim: int, *, rngs: nnx.Rngs):
        w, self.factor = width, 4
        self.levels = nnx.List([ConvBlock(16 * in_ch, 2 * w, rngs), ConvBlock(2 * w, 4 * w, rngs),
                                ConvBlock(4 * w, 8 * w, rngs), ConvBlock(8 * w, 8 * w, rngs)])
        self.up = nnx.List([ConvBlock(16 * w, 8 * w, rngs), ConvBlock(12 * w, 4 * w, rngs),
                            ConvBlock(6 * w, 4 * w, rngs)])  # to E/4, E/2, E
        self.fuse = nnx.List([_project(4 * w, 16 * (dim // 8), rngs), _project(4 * w, 4 * (dim // 4), rngs),
                              _project(4 * w, dim, rngs)])

    def features(self, images: jax.Array) -> jax.Array:
        """(B, L, L, in_ch) -> (B, E, E, 4w)."""
        skips, x = [], _space_to_depth(images, self.factor)
        for i, level in enumerate(self.levels):
            x = level(_pool(x) if i else x)
            skips.append(x)
        for up, skip in zip(self.up, (skips[2], skips[1], skips[0])):
            x = up(jnp.concatenate([_upsample(x), skip], axis=-1))
        return x

    def upscale(self, upscaling, src: jax.Array, images: jax.Array) -> jax.Array:
        """As :meth:`ImageBranch.upscale`: (B, E, E, C) -> (B, 4E, 4E, C / 8)."""
        up1, norm, act, up2, act2 = upscaling
        g = self.features(images)
        x = up1(src + self.fuse[2](g)) + _depth_to_space(self.fuse[1](g), 2)
        return act2(up2(act(norm(x))) + _depth_to_space(self.fuse[0](g), 4))


def context_slices(slices: np.ndarray, indices, context: int) -> np.ndarray:
    """Each requested slice with ``context`` neighbours on either side as channels.

    Args:
      slices: (N, H, W) all slices of a volume along the slicing axis; indices: which to return.
    Returns:
      (len(indices), H, W, 1 + 2 * context), channel ``context`` the slice itself; neighbours past the
      volume's ends repeat the edge slice.
    """
    indices = np.asarray(indices, int)
    offsets = np.arange(-context, context + 1)
    picked = np.clip(indices[:, None] + offsets[None, :], 0, len(slices) - 1)  # (n, 1 + 2c)
    return np.moveaxis(slices[picked], 1, -1)
