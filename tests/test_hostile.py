"""Hostile implementations cannot end the judge, stall it, or obtain a passing report.

Each runs the real CLI as a subprocess against ``tests/fakes/hostile_impls.py``
with ``-k`` selecting ``test_head_coverage_mapping`` and ``test_layout_spans``
(which run in that order; or ``test_isolation_kv_copy`` then
``test_layout_spans`` for those attacking tensors), and checks the exit
status and the report: the right row and failure status, a completion state,
no passing row for what did not pass, and a later invariant still reported
(the run went on past the attack).  They run in the CLI's default mode,
process isolation (``harness.isolation``), unless they say ``--in-process``:
this module is also where CI exercises isolation with the reference.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings

from harness import cli
from harness import settings as kvsettings
from strategies import receivers
from strategies.receiver_protocol import generated_receivers

REPO_ROOT = Path(__file__).resolve().parent.parent
HOSTILE = "tests.fakes.hostile_impls"
TWO_TESTS = "test_head_coverage_mapping or test_layout_spans"
COPY_THEN_LAYOUT = "test_isolation_kv_copy or test_layout_spans"


def environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVCONFORM_") and k != "CI"}
    env.update(PYTHONPATH=str(REPO_ROOT), **{kvsettings.HYPOTHESIS_DB: str(tmp_path / "db")}, **extra)
    return env


def command(impl: str, *args: str, tests: str = TWO_TESTS) -> list[str]:
    return [sys.executable, "-m", "harness", "--impl", f"{HOSTILE}:{impl}", "--device", "cpu", "--profile", "gate",
            "-k", tests, *args]


def run(tmp_path: Path, impl: str, *args: str, tests: str = TWO_TESTS, **env: str
        ) -> tuple[subprocess.CompletedProcess, dict]:
    done = subprocess.run(command(impl, *args, tests=tests), cwd=tmp_path, env=environment(tmp_path, **env),
                          capture_output=True, text=True, timeout=600)
    report_file = tmp_path / "kvconform-report.json"
    return done, (json.loads(report_file.read_text()) if report_file.exists() else {})


def statuses(report: dict) -> dict[str, str]:
    return {row["invariant"]: row["status"] for row in report["rows"]}


def failure_of(report: dict, invariant: str) -> dict:
    return next(f for f in report["failures"] if f["invariant"] == invariant)


def assert_failed_and_went_on(done: subprocess.CompletedProcess, report: dict, invariant: str, status: str,
                              later: str = "layout") -> dict:
    """The run failed (exit 1) on ``invariant`` with failure status ``status``, completed, and ``later`` passed."""
    assert done.returncode == cli.EXIT_FAILED, done.stdout[-3000:] + done.stderr[-3000:]
    assert statuses(report)[invariant] == "fail" and statuses(report)[later] == "pass", statuses(report)
    failure = failure_of(report, invariant)
    assert failure["status"] == status, failure["error"]
    assert report["completion"]["state"] == "complete" and report["completion"]["exit_status"] == 1
    assert report["run"]["configuration"]["isolation"] == "process"
    return failure


@pytest.mark.parametrize("mode", ["process", "in-process"])
def test_keyboard_interrupt_from_a_method_is_a_crash_and_the_run_goes_on(tmp_path, mode):
    """Three good answers, then ``KeyboardInterrupt``: a crash of the implementation (the guard stands between it
    and the session in both modes), never an interrupted run, and never a pass for the examples before it."""
    done, report = run(tmp_path, "InterruptsAfterSomeCalls", *(["--in-process"] if mode == "in-process" else []))
    assert done.returncode == cli.EXIT_FAILED, done.stdout[-3000:]
    assert statuses(report)["head_coverage"] == "pass"
    row = next(r for r in report["rows"] if r["invariant"] == "layout")
    assert (row["status"], row["passed"], row["interrupted"]) == ("fail", 0, 0)
    failure = failure_of(report, "layout")
    assert failure["status"] == "crash" and "raised KeyboardInterrupt" in failure["error"], failure["error"]
    assert report["completion"]["state"] == "complete"
    assert report["run"]["configuration"]["isolation"] == mode


def test_ctrl_c_during_a_call_is_an_interrupted_run(tmp_path):
    """SIGINT while the judge waits on a hanging ``staging_layout``: the run is interrupted, the test that was
    running reads "interrupted" (never "pass" nor "skipped"), and the worker process does not outlive the run."""
    report_file = tmp_path / "kvconform-report.json"
    process = subprocess.Popen(command("HangsInLayout"), cwd=tmp_path, env=environment(tmp_path),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_head_coverage(process, report_file)
        time.sleep(1.0)  # into staging_layout's hang
        process.send_signal(signal.SIGINT)
        stdout, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == cli.EXIT_INTERRUPTED, stdout[-3000:]
    report = json.loads(report_file.read_text())
    assert statuses(report)["head_coverage"] == "pass" and statuses(report)["layout"] == "interrupted"
    row = next(r for r in report["rows"] if r["invariant"] == "layout")
    assert (row["passed"], row["skipped"], row["interrupted"]) == (0, 0, 1)
    assert report["completion"]["state"] == "interrupted" and report["completion"]["exit_status"] == 2
    assert "test_layout_spans" in report["completion"]["note"]
    assert any(line.startswith("INTERRUPTED: the run stopped early") for line in stdout.splitlines())


def test_system_exit_from_a_method_is_a_crash_and_the_run_goes_on(tmp_path):
    done, report = run(tmp_path, "RaisesSystemExit")
    failure = assert_failed_and_went_on(done, report, "head_coverage", "crash")
    assert "raised SystemExit: 0" in failure["error"], failure["error"]


def test_os_exit_in_a_method_is_a_crash_and_a_fresh_worker_goes_on(tmp_path):
    done, report = run(tmp_path, "ExitsInMethod")
    failure = assert_failed_and_went_on(done, report, "head_coverage", "crash")
    assert "the worker process died (exit status 0)" in failure["error"], failure["error"]
    # Found and shrunk across worker deaths (a fresh worker per example) to the simplest topology with > 2 heads.
    assert "total_kv_heads=4,\n     prefill_tp=1,\n     decode_tp=1" in failure["counterexample"], failure["counterexample"]
    assert failure["reproduce_failure"] and "test_head_coverage_mapping" in failure["repro"]


def test_segfault_is_a_crash_and_a_fresh_worker_goes_on(tmp_path):
    done, report = run(tmp_path, "Segfaults")
    failure = assert_failed_and_went_on(done, report, "head_coverage", "crash")
    assert "killed by signal SIGSEGV" in failure["error"], failure["error"]


def test_hang_in_c_is_a_timeout_and_a_fresh_worker_goes_on(tmp_path):
    done, report = run(tmp_path, "HangsInC", **{kvsettings.CALL_TIMEOUT: "2"})
    failure = assert_failed_and_went_on(done, report, "head_coverage", "timeout")
    assert "impl.heads_of_rank(" in failure["error"] and "hung: no return within 2s" in failure["error"]


def test_garbage_that_cannot_leave_the_worker_is_reported_as_garbage(tmp_path):
    done, report = run(tmp_path, "ReturnsGarbage")
    failure = assert_failed_and_went_on(done, report, "head_coverage", "fail")
    assert "heads_of_rank(2, 2, 0) returned garbage: <function" in failure["error"], failure["error"]
    assert "is not a sequence of integers" in failure["error"], failure["error"]


def test_runaway_thread_is_caught_and_cannot_stall_the_run(tmp_path):
    """A thread left scribbling on the decode pool after ``scatter`` returned: the judge's pool oracle sees the
    stray bytes (the pool is the judge's own memory, shared), and retiring the worker ends the thread with its
    test, so the run goes on and ends."""
    done, report = run(tmp_path, "RunawayWriter", tests=COPY_THEN_LAYOUT)
    assert_failed_and_went_on(done, report, "isolation", "fail")


def test_far_out_of_bounds_write_is_a_crash_not_the_end_of_the_judge(tmp_path):
    done, report = run(tmp_path, "WritesFarOutOfBounds", tests=COPY_THEN_LAYOUT)
    failure = assert_failed_and_went_on(done, report, "isolation", "crash")
    assert "killed by signal SIGSEGV" in failure["error"], failure["error"]


def test_patching_the_harness_cannot_make_a_wrong_answer_pass(tmp_path):
    """The patches land in the worker's copy of the harness; the judge's oracle and report are untouched."""
    done, report = run(tmp_path, "PatchesTheHarness")
    failure = assert_failed_and_went_on(done, report, "layout", "fail", later="head_coverage")
    assert "staging_layout" in failure["error"] or "span" in failure["error"], failure["error"]


def test_in_process_the_patcher_passes_which_is_why_isolation_is_the_default(tmp_path):
    """Documents the risk --in-process takes (README, --help): the same wrong implementation reads "pass"."""
    done, report = run(tmp_path, "PatchesTheHarness", "--in-process")
    assert statuses(report)["layout"] == "pass" and done.returncode == cli.EXIT_OK, done.stdout[-3000:]
    assert report["run"]["configuration"]["isolation"] == "in-process"


def test_factory_raising_system_exit_is_a_usage_error_not_a_silent_exit(tmp_path):
    done, report = run(tmp_path, "make_exiting_factory")
    assert done.returncode == cli.EXIT_USAGE, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"factory {HOSTILE}:make_exiting_factory() raised SystemExit: 0" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert report == {}  # refused before any test: no report claims anything


def test_implementation_claiming_no_capabilities_does_not_pass(tmp_path):
    done, report = run(tmp_path, "NoCapabilities")
    assert done.returncode == cli.EXIT_NOTHING_CHECKED, done.stdout[-3000:]
    assert set(statuses(report).values()) == {"not-implemented", "not-run"}
    note = report["completion"]["note"]
    assert note.startswith("no invariant was checked: the implementation claims none of the capabilities")
    assert "run complete (exit status 5): no invariant was checked" in done.stdout


def wait_for_head_coverage(process: subprocess.Popen, report_file: Path) -> None:
    """Wait until the incremental report shows head_coverage passed while the run goes on (into the hang)."""
    deadline = time.monotonic() + 240
    report: dict = {}
    while time.monotonic() < deadline and process.poll() is None:
        if report_file.exists():
            report = json.loads(report_file.read_text())  # written atomically: always whole
            if statuses(report)["head_coverage"] == "pass":
                break
        time.sleep(0.2)
    assert process.poll() is None, "the run ended instead of hanging in staging_layout"
    assert report and statuses(report)["head_coverage"] == "pass", "no report with head_coverage appeared"


def test_run_killed_from_outside_keeps_its_results_so_far(tmp_path):
    """``staging_layout`` hangs after head_coverage passed; SIGKILL then leaves a report marked incomplete."""
    report_file = tmp_path / "kvconform-report.json"
    process = subprocess.Popen(command("HangsInLayout"), cwd=tmp_path, env=environment(tmp_path),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_head_coverage(process, report_file)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    report = json.loads(report_file.read_text())
    assert report["completion"] == {"state": "incomplete", "exit_status": None, "note": None}
    assert statuses(report)["head_coverage"] == "pass" and statuses(report)["layout"] == "not-run"
    assert (tmp_path / "kvconform-report.md").read_text().splitlines()[2].startswith("- INCOMPLETE: results so far")
    assert not list(tmp_path.glob(".kvconform-report.*.partial"))


# -- what crosses the boundary (in this process, no CLI) ------------------------------------------
class _RunsCode:
    """What a hostile worker could send: a pickle that calls a function when the judge reads it."""

    def __reduce__(self):
        return os.system, ("echo pwned",)


def test_the_judge_reads_no_pickle_that_would_run_code():
    from harness.isolation import crossing

    with pytest.raises(pickle.UnpicklingError, match="does not rebuild posix.system"):
        crossing.judge_loads(pickle.dumps(_RunsCode()))
    with pytest.raises(pickle.UnpicklingError, match="does not rebuild builtins.eval"):
        crossing.judge_loads(pickle.dumps(eval))


def test_what_the_judge_does_read_comes_back_whole():
    import torch

    from harness.isolation import crossing

    crossing.share_by_name()  # as the supervisor does
    value = (3, "done", [1, 2], {"a": None}, ValueError("bad topology"), torch.tensor([1, 2], dtype=torch.int64))
    back = crossing.judge_loads(crossing.dumps(value))
    assert back[:4] == value[:4] and isinstance(back[4], ValueError) and torch.equal(back[5], value[5])


@given(receiver=receivers())
@settings(max_examples=60, derandomize=True, database=None, deadline=None)
def test_every_receiver_crosses_and_reads_the_same(receiver):
    """Receivers cross by value, mocks and classes made at run time included, and read as they did."""
    from harness.isolation import crossing
    from harness.oracles import expects_staging

    rebuilt = crossing.worker_loads(crossing.dumps(receiver))
    assert expects_staging(rebuilt) == expects_staging(receiver)
    assert type(rebuilt).__name__ == type(receiver).__name__
    if " at 0x" not in repr(receiver):  # a default repr names the address
        assert repr(rebuilt) == repr(receiver)


@given(receiver=generated_receivers())
@settings(max_examples=200, derandomize=True, database=None, deadline=None)
def test_a_generated_receiver_crosses_in_its_first_read_state(receiver):
    """A generated receiver (closures, cached properties, descriptors) is rebuilt in the worker by the code that
    drew it, so the implementation reads what the oracle reads, even before the judge has read it once (a
    cached_property read first in the judge used to be the only way it crossed)."""
    from harness.isolation import crossing
    from harness.oracles import expects_staging

    rebuilt = crossing.worker_loads(crossing.dumps(receiver))  # before the judge reads the original
    assert expects_staging(rebuilt) == expects_staging(receiver)
    assert repr(rebuilt) == repr(receiver)
