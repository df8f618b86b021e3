"""Self-prompting (InferenceConfig.self_prompt): a volume's own prototypes as the prompts of a second pass.

The tokens, from hand-made labels on the tiny random SAM; the second pass end to end is in test_fewshot.py, beside
the decoder it trains.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fewsam_jax.fewshot import DecoderConfig, InferenceConfig, SupportSet
from fewsam_jax.fewshot.decoder import FewShotDecoder
from fewsam_jax.fewshot.prompts import IGNORE
from fewsam_jax.fewshot.self_prompt import VolumePrompts, frame_labels
from fewsam_jax.fewshot.train import support_tokens


def test_frame_labels_follow_the_cutoffs_and_presence_and_ignore_the_padding():
    logits = np.full((2, 2, 8, 8), -1.0, np.float32)  # (n, K, L, L), already shifted: 0 is the cut-off
    logits[:, 0, :2, :2] = 2.0
    logits[:, 1, :2, 1:3] = 3.0  # overlaps class 1 at column 1: the higher logit wins
    presence = np.array([[0.9, 0.9], [0.9, 0.1]], np.float32)
    labels = frame_labels(logits, presence, 0.5, slice_shape=(20, 10))  # 20 x 10 fills 8 x 4 of the 8 x 8 frame
    assert labels.shape == (2, 8, 8) and labels.dtype == np.int32
    assert (labels[:, :, 4:] == IGNORE).all() and (labels[:, :, :4] != IGNORE).all()
    np.testing.assert_array_equal(labels[0, :2, :4], [[1, 2, 2, 0], [1, 2, 2, 0]])
    np.testing.assert_array_equal(labels[1, :2, :4], [[1, 1, 0, 0], [1, 1, 0, 0]])  # class 2 gated off on slice 1
    assert (labels[:, 2:, :4] == 0).all()


@pytest.fixture(scope="module")
def volume_case(tiny_sam):
    """A decoder on the tiny SAM and a 'volume' of 5 slices: random embeddings (5, E, E, C), labels in the frame
    with class 1 on every slice and class 2 on slices 1 and 3 only."""
    decoder = FewShotDecoder(tiny_sam, DecoderConfig(slice_tokens=2, image_features=0), rngs=nnx.Rngs(0))
    e, low, c = tiny_sam.config.embedding_size, tiny_sam.config.low_res_size, tiny_sam.config.prompt_embed_dim
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(5, e, e, c)).astype(np.float32)
    labels = np.zeros((5, low, low), np.int32)
    labels[:, 4:12, 4:12] = 1
    labels[[1, 3], 16:24, 8:20] = 2
    labels[:, :, -4:] = IGNORE
    support = jnp.asarray(rng.normal(size=(2, decoder.config.num_tokens, c)), jnp.float32)
    return dict(decoder=decoder, embeddings=embeddings, labels=labels, support=support)


def collected(case, chunks, labels=None):
    prompts = VolumePrompts(case["decoder"], 2, rows=5)
    labels = case["labels"] if labels is None else labels
    for part in chunks:
        prompts.add(case["embeddings"][part], labels[part])
    return prompts


def test_the_volumes_own_tokens_are_the_tokens_it_would_give_as_a_support(volume_case):
    """Weight 1: exactly support_tokens of a support set made of the volume's slices with those labels (prototypes
    taken as the support's are), whichever chunks they came in."""
    case = volume_case
    as_support = SupportSet(case["embeddings"], case["labels"], np.arange(5), (1, 2))
    expected = support_tokens(case["decoder"], as_support)
    for chunks in ([np.arange(5)], [np.arange(3), np.arange(3, 5)], [np.arange(i, i + 1) for i in range(5)]):
        own = collected(case, chunks).tokens(case["support"], 1.0)
        np.testing.assert_allclose(own, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="embeddings: expected at most 5 slices"):
        VolumePrompts(case["decoder"], 2, rows=5).add(np.zeros((6, *case["embeddings"].shape[1:])), case["labels"])


def test_the_share_blends_the_tokens_and_a_class_labelled_nowhere_keeps_the_supports(volume_case):
    case = volume_case
    prompts = collected(case, [np.arange(5)])
    own = prompts.tokens(case["support"], 1.0)
    np.testing.assert_array_equal(prompts.tokens(case["support"], 0.0), case["support"])
    np.testing.assert_allclose(prompts.tokens(case["support"], 0.25), 0.75 * case["support"] + 0.25 * own,
                               rtol=1e-6, atol=1e-6)
    without_2 = np.where(case["labels"] == 2, 0, case["labels"])
    tokens = collected(case, [np.arange(5)], without_2).tokens(case["support"], 1.0)
    np.testing.assert_array_equal(tokens[1], case["support"][1])  # nothing labelled: the support's tokens
    assert not np.allclose(tokens[0], case["support"][0])
    nothing = np.where(case["labels"] > 0, 0, case["labels"])
    np.testing.assert_array_equal(collected(case, [np.arange(5)], nothing).tokens(case["support"], 1.0),
                                  case["support"])


@pytest.mark.parametrize("share", [-0.1, 1.5, True, "1"])
def test_self_prompt_must_be_a_share(share):
    with pytest.raises(ValueError, match="self_prompt: expected a number in \\[0, 1\\]"):
        InferenceConfig(self_prompt=share)
