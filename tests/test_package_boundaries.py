"""ARCHITECTURE.md: loopline and crmsandbox never import each other; they meet only over HTTPS."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"


def imported_top_levels(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (SRC / package).rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(SRC)))
    return found


@pytest.mark.parametrize(("package", "forbidden"), [("loopline", "crmsandbox"), ("crmsandbox", "loopline")])
def test_packages_do_not_import_each_other(package, forbidden):
    offenders = imported_top_levels(package).get(forbidden, set())
    assert not offenders, f"{package} imports {forbidden} in: {sorted(offenders)}"


def test_the_check_sees_imports():
    assert "django" in imported_top_levels("loopline")
