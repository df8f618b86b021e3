"""What the benchmark harnesses share: the machine description and the marked sections of RESULTS.md."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

from fewsam_jax.outputs import write_text

BENCH = Path(__file__).resolve().parent
RESULTS_MD = BENCH / "RESULTS.md"
RESULTS_DIR = BENCH / "results"


def machine_info() -> dict:
    """CPU model, core count, RAM (GiB), Python and the versions of the numeric packages."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    ram = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
               if line.startswith("MemTotal")) / 2**20
    versions = {name: metadata.version(name) for name in ("jax", "jaxlib", "flax", "torch", "numpy")}
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": round(ram, 1), "python": platform.python_version(),
            "versions": versions}


def write_section(path: Path, section: str, start: str, end: str) -> None:
    """Replace the section marked ``start``/``end`` of ``path`` (appending it, or creating the file),
    atomically; the other sections are kept as they are."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\nWritten by the scripts in `bench/`; see `bench/README.md`.\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + section.rstrip("\n") + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, text)


def save_report(name: str, report: dict, section: str, start: str, end: str, root: Path = BENCH) -> None:
    """A harness's results: ``root/results/NAME.json`` (atomically) and its marked section of ``root/RESULTS.md``."""
    import json

    (root / "results").mkdir(parents=True, exist_ok=True)
    write_text(root / "results" / f"{name}.json", json.dumps(report, indent=2))
    write_section(root / "RESULTS.md", section, start, end)
