"""The import graph stays honest: the reference is judged, never consulted.

``reference/`` imports nothing from ``harness/`` or ``strategies/``;
``strategies/`` imports nothing from ``reference/`` or ``harness/``; the harness
(oracles, drivers, plugin) imports nothing from ``reference/`` and loads it by
name, like any plug-in.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"reference": {"harness", "strategies"}, "strategies": {"reference", "harness"}, "harness": {"reference"}}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_respect_the_graph(package):
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[package])
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"{package}/ must not import {sorted(FORBIDDEN[package])}: {offenders}"


def test_the_checker_sees_imports(tmp_path):
    """The control: a planted forbidden import is found."""
    planted = tmp_path / "m.py"
    planted.write_text("import os\nfrom reference.plugin import make_implementation\n")
    assert "reference" in imported_packages(planted)
