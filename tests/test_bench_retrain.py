"""``bench.retrain``'s report section and argument checks (the timed trainings are measured, not tested)."""

import pytest

from bench.retrain import END, START, main, render


def report(trees):
    rows = [{"labelled": n, "seconds": s, "load": [1.0, 1.5]} for n, s in ((3, 60.0), (4, 20.0), (5, 21.0))]
    return {"date": "2026-12-03T10:00:00+00:00", "machine": {"cpu": "CPU", "cores": 2, "versions": {"jax": "0.0"}},
            "steps": 20, "trees": {name: f"/trees/{name}" for name in trees}, "baseline_label": "old commit",
            "results": {name: {"rows": rows} for name in trees}}


def test_section_gives_each_training_before_and_after():
    text = render(report(["baseline", "current"]))
    assert text.startswith(START) and text.rstrip().endswith(END)
    assert "20 steps, trained three times in one process" in text and "`/trees/baseline` (old commit)" in text
    assert "| 4 | 20.0 | 20.0 | 1.0 / 1.5 ; 1.0 / 1.5 |" in text
    alone = render(report(["current"]))
    assert "Before" not in alone and "| 3 | 60.0 | 1.0 / 1.5 |" in alone


@pytest.mark.parametrize("argv, message", [(["--steps", "0"], "--steps"), (["--baseline", "/nonexistent"], "checkout")])
def test_bad_arguments_are_named_before_any_training(argv, message, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err
