"""Helper for tests/test_cache.py and tests/test_encode.py (also run as a subprocess): the seeded `tiny` model.

    python tests/embed_worker.py cache CACHE_DIR VOLUME.npy [...] [--batch-size B] [--sleep S]
        embed_volume each volume; prints one JSON line per volume: {"volume", "computed", "key"}.
        --sleep pauses after every encoded batch (so a test can kill it mid-volume).
    python tests/embed_worker.py encode SLICES.npy OUT.npy [--batch-size B]
        SliceEncoder over all local devices; saves the embeddings; prints {"devices", "batch_size", "traces"}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from flax import nnx

from fewsam_jax.cache import embed_volume
from fewsam_jax.config import tiny
from fewsam_jax.encode import SliceEncoder
from fewsam_jax.modeling.sam import Sam, build_image_encoder

WEIGHTS_ID = "tiny-seed0"


def tiny_model() -> Sam:
    """The `tiny` SAM (seed 0) with only its image encoder materialised: all that encoding needs.

    Its encoder equals ``Sam(tiny(), rngs=nnx.Rngs(0)).image_encoder`` (built first from the same
    stream); skipping the decoder's random init saves most of the start-up time on a CPU.
    """
    model = nnx.eval_shape(lambda: Sam(tiny(), rngs=nnx.Rngs(0), weights_id=WEIGHTS_ID))
    model.image_encoder = build_image_encoder(tiny().encoder, rngs=nnx.Rngs(0))
    return model


def start(*args, jax_cache: Path, **env) -> subprocess.Popen:
    """Runs this script with ``args`` in a subprocess (stdout/stderr piped, text).

    ``jax_cache``: a persistent XLA compilation cache shared by the test's workers (halves their
    start-up on a CPU); ``env``: more environment variables.
    """
    env = dict(
        os.environ,
        JAX_COMPILATION_CACHE_DIR=str(jax_cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        **env,
    )
    return subprocess.Popen(
        [sys.executable, __file__, *map(str, args)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def results(proc: subprocess.Popen, timeout: float = 300) -> list[dict]:
    """Waits for a worker; its JSON lines."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def slowed(encoder: SliceEncoder, seconds: float) -> SliceEncoder:
    batches = encoder.iter_batches

    def iter_batches(*args, **kwargs):
        for item in batches(*args, **kwargs):
            time.sleep(seconds)
            yield item

    encoder.iter_batches = iter_batches
    return encoder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("cache", "encode"))
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--sleep", type=float, default=0.0)
    args = parser.parse_args()
    encoder = SliceEncoder(tiny_model(), batch_size=args.batch_size)
    if args.mode == "encode":
        source, out = args.paths
        np.save(out, encoder.encode(np.load(source)))
        print(json.dumps({"devices": encoder.num_devices, "batch_size": encoder.batch_size, "traces": len(encoder.traced_shapes)}))
        return
    cache, *volumes = args.paths
    slowed(encoder, args.sleep)
    for volume in volumes:
        entry = embed_volume(volume, encoder, cache=cache, progress=False)
        print(json.dumps({"volume": volume, "computed": entry.computed.tolist(), "key": entry.key}), flush=True)


if __name__ == "__main__":
    main()
