"""``bench.startup``'s report section (the timed runs themselves are measured, not tested)."""

from bench.startup import END, START, section, tree_env


def _report(trees):
    run = {"wall_s": 1.5, "load": [0.5, 0.75]}
    fast = {"wall_s": 0.5, "load": [0.5, 0.75]}
    phases = {"seconds": {"imports": 1.0, "load": 0.5, "segment_first": 3.0, "segment_second": 2.0, "decode": 1.9},
              "slices": 36, "load": [1.0, 1.25]}
    return {"date": "2026-11-30", "image": "img.nii.gz", "decoder": "dec", "baseline_label": "abc123",
            "machine": {"cpu": "CPU", "cores": 2, "versions": {"jax": "0.0"}},
            "help": {t: [{"wall_s": 0.3, "load": [0.5, 0.5]}, {"wall_s": 0.2, "load": [0.5, 0.6]}] for t in trees},
            "segment": {t: {"off": [run], "cold": [run], "warm": [run, run]} if t == "baseline" else
                        {"off": [fast], "cold": [fast], "warm": [fast, fast]} for t in trees},
            "phases": {t: phases for t in trees},
            "jax_cache_after_cold": {t: {"files": 3, "mb": 0.1} for t in trees},
            "trees": {t: f"/trees/{t}" for t in trees}}


def test_section_lists_every_run_with_its_load():
    text = section(_report(["current"]))
    assert text.startswith(START) and text.rstrip().endswith(END)
    assert "| `fewsam --help` (best of 5) | 0.20 | 0.50 / 0.60 |" in text
    assert text.count("| 0.50 | 0.50 / 0.75 |") == 4 and "(process 3)" in text
    assert "3 files, 0.1 MB (current)" in text
    assert "| decoder alone on the cached embeddings | 1.90 |" in text and "(36 slices" in text


def test_section_compares_baseline_and_current_run_in_turn():
    text = section(_report(["baseline", "current"]))
    assert "| run | before (baseline) s | after (this tree) s | speed-up | load before / after |" in text
    assert text.count("| 1.50 | 0.50 | 3.00x | 0.50 / 0.75 ; 0.50 / 0.75 |") == 4
    assert '"before" is `/trees/baseline` (abc123)' in text
    assert "| phase | baseline | current |" in text


def test_tree_env_puts_the_tree_first():
    env = tree_env({"PYTHONPATH": "/other", "X": "1"}, "/tree")
    assert env["PYTHONPATH"].split(":") == ["/tree", "/other"] and env["X"] == "1"
