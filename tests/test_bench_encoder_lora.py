"""bench.encoder_lora runs on the library's option (``DecoderConfig.encoder_lora_rank``): one row on the shared
hippocampus data with a small random staged SAM (the harness itself loads LiteMedSAM)."""

from __future__ import annotations

import argparse
import math

import pytest
from helpers import shared_data, tiny_staged_sam

from bench import encoder_lora
from fewsam_jax.cache import CachedEmbeddings, EmbeddingCache
from fewsam_jax.preprocess import Intensity


@pytest.mark.slow  # an end-to-end training run on six shared volumes
def test_a_row_trains_and_segments_with_the_library_option(tmp_path):
    data = shared_data("hippocampus")
    args = argparse.Namespace(data=data.resolve(), steps=2, volumes=1, cache=tmp_path / "cache")
    row = encoder_lora.run_row(args, tiny_staged_sam(), Intensity.parse("percentile"), 2, ("qkv", "proj"), "A",
                               seed=0, shots=2)
    assert (row["rank"], row["targets"], row["volumes"], row["steps"]) == (2, ["qkv", "proj"], 1, 2)
    assert len(row["dice"]) == 2 and all(0 <= d <= 1 for d in row["dice"]) and math.isfinite(row["loss_last"])
    entries = [CachedEmbeddings(p) for p in EmbeddingCache(args.cache).entries()]
    assert len(entries) == 6  # the draw's 5 support volumes and the validation volume, each with stage inputs
    assert all(e.has_stage_inputs and e.stage_done()[e.done()].all() for e in entries)


def test_targets_are_checked_by_the_library(monkeypatch, tmp_path):
    (tmp_path / "imagesTr").mkdir()
    monkeypatch.setattr("sys.argv", ["bench.encoder_lora", "--targets", "qkv,query", "--data", str(tmp_path)])
    with pytest.raises(SystemExit, match="--targets: encoder_lora_targets: expected distinct names"):
        encoder_lora.main()
