"""The installed package's import graph: no circles, and every part imports only what it may.

Every module of the installed ``edgecloud`` package is parsed with :mod:`ast`
(nothing is imported), and every ``import`` statement counts, wherever it sits:
at the top, inside a function, under ``if TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

PACKAGE = "edgecloud"
PARTS = ("core", "router", "protos", "edge_agent", "cloud_gateway")
"""The parts whose folders map to ``edgecloud.<part>`` (the rest lives in ``edgecloud/``)."""


def is_command(module: str) -> bool:
    """The command modules: the ``edgecloud`` command, its ``*_cli`` modules and the demos."""
    leaf = module.rpartition(".")[2]
    return module in {"edgecloud.cli", "edgecloud.__main__", "edgecloud.demo",
                      "edgecloud.demo_loop"} or (
        module.startswith("edgecloud.") and leaf.endswith("_cli")
    )


def in_part(module: str, part: str) -> bool:
    """Whether ``module`` is the part ``edgecloud.<part>`` or one of its modules."""
    name = f"{PACKAGE}.{part}"
    return module == name or module.startswith(name + ".")


def modules_under(folder: Path, package: str) -> dict[str, Path]:
    """Module name -> file, for every ``.py`` file of the package rooted at ``folder``."""
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*.py")):
        relative = path.relative_to(folder).with_suffix("")
        parts = [part for part in relative.parts if part != "__init__"]
        if "__pycache__" in relative.parts:
            continue
        found[".".join([package, *parts])] = path
    return found


def installed_modules() -> dict[str, Path]:
    """Every module of the installed package, found through its import specs."""
    modules: dict[str, Path] = {}
    for package in (PACKAGE, *(f"{PACKAGE}.{part}" for part in PARTS)):
        spec = importlib.util.find_spec(package)
        assert spec is not None and spec.submodule_search_locations, package
        for location in spec.submodule_search_locations:
            for name, path in modules_under(Path(location), package).items():
                modules.setdefault(name, path)
    return modules


def _resolve(name: str, known: Iterable[str]) -> str | None:
    """The longest known module that ``name`` is or lies inside; None outside the package."""
    known = set(known)
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``module`` imports anywhere in its source."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = module if is_package else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{node.module}" if node.module else anchor
            else:
                base = node.module or ""
            # ``from package import submodule`` imports the submodule.
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        else:
            continue
        for name in names:
            target = _resolve(name, known)
            if target is not None and target != module:
                targets.add(target)
    return targets


def import_graph(modules: Mapping[str, Path]) -> dict[str, set[str]]:
    """Module -> the package's modules it imports."""
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def find_cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Import circles, as paths ``a -> ... -> a``; every module on a circle is on one listed."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(start: str) -> None:
        # Tarjan's algorithm with an explicit stack of (node, remaining edges).
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            step = next(edges, None)
            if step is not None:
                if step not in index:
                    index[step] = low[step] = len(index)
                    stack.append(step)
                    on_stack.add(step)
                    work.append((step, iter(sorted(graph.get(step, ())))))
                elif step in on_stack:
                    low[node] = min(low[node], index[step])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    circles: list[list[str]] = []
    for group in groups:
        covered: set[str] = set()
        for start in sorted(group):
            if start not in covered:
                circle = _circle_through(start, group, graph)
                covered.update(circle)
                circles.append(circle)
    return circles


def _circle_through(start: str, group: set[str], graph: Mapping[str, set[str]]) -> list[str]:
    """A shortest path from ``start`` back to itself that stays inside its group."""
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for step in sorted(graph[node] & group):
                if step == start:
                    return [*paths[node], start]
                if step not in paths:
                    paths[step] = [*paths[node], step]
                    following.append(step)
        frontier = following
    raise AssertionError(f"no circle through {start} in {sorted(group)}")


def violations(
    graph: Mapping[str, set[str]], importer_in: str, forbidden: Iterable[str]
) -> list[str]:
    """``importer -> imported`` for each import from part ``importer_in`` into ``forbidden``."""
    forbidden = tuple(forbidden)
    return sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if in_part(module, importer_in)
        for target in targets
        if any(in_part(target, part) for part in forbidden) or is_command(target)
    )


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    """The import graph of the installed package."""
    return import_graph(installed_modules())


def test_every_part_is_parsed(graph: dict[str, set[str]]) -> None:
    """The graph covers the command, the library modules and every part's modules."""
    assert {"edgecloud.cli", "edgecloud.router.policy", "edgecloud.core.model",
            "edgecloud.edge_agent.app", "edgecloud.cloud_gateway.app"} <= set(graph)


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    """No module imports itself through others, not even from inside a function."""
    cycles = find_cycles(graph)
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_router_imports_no_other_part(graph: dict[str, set[str]]) -> None:
    """The router is a pure library: it imports no other part and no command module."""
    others = [part for part in PARTS if part != "router"]
    assert violations(graph, "router", others) == []
    outside = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if in_part(module, "router")
        for target in targets
        if not in_part(target, "router")
    )
    assert outside == []


def test_core_imports_no_part_above_it(graph: dict[str, set[str]]) -> None:
    """Core sits at the bottom: it imports no router, agent, gateway or command module."""
    assert violations(graph, "core", ("router", "edge_agent", "cloud_gateway")) == []


def test_agent_and_gateway_never_import_each_other(graph: dict[str, set[str]]) -> None:
    """The edge agent and the cloud gateway are independent of each other."""
    assert violations(graph, "edge_agent", ("cloud_gateway",)) == []
    assert violations(graph, "cloud_gateway", ("edge_agent",)) == []


def test_library_modules_never_import_command_modules(graph: dict[str, set[str]]) -> None:
    """Only command modules import command modules; library code never reaches up to them."""
    found = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if not is_command(module)
        for target in targets
        if is_command(target)
    )
    assert found == []


def test_cycle_finder_sees_a_circle_closed_inside_a_function(tmp_path: Path) -> None:
    """A circle whose back edge is an import inside a function is still found."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text("def late():\n    from . import c\n")
    (package / "c.py").write_text("import pkg.a\n")
    (package / "d.py").write_text("from pkg.a import thing\n")

    cycles = find_cycles(import_graph(modules_under(package, "pkg")))

    assert cycles == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]
