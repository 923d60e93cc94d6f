"""The shape of the house, held against the code: imports flow one way (no cycles, and
down the documented layers), the command line only parses and dispatches, functions stay
short, docstrings carry no measurements (those live in docs/results/)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "src" / "erat"


def modules() -> dict[str, ast.Module]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        out[name] = ast.parse(path.read_text())
    return out


def imports(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """The erat modules ``name`` imports (at any depth of the file), resolved to modules."""
    found = set()
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and getattr(node.test, "id", "") == "TYPE_CHECKING"
                   for child in node.body for n in ast.walk(child)}
    for node in ast.walk(tree):
        if id(node) in typing_only:  # not an import at run time
            continue
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and t.startswith("erat"):
                found.add(t)
    return found


def test_no_import_cycles():
    trees = modules()
    graph = {n: imports(n, t, set(trees)) for n, t in trees.items()}
    # a package's __init__ importing its own modules is registration, not a dependency
    graph = {n: {d for d in deps if not (d.startswith(n + ".") or n.startswith(d + "."))}
             for n, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(n: str, path: list[str]) -> None:
        state[n] = 1
        for d in graph.get(n, ()):
            assert state.get(d) != 1, "import cycle: " + " -> ".join([*path, n, d])
            if d not in state:
                visit(d, [*path, n])
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n, [])


# The layers of docs/ARCHITECTURE.md, lowest first: a module imports only from lines above
# its own (not from its own line). The package's __init__ (two lazy shortcuts) is outside.
LAYERS = [
    "errors",
    "registry fields files",
    "threat distributed graphs",
    "inputs",
    "losses",
    "search",
    "passes",
    "energy datasets models",
    "methods attacks",
    "rundir",
    "external",
    "stages",
    "sanity",
    "evaluate measure",
    "tables",
    "plots",
    "fit",
    "config",
    "train report suites",
    "assess",
    "reproduce bench",
    "cli",
    "__main__",
]


def test_imports_follow_the_documented_layers():
    level = {name: i for i, line in enumerate(LAYERS) for name in line.split()}
    trees = modules()

    def room(module: str) -> str:
        return module.split(".")[1] if module != "erat" else "erat"

    assert {room(n) for n in trees} - {"erat"} == set(level), "LAYERS must name every room"
    wrong = []
    for name, tree in trees.items():
        for dep in imports(name, tree, set(trees)):
            a, b = room(name), room(dep)
            if a != b and "erat" not in (a, b) and level[b] >= level[a]:
                wrong.append(f"{name} imports {dep} (layer {level[b]} >= {level[a]})")
    assert not wrong, wrong
    doc = (PACKAGE.parents[1] / "docs" / "ARCHITECTURE.md").read_text()
    for line in LAYERS:
        assert line.replace(" ", ", ") in doc, f"ARCHITECTURE.md does not list {line!r}"


def test_cli_is_short_and_functions_are_short():
    assert len((PACKAGE / "cli.py").read_text().splitlines()) < 300
    long = []
    for name, tree in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > 80:
                    long.append(f"{name}.{node.name} ({lines} lines)")
    assert not long, long


def test_docstrings_carry_no_measured_accuracies():
    accuracy = re.compile(r"\b0\.[1-9]\d{2}\b|\b\d{2}(\.\d)?% (test|accuracy|correct|robust)")
    found = []
    for name, tree in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef):
                doc = ast.get_docstring(node) or ""
                found += [f"{name}: {m.group(0)}" for m in accuracy.finditer(doc)]
    assert not found, found
