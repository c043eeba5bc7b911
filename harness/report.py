"""The conformance report: one row per invariant, plus every failure with a repro command.

Built on the pytest controller from per-test outcomes (which survive
pytest-xdist serialization, see ``harness.pytest_plugin``) and written as
``kvconform-report.md`` and ``kvconform-report.json``.

Never lost: the report directory is checked (created, written to) before the
first test (:func:`ensure_report_directory`); the report is rewritten after
every test, atomically, with ``completion.state`` ``"incomplete"``, so a run
killed from outside leaves its results so far; the session's end rewrites it
as ``"complete"`` or ``"interrupted"``.  When the directory cannot be written
(it vanished, the disk is full), :class:`ReportWriter` writes to a fallback
directory under the system temporary directory and says so.

JSON schema (``schema_version`` 1; fields are only ever added)::

    {
      "schema_version": 1,
      "impl": {"spec": str, "name": str, "target": str | null,
               "capabilities": [str], "limits": [str], "error": str | null},
      "versions": {"python": str, "torch": str, "triton": str, "hypothesis": str,
                   "pytest": str, "kvconform": str},   # "not installed" when absent
      "run": {                         # run info (harness.runinfo); absent in reports of older versions
        "suite": {"name": "kvconform", "version": str,
                  "commit": str},  # git describe [-dirty: code, not reports/, changed] or "unknown"
        "catalogue_version": str,      # harness.catalogue.CATALOGUE_VERSION
        "implementation": {"name": str, "project": str, "version": str,  # "unknown" when not found
                           "version_from": str},   # attribute | name | distribution DIST | unknown
        "configuration": {"impl_spec": str, "profile": str, "device_option": str,
                          "devices": [str], "xfails": [str], "limits": [str],
                          "environment": {str: str}},   # set TRITON_INTERPRET, CUDA_VISIBLE_DEVICES, KVCONFORM_*
        "device_names": [str],         # CUDA device names when CUDA is used, the CPU model for cpu
        "driver": str,                 # NVIDIA driver (nvidia-smi), else CUDA driver API; "n/a" on CPU
        "platform": str},
      "profile": str,                  # Hypothesis profile: default | ci | thorough | other
      "devices": {"requested": "cpu" | "cuda" | "all", "selected": [str], "note": str | null},
      "xfails_file": str | null,
      "completion": {"state": "incomplete" | "complete" | "interrupted",
                     "exit_status": int | null,   # the command's exit status once the session ended
                     "note": str | null},         # why a run is interrupted or nothing ran
      "summary": {"pass": int, "fail": int, "interrupted": int, "xfail": int,
                  "not-implemented": int, "not-run": int,      # rows per status
                  "tests": int, "failed_tests": int, "examples": int,
                  "failures": int,                             # distinct failures (>= failed_tests)
                  "failure_statuses": {"fail": int, "timeout": int, "crash": int, "out-of-bounds": int}},
      "rows": [{"invariant": str, "title": str, "status": str, "tests": int,
                "passed": int, "failed": int, "interrupted": int, "xfailed": int, "xpassed": int,
                "fixed": int,          # passed although an xfails entry lists them: remove the entry
                "not_implemented": int, "skipped": int,
                "examples": int,       # Hypothesis test cases run, excluding shrinking (1 per plain test)
                "shrinks": int,        # test cases run while shrinking failures
                "missing_capabilities": [str],
                "failure_statuses": [str]}],   # statuses of its failures, legend order
      "xfails": [{"entry": str,        # "file#index (test)" of an --xfails entry; absent without --xfails
                  "state": "xfail" | "fixed" | "fail" | "not-run" | "stale",   # see XFAIL_STATES
                  "tests": [str]}],        # node ids it matched
      "failures": [{"invariant": str, "test": str,    # pytest node id; one entry per distinct failure
                    "index": int, "test_failures": int,   # this is failure INDEX of TEST_FAILURES of the test
                    "status": "fail" | "timeout" | "crash" | "out-of-bounds",   # see FAILURE_STATUSES
                    "phase": "setup" | "call" | "teardown",
                    "error": str,                     # first line of the error
                    "explanation": [str],             # Hypothesis's explain-phase notes, if any
                    "counterexample": str | null,     # Hypothesis's shrunk example
                    "reproduce_failure": str | null,  # "@reproduce_failure('6.x', b'...')"
                    "seed": str | null,               # for --hypothesis-seed
                    "case_file": str | null,          # a failing stored case (corpus file; witness: no file)
                    "case": str | null,               # its JSON (harness/cases.py format)
                    "repro": str}]                    # one shell line that reruns the test (just the case)
    }

Row status, in order of precedence: ``fail`` (a test failed or errored),
``interrupted`` (the session was interrupted, e.g. by Ctrl-C or by a
``KeyboardInterrupt`` out of the implementation, while a test of it ran), ``xfail`` (a failure listed in the xfails file), ``pass``, ``not-implemented``
(every test needs a capability the implementation lacks), ``not-run`` (no test
ran: none exists, all deselected, or skipped for another reason).

Every distinct failure of a test is kept (Hypothesis reports several when a
test fails in distinct ways, as an exception group): each with its own
counterexample, ``@reproduce_failure`` blob, explanation and repro line, and a
failure status derived from the error (:func:`failure_status`, legend in
:data:`FAILURE_STATUSES`).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.catalogue import INVARIANTS
from harness.scope import LIMITS

SCHEMA_VERSION = 1
ROW_STATUSES = ("pass", "fail", "interrupted", "xfail", "not-implemented", "not-run")
COMPLETION_STATES = ("incomplete", "complete", "interrupted")
REPORT_BASENAME = "kvconform-report"

#: Failure statuses, most specific first, and how each is recognised in the error (the report legend).
FAILURE_STATUSES: dict[str, str] = {
    "out-of-bounds": "a write outside a buffer handed to the implementation: a canary margin changed "
                     "(\"wrote outside its buffer\", the canary fence of harness/engine/buffers.py)",
    "timeout": "a call into the implementation did not return in time (the guard's \"hung: no return within\") "
               "or a distributed rank operation timed out",
    "crash": "the implementation raised an exception (the guard's \"raised\"), a rank process died, or the test "
             "stopped on an exception that is not an assertion",
    "fail": "an invariant violation or assertion: the implementation returned or wrote something wrong",
}
_ASSERTION_TYPES = re.compile(r"^([\w.]*\.)?(AssertionError|\w*Violation|ImplementationFault|Failed|"
                              r"Flaky\w*|FailedHealthCheck|Unsatisfiable|DistributedFailure)\b")


@dataclass(frozen=True)
class FailureDetail:
    """What a reader needs to understand and rerun one failing test."""

    phase: str
    error: str
    counterexample: str | None = None
    reproduce_failure: str | None = None
    seed: str | None = None
    explanation: tuple[str, ...] = ()
    #: A stored case (corpus file or xfails witness) that failed: its file and its JSON (harness.replay).
    case_file: str | None = None
    case: str | None = None

    @property
    def status(self) -> str:
        return failure_status(self.error)


def failure_status(error: str) -> str:
    """The failure status (a key of :data:`FAILURE_STATUSES`) of an error line ``Type: message``."""
    if "wrote outside its buffer" in error:
        return "out-of-bounds"
    if re.search(r"\bhung: no return within\b|\btimed out\b|\(timeout [\d.]+s\)|did not join", error):
        return "timeout"
    if re.search(r"ImplementationFault: .*? raised [\w.]+: |died without a report|a rank process died", error):
        return "crash"
    if error and not _ASSERTION_TYPES.match(error) and re.match(r"^[\w.]+(: |$)", error):
        return "crash"
    return "fail"


@dataclass
class TestRecord:
    """The merged outcome of one test's setup, call and teardown reports."""

    __test__ = False  # not a pytest test class despite its name

    nodeid: str
    invariant: str
    #: The test file relative to the rootdir (pytest's ``report.location[0]``); may start with ``..``.
    path: str | None = None
    status: str = "not-run"  # pass | fixed | fail | interrupted | xfail | xpass | not-implemented | skipped | not-run
    examples: int | None = None
    shrinks: int = 0
    missing_capabilities: tuple[str, ...] = ()
    #: Every distinct failure of the test (the first failing phase's), in Hypothesis's order.
    failures: tuple[FailureDetail, ...] = ()
    #: The xfails entry matching the test (its label), if any.
    xfail_entry: str | None = None
    #: Case files ``--corpus-out`` wrote for its failures.
    saved_cases: tuple[str, ...] = ()

    def add_phase(self, when: str, outcome: str, xfailed: bool, failures: tuple[FailureDetail, ...]) -> None:
        """Fold one phase report in; a failure in any phase makes the test fail."""
        if self.status == "fail":
            return
        if outcome == "failed":
            self.status, self.failures = "fail", failures
        elif when == "setup" and outcome == "skipped":
            self.status = "not-implemented" if self.missing_capabilities else ("xfail" if xfailed else "skipped")
        elif when == "call" and outcome == "skipped":
            self.status = "xfail" if xfailed else "skipped"
        elif when == "call" and outcome == "passed":
            self.status = "xpass" if xfailed else "pass"

    def interrupt(self) -> None:
        """The session stopped while this test ran: it neither passed nor was skipped."""
        if self.status != "fail":
            self.status = "interrupted"

    @property
    def ran(self) -> bool:
        return self.status in ("pass", "fixed", "fail", "xfail", "xpass")


