"""Property test of the manifest parser: any JSON either loads into a valid collection or raises
ManifestError, never anything else (no TypeError/KeyError/OSError leaking from a malformed value)."""

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fewsam_jax.fewshot.collection import Collection, ManifestError, load_collection

# any JSON value (strings may hold NUL, surrogates, path separators...)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12) | st.sampled_from(["a.nii.gz", "a_seg.nii.gz", ".", "", "1", "axis"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
keys = st.sampled_from(["version", "classes", "axis", "support", "image", "labels", "slices", "axsi"])


def valid_entry():
    return st.fixed_dictionaries({
        "image": st.just("a.nii.gz"),
        "labels": st.sampled_from(["a_seg.nii.gz", "sub/../a_seg.nii.gz"]),
        "slices": st.lists(st.integers(0, 40), min_size=1, max_size=5, unique=True),
    })


valid_manifests = st.fixed_dictionaries(
    {
        "classes": st.dictionaries(st.integers(1, 300).map(str), st.text(min_size=1, max_size=6).filter(str.strip),
                                   min_size=1, max_size=3),
        "support": st.lists(valid_entry(), min_size=1, max_size=3),
    },
    optional={"axis": st.integers(0, 2), "version": st.just(1)},
).filter(lambda raw: len(set(raw["classes"].values())) == len(raw["classes"]))


@st.composite
def near_valid(draw):
    """A valid manifest with one to three edits: a value replaced by any JSON, a key dropped or added."""
    raw = draw(valid_manifests)
    for _ in range(draw(st.integers(1, 3))):
        container = raw
        support = raw.get("support")
        if isinstance(support, list) and support and draw(st.booleans()):
            container = support[draw(st.integers(0, len(support) - 1))]
            if not isinstance(container, dict):
                continue
            if draw(st.booleans()) and isinstance(container.get("slices"), list) and container["slices"]:
                slices = container["slices"]
                slices[draw(st.integers(0, len(slices) - 1))] = draw(json_values)
                continue
        action = draw(st.sampled_from(["replace", "drop", "add"]))
        key = draw(keys)
        if action == "replace" and container:
            container[draw(st.sampled_from(sorted(container)))] = draw(json_values)
        elif action == "drop" and container:
            container.pop(draw(st.sampled_from(sorted(container))))
        else:
            container[key] = draw(json_values)
    return raw


def check(folder: Path, raw) -> None:
    path = folder / "manifest.json"
    path.write_text(json.dumps(raw))
    try:
        collection = load_collection(path)
    except ManifestError as err:
        assert str(path) in str(err)
        return
    # it loaded: then it is a valid collection, with exactly typed values
    assert isinstance(collection, Collection)
    assert collection.axis in (0, 1, 2) and type(collection.axis) is int
    assert collection.classes and all(type(k) is int and k > 0 for k in collection.classes)
    assert all(isinstance(v, str) and v for v in collection.classes.values())
    assert collection.support
    for item in collection.support:
        assert item.image.exists() and item.labels.exists()
        assert item.slices and all(type(s) is int and s >= 0 for s in item.slices)
        assert len(set(item.slices)) == len(item.slices)
    assert set(raw) <= {"version", "classes", "axis", "support"}


# Bounded and reproducible: the same 200 examples on every run, no example database in the repository.
FAST = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "a.nii.gz").write_bytes(b"")  # the parser only checks that files exist
    (tmp_path / "a_seg.nii.gz").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    return tmp_path


@FAST
@given(raw=json_values)
def test_any_json_loads_or_raises_manifest_error(folder, raw):
    check(folder, raw)


@FAST
@given(raw=near_valid())
def test_near_valid_manifests_load_or_raise_manifest_error(folder, raw):
    check(folder, raw)


@FAST
@given(raw=valid_manifests)
def test_valid_manifests_load(folder, raw):
    collection = load_collection(_write(folder, raw))
    assert collection.axis == raw.get("axis", 2)
    assert [list(item.slices) for item in collection.support] == [e["slices"] for e in raw["support"]]


def _write(folder: Path, raw) -> Path:
    path = folder / "manifest.json"
    path.write_text(json.dumps(raw))
    return path
