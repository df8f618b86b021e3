"""A content-addressed, resumable on-disk cache of slice embeddings (zarr v3, local disk).

The image encoder is frozen, so every slice of a volume is embedded once and everything after
reads the cache.

Layout (root: ``$FEWSAM_HOME/embeddings`` by default)::

    root/<model>/<key>/            a zarr group, one entry per (volume, model, preprocessing)
        embeddings                 (N, E, E, C), one chunk per slice: float16, or uint8 codes (q8/q6/q5/q4;
                                   stored as planar-prediction residuals in entries whose meta.json says
                                   ``"coding": "planar"``)
        low, scale                 (N, C) float32, one chunk per slice: the codes' per-channel offsets and
                                   steps (quantized storages only)
        checksums                  (N,) uint32 CRC-32 of each slice's stored bytes (codes, low, scale)
        done                       (N,) bool, one chunk per slice, set AFTER the slice's chunk and checksum
        stage_inputs               optional: (N, E, E, D), one chunk per slice, a staged (TinyViT) encoder's
                                   last-stage inputs (:mod:`fewsam_jax.modeling.encoder_stage`), stored as
                                   meta.json's ``stage_storage`` says (float16 when it is absent)
        stage_low, stage_scale     (N, D) float32: their offsets and steps (a quantized ``stage_storage`` only)
        stage_checksums, stage_done  (N,) their CRC-32 and done flags, kept as for the embeddings
        meta.json                  storage, slice shape, axis, source, intensity, model, created (written last)
    root/<model>/<key>.lock        lock file (filelock) held while the entry is written
    root/.fewsam-cache             marks the folder as an embedding cache

``key`` is the SHA-256 of the canonical voxel data (bytes, shape, dtype), the model name and
weights identity, the encoder's compute dtype, the intensity mapping, the slicing axis and
:data:`FORMAT_VERSION`.

Guarantees:
  * Atomic: zarr writes each chunk to a temporary file and renames it into place, and a slice's
    ``done`` chunk is written only after its embedding chunk, so a writer killed at any point
    never leaves a slice that reads as valid; ``meta.json`` (tmp + ``os.replace``) marks an
    initialised entry. An entry is complete when every ``done`` flag is set.
  * Resumable: :func:`embed_volume` encodes only the slices whose flag is missing.
  * Verified: every slice read is checked against its checksum (entries written before checksums
    existed: finite and not all zero, i.e. not a missing chunk). :func:`embed_volume` re-encodes a
    corrupt, truncated or missing chunk with a :class:`CacheWarning` naming the entry and slice;
    :meth:`CachedEmbeddings.load` raises :class:`CacheCorruptionError` rather than return one.
  * Contained: ``clear`` and ``info`` only touch folders with an entry's name and layout (a
    64-hex-digit key holding only zarr's files), never other folders under the root; ``clear`` deletes
    nothing under a root without the ``.fewsam-cache`` marker.
  * Concurrency: writers of different volumes touch disjoint directories; two writers of the SAME
    entry serialise on its lock file (the second waits, then finds the slices done). Readers need
    no lock. The lock is a :mod:`filelock` lock (``flock`` on Unix, ``msvcrt.locking`` on Windows),
    reliable on a local disk; on a network filesystem
    shared by several hosts, give each host disjoint volumes (``cohort.select_part``).

Storage (``meta.json``'s ``storage``; entries without it are ``float16``), chosen when an entry is created
(``EmbeddingCache(storage=...)``, ``embed_volume(storage=...)``, ``$FEWSAM_CACHE_STORAGE``) and kept by every
later write to it; every storage reads back as float32:

* ``float16``: uncompressed, 2 bytes a value, within half a float16 ulp (bench/RESULTS.md, "Precision and
  prompt notes");
* ``q8`` / ``q6`` / ``q5`` / ``q4``: per slice and channel, the values are quantized to 2**bits - 1 equal
  steps between the channel's minimum and maximum over the slice (:func:`quantize`), one uint8 code per value,
  zstd-compressed; the error is at most half a step, ``scale / 2`` of that slice and channel. Entries created
  since ``q5`` store each code's difference from its planar prediction (:func:`planar_residuals`; meta.json's
  ``"coding": "planar"``; the codes come back exactly, the maps being smooth the residuals compress ~1.3x
  better), and store their stage inputs in the same storage (``stage_storage``); older quantized entries keep
  plain codes and float16 stage inputs. Size, speed and the masks they give: bench/RESULTS.md, "Compact
  embedding cache".

Which storage an entry has never changes its key: a volume cached in one storage is a cache hit for a
caller asking for another.

Stage inputs (``embed_volume(..., stage_inputs=True)``, for a few-shot decoder that adapts the encoder's last
stage) live in the same entry, with the same per-slice atomicity, resumption and verification as the
embeddings. An entry without them (any entry written before the option) gets the three arrays added, created
``stage_done`` last, and its missing stage inputs computed by the encoder's trunk alone; its embeddings are
neither recomputed nor rewritten. Their size per slice: README, "Stage inputs".
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import warnings
import weakref
import zlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import zarr
from filelock import FileLock, Timeout
from zarr.codecs import ZstdCodec

from fewsam_jax.encode import SliceEncoder, check_dtype, embedding_shape
from fewsam_jax.io import Volume, check_axis, from_array, get_slices, load_volume
from fewsam_jax.model_dir import LazyModel
from fewsam_jax.modeling.encoder_stage import check_staged, stage_input_shape
from fewsam_jax.modeling.sam import Sam
from fewsam_jax.outputs import FewSamError, OutputError, write_text
from fewsam_jax.preprocess import Intensity
from fewsam_jax.weights import fewsam_home

FORMAT_VERSION = 1  # part of every key: changing it orphans every existing entry
QUANTIZED = {"q8": 8, "q6": 6, "q5": 5, "q4": 4}  # storage -> bits per value
STORAGES = ("float16", *QUANTIZED)
DEFAULT_STORAGE = "float16"
STORAGE_ENV = "FEWSAM_CACHE_STORAGE"
CHECKSUMS_NOTE = "crc32 of each slice's stored bytes (array 'checksums')"  # meta.json's note (slice_checksum)
_ENCODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # Sam -> {(batch, dtype, output): SliceEncoder}
ROOT_MARKER = ".fewsam-cache"
_KEY = re.compile(r"^[0-9a-f]{64}$")
STAGE_ARRAYS = ("stage_inputs", "stage_checksums", "stage_done")  # created in this order: stage_done marks them
STAGE_OFFSETS = ("stage_low", "stage_scale")  # a quantized stage_storage's, created before stage_done
CODINGS = ("plain", "planar")  # how a quantized entry stores its codes (meta.json's "coding"; absent: plain)
_PLANAR_CRC = zlib.crc32(b"planar")  # where a planar slice's CRC starts (slice_checksum)
_ENTRY_FILES = {"zarr.json", "meta.json", "embeddings", "done", "checksums", "low", "scale", *STAGE_ARRAYS,
                *STAGE_OFFSETS}
_ENTRY_JSON = {"zarr.json", "meta.json"}  # the entry's files; the other names are its arrays' folders
_MISSING = (FileNotFoundError, IsADirectoryError, NotADirectoryError)  # an entry's file absent or misplaced
_PARTIAL = re.compile(r"^(zarr|\d+)\.[0-9a-f]{32}\.partial$")  # zarr's atomic-write temporary, left by a kill


class CacheCorruptionError(FewSamError, ValueError):
    """Stored embeddings do not read back as written (corrupt, truncated or missing chunks)."""


class CacheFormatError(FewSamError, ValueError):
    """An entry in a format this version does not know (a storage or coding of a newer fewsam): never rebuilt or
    written to, so the newer version's entry stays as it is."""


