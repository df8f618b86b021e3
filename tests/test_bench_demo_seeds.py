"""bench.demo_seeds without training: its variant syntax and its table (mean and spread over seeds)."""

import pytest

from bench.demo_seeds import markdown, parse_variant


def test_variants_parse_as_the_benchmarks_do():
    assert parse_variant("default") == ("default", {})
    assert parse_variant("nojit:image_jitter=0,image_frame=mask") == ("nojit", {"image_jitter": 0, "image_frame": "mask"})
    with pytest.raises(SystemExit, match="expected key=value"):
        parse_variant("bad:image_jitter")


def test_the_table_gives_each_variant_its_mean_and_spread_over_seeds():
    def row(seed, mean):
        return {"variant": "v", "overrides": {}, "seed": seed, "train_seconds": 1.0,
                "dice": {"white_matter": mean, "grey_matter": mean, "other_brain": mean, "mean": mean}}

    table = markdown({"date": "2026-12-01", "machine": {}, "rows": [row(1, 0.8), row(0, 0.4)]})
    lines = [line for line in table.splitlines() if line.startswith("| v |")]
    assert [line.split(" | ")[1] for line in lines] == ["0", "1"]  # sorted by seed
    assert "**0.600** ± 0.200 (2 seeds)" in lines[-1] and "**" not in lines[0]


def test_an_unknown_option_is_refused_before_the_model_loads(monkeypatch):
    import sys

    import fewsam_jax.weights
    from bench import demo_seeds

    monkeypatch.setattr(fewsam_jax.weights, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    monkeypatch.setattr(sys, "argv", ["demo_seeds", "--variant", "x:no_such_option=1"])
    with pytest.raises(SystemExit, match="--variant x: unknown option 'no_such_option'"):
        demo_seeds.main()
