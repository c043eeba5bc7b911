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
               "capabilities": [str], "limits": [str], "error": str | null,
               "catalogue_version": str | null},   # the catalogue version it targets, if it declares one
      "configurations": [{"name": str, "impl_name": str, "capabilities": [str], "limits": [str],
                          "catalogue_version": str | null}],   # selected ones; [] for an implementation without
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
                          "isolation": "process" | "in-process",   # where the implementation ran
                          "environment": {str: str},    # set TRITON_INTERPRET, CUDA_VISIBLE_DEVICES, KVCONFORM_*
                          "configurations": [str]},     # only when the implementation declares configurations
        "device_names": [str],         # CUDA device names when CUDA is used, the CPU model for cpu
        "driver": str,                 # NVIDIA driver (nvidia-smi), else CUDA driver API; "n/a" on CPU
        "platform": str},
      "profile": str,                  # Hypothesis profile: default | ci | thorough | other
      "devices": {"requested": "cpu" | "cuda" | "all", "selected": [str], "note": str | null},
      "xfails_file": str | null,
      "completion": {"state": "incomplete" | "complete" | "interrupted",
                     "exit_status": int | null,   # the command's exit status once the session ended
                     "note": str | null},         # why a run is interrupted or nothing ran
      "summary": {"pass": int, "fail": int, "interrupted": int, "xfail": int, "new-since-target": int,
                  "not-implemented": int, "not-run": int,      # rows per status
                  "tests": int, "failed_tests": int, "examples": int,
                  "failures": int,                             # distinct failures (>= failed_tests)
                  "new_checks": int,                           # entries of "new_checks"
                  "failure_statuses": {"fail": int, "timeout": int, "crash": int, "out-of-bounds": int}},
      "rows": [{"invariant": str, "title": str, "status": str, "tests": int,
                "passed": int, "failed": int, "interrupted": int, "xfailed": int, "xpassed": int,
                "fixed": int,          # passed although an xfails entry lists them: remove the entry
                "not_implemented": int, "skipped": int,
                "examples": int,       # Hypothesis test cases run, excluding shrinking (1 per plain test)
                "shrinks": int,        # test cases run while shrinking failures
                "missing_capabilities": [str],
                "failure_statuses": [str],     # statuses of its failures, legend order
                "classes": {str: {str: int}},  # case class -> value -> cases (harness.case_classes);
                                                 # values expected for the invariant are listed with 0 cases
                "configurations": {str: {...}}}],   # per configuration name: the same fields over its tests
      "class_coverage": {"enforced": bool,     # the profile fails the run on a gap (thorough)
                         "gaps": [{"invariant": str, "class": str, "value": str,
                                   "limit": str | null,    # declared limit excluding it: reported, never a failure
                                   "message": str}]},
      "xfails": [{"entry": str,        # "file#index (test)" of an --xfails entry; absent without --xfails
                  "state": "xfail" | "fixed" | "fail" | "not-run" | "stale",   # see XFAIL_STATES
                  "tests": [str]}],        # node ids it matched
      "failures": [{"invariant": str, "test": str,    # pytest node id; one entry per distinct failure
                    "configuration": str | null,      # the configuration it failed in
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
                    "repro": str,                     # one shell line that reruns the test (just the case)
                    "repro_script": str | null,       # repro_<test>_<n>.py next to the report: runs
                                                      # without kvconform (harness.repro)
                    "repro_script_note": str | null}] # why there is no script, when there is none
      "new_checks": [{..., "since": str}]   # failures of tests newer than the targeted catalogue version,
    }                                       # as in "failures", plus the version that added the test

Configurations (``harness.loading``): an implementation declaring several is reported with one
column per selected configuration (``rows[].configurations``); a row's own status is over all of
them.  Without configurations there is no column and ``configurations`` is empty.

Row status, in order of precedence: ``fail`` (a test failed or errored),
``interrupted`` (the session was interrupted, e.g. by Ctrl-C or by a
``KeyboardInterrupt`` out of the implementation, while a test of it ran),
``new-since-target`` (see :data:`NEW_SINCE_TARGET`; does not fail the run), ``xfail`` (a failure listed in the xfails file), ``pass``, ``not-implemented``
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import case_classes
from harness.catalogue import INVARIANTS
from harness.profiles import CLASS_COVERAGE_PROFILES
from harness.scope import LIMITS

