"""Where fewsam_jax writes, and what it refuses to do there: one policy for every command and API.

Rules (see README, "Safety"):
  * A destination is checked before any compute: ``check_output_dir`` / ``check_output_file`` run at
    argument time in the CLI and first thing in every Python API that writes.
  * An output that is (or resolves to) one of the inputs, lies inside an input folder, or (a folder
    output) holds an input, is refused, with or without ``overwrite``.
  * An existing output is replaced only with ``overwrite=True`` (``--overwrite``). Even then a folder
    is replaced only when the library made it: it holds the marker file :data:`MARKER` of the same
    kind (or, for folders written before markers existed, exactly the files the library writes) and
    nothing else. Any other folder is never deleted. The files of ``fewsam segment``, ``fewsam evaluate``
    and ``--dicom-seg`` are replaced only when they are those commands' unchanged outputs (``replace=``,
    :mod:`fewsam_jax.provenance`); the low-level writers (``save_labels``, ``write_seg_nrrd``, ...) replace a
    non-input file when their caller passes ``overwrite=True``.
  * Folders are written into a staging folder beside the destination and renamed into place; files
    into a temporary file, flushed to disk and ``os.replace``-d. Failures while computing remove the
    staging folder or temporary file; a finished folder that cannot be put in place is kept, visible, as
    ``<name>.fewsam-kept.<hex>`` and the error names it. Staging folders left by killed runs (name
    prefix + marker, writer process gone) are removed by the next write into the same parent folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

MARKER = ".fewsam"  # JSON {"kind", "library", "created", "pid", "host"} in every folder the library writes
STAGING = ".fewsam-staging"  # name part of staging folders: .<name>.fewsam-staging.<hex>
RETIRED = ".fewsam-retired"  # a replaced folder between the two renames: .<name>.fewsam-retired.<hex>
TMP = ".fewsam-tmp."  # temporary files: .<name>.fewsam-tmp.<hex><suffix>
KEPT = ".fewsam-kept."  # a finished folder that could not be renamed into place: <name>.fewsam-kept.<hex>
STALE_SECONDS = 24 * 3600  # staging folders of another host are stale after this long

# files a library folder of each kind holds besides MARKER, and those a folder written before markers existed
# must all hold to be recognised (one user file of the same name, alone, is not enough)
LAYOUTS = {
    "model": ({"config.json", "report.json", "state"}, {"config.json", "state"}),
    "decoder": ({"fewshot.json", "state"}, {"fewshot.json", "state"}),
    "student": ({"student.json", "state"}, {"student.json", "state"}),
    "demo": ({"mni152.nii.gz", "mni152_labels.nii.gz", "manifest.json", "decoder", "prediction.nii.gz",
              "overlay.png", "scores.json"}, {"mni152.nii.gz", "mni152_labels.nii.gz", "manifest.json"}),
}


class FewSamError(Exception):
    """Base of the errors fewsam_jax raises about the user's files."""


class OutputError(FewSamError, ValueError):
    """An output destination cannot be written as asked."""


class OutputExistsError(OutputError, FileExistsError):
    """The output exists (pass ``overwrite=True`` / ``--overwrite``), or is not the library's to replace."""


class OutputIsInputError(OutputError):
    """The output is one of the command's inputs (or inside / around one)."""


class ChecksumError(FewSamError, ValueError):
    """A stored file's bytes differ from the checksum recorded when it was written."""


def _resolve(path: str | os.PathLike) -> Path:
    return Path(path).expanduser().resolve()


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _same_file(a: Path, b: Path) -> bool:
    """Two existing paths naming one file: a hard link, or another spelling on a case-insensitive disk."""
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def is_dicom_file(path: Path) -> bool:
    """A file named .dcm or starting with the DICOM preamble: what :func:`fewsam_jax.io.load_volume` reads as one
    file of a DICOM series (the whole series, from its folder). Reads the first 132 bytes unless the name ends in
    .dcm; an unreadable file raises OSError. (Here, at the bottom of the library, so that the output checks and the
    readers share it.)"""
    from pydicom.misc import is_dicom  # lazy: the CLI's start-up imports this module

    return path.name.lower().endswith(".dcm") or is_dicom(path)


def _is_dicom_file(path: Path) -> bool:
    """:func:`is_dicom_file` for the output checks: False for anything but a readable regular file."""
    try:
        return path.is_file() and is_dicom_file(path)
    except OSError:
        return False


