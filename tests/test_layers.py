"""DESIGN.md's layers: arrows point down (teachers <- students, eval <- distill)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OURS = {"distill", "teachers", "students", "eval", "scripts"}
ALLOWED = {"teachers": set(), "students": {"teachers"}, "eval": {"teachers"},
           "distill": {"teachers", "students", "eval"}}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & OURS


def test_imports_point_down_the_layers():
    bad = []
    for package, allowed in ALLOWED.items():
        files = list((ROOT / package).rglob("*.py"))
        assert files or package in ("students", "eval"), f"package {package} has no code"
        for path in files:
            wrong = _imports(path) - allowed - {package}
            if wrong:
                bad.append(f"{path.relative_to(ROOT)} imports {sorted(wrong)}")
    assert not bad, "layer violations:\n" + "\n".join(bad)
