"""No import circles in the package: the module import graph over ``src/`` (read with ``ast``, imports
inside functions included, ``if TYPE_CHECKING:`` blocks left out) has no cycle.

A circle hidden inside a function still ties two modules into one (neither can be understood, moved or
tested alone), so a function-level import counts like a top-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

# The two circles the harness branch removes (issue #14). The lead deletes this allow-list when merging
# it; any other cycle fails now, and an entry that is no longer a cycle fails too (so it cannot linger).
KNOWN_CYCLES = {
    frozenset({"duvflow.classifier.predict", "duvflow.classifier.train"}),
    frozenset({"duvflow.ldm.sample", "duvflow.ldm.train"}),
}


def module_names(src: Path) -> dict[str, Path]:
    """``{dotted module name: file}`` of every module under ``src`` (packages by their ``__init__``)."""
    names = {}
    for path in sorted(src.rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Every Import / ImportFrom node, at any depth, outside ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph(src: Path) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}`` (external imports are left out)."""
    modules = module_names(src)
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative: up (level - 1) packages from this module's package
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                # `from pkg import sub` imports the submodule when there is one, else names from pkg
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                while target and target not in modules:  # `import a.b.c` of a name inside a.b
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as one cycle path."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(_cycle_path(graph, set(component)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _cycle_path(graph, component: set[str]) -> list[str]:
    """One closed path through ``component`` (start, ..., start), for the failure message."""
    start = min(component)
    paths, seen = [[start]], {start}
    while paths:  # breadth first: the shortest way back to start
        path = paths.pop(0)
        for w in sorted(graph[path[-1]] & component):
            if w == start:
                return path + [start]
            if w not in seen:
                seen.add(w)
                paths.append(path + [w])
    raise AssertionError(f"no cycle through {start}")  # a strongly connected component always has one


def test_the_package_has_no_import_cycle():
    found = cycles(import_graph(SRC))
    unexpected = [c for c in found if frozenset(c) not in KNOWN_CYCLES]
    assert not unexpected, "import cycles (move the shared name into a module both can import):\n" + "\n".join(
        " -> ".join(c) for c in unexpected)
    gone = KNOWN_CYCLES - {frozenset(c) for c in found}
    assert not gone, f"no longer a cycle: remove {sorted(map(sorted, gone))} from KNOWN_CYCLES"


def _package(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_a_cycle_through_a_function_level_import_is_found_and_named(tmp_path):
    src = _package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg.b import f\n",
        "pkg/b.py": "def f():\n    from pkg import c\n    return c\n",
        "pkg/c.py": "import os\nfrom . import a\n",
        "pkg/d.py": "from pkg.a import f\n",  # imports into the circle, is not part of it
    })
    assert cycles(import_graph(src)) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]


def test_type_checking_imports_do_not_count(tmp_path):
    src = _package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import b\n",
        "pkg/b.py": "import pkg.a\n",
    })
    assert cycles(import_graph(src)) == []


def test_relative_imports_and_names_inside_modules_resolve_to_their_module(tmp_path):
    src = _package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/sub/__init__.py": "",
        "pkg/sub/x.py": "from ..y import name\n",
        "pkg/y.py": "import pkg.sub.x.attr_like\nname = 1\n",
    })
    graph = import_graph(src)
    assert graph["pkg.sub.x"] == {"pkg.y"} and graph["pkg.y"] == {"pkg.sub.x"}
    assert cycles(graph) == [["pkg.sub.x", "pkg.y", "pkg.sub.x"]]
