"""The xdist scheduling of ``make test`` (tests/scheduling.py): units and their order."""

from __future__ import annotations

import argparse

from scheduling import LongestFirstScheduling, durations_from_log, unit_of


def test_notebooks_are_units_of_their_own_and_other_files_stay_whole():
    assert unit_of("tests/test_cache.py::test_resume_after_kill") == "tests/test_cache.py"
    notebook = "tests/test_notebooks.py::test_notebook_runs_headless[01_quickstart]"
    assert unit_of(notebook) == notebook


def test_units_start_longest_first_and_unknown_ones_keep_their_order(monkeypatch):
    monkeypatch.setattr("scheduling.recorded_seconds", lambda: {"tests/b.py": 10.0, "tests/c.py": 30.0})
    config = argparse.Namespace(option=argparse.Namespace(loadscopereorder=True), pluginmanager=None)
    scheduler = LongestFirstScheduling.__new__(LongestFirstScheduling)
    received = []
    monkeypatch.setattr("xdist.scheduler.LoadScopeScheduling.__init__", lambda self, config, log=None: None)
    monkeypatch.setattr("xdist.scheduler.LoadScopeScheduling.add_node_collection",
                        lambda self, node, collection: received.append(list(collection)))
    LongestFirstScheduling.__init__(scheduler, config)
    assert config.option.loadscopereorder is False  # xdist would re-sort by test count
    tests = ["tests/a.py::x", "tests/b.py::y", "tests/d.py::z", "tests/c.py::u", "tests/b.py::v", "tests/c.py::w"]
    scheduler.add_node_collection("node", tests)
    assert received == [["tests/c.py::u", "tests/c.py::w", "tests/b.py::y", "tests/b.py::v", "tests/a.py::x",
                         "tests/d.py::z"]]
    assert scheduler._split_scope("tests/c.py::u") == "tests/c.py"


def test_durations_sum_per_unit_from_a_pytest_log():
    log = """============ slowest durations ============
12.50s call     tests/test_cache.py::test_one
2.00s setup    tests/test_cache.py::test_one
300.00s call     tests/test_notebooks.py::test_notebook_runs_headless[01_quickstart]
0.50s teardown tests/test_io.py::test_two
"""
    assert durations_from_log(log) == {
        "tests/test_notebooks.py::test_notebook_runs_headless[01_quickstart]": 300.0, "tests/test_cache.py": 14.5,
        "tests/test_io.py": 0.5}
