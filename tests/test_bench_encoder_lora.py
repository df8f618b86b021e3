"""bench.encoder_lora: the split encoder (trunk + last stage) and its LoRA adapters, on a small random TinyViT."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bench.encoder_lora import make_stage, trunk
from fewsam_jax.config import TinyViTConfig
from fewsam_jax.modeling.tiny_vit import TinyViT

CONFIG = TinyViTConfig(img_size=32, embed_dims=(8, 16, 16, 32), depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 2),
                       out_chans=16)


@pytest.fixture(scope="module")
def encoder():
    return TinyViT(CONFIG, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def images():
    return jax.random.normal(jax.random.key(1), (2, 32, 32, 3))


@pytest.mark.parametrize("rank", [0, 3])
def test_stage_on_trunk_is_the_encoder_until_trained(encoder, images, rank):
    """Trunk then stage reproduces the whole encoder; LoRA starts from B = 0, so the adapted stage does too."""
    stage = make_stage(encoder, rank, ("qkv", "proj"), seed=0)
    split = nnx.jit(lambda e, s, x: s(trunk(e, x)))(encoder, stage, images)
    assert split.shape == (2, CONFIG.embedding_size, CONFIG.embedding_size, CONFIG.out_chans)
    np.testing.assert_allclose(split, nnx.jit(lambda e, x: e(x))(encoder, images), atol=1e-5)


def test_only_adapters_are_lora_params_and_they_learn(encoder, images):
    rank, targets = 3, ("qkv", "fc2")
    stage = make_stage(encoder, rank, targets, seed=0)
    lora = nnx.state(stage, nnx.LoRAParam)
    sizes = sorted(x.size for x in jax.tree_util.tree_leaves(lora))
    dim, hidden = CONFIG.embed_dims[-1], int(CONFIG.embed_dims[-1] * CONFIG.mlp_ratio)
    per_block = sorted([dim * rank, rank * 3 * dim, hidden * rank, rank * dim])  # A and B of qkv and fc2
    assert sizes == sorted(per_block * CONFIG.depths[-1])
    x = nnx.jit(trunk)(encoder, images)
    grads = nnx.jit(nnx.grad(lambda s: jnp.mean(s(x) ** 2), argnums=nnx.DiffState(0, nnx.LoRAParam)))(stage)
    norms = [float(jnp.abs(g).sum()) for g in jax.tree_util.tree_leaves(grads)]
    assert len(norms) == len(sizes) and max(norms) > 0  # B (zero at start) gets a gradient
    # the frozen copy is untouched by building the adapters: the encoder keeps plain Linear layers
    assert isinstance(encoder.layers[-1].blocks[0].attn.qkv, nnx.Linear)


def test_unknown_layer_is_refused(encoder):
    with pytest.raises(ValueError, match="targets"):
        make_stage(encoder, 2, ("qkv", "query"), seed=0)
