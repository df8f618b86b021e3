"""Messages, progress and portability: the fewsam_jax logger, -q/-v on every command, progress that writes a
few lines into a log file, no fcntl at import (Windows), and outputs that follow the user's umask."""

from __future__ import annotations

import argparse
import io
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fewsam_jax import cli, logs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def log_stream():
    stream = io.StringIO()
    logs.configure(0, stream=stream)
    yield stream
    logs.LOGGER.handlers.clear()
    logs.LOGGER.setLevel(logging.NOTSET)
    logs.LOGGER.propagate = True


def test_progress_writes_a_few_lines_when_not_a_terminal(log_stream):
    total = 0
    for i in logs.tqdm(range(200), desc="encode", unit="slice"):
        total += i
    with logs.tqdm(total=50, desc="train", unit="step") as bar:
        for _ in range(50):
            bar.update(1)
            bar.set_postfix(loss=0.5)
    lines = log_stream.getvalue().splitlines()
    assert total == sum(range(200)) and "\r" not in log_stream.getvalue()
    assert 6 <= len(lines) <= 10, lines
    assert lines[0] == "encode: started (200 slice)" and lines[4].startswith("encode: done, 200 slice")
    assert any("train: 25/50 step (50%" in line and "loss=0.5" in line for line in lines)


def test_progress_in_big_steps_writes_each_count_once(log_stream):
    with logs.tqdm(total=3, desc="embed", unit="slice") as bar:  # a whole volume in one batch
        bar.update(3)
    with logs.tqdm(total=8, desc="encode", unit="slice") as bar:  # 2 of 8 then the rest: one quarter line
        bar.update(2)
        bar.update(6)
    lines = log_stream.getvalue().splitlines()
    assert [line.split(" (")[0].split(" in ")[0] for line in lines] == [
        "embed: started", "embed: done, 3 slice", "encode: started", "encode: 2/8 slice", "encode: done, 8 slice"]


def test_quiet_hides_progress_and_info(log_stream):
    logs.configure(-1, stream=log_stream)
    for _ in logs.tqdm(range(10), desc="encode"):
        pass
    logging.getLogger("fewsam_jax.cohort").info("hidden")
    logging.getLogger("fewsam_jax.cohort").warning("shown")
    assert log_stream.getvalue() == "shown\n"


def _leaf_parsers(parser, name="fewsam"):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield name, parser
        return
    for sub_name, sub in subs[0].choices.items():
        yield from _leaf_parsers(sub, f"{name} {sub_name}")


def test_every_command_takes_quiet_and_verbose_and_documents_its_options():
    parser = cli.build_parser()
    cli._add_verbosity(parser)
    leaves = dict(_leaf_parsers(parser))
    assert {"fewsam segment", "fewsam evaluate", "fewsam train", "fewsam embed", "fewsam cache info"} <= set(leaves)
    for name, leaf in leaves.items():
        if name == "fewsam reproduce":  # every argument goes to bench.reproduce's own parser
            continue
        options = leaf._option_string_actions
        assert "--quiet" in options and "--verbose" in options, name
        for action in leaf._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings[0]} has no help"


def test_cli_verbosity_flags(tmp_path, capsys):
    assert cli.main(["cache", "info", "--cache", str(tmp_path / "c"), "-q"]) == 0
    assert "empty" in capsys.readouterr().out
    assert cli.main(["cache", "info", "--cache", str(tmp_path / "c"), "-v"]) == 0


def test_import_needs_no_fcntl():
    """Windows has no fcntl: `import fewsam_jax` must not need it."""
    code = "import sys; sys.modules['fcntl'] = None; import fewsam_jax, fewsam_jax.cache, fewsam_jax.cli; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_outputs_follow_the_umask(tmp_path):
    import nibabel as nib

    from fewsam_jax.fewshot import Collection, SupportItem, save_collection
    from fewsam_jax.io import load_volume, save_labels
    from fewsam_jax.outputs import write_dir, write_text

    old = os.umask(0o022)
    try:
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.float32), np.eye(4)), tmp_path / "img.nii.gz")
        written = [write_text(tmp_path / "a.json", "{}"),
                   save_labels(np.zeros((4, 4, 2), np.uint8), load_volume(tmp_path / "img.nii.gz"), tmp_path / "l.nii.gz"),
                   save_collection(Collection({1: "a"}, 2, (SupportItem(tmp_path / "img.nii.gz", tmp_path / "l.nii.gz",
                                                                        (0,)),)), tmp_path / "sub" / "m.json")]
        with write_dir(tmp_path / "decoder", "decoder") as staging:
            (staging / "fewshot.json").write_text("{}")
        for path in written:
            assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
        assert stat.S_IMODE((tmp_path / "decoder").stat().st_mode) == 0o755
        os.umask(0o002)  # a group-shared JupyterHub
        assert stat.S_IMODE(write_text(tmp_path / "b.json", "{}").stat().st_mode) == 0o664
    finally:
        os.umask(old)
