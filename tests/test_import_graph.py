"""The import graph of `gliclass.*` has no cycle (issue 25, "rooms with one job").

The graph is read from the source with `ast`, so it sees what a run can import: module-level imports and those
inside functions (a lazy import still ties two modules together). Left out, as they cannot form a cycle at run
time: imports under `if TYPE_CHECKING:`, and the implicit import of a module's parent package (a package whose
`__init__` re-exports its children would otherwise "cycle" with each of them). `from pkg import name` is an edge
to `pkg.name` when that is a module, else to `pkg`.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_files(root: Path) -> dict[str, tuple[Path, bool]]:
    """{dotted name: (file, is a package __init__)} of every module under `root/gliclass`."""
    found = {}
    for path in sorted((root / "gliclass").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if package else parts)] = (path, package)
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(nodes: Iterable[ast.AST]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement in `nodes` and below, at any depth, except in `if TYPE_CHECKING:` bodies."""
    for node in nodes:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node):
            yield from _imports(node.orelse)
        else:
            yield from _imports(ast.iter_child_nodes(node))


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """{module: the gliclass modules it imports}, over module- and function-level imports."""
    modules = module_files(root)
    graph: dict[str, set[str]] = {}
    for name, (path, package) in modules.items():
        here = name.split(".") if package else name.split(".")[:-1]  # the package relative imports start from
        targets: set[str] = set()
        for node in _imports([ast.parse(path.read_text(encoding="utf-8"), str(path))]):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    # `import a.b.c` binds the deepest module; its parents are implicit
                    prefixes = (".".join(parts[:k]) for k in range(len(parts), 0, -1))
                    deepest = next((prefix for prefix in prefixes if prefix in modules), None)
                    if deepest is not None:
                        targets.add(deepest)
                continue
            if node.level:
                base = here[: len(here) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            for alias in node.names:
                submodule = f"{origin}.{alias.name}"
                if submodule in modules:
                    targets.add(submodule)
                elif origin in modules:
                    targets.add(origin)
        graph[name] = targets - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (iterative depth-first search, deterministic order)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path = [start]
        stack = [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif not state.get(nxt) and nxt in graph:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_gliclass_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 40 and "gliclass.pipeline" in graph  # the walk found the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_graph_sees_function_level_and_relative_imports(tmp_path):
    """The checker itself: a cycle closed only by a lazy, relative import is found; an import under
    `if TYPE_CHECKING:` and a package `__init__` re-exporting its child are no edges back."""
    pkg = tmp_path / "gliclass"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from gliclass.sub.a import A\n")
    (pkg / "sub" / "a.py").write_text("A = 1\n\ndef f():\n    from gliclass.sub import b\n")
    (pkg / "sub" / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import c\n")
    (pkg / "sub" / "c.py").write_text("from .b import x\n")
    graph = import_graph(tmp_path)
    assert graph["gliclass.sub"] == {"gliclass.sub.a"}
    assert graph["gliclass.sub.a"] == {"gliclass.sub.b"}
    assert graph["gliclass.sub.b"] == set() and graph["gliclass.sub.c"] == {"gliclass.sub.b"}
    assert find_cycle(graph) is None
    (pkg / "sub" / "b.py").write_text("def g():\n    from .a import A\n")
    assert find_cycle(import_graph(tmp_path)) == ["gliclass.sub.a", "gliclass.sub.b", "gliclass.sub.a"]