@dataclass(frozen=True)
class RunContext:
    """Everything about the run that is not a test outcome."""

    impl_spec: str
    impl_name: str
    impl_target: str | None
    capabilities: tuple[str, ...]
    limits: tuple[str, ...]
    impl_error: str | None
    profile: str
    devices_requested: str
    devices_selected: tuple[str, ...]
    devices_note: str | None
    versions: dict[str, str]
    xfails_file: str | None = None
    #: How the run was started: a CLI program name ("kvconform", "python -m harness") or None for pytest.
    cli_prog: str | None = None
    rootdir: str = "."
    invocation_dir: str = "."
    #: The report's ``"run"`` object (``harness.runinfo.collect``); ``None`` leaves it out.
    run_info: dict[str, Any] | None = None


def repro_command(context: RunContext, nodeid: str, seed: str | None, path: str | None = None,
                  case_file: str | None = None) -> str:
    """One shell line rerunning ``nodeid`` with the same implementation, profile and device.

    With ``case_file`` (a failing stored case) it replays that case alone (``--replay-case``).

    ``path`` is the test file relative to the rootdir (node ids of files
    outside the rootdir, e.g. with ``--pyargs``, are not).  Without a seed the
    rerun replays the failure from the Hypothesis example database (same
    machine); with one, it regenerates it deterministically.
    """
    node_path, sep, rest = nodeid.partition("::")
    path = path or node_path
    if context.cli_prog:
        words = [*shlex.split(context.cli_prog), "--impl", context.impl_spec]
        if context.profile != "default":
            words += ["--profile", context.profile]
        if context.devices_requested != "all":
            words += ["--device", context.devices_requested]
        words.append(f"{os.path.normpath(path)}{sep}{rest}")
        if case_file and case_file.endswith(".json"):
            words += ["--replay-case", case_file]
        elif seed:
            words += ["--hypothesis-seed", seed]
        return shlex.join(words)
    target = os.path.relpath(os.path.join(context.rootdir, path), context.invocation_dir) + sep + rest
    options = ["python", "-m", "pytest", "-p", "harness.pytest_plugin", "--impl", context.impl_spec]
    if context.profile != "default":
        options.append(f"--hypothesis-profile={context.profile}")
    if context.devices_requested != "all":
        options += ["--device", context.devices_requested]
    options.append(target)
    if case_file and case_file.endswith(".json"):
        options.append(f"--replay-case={case_file}")
    elif seed:
        options.append(f"--hypothesis-seed={seed}")
    return shlex.join(options)


