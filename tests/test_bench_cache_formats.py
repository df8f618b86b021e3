"""``bench.cache_formats``: its Dice helper and report section (the measurement itself needs the shared data and a
filled cache; it is run, not tested)."""

import numpy as np

from bench.cache_formats import END, START, dice, section


def test_dice_of_masks_and_of_two_empty_ones():
    a = np.zeros((4, 4), bool)
    assert dice(a, a) == 1.0
    b = a.copy()
    b[:2] = True
    c = a.copy()
    c[1:3] = True
    assert dice(b, c) == 0.5 and dice(b, a) == 0.0


def test_section_has_a_row_per_data_set_and_storage():
    row = {"mb_per_slice": 2.0, "slices": 10, "encode_ms": 1.0, "decode_ms": 0.5, "read_ms": 3.0,
           "max_abs_error": 1e-3, "rms_error_over_std": 0.01, "box_items": 7, "box_dice_vs_float16": 1.0,
           "box_items_differing": 0, "box_dice_vs_truth": 0.7}
    few = {"fewshot_dice_vs_float16": 0.999, "fewshot_min_dice_vs_float16": 0.99, "fewshot_dice_vs_truth": 0.6,
           "segment_s_per_slice": 0.2}
    rows = {"hippocampus float16": {"data": "hippocampus", "storage": "float16", **row, **few},
            "hippocampus q8": {"data": "hippocampus", "storage": "q8", **row, **few, "mb_per_slice": 0.4},
            "ct float16": {"data": "ct", "storage": "float16", **row},
            "ct q4": {"data": "ct", "storage": "q4", **row, "mb_per_slice": 1.0}}
    report = {"machine": {"cpu": "CPU", "cores": 2}, "date": "2026-11-30", "load": [1.0, 2.0],
              "volumes": {"hippocampus": ["a"], "ct": ["b"]}, "decoder": "dec",
              "command": "python -m bench.cache_formats", "rows": rows}
    text = section(report)
    assert text.startswith(START) and text.rstrip().endswith(END)
    assert "| hippocampus | q8 | 0.400 | 5.00x |" in text and "| ct | q4 | 1.000 | 2.00x |" in text
    assert "0.9990 (0.9900)" in text and "(0 / 7)" in text and text.rstrip().splitlines()[-2].endswith("| - | - | - |")


def test_section_reports_the_stage_inputs_error_when_every_row_has_it():
    row = {"mb_per_slice": 4.6, "slices": 10, "encode_ms": 1.0, "decode_ms": 0.5, "read_ms": 3.0,
           "max_abs_error": 1e-3, "rms_error_over_std": 0.01, "box_items": 7, "box_dice_vs_float16": 1.0,
           "box_items_differing": 0, "box_dice_vs_truth": 0.7}
    rows = {"hippocampus float16": {"data": "hippocampus", "storage": "float16", **row, "stage_rms_error_over_std": 0},
            "hippocampus q5": {"data": "hippocampus", "storage": "q5", **row, "mb_per_slice": 1.0,
                               "stage_rms_error_over_std": 0.0456}}
    report = {"machine": {"cpu": "CPU", "cores": 2}, "date": "2026-12-05", "load": [1.0, 2.0], "axis": 0,
              "volumes": {"hippocampus": ["a"]}, "decoder": None, "command": "python -m bench.cache_formats",
              "rows": rows}
    text = section(report)
    assert "stage inputs RMS err / std" in text and "| q5 | 1.000 | 4.60x |" in text and "| 0.0100 | 0.0456 |" in text
    assert "sagittal slices" in text and "with their last-stage inputs" in text
