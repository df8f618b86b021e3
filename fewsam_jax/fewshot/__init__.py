"""Few-shot segmentation: collection, prompts, reformulated decoder, training, inference."""

from fewsam_jax.fewshot.augment import AugmentConfig
from fewsam_jax.fewshot.collection import Collection, ManifestError, SupportItem, load_collection, save_collection
from fewsam_jax.fewshot.decoder import FewShotConfig, FewShotDecoder
from fewsam_jax.fewshot.segmenter import FewShotSegmenter
from fewsam_jax.fewshot.train import SupportSet, train_decoder

__all__ = [
    "AugmentConfig", "Collection", "FewShotConfig", "FewShotDecoder", "FewShotSegmenter", "ManifestError",
    "SupportItem", "SupportSet", "load_collection", "save_collection", "train_decoder",
]
