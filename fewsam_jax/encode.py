"""Batched, jit-compiled, data-parallel slice encoding with a frozen SAM image encoder.

One compiled function per (encoder, slice size): it prepares a fixed-size batch of slices for the
model (``transforms.prepare_images``: resize, normalise, pad) and runs the image encoder. The batch
is sharded over a 1D device mesh ``("data",)`` and the parameters are replicated, so all local
devices work on one batch; the last batch of a volume is zero-padded to the fixed size, so encoding
many batches or volumes with the same slice size never recompiles.

Several processes or hosts (for datasets that outgrow one machine) split the *volumes*, not the
batches: each takes its part of the sorted case list (``cohort.select_part``; ``fewsam embed
--num-parts N --part-id I``, e.g. ``I = jax.process_index()`` under ``jax.distributed``) and writes
into one shared embedding cache (``fewsam_jax.cache``), whose entries are disjoint per volume. Each
process encodes on its own local devices; no collective communication is needed.

Precision: ``dtype="bfloat16"`` is for accelerators' throughput and costs accuracy, far more than
the cache's float16 storage does (measured on LiteMedSAM: bench/RESULTS.md, "Precision and prompt notes").
"""

from __future__ import annotations

from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from fewsam_jax.logs import tqdm

from fewsam_jax.modeling.encoder_stage import check_staged, last_stage, stage_input_shape, trunk
from fewsam_jax.modeling.sam import Sam
from fewsam_jax.transforms import prepare_images

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# what a SliceEncoder returns per slice: the embedding, the last-stage input of a staged encoder
# (:mod:`fewsam_jax.modeling.encoder_stage`), or both from one pass
OUTPUTS = ("embeddings", "stage_inputs", "both")


def _cast_floats(tree, dtype):
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def check_slices(slices: np.ndarray) -> np.ndarray:
    """Validates encoder input: (N, H, W) or (N, H, W, 1|3), uint8 (0-255) or float in [0, 1].

    Returns it as an array, unchanged (same convention as ``predictor.as_rgb_255``, batched).
    """
    slices = np.asarray(slices)
    if slices.ndim not in (3, 4) or (slices.ndim == 4 and slices.shape[-1] not in (1, 3)):
        raise ValueError(f"slices: expected (N, H, W) or (N, H, W, 3), got shape {slices.shape}")
    if min(slices.shape[1:3]) == 0:
        raise ValueError(f"slices: empty slices of shape {slices.shape[1:3]}")
    if slices.dtype != np.uint8:
        if not np.issubdtype(slices.dtype, np.floating):
            raise ValueError(f"slices: expected uint8 or float in [0, 1], got dtype {slices.dtype}")
        if slices.size and not np.isfinite(slices).all():
            raise ValueError("slices: contain NaN or Inf values")
        if slices.size and (slices.min() < 0 or slices.max() > 1):
            raise ValueError(
                f"slices: float slices must be in [0, 1] (got [{slices.min():.3g}, {slices.max():.3g}]); "
                "window or normalise first (fewsam_jax.preprocess)"
            )
    return slices


def embedding_shape(config) -> tuple[int, int, int]:
    """(E, E, C) of one slice's embedding by a model of ``config`` (a :class:`~fewsam_jax.config.SamConfig`)."""
    return (config.embedding_size, config.embedding_size, config.prompt_embed_dim)


