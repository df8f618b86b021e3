"""The README's widget screenshots are not stale: ``docs/screenshots.json`` (written by ``screenshots.py``)
matches today's default configs, base model, drawing scripts and PNGs. Fast and without a browser (not marked
``browser``), so ``make test-fast`` runs it."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import screenshot_record as record

from fewsam_jax.fewshot.config import DecoderConfig, TrainConfig


def test_the_screenshots_are_drawn_from_the_current_defaults():
    problems = record.staleness()
    assert not problems, f"screenshots are stale: {record.REMEDY}\n" + "\n".join(problems)


def test_the_readme_shows_the_recorded_screenshots():
    readme = (record.PROJECT / "README.md").read_text()
    shown = set(re.findall(r"\]\(docs/(widget_[^)]+\.png)\)", readme))
    assert shown == set(record.IMAGES), f"README shows {sorted(shown)}; the record covers {sorted(record.IMAGES)}"
    for name in shown:
        assert (record.DOCS / name).is_file(), f"README shows docs/{name}, which does not exist"


@pytest.fixture
def copies(tmp_path):
    """(docs, project): copies of docs/ and of the drawing files, with a fresh record of those PNGs and files
    (so these tests hold even while the real docs/ is stale)."""
    docs, project = tmp_path / "docs", tmp_path / "project"
    shutil.copytree(record.DOCS, docs)
    for name in record.DRAWING_FILES:
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(record.PROJECT / name, project / name)
    record.write_record(docs, project)
    assert record.staleness(docs, project) == []
    return docs, project


def test_the_record_holds_the_defaults_and_the_pictures(copies):
    docs, project = copies
    written = json.loads((docs / "screenshots.json").read_text())
    assert written["inputs"]["training"]["steps"] == TrainConfig().steps
    assert written["inputs"]["model"] == "litemedsam"
    assert written["inputs_sha256"] == record.inputs_hash(record.current_inputs(project))
    assert sorted(written["images"]) == sorted(record.IMAGES)


def test_a_changed_default_config_makes_them_stale(copies, monkeypatch):
    monkeypatch.setattr(DecoderConfig, "default", classmethod(lambda cls: cls(slice_tokens=5)))
    problems = record.staleness(*copies)
    assert problems == ["what they were drawn from changed: decoder.slice_tokens: recorded 4, now 5"]


def test_a_changed_drawing_script_makes_them_stale(copies):
    docs, project = copies
    script = project / "tests/browser/screenshots.py"
    script.write_text(script.read_text() + "\n# changed\n")
    problems = record.staleness(docs, project)
    assert len(problems) == 1 and "files.tests/browser/screenshots.py" in problems[0], problems


@pytest.mark.parametrize("change", ["edit", "remove"])
def test_a_changed_or_removed_picture_makes_them_stale(copies, change):
    docs, project = copies
    image = docs / "widget_viewer.png"
    if change == "edit":
        image.write_bytes(image.read_bytes() + b"\0")
    else:
        image.unlink()
    expected = "differs from the recorded picture" if change == "edit" else "is missing"
    assert record.staleness(docs, project) == [f"{image} {expected}"]


def test_no_record_is_stale(copies):
    docs, project = copies
    (docs / "screenshots.json").unlink()
    assert record.staleness(docs, project) == [f"{docs / 'screenshots.json'} is missing"]