@dataclass(frozen=True)
class Completion:
    """How far the run got: ``incomplete`` while tests run (or when killed), then complete or interrupted."""

    state: str = "incomplete"
    exit_status: int | None = None
    note: str | None = None


def build_report(context: RunContext, records: list[TestRecord],
                 completion: Completion = Completion(), xfail_entries: tuple[str, ...] = (),
                 stale_xfails: tuple[str, ...] = ()) -> dict[str, Any]:
    """The report as the JSON-ready dict documented in this module's docstring.

    ``xfail_entries``: the labels of the run's xfails entries; ``stale_xfails``: those matching no collected test.
    """
    by_invariant: dict[str, list[TestRecord]] = {}
    for record in records:
        by_invariant.setdefault(record.invariant, []).append(record)
    rows = [_row(inv.id, inv.title, by_invariant.get(inv.id, [])) for inv in INVARIANTS]
    failures = [
        entry
        for inv in INVARIANTS
        for record in sorted(by_invariant.get(inv.id, []), key=lambda r: r.nodeid)
        if record.status == "fail"
        for entry in _failure_entries(context, record)
    ]
    summary: dict[str, Any] = {status: sum(r["status"] == status for r in rows) for status in ROW_STATUSES}
    summary["tests"] = sum(r["tests"] for r in rows)
    summary["failed_tests"] = len({f["test"] for f in failures})
    summary["examples"] = sum(r["examples"] for r in rows)
    summary["failures"] = len(failures)
    summary["failure_statuses"] = {status: sum(f["status"] == status for f in failures) for status in FAILURE_STATUSES}
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "impl": {
            "spec": context.impl_spec,
            "name": context.impl_name,
            "target": context.impl_target,
            "capabilities": sorted(context.capabilities),
            "limits": sorted(context.limits),
            "error": context.impl_error,
        },
        "versions": dict(context.versions),
        "profile": context.profile,
        "devices": {
            "requested": context.devices_requested,
            "selected": list(context.devices_selected),
            "note": context.devices_note,
        },
        "xfails_file": context.xfails_file,
        "completion": {"state": completion.state, "exit_status": completion.exit_status, "note": completion.note},
        "summary": summary,
        "rows": rows,
        "failures": failures,
    }
    if xfail_entries:
        report["xfails"] = [_xfail_state(label, records, label in stale_xfails) for label in xfail_entries]
    if context.run_info is not None:
        report["run"] = context.run_info
    return report


