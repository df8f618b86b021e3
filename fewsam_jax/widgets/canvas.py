"""``SliceCanvas``: an anywidget that shows a rendered slice and reports pointer events to Python.

The browser side (``canvas.js``, shipped as package data) draws the PNG at ``zoom`` (and ``aspect``
for non-square pixels), draws a live preview of the current brush stroke or box, and sends one
message per pointer event while a button is held::

    {"kind": "pointer", "phase": "down" | "move" | "up" | "cancel",
     "row": float, "col": float,            # image pixel coordinates, pixel centres are integers
     "button": 0 | 2, "shift": bool, "alt": bool, "ctrl": bool}

With ``shortcut_keys`` set (the keys Python handles), the canvas takes the keyboard focus when clicked (or
tabbed to) and sends, for one of those keys pressed without Ctrl, Alt or Meta (letters lower-cased)::

    {"kind": "key", "key": str, "shift": bool}

and with ``wheel_slices``, over the canvas, one message per 100 pixels of wheel (a mouse wheel's notch;
line and page modes converted) instead of scrolling the page::

    {"kind": "wheel", "steps": int}        # positive: wheel down / towards the user

DOM: ``<div class="fewsam-canvas-wrap"><canvas class="fewsam-canvas" data-image-width data-image-height
data-tool data-render-count>``; ``data-render-count`` counts the images drawn so far.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import anywidget
import numpy as np
import traitlets

from fewsam_jax.widgets.render import png_bytes

PHASES = ("down", "move", "up", "cancel")
TOOLS = ("brush", "eraser", "point", "box", "click", "none")


def parse_pointer_event(message: dict) -> dict | None:
    """A canvas message checked and normalised (floats, bools), or None if it is not a pointer event."""
    if not isinstance(message, dict) or message.get("kind") != "pointer":
        return None
    phase = message.get("phase")
    if phase not in PHASES:
        raise ValueError(f"pointer event: phase must be one of {PHASES}, got {phase!r}")
    try:
        row, col = float(message["row"]), float(message["col"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"pointer event: expected numeric 'row' and 'col', got {message!r}") from None
    if not (math.isfinite(row) and math.isfinite(col)):
        raise ValueError(f"pointer event: row/col must be finite, got {row}, {col}")
    return {
        "kind": "pointer", "phase": phase, "row": row, "col": col,
        "button": 2 if message.get("button") == 2 else 0,
        "shift": bool(message.get("shift")), "alt": bool(message.get("alt")), "ctrl": bool(message.get("ctrl")),
    }


def parse_key_event(message: dict) -> dict | None:
    """A key message checked and normalised, or None if it is not one."""
    if not isinstance(message, dict) or message.get("kind") != "key":
        return None
    key = message.get("key")
    if not isinstance(key, str) or not key:
        raise ValueError(f"key event: expected a non-empty 'key' string, got {message!r}")
    return {"kind": "key", "key": key, "shift": bool(message.get("shift"))}


def parse_wheel_event(message: dict) -> dict | None:
    """A wheel message checked and normalised (``steps`` an int), or None if it is not one."""
    if not isinstance(message, dict) or message.get("kind") != "wheel":
        return None
    steps = message.get("steps")
    if isinstance(steps, bool) or not isinstance(steps, (int, float)) or not math.isfinite(steps) or steps != int(steps):
        raise ValueError(f"wheel event: expected an integer 'steps', got {message!r}")
    return {"kind": "wheel", "steps": int(steps)}


class SliceCanvas(anywidget.AnyWidget):
    """Shows an (H, W, 3) uint8 image (``set_image``) and calls ``on_pointer`` callbacks with events."""

    _esm = Path(__file__).with_name("canvas.js")
    png = traitlets.Bytes(b"").tag(sync=True)
    image_width = traitlets.Int(1).tag(sync=True)
    image_height = traitlets.Int(1).tag(sync=True)
    zoom = traitlets.Float(1.0).tag(sync=True)
    aspect = traitlets.Float(1.0).tag(sync=True)  # displayed pixel height / width
    tool = traitlets.Unicode("none").tag(sync=True)
    brush_radius = traitlets.Float(3.0).tag(sync=True)
    preview_color = traitlets.Unicode("#1f77b4").tag(sync=True)
    shortcut_keys = traitlets.List(traitlets.Unicode(), []).tag(sync=True)  # keys sent to Python (none: no focus)
    wheel_slices = traitlets.Bool(False).tag(sync=True)  # the wheel over the canvas is sent, not scrolling the page

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._callbacks: dict[str, list[Callable[[dict], None]]] = {"pointer": [], "key": [], "wheel": []}
        self.on_msg(self._on_message)

    @traitlets.validate("tool")
    def _check_tool(self, proposal):
        if proposal["value"] not in TOOLS:
            raise traitlets.TraitError(f"tool: expected one of {TOOLS}, got {proposal['value']!r}")
        return proposal["value"]

    def set_image(self, rgb: np.ndarray) -> None:
        """Displays (H, W, 3) uint8 ``rgb`` (size and pixels reach the browser together)."""
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"rgb: expected an (H, W, 3) uint8 image, got {rgb.dtype} {rgb.shape}")
        with self.hold_sync():
            self.image_height, self.image_width = rgb.shape[:2]
            self.png = png_bytes(rgb)

    def on_pointer(self, callback: Callable[[dict], None]) -> None:
        """Calls ``callback(message)`` for every pointer message from the browser (see the module doc;
        the callback checks it with :func:`parse_pointer_event`, so a malformed one reaches it as an error)."""
        self._callbacks["pointer"].append(callback)

    def on_key(self, callback: Callable[[dict], None]) -> None:
        """Calls ``callback(message)`` for every key message (checked with :func:`parse_key_event`)."""
        self._callbacks["key"].append(callback)

    def on_wheel(self, callback: Callable[[dict], None]) -> None:
        """Calls ``callback(message)`` for every wheel message (checked with :func:`parse_wheel_event`)."""
        self._callbacks["wheel"].append(callback)

    def _on_message(self, _widget, content, _buffers) -> None:
        kind = content.get("kind") if isinstance(content, dict) else None
        for callback in self._callbacks.get(kind, ()) if isinstance(kind, str) else ():
            callback(content)
