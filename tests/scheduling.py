"""How ``make test`` spreads the suite over its xdist workers (``conftest.pytest_xdist_make_scheduler``).

Work units are test files, as with ``--dist loadfile`` (a module's fixtures and its kept embedding cache stay on
one worker), except that each notebook run is a unit of its own: the notebooks are the longest tests and share
nothing but the session's model and compilation cache. Units start longest first, by the seconds recorded in
``durations.json`` (a cold run's per-unit totals; units not listed start after, in collection order), so the last
unit to start is a short one and no worker idles while another finishes a long one (longest processing time
first). Refresh the table with ``python tests/scheduling.py PYTEST_LOG``, from a cold ``make test DURATIONS=0``.
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path

from xdist.scheduler import LoadFileScheduling

DURATIONS = Path(__file__).with_name("durations.json")
SPLIT_FILES = ("tests/test_notebooks.py",)  # every test of these files is a unit of its own


def unit_of(nodeid: str) -> str:
    """The work unit of a test id: its file, or the test itself in one of ``SPLIT_FILES``."""
    path = nodeid.split("::", 1)[0]
    return nodeid if path in SPLIT_FILES else path


def recorded_seconds() -> dict[str, float]:
    return json.loads(DURATIONS.read_text()) if DURATIONS.is_file() else {}


class LongestFirstScheduling(LoadFileScheduling):
    """``LoadFileScheduling`` with :func:`unit_of`'s units, handed out longest first."""

    def __init__(self, config, log=None):
        super().__init__(config, log)
        config.option.loadscopereorder = False  # keep the order the collection below is sorted in
        self.seconds = recorded_seconds()

    def _split_scope(self, nodeid: str) -> str:
        return unit_of(nodeid)

    def add_node_collection(self, node, collection):
        # every worker's collection sorted the same way, so xdist's check that they agree still holds
        first = {}
        for index, nodeid in enumerate(collection):
            first.setdefault(unit_of(nodeid), index)
        ordered = sorted(collection, key=lambda n: (-self.seconds.get(unit_of(n), 0.0), first[unit_of(n)]))
        super().add_node_collection(node, ordered)


def durations_from_log(text: str) -> dict[str, float]:
    """Per-unit seconds (setup + call + teardown) from pytest's ``--durations`` lines, longest first."""
    totals: dict[str, float] = defaultdict(float)
    for seconds, nodeid in re.findall(r"^([0-9.]+)s (?:setup|call|teardown)\s+(\S+)$", text, re.MULTILINE):
        totals[unit_of(nodeid)] += float(seconds)
    return {unit: round(s, 1) for unit, s in sorted(totals.items(), key=lambda kv: -kv[1])}


if __name__ == "__main__":
    table = durations_from_log(Path(sys.argv[1]).read_text())
    DURATIONS.write_text(json.dumps(table, indent=1) + "\n")
    print(f"{DURATIONS}: {len(table)} units, {sum(table.values()):.0f} s")
