"""Witness-pinned xfails (harness/xfails): the witness decides, at once; fixed, new and stale entries are visible.

A miniature conformance test (``test_layout_offsets``) runs against the fakes of
``tests/fakes/xfail_impl.py`` under the ``gate`` profile, with an xfails file
whose one entry expects ``ValueError: more than 3 writers`` and whose witness
is ``writers=4, tokens=0``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import hypothesis.core
import pytest
import torch  # noqa: F401 - imported here so in-process pytester runs never re-import it

REPO_ROOT = Path(__file__).resolve().parent.parent
FAKES = "tests.fakes.xfail_impl"
TEST_ID = "conf/test_mini.py::test_layout_offsets"

MINI = '''
import pytest
from hypothesis import given, strategies as st


@pytest.mark.invariant("layout", requires=("layout",))
@given(writers=st.integers(1, 6), tokens=st.integers(0, 16))
def test_layout_offsets(impl, writers, tokens):
    size = 2 * tokens * 2 * 1 * 4 * 2
    spans = [tuple(s) for s in impl.staging_layout(writers, tokens, 2, 1, 4, 2)]
    assert spans == [(w * size, size) for w in range(writers)], "offsets"
'''


def witness(writers: int = 4, tokens: int = 0) -> dict:
    return {"format": "kvconform-case/1", "test": TEST_ID, "kwargs": {"writers": writers, "tokens": tokens}}


def entry(**overrides) -> dict:
    return {"test": TEST_ID, "error": "ValueError", "match": "more than 3 writers", "witness": witness(),
            "reason": "refuses a fourth writer", "upstream": "https://example.invalid/issue/1", **overrides}


@pytest.fixture
def suite(pytester, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    for name in ("KVCONFORM_IMPL", "KVCONFORM_PROFILE", "KVCONFORM_HYPOTHESIS_DB", "CI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hypothesis.core, "global_force_seed", None)
    (pytester.path / "conf").mkdir()
    (pytester.path / "conf" / "test_mini.py").write_text(MINI)
    return pytester


def run(suite, factory: str, entries: list[dict], *args: str):
    (suite.path / "known.json").write_text(json.dumps({"format": "kvconform-xfails/1", "entries": entries}))
    result = suite.runpytest("conf", "-p", "harness.pytest_plugin", "--impl", f"{FAKES}:{factory}",
                             "--xfails", "known.json", "--hypothesis-profile", "gate", "--corpus", "none",
                             "--kvconform-report", "out", "-p", "no:cacheprovider", "-rsxX", *args)
    report = json.loads((suite.path / "out" / "kvconform-report.json").read_text())
    return result, report


def layout_row(report) -> dict:
    return next(row for row in report["rows"] if row["invariant"] == "layout")


def test_witness_failing_the_same_way_is_xfail_at_once(suite):
    result, report = run(suite, "known_bug", [entry()])
    assert result.ret == pytest.ExitCode.OK
    assert layout_row(report)["status"] == "xfail"
    assert layout_row(report)["examples"] == 1  # the witness alone: no generation, no shrinking
    assert report["xfails"] == [{"entry": f"known.json#1 ({TEST_ID})", "state": "xfail", "tests": [TEST_ID]}]
    assert report["failures"] == []


def test_fixed_entry_is_reported_fixed_and_strict_mode_fails_it(suite):
    result, report = run(suite, "fixed", [entry()])
    assert result.ret == pytest.ExitCode.OK
    assert layout_row(report)["status"] == "pass" and layout_row(report)["fixed"] == 1
    assert report["xfails"][0]["state"] == "fixed"
    assert "fixed (remove its xfails entry)" in result.stdout.str()

    result, report = run(suite, "fixed", [entry()], "--strict-xfails")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert layout_row(report)["status"] == "fail"
    assert "no longer fails" in report["failures"][0]["error"] and report["xfails"][0]["state"] == "fail"


def test_witness_failing_another_way_is_a_failure(suite):
    result, report = run(suite, "other_error", [entry()])
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert layout_row(report)["status"] == "fail"
    # the guard reports the implementation's KeyError (the listed bug is a ValueError) as the call that raised it
    assert re.match(r"ImplementationFault: \[layout\] impl\.staging_layout\(.*\) raised KeyError: ",
                    report["failures"][0]["error"])


def test_new_failure_of_an_xfailed_test_is_a_failure(suite):
    """The listed bug is gone (its witness passes) and generation finds another: a failure, not an xfail."""
    result, report = run(suite, "fixed_with_new_bug", [entry()])
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert layout_row(report)["status"] == "fail"
    assert report["failures"][0]["error"].startswith("AssertionError: offsets")
    assert report["xfails"][0]["state"] == "fail"


def test_entry_without_witness_matches_on_error_class_and_fragment(suite):
    result, report = run(suite, "known_bug", [entry(witness=None)])
    assert (result.ret, layout_row(report)["status"]) == (pytest.ExitCode.OK, "xfail")
    result, report = run(suite, "known_bug", [entry(witness=None, match="another message")])
    assert (result.ret, layout_row(report)["status"]) == (pytest.ExitCode.TESTS_FAILED, "fail")


def test_version_condition_that_does_not_hold_disables_the_entry(suite):
    result, report = run(suite, "known_bug", [entry(versions="<0.0.1")])
    assert layout_row(report)["status"] == "fail"
    assert report["xfails"][0]["state"] == "not-run"


def test_stale_entry_warns_naming_it(suite):
    stale = entry(test="conf/test_mini.py::test_renamed_long_ago", witness=None)
    result, report = run(suite, "fixed", [stale])
    result.stdout.fnmatch_lines(["*xfails entry known.json#1 (conf/test_mini.py::test_renamed_long_ago) matches no "
                                 "collected test*"])
    assert report["xfails"][0]["state"] == "stale"


def test_malformed_entry_is_a_usage_error_naming_it(suite):
    result, _ = run(suite, "fixed", [entry()])  # writes the report directory
    (suite.path / "bad.json").write_text(json.dumps({"format": "kvconform-xfails/1",
                                                     "entries": [entry(), {**entry(), "eror": "typo"}]}))
    result = suite.runpytest("conf", "-p", "harness.pytest_plugin", "--impl", f"{FAKES}:fixed", "--xfails", "bad.json",
                             "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*entry bad.json#2: unknown field 'eror'*"])


def test_bundled_sglang_list_parses_and_names_real_tests():
    """Every entry of the shipped list is well formed, names a conformance test that exists, and has a witness
    unless its test draws nothing a case can hold."""
    from harness.xfails import read_xfails

    entries = read_xfails(REPO_ROOT / "harness" / "xfails" / "sglang.json")
    assert entries
    for item in entries:
        path, _, name = item.test.partition("[")[0].partition("::")
        assert f"def {name}(" in (REPO_ROOT / path).read_text(), item.label
        assert item.upstream and item.reason
