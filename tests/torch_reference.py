"""segment-anything's PyTorch modules built from one of our configs (ViT encoders only)."""

from __future__ import annotations

from functools import partial

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from fewsam_jax.config import SamConfig


def torch_sam(cfg: SamConfig) -> Sam:
    """A randomly initialised ``segment_anything`` Sam with ``cfg``'s sizes, as ``build_sam`` makes it."""
    enc = cfg.encoder
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=enc.img_size, patch_size=enc.patch_size, embed_dim=enc.embed_dim, depth=enc.depth,
            num_heads=enc.num_heads, mlp_ratio=enc.mlp_ratio, out_chans=enc.out_chans, qkv_bias=enc.qkv_bias,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=enc.use_rel_pos,
            window_size=enc.window_size, global_attn_indexes=enc.global_attn_indexes,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=cfg.prompt_embed_dim, image_embedding_size=(cfg.embedding_size,) * 2,
            input_image_size=(cfg.image_size,) * 2, mask_in_chans=cfg.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=cfg.num_multimask_outputs,
            transformer=TwoWayTransformer(depth=cfg.decoder_depth, embedding_dim=cfg.prompt_embed_dim,
                                          mlp_dim=cfg.decoder_mlp_dim, num_heads=cfg.decoder_num_heads),
            transformer_dim=cfg.prompt_embed_dim, iou_head_depth=cfg.iou_head_depth,
            iou_head_hidden_dim=cfg.iou_head_hidden_dim,
        ),
    ).eval()
