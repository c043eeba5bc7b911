"""The import graph stays honest: the reference is judged, never consulted; adapters sit outside the judge.

``reference/`` imports nothing from ``harness/``, ``strategies/`` or
``adapters/``; ``strategies/`` imports nothing from ``reference/``,
``harness/`` or ``adapters/``; the harness (oracles, drivers, plugin) imports
nothing from ``reference/`` and loads it by name, like any plug-in.

Third-party adapters (``adapters/``):

* the harness never imports or names them: they are registered only as
  ``kvconform.implementations`` entry points in pyproject.toml;
* adapters import nothing from ``harness/`` (not even ``harness.interface``:
  its ``poll`` states are plain strings an adapter spells itself), so an
  adapter's standalone repro script (``harness.repro``) runs where only torch
  and the engine are installed; an engine adapter (``adapters/<engine>/``)
  imports, from kvconform, only ``adapters.toolkit`` and its own package --
  never ``reference/``, ``strategies/`` or another engine's adapter.
  Capability and scope-limit names are plain strings that ``harness.loading``
  checks when the implementation loads (an unknown name is a load error naming
  the valid ones), so adapters need not import them;
* ``adapters/toolkit/`` is engine-neutral: it imports nothing from kvconform
  and no engine adapter.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest depends on tomli before 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
KVCONFORM_PACKAGES = {"reference", "strategies", "harness", "adapters"}
FORBIDDEN = {
    "reference": {"harness", "strategies", "adapters"},
    "strategies": {"reference", "harness", "adapters"},
    "harness": {"reference", "adapters"},
}
#: What an engine adapter may import from kvconform, as module-name prefixes (its own package is added).
ADAPTER_MAY_IMPORT = ("adapters.toolkit",)
ENTRY_POINT_GROUP = "kvconform.implementations"


def _module_name(path: Path) -> str:
    """``path``'s dotted module name inside the checkout ("" outside it)."""
    if not path.is_relative_to(ROOT):
        return ""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_targets(path: Path) -> set[str]:
    """Every module or ``module.name`` a file imports, relative imports resolved against its package."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names.update(base if alias.name == "*" else f"{base}.{alias.name}" for alias in node.names)
    return names


def imported_packages(path: Path) -> set[str]:
    return {name.split(".")[0] for name in imported_targets(path)}


def _sources(directory: Path) -> list[Path]:
    return sorted(directory.rglob("*.py"))


def _engine_packages() -> list[Path]:
    return sorted(p for p in (ROOT / "adapters").iterdir()
                  if p.is_dir() and p.name != "toolkit" and (p / "__init__.py").exists())


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_respect_the_graph(package):
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[package])
        for path in _sources(ROOT / package)
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"{package}/ must not import {sorted(FORBIDDEN[package])}: {offenders}"


def _kvconform_imports_outside(path: Path, allowed: tuple[str, ...]) -> list[str]:
    return sorted(
        name for name in imported_targets(path)
        if name.split(".")[0] in KVCONFORM_PACKAGES and not any(name == a or name.startswith(a + ".") for a in allowed)
    )


def test_adapters_import_nothing_from_the_harness():
    """Every adapter file, toolkit included: a repro script of an adapter runs without kvconform."""
    offenders = {str(p.relative_to(ROOT)): sorted(n for n in imported_targets(p) if n.split(".")[0] == "harness")
                 for p in _sources(ROOT / "adapters")}
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"adapters/ must import nothing from harness/: {offenders}"


@pytest.mark.parametrize("engine", [p.name for p in _engine_packages()])
def test_engine_adapters_import_only_the_toolkit_and_their_own_package(engine):
    allowed = (*ADAPTER_MAY_IMPORT, f"adapters.{engine}")
    offenders = {str(p.relative_to(ROOT)): _kvconform_imports_outside(p, allowed) for p in _sources(ROOT / "adapters" / engine)}
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"adapters/{engine}/ may import from kvconform only {list(allowed)}; found {offenders}"


def test_the_toolkit_is_engine_neutral():
    offenders = {str(p.relative_to(ROOT)): _kvconform_imports_outside(p, ("adapters.toolkit",))
                 for p in _sources(ROOT / "adapters" / "toolkit")}
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"adapters/toolkit/ must import nothing from kvconform or an engine adapter: {offenders}"


def test_the_harness_never_names_an_adapter_module():
    """Not even as a string (a built-in name map, an import by name): adapters arrive through entry points."""
    mention = re.compile(r"\badapters\.\w")
    offenders = [f"{p.relative_to(ROOT)}:{n}" for p in _sources(ROOT / "harness")
                 for n, line in enumerate(p.read_text().splitlines(), 1) if mention.search(line)]
    assert not offenders, f"harness/ names adapter modules (register them as entry points instead): {offenders}"


def test_every_engine_adapter_is_registered_as_an_entry_point():
    entry_points = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"][ENTRY_POINT_GROUP]
    targets = {value.partition(":")[0] for value in entry_points.values()}
    unregistered = [p.name for p in _engine_packages() if f"adapters.{p.name}" not in targets]
    assert not unregistered, f"adapters without a {ENTRY_POINT_GROUP} entry point in pyproject.toml: {unregistered}"
    for name, value in entry_points.items():
        module = value.partition(":")[0]
        found = (ROOT / module.replace(".", "/")).with_suffix(".py").exists() or (ROOT / module.replace(".", "/") / "__init__.py").exists()
        assert found, f"entry point {name} = {value!r}: module {module} is not in this checkout"


def test_the_distribution_ships_the_adapters():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert "adapters*" in config["include"], f"[tool.setuptools.packages.find] include={config['include']} lacks adapters*"


def test_the_checker_sees_imports(tmp_path):
    """The control: a planted forbidden import is found, relative imports included."""
    planted = tmp_path / "m.py"
    planted.write_text("import os\nfrom reference.plugin import make_implementation\n")
    assert "reference" in imported_packages(planted)


def test_the_checker_resolves_relative_and_from_imports(monkeypatch, tmp_path):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    module = tmp_path / "adapters" / "eng" / "impl.py"
    module.parent.mkdir(parents=True)
    module.write_text("from ..toolkit import borrow\nfrom . import pin\nfrom harness import scope\nimport harness.interface\n")
    assert imported_targets(module) == {"adapters.toolkit.borrow", "adapters.eng.pin", "harness.scope", "harness.interface"}
    assert _kvconform_imports_outside(module, (*ADAPTER_MAY_IMPORT, "adapters.eng")) == ["harness.interface", "harness.scope"]
