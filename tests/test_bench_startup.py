"""``bench.startup``'s report section (the timed runs themselves are measured, not tested)."""

from bench.startup import END, START, section


def test_section_lists_every_run_with_its_load():
    run = {"wall_s": 1.5, "load": [0.5, 0.75]}
    report = {"date": "2026-11-30", "image": "img.nii.gz", "decoder": "dec",
              "machine": {"cpu": "CPU", "cores": 2, "versions": {"jax": "0.0"}},
              "help": [{"wall_s": 0.3, "load": [0.5, 0.5]}, {"wall_s": 0.2, "load": [0.5, 0.6]}],
              "segment": {"off": [run], "cold": [run], "warm": [run, run]},
              "jax_cache_after_cold": {"files": 3, "mb": 0.1}}
    text = section(report)
    assert text.startswith(START) and text.rstrip().endswith(END)
    assert "| `fewsam --help` (best of 5) | 0.20 | 0.50 / 0.60 |" in text
    assert text.count("| 1.50 | 0.50 / 0.75 |") == 4 and "(process 3)" in text
    assert "3 files, 0.1 MB" in text
