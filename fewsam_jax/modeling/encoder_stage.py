"""A staged image encoder split before its last stage, and that stage as a module to adapt with LoRA.

TinyViT (LiteMedSAM's encoder, :mod:`fewsam_jax.modeling.tiny_vit`) is a *trunk* (patch embedding and every
stage but the last) followed by its last stage and SAM's neck. The trunk's output, the last stage's input, is an
(E, E, D) grid per slice on the embedding's own E x E grid (D = the last stage's width): the embedding cache
can keep it beside the embedding (:mod:`fewsam_jax.cache`, ``stage_inputs``), so the last stage can run again,
and be trained, without the trunk.

:class:`EncoderStage` is a copy of that last stage and neck with low-rank adapters (``flax.nnx.LoRA``, B
initialised to zero) on the chosen linear layers (:data:`LINEARS`) of every block: untrained, it computes
exactly what the frozen encoder does. The few-shot decoder holds one when ``DecoderConfig.encoder_lora_rank``
> 0 (:mod:`fewsam_jax.fewshot.decoder`).

Only TinyViT encoders have stages: SAM's ViT encoders (``vit_b``, ``medsam``, ``tiny``) are refused
(:func:`check_staged`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx

from fewsam_jax.config import TINYVIT_BLOCK_LINEARS, SamConfig
from fewsam_jax.modeling.tiny_vit import TinyViT

LINEARS = TINYVIT_BLOCK_LINEARS  # the adaptable linear layers of a block: attention qkv / proj, MLP fc1 / fc2


def is_staged(config: SamConfig) -> bool:
    """Whether the model of ``config`` has an encoder with stages (TinyViT): ``config.staged``."""
    return config.staged


def check_staged(config: SamConfig, option: str) -> None:
    """A ValueError naming ``option`` unless the model of ``config`` has a staged (TinyViT) encoder."""
    if not is_staged(config):
        raise ValueError(f"{option}: needs an image encoder with stages (TinyViT, as in 'litemedsam'); model "
                         f"{config.name!r} has SAM's ViT encoder")


def stage_input_shape(config: SamConfig) -> tuple[int, int, int]:
    """(E, E, D) of one slice's last-stage input: the embedding grid and the last stage's width."""
    check_staged(config, "stage inputs")
    return (config.embedding_size, config.embedding_size, config.encoder.embed_dims[-1])


def trunk(encoder: TinyViT, x: jax.Array) -> jax.Array:
    """``encoder`` up to its last stage: (B, S, S, 3) encoder input -> (B, E, E, D) last-stage input."""
    x = encoder.patch_embed(x)
    for layer in list(encoder.layers)[:-1]:
        x = layer(x)
    return x


def _last_stage(layer: nnx.Module, neck: Sequence, x: jax.Array) -> jax.Array:
    x = layer(x)
    for part in neck:
        x = part(x)
    return x


def last_stage(encoder: TinyViT, x: jax.Array) -> jax.Array:
    """The rest of ``encoder`` after :func:`trunk`, frozen: (B, h, w, D) -> (B, h, w, C) embeddings
    (``last_stage(encoder, trunk(encoder, x))`` is ``encoder(x)``)."""
    return _last_stage(encoder.layers[-1], encoder.neck, x)


class EncoderStage(nnx.Module):
    """A copy of ``encoder``'s last stage and neck, (B, h, w, D) stage inputs -> (B, h, w, C) embeddings, with
    rank-``rank`` LoRA (``nnx.LoRAParam`` A and B, B zero) on the ``targets`` linear layers (names from
    :data:`LINEARS`) of each of its blocks; rank 0: the frozen copy alone. ``encoder`` itself is left as it is.
    Any h, w (training runs on crops); only the LoRA params are meant to be trained."""

    def __init__(self, encoder: TinyViT, rank: int, targets: Sequence[str], *, rngs: nnx.Rngs):
        unknown = sorted(set(targets) - set(LINEARS))
        if unknown:
            raise ValueError(f"encoder_lora_targets: expected names from {LINEARS}, got {unknown}")
        if rank < 0:
            raise ValueError(f"encoder_lora_rank: expected >= 0, got {rank}")
        self.in_channels = encoder.layers[-1].blocks[0].attn.qkv.in_features
        self.layer = nnx.clone(encoder.layers[-1])
        self.neck = nnx.clone(encoder.neck)
        for block in self.layer.blocks if rank else ():
            for owner, name in ((block.attn, "qkv"), (block.attn, "proj"), (block.mlp, "fc1"), (block.mlp, "fc2")):
                if name in targets:
                    base = getattr(owner, name)
                    setattr(owner, name, nnx.LoRA(base.in_features, rank, base.out_features, base_module=base,
                                                  rngs=rngs))

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, h, w, D) last-stage inputs (:func:`trunk`'s output, or a crop of it) -> (B, h, w, C)."""
        if x.shape[-1] != self.in_channels:
            raise ValueError(f"the encoder stage takes last-stage inputs of {self.in_channels} channels, got "
                             f"{x.shape[-1]} (embeddings instead of stage inputs?)")
        return _last_stage(self.layer, self.neck, x)
