"""bench.sam_features' encoder front: the screened early feature maps are the encoder's own intermediate
activations (the rest of the encoder run on them gives the embedding), in the frame the embedding uses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import tiny_staged_sam

from bench.sam_features import SOURCES, EncoderFront
from fewsam_jax.encode import SliceEncoder


@pytest.mark.parametrize("source, side, channels", [("patch", 32, 8), ("stage0", 16, 16), ("stage1", 8, 16)])
def test_each_source_is_the_encoder_prefix_in_its_frame(source, side, channels):
    sam = tiny_staged_sam()
    slices = np.random.default_rng(0).uniform(size=(5, 20, 28)).astype(np.float32)  # 5: one padded batch of 4
    maps = EncoderFront(sam, source, batch=4)(slices)
    assert maps.shape == (5, side, side, channels)
    graphdef, state = nnx.split(sam.image_encoder)

    @jax.jit  # the rest of the encoder (jitted: eager, op by op, it takes seconds to dispatch)
    def rest(state, x):
        encoder = nnx.merge(graphdef, state)
        for layer in list(encoder.layers)[SOURCES[source]:]:
            x = layer(x)
        for part in encoder.neck:
            x = part(x)
        return x

    embeddings = np.asarray(rest(state, jnp.asarray(maps)))
    np.testing.assert_allclose(embeddings, SliceEncoder(sam).encode(slices), atol=1e-4)  # the cache's embedding
