"""fewsam_jax: few-shot Segment Anything for anatomical segmentation of CT/MRI volumes, in JAX/Flax NNX.

The public API is what this module exports. ``import fewsam_jax`` never imports torch.
"""

from fewsam_jax import cohort, export, metrics
from fewsam_jax.cache import CachedEmbeddings, EmbeddingCache, embed_volume
from fewsam_jax.config import (PRESETS, SamConfig, TinyViTConfig, ViTConfig, get_config, litemedsam, medsam, vit_b,
                               vit_h, vit_l)
from fewsam_jax.encode import SliceEncoder
from fewsam_jax.fewshot import (
    AugmentConfig,
    Collection,
    DecoderConfig,
    FewShotSegmenter,
    InferenceConfig,
    ManifestError,
    SupportItem,
    TrainConfig,
    load_collection,
    save_collection,
)
from fewsam_jax.io import Volume, VolumeError, from_array, get_slices, load_volume, save_labels, stack_slices
from fewsam_jax.modeling.sam import Sam, decode_masks, encode_images
from fewsam_jax.predictor import SamPredictor
from fewsam_jax.preprocess import WINDOWS, Intensity
from fewsam_jax.weights import load_model, save_model

__all__ = [
    "AugmentConfig", "CachedEmbeddings", "Collection", "DecoderConfig", "EmbeddingCache", "FewShotSegmenter",
    "InferenceConfig", "TrainConfig",
    "Intensity", "ManifestError", "PRESETS", "Sam", "SamConfig", "SamPredictor", "SliceEncoder", "SupportItem",
    "TinyViTConfig", "ViTConfig", "Volume", "VolumeError", "WINDOWS", "decode_masks", "embed_volume",
    "cohort", "encode_images", "export", "from_array", "get_config", "get_slices", "litemedsam", "load_collection",
    "load_model", "load_volume", "medsam", "metrics", "save_collection", "save_labels", "save_model", "stack_slices",
    "vit_b",
    "vit_h", "vit_l",
]
