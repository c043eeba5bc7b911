"""Catalogue versioning: every conformance test says which catalogue version added it (``since=``); an
implementation may target an older version, and a failing test newer than that reads "new since your version".

The meta-test runs a miniature conformance module under a catalogue bumped to 1.2 (as a release adding
checks does) against fakes targeting 1.0 (``tests/fakes/configured_impl.py``).
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from pathlib import Path

import hypothesis.core
import pytest

from harness import catalogue, conformance
from harness.catalogue import newer_than, parse_catalogue_version
from harness.loading import ImplementationError, load_implementation

REPO_ROOT = Path(__file__).resolve().parent.parent
OLD_TARGET = "tests.fakes.configured_impl:make_old_target"

CASES_1_1 = '''
import pytest


@pytest.mark.invariant("layout", since="1.0")
def test_old_check(impl):
    assert impl.staging_layout(3, 1, 1, 1, 1, 1) == [(0, 2), (2, 2), (4, 2)]


@pytest.mark.invariant("round_trip", since="1.2")
def test_new_check_fails(impl):
    raise AssertionError("a check added in catalogue 1.2")


@pytest.mark.invariant("isolation", since="1.2")
def test_new_check_passes(impl):
    pass
'''


def conformance_markers():
    """``(module, test name, invariant mark)`` of every test in harness/conformance, as pytest reads them."""
    for info in pkgutil.iter_modules(conformance.__path__):
        if not info.name.startswith("test_"):
            continue
        module = importlib.import_module(f"{conformance.__name__}.{info.name}")
        for name, obj in vars(module).items():
            for mark in getattr(obj, "pytestmark", []):
                if getattr(mark, "name", None) == "invariant":
                    yield info.name, name, mark


def test_every_conformance_test_says_since_which_catalogue_version():
    marks = list(conformance_markers())
    assert len(marks) > 30
    missing = [f"{module}::{name}" for module, name, mark in marks if "since" not in mark.kwargs]
    assert not missing, f"add since=\"<catalogue version that added it>\" to the invariant marker of {missing}"
    for module, name, mark in marks:
        parse_catalogue_version(mark.kwargs["since"])  # a version this catalogue knows


def test_catalogue_versions_are_checked_and_compared_numerically(monkeypatch):
    assert parse_catalogue_version(catalogue.CATALOGUE_VERSION) >= (1, 0)
    for bad in ("1.2", "0.9", "1", "v1.0", 1.0, None):
        with pytest.raises(ValueError, match="is not a catalogue version this kvconform knows"):
            parse_catalogue_version(bad)
    monkeypatch.setattr(catalogue, "CATALOGUE_VERSION", "1.10")  # what a bump does; nothing else changes
    assert newer_than("1.10", "1.9") and newer_than("1.2", "1.0") and not newer_than("1.0", "1.0")


def test_a_targeted_version_is_validated_at_load_time(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    assert load_implementation(OLD_TARGET).catalogue_version == "1.0"
    with pytest.raises(ImplementationError, match=r"'catalogue_version' '9.9' is not a catalogue version .* from 1.0 to"):
        load_implementation("tests.fakes.configured_impl:make_bad_target")
    configured = load_implementation("tests.fakes.configured_impl:OldTargetConfigurations")
    assert configured.catalogue_version == "1.0"  # declared once, on the object declaring the configurations


@pytest.fixture
def suite_1_1(pytester, monkeypatch):
    """A pytester directory with checks of catalogue 1.0 and 1.2, the catalogue bumped to 1.2."""
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    for name in ("KVCONFORM_IMPL", "KVCONFORM_PROFILE", "KVCONFORM_HYPOTHESIS_DB", "CI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hypothesis.core, "global_force_seed", None)
    monkeypatch.setattr(catalogue, "CATALOGUE_VERSION", "1.2")
    pytester.makepyfile(test_versions=CASES_1_1)
    return pytester


def run(pytester, spec: str):
    result = pytester.runpytest("test_versions.py", "-p", "harness.pytest_plugin", "--impl", spec,
                                "--kvconform-report", "out", "-p", "no:cacheprovider")
    return result, json.loads((pytester.path / "out" / "kvconform-report.json").read_text())


def test_a_failing_check_newer_than_the_target_is_new_since_your_version(suite_1_1):
    result, report = run(suite_1_1, OLD_TARGET)
    assert result.ret == pytest.ExitCode.OK  # documented: a new check does not fail the run
    statuses = {row["invariant"]: row["status"] for row in report["rows"] if row["tests"]}
    assert statuses == {"layout": "pass", "round_trip": "new-since-target", "isolation": "pass"}
    assert report["impl"]["catalogue_version"] == "1.0" and report["failures"] == []
    assert report["summary"]["new-since-target"] == 1 and report["summary"]["new_checks"] == 1
    [new] = report["new_checks"]
    assert (new["test"], new["since"], new["status"]) == ("test_versions.py::test_new_check_fails", "1.2", "fail")
    assert new["error"] == "AssertionError: a check added in catalogue 1.2"
    result.stdout.fnmatch_lines(["targets catalogue 1.0", "round_trip*new-since-target*",
                                 "NEW-SINCE-TARGET (catalogue 1.2) FAIL [[]round_trip[]] test_versions.py::test_new_check_fails",
                                 "failure statuses:",
                                 "*new-since-target: new since your version: *"])
    md = (suite_1_1.path / "out" / "kvconform-report.md").read_text()
    assert "## New since your version (new-since-target)" in md and "- added in catalogue 1.2" in md
    assert "- **new-since-target** (row status): new since your version" in md


def test_without_a_target_or_with_configurations(suite_1_1):
    """No declared target: the current catalogue, so a new check's failure is a failure.  A target declared on
    the object declaring configurations holds for each, in each column."""
    result, report = run(suite_1_1, "tests.fakes.configured_impl:make_implementation")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    round_trip = next(row for row in report["rows"] if row["invariant"] == "round_trip")
    assert round_trip["status"] == "fail" and report["new_checks"] == []
    result, report = run(suite_1_1, "tests.fakes.configured_impl:OldTargetConfigurations")
    round_trip = next(row for row in report["rows"] if row["invariant"] == "round_trip")
    assert {name: cell["status"] for name, cell in round_trip["configurations"].items()} == {
        "whole": "new-since-target", "broken": "new-since-target"}
    assert [c["catalogue_version"] for c in report["configurations"]] == ["1.0", "1.0"]
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # broken's layout bug (a 1.0 check) still fails the run
    assert [(f["invariant"], f["configuration"]) for f in report["failures"]] == [("layout", "broken")]


def test_a_since_newer_than_the_catalogue_is_a_usage_error(pytester, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    pytester.makepyfile(test_future='import pytest\n\n@pytest.mark.invariant("layout", since="1.2")\ndef test_x(impl):\n'
                                    '    pass\n')
    result = pytester.runpytest("-p", "harness.pytest_plugin", "--impl", OLD_TARGET, "test_future.py", "-p",
                                "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*test_future.py::test_x: since='1.2': '1.2' is not a catalogue version this kvconform*"])
