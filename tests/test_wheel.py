"""The built wheel works outside the checkout: it installs into a fresh virtualenv, imports from there (not
from the source tree) and its `fewsam` command runs.

To stay fast and offline the virtualenv borrows the already installed dependencies through a .pth file
and the wheel is installed with --no-deps; what is tested is the package itself: its files, package
data (py.typed, the widget's JavaScript), entry point and the absence of checkout-relative imports.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*argv, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=600, **kwargs)
    assert done.returncode == 0, f"{argv}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("source")  # a copy: building writes build/ and *.egg-info beside the sources
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    for package in ("fewsam_jax", "converters"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", dist, source)
    (path,) = dist.glob("fewsam_jax-*.whl")
    return path


def test_wheel_contents(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "fewsam_jax/py.typed" in names and "fewsam_jax/widgets/canvas.js" in names
    assert "fewsam_jax/cohort.py" in names and "converters/convert.py" in names
    assert not [n for n in names if n.startswith("tests/")]
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    for extra in ("convert", "widgets", "demo", "test"):
        assert f"Provides-Extra: {extra}" in metadata
    assert "Requires-Dist: filelock" in metadata and "Requires-Dist: torch" in metadata  # torch only in an extra
    assert "Requires-Dist: torch>=2.1; extra == \"convert\"" in metadata


def test_wheel_installs_and_runs_outside_the_checkout(wheel, tmp_path):
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    (site / "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", "--no-index", wheel)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = run(python, "-c", "import fewsam_jax, fewsam_jax.cohort, fewsam_jax.export; print(fewsam_jax.__file__)",
                cwd=tmp_path, env=env).stdout.strip()
    assert Path(where).is_relative_to(site), where
    fewsam = venv / ("Scripts/fewsam.exe" if os.name == "nt" else "bin/fewsam")
    assert "segment" in run(fewsam, "--help", cwd=tmp_path, env=env).stdout
    assert "--num-parts" in run(fewsam, "segment", "--help", cwd=tmp_path, env=env).stdout