class CacheWarning(UserWarning):
    """A cache entry needed repair: corrupt slices are re-encoded."""


def _is_entry(path: Path, *, deep: bool = False) -> bool:
    """Whether ``path`` has a cache entry's name and layout, and nothing else: a key-named folder holding the
    zarr group's ``zarr.json``, ``meta.json`` (and its temporary) and arrays, each a folder of its ``zarr.json``
    and a ``c/`` tree of chunks, plus the temporaries of zarr writes that a kill interrupted. ``deep`` also
    checks every chunk's name (a walk over the entry: done before an entry is deleted or rebuilt). No symbolic
    links anywhere."""
    if not _KEY.match(path.name) or path.is_symlink() or not path.is_dir():
        return False
    try:
        names = os.listdir(path)
        if not all(name in _ENTRY_FILES or name.startswith(".meta.json.") or _PARTIAL.match(name) for name in names):
            return False
        arrays = [name for name in names if name in _ENTRY_FILES and name not in _ENTRY_JSON]
        return (all(_is_file(path / name) for name in names if name not in arrays)
                and all(_is_array(path / name, deep) for name in arrays))
    except OSError:
        return False


def _raise_if_io(err: Exception) -> None:
    """Re-raise ``err`` when it is an OSError other than a missing file (permissions, too many open files, a
    failing disk): the entry may be whole, so it is never rebuilt or re-encoded over such an error."""
    if isinstance(err, OSError) and not isinstance(err, _MISSING):
        raise err


