"""The layout rule of the README: ``p2pep/`` never imports ``services/``, and nothing in
either imports a test double (``tests/fakes/``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def sources(top: str) -> list[Path]:
    generated = (ROOT / "p2pep" / "v1", ROOT / "p2pep" / "lndrpc")
    return [p for p in sorted((ROOT / top).rglob("*.py")) if not any(g in p.parents for g in generated)]


@pytest.mark.parametrize("top", ["p2pep", "services"])
def test_imports_follow_the_layout(top: str) -> None:
    bad = []
    for path in sources(top):
        for module in imported_modules(path):
            root = module.split(".")[0]
            if (top == "p2pep" and root == "services") or root in ("fakes", "tests"):
                bad.append(f"{path.relative_to(ROOT)}: {module}")
    assert not bad, bad
