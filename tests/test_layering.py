"""Imports point one way: runtime/ at the bottom (what a camera box installs), export/ at the top.

Every import statement of every module is read from its source with ``ast`` (module level and
inside functions, ``if TYPE_CHECKING`` blocks too), so an import that runs only on some code
path is caught as surely as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# package → the project packages it may import. A DAG, so no cycle can form.
ALLOWED = {
    "runtime": set(),
    "kernels": set(),
    "models": {"runtime", "kernels"},
    "calibration": {"runtime"},
    "export": {"runtime", "kernels", "models", "calibration"},
}


def imported_packages(source: str, package: str) -> set[tuple[str, int]]:
    """(project package, line) for every import in source; relative imports stay in package."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [package] if node.level else [node.module or ""]
        else:
            continue
        found |= {(name.split(".")[0], node.lineno) for name in names if name.split(".")[0] in ALLOWED}
    return found


def violations(package: str) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for target, line in sorted(imported_packages(path.read_text(), package)):
            if target != package and target not in ALLOWED[package]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    return bad


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_one_way(package):
    assert (ROOT / package / "__init__.py").is_file()
    assert violations(package) == [], f"{package} may import only {sorted(ALLOWED[package]) or 'no other project package'}"


def test_the_check_sees_imports_inside_functions_and_relative_ones():
    source = "import numpy\ndef f():\n    from export.bundle import x\n    import models.ifdd\nfrom .spec import y\n"
    assert imported_packages(source, "runtime") == {("export", 3), ("models", 4), ("runtime", 5)}


def test_the_table_has_no_cycle():
    def reaches(start: str, goal: str, seen=()) -> bool:
        return any(nxt == goal or (nxt not in seen and reaches(nxt, goal, (*seen, nxt))) for nxt in ALLOWED[start])

    assert not [p for p in ALLOWED if reaches(p, p)]
