"""The staged encoder split before its last stage, and that stage's LoRA copy, on a small random TinyViT."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import tiny_staged_config

from fewsam_jax.config import tiny
from fewsam_jax.modeling.encoder_stage import EncoderStage, check_staged, last_stage, stage_input_shape, trunk
from fewsam_jax.modeling.tiny_vit import TinyViT

CONFIG = tiny_staged_config()
ENCODER = CONFIG.encoder


@pytest.fixture(scope="module")
def encoder():
    return TinyViT(ENCODER, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def images():
    return jax.random.normal(jax.random.key(1), (2, 32, 32, 3))


@pytest.mark.slow  # compiles and trains the adapted stage
@pytest.mark.parametrize("rank", [0, 3])
def test_stage_on_trunk_is_the_encoder_until_trained(encoder, images, rank):
    """Trunk then stage reproduces the whole encoder; LoRA starts from B = 0, so the adapted copy does too,
    exactly (it adds x @ A @ 0 to the frozen layer's output)."""
    stage = EncoderStage(encoder, rank, ("qkv", "proj"), rngs=nnx.Rngs(0))
    inputs = nnx.jit(trunk)(encoder, images)
    assert inputs.shape == (2, *stage_input_shape(CONFIG)) == (2, 8, 8, 32)
    adapted = nnx.jit(lambda s, x: s(x))(stage, inputs)
    assert adapted.shape == (2, CONFIG.embedding_size, CONFIG.embedding_size, ENCODER.out_chans)
    np.testing.assert_array_equal(adapted, nnx.jit(last_stage)(encoder, inputs))
    np.testing.assert_allclose(adapted, nnx.jit(lambda e, x: e(x))(encoder, images), atol=1e-5)
    crop = nnx.jit(lambda s, x: s(x))(stage, inputs[:, 2:6, 1:5])  # any grid size: training runs on crops
    assert crop.shape == (2, 4, 4, ENCODER.out_chans)


@pytest.mark.slow  # compiles and trains the adapted stage
def test_only_adapters_are_lora_params_and_they_learn(encoder, images):
    rank, targets = 3, ("qkv", "fc2")
    stage = EncoderStage(encoder, rank, targets, rngs=nnx.Rngs(0))
    lora = nnx.state(stage, nnx.LoRAParam)
    sizes = sorted(x.size for x in jax.tree_util.tree_leaves(lora))
    dim, hidden = ENCODER.embed_dims[-1], int(ENCODER.embed_dims[-1] * ENCODER.mlp_ratio)
    per_block = sorted([dim * rank, rank * 3 * dim, hidden * rank, rank * dim])  # A and B of qkv and fc2
    assert sizes == sorted(per_block * ENCODER.depths[-1])
    x = nnx.jit(trunk)(encoder, images)
    grads = nnx.jit(nnx.grad(lambda s: jnp.mean(s(x) ** 2), argnums=nnx.DiffState(0, nnx.LoRAParam)))(stage)
    norms = [float(jnp.abs(g).sum()) for g in jax.tree_util.tree_leaves(grads)]
    assert len(norms) == len(sizes) and max(norms) > 0  # B (zero at start) gets a gradient
    # the frozen copy is untouched by building the adapters: the encoder keeps plain Linear layers
    assert isinstance(encoder.layers[-1].blocks[0].attn.qkv, nnx.Linear)


def test_wrong_layers_inputs_and_encoders_are_refused(encoder):
    with pytest.raises(ValueError, match="encoder_lora_targets: expected names from"):
        EncoderStage(encoder, 2, ("qkv", "query"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="takes last-stage inputs of 32 channels, got 16"):
        EncoderStage(encoder, 2, ("qkv",), rngs=nnx.Rngs(0))(jnp.zeros((1, 8, 8, 16)))
    with pytest.raises(ValueError, match="encoder_lora_rank: needs an image encoder with stages .* model 'tiny' has"):
        check_staged(tiny(), "encoder_lora_rank")