def _is_file(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def _is_array(path: Path, deep: bool) -> bool:
    """A zarr array's folder as :func:`_create_entry` makes it: ``zarr.json`` and the ``c/`` tree of chunks."""
    if path.is_symlink() or not path.is_dir():
        return False
    names = os.listdir(path)
    if not all(name == "zarr.json" and _is_file(path / name) or name == "c" or _PARTIAL.match(name)
               for name in names):
        return False
    chunks = path / "c"
    if chunks.is_symlink() or chunks.exists() and not chunks.is_dir():
        return False
    for folder, dirs, files in os.walk(chunks) if deep else ():
        if not all(name.isdigit() and not os.path.islink(os.path.join(folder, name)) for name in dirs):
            return False
        if not all((name.isdigit() or _PARTIAL.match(name)) and not os.path.islink(os.path.join(folder, name))
                   for name in files):
            return False
    return True


def slice_checksum(values: np.ndarray, low: np.ndarray | None = None, scale: np.ndarray | None = None,
                   coding: str = "plain") -> int:
    """CRC-32 of one slice as stored: its float16 values (little-endian), or its uint8 codes followed by
    the float32 ``low`` and ``scale`` of a quantized storage. A ``planar`` entry's CRC starts from that of
    ``b"planar"``: a library version older than the coding, which would take the residuals for codes, finds such a
    slice corrupt (and re-encodes it) instead of reading wrong values."""
    if low is None:
        return zlib.crc32(np.ascontiguousarray(values, dtype="<f2"))
    crc = zlib.crc32(np.ascontiguousarray(values, dtype=np.uint8), _PLANAR_CRC if coding == "planar" else 0)
    crc = zlib.crc32(np.ascontiguousarray(low, dtype="<f4"), crc)
    return zlib.crc32(np.ascontiguousarray(scale, dtype="<f4"), crc)


def check_storage(storage: str) -> str:
    if storage not in STORAGES:
        raise ValueError(f"unknown cache storage {storage!r}; expected one of {', '.join(STORAGES)}")
    return storage


def quantize(values: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One slice's embeddings (E, E, C) -> (codes (E, E, C) uint8, low (C,) float32, scale (C,) float32).

    Per channel, ``2**bits - 1`` equal steps of ``scale`` from the channel's minimum ``low`` to its maximum
    over the slice; ``dequantize`` returns ``low + codes * scale``, within ``scale / 2`` of every value (a
    constant channel has scale 0 and comes back exactly). Raises ValueError on NaN or Inf.
    """
    values = np.asarray(values, np.float32)
    if not np.isfinite(values).all():
        raise ValueError("values hold NaN or Inf: nothing to quantize")
    low = values.min(axis=(0, 1))
    scale = (values.max(axis=(0, 1)) - low) / np.float32(2**bits - 1)
    steps = np.divide(values - low, scale, out=np.zeros_like(values), where=scale > 0)
    codes = np.clip(np.rint(steps), 0, 2**bits - 1).astype(np.uint8)
    return codes, low, scale.astype(np.float32)


def dequantize(codes: np.ndarray, low: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``low + codes * scale`` as float32, shape of ``codes`` (the inverse of :func:`quantize`)."""
    return low + codes.astype(np.float32) * scale


def planar_residuals(codes: np.ndarray, bits: int) -> np.ndarray:
    """One slice's codes (E, E, C) -> what a ``planar`` entry stores (E, E, C) uint8: each code minus its planar
    prediction (the code to its left plus the one above minus the one above-left, 0 outside the grid), modulo
    ``2**bits``. Neighbouring cells of an embedding map are close, so the residuals cluster near 0 and compress
    better than the codes (bench/RESULTS.md, "Compact embedding cache"); :func:`planar_codes` inverts it exactly."""
    x = np.asarray(codes).astype(np.int16)
    r = x.copy()
    r[1:] -= x[:-1]
    r[:, 1:] -= x[:, :-1]
    r[1:, 1:] += x[:-1, :-1]
    return (r % (1 << bits)).astype(np.uint8)


def planar_codes(residuals: np.ndarray, bits: int) -> np.ndarray:
    """The inverse of :func:`planar_residuals`: the codes (E, E, C) uint8 are the residuals' cumulative sums over
    both grid axes, modulo ``2**bits``."""
    total = np.cumsum(np.cumsum(residuals, axis=0, dtype=np.int32), axis=1)
    return (total % (1 << bits)).astype(np.uint8)


def encode_slice(values: np.ndarray, bits: int, coding: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One slice (E, E, C) -> what a quantized entry of ``coding`` stores: (codes or, ``planar``, their residuals
    (E, E, C) uint8, low (C,), scale (C,)); :func:`decode_slice` reads it back."""
    codes, low, scale = quantize(values, bits)
    return (planar_residuals(codes, bits) if coding == "planar" else codes), low, scale


def decode_slice(stored: np.ndarray, low: np.ndarray, scale: np.ndarray, bits: int, coding: str) -> np.ndarray:
    """The inverse of :func:`encode_slice`: float32 values (E, E, C), within half a step of those encoded."""
    return dequantize(planar_codes(stored, bits) if coding == "planar" else stored, low, scale)


def default_root() -> Path:
    return fewsam_home() / "embeddings"


def _check_name(model: str) -> str:
    if not model or model in (".", "..") or "/" in model or os.sep in model:
        raise ValueError(f"invalid model name {model!r}")
    return model


def entry_key(
    array: np.ndarray, model: str, weights_id: str, intensity: str, axis: int, compute_dtype: str = "float32"
) -> str:
    """Hex SHA-256 identifying the embeddings of ``array`` (canonical voxels) under these settings."""
    array = np.ascontiguousarray(array)
    header = {
        "format": FORMAT_VERSION,
        "model": model,
        "weights_id": weights_id,
        "compute_dtype": compute_dtype,
        "intensity": intensity,
        "axis": axis,
        "voxels": [array.dtype.str, list(array.shape)],
    }
    digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    digest.update(array.reshape(-1).view(np.uint8))
    return digest.hexdigest()


def _acquire(path: Path, blocking: bool = True) -> FileLock | None:
    """An exclusive lock on file ``path`` (created if absent, :mod:`filelock`: ``flock`` on Unix, ``msvcrt`` on
    Windows): the held lock (``.release()`` it), or None if busy and not ``blocking``.

    Retries when the file was deleted or replaced while waiting, so deleting a lock file while
    holding it (as :meth:`EmbeddingCache.clear` does) is safe.
    """
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        held: dict[str, int] = {}
        try:
            lock = FileLock(path, timeout=-1 if blocking else 0, on_acquired=lambda fd: held.update(fd=fd))
        except TypeError:  # filelock without on_acquired: no check that the file is still the one locked
            lock = FileLock(path, timeout=-1 if blocking else 0)
        try:
            lock.acquire()
        except Timeout:
            return None
        except FileNotFoundError:
            continue
        try:
            same = "fd" not in held or os.path.samestat(os.fstat(held["fd"]), os.stat(path))
        except OSError:
            same = False
        if same:
            return lock
        lock.release()


class CachedEmbeddings:
    """The cached embeddings of one volume's slices (a cache entry), read lazily from disk.

    Attributes:
      key: the entry's content key; ``path``: its directory; ``meta``: the contents of meta.json.
      storage: how the slices are stored (:data:`STORAGES`; ``float16`` for entries older than the option);
        ``stage_storage``: how their last-stage inputs are (float16 unless a quantized entry made since ``q5``);
        ``coding``: how a quantized storage lays out its codes (:data:`CODINGS`).
      num_slices: N; ``slice_shape``: (H, W) of the encoded slices; ``axis``: the slicing axis.
      computed: indices of the slices encoded by the :func:`embed_volume` call that returned it;
        ``stage_computed``: those whose last-stage inputs it stored.
    """

    def __init__(self, path: str | os.PathLike, *, _writable: bool = False):
        self.path = Path(path)
        meta_file = self.path / "meta.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"{self.path}: not an embedding cache entry (no meta.json)")
        try:
            self.meta = json.loads(meta_file.read_text())
            self.storage, self._new_stage_storage, self.coding = _entry_format(self.path, self.meta)  # before arrays
            group = zarr.open_group(self.path, mode="r+" if _writable else "r")
            self._embeddings, self._done = group["embeddings"], group["done"]
            self._checksums = group["checksums"] if "checksums" in group else None  # None: written before checksums
            self._low, self._scale = (group["low"], group["scale"]) if self.storage in QUANTIZED else (None, None)
            stage = [group[name] for name in STAGE_ARRAYS] if STAGE_ARRAYS[-1] in group else [None] * 3
            self._stage_low = self._stage_scale = None
            self.stage_storage = self._new_stage_storage  # the stored stage inputs' storage, read from their dtype:
            if stage[0] is not None and stage[0].dtype == np.float16:  # float16 also where an older fewsam added
                self.stage_storage = "float16"                         # them to a newer quantized entry
            elif stage[0] is not None:
                if self.stage_storage not in QUANTIZED or not all(name in group for name in STAGE_OFFSETS):
                    stage = [None] * 3  # codes without their offsets: unusable, made again when needed
                else:
                    self._stage_low, self._stage_scale = (group[name] for name in STAGE_OFFSETS)
            self._stage_inputs, self._stage_checksums, self._stage_done = stage
            self.key = self.meta["key"]
            self.num_slices = int(self.meta["num_slices"])
            self.slice_shape = tuple(self.meta["slice_shape"])
            self.axis = int(self.meta["axis"])
        except CacheFormatError:
            raise
        except Exception as err:  # json, zarr or a missing key: the entry's own files are damaged
            _raise_if_io(err)
            raise CacheCorruptionError(f"{self.path}: damaged cache entry ({type(err).__name__}: {err}); "
                                       "embed_volume (or `fewsam embed`) rebuilds it") from None
        arrays = [a for a in (self._embeddings, self._done, self._checksums, self._low, self._scale,
                              self._stage_inputs, self._stage_checksums, self._stage_done, self._stage_low,
                              self._stage_scale) if a is not None]
        if any(a.shape[0] != self.num_slices for a in arrays):
            raise CacheCorruptionError(f"{self.path}: arrays do not hold {self.num_slices} slices as meta.json says; "
                                       "embed_volume (or `fewsam embed`) rebuilds it")
        self.computed = np.zeros(0, np.int64)
        self.stage_computed = np.zeros(0, np.int64)
        self.repaired = np.zeros(0, np.int64)

    def __len__(self) -> int:
        return self.num_slices

    def __repr__(self) -> str:
        done = int(self.done().sum())
        return (f"CachedEmbeddings({self.meta['model']}, {done}/{self.num_slices} slices, {self.storage}, "
                f"key={self.key[:12]})")

    @property
    def embedding_shape(self) -> tuple[int, int, int]:
        """(E, E, C) of one slice."""
        return tuple(self._embeddings.shape[1:])

    @property
    def has_stage_inputs(self) -> bool:
        """Whether the entry has the arrays for last-stage inputs (:func:`embed_volume` ``stage_inputs=True``
        adds them); which slices hold them: :meth:`stage_done`."""
        return self._stage_done is not None

    @property
    def stage_input_shape(self) -> tuple[int, int, int] | None:
        """(E, E, D) of one slice's last-stage input, None without :attr:`has_stage_inputs`."""
        return tuple(self._stage_inputs.shape[1:]) if self._stage_inputs is not None else None

    def done(self) -> np.ndarray:
        """(N,) bool: which slices are stored (read from disk on each call; an unreadable flag is unset)."""
        return self._flags(self._done)

    def stage_done(self) -> np.ndarray:
        """(N,) bool: which slices' last-stage inputs are stored (none in an entry without them)."""
        return self._flags(self._stage_done) if self._stage_done is not None else np.zeros(self.num_slices, bool)

    def _flags(self, done) -> np.ndarray:
        try:
            return np.asarray(done[:], bool)
        except Exception as err:  # a damaged flag chunk: read one by one
            _raise_if_io(err)
            flags = np.zeros(self.num_slices, bool)
            for i in range(self.num_slices):
                try:
                    flags[i] = bool(done[i])
                except Exception as err:  # that slice is not done
                    _raise_if_io(err)
            return flags

    def _arrays(self, stage: bool) -> tuple:
        """(values, checksums, done, low, scale, bits) of the embeddings, or with ``stage`` of the stage inputs;
        low, scale and bits are None unless that array is quantized."""
        if stage:
            arrays = (self._stage_inputs, self._stage_checksums, self._stage_done, self._stage_low, self._stage_scale)
            return *arrays, QUANTIZED.get(self.stage_storage)
        return self._embeddings, self._checksums, self._done, self._low, self._scale, QUANTIZED.get(self.storage)

    def _read_slice(self, index: int, stage: bool = False) -> tuple[np.ndarray | None, str | None]:
        """One stored slice (E, E, C) (float16, or float32 from a quantized storage), or with ``stage`` its
        last-stage input (E, E, D) likewise, and None; or None and what is wrong with it."""
        stored, checksums, _, low, scale, bits = self._arrays(stage)
        try:
            values = np.asarray(stored[index])
            offsets = (np.asarray(low[index]), np.asarray(scale[index])) if low is not None else ()
        except Exception as err:  # a truncated chunk fails to decode
            _raise_if_io(err)
            return None, f"unreadable chunk ({type(err).__name__})"
        if checksums is not None:
            try:
                expected = int(checksums[index])
            except Exception as err:
                _raise_if_io(err)
                return None, f"unreadable checksum ({type(err).__name__})"
            if slice_checksum(values, *offsets, coding=self.coding) != expected:
                return None, "checksum mismatch (corrupt or missing chunk)"
        elif not np.isfinite(values).all():
            return None, "non-finite values"
        elif not values.any():
            return None, "all zeros (missing chunk)"
        return (decode_slice(values, *offsets, bits, self.coding) if offsets else values), None

    def verify(self, indices=None, stage: bool = False) -> dict[int, str]:
        """{slice: problem} for the stored slices among ``indices`` (default: all) that fail verification (with
        ``stage``: their stored last-stage inputs)."""
        idx = np.arange(self.num_slices) if indices is None else np.atleast_1d(np.arange(self.num_slices)[indices])
        idx = idx[(self.stage_done() if stage else self.done())[idx]]
        problems = {}
        for i in idx.tolist():
            problem = self._read_slice(i, stage)[1]
            if problem is not None:
                problems[i] = problem
        return problems

    @property
    def complete(self) -> bool:
        return bool(self.done().all())

    def load(self, indices=None) -> np.ndarray:
        """Embeddings of ``indices`` (default: all slices) -> (n, E, E, C) float32."""
        return self._load(indices, stage=False)

    def load_stage_inputs(self, indices=None) -> np.ndarray:
        """Last-stage inputs of ``indices`` (default: all slices) -> (n, E, E, D) float32, verified as
        :meth:`load` verifies embeddings; a ValueError names the slices not stored yet."""
        return self._load(indices, stage=True)

    def _load(self, indices, stage: bool) -> np.ndarray:
        idx = np.arange(self.num_slices) if indices is None else np.atleast_1d(np.arange(self.num_slices)[indices])
        missing = idx[~(self.stage_done() if stage else self.done())[idx]]
        if missing.size:
            what, run = ("stage inputs of ", "embed_volume(..., stage_inputs=True)") if stage else ("", "embed_volume")
            raise ValueError(
                f"{self.path}: {what}slices {missing.tolist()[:10]} are not in the cache yet; "
                f"run {run} (or `fewsam embed`) to compute them"
            )
        out = np.empty((idx.size, *(self.stage_input_shape if stage else self.embedding_shape)), np.float32)
        problems = {}
        for row, i in enumerate(idx.tolist()):
            values, problem = self._read_slice(i, stage)
            if problem is not None:
                problems[i] = problem
            else:
                out[row] = values
        if problems:
            shown = "; ".join(f"slice {i}: {p}" for i, p in list(problems.items())[:5])
            raise CacheCorruptionError(
                f"{self.path}: {len(problems)} stored slice(s) fail verification ({shown}); "
                "run embed_volume (or `fewsam embed`) on the volume to re-encode them"
            )
        return out

    def __getitem__(self, index) -> np.ndarray:
        """``entry[i]`` -> (E, E, C); ``entry[a:b]`` or an index array -> (n, E, E, C). float32."""
        if isinstance(index, (int, np.integer)):
            return self.load([index])[0]
        return self.load(index)

    def _write(self, indices: np.ndarray, embeddings: np.ndarray, stage: bool = False) -> None:
        """Store ``embeddings`` (n, E, E, C) as slices ``indices`` in this entry's storage (with ``stage``:
        last-stage inputs (n, E, E, D), in its ``stage_storage``)."""
        indices = [int(i) for i in np.atleast_1d(indices)]
        target, checksums, done, low, scale, bits = self._arrays(stage)
        if bits is not None:
            stored = [encode_slice(v, bits, self.coding) for v in np.asarray(embeddings)]
        else:
            values = np.asarray(embeddings).astype(np.float16)
            if not np.isfinite(values).all():
                raise ValueError(f"{self.path}: {'stage inputs' if stage else 'embeddings'} overflow float16 "
                                 "(|value| > 65504)")
            stored = [(v,) for v in values]
        # one whole chunk per assignment: zarr then never reads the old chunk, which may be damaged
        for i, arrays in zip(indices, stored):
            target[i] = arrays[0]
            if low is not None:
                low[i], scale[i] = arrays[1], arrays[2]
        if checksums is not None:
            for i, arrays in zip(indices, stored):
                checksums[i] = np.uint32(slice_checksum(*arrays, coding=self.coding))
        for i in indices:
            done[i] = True  # only after the data (and checksum) chunks are in place

    def _add_stage_arrays(self, shape: tuple[int, int, int]) -> None:
        """Create (or, left half-made or of another shape, create again) the arrays of last-stage inputs of
        ``shape`` (E, E, D) per slice, ``stage_done`` last; the embeddings' arrays are not touched. Only under
        the entry's lock, on an entry opened writable."""
        group = zarr.open_group(self.path, mode="r+")
        self.stage_storage = self._new_stage_storage
        _value_arrays(group, (self.num_slices, *shape), self.stage_storage, "stage_", overwrite=True)
        _flag_arrays(group, self.num_slices, "stage_", overwrite=True)
        self._stage_inputs, self._stage_checksums, self._stage_done = (group[name] for name in STAGE_ARRAYS)
        quantized = self.stage_storage in QUANTIZED
        self._stage_low, self._stage_scale = (group[name] for name in STAGE_OFFSETS) if quantized else (None, None)


class EmbeddingCache:
    """The cache directory ``root`` (default ``$FEWSAM_HOME/embeddings``); ``storage`` (default
    ``$FEWSAM_CACHE_STORAGE``, else :data:`DEFAULT_STORAGE`) is how the entries it creates store slices."""

    def __init__(self, root: str | os.PathLike | None = None, storage: str | None = None):
        self.root = Path(root).expanduser() if root is not None else default_root()
        self.storage = check_storage(storage or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE)

    def __repr__(self) -> str:
        return f"EmbeddingCache({str(self.root)!r}, storage={self.storage!r})"

    def entry_path(self, model: str, key: str) -> Path:
        return self.root / _check_name(model) / key

    def open(self, model: str, key: str) -> CachedEmbeddings:
        """The entry of ``model`` with ``key`` (FileNotFoundError if absent)."""
        return CachedEmbeddings(self.entry_path(model, key))

    def check_writable(self, model: str | None = None) -> None:
        """Raise OutputError if entries cannot be written under the root (checked before any encoding)."""
        root = self.root
        existing = root
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            raise OutputError(f"embedding cache {root}: {existing} is a file, not a folder; choose another --cache")
        if model is not None:
            folder = self.root / _check_name(model)
            if folder.exists() and (not folder.is_dir() or folder.is_symlink()):
                raise OutputError(f"embedding cache {root}: {folder} exists and is not a folder; choose another --cache")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise OutputError(f"embedding cache {root}: {existing} is not writable; choose another --cache")

    def _mark(self) -> None:
        marker = self.root / ROOT_MARKER
        if not marker.is_file():
            self.root.mkdir(parents=True, exist_ok=True)
            write_text(marker, json.dumps({"library": "fewsam_jax", "kind": "embedding-cache",
                                           "format": FORMAT_VERSION}, indent=2) + "\n")

    def models(self) -> list[str]:
        """Models with entries (folders under the root holding at least one entry or entry lock)."""
        if not self.root.is_dir():
            return []
        names = []
        for folder in sorted(self.root.iterdir()):
            if folder.name.startswith(".") or folder.is_symlink() or not folder.is_dir():
                continue
            with contextlib.suppress(OSError):
                if any(_is_entry(p) or (p.suffix == ".lock" and _KEY.match(p.stem) and p.is_file())
                       for p in folder.iterdir()):
                    names.append(folder.name)
        return names

    def entries(self, model: str | None = None) -> Iterator[Path]:
        """Entry directories (initialised or not) of ``model`` (default: every model). Only folders with an
        entry's name and layout count: nothing else under the root is ever listed or deleted."""
        for name in [_check_name(model)] if model else self.models():
            folder = self.root / name
            if folder.is_dir() and not folder.is_symlink():
                yield from sorted(p for p in folder.iterdir() if _is_entry(p))

    def _locks(self, model: str) -> list[Path]:
        folder = self.root / model
        if not folder.is_dir() or folder.is_symlink():
            return []
        return sorted(p for p in folder.glob("*.lock") if _KEY.match(p.stem) and p.is_file() and not p.is_symlink())

    def info(self) -> dict[str, dict[str, int]]:
        """Per model: ``entries``, ``complete`` (entries with every slice stored), ``slices``, ``bytes`` on disk."""
        report = {}
        for model in self.models():
            stats = {"entries": 0, "complete": 0, "slices": 0, "bytes": 0}
            for path in self.entries(model):
                stats["entries"] += 1
                stats["bytes"] += _size(path)
                with contextlib.suppress(OSError, KeyError, ValueError):  # unreadable: counted, its slices not
                    done = CachedEmbeddings(path).done()
                    stats["slices"] += int(done.sum())
                    stats["complete"] += bool(done.all())
            report[model] = stats
        return report

    def clear(self, model: str | None = None) -> dict:
        """Deletes the entries of ``model`` (default: all). Entries being written are skipped; folders and
        files under the root that are not entries (or entry locks) are left alone.

        Returns ``removed`` (entries), ``bytes`` freed and ``in_use`` (paths skipped). OutputError when the root
        is not marked as a cache (no ``.fewsam-cache`` file, which every write puts there): nothing is deleted
        in a folder the library never wrote embeddings into, whatever its folders look like.
        """
        if self.root.is_dir() and any(self.root.iterdir()) and not _is_file(self.root / ROOT_MARKER):
            raise OutputError(f"{self.root} is not an embedding cache of fewsam_jax (it has no {ROOT_MARKER} file); "
                              "nothing was deleted. Check --cache; a cache written before the marker existed "
                              "is marked again by the next `fewsam embed` into it")
        removed, freed, in_use = 0, 0, []
        models = [_check_name(model)] if model else self.models()
        for path in [p for name in models for p in self.entries(name)]:
            lock = path.with_name(path.name + ".lock")
            held = _acquire(lock, blocking=False)
            if held is None:
                in_use.append(str(path))
                continue
            try:
                if _is_entry(path, deep=True):  # still an entry once locked
                    freed += _size(path)
                    shutil.rmtree(path, ignore_errors=True)
                    removed += 1
                lock.unlink(missing_ok=True)
            finally:
                held.release()
        for name in models:
            for stale in self._locks(name):
                if not stale.with_suffix("").exists():
                    held = _acquire(stale, blocking=False)
                    if held is not None:
                        stale.unlink(missing_ok=True)
                        held.release()
            with contextlib.suppress(OSError):
                (self.root / name).rmdir()  # only if empty
        return {"removed": removed, "bytes": freed, "in_use": in_use}


def _size(path: Path) -> int:
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(folder, name)).st_size
    return total


def encoder_for(model: Sam, batch_size: int, dtype: str, output: str = "embeddings") -> SliceEncoder:
    """One SliceEncoder per (model, batch size, dtype, output), so repeated calls reuse its compilation."""
    encoders = _ENCODERS.setdefault(model, {})
    if (batch_size, dtype, output) not in encoders:
        encoders[(batch_size, dtype, output)] = SliceEncoder(model, batch_size=batch_size, dtype=dtype, output=output)
    return encoders[(batch_size, dtype, output)]


def _create_entry(path: Path, shape: tuple[int, ...], meta: dict) -> None:
    """(Re)initialises the zarr group at ``path`` for embeddings of ``shape`` (N, E, E, C) in
    ``meta["storage"]``; meta.json, written last, marks it usable."""
    group = zarr.open_group(path, mode="w")
    _value_arrays(group, shape, meta["storage"], "")
    _flag_arrays(group, shape[0], "")
    write_text(path / "meta.json", json.dumps(meta, indent=2))


def _entry_format(path: Path, meta: dict) -> tuple[str, str, str]:
    """(storage, stage_storage, coding) of an entry's meta.json (absent: float16, float16, plain); a
    CacheFormatError when one of them is unknown to this version (an entry of a newer fewsam, left as it is)."""
    storage, stage_storage = meta.get("storage", "float16"), meta.get("stage_storage", "float16")
    coding = meta.get("coding", "plain")
    if storage not in STORAGES or stage_storage not in STORAGES or coding not in CODINGS:
        raise CacheFormatError(
            f"{path}: cache entry in a format this fewsam version does not know (storage {storage!r}, stage storage "
            f"{stage_storage!r}, coding {coding!r}), written by a newer version: it is left as it is; use that "
            "version, or another cache (--cache)")
    return storage, stage_storage, coding


def _storage_meta(storage: str) -> dict:
    """meta.json's fields for a new entry in ``storage``: a quantized one codes planar residuals and stores its
    stage inputs quantized alike."""
    if storage not in QUANTIZED:
        return {"storage": storage}
    return {"storage": storage, "stage_storage": storage, "coding": "planar"}


def _value_arrays(group, shape: tuple[int, ...], storage: str, prefix: str, overwrite: bool = False) -> None:
    """The value arrays of slices of ``shape`` (N, E, E, C) in ``storage``: ``embeddings`` (``prefix`` "") or
    ``stage_inputs`` ("stage_"), float16, or uint8 codes (zstd) with their ``low`` and ``scale`` (N, C)."""
    name = "embeddings" if not prefix else prefix + "inputs"
    if storage in QUANTIZED:
        group.create_array(name, shape=shape, chunks=(1, *shape[1:]), dtype="uint8", fill_value=0,
                           compressors=ZstdCodec(level=3), overwrite=overwrite)
        for offsets in ("low", "scale"):
            group.create_array(prefix + offsets, shape=(shape[0], shape[-1]), chunks=(1, shape[-1]), dtype="float32",
                               fill_value=0.0, compressors=None, overwrite=overwrite)
    else:
        group.create_array(name, shape=shape, chunks=(1, *shape[1:]), dtype="float16", fill_value=0.0,
                           compressors=None, overwrite=overwrite)


def _flag_arrays(group, num_slices: int, prefix: str, overwrite: bool = False) -> None:
    """The per-slice ``{prefix}checksums`` (uint32) and then ``{prefix}done`` (bool) arrays of a zarr group."""
    for name, dtype, fill in (("checksums", "uint32", 0), ("done", "bool", False)):
        group.create_array(prefix + name, shape=(num_slices,), chunks=(1,), dtype=dtype, fill_value=fill,
                           compressors=None, overwrite=overwrite)


def _as_volume(volume: Volume | np.ndarray | str | os.PathLike) -> Volume:
    if isinstance(volume, Volume):
        return volume
    if isinstance(volume, np.ndarray):
        return from_array(volume)
    return load_volume(volume)


def _model_identity(model: Sam | SliceEncoder | LazyModel, batch_size: int,
                    dtype: str) -> tuple[str, str, str, tuple[int, int, int]]:
    """(model name, weights id, compute dtype, embedding shape) that an entry of ``model`` is keyed and shaped by,
    without building an encoder (a SliceEncoder's own dtype wins over ``dtype``)."""
    if isinstance(model, SliceEncoder):
        return model.model_name, model.weights_id, model.dtype, tuple(model.embedding_shape)
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return model.config.name, model.weights_id, check_dtype(dtype), embedding_shape(model.config)


@dataclasses.dataclass(frozen=True)
class PreparedVolume:
    """A volume read, normalised and keyed for one model by :func:`prepare_volume`: the host-side work of
    :func:`embed_volume`, which takes it in place of the volume (so a reader thread can prepare the next
    volume while the encoder runs).

    ``slices``: (N, H, W) float32 in [0, 1], the volume's slices along ``settings``' axis after its intensity
    mapping; ``key``: the cache entry's key; ``settings``: (model name, weights id, compute dtype, intensity
    key, axis) it was prepared for, checked by :func:`embed_volume`."""

    volume: Volume
    slices: np.ndarray
    key: str
    settings: tuple[str, str, str, str, int]


def prepare_volume(volume: Volume | np.ndarray | str | os.PathLike, model: Sam | SliceEncoder | LazyModel, *,
                   axis: int = 2, intensity: Intensity | str = "percentile", dtype: str = "float32") -> PreparedVolume:
    """Read ``volume`` (as :func:`embed_volume` does), apply ``intensity``, slice it along ``axis`` and compute
    its cache key for ``model`` (never loads a LazyModel's weights); arguments as :func:`embed_volume`'s."""
    vol = _as_volume(volume)
    intensity = Intensity.coerce(intensity)
    axis = check_axis(axis)
    model_name, weights_id, dtype, _ = _model_identity(model, 1, dtype)
    key = entry_key(vol.array, model_name, weights_id, intensity.key(), axis, dtype)
    return PreparedVolume(vol, get_slices(intensity.apply(vol.array), axis), key,
                          (model_name, weights_id, dtype, intensity.key(), axis))


def embed_volume(
    volume: Volume | np.ndarray | str | os.PathLike | PreparedVolume,
    model: Sam | SliceEncoder | LazyModel,
    *,
    axis: int = 2,
    intensity: Intensity | str = "percentile",
    cache: EmbeddingCache | str | os.PathLike | None = None,
    slices: Sequence[int] | None = None,
    batch_size: int = 4,
    dtype: str = "float32",
    storage: str | None = None,
    stage_inputs: bool = False,
    progress: bool = True,
) -> CachedEmbeddings:
    """Embeds the slices of ``volume`` along ``axis`` into the cache; only missing slices are computed.

    Args:
      volume: a Volume, an (X, Y, Z) array (see ``io.from_array``), a path for ``io.load_volume``, or a
        :class:`PreparedVolume` (already read and normalised; prepared with this call's model, dtype,
        intensity and axis, else ValueError).
      model: a ``Sam`` (its encoder is compiled once per model, batch size and dtype), a SliceEncoder
        (then ``batch_size`` and ``dtype`` are the encoder's) or a :class:`~fewsam_jax.model_dir.LazyModel`,
        loaded only when a slice has to be encoded (a cache hit never reads its weights). With a ``Sam``
        or LazyModel the encoder is built only when a slice is missing.
      axis: 0 sagittal, 1 coronal, 2 axial; slices as ``io.get_slices``.
      intensity: an Intensity or a spec for ``Intensity.parse`` ("soft_tissue", "window:40,400",
        "percentile", "minmax"), applied to the whole volume.
      cache: an EmbeddingCache or its root directory (default ``$FEWSAM_HOME/embeddings``).
      slices: indices of the slices to embed (default: all); the entry still describes the whole
        volume, and later calls add the other slices to it.
      storage: how a new entry stores slices (:data:`STORAGES`; default the cache's ``storage``). An
        existing entry keeps its own: its missing slices are added in it, and a complete one is a hit.
      stage_inputs: also store the requested slices' last-stage inputs (a ``Sam`` or LazyModel with a staged,
        TinyViT encoder; ValueError otherwise), in the same entry (in its ``stage_storage``: the storage of a
        quantized entry made since ``q5``, else float16): slices missing both get both from
        one encoder pass, slices whose embedding is stored get the stage input from the encoder's trunk
        alone (their embedding stays as stored).
      progress: tqdm progress bar with ETA.
    Returns:
      the entry, with at least the requested slices stored: ``entry.load(indices)`` -> (n, E, E, C)
      float32 (and ``entry.load_stage_inputs(indices)`` -> (n, E, E, D)); ``entry.computed`` lists the
      slices this call encoded (empty on a cache hit), ``entry.stage_computed`` those whose stage inputs it stored.

    >>> entry = embed_volume("ct.nii.gz", load_model("litemedsam"), intensity="soft_tissue")
    >>> entry[40].shape                                  # axial slice 40
    (64, 64, 256)
    """
    prepared = volume if isinstance(volume, PreparedVolume) else None
    vol = prepared.volume if prepared is not None else _as_volume(volume)
    intensity = Intensity.coerce(intensity)
    axis = check_axis(axis)
    num_slices = vol.shape[axis]
    wanted = np.arange(num_slices)
    if slices is not None:
        try:
            wanted = np.unique(wanted[np.asarray(slices, dtype=np.int64).reshape(-1)])
        except IndexError:
            raise ValueError(f"slices {list(slices)} out of range for {num_slices} slices along axis {axis}") from None
    model_name, weights_id, dtype, shape = _model_identity(model, batch_size, dtype)
    stage_shape = check_stage_model(model) if stage_inputs else None
    cache = cache if isinstance(cache, EmbeddingCache) else EmbeddingCache(cache)
    storage = check_storage(storage or cache.storage)
    cache.check_writable(model_name)
    if prepared is not None:
        asked = (model_name, weights_id, dtype, intensity.key(), axis)
        if prepared.settings != asked:
            raise ValueError(f"volume: prepared for (model, weights, dtype, intensity, axis) {prepared.settings}, "
                             f"but this call asks for {asked}; prepare it with the same settings")
        key = prepared.key
    else:
        key = entry_key(vol.array, model_name, weights_id, intensity.key(), axis, dtype)
    path = cache.entry_path(model_name, key)
    cache._mark()  # on a hit too: a cache written before the marker existed gets it (and `cache clear` works)
    with contextlib.suppress(FileNotFoundError, CacheCorruptionError):  # damage is repaired below, under the lock
        entry = CachedEmbeddings(path)
        if entry.done()[wanted].all() and not entry.verify(wanted) and (
                stage_shape is None or entry.stage_input_shape == stage_shape and entry.stage_done()[wanted].all()
                and not entry.verify(wanted, stage=True)):
            return entry
    held = _acquire(path.with_name(key + ".lock"))
    try:
        images = prepared.slices if prepared is not None else get_slices(intensity.apply(vol.array), axis)
        if path.exists() and not _is_entry(path, deep=True):
            raise OutputError(f"{path} holds files that are not a cache entry's; it is left alone. Move it away "
                              "or use another --cache")
        entry = None
        if (path / "meta.json").is_file():
            try:
                entry = CachedEmbeddings(path, _writable=True)
                if entry.num_slices != num_slices or entry.embedding_shape != shape:
                    raise CacheCorruptionError(f"{path}: meta.json describes {entry.num_slices} slices of "
                                               f"{entry.embedding_shape}, not this volume's")
            except CacheCorruptionError as err:
                warnings.warn(f"{err}; rebuilding the entry", CacheWarning, stacklevel=2)
                entry = None
                shutil.rmtree(path, ignore_errors=True)  # a damaged entry's own folder (key-named, in the cache)
        if entry is None:
            meta = {
                "format": FORMAT_VERSION,
                **_storage_meta(storage),
                "key": key,
                "model": model_name,
                "weights_id": weights_id,
                "compute_dtype": dtype,
                "intensity": intensity.key(),
                "axis": axis,
                "num_slices": num_slices,
                "slice_shape": list(images.shape[1:]),
                "volume_shape": list(vol.shape),
                "spacing": list(vol.spacing),
                "source": vol.source,
                "checksums": CHECKSUMS_NOTE,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            _create_entry(path, (num_slices, *shape), meta)
            entry = CachedEmbeddings(path, _writable=True)
        if stage_shape is not None and entry.stage_input_shape != stage_shape:
            entry._add_stage_arrays(stage_shape)
        entry.repaired = _unset_failing(entry, wanted, stage=False)
        missing = wanted[~entry.done()[wanted]]
        missing_stage = np.zeros(0, np.int64)
        if stage_shape is not None:
            entry.repaired = np.union1d(entry.repaired, _unset_failing(entry, wanted, stage=True))
            missing_stage = wanted[~entry.stage_done()[wanted]]
        name = Path(vol.source).name if vol.source else "array"
        if missing.size:
            output = "embeddings" if stage_shape is None else "both"
            encoder = model if isinstance(model, SliceEncoder) else encoder_for(
                model.load() if isinstance(model, LazyModel) else model, batch_size, dtype, output)
            for start, outputs in encoder.iter_batches(images[missing], progress, desc=f"embed {name}"):
                embeddings, stage = outputs if stage_shape is not None else (outputs, None)
                rows = missing[start : start + len(embeddings)]
                entry._write(rows, embeddings)
                if stage is not None:  # a stage input already stored stays as it is
                    keep = np.isin(rows, missing_stage)
                    entry._write(rows[keep], stage[keep], stage=True)
        trunk_only = np.setdiff1d(missing_stage, missing)
        if trunk_only.size:
            encoder = encoder_for(model.load() if isinstance(model, LazyModel) else model, batch_size, dtype,
                                   "stage_inputs")
            for start, stage in encoder.iter_batches(images[trunk_only], progress, desc=f"stage inputs {name}"):
                entry._write(trunk_only[start : start + len(stage)], stage, stage=True)
        entry.computed, entry.stage_computed = missing, missing_stage
    finally:
        held.release()
    return entry


def check_stage_model(model: Sam | SliceEncoder | LazyModel, option: str = "stage_inputs=True") -> tuple[int, int, int]:
    """(E, E, D) of the stage inputs ``embed_volume(stage_inputs=True)`` stores for ``model``; a TypeError
    for a SliceEncoder (it computes one output), a ValueError for a model without a staged encoder (both
    name ``option``, what the caller asked for)."""
    if isinstance(model, SliceEncoder):
        raise TypeError(f"{option}: needs a Sam or a LazyModel as the model, not a SliceEncoder")
    check_staged(model.config, option)
    return stage_input_shape(model.config)


def _unset_failing(entry: CachedEmbeddings, wanted: np.ndarray, stage: bool) -> np.ndarray:
    """The stored slices among ``wanted`` whose embedding (or, with ``stage``, stage input) fails verification,
    their done flags unset (so they are computed again), with a CacheWarning naming them."""
    problems = entry.verify(wanted, stage=stage)
    if problems:
        shown = "; ".join(f"slice {i}: {p}" for i, p in list(problems.items())[:5])
        what = "stage input(s)" if stage else "slice(s)"
        warnings.warn(f"embedding cache entry {entry.path}: {len(problems)} stored {what} failed verification "
                      f"({shown}); re-encoding them", CacheWarning, stacklevel=3)
        for i in problems:
            (entry._stage_done if stage else entry._done)[i] = False  # recomputed below like any missing slice
    return np.array(sorted(problems), np.int64)


def copy_entry(entry: CachedEmbeddings, cache: EmbeddingCache | str | os.PathLike,
               storage: str | None = None) -> CachedEmbeddings:
    """Store the slices of ``entry`` again in ``cache`` (another root), same key and metadata, in ``storage``
    (default the cache's), e.g. to turn a float16 cache into a compact one. Resumable: an entry already at the
    destination keeps its storage and gets only its missing slices; ``entry``'s slices are verified as read
    (CacheCorruptionError). Returns the destination entry, with ``computed`` = the slices copied. Stored stage inputs
    are copied too (``stage_computed``), into the destination's ``stage_storage``; those failing verification are
    left out with a CacheWarning (``embed_volume(..., stage_inputs=True)`` adds missing ones when needed).
    """
    cache = cache if isinstance(cache, EmbeddingCache) else EmbeddingCache(cache)
    storage = check_storage(storage or cache.storage)
    stored = np.flatnonzero(entry.done())
    path = cache.entry_path(entry.meta["model"], entry.key)
    if path.resolve() == entry.path.resolve():
        raise ValueError(f"{entry.path}: copy_entry needs another cache root than the entry's own")
    cache.check_writable(entry.meta["model"])
    cache._mark()
    held = _acquire(path.with_name(entry.key + ".lock"))
    try:
        if path.exists() and not _is_entry(path, deep=True):
            raise OutputError(f"{path} holds files that are not a cache entry's; it is left alone")
        if not (path / "meta.json").is_file():
            kept = {k: v for k, v in entry.meta.items() if k not in ("storage", "stage_storage", "coding")}
            meta = {**kept, **_storage_meta(storage), "checksums": CHECKSUMS_NOTE,
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            _create_entry(path, (entry.num_slices, *entry.embedding_shape), meta)
        copy = CachedEmbeddings(path, _writable=True)
        missing = stored[~copy.done()[stored]]
        for start in range(0, missing.size, 8):
            batch = missing[start : start + 8]
            copy._write(batch, entry.load(batch))
        copy.computed = missing
        staged = np.flatnonzero(entry.stage_done())
        if staged.size:
            if copy.stage_input_shape != entry.stage_input_shape:
                copy._add_stage_arrays(entry.stage_input_shape)
            staged = staged[~copy.stage_done()[staged]]
            problems = entry.verify(staged, stage=True)
            if problems:  # left for embed_volume to compute at the destination
                warnings.warn(f"embedding cache entry {entry.path}: stage inputs of slices {sorted(problems)[:10]} "
                              "fail verification and are not copied", CacheWarning, stacklevel=2)
                staged = np.setdiff1d(staged, list(problems))
            for start in range(0, staged.size, 8):
                batch = staged[start : start + 8]
                copy._write(batch, entry.load_stage_inputs(batch), stage=True)
        copy.stage_computed = staged
    finally:
        held.release()
    return copy
