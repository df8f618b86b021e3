"""Intensity preprocessing: CT windows, MR percentile normalisation, min-max, and RGB slices.

All functions map intensities to float32 in [0, 1]. Model-specific resizing and normalisation
happen later, in :func:`fewsam_jax.transforms.prepare_images` (run by every encoding path).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["WINDOWS", "Intensity", "minmax_normalise", "percentile_normalise", "to_rgb", "window"]

# CT display windows (level, width) in HU, standard radiology values.
WINDOWS: dict[str, tuple[float, float]] = {
    "soft_tissue": (40.0, 400.0),
    "liver": (30.0, 150.0),
    "mediastinum": (50.0, 350.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}


def _scale(array: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(array - lo) / (hi - lo) clipped to [0, 1], float32; zeros when hi <= lo (constant input)."""
    a = np.asarray(array, dtype=np.float32)
    if not hi > lo:
        return np.zeros_like(a)
    return np.clip((a - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0)


def window(array: np.ndarray, level: float, width: float) -> np.ndarray:
    """CT window: [level - width/2, level + width/2] -> [0, 1], clipped outside. Same shape, float32."""
    if not (np.isfinite(level) and np.isfinite(width) and width > 0):
        raise ValueError(f"window: need a finite level and a positive width, got level={level}, width={width}")
    return _scale(array, level - width / 2, level + width / 2)


def percentile_normalise(array: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Maps the ``low``..``high`` percentiles of the WHOLE array (pass the full volume, not a
    slice) to 0..1, clipped outside. Same shape, float32; all zeros for a constant array."""
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(f"percentile_normalise: need 0 <= low < high <= 100, got low={low}, high={high}")
    lo, hi = np.percentile(np.asarray(array, dtype=np.float32), [low, high])
    return _scale(array, float(lo), float(hi))


def minmax_normalise(array: np.ndarray) -> np.ndarray:
    """Maps the array's min..max to 0..1. Same shape, float32; all zeros for a constant array."""
    a = np.asarray(array)
    return _scale(a, float(a.min()), float(a.max()))


@dataclass(frozen=True)
class Intensity:
    """An intensity mapping to [0, 1], usable as (part of) a cache key.

    mode "window": ``level``/``width`` in HU; "percentile": ``low``/``high`` percentiles
    (default 0.5/99.5) over the whole volume; "minmax": no parameters.
    """

    mode: str
    level: float | None = None
    width: float | None = None
    low: float | None = None
    high: float | None = None

    def __post_init__(self):
        params = {"level": self.level, "width": self.width, "low": self.low, "high": self.high}
        if self.mode == "percentile":
            params["low"] = 0.5 if self.low is None else self.low
            params["high"] = 99.5 if self.high is None else self.high
        needed = {"window": ("level", "width"), "percentile": ("low", "high"), "minmax": ()}
        if self.mode not in needed:
            raise ValueError(f"Intensity: unknown mode {self.mode!r}; expected one of {sorted(needed)}")
        for name, value in params.items():
            if (name in needed[self.mode]) != (value is not None):
                want = ", ".join(needed[self.mode]) or "no parameters"
                raise ValueError(f"Intensity: mode {self.mode!r} takes {want}; got {name}={value!r}")
            if value is not None:
                if isinstance(value, bool) or not np.isfinite(float(value)):
                    raise ValueError(f"Intensity: {name} must be a finite number, got {value!r}")
                object.__setattr__(self, name, float(value))
        if self.mode == "window" and not self.width > 0:
            raise ValueError(f"Intensity: window width must be positive, got {self.width}")
        if self.mode == "percentile" and not 0 <= self.low < self.high <= 100:
            raise ValueError(f"Intensity: need 0 <= low < high <= 100, got low={self.low}, high={self.high}")

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Maps a whole volume (any shape) to float32 in [0, 1]."""
        if self.mode == "window":
            return window(array, self.level, self.width)
        if self.mode == "percentile":
            return percentile_normalise(array, self.low, self.high)
        return minmax_normalise(array)

    def key(self) -> str:
        """Stable string with every parameter, e.g. "window:40.0,400.0"; ``parse(key())`` round-trips."""
        if self.mode == "window":
            return f"window:{self.level!r},{self.width!r}"
        if self.mode == "percentile":
            return f"percentile:{self.low!r},{self.high!r}"
        return "minmax"

    @classmethod
    def coerce(cls, value: Intensity | str) -> Intensity:
        """``value`` itself if it is an Intensity, else :meth:`parse` of it (every API taking either calls this)."""
        return value if isinstance(value, Intensity) else cls.parse(value)

    @classmethod
    def parse(cls, spec: str) -> Intensity:
        """Parses a preset name from WINDOWS ("soft_tissue"), "window:LEVEL,WIDTH",
        "percentile" / "percentile:LOW,HIGH" or "minmax"."""
        text = str(spec).strip().lower()
        if text in WINDOWS:
            return cls("window", *WINDOWS[text])
        mode, sep, rest = text.partition(":")
        mode = mode.strip()
        usage = (
            f"expected a window preset ({', '.join(WINDOWS)}), 'window:LEVEL,WIDTH', "
            "'percentile[:LOW,HIGH]' or 'minmax'"
        )
        if mode not in ("window", "percentile", "minmax"):
            raise ValueError(f"Intensity.parse: unknown intensity spec {spec!r}; {usage}")
        try:
            values = [float(v) for v in rest.split(",")] if sep else []
        except ValueError:
            raise ValueError(f"Intensity.parse: non-numeric parameters in {spec!r}; {usage}") from None
        counts = {"window": (2,), "percentile": (0, 2), "minmax": (0,)}[mode]
        if len(values) not in counts:
            raise ValueError(f"Intensity.parse: {mode!r} takes {' or '.join(map(str, counts))} numbers, got {spec!r}; {usage}")
        if mode == "window":
            return cls("window", level=values[0], width=values[1])
        if mode == "percentile":
            return cls("percentile", **dict(zip(("low", "high"), values)))
        return cls("minmax")


def to_rgb(slice2d: np.ndarray) -> np.ndarray:
    """(H, W) grey slice -> (H, W, 3) uint8 RGB.

    Floats are taken to be in [0, 1] (clipped, scaled by 255 and rounded); uint8 is used as is.
    """
    s = np.asarray(slice2d)
    if s.ndim != 2:
        raise ValueError(f"to_rgb: expected a 2D (H, W) slice, got shape {s.shape}")
    if s.dtype != np.uint8:
        if not np.issubdtype(s.dtype, np.floating):
            raise ValueError(f"to_rgb: expected float values in [0, 1] or uint8, got dtype {s.dtype}")
        s = np.round(np.clip(s, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.repeat(s[:, :, None], 3, axis=2)
