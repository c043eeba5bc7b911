"""Hostile implementations cannot end the judge quietly or obtain a passing report (in-process mode).

Each runs the real CLI as a subprocess against ``tests/fakes/hostile_impls.py``
with ``-k`` selecting ``test_head_coverage_mapping`` and ``test_layout_spans``
(which run in that order), and checks the exit status and the report: the
right row status, a completion state, and no passing row for what did not pass.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from harness import cli, settings

REPO_ROOT = Path(__file__).resolve().parent.parent
HOSTILE = "tests.fakes.hostile_impls"
TWO_TESTS = "test_head_coverage_mapping or test_layout_spans"


def environment(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVCONFORM_") and k != "CI"}
    env.update(PYTHONPATH=str(REPO_ROOT), **{settings.HYPOTHESIS_DB: str(tmp_path / "db")})
    return env


def command(impl: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "harness", "--impl", f"{HOSTILE}:{impl}", "--device", "cpu", "-k", TWO_TESTS, *args]


def run(tmp_path: Path, impl: str) -> tuple[subprocess.CompletedProcess, dict]:
    done = subprocess.run(command(impl), cwd=tmp_path, env=environment(tmp_path), capture_output=True, text=True,
                          timeout=300)
    report_file = tmp_path / "kvconform-report.json"
    return done, (json.loads(report_file.read_text()) if report_file.exists() else {})


def statuses(report: dict) -> dict[str, str]:
    return {row["invariant"]: row["status"] for row in report["rows"]}


def test_keyboard_interrupt_inside_the_implementation_is_an_interrupted_run(tmp_path):
    done, report = run(tmp_path, "RaisesKeyboardInterrupt")
    assert done.returncode == cli.EXIT_INTERRUPTED, done.stdout[-3000:]
    assert statuses(report)["head_coverage"] == "pass"
    assert statuses(report)["layout"] == "interrupted"  # never "pass" nor "skipped"
    assert report["completion"]["state"] == "interrupted" and report["completion"]["exit_status"] == 2
    assert "test_layout_spans" in report["completion"]["note"]
    assert report["summary"]["interrupted"] == 1
    assert any(line.startswith("INTERRUPTED: the run stopped early") for line in done.stdout.splitlines())
    assert (tmp_path / "kvconform-report.md").read_text().count("INTERRUPTED") == 1


def test_interrupt_after_passing_examples_is_not_counted_as_a_pass(tmp_path):
    done, report = run(tmp_path, "InterruptsAfterSomeCalls")
    assert done.returncode == cli.EXIT_INTERRUPTED
    row = next(r for r in report["rows"] if r["invariant"] == "layout")
    assert (row["status"], row["passed"], row["skipped"], row["interrupted"]) == ("interrupted", 0, 0, 1)


def test_system_exit_from_a_method_is_a_failure_and_the_run_goes_on(tmp_path):
    done, report = run(tmp_path, "RaisesSystemExit")
    assert done.returncode == cli.EXIT_FAILED, done.stdout[-3000:]
    assert statuses(report)["head_coverage"] == "fail" and statuses(report)["layout"] == "pass"
    failure = next(f for f in report["failures"] if f["invariant"] == "head_coverage")
    assert failure["error"].startswith("SystemExit: 0")
    assert report["completion"] == {"state": "complete", "exit_status": 1, "note": None}


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


def test_run_killed_from_outside_keeps_its_results_so_far(tmp_path):
    """``staging_layout`` hangs after head_coverage passed; SIGKILL then leaves a report marked incomplete."""
    report_file = tmp_path / "kvconform-report.json"
    process = subprocess.Popen(command("HangsInLayout"), cwd=tmp_path, env=environment(tmp_path),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        report: dict = {}
        while time.monotonic() < deadline and process.poll() is None:
            if report_file.exists():
                report = json.loads(report_file.read_text())  # written atomically: always whole
                if statuses(report)["head_coverage"] == "pass":
                    break
            time.sleep(0.2)
        assert process.poll() is None, "the run ended instead of hanging in staging_layout"
        assert report and statuses(report)["head_coverage"] == "pass", "no report with head_coverage appeared"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    report = json.loads(report_file.read_text())
    assert report["completion"] == {"state": "incomplete", "exit_status": None, "note": None}
    assert statuses(report)["head_coverage"] == "pass" and statuses(report)["layout"] == "not-run"
    assert (tmp_path / "kvconform-report.md").read_text().splitlines()[2].startswith("- INCOMPLETE: results so far")
    assert not list(tmp_path.glob(".kvconform-report.*.partial"))
