"""Keyboard shortcuts and mouse-wheel slice scrolling of ``widgets.SliceAnnotator``, with no UI: which key
does what, and where a scroll lands.

=====================  ======================================
key                    action
=====================  ======================================
``b``                  brush
``e``                  eraser
``z``                  undo (on the current slice)
``y``                  redo
right / up arrow       next slice
left / down arrow      previous slice
mouse wheel            one slice per notch (down: next)
=====================  ======================================

Letters are case-insensitive; a key pressed with Ctrl, Alt or Meta (Cmd) is not a shortcut, so the
browser's and Jupyter's own (Ctrl+Z, Ctrl+S...) keep working. Keys reach the annotator while its image has
the keyboard focus (click it, or Tab to it); the wheel works over the image.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KEYS", "Shortcut", "key_action", "scrolled_index"]


@dataclass(frozen=True)
class Shortcut:
    """What a key does: ``kind`` "tool" (``value`` the tool's name), "undo", "redo" or "slice" (``value``
    the step, +1 or -1)."""

    kind: str
    value: str | int | None = None


KEYS: dict[str, Shortcut] = {
    "b": Shortcut("tool", "brush"),
    "e": Shortcut("tool", "eraser"),
    "z": Shortcut("undo"),
    "y": Shortcut("redo"),
    "ArrowRight": Shortcut("slice", 1),
    "ArrowUp": Shortcut("slice", 1),
    "ArrowLeft": Shortcut("slice", -1),
    "ArrowDown": Shortcut("slice", -1),
}


def key_action(key: str, *, ctrl: bool = False, alt: bool = False, meta: bool = False) -> Shortcut | None:
    """The shortcut of ``key`` (a browser ``KeyboardEvent.key``: "b", "B", "ArrowLeft"...), or None when it
    has none or is pressed with Ctrl, Alt or Meta."""
    if not isinstance(key, str):
        raise TypeError(f"key: expected a KeyboardEvent.key string, got {type(key).__name__}")
    if ctrl or alt or meta:
        return None
    return KEYS.get(key.lower() if len(key) == 1 else key)


def scrolled_index(index: int, steps: int, count: int) -> int:
    """Slice ``index`` moved by ``steps`` (negative: back), kept within 0..count-1."""
    if count < 1:
        raise ValueError(f"count: expected at least one slice, got {count}")
    return min(max(int(index) + int(steps), 0), count - 1)
