"""Self-prompting: the prompt tokens of a second pass built from the volume being segmented.

The first pass labels a volume with the support's tokens. The masked-average prototypes of what it labelled,
taken on the volume's own cached embeddings exactly as the support's prototypes were taken on theirs, then
become the tokens of a second pass, blended with the support's (``InferenceConfig.self_prompt``, the volume's
share). A structure looks more like itself elsewhere in the same volume than like its examples from other
volumes, so the volume's own prototypes suit its slices better; the idea of PerSAM's target-guided prompts and
of self-support prototypes in few-shot segmentation. A class the first pass labels nowhere keeps the support's
tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fewsam_jax.fewshot.decoder import FewShotDecoder, class_tokens
from fewsam_jax.fewshot.infer import labels_from_logits, pad_rows
from fewsam_jax.fewshot.prompts import IGNORE
from fewsam_jax.fewshot.train import evenly_spread, region_stats_jit
from fewsam_jax.transforms import resized_shape


def frame_labels(logits: np.ndarray, presence: np.ndarray, presence_threshold: float,
                 slice_shape: tuple[int, int]) -> np.ndarray:
    """Class indices (n, L, L) in the low-resolution frame (0 background, k the k-th class, ``IGNORE`` on the
    padding outside the slice) from logits (n, K, L, L) already shifted so that 0 is each class's cut-off, and
    presence probabilities (n, K): the labels the first pass gives, before they are resized to the slice grid."""
    num_classes, low = logits.shape[1], logits.shape[-1]
    labels = labels_from_logits(logits, presence, tuple(range(1, num_classes + 1)), presence_threshold)
    height, width = resized_shape(*slice_shape, low)
    labels[:, height:, :] = IGNORE
    labels[:, :, width:] = IGNORE
    return labels


class VolumePrompts:
    """Collects a volume's region statistics chunk by chunk (:meth:`add`), then builds its prompt tokens
    (:meth:`tokens`). Holds, per slice and region (1 + K), a prototype and a centroid encoding (C), an area and a
    box (4), as :func:`~fewsam_jax.fewshot.train.region_stats` gives them. ``rows``: the chunk size; a shorter chunk
    is padded to it (nothing labelled), so one compiled program serves every chunk of every volume."""

    def __init__(self, decoder: FewShotDecoder, num_classes: int, rows: int):
        self.decoder, self.num_classes, self.rows = decoder, num_classes, rows
        self.parts: list[tuple[jax.Array, ...]] = []

    def add(self, embeddings: np.ndarray, labels: np.ndarray) -> None:
        """``embeddings`` (n <= rows, E, E, C): the slices' cached (frozen encoder) embeddings, what support
        prototypes are taken on; ``labels`` (n, L, L): their :func:`frame_labels`."""
        n = len(embeddings)
        if n > self.rows:
            raise ValueError(f"embeddings: expected at most {self.rows} slices (rows), got {n}")
        padded = pad_rows(np.asarray(embeddings, np.float32), self.rows)
        frame = pad_rows(np.asarray(labels, np.int32), self.rows, fill=IGNORE)
        stats = region_stats_jit(self.decoder, jnp.asarray(padded), jnp.asarray(frame), self.num_classes)
        self.parts.append(tuple(part[:n] for part in stats))

    def tokens(self, support_tokens: jax.Array, weight: float) -> jax.Array:
        """(K, T, C): ``(1 - weight) * support_tokens + weight * the volume's own``, per class; a class labelled on
        no slice keeps ``support_tokens``. The individual-slice tokens come from slices spread evenly over those
        where the class was labelled, as the support's are chosen."""
        prototypes, areas, positions, boxes = (jnp.concatenate(parts) for parts in zip(*self.parts))
        present = np.asarray(areas[:, 1:] > 0).T  # (K, N)
        found = present.any(axis=1)
        if not found.any():
            return support_tokens
        slice_tokens = self.decoder.config.slice_tokens
        choice = np.stack([evenly_spread(np.flatnonzero(p if p.any() else np.ones_like(p)), slice_tokens)
                           for p in present])
        own = class_tokens(self.decoder, prototypes, areas, positions, boxes, jnp.ones(len(areas), jnp.float32),
                           jnp.asarray(choice, jnp.int32))
        share = jnp.asarray(np.where(found, weight, 0.0), support_tokens.dtype)[:, None, None]
        return (1.0 - share) * support_tokens + share * own
