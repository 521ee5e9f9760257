"""Imports flow only downward: no module of argen imports, at any depth and including the imports inside
functions, a module that imports it back (DESIGN.md: the CLI sits above everything it drives; modeling
below the generators it loads)."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"argen": REPO / "argen", "argen.samplers": REPO / "samplers", "argen.tokenizers": REPO / "tokenizers"}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg, base in PACKAGES.items():
        for f in base.rglob("*.py"):
            parts = [pkg, *f.relative_to(base).with_suffix("").parts]
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return mods


def import_graph() -> dict[str, set[str]]:
    """module -> the argen modules it imports (``from a import b`` counts as a.b where that is a module)."""
    mods = _modules()

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for mod, path in mods.items():
        names = []
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names += [f"{node.module}.{a.name}" for a in node.names]
        graph[mod] = {t for t in map(owner, names) if t and t != mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while not comp or comp[-1] != v:
                comp.append(stack.pop())
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_cycles():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(g) == [["a", "b", "c"]]
    graph = import_graph()
    assert "argen.eval.cli" in graph["argen.cli"] and "argen.options" in graph["argen.bench"]
    graph["argen.options"].add("argen.cli")  # what the shared helpers used to be: a circle through the CLI
    assert any("argen.cli" in c and "argen.bench" in c for c in cycles(graph))


def test_every_package_is_installed():
    """pyproject lists packages one by one: a new sub-package left out works in the editable checkout but is
    missing from a wheel."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {mod for mod, path in _modules().items() if path.name == "__init__.py"}
    assert found == listed


def test_the_repository_root_does_not_shadow_top_level_packages():
    """The test command keeps the repository root off sys.path (scripts/test.sh runs pytest's own entry point),
    so the top-level name `tokenizers` is Hugging Face's library (or absent), never this repository's folder."""
    import importlib.util

    spec = importlib.util.find_spec("tokenizers")
    assert spec is None or spec.origin is None or Path(spec.origin).parent != REPO / "tokenizers"

