"""Comparison methods for the few-shot decoder: prompted SAM (clicks, boxes) and a U-Net from scratch (the
library's :mod:`fewsam_jax.fewshot.unet`, trained on the labelled slices alone)."""

from bench.baselines.prompted import make_prompt, prompted_items, segment_prompted
from bench.baselines.prompts import PROMPT_SUITE, PromptSpec, box_from_mask, sample_points
from fewsam_jax.fewshot.unet import UNet, UNetConfig, predict_unet, predict_unet_probabilities, train_unet

__all__ = [
    "PROMPT_SUITE", "PromptSpec", "UNet", "UNetConfig", "box_from_mask", "make_prompt", "predict_unet",
    "predict_unet_probabilities", "prompted_items", "sample_points", "segment_prompted", "train_unet",
]
