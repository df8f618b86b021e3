"""Plain helpers the test modules import (`from helpers import ...`; pyproject puts tests/ on sys.path).

Fixtures stay in conftest.py, which pytest loads by itself; nothing imports conftest.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, skipping the test with the reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs the shared data set: {path} is absent")
    return path
