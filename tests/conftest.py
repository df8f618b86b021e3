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

from fewsam_jax import home  # imports no jax: the settings below still come first

# Tests never read or write the user's cache. One folder serves every xdist worker of a run
# (conversion happens once per run, under a lock).
os.environ["FEWSAM_HOME"] = os.environ.get(
    "FEWSAM_TEST_HOME", str(Path(tempfile.gettempdir()) / f"fewsam-test-home-{os.getuid()}")
)
# The cache's storage is the library default unless a test asks for another (not the developer's choice).
os.environ.pop("FEWSAM_CACHE_STORAGE", None)
# A persistent XLA compilation cache beside it: programs compiled by one xdist worker (or an earlier run on
# this machine) load instead of compiling again. It keeps the programs the `fewsam` command keeps (home.py's
# minimum compile time), not only JAX's default of those over 1 s: the few-shot decoder's programs compile in
# under a second each, dozens of them per training run. No size bound: JAX's eviction needs an access-time file
# beside every entry, which entries written without a bound (by older checkouts sharing this folder) lack.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(os.environ["FEWSAM_HOME"]) / "jax-compilation-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", str(home.MIN_COMPILE_SECS))


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


@pytest.fixture(scope="session")
def kept_cache():
    """``kept_cache(name)``: the folder of an embedding cache that one test module owns and that later runs on this
    machine reuse: ``$FEWSAM_HOME/test-embeddings/NAME`` of the test home (a new folder is a miss, as a tmp_path
    cache is). One writer per name: an embedding depends on the batch it was encoded in (to a float16 ulp), and
    a few-shot decoder trained for a few hundred steps on those can end up elsewhere, so a cache that other tests
    fill in another order would make a test's inputs depend on which tests ran before. Resuming an entry after an
    interrupted run encodes the same batches."""
    def folder(name: str) -> Path:
        return home.fewsam_home() / "test-embeddings" / name

    return folder


def pytest_configure(config):
    if "jax" in sys.modules:  # imported before this file (by a plugin): the environment came too late
        import jax

        jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
        jax.config.update("jax_persistent_cache_min_compile_time_secs",
                          float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))


def pytest_xdist_make_scheduler(config, log):
    """``-n N --dist loadfile`` (``make test``): files as work units, each notebook its own, longest first
    (tests/scheduling.py). Any other ``--dist`` is xdist's own."""
    if config.getoption("dist") == "loadfile":
        from scheduling import LongestFirstScheduling

        return LongestFirstScheduling(config, log)
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Lets fixtures see whether the test body failed (the browser tests then save a screenshot)."""
    report = yield
    if report.when == "call":
        item.test_body_failed = report.failed
    return report
