"""The package's import graph: no cycles, and data flows one way (ARCHITECTURE.md).

The graph is built from the source with ``ast`` (nothing is imported): an edge
``a -> b`` for every ``import`` in module ``a``, at module level or inside a function
(not under ``if TYPE_CHECKING:``, which never runs),
that names module ``b`` or a name defined in it; importing ``kmscale.x.y`` also runs the
package ``kmscale.x``, so that is an edge too, except from a module inside ``kmscale.x``
(the package is already initialising then). ``kmscale.cli`` finds its subcommand
modules by name (``importlib``), which is deliberately not an edge. Modules are checked
for cycles, and so are the parts of the package (subpackages, top-level modules).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "kmscale"

# Stages that come before the diffusion models import nothing from them.
UPSTREAM_OF_DIFFUSION = (
    "kmscale.data",
    "kmscale.conditioning",
    "kmscale.autoencoders",
    "kmscale.evaluation",
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> source file."""
    return {module_name(p): p for p in sorted((ROOT / PACKAGE).rglob("*.py"))}


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:`` (never run)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if _is_type_checking(child):
                todo.extend(child.orelse)
            else:
                todo.append(child)


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of the package that ``name`` imports anywhere in its source."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), filename=str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import: resolve against this module's package
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        for target in targets:
            if target == PACKAGE or target.startswith(PACKAGE + "."):
                while target not in known and "." in target:
                    target = target.rsplit(".", 1)[0]
                # Importing a sibling runs the enclosing package, which is already being
                # initialised when the importer lives inside it: not an edge back to it.
                implicit = [m for m in _parents(target) if not name.startswith(m + ".")]
                out.update(m for m in [*implicit, target] if m in known)
    out.discard(name)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imported(name, path, known) for name, path in mods.items()}


def component(name: str) -> str:
    """The part of the package a module belongs to: its subpackage (``kmscale.data``) or,
    for a top-level module, the module itself (``kmscale.training``)."""
    return ".".join(name.split(".")[:2])


def component_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """``graph`` with every module replaced by its component (self-edges and the root
    package, which only holds the version, dropped)."""
    out: dict[str, set[str]] = {}
    for name, targets in graph.items():
        edges = out.setdefault(component(name), set())
        edges.update(
            component(t) for t in targets if t != PACKAGE and component(t) != component(name)
        )
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes (first == last), or None (iterative DFS)."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    for root in sorted(graph):
        if state.get(root):
            continue
        stack = [(root, iter(sorted(graph[root])))]
        path = [root]
        state[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return path[path.index(child) :] + [child]
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph.get(child, ())))))
    return None


def test_graph_sees_function_level_and_relative_imports(tmp_path):
    source = "import os\nfrom . import b\ndef f():\n    from kmscale.c import thing\n"
    (tmp_path / "a.py").write_text(source)
    known = {"kmscale", "kmscale.x", "kmscale.x.a", "kmscale.x.b", "kmscale.c"}
    found = imported("kmscale.x.a", tmp_path / "a.py", known)
    assert found == {"kmscale.x.b", "kmscale.c"}  # its own packages are already running
    (tmp_path / "d.py").write_text("from kmscale.x import b\n")
    outside = imported("kmscale.d", tmp_path / "d.py", known | {"kmscale.d"})
    assert outside == {"kmscale.x", "kmscale.x.b"}


def test_find_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_package_import_graph_has_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_components_import_each_other_one_way():
    # e.g. kmscale.diffusion -> kmscale.training, never back; a cycle here means two parts
    # of the package can only be understood (and imported) together.
    cycle = find_cycle(component_graph(import_graph()))
    assert cycle is None, "import cycle between parts of the package: " + " -> ".join(cycle)


@pytest.mark.parametrize("stage", UPSTREAM_OF_DIFFUSION)
def test_upstream_stages_import_nothing_from_diffusion(stage):
    graph = import_graph()
    bad = {
        f"{name} -> {target}"
        for name, targets in graph.items()
        if name == stage or name.startswith(stage + ".")
        for target in targets
        if component(target) == "kmscale.diffusion"
    }
    assert not bad, f"{stage} imports the diffusion stage: {sorted(bad)}"