def _xfail_state(label: str, records: list[TestRecord], stale: bool) -> dict[str, Any]:
    """One xfails entry's state (``XFAIL_STATES``) from the outcomes of the tests it matched."""
    matched = sorted((r for r in records if r.xfail_entry == label), key=lambda r: r.nodeid)
    statuses = {r.status for r in matched}
    state = ("stale" if stale else "fail" if "fail" in statuses else "xfail" if "xfail" in statuses
             else "fixed" if "fixed" in statuses else "not-run")
    return {"entry": label, "state": state, "tests": [r.nodeid for r in matched]}


def _row(invariant: str, title: str, records: list[TestRecord]) -> dict[str, Any]:
    """Aggregate one invariant's tests; status precedence fail > xfail > pass > not-implemented > not-run."""
    count = lambda status: sum(r.status == status for r in records)  # noqa: E731
    counts = {
        "passed": count("pass"),
        "failed": count("fail"),
        "interrupted": count("interrupted"),
        "xfailed": count("xfail"),
        "xpassed": count("xpass"),
        "fixed": count("fixed"),
        "not_implemented": count("not-implemented"),
        "skipped": count("skipped") + count("not-run"),
    }
    if counts["failed"]:
        status = "fail"
    elif counts["interrupted"]:
        status = "interrupted"
    elif counts["xfailed"]:
        status = "xfail"
    elif counts["passed"] or counts["xpassed"] or counts["fixed"]:
        status = "pass"
    elif counts["not_implemented"]:
        status = "not-implemented"
    else:
        status = "not-run"
    missing = sorted({cap for r in records for cap in r.missing_capabilities})
    statuses = {f.status for r in records if r.status == "fail" for f in r.failures or (_NO_DETAIL,)}
    return {
        "invariant": invariant,
        "title": title,
        "status": status,
        "tests": len(records),
        **counts,
        "examples": sum((r.examples if r.examples is not None else 1) for r in records if r.ran),
        "shrinks": sum(r.shrinks for r in records),
        "missing_capabilities": missing,
        "failure_statuses": [status for status in FAILURE_STATUSES if status in statuses],
    }


