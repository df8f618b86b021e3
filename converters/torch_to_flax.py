"""Copy a PyTorch ``state_dict`` into a Flax NNX module whose attributes mirror its keys.

The rules are generic and chosen by the type of the NNX module a key lands in:

=================  ===========================  ======================================
target module      torch tensor                 NNX variable
=================  ===========================  ======================================
``nnx.Linear``     ``weight`` (out, in)         ``kernel`` (in, out)
``nnx.Conv``       ``weight`` (O, I, kh, kw)    ``kernel`` (kh, kw, I, O)
``nnx.ConvTranspose`` ``weight`` (I, O, kh, kw) ``kernel`` (kh, kw, I, O), spatially flipped
``nnx.LayerNorm``  ``weight``                   ``scale``
``nnx.BatchNorm``  ``weight`` / ``running_*``   ``scale`` / ``mean``, ``var``
``nnx.Embed``      ``weight``                   ``embedding``
anything else      ``name``                     ``name``, same shape
=================  ===========================  ======================================

``bias`` keeps its name everywhere; BatchNorm's ``num_batches_tracked`` counter is skipped.
Every missing or unexpected key and every shape mismatch is an error naming the key. No torch here:
tensors arrive as NumPy arrays.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

SKIPPED_SUFFIXES = ("num_batches_tracked",)


class ConversionError(ValueError):
    """A state_dict does not fit the target model."""


@dataclasses.dataclass
class LoadReport:
    """Which torch keys were loaded or skipped, and which model variables they filled."""

    loaded: list[str]
    skipped: list[str]
    missing: list[str]
    unexpected: list[str]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _kernel_linear(w: np.ndarray) -> np.ndarray:
    return w.T


def _kernel_conv(w: np.ndarray) -> np.ndarray:
    return w.transpose(2, 3, 1, 0)


def _kernel_conv_transpose(w: np.ndarray) -> np.ndarray:
    # torch computes the gradient of a convolution; lax.conv_transpose without transpose_kernel
    # correlates the dilated input, so the kernel is flipped in space.
    return w.transpose(2, 3, 0, 1)[::-1, ::-1]


_RULES: dict[type, dict[str, tuple[str, Any]]] = {
    nnx.Linear: {"weight": ("kernel", _kernel_linear)},
    nnx.Conv: {"weight": ("kernel", _kernel_conv)},
    nnx.ConvTranspose: {"weight": ("kernel", _kernel_conv_transpose)},
    nnx.LayerNorm: {"weight": ("scale", None)},
    nnx.BatchNorm: {"weight": ("scale", None), "running_mean": ("mean", None), "running_var": ("var", None)},
    nnx.Embed: {"weight": ("embedding", None)},
}


def _resolve(module: nnx.Module, key: str) -> tuple[tuple, np.ndarray | None, Any] | None:
    """The NNX path of torch ``key`` and its layout transform, or None when the key has no home."""
    *module_path, leaf = key.split(".")
    node: Any = module
    path: list[Any] = []
    for part in module_path:
        if part.isdigit() and isinstance(node, nnx.List):
            index = int(part)
            if index >= len(node):
                return None
            node, step = node[index], index
        else:
            node, step = getattr(node, part, None), part
        if node is None:
            return None
        path.append(step)
    rules = next((_RULES[t] for t in type(node).__mro__ if t in _RULES), {})
    name, transform = rules.get(leaf, (leaf, None))
    if not isinstance(getattr(node, name, None), nnx.Variable):
        return None
    return (*path, name), transform


def load_state_dict(module: nnx.Module, state_dict: Mapping[str, np.ndarray]) -> LoadReport:
    """Copy ``state_dict`` (torch key -> NumPy array) into ``module`` in place.

    Raises ConversionError on any missing variable, unexpected key or shape mismatch; nothing is
    written to the module unless every key fits.
    """
    variables = dict(nnx.to_flat_state(nnx.state(module)))
    updates: dict[tuple, np.ndarray] = {}
    loaded, skipped, unexpected = [], [], []
    for key, tensor in state_dict.items():
        if key.endswith(SKIPPED_SUFFIXES):
            skipped.append(key)
            continue
        resolved = _resolve(module, key)
        if resolved is None or resolved[0] not in variables:
            unexpected.append(key)
            continue
        path, transform = resolved
        array = np.asarray(tensor)
        array = transform(array) if transform else array
        expected = tuple(variables[path].shape)
        if array.shape != expected:
            raise ConversionError(
                f"shape mismatch for {key!r}: checkpoint has {tuple(np.shape(tensor))} "
                f"(-> {array.shape} in Flax layout), model expects {expected} at {_dotted(path)}"
            )
        updates[path] = array
        loaded.append(key)
    missing = [_dotted(p) for p in variables if p not in updates]
    if missing or unexpected:
        raise ConversionError(
            "checkpoint does not match the model: "
            + "; ".join(
                f"{label} ({len(keys)}): {', '.join(keys[:20])}{' ...' if len(keys) > 20 else ''}"
                for label, keys in (("missing", missing), ("unexpected", unexpected))
                if keys
            )
        )
    for path, array in updates.items():
        variable = variables[path]
        variable.set_value(jnp.asarray(array, dtype=variable.dtype))  # also fills abstract models
    return LoadReport(loaded=loaded, skipped=skipped, missing=missing, unexpected=unexpected)


def _dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path)
