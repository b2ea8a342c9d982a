"""The architecture, checked: layers that import downward only, no cycles, SQL in the Store.

The layers are the ones ARCHITECTURE.md describes. Every import counts, at module
level or inside a function, under ``TYPE_CHECKING`` or not: a cycle held together
by a late import is still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import jobqueue

PACKAGE = Path(jobqueue.__file__).parent

# Lowest first. A module may import modules of its own layer (without a cycle)
# and of the layers below it, never above. Prefixes match dotted module names.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("leaves", ("jobqueue.errors", "jobqueue.config", "jobqueue.protocol", "jobqueue.rows",
                "jobqueue.outcome", "jobqueue.log")),
    ("pure logic", ("jobqueue.payload", "jobqueue.tasks", "jobqueue.cron",
                    "jobqueue.registry", "jobqueue.enqueue", "jobqueue.workflow",
                    "jobqueue.tracing", "jobqueue.backpressure")),
    ("store", ("jobqueue.sql", "jobqueue.embedded", "jobqueue.db")),
    ("admin", ("jobqueue.dead", "jobqueue.queues", "jobqueue.doctor", "jobqueue.metrics",
               "jobqueue.results")),
    ("worker", ("jobqueue.worker",)),
    ("client", ("jobqueue.app",)),
    ("edges", ("jobqueue.cli", "jobqueue.demo", "jobqueue.__main__", "jobqueue.contrib",
               "jobqueue.testing", "jobqueue.dashboard",
               "jobqueue")),
]

# Calls that run SQL on a psycopg connection or cursor. Outside the Store only
# the demo may make them: it plays the user's application, with its own table.
SQL_CALLS = {"execute", "executemany", "cursor", "copy", "pipeline"}
SQL_ALLOWED = ("jobqueue.db", "jobqueue.sql", "jobqueue.demo")


def module_name(path: Path) -> str:
    parts = ["jobqueue", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and \
                    (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    assert best is not None, f"{module} is in no layer: add it to LAYERS and ARCHITECTURE.md"
    return best[1]


def imports(module: str) -> set[str]:
    """The jobqueue modules that ``module`` imports, anywhere in it."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # "from jobqueue.db import jobs" imports the module jobqueue.db.jobs.
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                     for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


GRAPH = {m: imports(m) for m in MODULES}


def test_the_scan_sees_the_package() -> None:
    assert len(MODULES) > 40
    assert "jobqueue.db.store" in GRAPH["jobqueue.app"]
    assert "jobqueue.worker" in GRAPH["jobqueue.app"]  # a function-level import counts


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        layer_of(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module: str) -> None:
    mine = layer_of(module)
    upward = sorted(f"{dep} ({LAYERS[layer_of(dep)][0]})" for dep in GRAPH[module]
                    if layer_of(dep) > mine and dep != "jobqueue")
    assert not upward, f"{module} ({LAYERS[mine][0]}) imports upward: {', '.join(upward)}"


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in sorted(graph[node]):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(cycles)


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e", "d"}}
    assert find_cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    # The package itself is left out: importing "jobqueue" runs __init__, the
    # public face at the top, which nothing inside may import (next test).
    graph = {m: {d for d in deps if d != "jobqueue"} for m, deps in GRAPH.items()}
    assert find_cycles(graph) == []


def test_nothing_inside_imports_the_package_face() -> None:
    inside = sorted(m for m, deps in GRAPH.items() if "jobqueue" in deps and m != "jobqueue")
    assert inside == [], "import the module you need, not jobqueue/__init__"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if not m.startswith(SQL_ALLOWED)))
def test_only_the_store_runs_sql(module: str) -> None:
    assert "jobqueue.sql" not in GRAPH[module], f"{module} reads the SQL files"
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    calls = sorted({node.func.attr for node in ast.walk(tree)
                    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in SQL_CALLS})
    assert calls == [], f"{module} calls {calls}: SQL runs through jobqueue.db.store only"
    uses_psycopg_sql = any(
        isinstance(node, ast.ImportFrom) and (node.module == "psycopg.sql" or (
            node.module == "psycopg" and any(a.name == "sql" for a in node.names)))
        for node in ast.walk(tree))
    assert not uses_psycopg_sql, f"{module} composes SQL"