_NO_DETAIL = FailureDetail(phase="call", error="(no error text captured)")


def _failure_entries(context: RunContext, record: TestRecord) -> list[dict[str, Any]]:
    """One entry per distinct failure of a failed test, each with its own repro line."""
    details = record.failures or (_NO_DETAIL,)
    return [{
        "invariant": record.invariant,
        "test": record.nodeid,
        "index": index,
        "test_failures": len(details),
        "status": detail.status,
        "phase": detail.phase,
        "error": detail.error,
        "explanation": list(detail.explanation),
        "counterexample": detail.counterexample,
        "reproduce_failure": detail.reproduce_failure,
        "seed": detail.seed,
        "case_file": detail.case_file,
        "case": detail.case,
        "repro": repro_command(context, record.nodeid, detail.seed, record.path, detail.case_file),
    } for index, detail in enumerate(details, 1)]


def _row_notes(row: dict[str, Any]) -> str:
    notes = []
    if row["missing_capabilities"]:
        notes.append("lacks " + ", ".join(row["missing_capabilities"]))
    for key, label in (("failed", "failed"), ("interrupted", "interrupted"), ("xfailed", "xfail"), ("xpassed", "xpass (drop from xfails?)"),
                       ("fixed", "fixed (remove its xfails entry)"),
                       ("not_implemented", "not implemented"), ("skipped", "skipped")):
        if row[key] and not (key == "not_implemented" and row["status"] == "not-implemented"):
            notes.append(f"{row[key]} {label}")
    return "; ".join(notes)


def _header_lines(report: dict[str, Any]) -> list[str]:
    impl, versions, devices = report["impl"], report["versions"], report["devices"]
    lines = [
        f"implementation: {impl['name']} (--impl {impl['spec']}"
        + (f" -> {impl['target']}" if impl["target"] and impl["target"] != impl["spec"] else "") + ")",
        "capabilities: " + (", ".join(impl["capabilities"]) or "(none)"),
        *(["declared limits (cases generated within them): " + "; ".join(
            f"{name} ({LIMITS[name]})" for name in impl["limits"])] if impl.get("limits") else []),
        f"profile: {report['profile']}; devices: {', '.join(devices['selected']) or '(none)'}"
        + (f" ({devices['note']})" if devices["note"] else ""),
        "versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        *_run_info_lines(report.get("run")),
    ]
    if impl["error"]:
        lines.insert(1, f"implementation error: {impl['error']}")
    if report["xfails_file"]:
        lines.append(f"xfails file: {report['xfails_file']}")
    summary = report["summary"]
    lines.append(
        "result: " + ", ".join(f"{summary[s]} {s}" for s in ROW_STATUSES)
        + f" ({summary['tests']} tests, {summary['examples']} examples, {summary['failed_tests']} failed)"
    )
    completion = report["completion"]
    if completion["state"] != "complete" or completion["note"]:
        lines.insert(0, _completion_line(completion))
    return lines


def _run_info_lines(run: dict[str, Any] | None) -> list[str]:
    """Header lines for the report's run info (none for a report without it)."""
    if not run:
        return []
    suite, impl = run["suite"], run["implementation"]
    return [
        f"suite: kvconform {suite['version']} (commit {suite['commit']}), catalogue {run['catalogue_version']}",
        f"implementation version: {impl['project']} {impl['version']} (from {impl['version_from']})",
        f"machine: {', '.join(run['device_names']) or '(none)'}; driver {run['driver']}; {run['platform']}",
    ]


