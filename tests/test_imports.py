"""The import graph of fsclip/, trainers/ and datasets/ has no cycle (read with ``ast``, nothing imported).

Every import counts, also those inside functions (a deferred import still ties two modules
together: the runs/cli circle of the past was one). ``trainers/`` and ``datasets/`` install as
``fsclip.trainers`` and ``fsclip.datasets``. ``from pkg import name`` is an edge to ``pkg.name``
when that is a module of the project, else to ``pkg``; importing ``a.b`` is not counted as an
import of the package ``a`` (Python runs ``a/__init__.py`` first, but that is not a design tie).
"""

from __future__ import annotations

import ast
import os
import os.path as osp
from typing import Dict, List, Optional, Set

from conftest import REPO

ROOTS = {"fsclip": "fsclip", "trainers": "fsclip.trainers", "datasets": "fsclip.datasets"}


def project_modules(repo: str, roots: Dict[str, str]) -> Dict[str, str]:
    """Module name -> file, for every .py under the roots (packages by their __init__.py)."""
    modules = {}
    for folder, package in roots.items():
        base = osp.join(repo, folder)
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not osp.islink(osp.join(dirpath, d)))
            rel = osp.relpath(dirpath, base)
            prefix = package if rel == "." else package + "." + rel.replace(os.sep, ".")
            for name in sorted(filenames):
                if name.endswith(".py"):
                    module = prefix if name == "__init__.py" else f"{prefix}.{name[:-3]}"
                    modules[module] = osp.join(dirpath, name)
    return modules


def imports_of(module: str, path: str, modules: Dict[str, str]) -> Set[str]:
    """The project modules that ``module`` (file ``path``) imports anywhere in its body."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    is_package = path.endswith("__init__.py")
    here = module.split(".") if is_package else module.split(".")[:-1]
    found: Set[str] = set()

    def closest(name: str) -> Optional[str]:
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            candidate = ".".join(parts[:i])
            if candidate in modules:
                return candidate
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = closest(alias.name)
                if target:
                    found.add(target)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = here[:len(here) - (node.level - 1)] if node.level > 1 else here
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                target = closest(f"{base}.{alias.name}") if f"{base}.{alias.name}" in modules else closest(base)
                if target:
                    found.add(target)
    found.discard(module)
    return found


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One cycle of ``graph`` as [a, b, ..., a], or None (iterative depth-first search)."""
    state: Dict[str, int] = {}  # 1 on the current path, 2 done
    for start in sorted(graph):
        if state.get(start):
            continue
        path: List[str] = [start]
        stack = [iter(sorted(graph.get(start, ())))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def import_graph(repo: str, roots: Dict[str, str]) -> Dict[str, Set[str]]:
    modules = project_modules(repo, roots)
    return {m: imports_of(m, p, modules) for m, p in modules.items()}


def test_the_project_has_no_import_cycle():
    graph = import_graph(REPO, ROOTS)
    assert "fsclip.configure" in graph["fsclip.runs"] and "fsclip.trainers.coop" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_walk_finds_a_cycle_through_a_deferred_relative_import(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .b import thing\n")
    (pkg / "a.py").write_text("import os\nfrom pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..a import g\n    return g\n")
    (pkg / "c.py").write_text("from pkg import a\n")
    graph = import_graph(str(tmp_path), {"pkg": "pkg"})
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.c"] == {"pkg.a"}
    assert graph["pkg.sub"] == {"pkg.sub.b"}
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.a"]
    (pkg / "sub" / "b.py").write_text("def f():\n    return 1\n")
    assert find_cycle(import_graph(str(tmp_path), {"pkg": "pkg"})) is None


# The floors of the house: (importer prefixes, what they must not import, why)
FLOORS = [
    (("fsclip.engine",), ("fsclip.adapt", "fsclip.prompting", "fsclip.lowrank", "fsclip.trainers", "fsclip.clip",
                          "fsclip.explain", "fsclip.datasets"), "the engine knows no method, no CLIP, no benchmark"),
    (("fsclip.trainers", "fsclip.adapt", "fsclip.prompting", "fsclip.lowrank", "fsclip.clip", "fsclip.engine"),
     ("fsclip.explain",), "fsclip.explain reads models through their hooks; methods never import it"),
]


def floor_violations(graph: Dict[str, Set[str]]) -> List[str]:
    def under(name: str, prefixes) -> bool:
        return any(name == p or name.startswith(p + ".") for p in prefixes)

    return [f"{m} imports {dep} ({why})" for importers, banned, why in FLOORS
            for m, deps in sorted(graph.items()) if under(m, importers)
            for dep in sorted(deps) if under(dep, banned)]


def test_the_engine_and_the_methods_stay_below_what_uses_them():
    repo = osp.dirname(osp.dirname(osp.abspath(__file__)))
    graph = import_graph(repo, ROOTS)
    assert any(m.startswith("fsclip.explain.") for m in graph)  # the walk sees the package
    assert floor_violations(graph) == []
    bad = dict(graph, **{"fsclip.trainers.x": {"fsclip.explain.source"}, "fsclip.engine.y": {"fsclip.clip.loader"}})
    assert floor_violations(bad) == [
        "fsclip.engine.y imports fsclip.clip.loader (the engine knows no method, no CLIP, no benchmark)",
        "fsclip.trainers.x imports fsclip.explain.source (fsclip.explain reads models through their hooks; "
        "methods never import it)"]
