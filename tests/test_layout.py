"""The package's layers: every module imports only modules of its own layer or below, and no
import cycle exists (function-level imports included)."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "gmvc"
# From the ground up; a module's layer is that of its longest matching prefix.
LAYERS = [
    ("gmvc.errors", "gmvc.config"),
    ("gmvc.core",),
    ("gmvc.nets",),
    ("gmvc.models",),
    ("gmvc.objectives",),
    ("gmvc.data",),
    ("gmvc.recipes",),
    ("gmvc.training",),
    ("gmvc.run",),
    ("gmvc.eval",),
    ("gmvc.validate",),
    ("gmvc.trainer", "gmvc.experiments", "gmvc.predict", "gmvc.generate", "gmvc.estimator", "gmvc.main", "gmvc"),
]


def layer_of(name):
    best, level = "", None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (name == p or name.startswith(p + ".")) and len(p) > len(best):
                best, level = p, i
    return level


def modules():
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path


def imports(name, path):
    """gmvc modules imported anywhere in the file (a `from gmvc.x import y` counts y when y is a module)."""
    known = {n for n, _ in modules()}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("gmvc")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gmvc") and not node.level:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in known else node.module)
    found.discard(name)
    return found


GRAPH = {name: imports(name, path) for name, path in modules()}


def test_every_module_has_a_layer():
    assert [n for n in GRAPH if layer_of(n) is None] == []


@pytest.mark.parametrize("name", sorted(GRAPH))
def test_no_import_from_a_higher_layer(name):
    upward = sorted(m for m in GRAPH[name] if layer_of(m) > layer_of(name))
    assert upward == [], f"{name} (layer {layer_of(name)}) imports {upward}"


def test_no_import_cycles():
    state, cycles = {}, []

    def visit(n, stack):
        state[n] = "open"
        for m in sorted(GRAPH.get(n, ())):
            if m == "gmvc" or m not in GRAPH:
                continue                      # the package's lazy __init__ re-exports only
            if state.get(m) == "open":
                cycles.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m, stack + [m])
        state[n] = "done"

    for n in sorted(GRAPH):
        if n not in state:
            visit(n, [n])
    assert cycles == []
