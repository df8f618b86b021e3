"""The finished units of a study, kept on disk so that an interrupted run resumes where it stopped (``--resume``).

A full hippocampus study with students takes hours on a CPU, more than one working session. With a
:class:`RunStore` every unit (the prompted baselines, each few-shot run with its student, each U-Net from
scratch, the fully supervised references) is written to ``reproduce_{name}[_quick].runs.json`` beside the report
as soon as it finishes; a rerun of the same command with ``--resume`` takes the units found there and computes
only the others. The file is kept once the report is written (the report's JSON holds every run, but not each
unit's overlay predictions): the same command with ``--resume`` and more ``--seeds`` or ``--shots`` then extends a
finished study without running its units again.

The file records what the study measures (its fingerprint: the task's split, the study's and the methods'
configs, the model, the JAX version and device kind), and a file written for another study is refused before any
compute, so runs of different settings never mix in one report. The seeds and counts are not part of it: a resumed
run may add some (each draw depends on its own seed and count only). Code changes that leave every config as it
was, and data files changed under the same names, are not detected: resume across such a change only when it does
not move the numbers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from fewsam_jax.outputs import write_text

RUNS_SUFFIX = ".runs.json"


def _plain(value: Any) -> Any:
    """``value`` as JSON would give it back (tuples as lists, numpy scalars and arrays as numbers and lists);
    infinities and NaN are kept (Python's JSON reads back its own ``Infinity``)."""
    return json.loads(json.dumps(value, default=_default))


def _default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return str(value)
    raise TypeError(f"not storable in a study's runs file: {type(value).__name__}")


def _first_difference(stored: Any, current: Any, path: str = "") -> str:
    """The first key path (``task.folds[0].test``) where two JSON values differ, with both values there."""
    if isinstance(stored, dict) and isinstance(current, dict):
        for key in sorted(set(stored) | set(current)):
            if stored.get(key) != current.get(key):
                return _first_difference(stored.get(key), current.get(key), f"{path}.{key}" if path else key)
    if isinstance(stored, list) and isinstance(current, list) and len(stored) == len(current):
        for index, (a, b) in enumerate(zip(stored, current)):
            if a != b:
                return _first_difference(a, b, f"{path}[{index}]")
    return f"{path or 'fingerprint'}: {stored!r} in the file, {current!r} now"


def read_runs(path: str | os.PathLike) -> dict[str, Any]:
    """The ``{"fingerprint", "units"}`` of the runs file at ``path``; ValueError naming it if it is not one."""
    try:
        stored = json.loads(Path(path).read_text())
        if not isinstance(stored["units"], dict) or not isinstance(stored["fingerprint"], dict):
            raise TypeError("units and fingerprint must be objects")
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a study's runs file ({err}); move it away to start over") from None
    return stored


class RunStore:
    """``{unit key: record}`` in the JSON file ``path`` for the study described by ``fingerprint`` (JSON-able).

    An existing file is read, and refused (ValueError naming the file and the first differing setting) when it was
    written for another fingerprint. :meth:`put` rewrites the file atomically after each unit, so a run killed at
    any moment leaves the units finished before it.
    """

    def __init__(self, path: str | os.PathLike, fingerprint: dict[str, Any]):
        self.path = Path(path)
        self.fingerprint = _plain(fingerprint)
        self.units: dict[str, Any] = {}
        if self.path.exists():
            stored = read_runs(self.path)
            if stored["fingerprint"] != self.fingerprint:
                difference = _first_difference(stored["fingerprint"], self.fingerprint)
                raise ValueError(f"{self.path}: written for another study ({difference}); run with the settings it "
                                 "was written for, or start over (--overwrite without --resume, or another --out)")
            self.units = stored["units"]

    def __contains__(self, key: str) -> bool:
        return key in self.units

    def get(self, key: str) -> Any:
        """The record kept under ``key`` (as JSON gives it back), or None."""
        return self.units.get(key)

    def put(self, key: str, record: Any) -> Any:
        """Keep ``record`` under ``key`` and rewrite the file; returns the record as :meth:`get` will give it."""
        self.units[key] = _plain(record)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text(self.path, json.dumps({"fingerprint": self.fingerprint, "units": self.units}) + "\n")
        return self.units[key]
