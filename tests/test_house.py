"""The shape of the package (docs/architecture.md): no import circles (imports inside
functions included), dependencies between packages pointing one way, small modules and
functions, a short top level. Read from the source with `ast`; nothing is imported."""
import ast
import os
import sys

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "laser_jax")
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 400
MAX_TOP_LEVEL_MODULES = 10

# Package -> the project packages it may import (besides itself). Top-level modules
# (cli, distributed, the entry modules) are "" and may be imported by commands.
ALLOWED = {
    "model": set(),
    "data": {""},  # its commands (synthetic, convert) run through cli.run_cli
    "retrieval": {"data"},
    "method": {"model", "data"},
    "inference": {"model", "method", "data", "retrieval", ""},
    "train": {"model", "method", "data", "retrieval", "inference", ""},
    "experiments": {"model", "method", "data", "retrieval", "inference", "train", ""},
}


def modules():
    """{dotted name: path} of every module under laser_jax/."""
    found = {}
    for directory, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
                found[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = path
    return found


def imported(module: str, path: str, known) -> set:
    """Project modules that `module` imports anywhere in its source."""
    tree = ast.parse(open(path).read())
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return {n for n in names if n in known and n != module}


@pytest.fixture(scope="module")
def graph():
    known = modules()
    return {m: imported(m, p, known) for m, p in known.items()}


def test_no_import_circles(graph):
    colour, circles = {}, []

    def visit(node, stack):
        colour[node] = "grey"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if colour.get(nxt) == "grey":
                circles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in colour:
                visit(nxt, stack)
        stack.pop()
        colour[node] = "black"

    for node in sorted(graph):
        if node not in colour:
            visit(node, [])
    assert not circles, "import circles:\n" + "\n".join(circles)


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ALLOWED) else ""


def test_dependencies_point_one_way(graph):
    wrong = []
    for module, targets in graph.items():
        source = package_of(module)
        if source not in ALLOWED:
            continue
        for target in targets:
            dest = package_of(target)
            if dest != source and dest not in ALLOWED[source] and target != "laser_jax":
                wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(sorted(wrong))


def test_the_shared_top_level_modules_import_no_package(graph):
    """cli.py and distributed.py are used by every package's commands, so they stand below
    all of them."""
    assert not graph["laser_jax.cli"] and not graph["laser_jax.distributed"]


def test_a_short_top_level():
    top = [n for n in os.listdir(ROOT) if n.endswith(".py") and n != "__init__.py"]
    assert len(top) <= MAX_TOP_LEVEL_MODULES, sorted(top)


def test_small_modules_and_functions():
    big = []
    for module, path in modules().items():
        source = open(path).read()
        lines = source.count("\n")
        if lines > MAX_MODULE_LINES:
            big.append(f"module {module}: {lines} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    big.append(f"function {module}.{node.name}: {length} lines")
    assert not big, "\n".join(big)


def test_the_checker_sees_a_circle(tmp_path, monkeypatch):
    """The graph builder resolves relative and absolute imports (a check that cannot fail
    is no check)."""
    pkg = tmp_path / "laser_jax" / "model"
    pkg.mkdir(parents=True)
    (tmp_path / "laser_jax" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from laser_jax.model import a\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", str(tmp_path / "laser_jax"))
    known = modules()
    graph = {m: imported(m, p, known) for m, p in known.items()}
    assert graph["laser_jax.model.a"] == {"laser_jax.model.b", "laser_jax.model"}
    assert graph["laser_jax.model.b"] == {"laser_jax.model.a", "laser_jax.model"}
