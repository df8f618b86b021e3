"""Run tutorial notebooks for real (no ``FEWSAM_FAST``) and store their outputs in the .ipynb files.

    PYTHONPATH=$PWD .venv/bin/python notebooks/store_outputs.py 01_quickstart 03_reproduce_paper

Notebooks 01 and 03 are kept with the outputs of such a run (``tests/test_notebooks.py`` checks their form);
02 and 04 are stored clean. Each notebook runs top to bottom with nbclient in a temporary folder (what it
writes, e.g. 01's ``quickstart/``, is gone afterwards), with ``FEWSAM_CHECKOUT`` set to this checkout.
Then :func:`tidy` keeps widget views as their text/plain fallback (no widget state: it would hold the
volumes) and drops per-cell timing metadata, and :func:`note_run` records the run's date, wall time and
load average in the notebook's last markdown cell. A notebook is written only when every cell ran.
"""

from __future__ import annotations

import argparse
import datetime
import html
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
WITH_OUTPUTS = ("01_quickstart", "03_reproduce_paper")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
NOTE_PREFIX = "*Outputs stored from a full run"
CELL_TIMEOUT_S = 3600


def tidy(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """``nb`` with widget views reduced to text/plain, no saved widget state and no per-cell execution
    timestamps (in place; returned for chaining). A progress bar's text is its final state (tqdm's
    "name: 100% 95/95 [07:40<00:00, 4.18s/slice]"), other widgets keep their text/plain fallback."""
    state = nb.metadata.pop("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        for output in cell.get("outputs", []):
            if WIDGET_VIEW in output.get("data", {}):
                model_id = output["data"][WIDGET_VIEW].get("model_id")
                text = progress_text(state, model_id) or output["data"].get("text/plain", "(a widget)")
                output["data"] = {"text/plain": text}
    return nb


def progress_text(state: dict, model_id: str | None) -> str | None:
    """The final text of a progress bar (an HBox holding a progress model and HTML labels, as tqdm's
    notebook bar) in the saved widget ``state``; None for any other widget."""
    children = [state.get(ref.removeprefix("IPY_MODEL_"), {})
                for ref in state.get(model_id, {}).get("state", {}).get("children", [])]
    if not any(child.get("model_name", "").endswith("ProgressModel") for child in children):
        return None
    labels = [html.unescape(child["state"].get("value", "")) for child in children
              if child.get("model_name") == "HTMLModel"]
    return " ".join(" ".join(label.split()) for label in labels if label.strip())  # tqdm pads with U+2007


def note_run(nb: nbformat.NotebookNode, started: datetime.datetime, wall_s: float, load_before: str,
             load_after: str) -> nbformat.NotebookNode:
    """Append (or replace) the run's record at the end of the last markdown cell: date (UTC), wall time, the
    1/5/15-minute load averages before and after, and the CPU count."""
    cell = next(c for c in reversed(nb.cells) if c.cell_type == "markdown")
    kept = [p for p in cell.source.split("\n\n") if not p.startswith(NOTE_PREFIX)]
    minutes, seconds = divmod(round(wall_s), 60)
    kept.append(f"{NOTE_PREFIX} (not `FEWSAM_FAST`) on {started:%Y-%m-%d %H:%M} UTC: {minutes} min {seconds} s wall "
                f"on {os.cpu_count()} CPU cores ({platform.machine()}), load average {load_before} before and "
                f"{load_after} after. `notebooks/store_outputs.py` refreshes them.*")
    cell.source = "\n\n".join(kept)
    return nb


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run(name: str) -> Path:
    """Execute ``notebooks/<name>.ipynb`` for real and write it back with its outputs."""
    path = NOTEBOOK_DIR / f"{name}.ipynb"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such notebook; expected one of {', '.join(WITH_OUTPUTS)}")
    nb = nbformat.read(path, as_version=4)
    started, load_before, clock = datetime.datetime.now(datetime.UTC), loadavg(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"{name}-") as workdir:
        NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                       resources={"metadata": {"path": workdir}}).execute()
    wall_s, load_after = time.perf_counter() - clock, loadavg()
    note_run(tidy(nb), started, wall_s, load_before, load_after)
    nbformat.validate(nb)
    tmp = path.with_name(f".{path.name}.tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, path)
    print(f"{path}: {wall_s:.0f} s, load {load_before} -> {load_after}")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", default=list(WITH_OUTPUTS), help="notebooks (default: 01 and 03)")
    args = parser.parse_args()
    if os.environ.get("FEWSAM_FAST"):
        sys.exit("FEWSAM_FAST is set: the stored outputs are those of a full run; unset it")
    os.environ.setdefault("FEWSAM_CHECKOUT", str(ROOT))
    for name in args.names:
        run(name)


if __name__ == "__main__":
    main()
