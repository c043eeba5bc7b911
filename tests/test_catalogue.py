"""The registries drive the docs and the catalogue is covered: README's invariant and capability tables are
generated (``harness/docs.py``), every invariant has conformance tests, and every invariant has a deliberately
broken implementation that a meta-test catches on it."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import types
from pathlib import Path

import pytest

from harness import catalogue, conformance, docs

ROOT = Path(__file__).resolve().parents[1]
META_TESTS = sorted((ROOT / "tests").glob("test_meta_*.py"))
_TAG = re.compile(r"\[(\w+)\]")


def test_readme_tables_are_generated_from_the_registries():
    readme = (ROOT / "README.md").read_text()
    assert docs.with_blocks(readme) == readme, (
        f"README.md's generated tables differ from harness/catalogue.py / harness/interface.py; "
        f"regenerate them: {docs.UPDATE_COMMAND}")


def test_regeneration_replaces_only_the_blocks():
    stale = "".join(f"intro {name}\n{docs.begin(name)}\n| old | row |\n{docs.end(name)}\n" for name in docs.BLOCKS)
    fresh = docs.with_blocks(stale + "rest\n")
    assert "| old | row |" not in fresh and fresh.startswith("intro ") and fresh.endswith(f"{docs.end(list(docs.BLOCKS)[-1])}\nrest\n")
    assert all(f"| `{inv.id}` |" in fresh for inv in catalogue.INVARIANTS)
    assert "| `allocator` | `make_allocator` (→ `assign`, `free`, `watermark`), `writer_may_write` |" in fresh
    with pytest.raises(ValueError, match="lacks the markers of the invariants table"):
        docs.with_blocks("no markers here")


@pytest.mark.parametrize("name", sorted(docs.BLOCKS))
def test_markdown_command_prints_a_table(capsys, name):
    assert docs.main(["--markdown", name]) == 0
    assert capsys.readouterr().out == docs.BLOCKS[name]()


# -- every invariant has conformance tests -------------------------------------------------------------
def marked_invariants(module: types.ModuleType) -> set[str]:
    """Invariant ids of the ``@pytest.mark.invariant`` markers on ``module``'s tests (as pytest reads them)."""
    found = set()
    for obj in [module, *vars(module).values()]:
        for mark in getattr(obj, "pytestmark", []):
            if getattr(mark, "name", None) == "invariant" and mark.args:
                found.add(mark.args[0])
    return found


def test_every_invariant_has_a_conformance_test():
    tested: dict[str, list[str]] = {}
    for info in pkgutil.iter_modules(conformance.__path__):
        if info.name.startswith("test_"):
            module = importlib.import_module(f"{conformance.__name__}.{info.name}")
            for invariant in marked_invariants(module):
                tested.setdefault(invariant, []).append(info.name)
    missing = [inv.id for inv in catalogue.INVARIANTS if inv.id not in tested]
    assert not missing, f"no @pytest.mark.invariant test in harness/conformance for {missing}"
    assert set(tested) <= set(catalogue.BY_ID), f"markers name ids the catalogue lacks: {set(tested) - set(catalogue.BY_ID)}"


# -- every invariant has a broken implementation the meta-tests catch on it ---------------------------
def caught_by_meta_tests(source: str, namespace: dict) -> dict[str, set[str]]:
    """Invariant id -> broken implementations a meta-test module shows caught on it.

    Read from the meta-tests themselves: a unit (a test function with its
    decorators, or one entry of a module-level table such as ``CASES``) that
    names a class from ``tests.broken*`` and an invariant tag (``"[id]"``, or an
    f-string evaluating to one) pairs them.
    """
    caught: dict[str, set[str]] = {}
    for unit in _units(ast.parse(source)):
        tags = {m for text in _strings(unit, namespace) for m in _TAG.findall(text) if m in catalogue.BY_ID}
        broken = {name for name in _broken_classes(unit, namespace)}
        for tag in tags if broken else ():
            caught.setdefault(tag, set()).update(broken)
    return caught


def _units(tree: ast.Module) -> list[ast.AST]:
    units: list[ast.AST] = []
    for node in tree.body:
        value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
        if isinstance(value, (ast.List, ast.Tuple)) and all(isinstance(e, ast.Tuple) for e in value.elts):
            units.extend(value.elts)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            units.append(node)
    return units


def _strings(unit: ast.AST, namespace: dict) -> list[str]:
    texts = []
    for node in ast.walk(unit):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            texts.append(node.value)
        elif isinstance(node, ast.JoinedStr):
            try:
                texts.append("".join(str(p.value) if isinstance(p, ast.Constant) else
                                     format(eval(ast.unparse(p.value), dict(namespace))) for p in node.values))
            except Exception:  # noqa: BLE001 - an f-string over local names is no module-level tag
                pass
    return texts


def _broken_classes(unit: ast.AST, namespace: dict) -> set[str]:
    found = set()
    for node in ast.walk(unit):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            module = namespace.get(node.value.id)
            if isinstance(module, types.ModuleType) and module.__name__.startswith("tests.broken") \
                    and isinstance(getattr(module, node.attr, None), type):
                found.add(f"{module.__name__}.{node.attr}")
    return found


def test_every_invariant_has_a_broken_implementation_caught_on_it():
    caught: dict[str, set[str]] = {}
    for path in META_TESTS:
        module = importlib.import_module(f"tests.{path.stem}")
        for invariant, broken in caught_by_meta_tests(path.read_text(), vars(module)).items():
            caught.setdefault(invariant, set()).update(broken)
    missing = [inv.id for inv in catalogue.INVARIANTS if not caught.get(inv.id)]
    assert not missing, (f"no deliberately broken implementation in tests/broken*/ is shown caught on {missing} "
                         f"by {[p.name for p in META_TESTS]}")


def test_meta_test_reader_pairs_only_units_with_both():
    """The control: the reader finds a planted pair, and nothing where a tag or a broken class is missing."""
    broken = types.ModuleType("tests.broken.planted")
    broken.Bug = type("Bug", (), {})  # type: ignore[attr-defined]
    concurrency = types.SimpleNamespace(INVARIANT="concurrency")
    source = (
        "CASES = [(planted.Bug, check, '[layout]'), (check, '[isolation]')]\n"
        "def test_caught():\n    caught(planted.Bug(), f'[{concurrency.INVARIANT}]')\n"
        "def test_no_tag():\n    run(planted.Bug())\n"
    )
    found = caught_by_meta_tests(source, {"planted": broken, "concurrency": concurrency})
    assert found == {"layout": {"tests.broken.planted.Bug"}, "concurrency": {"tests.broken.planted.Bug"}}


def test_marker_reader_sees_function_and_module_markers():
    """The control for the conformance-test reader."""
    planted = types.ModuleType("planted")
    planted.pytestmark = [pytest.mark.invariant("layout").mark]  # type: ignore[attr-defined]

    @pytest.mark.invariant("isolation", requires=("kv_copy",))
    def test_x():
        pass

    planted.test_x = test_x  # type: ignore[attr-defined]
    planted.helper = lambda: None  # type: ignore[attr-defined]
    assert marked_invariants(planted) == {"layout", "isolation"}
