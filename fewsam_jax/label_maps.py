"""Label maps as the library reads them: integer ids on a volume's canonical (X, Y, Z) grid.

One place for "is this on the same grid" (:func:`same_grid`), "a Volume or a path" (:func:`as_volume`)
and "read as int32 labels" (:func:`label_ids`, :func:`read_labels`, :func:`labels_on_grid`), so every reader
checks the same way: integer ids only (:func:`~fewsam_jax.metrics.integer_labels`), never a rounded intensity
or probability image.
"""

from __future__ import annotations

import os

import numpy as np

from fewsam_jax.io import Volume, load_volume
from fewsam_jax.metrics import integer_labels

AFFINE_ATOL = 1e-3  # mm: affines closer than this describe the same grid
_INT32 = np.iinfo(np.int32)


def same_grid(a: Volume, b: Volume) -> bool:
    """Whether ``a`` and ``b`` share shape and (within ``AFFINE_ATOL``) the canonical affine."""
    return a.shape == b.shape and bool(np.allclose(a.affine, b.affine, atol=AFFINE_ATOL))


def as_volume(value: Volume | str | os.PathLike, name: str = "volume") -> Volume:
    """``value`` if it is a Volume, else :func:`~fewsam_jax.io.load_volume` of the path; TypeError naming
    ``name`` otherwise."""
    if isinstance(value, Volume):
        return value
    if isinstance(value, (str, os.PathLike)):
        return load_volume(value)
    raise TypeError(f"{name}: expected a fewsam_jax.Volume or a path, got {type(value).__name__}")


def label_ids(array: np.ndarray, name: str = "labels") -> np.ndarray:
    """``array`` as int32 ids; ValueError naming ``name`` unless every value is an integer id (integer or bool
    arrays, or floats holding whole numbers, as label files often store them, rounded:
    :func:`~fewsam_jax.metrics.integer_labels`) that int32 holds (a wider id would wrap into another class)."""
    ids = integer_labels(array, name)
    if ids.size and not np.can_cast(ids.dtype, np.int32):
        low, high = int(ids.min()), int(ids.max())
        if low < _INT32.min or high > _INT32.max:
            raise ValueError(f"{name}: label ids must lie in {_INT32.min}..{_INT32.max}, but this map holds "
                             f"{low}..{high}")
    return ids.astype(np.int32)


def read_labels(source: Volume | str | os.PathLike) -> np.ndarray:
    """The label map at ``source`` (a Volume or a path) as (X, Y, Z) int32 ids (:func:`label_ids`)."""
    volume = as_volume(source, "labels")
    return label_ids(volume.array, volume._name())


def labels_on_grid(value, volume: Volume, name: str = "labels") -> np.ndarray:
    """A label map (array, Volume or path) as (X, Y, Z) int32 on ``volume``'s canonical grid (:func:`label_ids`);
    ValueError naming ``name`` when its shape (or, for a Volume or file, its grid) differs from ``volume``'s or
    its values are not integer ids."""
    if isinstance(value, (str, os.PathLike)):
        value = as_volume(value, name)
    if isinstance(value, Volume):
        if not same_grid(value, volume):
            raise ValueError(f"{name}: grid of {value.source or 'the label volume'} (shape {value.shape}) differs "
                             f"from the image's (shape {volume.shape})")
        name, value = f"{name} ({value._name()})", value.array
    array = np.asarray(value)
    if array.shape != volume.shape:
        raise ValueError(f"{name}: expected shape {volume.shape} (the volume's canonical grid), got {array.shape}")
    return label_ids(array, name)
