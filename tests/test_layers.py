"""The codebase's shape, checked on its import graph (ast only, no third-party tool).

One rule: a package imports only packages below it, in this order (docs: README,
"Layout"):

    tally.core  <-  tally.config, tally.sim  <-  streams  <-  sinks  <-  recon
                <-  tally.chaos  <-  tally.cli

`dashboards` stands apart: it may import `tally.core` and `tally.config`, and only
`tally.cli` imports it. `tally.core` imports no project I/O and no I/O library.
Also: no import cycle between modules, and no import of a project module inside a
function (imports are at the top of a module, so its dependencies are all in one
place), except in `tally.cli`, which loads a command's machinery when it runs.
Size: no module over 500 lines, no function over 80 lines.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tally", "streams", "sinks", "recon", "dashboards")

# lowest first; a module may import its own layer and the layers before it
LAYERS: tuple[tuple[str, ...], ...] = (
    ("tally.core",),
    ("tally.config", "tally.sim"),
    ("streams",),
    ("sinks",),
    ("recon",),
    ("tally.chaos",),
    ("tally.cli", "tally.__main__", "tally"),
)
DASHBOARDS_MAY_IMPORT = ("tally.core", "tally.config", "dashboards")
# what the pure core may not import: the clock, the file system, processes, the network
IO_MODULES = frozenset(
    [
        "os",
        "sys",
        "time",
        "socket",
        "subprocess",
        "asyncio",
        "pathlib",
        "shutil",
        "tempfile",
        "io",
        "urllib",
        "http",
        "logging",
        "aiokafka",
        "faust",
        "mode",
        "clickhouse_driver",
        "chdb",
        "click",
        "prometheus_client",
        "pydantic_settings",
    ]
)
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def modules() -> Iterator[tuple[str, Path]]:
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            yield ".".join(parts), path


def is_project(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


def resolve(name: str, known: set[str]) -> str:
    """The module an import names: `from a.b import c` may import module a.b.c."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name


def imports_of(path: Path) -> Iterator[tuple[str, int, bool]]:
    """(imported name, line, inside a function) for every import in the file."""
    tree = ast.parse(path.read_text("utf-8"))

    def walk(node: ast.AST, in_function: bool) -> Iterator[tuple[str, int, bool]]:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                for a in child.names:
                    yield a.name, child.lineno, in_function
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                for a in child.names:
                    yield f"{child.module}.{a.name}", child.lineno, in_function
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                continue  # annotations only: not a run-time dependency
            yield from walk(child, inner)

    yield from walk(tree, False)


def _is_type_checking(test: ast.expr) -> bool:
    return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"


def layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > best[0]):
                best = (len(p), i)
    return None if best is None else best[1]


def graph() -> tuple[dict[str, set[str]], list[str]]:
    """Module -> the project modules it imports; and the violations found on the way."""
    known = {m for m, _ in modules()}
    edges: dict[str, set[str]] = {m: set() for m in known}
    problems: list[str] = []
    for module, path in modules():
        where = path.relative_to(ROOT)
        for name, line, in_function in imports_of(path):
            top = name.split(".")[0]
            if module.startswith("tally.core") and top in IO_MODULES:
                problems.append(f"{where}:{line}: the pure core imports {top}")
            if not is_project(name):
                continue
            target = resolve(name, known)
            if not target or target == module:
                continue
            if in_function and not module.startswith("tally.cli"):
                problems.append(f"{where}:{line}: imports {target} inside a function")
            problems.extend(_against_layers(module, target, f"{where}:{line}"))
            edges[module].add(target)
    return edges, problems


def _against_layers(module: str, target: str, where: str) -> list[str]:
    if module.startswith("dashboards"):
        ok = any(target == p or target.startswith(p + ".") for p in DASHBOARDS_MAY_IMPORT)
        return [] if ok else [f"{where}: dashboards imports {target}"]
    if target.startswith("dashboards"):
        ok = module.startswith("tally.cli")
        return [] if ok else [f"{where}: {module} imports dashboards ({target})"]
    mine, theirs = layer_of(module), layer_of(target)
    if mine is None or theirs is None:
        return [f"{where}: {module} or {target} is in no layer"]
    if theirs > mine:
        return [f"{where}: {module} imports {target}, a layer above it"]
    return []


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                found.append(sorted(scc))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_imports_follow_the_layers() -> None:
    _, problems = graph()
    assert not problems, "\n".join(problems)


def test_no_import_cycles() -> None:
    edges, _ = graph()
    found = cycles(edges)
    assert not found, "\n".join(" <-> ".join(c) for c in found)


def test_modules_and_functions_are_short() -> None:
    long: list[str] = []
    for _, path in [*modules(), *_test_modules()]:
        text = path.read_text("utf-8")
        where = path.relative_to(ROOT)
        lines = text.count("\n")
        if lines > MAX_MODULE_LINES:
            long.append(f"{where}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{where}:{node.lineno}: {node.name} is {n} lines")
    assert not long, "\n".join(long)


def _test_modules() -> Iterator[tuple[str, Path]]:
    for path in sorted((ROOT / "tests").rglob("*.py")):
        yield "", path


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    """The walk itself: an import inside a function, an upward import and a cycle."""
    assert layer_of("tally.core.events") == 0 and layer_of("tally.cli.main") == 6
    assert _against_layers("streams.app", "recon.run", "x")
    assert not _against_layers("recon.run", "streams.app", "x")
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    f = tmp_path / "m.py"
    f.write_text("import os\n\ndef f():\n    from sinks import rows\n", encoding="utf-8")
    assert list(imports_of(f)) == [("os", 1, False), ("sinks.rows", 4, True)]
