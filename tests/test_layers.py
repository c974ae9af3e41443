"""DESIGN.md's layers, checked on the source: one import namespace, arrows pointing down, no import cycle.

Every module of ours is `distill.*`; its layer follows from its name:

    core      distill.core.*       imports nothing of ours
    toyworld  distill.toyworld.*   core
    teachers  distill.teachers.*   core                          (folder teachers/)
    students  distill.students.*   teachers, core                (folder students/)
    eval      distill.eval.*       teachers, toyworld, core      (folder eval/)
    engine    every other distill.*  all of the above

Tests follow the layer they test (tests/eval/ may import what eval may, plus the toy world, which every test uses as
its domain); scripts may import anything of ours, through `distill` only.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"distill": "distill", "teachers": "distill.teachers", "students": "distill.students",
           "eval": "distill.eval"}
LAYERS = ("core", "toyworld", "teachers", "students", "eval")
ALLOWED = {"core": set(), "toyworld": {"core"}, "teachers": {"core"}, "students": {"teachers", "core"},
           "eval": {"teachers", "toyworld", "core"}, "engine": {*LAYERS, "engine"}}
# Names a bare top-level import of ours would have had before the one-namespace layout (and that a user's own
# repository may well hold): none of our files may import them.
FOREIGN_TOP_LEVEL = {"teachers", "students", "eval"}


def _modules() -> dict[str, Path]:
    """Every module of the installed package, by dotted name."""
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([package, *parts])
            if folder == "distill" and parts and parts[0] in ("teachers", "students", "eval"):
                raise AssertionError(f"{path} would shadow the mapped folder {parts[0]}/")
            found[name] = path
    return found


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return parts[1]
    return "engine"


def _imports(path: Path, modules: dict[str, Path], package: str | None = None) -> set[str]:
    """Our modules that `path` imports anywhere (at top level or inside functions), as dotted names; a bare import
    of a foreign top-level name of ours is returned as-is so that the caller can refuse it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                assert package, f"{path}: relative import outside a package"
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names = [f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module for a in node.names]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top in FOREIGN_TOP_LEVEL:
                found.add(name)
            elif top == "distill":
                while name not in modules and "." in name:
                    name = name.rsplit(".", 1)[0]
                found.add(name)
    return found


def _package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rsplit(".", 1)[0]


def test_one_import_namespace_and_no_shadowing_folders():
    modules = _modules()
    assert all(m == "distill" or m.startswith("distill.") for m in modules)
    for sub in ("distill.teachers", "distill.students", "distill.eval", "distill.core", "distill.toyworld"):
        assert sub in modules, f"{sub} is missing"


def test_imports_point_down_the_layers():
    modules = _modules()
    bad = []
    for name, path in modules.items():
        layer = _layer(name)
        for target in _imports(path, modules, _package_of(name, path)):
            if target.split(".")[0] != "distill":
                bad.append(f"{path.relative_to(ROOT)} imports the bare top-level {target!r}")
            elif _layer(target) not in ALLOWED[layer] | {layer}:
                bad.append(f"{path.relative_to(ROOT)} ({layer}) imports {target} ({_layer(target)})")
    assert not bad, "layer violations:\n" + "\n".join(bad)


def test_tests_and_scripts_import_through_distill_and_follow_their_layer():
    modules = _modules()
    bad = []
    for path in sorted((ROOT / "tests").rglob("*.py")) + sorted((ROOT / "scripts").rglob("*.py")):
        rel = path.relative_to(ROOT)
        sub = rel.parts[1] if rel.parts[0] == "tests" and len(rel.parts) > 2 else None
        allowed = ALLOWED[sub] | {sub, "toyworld"} if sub in LAYERS else ALLOWED["engine"]
        for target in _imports(path, modules):
            if target.split(".")[0] != "distill":
                bad.append(f"{rel} imports the bare top-level {target!r}")
            elif _layer(target) not in allowed:
                bad.append(f"{rel} (tests of {sub}) imports {target} ({_layer(target)})")
    assert not bad, "\n".join(bad)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_no_import_cycle_even_through_function_level_imports():
    modules = _modules()
    graph = {name: {t for t in _imports(path, modules, _package_of(name, path)) if t in modules and t != name}
             for name, path in modules.items()}
    assert not _cycles(graph), f"import cycles: {_cycles(graph)}"


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
