"""Messages and progress: the ``fewsam_jax`` logger and progress bars that suit a terminal and a log file.

The library never prints; it logs to ``logging.getLogger("fewsam_jax")`` (child loggers per module) and
leaves handlers to the application. The ``fewsam`` command attaches one to stderr (:func:`configure`:
``--quiet`` warnings only, ``--verbose`` debug).

:func:`tqdm` is a drop-in for ``tqdm.auto.tqdm``: on a terminal (or in Jupyter) it is tqdm's bar; when
stderr is not a terminal (a batch job's log) it writes a few plain lines instead of hundreds of
carriage-return updates: one at the start, one per quarter and one at the end.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Callable, Iterable, Iterator

LOGGER = logging.getLogger("fewsam_jax")
_HANDLER_NAME = "fewsam-cli"


def configure(verbosity: int = 0, stream=None) -> None:
    """Send ``fewsam_jax`` log records to ``stream`` (default stderr): ``verbosity`` -1 warnings and errors
    only (``--quiet``), 0 progress messages (INFO), 1 debug details (``--verbose``). Idempotent."""
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    for handler in list(LOGGER.handlers):
        if handler.get_name() == _HANDLER_NAME:
            LOGGER.removeHandler(handler)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s" if verbosity > 0 else "%(message)s"))
    LOGGER.addHandler(handler)
    LOGGER.setLevel(level)
    LOGGER.propagate = False


def progress_allowed() -> bool:
    """False when the ``fewsam_jax`` logger itself is set above INFO (``--quiet``): bars stay hidden then."""
    return LOGGER.level == logging.NOTSET or LOGGER.level <= logging.INFO


def _interactive(stream) -> bool:
    if "ipykernel" in sys.modules:
        return True
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class _LineProgress:
    """tqdm's interface, written as a few log lines (start, each quarter, end) for non-terminals."""

    def __init__(self, iterable: Iterable | None = None, desc: str | None = None, total: int | None = None,
                 unit: str = "it", **_: Any):
        self.iterable = iterable
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.total, self.desc, self.unit, self.n = total, desc or "progress", unit, 0
        self._started = time.perf_counter()
        self._next_quarter = 1
        self._closed = False
        self.postfix = ""
        LOGGER.info("%s: started (%s %s)", self.desc, total if total is not None else "?", unit)

    def __iter__(self) -> Iterator:
        for item in self.iterable:  # type: ignore[union-attr]
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> _LineProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        """One line when the count crosses a quarter of the total (one however many it crosses at once); none
        at the total, which the closing line reports."""
        self.n += n
        if not self.total:
            return
        crossed = False
        while self._next_quarter < 4 and self.n * 4 >= self._next_quarter * self.total:
            self._next_quarter, crossed = self._next_quarter + 1, True
        if crossed and self.n < self.total:
            LOGGER.info("%s: %d/%d %s (%d%%, %.0f s)%s", self.desc, self.n, self.total, self.unit,
                        100 * self.n // self.total, time.perf_counter() - self._started, self.postfix)

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = " " + ", ".join(f"{k}={v}" for k, v in items.items()) if items else ""

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or self.desc

    def refresh(self) -> None:
        pass

    def write(self, text: str) -> None:
        LOGGER.info("%s", text)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            LOGGER.info("%s: done, %d %s in %.1f s%s", self.desc, self.n, self.unit,
                        time.perf_counter() - self._started, self.postfix)


def tqdm(iterable: Iterable | None = None, *args: Any, disable: bool = False, file=None, **kwargs: Any):
    """``tqdm.auto.tqdm(iterable, ...)`` on a terminal or in Jupyter; a few log lines otherwise;
    nothing with ``disable=True`` or a ``--quiet`` logger."""
    from tqdm.auto import tqdm as bar

    disable = disable or not progress_allowed()
    stream = file if file is not None else sys.stderr
    if disable or _interactive(stream):
        return bar(iterable, *args, disable=disable, file=file, **kwargs)
    return _LineProgress(iterable, *args, **kwargs)


def run_command(run: Callable[[Any], None], args: Any, prog: str) -> int:
    """A command-line entry's exit code: 0 after ``run(args)``, or 2 with ``prog: error: message`` on stderr
    when an input or output is refused (a library error, a bad value, a file problem), not a traceback."""
    from fewsam_jax.outputs import FewSamError

    try:
        run(args)
    except (FewSamError, ValueError, OSError, RuntimeError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    return 0
