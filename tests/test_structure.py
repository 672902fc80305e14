"""The package's shape: no import cycles, front-ends and benchmarks imported by no library module, no
module over 450 lines. Read from the source (AST), every import counted, the lazy ones in functions too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src"
FRONT_ENDS = ("redraft.apps", "redraft.bench")  # leaves: nothing in the library imports them


def modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / "redraft").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The redraft modules `name` imports (`from pkg import submodule` counts as the submodule)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            subs = {f"{target}.{a.name}" for a in node.names} & known
            found |= subs or ({target} & known)
    return found - {name}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def test_no_import_cycles(graph):
    # a package's __init__ that re-exports its own submodules is not a cycle of the code's layers
    edges = {m: {d for d in deps if not (m.startswith(d + ".") and graph.get(d, set()) & {m})} for m, deps in graph.items()}
    seen, stack, cycles = set(), [], []

    def visit(m):
        if m in stack:
            cycles.append(stack[stack.index(m):] + [m])
            return
        if m in seen:
            return
        seen.add(m)
        stack.append(m)
        for d in sorted(edges.get(m, ())):
            visit(d)
        stack.pop()

    for m in sorted(edges):
        visit(m)
    assert cycles == []


def test_no_library_module_imports_a_front_end_or_a_benchmark(graph):
    library = [m for m in graph if not m.startswith(FRONT_ENDS) and m not in ("redraft._moved", "redraft.__main__")]
    wrong = {m: sorted(d for d in graph[m] if d.startswith(FRONT_ENDS)) for m in library}
    assert {m: d for m, d in wrong.items() if d} == {}
    benches = {m: sorted(d for d in graph[m] if d.startswith("redraft.apps")) for m in graph if m.startswith("redraft.bench")}
    assert {m: d for m, d in benches.items() if d} == {}


def test_no_module_over_450_lines():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > 450}
    assert long == {}
