"""The pytest plugin's report and the kvconform CLI, on a fake conformance module and a fake implementation.

``tests/fakes/conformance_cases.py`` against ``tests/fakes/fake_impl.py`` gives:
layout fail (Hypothesis), head_coverage pass, round_trip not-implemented,
isolation fail (or xfail when listed), bad_topology and receivers pass.
In-process pytester runs keep this fast; xdist and the CLI run as subprocesses.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import sys
from pathlib import Path

import hypothesis
import hypothesis.core
import pytest
import torch  # imported here so in-process pytester runs never re-import it

from harness import cli
from harness.catalogue import INVARIANTS

REPO_ROOT = Path(__file__).resolve().parent.parent
FAKE = "tests.fakes.fake_impl:make_implementation"
CASES = REPO_ROOT / "tests" / "fakes" / "conformance_cases.py"
EXPECTED_STATUSES = {
    "head_coverage": "pass", "layout": "fail", "round_trip": "not-implemented", "isolation": "fail",
    "path_equivalence": "not-run", "receivers": "pass", "allocator": "not-run", "lifecycle": "not-run",
    "concurrency": "not-run", "device": "not-run", "bad_topology": "pass",
}


@pytest.fixture
def suite(pytester, monkeypatch):
    """A pytester directory holding the fake conformance module; the fakes importable in subprocesses too."""
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    for name in ("KVCONFORM_IMPL", "KVCONFORM_PROFILE", "KVCONFORM_HYPOTHESIS_DB", "CI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hypothesis.core, "global_force_seed", None)  # --hypothesis-seed in-process sets it
    (pytester.path / "conf").mkdir()
    (pytester.path / "conf" / "test_fake_conformance.py").write_text(CASES.read_text())
    return pytester


def run_plugin(pytester, *args: str, inprocess: bool = True):
    """Run the fake suite under the plugin; return (result, report dict)."""
    argv = ["-p", "harness.pytest_plugin", "--impl", FAKE, "--kvconform-report", "out", "-p", "no:cacheprovider",
            "-rs", *args]
    if not any(a.startswith("conf") for a in args):
        argv.insert(0, "conf")
    result = pytester.runpytest(*argv) if inprocess else pytester.runpytest_subprocess(*argv)
    report = json.loads((pytester.path / "out" / "kvconform-report.json").read_text())
    return result, report


def rows(report) -> dict[str, dict]:
    return {row["invariant"]: row for row in report["rows"]}


def test_failing_hypothesis_test_has_counterexample_blob_and_working_repro(suite):
    result, report = run_plugin(suite)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    by_id = rows(report)
    assert {k: v["status"] for k, v in by_id.items()} == EXPECTED_STATUSES
    assert by_id["layout"]["examples"] > 1 and by_id["head_coverage"]["examples"] >= 4
    assert by_id["bad_topology"]["examples"] == 1  # plain test counts once
    failure = next(f for f in report["failures"] if f["invariant"] == "layout")
    assert failure["test"] == "conf/test_fake_conformance.py::test_layout_offsets"
    assert "writers=3" in failure["counterexample"] and "tokens=0" in failure["counterexample"]
    assert failure["reproduce_failure"].startswith("@reproduce_failure(")
    assert failure["error"].startswith("AssertionError: assert [(0, 0), (0, 0), (1, 0)]")
    assert failure["seed"] and failure["seed"].isdigit()  # found by generation in a fresh database
    result.stdout.fnmatch_lines([
        "*kvconform conformance report*",
        "layout*fail*1*",
        "FAIL [[]layout[]] conf/test_fake_conformance.py::test_layout_offsets",
        "*blob: @reproduce_failure(*",
        "*repro: python -m pytest -p harness.pytest_plugin --impl tests.fakes.fake_impl:make_implementation*",
    ])
    words = shlex.split(failure["repro"])
    assert words[:3] == ["python", "-m", "pytest"]
    rerun = suite.runpytest(*words[3:], "-p", "no:cacheprovider")
    assert rerun.ret == pytest.ExitCode.TESTS_FAILED
    rerun.stdout.fnmatch_lines(["*writers=3,*", "*1 failed*"])


def test_missing_capability_is_a_visible_not_implemented_skip(suite):
    result, report = run_plugin(suite, "-k", "round_trip")
    row = rows(report)["round_trip"]
    assert (row["status"], row["not_implemented"], row["missing_capabilities"]) == ("not-implemented", 1, ["kv_copy"])
    result.stdout.fnmatch_lines(["SKIPPED*not implemented: fake lacks capability 'kv_copy'"])


def test_xfails_file_turns_listed_failures_into_xfail_rows(suite):
    known = {"format": "kvconform-xfails/1", "entries": [
        {"invariant": "isolation", "test": "test_replicated_heads", "error": "AssertionError", "match": "assert",
         "witness": None, "reason": "replicated heads by rank % H", "upstream": "tests/fakes/fake_impl.py"},
        {"test": "conf/test_fake_conformance.py::test_layout_offsets", "error": "AssertionError", "match": "assert",
         "witness": {"format": "kvconform-case/1", "test": "conf/test_fake_conformance.py::test_layout_offsets",
                     "kwargs": {"writers": 3, "tokens": 1}},
         "reason": "slot 2 shifted", "upstream": "tests/fakes/fake_impl.py"}]}
    (suite.path / "known.json").write_text(json.dumps(known))
    result, report = run_plugin(suite, "--xfails", "known.json")
    assert result.ret == pytest.ExitCode.OK
    by_id = rows(report)
    assert (by_id["isolation"]["status"], by_id["layout"]["status"]) == ("xfail", "xfail")
    assert report["failures"] == [] and report["xfails_file"].endswith("known.json")
    assert [x["state"] for x in report["xfails"]] == ["xfail", "xfail"]


def test_json_schema_and_markdown(suite):
    _, report = run_plugin(suite)
    assert set(report) == {"schema_version", "impl", "versions", "profile", "devices", "xfails_file", "completion",
                           "summary", "rows", "failures", "run", "configurations", "new_checks", "class_coverage"}
    assert report["configurations"] == [] and report["new_checks"] == []  # no configurations, no target declared
    assert report["completion"] == {"state": "complete", "exit_status": 1, "note": None}
    # "ci" when Hypothesis detected a CI environment when it was imported (the plugin keeps that choice)
    assert report["schema_version"] == 1 and report["profile"] in ("default", "ci")
    assert report["impl"] == {"spec": FAKE, "name": "fake", "target": FAKE,
                              "capabilities": ["head_mapping", "layout"], "limits": [], "error": None,
                              "catalogue_version": None}
    assert set(report["versions"]) == {"python", "torch", "triton", "hypothesis", "pytest", "kvconform"}
    assert set(report["run"]) == {"suite", "catalogue_version", "implementation", "configuration", "device_names",
                                  "driver", "platform"}
    assert report["devices"]["requested"] == "all" and "cpu" in report["devices"]["selected"]
    assert [row["invariant"] for row in report["rows"]] == [inv.id for inv in INVARIANTS]
    row_keys = {"invariant", "title", "status", "tests", "passed", "failed", "interrupted", "xfailed", "xpassed",
                "fixed", "not_implemented", "skipped", "examples", "shrinks", "missing_capabilities", "failure_statuses",
                "configurations", "classes"}
    assert all(set(row) == row_keys and row["configurations"] == {} for row in report["rows"])
    assert {f["invariant"] for f in report["failures"]} == {"layout", "isolation"}
    assert all(set(f) == {"invariant", "test", "index", "test_failures", "status", "phase", "error", "explanation",
                          "counterexample", "reproduce_failure", "seed", "case_file", "case", "repro", "configuration",
                          "repro_script", "repro_script_note"}
               and f["configuration"] is None for f in report["failures"])
    assert all(f["repro_script"] == f"repro_{f['test'].rpartition('::')[2]}_1.py" for f in report["failures"])
    assert report["summary"]["fail"] == 2 and report["summary"]["failed_tests"] == 2
    assert report["summary"]["failures"] == 2
    assert report["summary"]["failure_statuses"] == {"fail": 2, "timeout": 0, "crash": 0, "out-of-bounds": 0}
    md = (suite.path / "out" / "kvconform-report.md").read_text()
    assert "| `layout` Staging layout | **fail** |" in md and "## Failures" in md and "@reproduce_failure(" in md
    assert "## Legend" in md and "- **out-of-bounds**: " in md and "- suite: kvconform " in md


DISTINCT_FAILURES = """
import pytest
import torch
from hypothesis import given, settings, strategies as st