def _check_not_input(out: Path, inputs: Iterable[str | os.PathLike | None], folder_output: bool) -> None:
    target = _resolve(out)
    for item in inputs:
        if item is None:
            continue
        source = _resolve(item)
        if target == source or _same_file(target, source):
            raise OutputIsInputError(f"{out} is also an input of this command; it would be overwritten. "
                                     "Choose another output path")
        if source.is_dir() and _within(target, source):
            raise OutputIsInputError(f"{out} lies inside the input folder {item}; choose an output outside it")
        if _within(target, source.parent) and _is_dicom_file(source):  # one file stands for its whole series
            raise OutputIsInputError(f"{out} lies inside the folder of the DICOM series {item} is part of; choose "
                                     "an output outside it")
        if folder_output and _within(source, target):
            raise OutputIsInputError(f"{out} holds the input {item}; writing the output folder would replace it. "
                                     "Choose a new folder")


def _check_parent(out: Path, create: bool) -> None:
    parent = out.absolute().parent
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{out}: {existing} is a file, not a folder")
    if not create and existing != parent:
        raise OutputError(f"{out}: folder {parent} does not exist")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{out}: folder {existing} is not writable")


def read_marker(folder: str | os.PathLike) -> dict | None:
    """The marker of a folder the library wrote, or None."""
    with contextlib.suppress(OSError, ValueError):
        data = json.loads((Path(folder) / MARKER).read_text())
        if isinstance(data, dict) and data.get("library") == "fewsam_jax":
            return data
    return None