def _failure_title(failure: dict[str, Any]) -> str:
    """``STATUS [invariant] test`` plus ``(failure i of n)`` when the test failed in several ways."""
    count = failure["test_failures"]
    return (f"{failure['status'].upper()} [{failure['invariant']}] {failure['test']}"
            + (f" (failure {failure['index']} of {count})" if count > 1 else ""))


def _legend_lines(report: dict[str, Any]) -> list[str]:
    """The failure-status legend, for the statuses that occur in ``report``."""
    present = {f["status"] for f in report["failures"]}
    return [f"{status}: {meaning}" for status, meaning in FAILURE_STATUSES.items() if status in present]


def _completion_line(completion: dict[str, Any]) -> str:
    """``INCOMPLETE``/``INTERRUPTED``/note line heading a report that is not a finished, meaningful run."""
    state = completion["state"]
    if state == "incomplete":
        text = "INCOMPLETE: results so far; the run is still going or was killed before it finished"
    elif state == "interrupted":
        text = "INTERRUPTED: the run stopped early; tests after the interruption did not run"
    else:
        text = "run complete"
    if completion["exit_status"] is not None:
        text += f" (exit status {completion['exit_status']})"
    return text + (f": {completion['note']}" if completion["note"] else "")


def terminal_lines(report: dict[str, Any]) -> list[str]:
    """A plain-text table and failure list for the end of a pytest run."""
    lines = _header_lines(report)
    width = max(len(r["invariant"]) for r in report["rows"])
    lines.append("")
    lines.append(f"{'invariant':<{width}}  {'status':<15}  {'tests':>5}  {'examples':>8}  notes")
    for row in report["rows"]:
        lines.append(
            f"{row['invariant']:<{width}}  {row['status']:<15}  {row['tests']:>5}  {row['examples']:>8}  {_row_notes(row)}"
        )
    for failure in report["failures"]:
        lines.append("")
        lines.append(_failure_title(failure))
        lines.append(f"  error: {failure['error']}")
        if failure["counterexample"]:
            lines.append("  counterexample:")
            lines.extend("    " + line for line in failure["counterexample"].splitlines())
        if failure["explanation"]:
            lines.append("  explanation:")
            lines.extend("    " + line for note in failure["explanation"] for line in note.splitlines())
        if failure["reproduce_failure"]:
            lines.append(f"  blob: {failure['reproduce_failure']}")
        if failure["seed"]:
            lines.append(f"  seed: {failure['seed']}")
        if failure.get("case"):
            lines.append(f"  stored case: {failure['case_file']}")
            lines.append(f"  case: {failure['case']}")
        lines.append(f"  repro: {failure['repro']}")
    if report.get("xfails"):
        lines += ["", "xfails entries:", *("  " + line for line in _xfail_lines(report))]
    if report["failures"]:
        lines += ["", "failure statuses:", *("  " + line for line in _legend_lines(report))]
    return lines


#: States of an xfails entry in the report (its tests' outcomes; the legend).
XFAIL_STATES: dict[str, str] = {
    "xfail": "the known bug: the witness (or, without one, every failure) fails with the expected error",
    "fixed": "the witness and the test pass: remove the entry (--strict-xfails makes this a failure)",
    "fail": "a test of the entry failed otherwise (another error, the witness passing, a new case): a failure",
    "not-run": "its tests were collected but did not run (deselected, skipped, interrupted)",
    "stale": "it matches no collected test although its test file was collected: fix or remove it",
}