from harness.engine.buffers import Guarded


@pytest.mark.invariant("layout")
@settings(database=None, derandomize=True, max_examples=200, report_multiple_bugs=True)  # both bugs found, every run
@given(x=st.integers(0, 100), y=st.integers(0, 100))
def test_two_ways(impl, x, y):
    if x % 7 == 1:
        raise ValueError("planted crash")
    assert y < 50, "planted violation"


@pytest.mark.invariant("isolation")
def test_out_of_bounds(impl):
    buffer = Guarded(8, torch.device("cpu"))
    buffer.whole[-1] = 0  # one byte past the end, as an out-of-bounds kernel would write
    buffer.check_margins("gather of writer 0")
"""


def test_every_distinct_failure_is_kept_with_its_own_blob_status_and_repro(suite):
    (suite.path / "conf" / "test_distinct.py").write_text(DISTINCT_FAILURES)
    result, report = run_plugin(suite, "conf/test_distinct.py")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    two_ways = [f for f in report["failures"] if f["test"].endswith("test_two_ways")]
    assert [(f["index"], f["test_failures"]) for f in two_ways] == [(1, 2), (2, 2)]
    assert sorted(f["status"] for f in two_ways) == ["crash", "fail"]
    assert {f["error"].split(":")[0] for f in two_ways} == {"ValueError", "AssertionError"}
    assert len({f["reproduce_failure"] for f in two_ways}) == 2 and all(f["reproduce_failure"] for f in two_ways)
    assert len({f["counterexample"] for f in two_ways}) == 2
    assert all(f["repro"].endswith("test_distinct.py::test_two_ways") or "--hypothesis-seed" in f["repro"]
               for f in two_ways)
    crash = next(f for f in two_ways if f["status"] == "crash")
    assert crash["explanation"][0] == "Explanation:" and any("test_distinct.py" in line for line in crash["explanation"])
    oob = next(f for f in report["failures"] if f["test"].endswith("test_out_of_bounds"))
    assert oob["status"] == "out-of-bounds" and "wrote outside its buffer (after it)" in oob["error"]
    by_id = rows(report)
    assert by_id["layout"]["failure_statuses"] == ["crash", "fail"]
    assert by_id["isolation"]["failure_statuses"] == ["out-of-bounds"]
    assert report["summary"]["failed_tests"] == 2 and report["summary"]["failures"] == 3
    result.stdout.fnmatch_lines(["CRASH [[]layout[]] conf/test_distinct.py::test_two_ways (failure * of 2)",
                                 "OUT-OF-BOUNDS [[]isolation[]] conf/test_distinct.py::test_out_of_bounds",
                                 "failure statuses:", "  crash: *"])


def test_failure_status_reads_what_the_harness_raises(monkeypatch):
    import time

    from harness.guard import forget_hangs, guard
    from harness.report import FAILURE_STATUSES, failure_status

    class Faulty:
        name = "faulty"
        capabilities = frozenset({"head_mapping"})

        def heads_of_rank(self, total_kv_heads, tp_size, rank):
            time.sleep(2)
            return [0]

        def writers_of_decode_rank(self, total_kv_heads, prefill_tp, decode_tp, decode_rank):
            raise RuntimeError("boom")

    monkeypatch.setenv("KVCONFORM_CALL_TIMEOUT_S", "0.1")
    guarded = guard(Faulty())
    seen = {}
    for name, call in (("timeout", lambda: guarded.heads_of_rank(2, 1, 0)),
                       ("crash", lambda: guarded.writers_of_decode_rank(2, 1, 1, 0))):
        with pytest.raises(Exception) as raised:
            call()
        seen[name] = failure_status(f"{type(raised.value).__name__}: {str(raised.value).splitlines()[0]}")
    forget_hangs()
    assert seen == {"timeout": "timeout", "crash": "crash"}
    # as the plugin sees them during a test: attributed to the test's invariant
    assert failure_status("ImplementationFault: [lifecycle] handler.poll(3) raised KeyError: 3; calls so far: ...") \
        == "crash"
    assert failure_status("ImplementationFault: [layout] impl.staging_layout(1, 2) returned garbage: None ...") \
        == "fail"
    assert failure_status("InvariantViolation: [round_trip] decode page 3 differs") == "fail"
    assert failure_status("AssertionError: assert [1] == [0]") == "fail"
    assert failure_status("KeyError: 'k'") == "crash"  # the test stopped on a non-assertion
    assert failure_status("DistributedFailure: rank 1 died without a report (killed by SIGSEGV)") == "crash"
    assert list(FAILURE_STATUSES) == ["out-of-bounds", "timeout", "crash", "fail"]


def test_run_info_of_a_cli_run_is_present_and_plausible(suite, monkeypatch):
    import platform
    import subprocess

    from harness.catalogue import CATALOGUE_VERSION

    monkeypatch.setenv(cli.CONFORMANCE_DIR_ENV_VAR, str(suite.path / "conf"))
    from harness import settings

    for name in ("CUDA_VISIBLE_DEVICES", *settings.VARIABLES):
        if name != cli.CONFORMANCE_DIR_ENV_VAR:
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    result = suite.run(sys.executable, "-m", "harness", "--impl", FAKE, "--device", "cpu", "-k", "heads_partition",
                       "--report-dir", "rep")
    assert result.ret == 0
    report = json.loads((suite.path / "rep" / "kvconform-report.json").read_text())
    run = report["run"]
    pyproject_version = next(line.split('"')[1] for line in (REPO_ROOT / "pyproject.toml").read_text().splitlines()
                             if line.startswith("version = "))
    assert run["suite"]["name"] == "kvconform" and run["suite"]["version"] == pyproject_version
    head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # a git checkout: git describe --always names the commit
        assert run["suite"]["commit"].removesuffix("-dirty")[-12:] == head.stdout.strip()[:12]
    else:
        assert run["suite"]["commit"] == "unknown"
    assert run["catalogue_version"] == CATALOGUE_VERSION
    assert run["implementation"] == {"name": "fake", "project": "fake", "version": "unknown", "version_from": "unknown"}
    assert run["configuration"] == {"impl_spec": FAKE, "profile": "default", "device_option": "cpu",
                                    "devices": ["cpu"], "xfails": [], "limits": [], "isolation": "process",
                                    "environment": {"TRITON_INTERPRET": "1",
                                                    cli.CONFORMANCE_DIR_ENV_VAR: str(suite.path / "conf")}}
    assert len(run["device_names"]) == 1 and run["device_names"][0] and run["driver"] == "n/a"
    assert run["platform"] == platform.platform()
    assert report["versions"]["torch"].startswith(torch.__version__.split("+")[0])
    assert report["versions"]["python"] == platform.python_version()
    assert report["versions"]["hypothesis"] == hypothesis.__version__
    md = (suite.path / "rep" / "kvconform-report.md").read_text()
    assert f"catalogue {CATALOGUE_VERSION}" in md and "implementation version: fake unknown" in md


def test_implementation_version_comes_from_attribute_name_or_distribution():
    from harness.runinfo import implementation_identity

    class Named:
        name = "sglang 0.5.23 (torch kernels)"

    class Declared:
        name = "mine"
        version = "2.1"

    class Distributed:
        name = "hypothesis"

    assert implementation_identity(Named(), "x", "adapters.sglang:make_implementation") == {
        "name": "sglang 0.5.23 (torch kernels)", "project": "sglang", "version": "0.5.23", "version_from": "name"}
    assert implementation_identity(Declared(), "x", None)["version"] == "2.1"
    assert implementation_identity(Distributed(), "x", None) == {
        "name": "hypothesis", "project": "hypothesis", "version": hypothesis.__version__,
        "version_from": "distribution hypothesis"}
    reference = implementation_identity(type("R", (), {"name": "reference"})(), "x", "reference.plugin:make_implementation")
    assert reference["version_from"] == "distribution kvconform" and reference["version"] != "unknown"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_cuda_is_a_usage_error_before_any_test(suite):
    result = suite.runpytest("conf", "-p", "harness.pytest_plugin", "--impl", FAKE, "--kvconform-report", "out",
                             "-p", "no:cacheprovider", "--device", "cuda", "-k", "test_devices")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --device=cuda: CUDA requested but torch.cuda.is_available() is False;*"])
    assert not (suite.path / "out" / "kvconform-report.json").exists()


@pytest.mark.skipif(importlib.util.find_spec("xdist") is None, reason="needs pytest-xdist")
def test_xdist_workers_feed_the_controller_report(suite):
    result, report = run_plugin(suite, "-n", "2", inprocess=False)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert {row["invariant"]: row["status"] for row in report["rows"]} == EXPECTED_STATUSES
    layout = rows(report)["layout"]
    assert layout["examples"] > 1
    failure = next(f for f in report["failures"] if f["invariant"] == "layout")
    assert "writers=3" in failure["counterexample"] and failure["reproduce_failure"]


def test_cli_help_describes_options_and_report(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for option in ("--impl", "--profile", "--device", "--report-dir", "--xfails", "-k", "--numprocesses",
                   "--junitxml", "--list-impls", "--list-invariants", "-- PYTEST_ARGS", "kvconform-report.md",
                   "kvconform-report.json", "exit status"):
        assert option in text


def test_cli_lists_invariants_and_implementations(capsys):
    assert cli.main(["--list-invariants"]) == 0
    listing = capsys.readouterr().out
    assert all(f"{inv.id}: {inv.title}" in listing for inv in INVARIANTS)
    assert cli.main(["--list-impls"]) == 0
    assert "reference.plugin:make_implementation" in capsys.readouterr().out


def test_cli_numprocesses_without_xdist_is_a_clear_error(monkeypatch, capsys):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "xdist" else real_find_spec(name, *a))
    assert cli.main(["-n", "2"]) == 4
    assert "needs pytest-xdist" in capsys.readouterr().err


def test_cli_runs_the_suite_writes_the_report_and_its_repro_reproduces(suite, monkeypatch):
    monkeypatch.setenv(cli.CONFORMANCE_DIR_ENV_VAR, str(suite.path / "conf"))
    result = suite.run(sys.executable, "-m", "harness", "--impl", FAKE, "--report-dir", "rep")
    assert result.ret == 1
    report_md, report_json = suite.path / "rep" / "kvconform-report.md", suite.path / "rep" / "kvconform-report.json"
    assert result.outlines[-2:] == [f"kvconform report: {report_md}", f"kvconform report: {report_json}"]
    failure = next(f for f in json.loads(report_json.read_text())["failures"] if f["invariant"] == "layout")
    assert failure["repro"].startswith(f"python -m harness --impl {FAKE} ")
    words = shlex.split(failure["repro"])
    rerun = suite.run(sys.executable, *words[1:], "--report-dir", "rep2")
    assert rerun.ret == 1
    rerun.stdout.fnmatch_lines(["*writers=3,*", "*1 failed*"])
    (suite.path / "known.json").write_text(json.dumps({"format": "kvconform-xfails/1", "entries": [
        {"invariant": invariant, "test": name, "error": "AssertionError", "match": "assert",
         "witness": None, "reason": "planted", "upstream": "tests/fakes/fake_impl.py"}
        for invariant, name in (("isolation", "test_replicated_heads"), ("layout", "test_layout_offsets"))]}))
    passing = suite.run(sys.executable, "-m", "harness", "--impl", FAKE, "--xfails", "known.json", "--report-dir", "rep3")
    assert passing.ret == 0


def test_unknown_invariant_id_in_a_marker_is_a_usage_error(suite):
    suite.makepyfile(test_typo='import pytest\n\n@pytest.mark.invariant("layuot")\ndef test_x(impl):\n    pass\n')
    result = suite.runpytest("-p", "harness.pytest_plugin", "--impl", FAKE, "test_typo.py", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*test_typo.py::test_x: unknown invariant id 'layuot'; valid ids: head_coverage*"])
