"""The import graph of the toolkit: every module sits in a layer, imports only from its own
layer or lower ones, and no import circle exists, so that a module can be read (and tested)
knowing only what lies below it."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO_ROOT

# Lowest first. A module belongs to the first layer naming it or a package above it.
LAYERS = [
    ("ground floor", ["cli.errors", "runtime.allocator", "reports.calibration",
                      "reports.statistics", "storage.atomic", "backbones", "data.augment",
                      "data.photos"]),
    ("data", ["data"]),
    ("methods", ["methods"]),
    ("options", ["cli"]),
    ("run files", ["storage"]),
    ("runtime", ["runtime"]),
    ("reports", ["reports"]),
    ("entry points and tools", ["train", "test", "predict", "convert_checkpoint", "results",
                                "bench", "docs"]),
]


def modules() -> dict[str, Path]:
    """Every module of the toolkit outside tests/, by dotted name (a package by its own)."""
    found = {}
    for path in REPO_ROOT.rglob("*.py"):
        parts = path.relative_to(REPO_ROOT).with_suffix("").parts
        if parts[0] in ("tests", "filelists") or any(p.startswith(".") for p in parts):
            continue
        name = ".".join(parts).removesuffix(".__init__")
        found[name] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the toolkit's modules it imports, anywhere in its body (function-level
    imports included: they run too)."""
    names = modules()

    def own(name: str) -> str | None:
        while name and name not in names:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in names.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {own(alias.name) for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # "from package import module" imports the module, else the package's name.
                targets |= {own(f"{node.module}.{alias.name}") or own(node.module)
                            for alias in node.names}
        graph[name] = targets - {None, name}
    return graph


def layer_of(module: str) -> int:
    for index, (_, members) in enumerate(LAYERS):
        if any(module == m or module.startswith(m + ".") for m in members):
            return index
    raise AssertionError(f"module {module} is in no layer of tests/test_architecture.py: "
                         "place it there")


def test_no_module_imports_a_higher_layer():
    upward = [f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} "
              f"({LAYERS[layer_of(target)][0]})"
              for module, targets in import_graph().items() for target in sorted(targets)
              if layer_of(target) > layer_of(module)]
    assert not upward, "\n".join(upward)


def test_the_import_graph_has_no_circle():
    graph = import_graph()
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError("import circle: " + " -> ".join(path[path.index(module):]
                                                                  + [module]))
        if module in done:
            return
        for target in sorted(graph[module]):
            visit(target, path + [module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_the_checks_see_real_imports():
    """The graph is read from the sources: a few imports known to exist are in it, so the
    checks above cannot pass on an empty graph."""
    graph = import_graph()
    assert "storage.atomic" in graph["data.store"]
    assert "methods.inner_loop" in graph["methods.maml"] & graph["methods.hypermaml"]
    assert {"cli.config", "storage.checkpoints", "runtime.setup"} <= graph["train"]
    assert layer_of("storage.atomic") < layer_of("data.store") < layer_of("storage.checkpoints")


def test_no_function_is_longer_than_80_lines():
    """A function that does not fit on a screen does several things: name them."""
    long = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 80:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert not long, "\n".join(long)
