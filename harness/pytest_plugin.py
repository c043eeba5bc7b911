"""pytest plugin running kvconform's conformance tests against a plug-in implementation.

Loaded by the repository's root ``conftest.py`` (plain ``pytest`` in a
checkout), by the ``kvconform`` CLI, or explicitly by a third party::

    pytest -p harness.pytest_plugin --pyargs harness.conformance --impl pkg.mod:factory

There is deliberately no ``pytest11`` entry point: it would add ``--impl`` and
``--device`` to every pytest run in the user's environment.

Options: ``--impl SPEC`` (see ``harness.loading``; default ``$KVCONFORM_IMPL``
or ``reference``), ``--xfails FILE`` (see ``harness.xfails``),
``--kvconform-report DIR`` (default: the current directory),
``--device {cpu,cuda,all}``.  Inputs are checked at configure time, before
any test, each a usage error (exit 4) naming the input: the ``KVCONFORM_*``
environment (``harness.settings``), ``--hypothesis-profile``, a requested
device that is absent (``--device cuda`` without CUDA is refused, never a run
of "pass" rows), and the report directory (created and written to).
Fixtures: ``impl`` (the implementation object),
``loaded_impl`` (its ``LoadedImplementation``), ``devices`` (selected device
strings; skips with a reason when none is available).  Marker:
``@pytest.mark.invariant("<id>", requires=("<capability>", ...))``.

The plugin is inert for runs that touch no conformance test: it loads the
implementation at configure time (so a bad ``--impl`` is one usage error
before any test runs, on the xdist controller and on each worker) when
``--impl``/``--xfails``/``--kvconform-report`` or ``$KVCONFORM_IMPL`` is
given or the command-line paths include ``harness/conformance``; otherwise it
loads it lazily once collection finds an ``invariant``-marked test (so
``pytest tests/...`` never depends on the reference).  The report is built on the
controller only, from data carried in ``report.user_properties`` (which
pytest-xdist serializes): the invariant, missing capabilities, the number of
Hypothesis test cases (from Hypothesis's statistics collector, chained so
``--hypothesis-show-statistics`` keeps working) and the details of every
distinct failure (Hypothesis's "distinct failures" exception group is split
into its members; each member's notes give its falsifying example,
``@reproduce_failure`` line and explain-phase lines).  The run info
(``harness.runinfo``) is collected once, on the controller.  It is rewritten after every test, marked
incomplete, and once more at the session's end with its completion state: a
test running when the session was interrupted reads ``interrupted``, and a
run in which no invariant test ran exits 5 (pytest's "no tests"), not 0.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness import profiles, runinfo, scope, settings
from harness.oracles import attribute
from harness.catalogue import BY_ID
from harness.devices import require_devices, select_devices
from harness.interface import CAPABILITIES, Implementation
from harness.loading import ImplementationError, LoadedImplementation, load_implementation, resolve_spec
from harness.report import (
    Completion,
    FailureDetail,
    ReportDirectoryError,
    ReportWriter,
    RunContext,
    TestRecord,
    build_report,
    ensure_report_directory,
    terminal_lines,
)
from harness.xfails import XfailEntry, first_match, read_xfails, resolve_xfails_path

#: ``report.user_properties`` keys written by this plugin.
PROP_INVARIANT = "kvconform.invariant"
PROP_MISSING = "kvconform.missing_capabilities"
PROP_XFAIL = "kvconform.xfail"
PROP_EXAMPLES = "kvconform.examples"
PROP_SHRINKS = "kvconform.shrinks"
#: JSON list of the call's distinct failures: {"error", "counterexample", "reproduce_failure", "seed", "explanation"}.
PROP_FAILURES = "kvconform.failures"

DEVICE_CHOICES = ("cpu", "cuda", "all")
CONFORMANCE_DIR = Path(__file__).resolve().parent / "conformance"
_COUNTEREXAMPLE_PREFIXES = ("Falsifying", "Failing test case", "Failing example")
_BLOB = re.compile(r"@reproduce_failure\([^)]*\)")
_PRINTED_SEED = re.compile(r"@seed\((\d+)\)|--hypothesis-seed=(\d+)")
_STASH: pytest.StashKey["ConformanceRun"] = pytest.StashKey()
_MARKER_ERROR: pytest.StashKey[str] = pytest.StashKey()


def _database_directory_at_import() -> Path:
    """The example database directory; a bad ``KVCONFORM_*`` value is reported by ``pytest_configure`` instead."""
    try:
        return profiles.database_directory()
    except settings.SettingsError:
        return profiles.database_directory_default()


# Registered at import so ``--hypothesis-profile ci|thorough|gate`` resolves whenever Hypothesis's plugin configures.
profiles.register_profiles(_database_directory_at_import())
# Draws must not depend on which modules this process imported before (see profiles.pin_local_constants).
profiles.pin_local_constants()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kvconform", "kvconform conformance suite")
    group.addoption(
        "--impl", dest="kvconform_impl", default=None, metavar="SPEC",
        help="implementation under test: package.module:factory, package.module (its make_implementation), "
        "or a registered name (reference, sglang, entry points of kvconform.implementations). "
        "Default: $KVCONFORM_IMPL or 'reference'.",
    )
    group.addoption(
        "--xfails", dest="kvconform_xfails", default=None, metavar="FILE",
        help="expected-failure list (invariant ids or node-id substrings, '#' comments); "
        "a bare name reads harness/xfails/NAME.txt.",
    )
    group.addoption(
        "--kvconform-report", dest="kvconform_report", default=None, metavar="DIR",
        help="directory for kvconform-report.md and kvconform-report.json (default: current directory).",
    )
    group.addoption(
        "--device", dest="kvconform_device", default="all", choices=DEVICE_CHOICES,
        help="devices conformance tests use: cpu, cuda, or all available (default).",
    )
    # Set by the kvconform CLI so repro lines use the CLI instead of pytest.
    group.addoption("--kvconform-prog", dest="kvconform_prog", default=None, help=argparse.SUPPRESS)


@pytest.hookimpl(tryfirst=True)  # before Hypothesis's plugin loads --hypothesis-profile
def pytest_configure(config: pytest.Config) -> None:
    try:
        line = settings.current().unknown_variables_line()
    except settings.SettingsError as exc:
        raise pytest.UsageError(str(exc)) from None
    if line and not config.getoption("kvconform_prog"):  # the CLI has printed it already
        config.issue_config_time_warning(pytest.PytestConfigWarning(line), stacklevel=2)
    config.addinivalue_line(
        "markers",
        "invariant(id, requires=()): conformance test of catalogue invariant `id`; skipped as "
        "not implemented when the implementation lacks a capability in `requires`.",
    )
    run = ConformanceRun(config)
    config.stash[_STASH] = run
    config.pluginmanager.register(run, "kvconform-run")
    run.configure()


def pytest_unconfigure(config: pytest.Config) -> None:
    run = config.stash.get(_STASH, None)
    if run is not None:
        run.restore_hypothesis_profiles()


@pytest.fixture(scope="session")
def loaded_impl(pytestconfig: pytest.Config) -> LoadedImplementation:
    """The validated implementation under test, with its spec and capabilities."""
    run = pytestconfig.stash[_STASH]
    try:
        return run.ensure_loaded()
    except ImplementationError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def impl(loaded_impl: LoadedImplementation) -> Implementation:
    """The implementation object conformance tests call (typed with every capability's Protocol)."""
    return loaded_impl.implementation


@pytest.fixture(scope="session")
def devices(pytestconfig: pytest.Config) -> list[str]:
    """Device strings selected by ``--device`` and available; skips (with the reason) when none is."""
    run = pytestconfig.stash[_STASH]
    selected, note = run.devices()
    if not selected:
        pytest.skip(f"--device {run.device_option}: {note}")
    return list(selected)


@dataclass(eq=False)  # registered as a pytest plugin: must stay hashable
class ConformanceRun:
    """Per-session state and hooks; one instance per pytest config (xdist: per process)."""

    config: pytest.Config
    loaded: LoadedImplementation | None = None
    xfails: tuple[XfailEntry, ...] = ()
    xfails_file: str | None = None
    records: dict[str, TestRecord] = field(default_factory=dict)
    report: dict[str, Any] | None = None
    report_paths: tuple[Path, Path] | None = None
    writer: ReportWriter | None = None
    #: Node ids whose run started and has not finished (a KeyboardInterrupt leaves them here).
    running: set[str] = field(default_factory=set)
    #: Whether a test without an ``invariant`` marker ran (``pytest tests/...`` with ``$KVCONFORM_IMPL`` set).
    others_ran: bool = False
    _run_context: RunContext | None = None
    _devices: tuple[tuple[str, ...], str | None] | None = None
    _saved_profiles: dict[str, Any] = field(default_factory=dict)
    _saved_profile_name: str | None = None
    eager: bool = False

    # -- setup -----------------------------------------------------------------------------

    @property
    def spec(self) -> str:
        return resolve_spec(self.config.getoption("kvconform_impl"))

    @property
    def device_option(self) -> str:
        return self.config.getoption("kvconform_device")

    @property
    def is_worker(self) -> bool:
        return hasattr(self.config, "workerinput")

    def configure(self) -> None:
        """Check the inputs, select the Hypothesis profile, read the xfails file and, when wanted, load the implementation."""
        self._load_hypothesis_profile()
        try:
            require_devices(self.device_option)
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
        xfails_option = self.config.getoption("kvconform_xfails")
        if xfails_option:
            try:
                path = resolve_xfails_path(xfails_option)
            except ValueError as exc:
                raise pytest.UsageError(str(exc)) from None
            self.xfails, self.xfails_file = read_xfails(path), str(path)
        self.eager = self._wants_conformance()
        if self.eager and not self.is_worker and not self.config.getoption("collectonly"):
            try:
                self.writer = ReportWriter(ensure_report_directory(self.report_directory(), "--kvconform-report"))
            except ReportDirectoryError as exc:
                raise pytest.UsageError(str(exc)) from None
        if self.eager:
            self.load_or_usage_error()

    def report_directory(self) -> Path:
        return Path(self.config.getoption("kvconform_report") or self.config.invocation_params.dir)

    def _load_hypothesis_profile(self) -> None:
        from hypothesis import settings

        self._saved_profile_name = settings.get_current_profile_name()
        for name in profiles.PROFILE_EXAMPLES:
            try:
                self._saved_profiles[name] = settings.get_profile(name)
            except Exception:
                pass
        profiles.register_profiles(profiles.database_directory(self.config.invocation_params.dir))
        command_line_profile = self.config.getoption("hypothesis_profile", None)
        try:
            if command_line_profile:
                profiles.check_profile_name(command_line_profile)
            selected = profiles.selected_profile(command_line_profile)
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
        if selected:
            settings.load_profile(selected)

    def restore_hypothesis_profiles(self) -> None:
        """Undo this session's profile changes (matters when pytest runs in-process, e.g. pytester)."""
        from hypothesis import settings

        for name, saved in self._saved_profiles.items():
            settings.register_profile(name, parent=saved)
        if self._saved_profile_name:
            try:
                settings.load_profile(self._saved_profile_name)
            except Exception:
                pass

    def _wants_conformance(self) -> bool:
        """Whether this run is about conformance: explicit kvconform options or paths reaching harness/conformance."""
        options = ("kvconform_impl", "kvconform_xfails", "kvconform_report")
        if any(self.config.getoption(name) for name in options) or settings.current().impl:
            return True
        base = self.config.invocation_params.dir
        for arg in self.config.args:
            if self.config.getoption("pyargs", False) and (arg == "harness" or arg.startswith("harness.conformance")):
                return True
            path = (base / arg.split("::")[0]).resolve()
            if path == CONFORMANCE_DIR or CONFORMANCE_DIR in path.parents or path in CONFORMANCE_DIR.parents:
                return True
        return False

    def ensure_loaded(self) -> LoadedImplementation:
        if self.loaded is None:
            self.loaded = load_implementation(self.spec)
        return self.loaded

    def load_or_usage_error(self) -> LoadedImplementation:
        try:
            return self.ensure_loaded()
        except ImplementationError as exc:
            raise pytest.UsageError(f"kvconform could not load the implementation:\n{exc}") from None

    def devices(self) -> tuple[tuple[str, ...], str | None]:
        if self._devices is None:
            self._devices = select_devices(self.device_option)
        return self._devices

    # -- collection ------------------------------------------------------------------------

    def pytest_report_header(self, config: pytest.Config) -> list[str] | None:
        if self.loaded is None:
            return None
        selected, note = self.devices()
        lines = [
            f"kvconform: impl {self.loaded.name} ({self.loaded.spec}), capabilities: "
            + (", ".join(sorted(self.loaded.capabilities)) or "(none)"),
            f"kvconform: hypothesis profile {profiles.current_profile_name()}, devices: "
            + (", ".join(selected) or "(none)") + (f" ({note})" if note else ""),
        ]
        if self.xfails_file:
            lines.append(f"kvconform: xfails {self.xfails_file} ({len(self.xfails)} entries)")
        return lines

    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        """Tag invariant tests, skip those needing missing capabilities, mark listed xfails."""
        if self.config.getoption("maxfail", 0) == 1:
            items[:] = fail_fast_order(items)
        markers = [(item, item.get_closest_marker("invariant")) for item in items]
        tagged = [(item, marker) for item, marker in markers if marker is not None]
        if not tagged:
            return
        if self.is_worker:  # a usage error on a worker crashes it; let the impl fixture fail each test instead
            try:
                loaded: LoadedImplementation | None = self.ensure_loaded()
            except ImplementationError:
                loaded = None
        else:
            loaded = self.load_or_usage_error()
        problems = []
        for item, marker in tagged:
            try:
                invariant, requires = parse_invariant_marker(marker)
            except ValueError as exc:
                problems.append(f"{item.nodeid}: {exc}")
                item.stash[_MARKER_ERROR] = str(exc)
                continue
            item.user_properties.append((PROP_INVARIANT, invariant))
            if loaded is None:
                continue
            missing = [cap for cap in requires if cap not in loaded.capabilities]
            if missing:
                item.user_properties.append((PROP_MISSING, ",".join(missing)))
                item.add_marker(pytest.mark.skip(
                    reason=f"not implemented: {loaded.name} lacks capability '{missing[0]}'"))
                continue
            fit_to_declared_scope(getattr(item, "obj", None))
            entry = first_match(self.xfails, item.nodeid, invariant)
            if entry is not None:
                item.user_properties.append((PROP_XFAIL, entry.source))
                item.add_marker(pytest.mark.xfail(reason=f"{entry.reason} ({entry.source})", strict=False))
        if problems and not self.is_worker:  # on a worker, pytest_runtest_setup fails each such test instead
            raise pytest.UsageError("invalid @pytest.mark.invariant markers:\n  " + "\n  ".join(problems))

    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        if _MARKER_ERROR in item.stash:
            pytest.fail(f"invalid @pytest.mark.invariant marker: {item.stash[_MARKER_ERROR]}", pytrace=False)

    # -- running ---------------------------------------------------------------------------

    @pytest.hookimpl(wrapper=True, trylast=True)  # innermost wrapper: inside Hypothesis's own
    def pytest_runtest_call(self, item: pytest.Item):
        """Count Hypothesis test cases and keep a failure's counterexample, for the report."""
        if item.get_closest_marker("invariant") is None:
            return (yield)
        statistics: list[dict] = []
        with _collecting_statistics(statistics):
            try:
                return (yield)
            except Exception as exc:
                attribute_to_marker(item, exc)
                item.user_properties.extend(_failure_properties(exc, item, statistics))
                raise
            finally:
                item.user_properties.extend(_example_properties(item, statistics))

    def pytest_runtest_logstart(self, nodeid: str, location: tuple) -> None:
        self.running.add(nodeid)

    def pytest_runtest_logfinish(self, nodeid: str, location: tuple) -> None:
        self.running.discard(nodeid)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Fold each phase report into the test's record (controller side; xdist-safe)."""
        if self.is_worker:
            return
        if report.when == "call" and not report.skipped and report.nodeid not in self.records:
            self.others_ran = True
        self._fold(report)
        if report.when == "teardown" and report.nodeid in self.records:
            self._write(Completion())  # after every test: a run killed from outside keeps its results

    def _fold(self, report: pytest.TestReport) -> None:
        # Values are whatever this plugin appended (strings, counts); xdist may turn the pairs into lists.
        props: dict[str, Any] = {name: value for name, value in report.user_properties}
        invariant = props.get(PROP_INVARIANT)
        if invariant is None:
            return
        record = self.records.setdefault(report.nodeid, TestRecord(report.nodeid, invariant, report.location[0]))
        if PROP_MISSING in props:
            record.missing_capabilities = tuple(props[PROP_MISSING].split(","))
        if PROP_EXAMPLES in props:
            record.examples = int(props[PROP_EXAMPLES])
            record.shrinks = int(props.get(PROP_SHRINKS, 0))
        failures: tuple[FailureDetail, ...] = ()
        if report.failed:
            found = json.loads(props[PROP_FAILURES]) if report.when == "call" and PROP_FAILURES in props else [{}]
            failures = tuple(FailureDetail(
                phase=report.when,
                error=found_one.get("error") or _first_error_line(report),
                counterexample=found_one.get("counterexample"),
                reproduce_failure=found_one.get("reproduce_failure"),
                seed=found_one.get("seed") or _printed_seed(report),
                explanation=tuple(found_one.get("explanation", ())),
            ) for found_one in found)
        record.add_phase(report.when, report.outcome, hasattr(report, "wasxfail"), failures)

    # -- reporting -------------------------------------------------------------------------

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Settle the exit status (interrupted tests, nothing checked) and write the final report."""
        if self.is_worker or self.config.getoption("collectonly"):
            return
        if not (self.eager or self.records):
            return
        stopped_first = self._stopped_at_first_failure(session)
        if stopped_first:  # pytest-xdist ends an --exitfirst run as an interruption; it is a failed run
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        interrupted = session.exitstatus == pytest.ExitCode.INTERRUPTED
        if interrupted or stopped_first:
            for nodeid in self.running:
                if nodeid in self.records:
                    self.records[nodeid].interrupt()
        note = None
        if interrupted:
            note = "interrupted (Ctrl-C, or KeyboardInterrupt raised inside the implementation) during " + (
                ", ".join(sorted(self.running)) or "the run")
        elif stopped_first:
            note = "stopped at the first failure (--exitfirst): tests after it did not run" + (
                f"; {', '.join(sorted(self.running))} did not finish" if self.running else "")
        elif not any(record.ran for record in self.records.values()) and (self.records or not self.others_ran):
            note = self._nothing_checked()
            if session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED
        state = "interrupted" if interrupted else "complete"
        self._write(Completion(state, int(session.exitstatus), note))

    def _stopped_at_first_failure(self, session: pytest.Session) -> bool:
        """Whether ``-x``/``--exitfirst`` ended the run after a failure (in-process or through pytest-xdist)."""
        if self.config.getoption("maxfail", 0) != 1 or not session.testsfailed:
            return False
        dsession = self.config.pluginmanager.getplugin("dsession")  # pytest-xdist's controller
        xdist_stop = str(getattr(dsession, "shouldstop", "") or "")
        return bool(session.shouldfail) or xdist_stop.startswith("stopping after")

    def _nothing_checked(self) -> str:
        """Why no invariant test ran, for the report and the exit status."""
        if any(record.status == "not-implemented" for record in self.records.values()):
            loaded = self.loaded
            claimed = ", ".join(sorted(loaded.capabilities)) if loaded else "(not loaded)"
            return (f"no invariant was checked: the implementation claims none of the capabilities the selected "
                    f"tests need (it claims: {claimed or '(none)'}); declare them in its 'capabilities'")
        return "no invariant was checked: every selected test was deselected or skipped"

    def _write(self, completion: Completion) -> None:
        """Build the report from the records so far and write it (falling back, never raising on I/O)."""
        if self.writer is None:
            self.writer = ReportWriter(self.report_directory())
        self.report = build_report(self._context(), list(self.records.values()), completion)
        self.report_paths = self.writer.write(self.report)

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.report is None:
            return
        terminalreporter.write_sep("=", "kvconform conformance report")
        for line in terminal_lines(self.report):
            red = line.startswith(("FAIL ", "TIMEOUT ", "CRASH ", "OUT-OF-BOUNDS ", "INTERRUPTED", "INCOMPLETE"))
            terminalreporter.write_line(line, red=red, bold=red)
        if self.writer is not None and self.writer.problem:
            where = (f"it was written to {self.report_paths[0]} and {self.report_paths[1]} instead"
                     if self.report_paths else "it is only in this output")
            terminalreporter.write_line(f"kvconform: {self.writer.problem}; {where}", red=True, bold=True)
        elif self.report_paths and not self.config.getoption("kvconform_prog"):
            md, js = self.report_paths
            terminalreporter.write_line(f"kvconform report written to {md} and {js}")

    def _context(self) -> RunContext:
        """The run's context; built once (the report is rebuilt after every test)."""
        if self._run_context is None:
            self._run_context = self._build_context()
        return self._run_context

    def _build_context(self) -> RunContext:
        error = None
        try:
            loaded = self.ensure_loaded()
        except ImplementationError as exc:
            loaded, error = None, str(exc)
        selected, note = self.devices()
        limits = tuple(sorted(scope.declared_limits(loaded.implementation))) if loaded else ()
        configuration = {"impl_spec": self.spec, "profile": profiles.current_profile_name(),
                         "device_option": self.device_option, "devices": list(selected),
                         "xfails": [entry.pattern for entry in self.xfails], "limits": list(limits),
                         "environment": runinfo.environment()}
        return RunContext(
            impl_spec=self.spec,
            impl_name=loaded.name if loaded else self.spec,
            impl_target=loaded.target if loaded else None,
            capabilities=tuple(sorted(loaded.capabilities)) if loaded else (),
            limits=limits,
            impl_error=error,
            profile=profiles.current_profile_name(),
            devices_requested=self.device_option,
            devices_selected=selected,
            devices_note=note,
            versions=_versions(),
            xfails_file=self.xfails_file,
            cli_prog=self.config.getoption("kvconform_prog"),
            rootdir=str(self.config.rootpath),
            invocation_dir=str(self.config.invocation_params.dir),
            run_info=runinfo.collect(loaded.implementation if loaded else None, loaded.name if loaded else self.spec,
                                     loaded.target if loaded else None, configuration, selected),
        )


#: Fixtures that start processes (distributed mode's rank pool): seconds of fixed cost before the first example.
_PROCESS_FIXTURES = frozenset({"worker_group"})


def fail_fast_order(items: list[pytest.Item]) -> list[pytest.Item]:
    """``--exitfirst``: tests that must start processes last, the rest in collection order (a stable sort, the
    same on every xdist worker).  Only *when* a failure is found changes; every test's examples do not."""
    return sorted(items, key=lambda item: bool(_PROCESS_FIXTURES & set(getattr(item, "fixturenames", ()))))


def parse_invariant_marker(marker: pytest.Mark) -> tuple[str, tuple[str, ...]]:
    """``(invariant id, required capabilities)`` of an ``invariant`` marker, validated."""
    args = list(marker.args)
    invariant = marker.kwargs.get("id", args.pop(0) if args else None)
    requires = marker.kwargs.get("requires", args.pop(0) if args else ())
    if invariant not in BY_ID:
        raise ValueError(f"unknown invariant id {invariant!r}; valid ids: {', '.join(BY_ID)}")
    if isinstance(requires, str):
        requires = (requires,)
    unknown = [cap for cap in requires if cap not in CAPABILITIES]
    if unknown:
        raise ValueError(f"unknown capability {unknown[0]!r} in requires; valid: {', '.join(CAPABILITIES)}")
    return invariant, tuple(requires)


def attribute_to_marker(item: pytest.Item, exc: BaseException) -> None:
    """Tag a failure's violations with the invariant of the test's marker (see ``oracles.attribute``)."""
    marker = item.get_closest_marker("invariant")
    if marker is not None:
        attribute(exc, parse_invariant_marker(marker)[0])


_FITS_SCOPE = "_kvconform_fits_scope"


def fit_to_declared_scope(test: Any) -> None:
    """Make Hypothesis test ``test`` run every drawn value inside the implementation's declared limits.

    Wraps its ``inner_test`` (the function Hypothesis calls with fixtures and drawn arguments; idempotent):
    with the implementation taken from the ``impl`` or ``loaded_impl`` argument, every argument is passed
    through ``scope.fit`` (``TransferCase`` and ``RankShape`` values, inside tuples and lists too).  The
    only place limits reach ``@given`` tests; the engine fits what state machines draw.
    """
    from hypothesis import note

    handle = getattr(test, "hypothesis", None)
    inner = getattr(handle, "inner_test", None)
    if handle is None or inner is None or getattr(inner, _FITS_SCOPE, False):
        return

    @functools.wraps(inner)
    def fitted(*args: Any, **kwargs: Any) -> Any:
        impl = kwargs.get("impl", getattr(kwargs.get("loaded_impl"), "implementation", None))
        if impl is not None and scope.declared_limits(impl):
            fitted_kwargs = {name: scope.fit(impl, value) for name, value in kwargs.items()}
            for name, value in fitted_kwargs.items():
                if value != kwargs[name]:  # the printed counterexample shows the drawn value: say what ran
                    note(f"{name} as run within the declared limits: {value!r}")
            kwargs = fitted_kwargs
        return inner(*args, **kwargs)

    setattr(fitted, _FITS_SCOPE, True)
    handle.inner_test = fitted


@contextlib.contextmanager
def _collecting_statistics(sink: list[dict]) -> Iterator[None]:
    """Chain a callback into Hypothesis's statistics collector for the duration of a test call.

    Hypothesis calls the collector once per ``@given`` run with its engine
    statistics; the previous callback (Hypothesis's pytest plugin) still runs.
    """
    try:
        from hypothesis.statistics import collector
    except ImportError:
        yield
        return
    previous = collector.value

    def note(stats: dict) -> None:
        sink.append(stats)
        if previous is not None:
            previous(stats)

    # Hypothesis declares the collector as DynamicVariable(None), so mypy types its value as None only.
    with collector.with_value(note):  # type: ignore[arg-type]
        yield


def _phase_cases(stats: dict, phase: str) -> list[dict]:
    return stats.get(f"{phase}-phase", {}).get("test-cases", [])


def _example_properties(item: pytest.Item, statistics: list[dict]) -> list[tuple[str, Any]]:
    """Test cases Hypothesis ran (all phases but shrinking) and shrink attempts; nothing for plain tests."""
    if statistics:
        examples = sum(len(_phase_cases(s, p)) for s in statistics for p in ("explicit", "reuse", "generate", "target"))
        shrinks = sum(len(_phase_cases(s, "shrink")) for s in statistics)
        return [(PROP_EXAMPLES, examples), (PROP_SHRINKS, shrinks)]
    described = getattr(item, "hypothesis_statistics", None)  # if our collector was bypassed
    if described:
        counts = re.findall(r"during (\w+) phase.*?- (\d+) passing, (\d+) failing, and (\d+) invalid", described, re.S)
        examples = sum(int(a) + int(b) + int(c) for phase, a, b, c in counts if phase != "shrink")
        shrinks = sum(int(a) + int(b) + int(c) for phase, a, b, c in counts if phase == "shrink")
        return [(PROP_EXAMPLES, examples), (PROP_SHRINKS, shrinks)]
    return []


def _failure_properties(exc: BaseException, item: pytest.Item, statistics: list[dict]) -> list[tuple[str, Any]]:
    """Each distinct failure's error line, counterexample, ``@reproduce_failure`` blob, explanation and seed.

    Hypothesis raises an ``ExceptionGroup`` when a test fails in several
    distinct ways; each member carries its own notes, and each becomes one
    failure of the report.
    """
    seed = _reproducing_seed(item, statistics)
    found = []
    for failure in _distinct_failures(exc):
        message = str(failure).strip().splitlines()
        notes = _notes(failure)
        examples = [n for n in notes if n.startswith(_COUNTEREXAMPLE_PREFIXES)]
        blobs = [m.group(0) for n in notes for m in _BLOB.finditer(n)]
        found.append({
            "error": f"{type(failure).__name__}: {message[0]}" if message else type(failure).__name__,
            "counterexample": "\n".join(examples) or None,
            "reproduce_failure": blobs[0] if blobs else None,
            "seed": seed or _printed_seed_in("\n".join(notes)),
            "explanation": _explanation(notes),
        })
    return [(PROP_FAILURES, json.dumps(found))]


def _distinct_failures(exc: BaseException) -> list[BaseException]:
    """The members of Hypothesis's "distinct failures" group (nested groups flattened), else ``[exc]``.

    Only plain ``ExceptionGroup``/``BaseExceptionGroup`` are split: subclasses
    such as Hypothesis's ``FlakyFailure`` are one failure.
    """
    if type(exc).__name__ not in ("ExceptionGroup", "BaseExceptionGroup"):
        return [exc]
    members = [m for m in getattr(exc, "exceptions", ()) if isinstance(m, BaseException)]
    return [leaf for member in members for leaf in _distinct_failures(member)] or [exc]


def _explanation(notes: list[str]) -> list[str]:
    """Hypothesis's explain-phase note: the ``Explanation:`` line and the indented notes after it."""
    for start, note in enumerate(notes):
        if note.startswith("Explanation:"):
            end = start + 1
            while end < len(notes) and notes[end].startswith((" ", "\t")):
                end += 1
            return notes[start:end]
    return []


def _notes(exc: BaseException) -> list[str]:
    """PEP 678 notes of an exception and, for exception groups, of its members."""
    notes = [str(n) for n in getattr(exc, "__notes__", ()) or ()]
    for member in getattr(exc, "exceptions", ()) or ():
        if isinstance(member, BaseException):
            notes.extend(_notes(member))
    return notes


def _reproducing_seed(item: pytest.Item, statistics: list[dict]) -> str | None:
    """A ``--hypothesis-seed`` that regenerates the failure, when the failure came from generation.

    Failures replayed from the example database need no seed (a rerun replays
    them again); a seed would even disable the database.
    """
    try:
        from hypothesis import core
    except ImportError:
        return None
    if core.global_force_seed is not None:
        return str(core.global_force_seed)
    seed = getattr(getattr(item, "obj", None), "_hypothesis_internal_use_generated_seed", None)
    found_by_generation = any(
        case.get("status") == "interesting"
        for stats in statistics
        for phase in ("generate", "target")
        for case in _phase_cases(stats, phase)
    )
    return str(seed) if seed is not None and found_by_generation else None


def _printed_seed_in(text: str) -> str | None:
    match = _PRINTED_SEED.search(text)
    return (match.group(1) or match.group(2)) if match else None


def _printed_seed(report: pytest.TestReport) -> str | None:
    """A seed Hypothesis printed for this failure (flaky or slow-shrinking failures), from the report sections."""
    return _printed_seed_in("\n".join(content for _, content in report.sections))


def _first_error_line(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    message = getattr(crash, "message", None)
    if message:
        return message.strip().splitlines()[0]
    text = report.longreprtext.strip().splitlines()
    return text[-1] if text else f"failed in {report.when}"


def _versions() -> dict[str, str]:
    return {**runinfo.versions(), "kvconform": runinfo.suite_version()}