SCHEMA_VERSION = 1
#: Status of a failing test newer than the catalogue version the implementation targets.
NEW_SINCE_TARGET = "new-since-target"
#: Its legend line; such a failure is an expected failure to pytest: it does not change the exit status.
NEW_SINCE_TARGET_MEANING = ("new since your version: a test added to the catalogue after the version the "
                            "implementation targets (its catalogue_version) failed; it does not fail the run")
ROW_STATUSES = ("pass", "fail", "interrupted", "xfail", NEW_SINCE_TARGET, "not-implemented", "not-run")
COMPLETION_STATES = ("incomplete", "complete", "interrupted")
REPORT_BASENAME = "kvconform-report"

#: Failure statuses, most specific first, and how each is recognised in the error (the report legend).
FAILURE_STATUSES: dict[str, str] = {
    "out-of-bounds": "a write outside a buffer handed to the implementation: a canary margin changed "
                     "(\"wrote outside its buffer\", the canary fence of harness/engine/buffers.py)",
    "timeout": "a call into the implementation did not return in time (the guard's \"hung: no return within\") "
               "or a distributed rank operation timed out",
    "crash": "the implementation raised an exception (the guard's \"raised\"), its worker process or a rank process "
             "died (exited, segfaulted, was killed), or the test "
             "stopped on an exception that is not an assertion",
    "fail": "an invariant violation or assertion: the implementation returned or wrote something wrong",
}
#: Where the implementation ran (the run info's ``configuration.isolation``), in words.
ISOLATION_MEANING = {"process": "the implementation ran in a worker process; the judge in its own",
                     "in-process": "the implementation ran inside the judge's process (--in-process; --isolation=in-process)"}
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
    #: The standalone repro script's file name and text (written next to the report), or why there is none.
    repro_script: str | None = None
    repro_source: str | None = None
    repro_note: str | None = None
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
    if re.search(r"ImplementationFault: .*? raised [\w.]+: |died without a report|a rank process died|"
                 r"the worker process died", error):
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
    #: pass | fixed | fail | interrupted | xfail | new-since-target | xpass | not-implemented | skipped | not-run
    status: str = "not-run"
    examples: int | None = None
    shrinks: int = 0
    missing_capabilities: tuple[str, ...] = ()
    #: Every distinct failure of the test (the first failing phase's), in Hypothesis's order.
    failures: tuple[FailureDetail, ...] = ()
    #: Cases per case-class value (``harness.case_classes``); empty for plain tests.
    classes: dict[str, dict[str, int]] = field(default_factory=dict)
    #: The configuration it ran in (``None`` for an implementation without configurations).
    configuration: str | None = None
    #: The catalogue version that added the test, when newer than the one its implementation targets.
    new_since: str | None = None
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
        elif when == "call" and outcome == "skipped" and xfailed and self.new_since:
            self.status, self.failures = NEW_SINCE_TARGET, failures
        elif when == "call" and outcome == "skipped":
            self.status = "xfail" if xfailed else "skipped"
        elif when == "call" and outcome == "passed":
            self.status = "xpass" if xfailed and not self.new_since else "pass"

    def interrupt(self) -> None:
        """The session stopped while this test ran: it neither passed nor was skipped."""
        if self.status != "fail":
            self.status = "interrupted"

    @property
    def ran(self) -> bool:
        return self.status in ("pass", "fixed", "fail", "xfail", "xpass", NEW_SINCE_TARGET)


@dataclass(frozen=True)
class RunConfiguration:
    """One selected configuration of an implementation that declares several: one report column."""

    name: str
    impl_name: str
    capabilities: tuple[str, ...]
    limits: tuple[str, ...]
    catalogue_version: str | None  #: the catalogue version it targets, if declared


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
    #: Where the implementation ran: "process" (a worker process, harness.isolation) or "in-process".
    isolation: str = "in-process"
    #: The report's ``"run"`` object (``harness.runinfo.collect``); ``None`` leaves it out.
    run_info: dict[str, Any] | None = None
    #: The catalogue version an implementation without configurations targets, if declared.
    catalogue_target: str | None = None
    #: The selected configurations; ``()`` for an implementation without configurations.
    configurations: tuple[RunConfiguration, ...] = ()


