"""fewsam_jax: few-shot Segment Anything for anatomical segmentation of CT/MRI volumes, in JAX/Flax NNX.

The public API is what this module exports (``__all__``). ``import fewsam_jax`` never imports torch, and
imports nothing heavy at all: each exported name is imported from its module on first access (PEP 562
``__getattr__``), so ``fewsam --help`` and ``import fewsam_jax.cli`` do not load jax, flax or zarr.
``from fewsam_jax import X`` and ``fewsam_jax.X`` work as with eager imports.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

# {exported name: module it lives in}; a name equal to its module's last part is that submodule itself.
_EXPORTS = {
    "cohort": "fewsam_jax.cohort",
    "export": "fewsam_jax.export",
    "metrics": "fewsam_jax.metrics",
    **dict.fromkeys(("CachedEmbeddings", "EmbeddingCache", "embed_volume"), "fewsam_jax.cache"),
    **dict.fromkeys(("PRESETS", "SamConfig", "TinyViTConfig", "ViTConfig", "get_config", "litemedsam", "medsam",
                     "vit_b", "vit_h", "vit_l"), "fewsam_jax.config"),
    "SliceEncoder": "fewsam_jax.encode",
    "enable_compilation_cache": "fewsam_jax.home",
    **dict.fromkeys(("AugmentConfig", "Collection", "DecoderConfig", "FewShotSegmenter", "InferenceConfig",
                     "ManifestError", "StudentConfig", "StudentSegmenter", "SupportItem", "TrainConfig",
                     "load_collection", "save_collection", "train_student"), "fewsam_jax.fewshot"),
    **dict.fromkeys(("Volume", "VolumeError", "from_array", "get_slices", "load_volume", "save_labels",
                     "stack_slices"), "fewsam_jax.io"),
    **dict.fromkeys(("Sam", "decode_masks", "encode_images"), "fewsam_jax.modeling.sam"),
    "SamPredictor": "fewsam_jax.predictor",
    **dict.fromkeys(("WINDOWS", "Intensity"), "fewsam_jax.preprocess"),
    **dict.fromkeys(("load_model", "save_model"), "fewsam_jax.weights"),
}

__all__ = [  # the keys of _EXPORTS (tested), spelled out for linters and readers
    "PRESETS",
    "WINDOWS",
    "AugmentConfig",
    "CachedEmbeddings",
    "Collection",
    "DecoderConfig",
    "EmbeddingCache",
    "FewShotSegmenter",
    "InferenceConfig",
    "Intensity",
    "ManifestError",
    "Sam",
    "SamConfig",
    "SamPredictor",
    "SliceEncoder",
    "StudentConfig",
    "StudentSegmenter",
    "SupportItem",
    "TinyViTConfig",
    "TrainConfig",
    "ViTConfig",
    "Volume",
    "VolumeError",
    "cohort",
    "decode_masks",
    "embed_volume",
    "enable_compilation_cache",
    "encode_images",
    "export",
    "from_array",
    "get_config",
    "get_slices",
    "litemedsam",
    "load_collection",
    "load_model",
    "load_volume",
    "medsam",
    "metrics",
    "save_collection",
    "save_labels",
    "save_model",
    "stack_slices",
    "train_student",
    "vit_b",
    "vit_h",
    "vit_l",
]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports on demand
    from fewsam_jax import cohort, export, metrics
    from fewsam_jax.cache import CachedEmbeddings, EmbeddingCache, embed_volume
    from fewsam_jax.config import (
        PRESETS,
        SamConfig,
        TinyViTConfig,
        ViTConfig,
        get_config,
        litemedsam,
        medsam,
        vit_b,
        vit_h,
        vit_l,
    )
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
    from fewsam_jax.home import enable_compilation_cache
    from fewsam_jax.io import Volume, VolumeError, from_array, get_slices, load_volume, save_labels, stack_slices
    from fewsam_jax.modeling.sam import Sam, decode_masks, encode_images
    from fewsam_jax.predictor import SamPredictor
    from fewsam_jax.preprocess import WINDOWS, Intensity
    from fewsam_jax.weights import load_model, save_model


def __getattr__(name: str) -> Any:
    """Imports the module of exported ``name`` on first access and caches the value in this namespace.

    Any other submodule (``fewsam_jax.config``, ``fewsam_jax.cache``, ...) is imported on access too, as the
    eager imports of earlier versions made them reachable after a bare ``import fewsam_jax``."""
    module_name = _EXPORTS.get(name)
    if module_name is None:
        if name.startswith("_") or importlib.util.find_spec(f"{__name__}.{name}") is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        module_name = f"{__name__}.{name}"
    module = importlib.import_module(module_name)
    value = module if module_name == f"{__name__}.{name}" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
