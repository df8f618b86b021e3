"""``fewsam_jax.home``: where $FEWSAM_HOME and the persistent compilation cache are, and that a second process
loads what the first compiled."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fewsam_jax import home

ROOT = Path(__file__).resolve().parents[1]
JAX_VARS = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "JAX_COMPILATION_CACHE_MAX_SIZE")

# A child process: the entry points' set-up, then the tiny SAM's image encoder, jitted; prints JAX's cache events.
CHILD = """
import json
import fewsam_jax
folder = fewsam_jax.enable_compilation_cache()
import jax, jax.numpy as jnp
from flax import nnx
events = {}
jax.monitoring.register_event_listener(lambda name, **kw: events.__setitem__(name, events.get(name, 0) + 1))
from fewsam_jax.config import tiny
from fewsam_jax.modeling.sam import Sam, encode_images
sam = Sam(tiny(), rngs=nnx.Rngs(0))
encode_images(sam.image_encoder, jnp.zeros((1, 128, 128, 3))).block_until_ready()
print(json.dumps({"folder": str(folder), "hits": events.get("/jax/compilation_cache/cache_hits", 0),
                  "misses": events.get("/jax/compilation_cache/cache_misses", 0)}))
"""


@pytest.fixture
def clean_env(tmp_path):
    """No JAX cache settings inherited (conftest sets one for the suite), FEWSAM_HOME in tmp_path; the
    environment and jax's cache options (when jax is imported) are restored afterwards."""
    saved_env = dict(os.environ)
    options = [name.lower() for name in JAX_VARS]
    saved_options = {name: getattr(sys.modules["jax"].config, name) for name in options} if "jax" in sys.modules else {}
    for name in (*JAX_VARS, home.ENV):
        os.environ.pop(name, None)
    os.environ["FEWSAM_HOME"] = str(tmp_path / "home")
    yield tmp_path
    os.environ.clear()
    os.environ.update(saved_env)
    for name, value in saved_options.items():
        sys.modules["jax"].config.update(name, value)


def test_cache_folder_follows_fewsam_home_and_can_be_moved_or_turned_off(clean_env, monkeypatch):
    assert home.compilation_cache_dir() == clean_env / "home" / "jax_cache"
    monkeypatch.setenv(home.ENV, str(clean_env / "elsewhere"))
    assert home.compilation_cache_dir() == clean_env / "elsewhere"
    for off in ("0", "off", "OFF", "false", "no", ""):
        monkeypatch.setenv(home.ENV, off)
        assert home.compilation_cache_dir() is None
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(clean_env / "jax_own"))  # JAX's own setting wins
    assert home.compilation_cache_dir() == clean_env / "jax_own"


def test_enable_sets_the_environment_and_keeps_what_the_user_set(clean_env, monkeypatch):
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "2.5")
    folder = home.enable_compilation_cache()
    assert folder == clean_env / "home" / "jax_cache"
    assert os.environ["JAX_COMPILATION_CACHE_DIR"] == str(folder)
    assert os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "2.5"
    assert os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] == str(home.MAX_BYTES)
    if "jax" in sys.modules:
        import jax

        assert jax.config.jax_compilation_cache_dir == str(folder)
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 2.5


def test_a_cache_folder_the_user_set_for_jax_gets_no_size_bound(clean_env, monkeypatch):
    """JAX evicts entries to keep a bounded folder under its size: never in a folder other programs share."""
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(clean_env / "shared_jax_cache"))
    assert home.enable_compilation_cache() == clean_env / "shared_jax_cache"
    assert "JAX_COMPILATION_CACHE_MAX_SIZE" not in os.environ
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")  # nor a folder named for fewsam, e.g. ~/.cache/jax
    monkeypatch.setenv(home.ENV, str(clean_env / "jax"))
    assert home.enable_compilation_cache() == clean_env / "jax"
    assert "JAX_COMPILATION_CACHE_MAX_SIZE" not in os.environ


def test_enable_does_nothing_when_turned_off(clean_env, monkeypatch):
    monkeypatch.setenv(home.ENV, "off")
    assert home.enable_compilation_cache() is None
    assert not any(name in os.environ for name in JAX_VARS)


def _run_child(env: dict[str, str]) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, env=env, capture_output=True, text=True,
                            check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_second_process_loads_what_the_first_compiled(clean_env):
    env = {k: v for k, v in os.environ.items() if k not in (*JAX_VARS, home.ENV)}
    env["FEWSAM_HOME"] = str(clean_env / "home")
    folder = clean_env / "home" / "jax_cache"

    first = _run_child(env)
    assert first["folder"] == str(folder)
    written = sorted(p.name for p in folder.iterdir())
    assert first["misses"] > 0 and first["hits"] == 0
    assert written, "the first process wrote nothing to the compilation cache"

    second = _run_child(env)
    assert second["hits"] > 0, f"no cache hit in the second process: {second}"
    assert second["misses"] < first["misses"]

    env[home.ENV] = "off"  # and with the cache off, nothing is read
    off = _run_child(env)
    assert off["folder"] == "None" and off["hits"] == 0
