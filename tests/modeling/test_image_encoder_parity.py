"""Parity of ``fewsam_jax.modeling.image_encoder`` with ``segment_anything``'s ViT image encoder."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from segment_anything.modeling import ImageEncoderViT as TorchImageEncoderViT
from segment_anything.modeling.image_encoder import get_rel_pos as torch_get_rel_pos

from converters.torch_to_flax import load_state_dict
from fewsam_jax.config import ViTConfig, tiny, vit_b
from fewsam_jax.modeling.image_encoder import ImageEncoderViT, get_rel_pos

RTOL = 1e-4
SMALL = ViTConfig(img_size=256, embed_dim=64, depth=2, num_heads=4, out_chans=32, window_size=14,
                  global_attn_indexes=(1,))

CASES = {
    # name: (config, input side in pixels)
    "tiny": (tiny().encoder, 128),
    # 16x16 grid, window 14: windowed block 0 pads to 28x28; block 1 is global.
    "padded_windows": (SMALL, 256),
    "no_qkv_bias_no_rel_pos": (dataclasses.replace(SMALL, qkv_bias=False, use_rel_pos=False), 256),
    # No absolute position embedding, so a 160 px image (10x10 grid) runs through an encoder built
    # for 128 px: the global block resizes its 15-entry rel-pos tables to 19 entries.
    "off_size_rel_pos_resize": (dataclasses.replace(tiny().encoder, use_abs_pos=False), 160),
}


def torch_encoder(cfg: ViTConfig, seed: int = 0) -> TorchImageEncoderViT:
    """The reference encoder as ``segment_anything.build_sam`` builds it, with every parameter random.

    Position embeddings, rel-pos tables and LayerNorm affines are zero/one at torch init; they are
    redrawn so that their conversion and use are checked too.
    """
    torch.manual_seed(seed)
    module = TorchImageEncoderViT(
        img_size=cfg.img_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans, embed_dim=cfg.embed_dim,
        depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, out_chans=cfg.out_chans,
        qkv_bias=cfg.qkv_bias, norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6),
        use_abs_pos=cfg.use_abs_pos, use_rel_pos=cfg.use_rel_pos, window_size=cfg.window_size,
        global_attn_indexes=cfg.global_attn_indexes,
    ).eval()
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "pos" in name or "norm" in name or name.startswith(("neck.1", "neck.3")):
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if name.endswith("weight") else 0.0))
    return module


def run_parity(cfg: ViTConfig, side: int, batch: int) -> float:
    """Max |jax - torch| / max |torch| of the encoder outputs on a random NCHW/NHWC image batch."""
    reference = torch_encoder(cfg)
    encoder = nnx.eval_shape(lambda: ImageEncoderViT(cfg, rngs=nnx.Rngs(0)))  # filled by the load
    load_state_dict(encoder, {k: v.numpy() for k, v in reference.state_dict().items()})
    images = torch.randn(batch, cfg.in_chans, side, side, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(images).permute(0, 2, 3, 1).numpy()
    forward = nnx.jit(ImageEncoderViT.__call__)
    with jax.default_matmul_precision("highest"):
        actual = np.asarray(forward(encoder, jnp.asarray(images.permute(0, 2, 3, 1).numpy())))
    grid = side // cfg.patch_size
    assert actual.shape == expected.shape == (batch, grid, grid, cfg.out_chans)
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


@pytest.mark.parametrize("name", list(CASES))
def test_image_encoder_parity(name):
    cfg, side = CASES[name]
    err = run_parity(cfg, side, batch=2)
    print(f"{name}: max relative error {err:.2e}")
    assert err <= RTOL


@pytest.mark.slow
def test_image_encoder_parity_vit_b():
    err = run_parity(vit_b().encoder, 1024, batch=1)
    print(f"vit_b: max relative error {err:.2e}")
    assert err <= RTOL


@pytest.mark.parametrize("q_size,k_size,length", [(7, 7, 13), (7, 7, 27), (12, 12, 7), (4, 9, 17), (9, 4, 11)])
def test_get_rel_pos_parity(q_size, k_size, length):
    """Table lookup with and without linear resizing, for equal and unequal query/key sizes."""
    table = torch.randn(length, 8, generator=torch.Generator().manual_seed(0))
    expected = torch_get_rel_pos(q_size, k_size, table).numpy()
    actual = np.asarray(get_rel_pos(q_size, k_size, jnp.asarray(table.numpy())))
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6)
