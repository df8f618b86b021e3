"""SAM's help while labelling one slice: clicks and a box in, a proposed mask out.

The state behind the SAM tools of ``widgets.SliceAnnotator``, with no UI. Prompts live on one slice
at a time (the caller drops them when it moves to another slice):

  * clicks (positive, or negative) accumulate; a box replaces every earlier prompt (clicks after it
    refine it);
  * each prompt asks :class:`~fewsam_jax.predictor.SamPredictor`, on the slice's cached embedding
    (encoded once, then read from the embedding cache), for a mask: with a single click and no box
    the best of SAM's three masks by predicted IoU, otherwise one mask;
  * ``proposal`` is that (H, W) bool mask until the prompts are dropped (the caller writes it into
    the labels when the user accepts it).

Coordinates are (row, col) pixels of ``get_slices(volume, axis)[index]``.
"""

from __future__ import annotations

import numpy as np

from fewsam_jax.cache import embed_volume
from fewsam_jax.io import Volume
from fewsam_jax.modeling.sam import Sam
from fewsam_jax.predictor import SamPredictor
from fewsam_jax.preprocess import Intensity


class SamAssist:
    """Point and box prompts on one slice of ``volume`` and SAM's proposal for them.

    Args:
      volume: the volume being labelled.
      model: a ``Sam``, a model name (``load_model``, on first use), or None (assist off: every
        prompt raises RuntimeError).
      intensity: the intensity mapping of the embeddings.
      cache: the embedding cache (``EmbeddingCache``, root folder or None for ``$FEWSAM_HOME``).
    """

    def __init__(self, volume: Volume, model: Sam | str | None, intensity: Intensity, cache=None):
        if model is not None and not isinstance(model, (Sam, str)):
            raise TypeError(f"model: expected a fewsam_jax.Sam, a model name or None, got {type(model).__name__}")
        self.volume = volume
        self.intensity = intensity
        self.cache = cache
        self._model = model
        self.points: list[tuple[float, float, bool]] = []
        self.box: tuple[float, float, float, float] | None = None
        self.proposal: np.ndarray | None = None
        self._predictor: SamPredictor | None = None
        self._entry = None
        self._embedded: tuple[int, int] | None = None

    @property
    def model(self) -> Sam | None:
        """The SAM used for assist (a model name is loaded here, on first use), or None."""
        if isinstance(self._model, str):
            from fewsam_jax.weights import load_model

            self._model = load_model(self._model)
        return self._model

    def drop(self) -> None:
        """Forgets the prompts and the proposal."""
        self.points, self.box, self.proposal = [], None, None

    def is_embedded(self, axis: int, index: int) -> bool:
        """Whether the predictor already holds slice ``index`` along ``axis`` (no encoding on the next prompt)."""
        return self._predictor is not None and self._embedded == (axis, index)

    def slice_embedding(self, axis: int, index: int) -> np.ndarray:
        """(E, E, C) embedding of slice ``index`` along ``axis`` from the cache, encoding it if absent."""
        model = self.model
        if model is None:
            raise RuntimeError(
                "SAM assist is off: this annotator has no model; create it with model='litemedsam' (or a Sam)"
            )
        entry = self._entry
        if entry is None or entry.axis != axis or not entry.done()[index]:
            entry = embed_volume(self.volume, model, axis=axis, intensity=self.intensity, cache=self.cache,
                                 slices=[index], batch_size=1, progress=False)  # batch 1: no padded work
            self._entry = entry
        return entry[index]

    def click(self, axis: int, index: int, slice_shape: tuple[int, int], row: float, col: float,
              positive: bool = True) -> np.ndarray:
        """Adds a positive (or negative) point prompt; returns the new proposal (H, W) bool."""
        _check_inside(slice_shape, row, col)
        self.points.append((float(row), float(col), bool(positive)))
        return self._propose(axis, index, slice_shape)

    def drag_box(self, axis: int, index: int, slice_shape: tuple[int, int], row0: float, col0: float,
                 row1: float, col1: float) -> np.ndarray:
        """Replaces every prompt with the box spanning the two corners; returns the proposal (H, W) bool."""
        _check_inside(slice_shape, row0, col0)
        _check_inside(slice_shape, row1, col1)
        self.points = []
        self.box = (min(row0, row1), min(col0, col1), max(row0, row1), max(col0, col1))
        return self._propose(axis, index, slice_shape)

    def _propose(self, axis: int, index: int, slice_shape: tuple[int, int]) -> np.ndarray:
        try:
            if not self.is_embedded(axis, index):
                embedding = self.slice_embedding(axis, index)
                if self._predictor is None:
                    self._predictor = SamPredictor(self.model)
                self._predictor.set_embedding(embedding, slice_shape)
                self._embedded = (axis, index)
            coords = labels = box = None
            if self.points:
                coords = np.array([[col, row] for row, col, _ in self.points], np.float32)
                labels = np.array([int(positive) for _, _, positive in self.points], np.int32)
            if self.box is not None:
                r0, c0, r1, c1 = self.box
                box = np.array([c0, r0, c1, r1], np.float32)
            multimask = box is None and len(self.points) == 1
            masks, iou, _ = self._predictor.predict(coords, labels, box, multimask_output=multimask)
        except BaseException:
            self.drop()
            raise
        self.proposal = np.asarray(masks[int(np.argmax(iou))], bool)
        return self.proposal


def _check_inside(slice_shape: tuple[int, int], row: float, col: float) -> None:
    h, w = slice_shape
    if not (np.isfinite(row) and np.isfinite(col) and -0.5 <= row <= h - 0.5 and -0.5 <= col <= w - 0.5):
        raise ValueError(f"point (row={row}, col={col}) is outside the {h}x{w} slice")