def repro_command(context: RunContext, nodeid: str, seed: str | None, path: str | None = None,
                  configuration: str | None = None, case_file: str | None = None) -> str:
    """One shell line rerunning ``nodeid`` with the same implementation, profile, device and configuration
    (``case_file``: that stored case alone).

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
        if configuration:
            words += ["--config", configuration]
        if context.profile != "default":
            words += ["--profile", context.profile]
        if context.devices_requested != "all":
            words += ["--device", context.devices_requested]
        if context.isolation == "in-process":
            words.append("--in-process")
        words.append(f"{os.path.normpath(path)}{sep}{rest}")
        if case_file and case_file.endswith(".json"):
            words += ["--replay-case", case_file]
        elif seed:
            words += ["--hypothesis-seed", seed]
        return shlex.join(words)
    target = os.path.relpath(os.path.join(context.rootdir, path), context.invocation_dir) + sep + rest
    options = ["python", "-m", "pytest", "-p", "harness.pytest_plugin", "--impl", context.impl_spec]
    if configuration:
        options += ["--impl-config", configuration]
    if context.profile != "default":
        options.append(f"--hypothesis-profile={context.profile}")
    if context.devices_requested != "all":
        options += ["--device", context.devices_requested]
    if context.isolation == "process":
        options.append("--isolation=process")
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
    names = [c.name for c in context.configurations]
    rows = [_row(inv.id, inv.title, by_invariant.get(inv.id, []), names) for inv in INVARIANTS]
    ordered = [record for inv in INVARIANTS for record in sorted(by_invariant.get(inv.id, []), key=lambda r: r.nodeid)]
    failures = [entry for record in ordered if record.status == "fail" for entry in _failure_entries(context, record)]
    new_checks = [{**entry, "since": record.new_since}
                  for record in ordered if record.status == NEW_SINCE_TARGET
                  for entry in _failure_entries(context, record)]
    summary: dict[str, Any] = {status: sum(r["status"] == status for r in rows) for status in ROW_STATUSES}
    summary["tests"] = sum(r["tests"] for r in rows)
    summary["failed_tests"] = len({f["test"] for f in failures})
    summary["examples"] = sum(r["examples"] for r in rows)
    summary["failures"] = len(failures)
    summary["new_checks"] = len(new_checks)
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
            "catalogue_version": context.catalogue_target,
        },
        "configurations": [{"name": c.name, "impl_name": c.impl_name, "capabilities": list(c.capabilities),
                            "limits": list(c.limits), "catalogue_version": c.catalogue_version}
                           for c in context.configurations],
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
        "class_coverage": _class_coverage(context, by_invariant),
        "new_checks": new_checks,
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


def _row(invariant: str, title: str, records: list[TestRecord], configurations: list[str] | None = None) -> dict[str, Any]:
    """Aggregate one invariant's tests; status precedence fail > interrupted > new-since-target > xfail > pass (fixed) >
    not-implemented > not-run.  With ``configurations``, the same per configuration under ``"configurations"``."""
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
    elif any(r.status == NEW_SINCE_TARGET for r in records):
        status = NEW_SINCE_TARGET
    elif counts["xfailed"]:
        status = "xfail"
    elif counts["passed"] or counts["xpassed"] or counts["fixed"]:
        status = "pass"
    elif counts["not_implemented"]:
        status = "not-implemented"
    else:
        status = "not-run"
    missing = sorted({cap for r in records for cap in r.missing_capabilities})
    class_counts = _class_counts(records)
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
        "classes": {name: dict(values) for name, values in case_classes.ordered(class_counts, invariant)}
                    if class_counts else {},
        # a test that uses no implementation (configuration None) ran once for every column
        "configurations": {name: _row(invariant, title, [r for r in records if r.configuration in (name, None)])
                           for name in configurations or ()},
    }


def _class_counts(records: list[TestRecord]) -> case_classes.Counts:
    """Case-class counts of the tests that ran, added up (one record per test, whichever xdist worker ran it)."""
    counts: case_classes.Counts = {}
    for record in records:
        if record.ran:
            case_classes.merge(counts, record.classes)
    return counts


def _class_gaps(context: RunContext, by_invariant: dict[str, list[TestRecord]]) -> list[case_classes.Gap]:
    return [gap for inv in INVARIANTS
            for gap in case_classes.gaps(inv.id, _class_counts(by_invariant.get(inv.id, [])), context.limits)]


def _class_coverage(context: RunContext, by_invariant: dict[str, list[TestRecord]]) -> dict[str, Any]:
    return {"enforced": context.profile in CLASS_COVERAGE_PROFILES,
            "gaps": [{"invariant": g.invariant, "class": g.case_class, "value": g.value, "limit": g.limit,
                      "message": g.message()} for g in _class_gaps(context, by_invariant)]}


def enforced_class_gaps(context: RunContext, records: list[TestRecord]) -> list[case_classes.Gap]:
    """Gaps that fail the run: under a profile of ``CLASS_COVERAGE_PROFILES``, expected values with zero cases
    that no declared limit excludes."""
    if context.profile not in CLASS_COVERAGE_PROFILES:
        return []
    by_invariant: dict[str, list[TestRecord]] = {}
    for record in records:
        by_invariant.setdefault(record.invariant, []).append(record)
    return [gap for gap in _class_gaps(context, by_invariant) if gap.limit is None]


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
        "repro": repro_command(context, record.nodeid, detail.seed, record.path, record.configuration,
                               detail.case_file),
        "configuration": record.configuration,
        "repro_script": detail.repro_script,
        "repro_script_note": detail.repro_note,
    } for index, detail in enumerate(details, 1)]


def repro_sources(records: Any) -> dict[str, str]:
    """File name -> text of every failure's standalone repro script, to write next to the report."""
    return {f.repro_script: f.repro_source for r in records if r.status == "fail" for f in r.failures
            if f.repro_script and f.repro_source}


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
        *_configuration_lines(report),
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
        "result: " + ", ".join(f"{summary[s]} {s}" for s in ROW_STATUSES if s != NEW_SINCE_TARGET or summary.get(s))
        + f" ({summary['tests']} tests, {summary['examples']} examples, {summary['failed_tests']} failed)"
    )
    completion = report["completion"]
    if completion["state"] != "complete" or completion["note"]:
        lines.insert(0, _completion_line(completion))
    return lines