def _xfail_lines(report: dict[str, Any]) -> list[str]:
    return [f"{x['state']}: {x['entry']}" + (f" -> {', '.join(x['tests'])}" if x["tests"] and any(
        f"({test})" not in x["entry"] for test in x["tests"]) else "") for x in report["xfails"]]


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown document."""
    out = ["# kvconform conformance report", ""]
    out += [f"- {line}" for line in _header_lines(report)]
    out += ["", "| invariant | status | tests | examples | notes |", "|---|---|---:|---:|---|"]
    for row in report["rows"]:
        out.append(
            f"| `{row['invariant']}` {row['title']} | **{row['status']}** | {row['tests']} | "
            f"{row['examples']} | {_row_notes(row)} |"
        )
    if report["failures"]:
        out += ["", "## Failures"]
    for failure in report["failures"]:
        count = failure["test_failures"]
        out += ["", f"### `{failure['invariant']}`: `{failure['test']}`"
                + (f" (failure {failure['index']} of {count})" if count > 1 else ""), "",
                f"- status: **{failure['status']}**", f"- phase: {failure['phase']}",
                f"- error: `{failure['error']}`"]
        if failure["reproduce_failure"]:
            out.append(f"- reproduce_failure: `{failure['reproduce_failure']}`")
        if failure["seed"]:
            out.append(f"- seed: `{failure['seed']}`")
        if failure.get("case"):
            out += [f"- stored case: `{failure['case_file']}`", "", "```json", failure["case"], "```", ""]
        out += [f"- repro: `{failure['repro']}`"]
        if failure["counterexample"]:
            out += ["", "```text", failure["counterexample"], "```"]
        if failure["explanation"]:
            out += ["", "Explanation (Hypothesis's explain phase):", "", "```text", *failure["explanation"], "```"]
    if report.get("xfails"):
        out += ["", "## Expected failures (xfails entries)", "", *(f"- {line}" for line in _xfail_lines(report)), "",
                *(f"- **{state}**: {meaning}" for state, meaning in XFAIL_STATES.items())]
    if report["failures"]:
        out += ["", "## Legend", "", "Row statuses: " + ", ".join(ROW_STATUSES) + " (see `kvconform --help`).",
                "Failure statuses:", ""]
        out += [f"- **{status}**: {meaning}" for status, meaning in FAILURE_STATUSES.items()]
    return "\n".join(out) + "\n"


class ReportDirectoryError(ValueError):
    """The report directory cannot be created or written; the message names the option and the fix."""


def ensure_report_directory(directory: Path | str, option: str) -> Path:
    """Create ``directory`` if needed and prove it writable (a probe file), before any test runs.

    ``option`` is how the user named it (``--report-dir``), for the message.
    """
    path = Path(directory).expanduser()
    try:
        path = path.resolve()
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".kvconform-probe-"):
            pass
    except (OSError, RuntimeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        what = "is a file, not a directory" if path.is_file() else f"cannot be created or written ({reason})"
        raise ReportDirectoryError(
            f"{option}={directory}: {what}; pass a writable directory (it is created if missing)") from None
    return path


def write_report(report: dict[str, Any], directory: Path | str) -> tuple[Path, Path]:
    """Write ``kvconform-report.md`` and ``kvconform-report.json`` into ``directory``; return their paths.

    Each file is written to a temporary name and renamed, so a reader (or a
    kill) never sees a half-written report.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    md_path = directory / f"{REPORT_BASENAME}.md"
    json_path = directory / f"{REPORT_BASENAME}.json"
    _replace_text(md_path, markdown(report))
    _replace_text(json_path, json.dumps(report, indent=2) + "\n")
    return md_path, json_path


def _replace_text(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def fallback_directory() -> Path:
    """Where the report goes when its directory cannot be written: ``$TMPDIR/kvconform-report-<pid>``."""
    return Path(tempfile.gettempdir()) / f"{REPORT_BASENAME}-{os.getpid()}"


class ReportWriter:
    """Writes the report to its directory, or to :func:`fallback_directory` once that fails: never lost.

    ``problem`` says why the fallback is in use; ``paths`` are the files last written.
    """

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self.problem: str | None = None
        self.paths: tuple[Path, Path] | None = None

    def write(self, report: dict[str, Any]) -> tuple[Path, Path] | None:
        """Write ``report``; ``None`` only when neither the directory nor the fallback could be written."""
        if self.problem is None:
            try:
                self.paths = write_report(report, self.directory)
                return self.paths
            except OSError as exc:
                self.problem = f"cannot write the report to {self.directory}: {exc}"
        try:
            self.paths = write_report(report, fallback_directory())
        except OSError as exc:
            self.problem += f"; the fallback {fallback_directory()} failed too: {exc}"
            self.paths = None
        return self.paths
