"""Plain helpers the test modules import (`from helpers import ...`; pyproject puts tests/ on sys.path).

Fixtures stay in conftest.py, which pytest loads by itself; nothing imports conftest.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, skipping the test with the reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs the shared data set: {path} is absent")
    return path


def embed_cli(capsys) -> Callable[..., str]:
    """``run(*argv)``: parses ``fewsam embed|cache ...`` (any str()-able arguments), runs it and returns
    what it printed."""
    from fewsam_jax.cli_embed import register

    parser = argparse.ArgumentParser(prog="fewsam")
    register(parser.add_subparsers(dest="command", required=True))

    def run(*argv) -> str:
        args = parser.parse_args([str(a) for a in argv])
        args.run(args)
        return capsys.readouterr().out

    return run
