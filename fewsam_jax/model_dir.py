"""Converted models on disk: Orbax checkpoints of ``nnx.state(model)`` plus the config and a report.

A model directory holds ``config.json`` (preset name + weights identity + the SHA-256 of every file
under ``state/``), ``report.json`` (what the converter loaded, the source file's SHA-256), ``state/``
(Orbax) and the library's marker. Directories are written under a temporary name and renamed into
place (:func:`fewsam_jax.outputs.write_dir`), so a killed conversion never leaves one that reads as
valid, and a folder the library did not write is never replaced.

This module sits below both :mod:`fewsam_jax.weights` (the cache of converted presets) and
:mod:`converters` (which writes these folders), so neither imports the other's internals.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import weakref
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from fewsam_jax.config import SamConfig, get_config
from fewsam_jax.modeling.sam import Sam
from fewsam_jax.outputs import ChecksumError, read_json_object, sha256_file, tree_checksums, verify_checksums, write_dir


def save_pytree(path: Path, tree: Any) -> None:
    """Write ``tree`` (arrays or ``nnx.State``) as an Orbax checkpoint at ``path`` (must not exist)."""
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path.absolute(), tree)


def restore_pytree(path: Path, abstract_tree: Any, what: str = "checkpoint",
                   error: type[Exception] = ChecksumError, hint: str = "") -> Any:
    """``abstract_tree``'s structure filled from the checkpoint at ``path``, on this process's default
    device whatever device it was saved from (a model converted on a CPU machine loads on a GPU one).

    A checkpoint that does not restore into that structure raises ``error`` naming ``path`` and ``what`` it
    should hold, with the first line of Orbax's message (which raises anything from ValueError to
    XlaRuntimeError, and dumps whole trees) and ``hint``. Failures of the machine rather than the folder (an
    OSError such as a permission error, running out of host or device memory) propagate as they are."""
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device), abstract_tree)
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            return checkpointer.restore(path.absolute(), target)
    except Exception as err:
        if isinstance(err, (OSError, MemoryError)) and not isinstance(err, FileNotFoundError) \
                or "RESOURCE_EXHAUSTED" in str(err):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise error(f"{path}: cannot restore the {what} ({first}){hint}") from None


def checkpoint_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a weights file; FileNotFoundError naming it when it is not a file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    return sha256_file(path)


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
    with write_dir(directory, "model", overwrite=overwrite) as staging:
        save_pytree(staging / "state", nnx.state(model))
        (staging / "config.json").write_text(json.dumps(
            {"model": model.config.name, "weights_id": model.weights_id, **ids,
             "checksums": tree_checksums(staging)}, indent=2))
        (staging / "report.json").write_text(json.dumps(report or {}, indent=2))
    return Path(directory)


def is_model_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` looks like a folder written by :func:`save_model` (config.json and state/)."""
    path = Path(path)
    return (path / "config.json").is_file() and (path / "state").is_dir()


class ShapeRngs:
    """Stands in for ``nnx.Rngs`` when a module is built only for its shapes (inside ``nnx.eval_shape``):
    ``params()`` always returns the same key. Shapes and dtypes do not depend on the key, and the values
    are replaced by restored ones; unlike ``nnx.Rngs`` it keeps no counter, whose traced updates make
    flax's abstract build quadratic in the number of parameters."""

    def params(self) -> jax.Array:
        return jax.random.key(0)


def abstract_model(config: SamConfig, weights_id: str = "random-init") -> Sam:
    """A shape-only ``Sam`` of ``config`` (every array a ``jax.ShapeDtypeStruct``), to restore weights into."""
    return nnx.eval_shape(lambda: Sam(config, rngs=ShapeRngs(), weights_id=weights_id))


def load_model_dir(directory: str | os.PathLike) -> Sam:
    """Restore a model saved by :func:`save_model` into an abstract (shape-only) model.

    Raises FileNotFoundError when ``directory`` is not a model folder, ChecksumError when its
    config.json is malformed, a state file differs from its recorded SHA-256 or the state is not the model
    config.json names.
    """
    directory = _check_model_dir(directory)
    meta = _read_model_config(directory)
    graphdef, abstract_state = nnx.split(abstract_model(get_config(meta["model"]), meta["weights_id"]))
    state = restore_pytree(directory / "state", abstract_state, f"{meta['model']} model",
                           hint="; does config.json match the state it was saved with? Convert the model again")
    return nnx.merge(graphdef, state)


def _check_model_dir(directory: str | os.PathLike) -> Path:
    directory = Path(directory)
    if not is_model_dir(directory):
        raise FileNotFoundError(
            f"{directory} is not a fewsam_jax model directory (expected config.json and state/ in it); "
            "create one with `fewsam convert`"
        )
    return directory


class LazyModel:
    """A converted model folder whose weights are read on first use of :meth:`load`.

    ``config`` (the preset's :class:`SamConfig`) and ``weights_id`` come from ``config.json`` alone, which is
    all a cache look-up needs (:func:`fewsam_jax.cache.embed_volume` builds the encoder only when a slice
    is missing). :meth:`load` is :func:`load_model_dir` (checksums verified then), once; ``loaded`` is
    the model once loaded, else None. Thread-safe.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = _check_model_dir(directory)
        meta = _read_model_config(self.directory, verify=False)
        self.config: SamConfig = get_config(meta["model"])
        self.weights_id: str = meta["weights_id"]
        self.loaded: Sam | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        state = "loaded" if self.loaded is not None else "not loaded"
        return f"LazyModel({str(self.directory)!r}, {self.config.name}, {state})"

    def load(self) -> Sam:
        """The model, read from the folder on the first call."""
        with self._lock:
            if self.loaded is None:
                self.loaded = load_model_dir(self.directory)
            return self.loaded


def _read_model_config(directory: Path, verify: bool = True) -> dict[str, Any]:
    """config.json, checked, with (``verify``) the state files verified against its checksums (when it has
    them: folders converted before checksums existed load unverified)."""
    path = directory / "config.json"
    meta = read_json_object(path, ChecksumError, "convert the model again")
    for key in ("model", "weights_id"):
        if not isinstance(meta.get(key), str):
            raise ChecksumError(f"{path}: key {key!r} missing or not a string; convert the model again")
    if verify and "checksums" in meta:
        verify_checksums(directory, meta["checksums"], "config.json")
    return meta