def check_dtype(dtype: str) -> str:
    """``dtype`` if it is one of :data:`DTYPES`' names; ValueError naming the choices otherwise."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {sorted(DTYPES)}, got {dtype!r}")
    return dtype


class SliceEncoder:
    """A frozen image encoder compiled for fixed-size batches of 2D slices.

    >>> encoder = SliceEncoder(load_model("litemedsam"), batch_size=8)
    >>> embeddings = encoder.encode(slices)            # (N, H, W) in [0, 1] -> (N, 64, 64, 256)

    Args:
      model: a ``Sam``; only its ``image_encoder`` and ``config`` are used.
      batch_size: slices per compiled call, rounded up to a multiple of the number of devices.
      dtype: ``"float32"`` or ``"bfloat16"`` (parameters and encoder input cast; for accelerators).
        Preparation runs in float32 and embeddings are returned as float32 either way.
      devices: devices of the data-parallel mesh (default: all local devices).
      output: what :meth:`iter_batches` yields per batch (:data:`OUTPUTS`): ``"embeddings"`` (B, E, E, C);
        ``"stage_inputs"``, a staged (TinyViT) encoder's last-stage inputs (B, E, E, D) from its trunk alone;
        ``"both"``, the tuple (embeddings, stage inputs) from one pass.
    """

    def __init__(self, model: Sam, batch_size: int = 4, dtype: str = "float32", devices: Sequence | None = None, *,
                 output: str = "embeddings"):
        check_dtype(dtype)
        if output not in OUTPUTS:
            raise ValueError(f"output: expected one of {OUTPUTS}, got {output!r}")
        if output != "embeddings":
            check_staged(model.config, f"output={output!r}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        devices = list(jax.local_devices() if devices is None else devices)
        self.model_name = model.config.name
        self.weights_id = model.weights_id
        self.config = model.config
        self.dtype = dtype
        self.output = output
        self.mesh = Mesh(np.array(devices), ("data",))
        self.batch_size = -(-int(batch_size) // len(devices)) * len(devices)
        self._traced: list[tuple[int, ...]] = []  # batch shape of every (re)trace of the compiled function
        graphdef, state = nnx.split(model.image_encoder)
        compute = DTYPES[dtype]
        replicated = NamedSharding(self.mesh, P())
        self._batch_sharding = NamedSharding(self.mesh, P("data"))
        self._state = jax.device_put(_cast_floats(state, compute), replicated)
        cfg = self.config

        def encode_batch(state, images):
            """(B, H, W, 1|3) float32 on the 0-255 scale -> (B, E, E, C) float32 (``output``: or stage inputs)."""
            self._traced.append(images.shape)
            images = jnp.broadcast_to(images, (*images.shape[:3], 3))
            encoder = nnx.merge(graphdef, state)
            if output == "embeddings":
                return encoder(prepare_images(images, cfg).astype(compute)).astype(jnp.float32)
            stage = trunk(encoder, prepare_images(images, cfg).astype(compute))
            if output == "stage_inputs":
                return stage.astype(jnp.float32)
            return last_stage(encoder, stage).astype(jnp.float32), stage.astype(jnp.float32)

        self._encode_batch = jax.jit(
            encode_batch, in_shardings=(replicated, self._batch_sharding), out_shardings=self._batch_sharding
        )

    @property
    def num_devices(self) -> int:
        return self.mesh.size

    @property
    def traced_shapes(self) -> tuple[tuple[int, ...], ...]:
        """The (batch_size, H, W, C) input shape of every compilation of this encoder so far, in order: one per
        slice size when batching works as intended (a repeated shape means a recompilation)."""
        return tuple(self._traced)

    @property
    def embedding_shape(self) -> tuple[int, int, int]:
        """(E, E, C) of one slice's embedding."""
        return embedding_shape(self.config)

    @property
    def stage_input_shape(self) -> tuple[int, int, int]:
        """(E, E, D) of one slice's last-stage input (staged encoders only)."""
        return stage_input_shape(self.config)

    def _device_batch(self, chunk: np.ndarray) -> jax.Array:
        """(b <= batch_size, H, W[, C]) validated slices -> sharded (batch_size, H, W, C) 0-255 float32."""
        if chunk.ndim == 3:
            chunk = chunk[..., None]
        batch = np.zeros((self.batch_size, *chunk.shape[1:]), np.float32)
        batch[: len(chunk)] = chunk
        if chunk.dtype != np.uint8:
            batch *= 255.0
        return jax.device_put(batch, self._batch_sharding)

    def iter_batches(self, slices: np.ndarray, progress: bool = True, desc: str | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Encodes ``slices`` (see :func:`check_slices`) batch by batch.

        Yields ``(start, embeddings)``: embeddings (b, E, E, C) float32 of ``slices[start:start + b]`` (or, as
        ``output`` says, their stage inputs (b, E, E, D), or the tuple of both).
        The next batch is dispatched before the current one is fetched, so the host overlaps the
        device. ``progress`` shows a tqdm bar (rate and ETA).
        """
        slices = check_slices(slices)
        total, size = len(slices), self.batch_size
        with tqdm(total=total, unit="slice", desc=desc or f"encode {self.model_name}", disable=not progress) as bar:
            pending = None
            for start in range(0, total, size):
                chunk = slices[start : start + size]
                running = (start, len(chunk), self._encode_batch(self._state, self._device_batch(chunk)))
                if pending is not None:
                    yield self._fetch(pending, bar)
                pending = running
            if pending is not None:
                yield self._fetch(pending, bar)

    @staticmethod
    def _fetch(pending: tuple[int, int, jax.Array], bar) -> tuple[int, np.ndarray]:
        start, count, out = pending
        result = jax.tree.map(lambda values: np.asarray(values)[:count], out)
        bar.update(count)
        return start, result

    def encode(self, slices: np.ndarray, progress: bool = False) -> np.ndarray:
        """(N, H, W) or (N, H, W, 3) slices, float in [0, 1] or uint8 -> (N, E, E, C) float32 (an encoder whose
        ``output`` is "embeddings")."""
        if self.output != "embeddings":
            raise ValueError(f"encode: returns embeddings; this encoder's output is {self.output!r} (use iter_batches)")
        slices = check_slices(slices)
        out = np.empty((len(slices), *self.embedding_shape), np.float32)
        for start, embeddings in self.iter_batches(slices, progress):
            out[start : start + len(embeddings)] = embeddings
        return out
