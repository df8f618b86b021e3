"""Few-shot segmentation: collection, prompts, reformulated decoder, training, inference, the U-Net student."""

from fewsam_jax.fewshot.collection import (Collection, ManifestError, SupportItem, load_collection, pick_slices,
                                           plane_coverage, save_collection)
from fewsam_jax.fewshot.config import AugmentConfig, DecoderConfig, InferenceConfig, TrainConfig
from fewsam_jax.fewshot.decoder import FewShotDecoder
from fewsam_jax.fewshot.segmenter import FewShotSegmenter
from fewsam_jax.fewshot.student import StudentConfig, StudentSegmenter, train_student
from fewsam_jax.fewshot.train import SupportSet, train_decoder

__all__ = [
    "AugmentConfig", "Collection", "DecoderConfig", "FewShotDecoder", "FewShotSegmenter", "InferenceConfig",
    "ManifestError", "StudentConfig", "StudentSegmenter", "SupportItem", "SupportSet", "TrainConfig",
    "load_collection", "pick_slices", "plane_coverage", "save_collection", "train_decoder", "train_student",
]
