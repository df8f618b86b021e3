"""Smoke test of ``python -m bench.encode --quick``: LiteMedSAM, batch 1, one rep, both frameworks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEADER = ("| model | batch | framework | s/image | images/s | speed-up | peak RSS MB | GFLOP/s "
          "| % of sgemm peak | compile s | first call s |")


@pytest.mark.slow
def test_quick_benchmark_writes_its_section(tmp_path):
    results = tmp_path / "RESULTS.md"
    # Another benchmark's section and a stale encode section: only the latter may change.
    results.write_text("# Benchmarks\n\n<!-- other:start -->\nkeep me\n<!-- other:end -->\n\n"
                       "<!-- encode:start -->\nstale\n<!-- encode:end -->\n\ntail\n")
    subprocess.run([sys.executable, "-m", "bench.encode", "--quick", "--out", str(results)], check=True,
                   timeout=600, cwd=ROOT)

    text = results.read_text()
    assert "keep me" in text and text.rstrip().endswith("tail") and "stale" not in text
    assert text.count("<!-- encode:start -->") == text.count("<!-- encode:end -->") == 1
    assert HEADER in text
    rows = [line for line in text.splitlines() if line.startswith("| litemedsam | 1 |")]
    assert [row.split("|")[3].strip() for row in rows] == ["torch", "jax", "torch", "jax"]  # main + CPU tables
    report = json.loads((tmp_path / "results" / "encode.json").read_text())
    assert [r["framework"] for r in report["runs"]] == ["torch", "jax"]
    assert all(r["s_per_image"] > 0 and r["rss_peak_mb"] > 0 for r in report["runs"])
    assert report["agreement"][0][2] <= 1e-4
