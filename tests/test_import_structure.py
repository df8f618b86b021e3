"""Which way the project's imports go, read from the source (no module is imported).

Every ``import`` statement of every module in ``fewsam_jax/``, ``converters/`` and ``bench/`` counts,
lazy ones inside functions included (they still tie the modules together). Two checks:

* no cycle among the project's modules;
* layering, from the bottom: core library < ``converters`` < ``fewsam_jax.fewshot`` <
  ``fewsam_jax.widgets`` < the entry points (``fewsam_jax/__init__``, ``cli``, ``cli_embed``, ``demo``) <
  the research tree ``bench``. A module imports its own layer or lower ones, never a higher one; the
  exceptions are listed in ``ALLOWED_UPWARD`` with their reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fewsam_jax", "converters", "bench")

LAYERS = ("core", "converters", "fewshot", "widgets", "entry", "bench")
ENTRY_POINTS = {"fewsam_jax", "fewsam_jax.cli", "fewsam_jax.cli_embed", "fewsam_jax.demo"}

# (importer, imported): upward imports that are deliberate, each done lazily inside one function.
ALLOWED_UPWARD = {
    # load_model converts a preset on first use; converters needs torch, so the import is lazy.
    ("fewsam_jax.weights", "converters.convert"),
    # `fewsam reproduce` forwards to the study, which lives in the research tree (not in the wheel).
    ("fewsam_jax.cli", "bench.reproduce.__main__"),
}


def module_files() -> dict[str, Path]:
    """{dotted module name: file} for every module of the project's packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest project module that ``name`` (a dotted import target) names or lies in."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``module`` imports anywhere in its file (relative imports resolved)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import sub` names the submodule when there is one, else a name in pkg
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            resolved = _resolve(target, modules)
            if resolved is not None and resolved != module:
                found.add(resolved)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {module: imports_of(module, path, modules) for module, path in modules.items()}


def layer(module: str) -> str:
    if module.split(".")[0] == "bench":
        return "bench"
    if module.split(".")[0] == "converters":
        return "converters"
    if module in ENTRY_POINTS:
        return "entry"
    for name in ("fewshot", "widgets"):
        if module.startswith(f"fewsam_jax.{name}"):
            return name
    return "core"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if start in state:
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            child = next(stack[-1], None)
            if child is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif child not in state:
                state[child] = 1
                path.append(child)
                stack.append(iter(sorted(graph.get(child, ()))))
    return None


def test_the_walk_sees_the_packages_and_their_imports():
    graph = import_graph()
    assert {"fewsam_jax.cli", "fewsam_jax.fewshot.segmenter", "converters.convert", "bench.reproduce.study"} <= set(graph)
    assert "fewsam_jax.model_dir" in graph["converters.convert"]
    assert "converters.convert" in graph["fewsam_jax.weights"]  # a lazy import inside a function counts
    assert "fewsam_jax.fewshot.collection" in graph["fewsam_jax.fewshot"]  # a package's __init__ counts


def test_find_cycle_reports_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_go_down_the_layers():
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = sorted((module, target) for module, targets in import_graph().items() for target in targets
                    if rank[layer(target)] > rank[layer(module)] and (module, target) not in ALLOWED_UPWARD)
    assert not upward, "imports reaching up a layer:\n" + "\n".join(
        f"  {module} ({layer(module)}) -> {target} ({layer(target)})" for module, target in upward)


@pytest.mark.parametrize("importer, imported", sorted(ALLOWED_UPWARD))
def test_allowed_upward_imports_are_lazy_and_still_there(importer, imported):
    """An exception that is no longer needed is removed from the list; one that remains stays lazy."""
    modules = module_files()
    tree = ast.parse(modules[importer].read_text())
    top_level = set()
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            top_level |= {_resolve(f"{node.module}.{a.name}" if isinstance(node, ast.ImportFrom) else a.name, modules)
                          for a in node.names}
    assert imported in imports_of(importer, modules[importer], modules)
    assert imported not in top_level
