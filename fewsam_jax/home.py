"""``$FEWSAM_HOME``, and JAX's persistent compilation cache for fewsam_jax's entry points (no jax import here).

The compilation cache lets a second process load the XLA programs an earlier one compiled (the decoder pass,
resizes, the encoder) from disk instead of compiling them again. Where it lives, first match wins:

* ``JAX_COMPILATION_CACHE_DIR`` set in the environment: JAX's own setting, left as it is;
* ``FEWSAM_JAX_CACHE``: a folder, or ``0`` / ``off`` / ``false`` / ``no`` / empty to leave the cache off;
* otherwise ``$FEWSAM_HOME/jax_cache`` (default ``~/.cache/fewsam_jax/jax_cache``).

Programs that compile in at least :data:`MIN_COMPILE_SECS` are kept (JAX's default, 1 s, would skip most of
the decoder's helpers); the default folder is bounded at :data:`MAX_BYTES`, least recently used entries evicted
by JAX (a folder the user named is not bounded: JAX would evict other programs' entries in it).
Any ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` / ``JAX_COMPILATION_CACHE_MAX_SIZE`` in the environment
wins over these.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ENV = "FEWSAM_JAX_CACHE"
OFF = frozenset({"", "0", "off", "false", "no"})
MIN_COMPILE_SECS = 0.05
MAX_BYTES = 2**30

# JAX options; jax reads each from the environment variable of its upper-cased name when first imported
_DIR, _MIN_SECS, _MAX_SIZE = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
                              "jax_compilation_cache_max_size")


def fewsam_home() -> Path:
    """Cache root: ``$FEWSAM_HOME``, default ``~/.cache/fewsam_jax``."""
    return Path(os.environ.get("FEWSAM_HOME", Path.home() / ".cache" / "fewsam_jax")).expanduser()


def compilation_cache_dir() -> Path | None:
    """The folder the entry points keep compiled programs in (see the module docstring), or None when off."""
    if os.environ.get(_DIR.upper()):
        return Path(os.environ[_DIR.upper()]).expanduser()
    if ENV in os.environ:
        value = os.environ[ENV].strip()
        return None if value.lower() in OFF else Path(value).expanduser()
    return fewsam_home() / "jax_cache"


def enable_compilation_cache() -> Path | None:
    """Turn the persistent compilation cache on for this process (and the processes it starts); returns its
    folder, or None when ``FEWSAM_JAX_CACHE`` turns it off.

    Settings go into the environment, which JAX reads when it is first imported, so calling this does not
    import jax; when jax is already imported they are applied with ``jax.config.update`` too. Options the
    user set in the environment are kept. Call it before the first compilation: JAX opens the cache once.
    """
    folder = compilation_cache_dir()
    if folder is None:
        return None
    settings = {_DIR: str(folder), _MIN_SECS: str(MIN_COMPILE_SECS)}
    if folder == fewsam_home() / "jax_cache":  # a size bound evicts entries, whoever wrote them: fewsam's own
        settings[_MAX_SIZE] = str(MAX_BYTES)   # folder only, never one the user named (JAX's or FEWSAM_JAX_CACHE)
    for option, value in settings.items():
        os.environ.setdefault(option.upper(), value)
    if "jax" in sys.modules:
        import jax

        for option, cast in ((_DIR, str), (_MIN_SECS, float), (_MAX_SIZE, int)):
            if option.upper() in os.environ:
                jax.config.update(option, cast(os.environ[option.upper()]))
    return folder