def _configuration_lines(report: dict[str, Any]) -> list[str]:
    """The targeted catalogue version and, for an implementation with configurations, one line each."""
    target = report["impl"].get("catalogue_version")
    lines = [f"targets catalogue {target}"] if target else []
    for config in report.get("configurations") or ():
        words = [config["impl_name"]]
        if config["limits"]:
            words.append("limits " + ", ".join(config["limits"]))
        if config["catalogue_version"]:
            words.append(f"targets catalogue {config['catalogue_version']}")
        lines.append(f"configuration {config['name']}: " + "; ".join(words))
    return lines


def _columns(report: dict[str, Any]) -> list[str]:
    """Configuration names, one status column each; none for an implementation without configurations."""
    return [config["name"] for config in report.get("configurations") or ()]


def _run_info_lines(run: dict[str, Any] | None) -> list[str]:
    """Header lines for the report's run info (none for a report without it)."""
    if not run:
        return []
    suite, impl = run["suite"], run["implementation"]
    return [
        f"suite: kvconform {suite['version']} (commit {suite['commit']}), catalogue {run['catalogue_version']}",
        f"implementation version: {impl['project']} {impl['version']} (from {impl['version_from']})",
        f"machine: {', '.join(run['device_names']) or '(none)'}; driver {run['driver']}; {run['platform']}",
        *([f"isolation: {run['configuration']['isolation']} ({ISOLATION_MEANING[run['configuration']['isolation']]})"]
          if run.get("configuration", {}).get("isolation") in ISOLATION_MEANING else []),
    ]


def _failure_title(failure: dict[str, Any]) -> str:
    """``STATUS [invariant] test`` plus ``(failure i of n)`` when the test failed in several ways; a new
    check's reads ``NEW-SINCE-TARGET (catalogue V) STATUS ...``."""
    count = failure["test_failures"]
    new = f"{NEW_SINCE_TARGET.upper()} (catalogue {failure['since']}) " if failure.get("since") else ""
    return (f"{new}{failure['status'].upper()} [{failure['invariant']}] {failure['test']}"
            + (f" (failure {failure['index']} of {count})" if count > 1 else ""))


