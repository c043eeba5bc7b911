"""Several configurations of one implementation in one run: one test parameter and one report column each.

``tests/fakes/configured_cases.py`` against ``tests/fakes/configured_impl.py``: configuration ``whole`` passes
everything, ``broken`` fails layout (planted bug) and round_trip (it handles whole pages only and, unlike
``whole``, does not declare the ``whole_pages`` limit), so the columns show both the bug and that each
configuration's declared limits are its own.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hypothesis.core
import pytest

from harness import cli, matrix
from harness.loading import ImplementationError, UnknownConfiguration, load_configurations, load_implementation

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIGURED = "tests.fakes.configured_impl:make_implementation"
CASES = REPO_ROOT / "tests" / "fakes" / "configured_cases.py"


@pytest.fixture
def suite(pytester, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    # TRITON_INTERPRET: set by the Triton test modules at import; it would appear in every configuration string
    for name in ("KVCONFORM_IMPL", "KVCONFORM_PROFILE", "KVCONFORM_HYPOTHESIS_DB", "CI", "TRITON_INTERPRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hypothesis.core, "global_force_seed", None)
    (pytester.path / "conf").mkdir()
    (pytester.path / "conf" / "test_configured.py").write_text(CASES.read_text())
    return pytester


def run(suite, *args: str):
    result = suite.runpytest("conf", "-p", "harness.pytest_plugin", "--impl", CONFIGURED, "--kvconform-report", "out",
                             "-p", "no:cacheprovider", "--hypothesis-profile", "gate", *args)
    path = suite.path / "out" / "kvconform-report.json"
    return result, (json.loads(path.read_text()) if path.exists() else None)


def test_one_run_tests_each_configuration_in_its_own_column(suite):
    result, report = run(suite, "-v")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert [(c["name"], c["impl_name"], c["limits"]) for c in report["configurations"]] == [
        ("whole", "fake whole pages", ["whole_pages"]), ("broken", "fake broken", [])]
    columns = {row["invariant"]: {name: cell["status"] for name, cell in row["configurations"].items()}
               for row in report["rows"]}
    assert columns["layout"] == {"whole": "pass", "broken": "fail"}
    assert columns["round_trip"] == {"whole": "pass", "broken": "fail"}  # the limit is whole's alone
    assert columns["receivers"] == {"whole": "pass", "broken": "pass"}  # uses no implementation: ran once
    assert {row["invariant"]: row["status"] for row in report["rows"] if row["tests"]} == {
        "layout": "fail", "round_trip": "fail", "receivers": "pass"}
    # device-generic ids: the configuration is a parameter like the device, one test body
    result.stdout.fnmatch_lines(["*configurations whole, broken (declared: whole, broken)*"])
    for line in ("test_layout_offsets[[]whole[]] PASSED", "test_layout_offsets[[]broken[]] FAILED",
                 "test_whole_pages[[]cpu-whole[]] PASSED", "test_whole_pages[[]cpu-broken[]] FAILED",
                 "test_without_implementation PASSED"):
        result.stdout.fnmatch_lines([f"conf/test_configured.py::{line}*"])
    failures = {(f["invariant"], f["configuration"]): f for f in report["failures"]}
    assert set(failures) == {("layout", "broken"), ("round_trip", "broken")}
    assert failures["round_trip", "broken"]["test"] == "conf/test_configured.py::test_whole_pages[cpu-broken]"
    assert failures["layout", "broken"]["test"] == "conf/test_configured.py::test_layout_offsets[broken]"
    assert "--impl-config broken" in failures["layout", "broken"]["repro"]
    assert "not whole pages" in failures["round_trip", "broken"]["error"]
    result.stdout.fnmatch_lines(["configuration whole: fake whole pages; limits whole_pages",
                                 "configuration broken: fake broken", "invariant*status*whole*broken*tests*examples*",
                                 "layout*fail*pass*fail*", "round_trip*fail*pass*fail*", "receivers*pass*pass*pass*"])
    md = (suite.path / "out" / "kvconform-report.md").read_text()
    assert "| invariant | status | whole | broken | tests | examples | notes |" in md
    assert "| `layout` Staging layout | **fail** | pass | fail |" in md
    assert "- configuration whole: fake whole pages; limits whole_pages" in md


def test_the_matrix_gives_each_configuration_its_own_column(suite, tmp_path):
    _, report = run(suite)
    path = suite.path / "out" / "kvconform-report.json"
    columns = matrix.build([path])
    assert [c.configuration for c in columns] == [  # in the declared order
        f"--impl {CONFIGURED} --config whole; profile gate; limits whole_pages",
        f"--impl {CONFIGURED} --config broken; profile gate"]
    cells = {c.configuration.split(";")[0][-5:]: c.statuses for c in columns}
    assert cells["whole"]["layout"]["status"] == "pass" and cells["roken"]["layout"]["status"] == "fail"
    assert cells["roken"]["round_trip"]["failures"] == 1 and cells["whole"]["round_trip"]["failures"] == 0
    assert (columns[0].implementation, columns[0].version) == ("fake-configured", "2.0")


def test_a_selected_configuration_runs_alone(suite):
    result, report = run(suite, "--impl-config", "whole")
    assert result.ret == pytest.ExitCode.OK
    assert [c["name"] for c in report["configurations"]] == ["whole"]
    assert all(set(row["configurations"]) == {"whole"} for row in report["rows"])


@pytest.mark.parametrize("value, message", [
    ("nope", "--impl-config=nope: 'nope' is not a configuration of 'tests.fakes.configured_impl:make_implementation'; "
             "valid: whole, broken"),
    ("whole,", "--impl-config=whole,: an empty configuration name; pass names separated by commas, e.g. pull,push"),
])
def test_an_unknown_configuration_is_one_usage_error_line(suite, value, message):
    result, report = run(suite, "--impl-config", value)
    assert result.ret == pytest.ExitCode.USAGE_ERROR and report is None
    assert [line for line in result.errlines if line.strip()] == [f"ERROR: {message}"]


def test_the_cli_config_option_is_validated_before_any_test(suite, monkeypatch):
    monkeypatch.setenv(cli.CONFORMANCE_DIR_ENV_VAR, str(suite.path / "conf"))
    result = suite.run(sys.executable, "-m", "harness", "--impl", CONFIGURED, "--config", "whole,bogus",
                       "--report-dir", "rep")
    assert result.ret == 4
    assert "--config=whole,bogus: 'bogus' is not a configuration of" in result.stderr.str()
    assert "valid: whole, broken" in result.stderr.str() and "passed" not in result.stdout.str()


def test_an_implementation_without_configurations_gets_no_parameter_and_no_column(suite):
    result = suite.runpytest("conf", "-p", "harness.pytest_plugin", "--impl", "tests.fakes.configured_impl:make_old_target",
                             "--kvconform-report", "out", "-p", "no:cacheprovider", "--hypothesis-profile", "gate", "-v")
    assert result.ret == pytest.ExitCode.OK
    report = json.loads((suite.path / "out" / "kvconform-report.json").read_text())
    assert report["configurations"] == [] and all(row["configurations"] == {} for row in report["rows"])
    result.stdout.fnmatch_lines(["*test_layout_offsets PASSED*", "*test_whole_pages[[]cpu[]] PASSED*"])
    naming = suite.runpytest("conf", "-p", "harness.pytest_plugin", "--impl", "tests.fakes.configured_impl:make_old_target",
                             "--impl-config", "whole", "-p", "no:cacheprovider")
    assert naming.ret == pytest.ExitCode.USAGE_ERROR
    naming.stderr.fnmatch_lines(["ERROR: --impl-config=whole: *declares no configurations*; leave the configuration out"])


def test_spec_hash_name_loads_one_configuration_as_a_worker_does(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    loaded = load_configurations(CONFIGURED)
    assert loaded.declared == ("whole", "broken") and loaded.name == "fake-configured 2.0"
    assert [c.spec for c in loaded.selected] == [f"{CONFIGURED}#whole", f"{CONFIGURED}#broken"]
    again = load_implementation(loaded.get("broken").spec)  # what a distributed or isolated worker loads
    assert (again.configuration, again.name, type(again.implementation).__name__) == ("broken", "fake broken", "Broken")
    assert load_implementation(CONFIGURED).configuration == "whole"  # no name: the first declared
    with pytest.raises(UnknownConfiguration, match="'x' is not a configuration of .*; valid: whole, broken"):
        load_implementation(f"{CONFIGURED}#x")
    with pytest.raises(ImplementationError, match=r"configuration names \['a,b'\] must be letters"):
        load_configurations("tests.fakes.configured_impl:make_bad_names")