def _marker(kind: str) -> dict:
    return {"kind": kind, "library": "fewsam_jax", "pid": os.getpid(), "host": socket.gethostname(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def write_marker(folder: str | os.PathLike, kind: str) -> None:
    write_text(Path(folder) / MARKER, json.dumps(_marker(kind), indent=2))


def library_folder_problem(folder: str | os.PathLike, kind: str) -> str | None:
    """Why ``folder`` is not a ``kind`` folder the library may replace (None: it may)."""
    folder = Path(folder)
    names = {p.name for p in folder.iterdir()
             if not (p.name.startswith(".") and any(tag in p.name for tag in (STAGING, RETIRED, TMP)))}
    if not names:
        return None  # an empty folder holds nothing to lose
    marker = read_marker(folder)
    layout, required = LAYOUTS.get(kind, (set(), {MARKER}))

    def shown(items) -> str:
        items = sorted(items)
        return ", ".join(items[:5]) + (", ..." if len(items) > 5 else "")

    if marker is None and not (names <= layout and required <= names):
        return f"it is not a fewsam_jax {kind} folder (no {MARKER} marker; it holds {shown(names)})"
    if marker is None and kind == "model" and not _legacy_model_config(folder / "config.json"):
        # config.json + state/ is a common checkpoint layout: only fewsam_jax's own config makes it ours
        return f"it is not a fewsam_jax model folder (no {MARKER} marker; its config.json is not one fewsam_jax wrote)"
    if marker is not None and marker.get("kind") != kind:
        return f"it is a fewsam_jax {marker.get('kind')} folder, not a {kind} folder"
    foreign = names - layout - {MARKER}
    if foreign:
        return f"it holds files fewsam_jax did not write ({shown(foreign)})"
    return None


def _legacy_model_config(path: Path) -> bool:
    """Whether ``path`` is the config.json of a model folder written before markers existed (preset and weights id)."""
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text())
        return isinstance(data, dict) and {"model", "weights_id"} <= set(data)
    return False


def check_output_dir(out: str | os.PathLike, kind: str, *, overwrite: bool = False,
                     inputs: Iterable[str | os.PathLike | None] = (), in_place: bool = False) -> Path:
    """Check that folder ``out`` may be (re)written with a ``kind`` folder; raise OutputError if not.

    ``in_place``: the caller writes into ``out`` itself (the demo) rather than renaming a folder into place
    (:func:`write_dir`), so ``out`` may be a mount point. Missing parent folders are created when writing.
    Returns ``out`` as given.
    """
    out = Path(out).expanduser()
    _check_not_input(out, inputs, folder_output=True)
    if out.is_symlink():
        raise OutputError(f"{out} is a symbolic link; give the folder's real path")
    if out.exists():
        if not out.is_dir():
            raise OutputExistsError(f"{out} exists and is a file, not a {kind} folder; choose a new folder path")
        if not in_place and os.path.ismount(out):  # write_dir renames a folder into place: not onto a mount
            raise OutputError(f"{out} is a mount point; fewsam_jax writes a new folder and renames it into place, "
                              f"which a mount point does not allow. Give a new folder inside it, e.g. {out / kind}")
        problem = library_folder_problem(out, kind)
        if problem is not None:
            raise OutputExistsError(f"{out} exists and {problem}; fewsam_jax never deletes a folder it did not "
                                    f"write, even with --overwrite. Choose a new folder path")
        if any(out.iterdir()) and not overwrite:
            raise OutputExistsError(f"{out} exists (a {kind} folder); pass --overwrite (overwrite=True) "
                                    "to replace it, or choose a new folder path")
    _check_parent(out, create=True)
    return out


def check_output_file(out: str | os.PathLike, *, overwrite: bool = False,
                      inputs: Iterable[str | os.PathLike | None] = (), suffixes: tuple[str, ...] = (),
                      replace: Callable[[Path], None] | None = None) -> Path:
    """Check that file ``out`` may be written; raise OutputError if not. The folder must exist. ``replace``,
    given, is called on an existing ``out`` that ``overwrite`` would replace and raises when it may not be
    (the commands pass :func:`fewsam_jax.provenance.check_own_file`: their own unchanged outputs only)."""
    out = Path(out).expanduser()
    _check_not_input(out, inputs, folder_output=False)
    if out.is_dir():
        raise OutputExistsError(f"{out} is a folder; give a file path")
    if suffixes and not out.name.lower().endswith(suffixes):
        raise OutputError(f"{out}: unsupported output type; expected {', '.join(suffixes)}")
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise OutputExistsError(f"{out} exists; pass --overwrite (overwrite=True) to replace it, "
                                    "or choose another path")
        if not out.is_file():
            raise OutputError(f"{out} exists and is not a regular file; choose another path")
        if replace is not None:
            replace(out)
    _check_parent(out, create=False)
    return out


def _alive(pid: int) -> bool:
    if pid <= 0 or os.name == "nt":
        return True  # not a pid we wrote, or Windows (where os.kill terminates): keep the folder
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_staging(parent: str | os.PathLike) -> list[Path]:
    """Delete staging / retired folders in ``parent`` left by killed writers; returns what was removed.

    Only folders named ``.<name>.fewsam-staging.<hex>`` (or ``-retired``) holding the library's marker
    whose writer process is gone (same host) or that are older than a day (another host).
    """
    removed = []
    parent = Path(parent)
    if not parent.is_dir():
        return removed
    for path in parent.iterdir():
        if not path.name.startswith(".") or (STAGING not in path.name and RETIRED not in path.name):
            continue
        if not path.is_dir() or path.is_symlink():
            continue
        marker = read_marker(path)
        if marker is None:
            continue
        if marker.get("host") == socket.gethostname():
            stale = not _alive(int(marker.get("pid", -1)))
        else:
            stale = time.time() - path.stat().st_mtime > STALE_SECONDS
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def kept_path(out: str | os.PathLike) -> Path:
    """A new ``<out>.fewsam-kept.<hex>`` beside ``out``: where a finished folder goes when ``out`` can't take it."""
    out = Path(out).expanduser().absolute()
    return out.parent / f"{out.name}{KEPT}{secrets.token_hex(4)}"


def save_finished(save: Callable[..., Any], out: str | os.PathLike, kind: str, *, overwrite: bool = False) -> Path:
    """``save(out, overwrite=overwrite)`` for a result that took long to compute (a trained decoder or student),
    whose ``kind`` folder ``out`` was checked before the compute: when ``out`` may no longer be written (a file or
    folder appeared there meanwhile, e.g. a second run with the same ``--out``), the result is saved into a new
    :func:`kept_path` folder instead and the OutputError names it, so the compute is not lost. Returns ``out``."""
    try:
        check_output_dir(out, kind, overwrite=overwrite)  # its inputs were checked with it before the compute
    except OutputError as err:
        kept = kept_path(out)
        save(kept)
        raise type(err)(f"{err}; the finished {kind} folder is kept as {kept}") from None
    save(out, overwrite=overwrite)
    return Path(out)


@contextlib.contextmanager
def write_dir(out: str | os.PathLike, kind: str, *, overwrite: bool = False,
              inputs: Iterable[str | os.PathLike | None] = ()) -> Iterator[Path]:
    """Yield a staging folder (holding the marker) that becomes ``out`` once the block completes.

    ``out`` is checked (:func:`check_output_dir`) before and again at the end; an existing ``out``
    is moved aside, the staging folder renamed into place, then the old one deleted.
    """
    inputs = list(inputs)
    out = check_output_dir(out, kind, overwrite=overwrite, inputs=inputs)
    target = out.absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target.parent)
    staging = target.parent / f".{target.name}{STAGING}.{secrets.token_hex(4)}"
    staging.mkdir()
    retired, finished, kept = None, False, None
    try:
        write_marker(staging, kind)
        yield staging
        finished = True
        check_output_dir(out, kind, overwrite=overwrite, inputs=inputs)  # nothing appeared meanwhile
        write_marker(staging, kind)  # refreshed: the folder's creation time
        if target.exists():
            retired = target.parent / f".{target.name}{RETIRED}.{secrets.token_hex(4)}"
            target.rename(retired)
        staging.rename(target)
    except Exception as err:
        if not finished:
            raise
        # the result is complete: keep it where the user sees it rather than lose hours of compute
        kept = kept_path(target)
        try:
            staging.rename(kept)
        except OSError:
            kept = staging
        where = f"kept as {kept}" if kept != staging else (
            f"left in the hidden folder {kept}; move it before anything else is written into {target.parent}, "
            "which would remove it")
        error = type(err) if isinstance(err, OutputError) else OutputError
        raise error(f"{out} could not be put in place ({err}); the finished {kind} folder is {where}") from err
    finally:
        if kept != staging:
            shutil.rmtree(staging, ignore_errors=True)
        if retired is not None:
            if target.exists():
                shutil.rmtree(retired, ignore_errors=True)
            else:  # the final rename failed: put the old folder back
                with contextlib.suppress(OSError):
                    retired.rename(target)