def _column_status(row: dict[str, Any], configuration: str) -> str:
    column = (row.get("configurations") or {}).get(configuration)
    return column["status"] if column else "not-run"


def _legend_lines(report: dict[str, Any]) -> list[str]:
    """The failure-status legend, for the statuses that occur in ``report``."""
    present = {f["status"] for f in report["failures"] + report.get("new_checks", [])}
    lines = [f"{status}: {meaning}" for status, meaning in FAILURE_STATUSES.items() if status in present]
    return lines + ([f"{NEW_SINCE_TARGET}: {NEW_SINCE_TARGET_MEANING}"] if report.get("new_checks") else [])


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
    columns = _columns(report)
    status_width = 16 if any(r["status"] == NEW_SINCE_TARGET for r in report["rows"]) or columns else 15
    lines.append("")
    lines.append(f"{'invariant':<{width}}  {'status':<{status_width}}  "
                 + "".join(f"{name:<16}  " for name in columns) + f"{'tests':>5}  {'examples':>8}  notes")
    for row in report["rows"]:
        lines.append(
            f"{row['invariant']:<{width}}  {row['status']:<{status_width}}  "
            + "".join(f"{_column_status(row, name):<16}  " for name in columns)
            + f"{row['tests']:>5}  {row['examples']:>8}  {_row_notes(row)}"
        )
    lines += _class_lines(report)
    for failure in report["failures"] + report.get("new_checks", []):
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
        if failure.get("repro_script"):
            lines.append(f"  repro script (no kvconform needed): {failure['repro_script']}")
    if report.get("xfails"):
        lines += ["", "xfails entries:", *("  " + line for line in _xfail_lines(report))]
    if report["failures"] or report.get("new_checks"):
        lines += ["", "failure statuses:", *("  " + line for line in _legend_lines(report))]
    return lines


def _class_summary(values: dict[str, int]) -> str:
    """``ran/listed`` values of a class, and its rarest value's cases: ``3/3 >=12``."""
    ran = [n for n in values.values() if n]
    return f"{len(ran)}/{len(values)}" + (f" >={min(ran)}" if ran else "")


def _class_lines(report: dict[str, Any]) -> list[str]:
    """Compact class coverage: per invariant, each class's values that ran / listed and its rarest value's
    cases; then every gap (``FAIL`` when the profile enforces coverage)."""
    rows = [row for row in report["rows"] if row.get("classes")]
    if not rows:
        return []
    lines = ["", "case classes (values with cases/listed, >= cases of the rarest; per value in kvconform-report.md):"]
    for row in rows:
        items = [f"{name} {_class_summary(values)}" for name, values in row["classes"].items()]
        lines.append(f"  {row['invariant']}: " + ", ".join(items))
    coverage = report.get("class_coverage", {})
    for gap in coverage.get("gaps", ()):
        fails = coverage.get("enforced") and not gap["limit"]
        lines.append(("FAIL class coverage " if fails else "  zero cases: ") + gap["message"])
    return lines


