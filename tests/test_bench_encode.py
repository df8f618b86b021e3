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


def test_flop_counts_see_through_the_blocked_attention(monkeypatch):
    """XLA counts a loop's body once; both counters must count every block of ``blocked_attention``."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from bench.encode import matmul_flops, unblocked_cost
    from fewsam_jax.modeling import image_encoder

    if jax.default_backend() != "cpu":
        pytest.skip("Lowered.cost_analysis() is the CPU benchmark's; PJRT plugin backends do not implement it")
    heads, n, d = 2, 64, 8
    monkeypatch.setattr(image_encoder, "SCORES_BLOCK_BYTES", 2 * heads * n * 4)  # two query rows a block

    class Attend(nnx.Module):
        def __call__(self, x):  # x (1, heads, n, d): self-attention of x on itself
            return image_encoder.blocked_attention(x, x, x)

    x = jnp.ones((1, heads, n, d), jnp.float32)
    expected = 2 * (2 * heads * n * n * d)  # scores and the weighted sum, 2 FLOPs a multiply-add
    assert matmul_flops(jax.make_jaxpr(Attend())(x).jaxpr) == expected
    assert expected <= unblocked_cost(Attend(), x)["flops"] < 1.5 * expected
    assert image_encoder.SCORES_BLOCK_BYTES == 2 * heads * n * 4  # restored