def default_file_mode() -> int:
    """The mode ``open()`` gives a new file under the process umask (0o666 less the umask): outputs are as
    readable to colleagues as the user's other files (0o644 under the usual umask 022)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def write_file(out: str | os.PathLike, *, overwrite: bool = True, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``out`` (same suffix) that replaces ``out`` once the block completes.

    With ``overwrite=False`` an ``out`` that appeared meanwhile is not replaced (OutputExistsError).
    The file gets ``mode``, by default the umask's (:func:`default_file_mode`).
    """
    mode = default_file_mode() if mode is None else mode
    out = Path(out)
    suffix = "".join(out.suffixes[-2:]) if out.name.lower().endswith(".nii.gz") else out.suffix
    tmp = out.with_name(f".{out.name}{TMP}{secrets.token_hex(4)}{suffix}")
    try:
        yield tmp
        if mode is not None and tmp.exists():
            os.chmod(tmp, mode)
        if tmp.is_file():  # on disk before the rename: a crash never leaves a short file under the final name
            _flush_to_disk(tmp)
        if not overwrite and (out.exists() or out.is_symlink()):
            raise OutputExistsError(f"{out} appeared while it was being computed; nothing written. "
                                    "Pass --overwrite (overwrite=True) to replace it")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def _flush_to_disk(path: Path) -> None:
    with contextlib.suppress(OSError), open(path, "rb") as handle:
        os.fsync(handle.fileno())


def write_text(out: str | os.PathLike, text: str, *, overwrite: bool = True) -> Path:
    """Write ``text`` to ``out`` atomically."""
    with write_file(out, overwrite=overwrite) as tmp:
        tmp.write_text(text)
    return Path(out)


def read_json_object(path: Path, error: type[Exception], remedy: str) -> dict:
    """The JSON object stored at ``path`` (a metadata file the library wrote); ``error`` naming the file and
    ``remedy`` when it is not valid JSON or not an object."""
    try:
        meta = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise error(f"{path} is not valid JSON ({err}); {remedy}") from None
    if not isinstance(meta, dict):
        raise error(f"{path}: expected a JSON object; {remedy}")
    return meta


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def tree_checksums(folder: str | os.PathLike, under: str = "state") -> dict[str, str]:
    """{relative path: SHA-256} of every file under ``folder/under``."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): sha256_file(p)
            for p in sorted((folder / under).rglob("*")) if p.is_file()}


def verify_checksums(folder: str | os.PathLike, checksums: dict[str, str], described_in: str) -> None:
    """Raise ChecksumError naming the first file of ``folder`` whose SHA-256 differs from ``checksums``."""
    folder = Path(folder)
    if not isinstance(checksums, dict) or not all(isinstance(v, str) for v in checksums.values()):
        raise ChecksumError(f"{folder / described_in}: 'checksums' must map file names to SHA-256 strings")
    for name, expected in sorted(checksums.items()):
        path = folder / name
        if ".." in Path(name).parts or not path.is_file():
            raise ChecksumError(f"{path} is missing (listed in {described_in}); the folder is incomplete, "
                                "write it again")
        if sha256_file(path) != expected:
            raise ChecksumError(f"{path} is corrupted: its SHA-256 differs from the one recorded in "
                                f"{described_in} when it was written; write the folder again")
