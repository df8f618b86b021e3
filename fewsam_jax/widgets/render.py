"""Slice rendering for the widgets: intensities -> grey, label overlays, prompt markers, PNG bytes.

Everything is numpy on (H, W) display-oriented slices (``fewsam_jax.get_slices`` layout) and returns
uint8 RGB (H, W, 3).
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import to_rgb
from PIL import Image

from fewsam_jax.io import check_axis, slice_view  # noqa: F401  (slice_view: re-exported for the widgets)

ColorSpec = str | tuple[float, float, float]


def plane_spacing(spacing: tuple[float, float, float], axis: int) -> tuple[float, float]:
    """(row, column) pixel size in mm of slices along ``axis`` (rows follow the larger other axis)."""
    a, b = (d for d in range(3) if d != check_axis(axis))
    return float(spacing[b]), float(spacing[a])


def class_colors(class_ids, colors: Mapping[int, ColorSpec] | None = None) -> dict[int, np.ndarray]:
    """RGB uint8 (3,) per class id: ``colors[id]`` (any matplotlib colour) or else matplotlib's
    tab10 cycle in class order (first class blue, second orange, ...)."""
    colors = dict(colors or {})
    unknown = set(colors) - set(class_ids)
    if unknown:
        raise ValueError(f"colors: ids {sorted(unknown)} are not among the classes {sorted(class_ids)}")
    tab10 = colormaps["tab10"].colors
    out = {}
    for n, class_id in enumerate(sorted(class_ids)):
        try:
            rgb = to_rgb(colors.get(class_id, tab10[n % len(tab10)]))
        except ValueError as err:
            raise ValueError(f"colors[{class_id}]: {err}") from None
        out[class_id] = np.round(np.asarray(rgb) * 255).astype(np.uint8)
    return out


def hex_color(rgb: np.ndarray) -> str:
    """(3,) uint8 -> '#rrggbb'."""
    return "#" + "".join(f"{int(v):02x}" for v in rgb)


def default_window(array: np.ndarray) -> tuple[float, float]:
    """(level, width) showing the 0.5..99.5 percentile range of ``array`` (width > 0)."""
    lo, hi = np.percentile(np.asarray(array, np.float32), [0.5, 99.5])
    width = float(hi - lo) if hi > lo else 1.0
    return float(lo + hi) / 2, width


def grey(image: np.ndarray, level: float, width: float) -> np.ndarray:
    """(H, W) intensities -> (H, W, 3) uint8 grey through the window [level - width/2, level + width/2]."""
    if not width > 0:
        raise ValueError(f"width: expected a positive window width, got {width}")
    lo = level - width / 2
    scaled = (np.asarray(image, np.float32) - np.float32(lo)) * np.float32(255.0 / width)
    g = np.clip(scaled, 0, 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


def _lut(colors: Mapping[int, np.ndarray], labels: np.ndarray, visible=None) -> tuple[np.ndarray, np.ndarray]:
    """Colour (M, 3) and on/off (M,) lookup tables indexed by label value (unknown labels: off)."""
    size = max(int(labels.max(initial=0)), max(colors, default=0)) + 1
    rgb = np.zeros((size, 3), np.uint8)
    on = np.zeros(size, bool)
    for class_id, color in colors.items():
        if class_id > 0 and (visible is None or class_id in visible):
            rgb[class_id], on[class_id] = color, True
    return rgb, on


def blend_labels(rgb: np.ndarray, labels: np.ndarray, colors: Mapping[int, np.ndarray], alpha: float,
                 visible=None) -> np.ndarray:
    """Fills each labelled pixel of ``rgb`` (H, W, 3) uint8 with its class colour at opacity ``alpha``
    (in place; returns ``rgb``). ``visible``: class ids to draw (default all in ``colors``)."""
    labels = np.asarray(labels)
    if labels.min(initial=0) < 0:
        labels = np.maximum(labels, 0)
    table, on = _lut(colors, labels, visible)
    mask = on[labels]
    if mask.any() and alpha > 0:
        a = np.float32(min(max(alpha, 0.0), 1.0))
        under = rgb[mask].astype(np.float32)
        rgb[mask] = (under * (1 - a) + table[labels[mask]] * a + 0.5).astype(np.uint8)
    return rgb


def boundary(labels: np.ndarray) -> np.ndarray:
    """(H, W) bool: labelled pixels with a 4-neighbour of another value (or on the image border)."""
    labels = np.asarray(labels)
    edge = np.zeros(labels.shape, bool)
    edge[1:, :] |= labels[1:, :] != labels[:-1, :]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[[0, -1], :] = True
    edge[:, [0, -1]] = True
    return edge & (labels > 0)


def outline_labels(rgb: np.ndarray, labels: np.ndarray, colors: Mapping[int, np.ndarray], visible=None) -> np.ndarray:
    """Draws the 1-pixel boundary of each class region of ``labels`` in its colour (in place)."""
    labels = np.maximum(np.asarray(labels), 0)
    table, on = _lut(colors, labels, visible)
    edge = boundary(labels) & on[labels]
    rgb[edge] = table[labels[edge]]
    return rgb


def draw_markers(rgb: np.ndarray, points, box=None) -> np.ndarray:
    """Prompt markers (in place): ``points`` [(row, col, positive)] as green (+) / red (-) crosses with
    a dark rim, ``box`` (row0, col0, row1, col1) as a yellow rectangle outline."""
    h, w = rgb.shape[:2]
    size = max(2, min(h, w) // 64)
    for row, col, positive in points:
        r, c = round(float(row)), round(float(col))
        color = (40, 220, 40) if positive else (240, 40, 40)
        for half, shade in ((1, (0, 0, 0)), (0, color)):  # a dark rim first, then the colour
            rgb[max(r - half, 0):r + half + 1, max(c - size - half, 0):c + size + half + 1] = shade
            rgb[max(r - size - half, 0):r + size + half + 1, max(c - half, 0):c + half + 1] = shade
    if box is not None:
        r0, c0, r1, c1 = (round(float(v)) for v in box)
        r0, r1 = sorted((min(max(r0, 0), h - 1), min(max(r1, 0), h - 1)))
        c0, c1 = sorted((min(max(c0, 0), w - 1), min(max(c1, 0), w - 1)))
        yellow = (250, 220, 0)
        rgb[[r0, r1], c0:c1 + 1] = yellow
        rgb[r0:r1 + 1, [c0, c1]] = yellow
    return rgb


def png_bytes(rgb: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> PNG bytes (fast zlib level: rendering speed over size)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