def _markdown_classes(report: dict[str, Any]) -> list[str]:
    """One table row per invariant and class: its values and cases, zeros in bold."""
    rows = [row for row in report["rows"] if row.get("classes")]
    if not rows:
        return []
    coverage = report.get("class_coverage", {})
    out = ["", "## Case classes", "",
           "Cases per class value (`harness/case_classes.py`; see README, *Reading the case-class table*)"
           + ("; the profile fails the run on a **0** that no declared limit explains." if coverage.get("enforced")
              else "; **0**: an expected value got no case (the thorough profile fails on it)."),
           "", "| invariant | class | cases per value |", "|---|---|---|"]
    for row in rows:
        for name, values in row["classes"].items():
            cells = ", ".join(f"{value} **0**" if not n else f"{value} {n}" for value, n in values.items())
            out.append(f"| `{row['invariant']}` | {name} | {cells} |")
    if coverage.get("gaps"):
        out += ["", *(f"- {gap['message']}" for gap in coverage["gaps"])]
    shown = {name for row in rows for name in row["classes"]}
    out += ["", "Classes: " + "; ".join(f"*{c.name}*: {c.meaning}" for c in case_classes.CLASSES if c.name in shown)
            + "."]
    return out


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
    columns = _columns(report)
    out += ["", "| invariant | status | " + "".join(f"{name} | " for name in columns) + "tests | examples | notes |",
            "|---|---|" + "---|" * len(columns) + "---:|---:|---|"]
    for row in report["rows"]:
        out.append(
            f"| `{row['invariant']}` {row['title']} | **{row['status']}** | "
            + "".join(f"{_column_status(row, name)} | " for name in columns)
            + f"{row['tests']} | {row['examples']} | {_row_notes(row)} |"
        )
    new_checks = report.get("new_checks", [])
    for heading, entries in (("Failures", report["failures"]), (f"New since your version ({NEW_SINCE_TARGET})", new_checks)):
        if entries:
            out += ["", f"## {heading}"]
            out += _markdown_failures(entries)
    if report.get("xfails"):
        out += ["", "## Expected failures (xfails entries)", "", *(f"- {line}" for line in _xfail_lines(report)), "",
                *(f"- **{state}**: {meaning}" for state, meaning in XFAIL_STATES.items())]
    if report["failures"] or new_checks:
        out += ["", "## Legend", "", "Row statuses: " + ", ".join(ROW_STATUSES) + " (see `kvconform --help`).",
                "Failure statuses:", ""]
        out += [f"- **{status}**: {meaning}" for status, meaning in FAILURE_STATUSES.items()]
        if new_checks:
            out += [f"- **{NEW_SINCE_TARGET}** (row status): {NEW_SINCE_TARGET_MEANING}"]
    out += _markdown_classes(report)
    return "\n".join(out) + "\n"


def _markdown_failures(entries: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for failure in entries:
        count = failure["test_failures"]
        out += ["", f"### `{failure['invariant']}`: `{failure['test']}`"
                + (f" (failure {failure['index']} of {count})" if count > 1 else ""), "",
                *([f"- added in catalogue {failure['since']}"] if failure.get("since") else []),
                f"- status: **{failure['status']}**", f"- phase: {failure['phase']}",
                f"- error: `{failure['error']}`"]
        if failure["reproduce_failure"]:
            out.append(f"- reproduce_failure: `{failure['reproduce_failure']}`")
        if failure["seed"]:
            out.append(f"- seed: `{failure['seed']}`")
        if failure.get("case"):
            out += [f"- stored case: `{failure['case_file']}`", "", "```json", failure["case"], "```", ""]
        out += [f"- repro: `{failure['repro']}`"]
        if failure.get("repro_script"):
            out.append(f"- repro script (torch and the implementation only): [{failure['repro_script']}]"
                       f"({failure['repro_script']})")
        elif failure.get("repro_script_note"):
            out.append(f"- repro script: none ({failure['repro_script_note']})")
        if failure["counterexample"]:
            out += ["", "```text", failure["counterexample"], "```"]
        if failure["explanation"]:
            out += ["", "Explanation (Hypothesis's explain phase):", "", "```text", *failure["explanation"], "```"]
    return out


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


def write_report(report: dict[str, Any], directory: Path | str,
                 scripts: dict[str, str] | None = None) -> tuple[Path, Path]:
    """Write ``kvconform-report.md`` and ``kvconform-report.json`` into ``directory``, with the failures'
    repro ``scripts`` (file name -> text) next to them; return the report's paths.

    Each file is written to a temporary name and renamed, so a reader (or a
    kill) never sees a half-written report.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, source in (scripts or {}).items():  # before the report that links them
        if not (directory / name).is_file() or (directory / name).read_text(encoding="utf-8") != source:
            _replace_text(directory / name, source)
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

    def write(self, report: dict[str, Any], scripts: dict[str, str] | None = None) -> tuple[Path, Path] | None:
        """Write ``report`` (and its repro ``scripts``); ``None`` only when neither the directory nor the
        fallback could be written."""
        if self.problem is None:
            try:
                self.paths = write_report(report, self.directory, scripts)
                return self.paths
            except OSError as exc:
                self.problem = f"cannot write the report to {self.directory}: {exc}"
        try:
            self.paths = write_report(report, fallback_directory(), scripts)
        except OSError as exc:
            self.problem += f"; the fallback {fallback_directory()} failed too: {exc}"
            self.paths = None
        return self.paths
