"""``bench.cohort_embed``'s report section and volume choice (the timed passes are measured, not tested)."""

import pytest

from bench.cohort_embed import END, HIPPOCAMPUS, START, pick_volumes, section


def test_section_gives_each_pass_as_a_share_of_the_bare_encoder():
    def run(rate):
        return {"seconds": 10.0, "slices": 20, "slices_per_s": rate, "load": [1.0, 1.5]}

    report = {"date": "2026-12-01", "machine": {"cpu": "CPU", "cores": 2, "versions": {"jax": "0.0"}},
              "volumes": ["a", "b"], "slices": 20, "batch_size": 4,
              "passes": {"bare": [run(2.0)], "ahead": [run(1.9)], "in_turn": [run(1.8)]},
              "cli": {"wall_s": 30.0, "encoded": 20, "embed_s": 11.0, "slices_per_s": 1.818, "load": [1.0, 2.0]}}
    text = section(report)
    assert text.startswith(START) and text.rstrip().endswith(END)
    assert "| bare encoder (slices in memory; no reading, no cache) | 2.000 | 100.0% |" in text
    assert "(`fewsam embed` default) | 1.900 | 95.0% |" in text and "| 1.800 | 90.0% |" in text
    assert "1-minute load 1.00-2.00" in text and "30.0 s wall, of which 11.0 s" in text


@pytest.mark.shared_data
@pytest.mark.skipif(not HIPPOCAMPUS.exists(), reason=f"needs ../shared/data ({HIPPOCAMPUS} not found)")
def test_volumes_are_spread_and_stable():
    chosen = pick_volumes(3)
    assert chosen == pick_volumes(3) and len(set(chosen)) == 3 and chosen == sorted(chosen)
