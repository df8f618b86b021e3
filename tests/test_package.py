"""The package's import contract."""

import subprocess
import sys


def test_import_does_not_pull_torch():
    code = "import fewsam_jax, sys; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_public_api_is_exported():
    import fewsam_jax

    missing = [name for name in fewsam_jax.__all__ if not hasattr(fewsam_jax, name)]
    assert not missing
