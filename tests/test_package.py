"""The package's import contract."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("jax", "flax", "optax", "orbax", "zarr", "scipy", "nibabel", "torch")


def _modules_after(statement: str) -> set[str]:
    """The top-level packages in ``sys.modules`` of a fresh interpreter (run in the checkout) after ``statement``."""
    code = f"{statement}\nimport sys; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True)
    return set(result.stdout.split())


def test_import_does_not_pull_torch():
    code = "import fewsam_jax, sys; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("statement", ["import fewsam_jax", "import fewsam_jax.cli",
                                       "import fewsam_jax.cli; fewsam_jax.cli.build_parser()"])
def test_entry_points_import_nothing_heavy(statement):
    """``fewsam --help`` stays fast: the package and the command line load jax & co. only when a command runs."""
    loaded = _modules_after(statement) & set(HEAVY)
    assert not loaded, f"{statement!r} imported {sorted(loaded)}"


def test_public_api_is_exported():
    import fewsam_jax

    missing = [name for name in fewsam_jax.__all__ if not hasattr(fewsam_jax, name)]
    assert not missing
    assert sorted(fewsam_jax.__all__) == sorted(fewsam_jax._EXPORTS)
    assert set(fewsam_jax.__all__) <= set(dir(fewsam_jax))


def test_exports_are_the_modules_objects():
    """A lazily exported name is the very object its module defines (and a submodule is the module)."""
    import fewsam_jax
    import fewsam_jax.fewshot
    import fewsam_jax.metrics

    assert fewsam_jax.FewShotSegmenter is fewsam_jax.fewshot.FewShotSegmenter
    assert fewsam_jax.metrics is sys.modules["fewsam_jax.metrics"]
    with pytest.raises(AttributeError, match="no attribute 'not_exported'"):
        fewsam_jax.not_exported  # noqa: B018


def test_submodules_are_reachable_from_the_package():
    """Earlier eager imports made ``fewsam_jax.config.tiny`` & co. work after ``import fewsam_jax``; they still do."""
    code = ("import fewsam_jax, sys; assert 'fewsam_jax.config' not in sys.modules; "
            "assert fewsam_jax.config.tiny is sys.modules['fewsam_jax.config'].tiny")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
