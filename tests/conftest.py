"""Shared fixtures: an isolated FEWSAM_HOME, the tiny random SAM and the real LiteMedSAM.

Plain helpers live in helpers.py; test modules import those, never this file.
"""

from __future__ import annotations

import fcntl
import os
import sys
import tempfile
from pathlib import Path

import pytest

# Tests never read or write the user's cache. One folder serves every xdist worker of a run
# (conversion happens once per run, under a lock).
os.environ["FEWSAM_HOME"] = os.environ.get(
    "FEWSAM_TEST_HOME", str(Path(tempfile.gettempdir()) / f"fewsam-test-home-{os.getuid()}")
)
# The cache's storage is the library default unless a test asks for another (not the developer's choice).
os.environ.pop("FEWSAM_CACHE_STORAGE", None)
# A persistent XLA compilation cache beside it: programs compiled by one xdist worker (or an earlier run on
# this machine) load instead of compiling again. Only compilations over JAX's default minimum time are kept.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(os.environ["FEWSAM_HOME"]) / "jax-compilation-cache"))


@pytest.fixture(scope="session")
def tiny_sam():
    """The `tiny` SAM with random weights (seed 0)."""
    from flax import nnx

    from fewsam_jax.config import tiny
    from fewsam_jax.modeling.sam import Sam

    return Sam(tiny(), rngs=nnx.Rngs(0), weights_id="tiny-seed0")


@pytest.fixture(scope="session")
def litemedsam():
    """The real LiteMedSAM, converted once per test run into the test FEWSAM_HOME."""
    from fewsam_jax.weights import cached_model_dir, fewsam_home, load_model_dir

    home = fewsam_home()
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".convert.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        directory = cached_model_dir("litemedsam")
    return load_model_dir(directory)


def pytest_configure(config):
    if "jax" in sys.modules:  # imported before this file (by a plugin): the environment came too late
        import jax

        jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Lets fixtures see whether the test body failed (the browser tests then save a screenshot)."""
    report = yield
    if report.when == "call":
        item.test_body_failed = report.failed
    return report
