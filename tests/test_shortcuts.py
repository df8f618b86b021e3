"""The annotator's keyboard shortcuts and wheel scrolling, as plain state (no UI)."""

import pytest

from fewsam_jax.shortcuts import KEYS, Shortcut, key_action, scrolled_index


def test_keys_map_to_tools_history_and_slices():
    assert key_action("b") == Shortcut("tool", "brush") == key_action("B")
    assert key_action("e") == Shortcut("tool", "eraser")
    assert key_action("z") == Shortcut("undo") and key_action("y") == Shortcut("redo")
    assert key_action("ArrowRight") == key_action("ArrowUp") == Shortcut("slice", 1)
    assert key_action("ArrowLeft") == key_action("ArrowDown") == Shortcut("slice", -1)
    assert set(KEYS) == {"b", "e", "z", "y", "ArrowRight", "ArrowUp", "ArrowLeft", "ArrowDown"}


def test_modified_and_unknown_keys_are_not_shortcuts():
    assert key_action("z", ctrl=True) is None  # Ctrl+Z stays the browser's / Jupyter's
    assert key_action("b", meta=True) is None and key_action("ArrowLeft", alt=True) is None
    assert key_action("q") is None and key_action("Enter") is None and key_action("arrowleft") is None
    with pytest.raises(TypeError, match="key: expected a KeyboardEvent.key string"):
        key_action(None)


def test_scrolling_stops_at_the_ends():
    assert scrolled_index(3, 1, 10) == 4 and scrolled_index(3, -2, 10) == 1
    assert scrolled_index(0, -1, 10) == 0 and scrolled_index(9, 5, 10) == 9
    with pytest.raises(ValueError, match="count: expected at least one slice"):
        scrolled_index(0, 1, 0)
