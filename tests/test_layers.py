"""The import graph of the project's packages: dependencies run one way and nothing imports in a circle.

    launch/ -> recipes/ -> convert/, data_prep/ -> compat/

Read from the source with `ast` (every ``import`` and ``from ... import`` anywhere in a module, inside
functions too), so a lower layer cannot dodge the rule with a late import.

Examples:
    python -m pytest tests/test_layers.py -q
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("compat", "convert", "data_prep", "recipes", "launch")
# What each package may import from the project, besides itself.
ALLOWED = {
    "compat": set(),
    "data_prep": {"compat"},
    "convert": {"compat", "data_prep"},
    "recipes": {"compat", "data_prep", "convert"},
    "launch": {"compat", "data_prep", "convert", "recipes"},
}


def module_name(path: Path, root: Path = REPO) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_imports(path: Path, modules: set[str], root: Path = REPO) -> set[str]:
    """The project modules that ``path`` imports (a ``from pkg import name`` counts ``pkg.name`` when that is a
    module, else ``pkg``)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            # the longest project module that the import names
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def import_graph(root: Path = REPO, packages=PACKAGES) -> dict[str, set[str]]:
    files = [p for pkg in packages if (root / pkg).is_dir() for p in sorted((root / pkg).rglob("*.py"))]
    modules = {module_name(p, root) for p in files}
    return {module_name(p, root): project_imports(p, modules, root) for p in files}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of two or more modules (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for mod, deps in sorted(graph.items()):
        top = mod.split(".")[0]
        for dep in sorted(deps):
            dep_top = dep.split(".")[0]
            if dep_top != top and dep_top not in ALLOWED[top]:
                bad.append(f"{mod} imports {dep}")
    return bad


def test_dependencies_run_one_way():
    bad = upward_imports(import_graph())
    assert not bad, (
        "imports against the layer order (launch -> recipes -> convert, data_prep -> compat):\n"
        + "\n".join(bad)
    )


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "modules that import each other in a circle:\n" + "\n".join(
        " <-> ".join(c) for c in found
    )


def test_compat_is_at_the_bottom():
    graph = import_graph()
    assert any(m.startswith("compat") for m in graph), "the compatibility package compat/ is missing"
    assert not [
        d for m, deps in graph.items() if m.startswith("compat") for d in deps if not d.startswith("compat")
    ]


def test_the_checker_sees_violations(tmp_path):
    """The checker itself: a late import upward and a two-module circle are both found."""
    for pkg in ("convert", "recipes"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "convert" / "a.py").write_text("def f():\n    from recipes import cpu\n")
    (tmp_path / "recipes" / "cpu.py").write_text("")
    (tmp_path / "convert" / "b.py").write_text("from convert import c\n")
    (tmp_path / "convert" / "c.py").write_text("import convert.b as b\n")
    graph = import_graph(tmp_path, ("convert", "recipes"))
    assert upward_imports(graph) == ["convert.a imports recipes.cpu"]
    assert cycles(graph) == [["convert.b", "convert.c"]]
