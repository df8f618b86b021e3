"""Prompted SAM baselines: every structure of every slice segmented from simulated clicks or boxes.

The comparison the few-shot decoder has to win: a user prompting SAM (any converted model,
LiteMedSAM by default) on each slice, for each class the ground truth contains there. Prompts come
from the ground truth (:mod:`bench.baselines.prompts`); a class absent from a slice is never
prompted, so never predicted there (the prompted baselines get presence for free).

Per (slice, class): the prompt goes through SAM's prompt encoder and mask decoder on the slice's
cached embedding; with ``spec.multimask_output`` (a lone click) the candidate with the highest
predicted IoU is kept, as segment-anything's automatic choice does. Prompts are placed on the
structure's footprint in the model's input (see :func:`make_prompt`). Classes prompted on one slice
can overlap: each pixel goes to the class whose kept mask has the highest predicted IoU (ties to the
class listed first). The masks equal ``SamPredictor.predict`` with the same prompt on
``set_embedding(embedding, slice_shape)`` (tested exactly); the decoder runs batched over
(slice, class) items at a fixed batch size, so it compiles once per prompt shape. On a CPU batching
gains little; on an accelerator, where a call's overhead dominates, raise ``batch_size``. What each
prompt scores on hippocampus: bench/RESULTS.md, "Precision and prompt notes".
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from bench.baselines.prompts import PromptSpec, box_from_mask, sample_points
from fewsam_jax import transforms
from fewsam_jax.modeling.sam import Sam, decode_masks

__all__ = ["make_prompt", "prompted_items", "segment_prompted"]


def make_prompt(mask: np.ndarray, spec: PromptSpec, seed: Sequence[int] | int, *,
                upscale: float = 1.0) -> dict[str, np.ndarray]:
    """The prompt for one structure ``mask`` (H, W), as ``SamPredictor.predict`` keyword arguments
    (``point_coords``/``point_labels`` or ``box``, original pixel coordinates); ``seed`` seeds a
    NumPy Generator (a sequence such as ``(seed, slice, class)`` keeps items independent).

    ``upscale``: the model input's long side over the slice's (``image_size / max(H, W)``). When
    the slice is enlarged (> 1), each pixel becomes a block of ``upscale`` input pixels, while SAM
    reads an integer coordinate as the first of them; the prompt is moved onto the footprint of the
    structure in the input: box far edges by ``1 - 1 / upscale`` (the inclusive extent of the
    enlarged mask, how SAM and MedSAM derive training boxes on resized masks) and points by half
    that (block centres). Unmoved, the box covers one pixel less per axis and scores lower (measured:
    bench/RESULTS.md, "Precision and prompt notes").
    """
    rng = np.random.default_rng(seed)
    footprint = max(0.0, 1.0 - 1.0 / upscale)
    if spec.kind == "box":
        box = box_from_mask(mask, spec.jitter, rng if spec.jitter else None)
        return {"box": box + np.array([0, 0, footprint, footprint], np.float32)}
    coords, labels = sample_points(mask, spec.num_points, rng, negatives=spec.negatives)
    return {"point_coords": coords + np.float32(footprint / 2), "point_labels": labels}


def prompted_items(ground_truth: np.ndarray, class_ids: Sequence[int]) -> list[tuple[int, int]]:
    """(slice index, class id) pairs to prompt: the classes present in each slice of (N, H, W)."""
    return [(n, c) for n in range(len(ground_truth)) for c in class_ids if (ground_truth[n] == c).any()]


def _check_inputs(sam, embeddings, slice_shape, ground_truth, class_ids):
    gt = np.asarray(ground_truth)
    if gt.ndim != 3 or not np.issubdtype(gt.dtype, np.integer):
        raise ValueError(f"ground_truth: expected an (N, H, W) integer label array, got {gt.dtype} {gt.shape}")
    if tuple(gt.shape[1:]) != tuple(slice_shape):
        raise ValueError(f"ground_truth: slices are {gt.shape[1:]}, but slice_shape is {tuple(slice_shape)}")
    if len(embeddings) != len(gt):
        raise ValueError(f"embeddings: {len(embeddings)} slices, but ground_truth has {len(gt)}")
    ids = [int(c) for c in class_ids]
    if not ids or min(ids) < 1 or len(set(ids)) != len(ids):
        raise ValueError(f"class_ids: expected distinct positive label values, got {list(class_ids)}")
    if not isinstance(sam, Sam):
        raise TypeError(f"sam: expected a fewsam_jax.Sam, got {type(sam).__name__}")
    return gt, ids


def segment_prompted(
    sam: Sam,
    embeddings,
    slice_shape: tuple[int, int],
    ground_truth: np.ndarray,
    class_ids: Sequence[int],
    spec: PromptSpec,
    seed: int = 0,
    *,
    batch_size: int = 8,
    return_scores: bool = False,
):
    """Label maps from prompting ``sam`` per slice and class with ``spec``.

    Args:
      embeddings: (N, E, E, C) cached image embeddings of the slices (an array or a
        ``CachedEmbeddings`` entry covering exactly these N slices); only slices with structure are read.
      slice_shape: (H, W) of the slices the embeddings were computed from.
      ground_truth: (N, H, W) int labels the prompts are simulated from.
      class_ids: label values to prompt; other values in ``ground_truth`` are ignored.
      seed: the prompt of item (slice n, class c) is drawn from ``default_rng((seed, n, c))``.
      batch_size: (slice, class) items per decoder call.
      return_scores: also return the (N, H, W) float32 predicted IoU of each pixel's winning mask
        (0 where unlabelled).
    Returns:
      (N, H, W) int32 label map (0 background), or (labels, scores) with ``return_scores``.
    """
    gt, ids = _check_inputs(sam, embeddings, slice_shape, ground_truth, class_ids)
    cfg = sam.config
    height, width = int(slice_shape[0]), int(slice_shape[1])
    labels = np.zeros(gt.shape, np.int32)
    scores = np.zeros(gt.shape, np.float32)
    items = prompted_items(gt, ids)
    if not items:
        return (labels, scores) if return_scores else labels
    upscale = cfg.image_size / max(height, width)
    prompts = [make_prompt(gt[n] == c, spec, (seed, n, c), upscale=upscale) for n, c in items]
    coords = point_labels = boxes = None
    if spec.kind == "box":
        boxes = transforms.scale_boxes(np.stack([p["box"] for p in prompts]), (height, width), cfg)
    else:
        coords = transforms.scale_coords(np.stack([p["point_coords"] for p in prompts]), (height, width), cfg)
        point_labels = np.stack([p["point_labels"] for p in prompts])
    expected = (cfg.embedding_size, cfg.embedding_size, cfg.prompt_embed_dim)
    slices = np.array([n for n, _ in items])
    for start in range(0, len(items), batch_size):
        # pad the last chunk by repeating its last item: one compiled shape per prompt kind
        chunk = np.minimum(np.arange(start, start + batch_size), len(items) - 1)
        count = min(batch_size, len(items) - start)
        emb = np.asarray(embeddings[slices[chunk]], np.float32)
        if emb.shape[1:] != expected:
            raise ValueError(f"embeddings: expected (N, {', '.join(map(str, expected))}) for {cfg.name}, "
                             f"got {(len(embeddings), *emb.shape[1:])}")
        low_res, iou = decode_masks(
            sam, jnp.asarray(emb),
            None if coords is None else jnp.asarray(coords[chunk]),
            None if point_labels is None else jnp.asarray(point_labels[chunk]),
            None if boxes is None else jnp.asarray(boxes[chunk]),
            None, spec.multimask_output,
        )
        best = jnp.argmax(iou, axis=1)
        low_res = jnp.take_along_axis(low_res, best[:, None, None, None], axis=1)
        masks = np.asarray(transforms.postprocess_masks(low_res, (height, width), cfg)[:count, 0] > cfg.mask_threshold)
        best_iou = np.asarray(jnp.take_along_axis(iou, best[:, None], axis=1)[:count, 0])
        for (n, c), mask, score in zip(items[start:start + count], masks, best_iou):
            wins = mask & (score > scores[n]) | mask & (labels[n] == 0)
            labels[n][wins] = c
            scores[n][wins] = score
    return (labels, scores) if return_scores else labels
