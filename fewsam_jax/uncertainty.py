"""How unsure a few-shot decoder is about each slice of a volume: which slices to label next.

:func:`slice_uncertainty` scores every slice from the decoder's logits (and presence); :func:`least_certain`
picks the slices worth labelling next from those scores. ``widgets.ResultViewer`` plots and uses both.
"""

from __future__ import annotations

import numpy as np
from scipy.special import entr, expit

TYPICAL_LOGIT = float(np.log(9.0))  # the volume's median decision margin is rescaled to this (p = 0.9)


def _entropy_bits(logit: np.ndarray) -> np.ndarray:
    """Entropy in bits of Bernoulli(sigmoid(logit)) for finite ``logit`` >= 0, elementwise."""
    logit = np.asarray(logit, np.float64)
    return (np.logaddexp(0, -logit) + logit * expit(-logit)) / np.log(2)


def _decide(slice_logits: np.ndarray, active: np.ndarray, flips: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One slice decided as ``labels_from_logits`` does (background at logit 0 against the ``active``
    classes' logits). slice_logits: (K, H, W); active: (K,) bool. Returns (H, W) margin between the
    winning label's logit and the runner-up's (inf where no class is active), (H, W) bool "a class
    wins", and (K,) pixels that would change label if class k alone were switched in or out (when
    ``flips``; else zeros)."""
    masked = np.where(active[:, None, None], slice_logits.astype(np.float32), -np.inf)
    if len(masked) > 1:
        ordered = np.partition(masked, len(masked) - 2, axis=0)
        first, second = ordered[-1], ordered[-2]
    else:
        first, second = masked[0], np.full(masked.shape[1:], -np.inf, np.float32)
    predicted = first > 0
    margin = np.where(predicted, first - np.maximum(second, 0), -first)
    changed = np.zeros(len(masked), np.int64)
    if flips:
        best = masked.argmax(axis=0)
        for k, logits_k in enumerate(slice_logits):
            rival = np.where(best == k, second, first) if active[k] else first  # best other label's logit
            changed[k] = np.count_nonzero(logits_k > np.maximum(rival, 0))
    return margin, predicted, changed


def slice_uncertainty(logits: np.ndarray | None, presence: np.ndarray | None = None,
                      presence_threshold: float = 0.5) -> np.ndarray:
    """How unsure the decoder is about each slice, relative to the rest of the volume: (N,) in [0, 1].

    Args:
      logits: (N, K, H, W) per-class logits with 0 at the decision threshold (as
        ``FewShotSegmenter.predict_volume`` returns them), or None.
      presence: (N, K) presence probabilities, or None (every class then counts as present).
      presence_threshold: classes with presence below it do not compete for pixels (the decoder's
        ``InferenceConfig.presence_threshold``); 0: presence decides nothing, so it is not scored either.

    Each pixel is decided as ``labels_from_logits`` does: the best of background (logit 0) and the
    present classes. Its *margin* is the winner's logit minus the runner-up's. Few-shot decoders are
    often under-confident (typical margins far below 1 on unseen slices), so margins are divided by
    the volume's median margin over predicted pixels and mapped so that median becomes a logit of
    ln 9 (probability 0.9): the score is unchanged when all logits are multiplied by any c > 0, and a
    slice stands out by being less decided than the volume's typical one. Per slice n:

      region: predicted pixels plus the background pixels whose margin is below that median;
      pixel part = mean over the region of the binary entropy (bits) of sigmoid(rescaled margin),
        times min(1, region size / the median non-empty region size of the volume), so that the few
        pixels at a structure's tip do not outrank a slice through its middle;
      presence part = max over classes of the entropy of presence[n, k] times min(1, pixels whose
        label depends on that presence decision / the same median size) (a class with nothing to
        add or remove on the slice cannot make it uncertain);
      score = the larger part.

    Reading it: 0 = nothing on the slice is close to a decision; ~0.47 = decided like the volume's
    typical predicted pixel; 1 = the whole region sits on the decision boundary. With ``presence``
    alone the score is the largest presence entropy of the slice.
    """
    if not 0 <= presence_threshold < 1:
        raise ValueError(f"presence_threshold: expected a probability in [0, 1), got {presence_threshold}")
    if presence_threshold == 0:  # the labels do not depend on presence: neither does their uncertainty
        presence = None
    if logits is None and presence is None:
        raise ValueError("slice_uncertainty: needs logits and/or presence (from FewShotSegmenter.predict_volume; "
                         "logits when presence_threshold is 0)")
    if presence is not None:
        presence = np.asarray(presence, np.float64)
        if presence.ndim != 2:
            raise ValueError(f"presence: expected (N, K) probabilities, got shape {presence.shape}")
        if not ((presence >= 0) & (presence <= 1)).all():
            raise ValueError("presence: expected probabilities in [0, 1]")
        presence_bits = (entr(presence) + entr(1 - presence)) / np.log(2)
    if logits is None:
        return presence_bits.max(axis=1).astype(np.float32)
    logits = np.asarray(logits)
    if logits.ndim != 4:
        raise ValueError(f"logits: expected (N, K, H, W), got shape {logits.shape}")
    if presence is not None and presence.shape != logits.shape[:2]:
        raise ValueError(f"presence: expected shape {logits.shape[:2]} to match logits, got {presence.shape}")
    active = np.ones(logits.shape[:2], bool) if presence is None else presence >= presence_threshold
    margins = np.empty((len(logits), *logits.shape[2:]), np.float32)
    predicted = np.empty(margins.shape, bool)
    changed = np.empty(logits.shape[:2], np.int64)
    for n, slice_logits in enumerate(logits):  # one slice at a time: no (N, K, H, W) temporaries
        margins[n], predicted[n], changed[n] = _decide(slice_logits, active[n], presence is not None)
    reference = margins[predicted] if predicted.any() else margins[np.isfinite(margins)]
    typical = float(np.median(reference)) if reference.size else 0.0
    factor = TYPICAL_LOGIT / (typical if typical > 0 else 1.0)
    region = predicted | (margins * factor < TYPICAL_LOGIT)
    sizes = region.reshape(len(region), -1).sum(axis=1)
    median_size = float(np.median(sizes[sizes > 0])) if sizes.any() else 1.0
    pixel = np.zeros(len(logits))
    for n in np.flatnonzero(sizes):
        pixel[n] = _entropy_bits(margins[n][region[n]] * factor).mean() * min(1.0, sizes[n] / median_size)
    if presence is None:
        return pixel.astype(np.float32)
    presence_part = (presence_bits * np.minimum(1.0, changed / median_size)).max(axis=1)
    return np.maximum(pixel, presence_part).astype(np.float32)


def least_certain(uncertainty: np.ndarray, count: int = 5, min_gap: int = 2) -> list[int]:
    """Up to ``count`` slices to label next from (N,) ``uncertainty`` (:func:`slice_uncertainty`): the
    highest first, each at least ``min_gap`` slices from those already chosen (2: never two neighbours,
    which show nearly the same anatomy); ties go to the lower index, slices scoring 0 are left out."""
    if isinstance(min_gap, bool) or not isinstance(min_gap, (int, np.integer)) or min_gap < 1:
        raise ValueError(f"min_gap: expected an integer >= 1, got {min_gap!r}")
    uncertainty = np.asarray(uncertainty)
    chosen: list[int] = []
    for index in np.argsort(-uncertainty, kind="stable"):
        if len(chosen) == count or uncertainty[index] <= 0:
            break
        if all(abs(int(index) - other) >= min_gap for other in chosen):
            chosen.append(int(index))
    return chosen
