"""``SamPredictor``: the stateful, prompt-at-a-time interface of segment-anything, on JAX.

The model code stays pure; this class only remembers the current image's embedding and size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fewsam_jax import transforms
from fewsam_jax.modeling.sam import Sam, decode_masks, encode_images


def as_rgb_255(image: np.ndarray, name: str = "image") -> np.ndarray:
    """(H, W) or (H, W, 1|3) image, uint8 or float in [0, 1] -> float32 (H, W, 3) on the 0-255 scale."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3) or min(image.shape[:2]) == 0:
        raise ValueError(f"{name}: expected a non-empty (H, W) or (H, W, 3) array, got shape {image.shape}")
    if not np.isfinite(image).all():
        raise ValueError(f"{name}: contains NaN or Inf values")
    if image.dtype == np.uint8:
        image = image.astype(np.float32)
    else:
        image = image.astype(np.float32)
        if image.min() < 0 or image.max() > 1:
            raise ValueError(
                f"{name}: float images must be in [0, 1] (got [{image.min():.3g}, {image.max():.3g}]); "
                "window or normalise first (fewsam_jax.preprocess), or pass uint8"
            )
        image = image * 255.0
    return np.broadcast_to(image, (*image.shape[:2], 3))


class PromptWarning(UserWarning):
    """A prompt that lies partly outside the image: SAM answers, but rarely with what was meant."""


def _image_size_text(size: tuple[int, int]) -> str:
    height, width = size
    return f"the {width} x {height} image (x = column 0..{width - 1}, y = row 0..{height - 1})"


def check_points(coords: np.ndarray, size: tuple[int, int]) -> None:
    """ValueError naming the first point (x, y) outside the image of ``size`` (H, W), or not finite."""
    height, width = size
    for i, (x, y) in enumerate(np.asarray(coords, np.float64)):
        if not (np.isfinite(x) and np.isfinite(y) and -0.5 <= x <= width - 0.5 and -0.5 <= y <= height - 0.5):
            raise ValueError(f"point_coords[{i}] = ({x:g}, {y:g}) lies outside {_image_size_text(size)}")


def check_box(box: np.ndarray, size: tuple[int, int]) -> None:
    """ValueError for a box (x0, y0, x1, y1) that is empty, not finite or entirely outside the image; a
    PromptWarning when part of it lies outside (the part inside is what SAM can segment)."""
    import warnings

    height, width = size
    x0, y0, x1, y1 = (float(v) for v in box)
    if not np.isfinite([x0, y0, x1, y1]).all() or x1 <= x0 or y1 <= y0:
        raise ValueError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}): expected x0 < x1 and y0 < y1 (pixels, x = column)")
    inside_w = max(0.0, min(x1, width) - max(x0, 0.0))
    inside_h = max(0.0, min(y1, height) - max(y0, 0.0))
    if inside_w * inside_h == 0:
        raise ValueError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies outside {_image_size_text(size)}")
    outside = 1 - inside_w * inside_h / ((x1 - x0) * (y1 - y0))
    if outside > 0.01:
        warnings.warn(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}): {outside:.0%} of it lies outside "
                      f"{_image_size_text(size)}", PromptWarning, stacklevel=3)


class SamPredictor:
    """Embed an image once, then answer point / box / mask prompts on it.

    >>> predictor = SamPredictor(model)
    >>> predictor.set_image(image)                       # (H, W, 3) uint8
    >>> masks, iou, low_res = predictor.predict(box=np.array([x0, y0, x1, y1]))
    """

    def __init__(self, model: Sam):
        self.model = model
        self.config = model.config
        self.reset_image()

    def reset_image(self) -> None:
        self.embedding: jax.Array | None = None
        self.original_size: tuple[int, int] | None = None

    def set_image(self, image: np.ndarray) -> None:
        """Preprocess as the model expects and compute the image embedding. ``image``: (H, W[, 3])."""
        rgb = as_rgb_255(image)
        prepared = transforms.prepare_images(jnp.asarray(rgb)[None], self.config)
        self.set_embedding(encode_images(self.model.image_encoder, prepared)[0], rgb.shape[:2])

    def set_embedding(self, embedding: jax.Array, original_size: tuple[int, int]) -> None:
        """Use a precomputed (e.g. cached) embedding (E, E, C) of an image of ``original_size``."""
        expected = (self.config.embedding_size, self.config.embedding_size, self.config.prompt_embed_dim)
        if tuple(embedding.shape) != expected:
            raise ValueError(f"embedding: expected shape {expected}, got {tuple(embedding.shape)}")
        self.embedding = jnp.asarray(embedding, jnp.float32)
        self.original_size = (int(original_size[0]), int(original_size[1]))

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for one prompt, as ``segment_anything.SamPredictor.predict``.

        Args:
          point_coords: (N, 2) xy pixels in the original image, with ``point_labels`` (N,) 1/0.
          box: (4,) xyxy pixels in the original image.
          mask_input: (1, s, s) or (s, s) low-resolution logits from a previous call.
        Returns:
          masks (M, H, W) bool (logits if ``return_logits``), iou (M,), low-res logits (M, s, s).
        """
        if self.embedding is None:
            raise RuntimeError("call set_image (or set_embedding) before predict")
        size = self.original_size
        coords = labels = boxes = masks_in = None
        if point_coords is not None:
            coords = np.asarray(point_coords, np.float32)
            if point_labels is None or coords.ndim != 2 or coords.shape[1] != 2:
                raise ValueError("point_coords must be (N, 2) and come with point_labels (N,)")
            labels = np.asarray(point_labels, np.int32)
            if labels.shape != coords.shape[:1]:
                raise ValueError(f"point_labels: expected shape {coords.shape[:1]}, got {labels.shape}")
            check_points(coords, size)
            coords = transforms.scale_coords(coords, size, self.config)[None]
            labels = labels[None]
        if box is not None:
            box = np.asarray(box, np.float32).reshape(-1)
            if box.shape != (4,):
                raise ValueError(f"box: expected 4 numbers x0, y0, x1, y1, got shape {box.shape}")
            check_box(box, size)
            boxes = transforms.scale_boxes(box, size, self.config)[None]
        if mask_input is not None:
            low = self.config.low_res_size
            masks_in = np.asarray(mask_input, np.float32)
            if masks_in.size != low * low:
                raise ValueError(f"mask_input: expected ({low}, {low}) or (1, {low}, {low}) low-res logits, "
                                 f"got shape {masks_in.shape}")
            masks_in = masks_in.reshape(1, low, low, 1)
        low_res, iou = decode_masks(
            self.model, self.embedding[None], coords, labels, boxes, masks_in, multimask_output
        )
        masks = transforms.postprocess_masks(low_res, size, self.config)[0]
        if not return_logits:
            masks = masks > self.config.mask_threshold
        return np.asarray(masks), np.asarray(iou[0]), np.asarray(low_res[0])
