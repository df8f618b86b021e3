"""Segmenting every slice of a volume from its cached embeddings with a trained few-shot decoder (or from
its cached last-stage inputs, for a decoder that adapts the encoder's last stage)."""

from __future__ import annotations

from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from scipy import ndimage
from fewsam_jax.logs import tqdm

from fewsam_jax.fewshot.decoder import FewShotDecoder
from fewsam_jax.fewshot.prompts import IGNORE
from fewsam_jax.transforms import resized_shape


@nnx.jit
def _decode_batch(decoder: FewShotDecoder, embeddings, tokens, images):
    logits, presence = decoder(decoder.target_embeddings(embeddings), tokens, images=images)
    return logits, jax.nn.sigmoid(presence)


def pad_rows(array: np.ndarray, rows: int, fill: float = 0) -> np.ndarray:
    """``array`` (S, ...) with rows of ``fill`` appended up to ``rows`` (>= S), in its own dtype; ``array``
    itself when S == ``rows`` (no copy). What gives a compiled program one shape for several sizes: the last
    batch of a volume, a support grown by a few slices, a short chunk."""
    array = np.asarray(array)
    if rows == len(array):
        return array
    return np.concatenate([array, np.full((rows - len(array), *array.shape[1:]), fill, array.dtype)])


def predict_logits(
    decoder: FewShotDecoder,
    tokens: jax.Array,
    embeddings: Iterable[np.ndarray] | np.ndarray,
    batch_size: int = 8,
    progress: bool = False,
    images: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Low-resolution logits (N, K, L, L) and presence probabilities (N, K) for every slice.

    ``embeddings``: the slices' cached embeddings (N, E, E, C), or for a decoder with an encoder stage
    (``decoder.encoder_stage``, ``encoder_lora_rank`` > 0) their cached last-stage inputs (N, E, E, D), which
    it embeds first (:meth:`~fewsam_jax.fewshot.decoder.FewShotDecoder.target_embeddings`).
    ``images`` (N, L, L, 1 + 2 * context): the slices in the low-resolution frame, needed by a decoder
    with an image branch. Slices run in fixed-size batches (the last one padded), so one compilation
    serves every volume.
    """
    embeddings = np.asarray(embeddings)
    n = len(embeddings)
    if images is not None and len(images) != n:
        raise ValueError(f"{len(images)} images for {n} embeddings")
    logits, presence = [], []
    for start in tqdm(range(0, n, batch_size), desc="segment", disable=not progress, unit="batch"):
        batch = embeddings[start:start + batch_size]
        real = len(batch)
        image_batch = None if images is None else jnp.asarray(
            pad_rows(images[start:start + batch_size].astype(np.float32), batch_size))
        out_logits, out_presence = _decode_batch(decoder, jnp.asarray(pad_rows(batch.astype(np.float32), batch_size)),
                                                 tokens, image_batch)
        logits.append(np.asarray(out_logits[:real]))
        presence.append(np.asarray(out_presence[:real]))
    return np.concatenate(logits), np.concatenate(presence)


def calibrate_thresholds(logits: np.ndarray, labels: np.ndarray, grid: np.ndarray = np.linspace(-4.0, 2.0, 25),
                         rounds: int = 2) -> np.ndarray:
    """Per-class logit thresholds that maximise the mean Dice of the resolved label map on labelled slices.

    Classes compete for pixels (:func:`labels_from_logits`), so thresholds are tuned jointly by
    coordinate ascent from 0 (SAM's own threshold; ties keep the value nearest 0).

    Args:
      logits: (N, K, L, L) predictions for labelled slices; labels: (N, L, L) class indices with
        ``IGNORE`` padding. Returns (K,) thresholds.
    """
    num_classes = logits.shape[1]
    valid = labels != IGNORE
    class_ids = tuple(range(1, num_classes + 1))
    present = np.ones(logits.shape[:2])
    candidates = grid[np.argsort(np.abs(grid), kind="stable")]

    def mean_dice(thresholds):
        pred = labels_from_logits(logits - thresholds[None, :, None, None], present, class_ids)
        scores = []
        for k in class_ids:
            p, t = (pred == k) & valid, (labels == k) & valid
            scores.append(2 * (p & t).sum() / max(p.sum() + t.sum(), 1))
        return float(np.mean(scores))

    thresholds = np.zeros(num_classes, np.float32)
    for _ in range(rounds):
        for k in range(num_classes):
            trials = [mean_dice(np.where(np.arange(num_classes) == k, t, thresholds)) for t in candidates]
            thresholds[k] = candidates[int(np.argmax(trials))]
    return thresholds


def logits_to_native(logits: np.ndarray, slice_shape: tuple[int, int]) -> np.ndarray:
    """(N, K, L, L) logits in the low-resolution frame -> (N, K, H, W) on the slice's own grid."""
    n, k, low, _ = logits.shape
    new_h, new_w = resized_shape(*slice_shape, low)
    cropped = jnp.asarray(logits[..., :new_h, :new_w])
    return np.asarray(jax.image.resize(cropped, (n, k, *slice_shape), "linear", antialias=True))


def labels_from_logits(
    logits: np.ndarray, presence: np.ndarray, class_ids: tuple[int, ...], presence_threshold: float = 0.5
) -> np.ndarray:
    """Label map (N, H, W): each pixel gets the class with the highest positive logit among the
    classes judged present on its slice, background (0) where none is positive."""
    active = np.where((presence >= presence_threshold)[..., None, None], logits, -np.inf)
    best = active.argmax(axis=1)
    lut = np.asarray((0, *class_ids))
    return np.where(active.max(axis=1) > 0, lut[best + 1], 0).astype(np.int32)


def postprocess_3d(labels: np.ndarray, class_ids: tuple[int, ...], largest_component: bool = True,
                   fill_holes: bool = True) -> np.ndarray:
    """Per class: keep the largest 26-connected component and/or fill holes, in 3D."""
    out = np.where(np.isin(labels, class_ids), 0, labels)
    for class_id in class_ids:
        mask = labels == class_id
        if largest_component and mask.any():
            components, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
            if count > 1:
                sizes = np.bincount(components.ravel())[1:]
                mask = components == 1 + int(sizes.argmax())
        if fill_holes:
            mask = ndimage.binary_fill_holes(mask) & ((out == 0) | mask)
        out[mask] = class_id
    return out
