"""The tutorial notebooks: 02 and 04 stored clean, 01 and 03 with the outputs of a full run
(``notebooks/store_outputs.py``), and each runs headless top to bottom with ``FEWSAM_FAST=1`` (in memory: the
stored files are never written).

A cell that raises fails the test with that cell's traceback (nbclient's ``CellExecutionError``).
The kernels inherit the test ``FEWSAM_HOME`` (models and embeddings shared with the other tests) and
a persistent JAX compilation cache inside it, so later notebooks reuse earlier compilations.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from notebooks.store_outputs import NOTE_PREFIX, WIDGET_VIEW, WITH_OUTPUTS

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = ("01_quickstart", "02_annotate_your_volume", "03_reproduce_paper", "04_convert_sam")
CELL_TIMEOUT_S = 900
NEEDS_LITEMEDSAM = {"01_quickstart", "02_annotate_your_volume"}


def read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)


def code_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def test_the_tutorials_are_all_there():
    assert sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_stored_as_intended_and_only_calls_the_package(name):
    nb = read(name)
    nbformat.validate(nb)
    cells = code_cells(nb)
    if name in WITH_OUTPUTS:  # a full run, top to bottom, every cell once, no errors, no widget state
        remedy = f"store it with `python notebooks/store_outputs.py {name}`"
        assert [cell.execution_count for cell in cells] == list(range(1, len(cells) + 1)), f"{name}: {remedy}"
        assert "widgets" not in nb.metadata, f"{name}: holds widget state; {remedy}"
        for cell in cells:
            assert all(out.output_type != "error" for out in cell.outputs), f"{name}: a cell failed; {remedy}"
            assert all(WIDGET_VIEW not in out.get("data", {}) for out in cell.outputs), f"{name}: {remedy}"
        assert any(cell.outputs for cell in cells[1:]), f"{name}: no outputs; {remedy}"
        last_note = [c for c in nb.cells if c.cell_type == "markdown"][-1].source
        assert NOTE_PREFIX in last_note, f"{name}: the run is not recorded; {remedy}"
    for cell in cells:
        if name not in WITH_OUTPUTS:
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: stored with outputs; clear them"
        # library logic belongs in the package: no function or class definitions in a tutorial
        assert not re.search(r"^\s*(def|class)\s", cell.source, re.MULTILINE), f"{name}: defines code:\n{cell.source}"
    setup = cells[0].source
    assert '"fewsam-jax"' in setup and "WHEEL" in setup and "%pip install" in setup and "OWNER" not in setup
    assert 'find_spec("fewsam_jax") is None' in setup
    assert any('os.environ.get("FEWSAM_FAST") == "1"' in cell.source for cell in cells)


@pytest.fixture(scope="module")
def jax_compilation_cache():
    """A persistent compilation cache shared by the notebook kernels of this run."""
    path = Path(os.environ["FEWSAM_HOME"]) / "jax-compilation-cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_headless(name, monkeypatch, request, jax_compilation_cache):
    if name in NEEDS_LITEMEDSAM:
        request.getfixturevalue("litemedsam")  # converted once per run, under the conftest lock
    monkeypatch.setenv("FEWSAM_FAST", "1")
    monkeypatch.setenv("FEWSAM_RESULTS", str(ROOT / "bench" / "results"))
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(jax_compilation_cache))
    for variable in ("FEWSAM_VOLUME", "SAM_CHECKPOINT"):  # the built-in examples, whatever the shell says
        monkeypatch.delenv(variable, raising=False)
    stored = hashlib.sha256((NOTEBOOK_DIR / f"{name}.ipynb").read_bytes()).hexdigest()
    nb = read(name)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"{name}-") as workdir:  # 04 writes ~0.75 GB: gone afterwards
        client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                resources={"metadata": {"path": workdir}})
        client.execute()  # raises CellExecutionError, with the cell and its traceback, if a cell fails
    print(f"{name}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    assert hashlib.sha256((NOTEBOOK_DIR / f"{name}.ipynb").read_bytes()).hexdigest() == stored, \
        f"{name}: the headless run wrote into the stored notebook"
