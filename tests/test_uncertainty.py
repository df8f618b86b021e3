"""Which slices to label next, without a widget: slice_uncertainty's definition and least_certain's picks."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from fewsam_jax.uncertainty import least_certain, slice_uncertainty

H90, H75, H20 = 0.4689956, 0.8112781, 0.7219281  # binary entropy in bits of p = 0.9, 0.75, 0.2


def test_slice_uncertainty_definition():
    # One class, 1 x 4 pixels per slice. Every predicted pixel has margin 2, so the volume's median
    # margin is 2 and a margin m counts as logit m * ln(9) / 2: margin 2 -> p = 0.9, 1 -> 0.75, 0 -> 0.5.
    logits = np.array([[2, 2, -6, -6],  # the structure alone (background margin 6: not near)
                       [2, 0, -6, -6],  # plus one pixel exactly at the threshold
                       [2, 2, -1, -6],  # plus one background pixel at margin 1
                       [2, -6, -6, -6]], np.float32)[:, None, None, :]  # a 1-pixel tip
    # Region sizes 2, 2, 3, 1 (median 2): the tip's mean entropy counts half.
    expected = [H90, (H90 + 1) / 2, (2 * H90 + H75) / 3, H90 / 2]
    np.testing.assert_allclose(slice_uncertainty(logits), expected, rtol=1e-5)
    for scale in (0.01, 30.0):  # only the margins relative to the volume's count
        np.testing.assert_allclose(slice_uncertainty(logits * scale), expected, rtol=1e-4)
    np.testing.assert_array_equal(slice_uncertainty(np.full((2, 1, 2, 2), -5.0)), [0, 0])  # nothing near


def test_slice_uncertainty_presence_counts_only_where_it_changes_labels():
    logits = np.full((2, 2, 1, 4), -6.0, np.float32)
    logits[:, 0, 0, :2] = 2.0  # class 0 on both slices
    logits[1, 1, 0, 2:] = 2.0  # class 1 only on slice 1
    # Class 1 at presence 0.5 (competes): regions of 2 and 4 pixels (median 3), all at margin 2.
    # Slice 0: nothing of class 1 to add, so its presence doubt does not count: H(0.9) * 2/3.
    # Slice 1: its presence decides 2 pixels: H(0.5) * 2/3 beats the pixel part H(0.9).
    presence = np.array([[1.0, 0.5], [1.0, 0.5]], np.float32)
    np.testing.assert_allclose(slice_uncertainty(logits, presence), [H90 * 2 / 3, 2 / 3], rtol=1e-5)
    # Class 1 judged absent on slice 1 (0.2): its pixels are background, but switching it on would
    # label 2 pixels; regions are 2 and 2 pixels.
    presence[1, 1] = 0.2
    np.testing.assert_allclose(slice_uncertainty(logits, presence), [H90, H20], rtol=1e-5)
    np.testing.assert_allclose(slice_uncertainty(None, presence), [1.0, H20], rtol=1e-5)
    with pytest.raises(ValueError, match="presence: expected probabilities"):
        slice_uncertainty(logits, presence * 2)
    with pytest.raises(ValueError, match="needs logits and/or presence"):
        slice_uncertainty(None)
    # presence threshold 0 (the default decoder's): presence decides nothing, so only the logits are scored
    np.testing.assert_allclose(slice_uncertainty(logits, presence, 0.0), slice_uncertainty(logits), rtol=1e-6)
    with pytest.raises(ValueError, match="logits when presence_threshold is 0"):
        slice_uncertainty(None, presence, 0.0)
    with pytest.raises(ValueError, match=r"presence_threshold: expected a probability in \[0, 1\)"):
        slice_uncertainty(logits, presence, 1.0)


def test_least_certain_spreads_picks_and_skips_certain_slices():
    scores = np.array([0.1, 0.9, 0.8, 0.0, 0.7, 0.7], np.float32)
    assert least_certain(scores, 3) == [1, 4]  # 2 and 0 neighbour 1, 5 neighbours 4 (tied, the lower first)
    assert least_certain(scores, 3, min_gap=1) == [1, 2, 4]
    assert least_certain(scores, 10, min_gap=1) == [1, 2, 4, 5, 0]  # the slice scoring 0 never
    assert least_certain(np.zeros(4)) == []
    with pytest.raises(ValueError, match="min_gap"):
        least_certain(scores, 3, min_gap=0)


def test_state_modules_import_without_ipywidgets():
    """The label editor, SAM assist and uncertainty scoring are library code: no widget toolkit needed."""
    code = ("import sys; sys.modules['ipywidgets'] = None; sys.modules['anywidget'] = None\n"
            "import fewsam_jax.label_editor, fewsam_jax.sam_assist, fewsam_jax.uncertainty, fewsam_jax.label_maps")
    subprocess.run([sys.executable, "-c", code], check=True)
