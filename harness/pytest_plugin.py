"""pytest plugin running kvconform's conformance tests against a plug-in implementation.

Loaded by the repository's root ``conftest.py`` (plain ``pytest`` in a
checkout), by the ``kvconform`` CLI, or explicitly by a third party::

    pytest -p harness.pytest_plugin --pyargs harness.conformance --impl pkg.mod:factory

There is deliberately no ``pytest11`` entry point: it would add ``--impl`` and
``--device`` to every pytest run in the user's environment.

Options: ``--impl SPEC`` (see ``harness.loading``; default ``$KVCONFORM_IMPL``
or ``reference``), ``--xfails FILE`` and ``--strict-xfails`` (see ``harness.xfails``),
``--corpus DIR``, ``--corpus-out DIR``, ``--replay-case FILE``, ``--explore-seconds S``
(see ``harness.replay`` and docs/corpus.md),
``--kvconform-report DIR`` (default: the current directory),
``--device {cpu,cuda,all}``, ``--impl-config NAME[,NAME]`` (the configurations to test of an
implementation that declares several, see ``harness.loading``; default: all).  Inputs are checked at configure time, before
any test, each a usage error (exit 4) naming the input: the ``KVCONFORM_*``
environment (``harness.settings``), ``--hypothesis-profile``, a requested
device that is absent (``--device cuda`` without CUDA is refused, never a run
of "pass" rows), and the report directory (created and written to).
Fixtures: ``impl`` (the implementation object),
``loaded_impl`` (its ``LoadedImplementation``), ``devices`` (selected device
strings; skips with a reason when none is available), ``impl_configuration``
(the configuration's name, ``None`` for an implementation without).  Marker:
``@pytest.mark.invariant("<id>", requires=("<capability>", ...), since="<version>")``.

Configurations are instantiated like devices (PyTorch's device-generic style):
every test using ``impl`` or ``loaded_impl`` is parametrized with the selected
configuration names (``[cpu-pull]``, ``[push]``), one test body, one report column
per configuration; an implementation without configurations gets no parameter.
A test newer (``since``) than the catalogue version its configuration targets
runs as a non-strict xfail: a failure reads ``new-since-target`` in the report and
does not fail the run.

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
``@reproduce_failure`` line and explain-phase lines) with its standalone repro
script (``harness.repro``: recorded at the guard during the failing example's
final replay, written next to the report).  The run info
(``harness.runinfo``) is collected once, on the controller.  It is rewritten after every test, marked
incomplete, and once more at the session's end with its completion state: a
test running when the session was interrupted reads ``interrupted``, and a
run in which no invariant test ran exits 5 (pytest's "no tests"), not 0.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import is_hypothesis_test

from harness import profiles, runinfo, scope, settings
from harness.hypothesis_records import (
    PROP_CLASSES,
    PROP_EXAMPLES,
    PROP_FAILURES,
    PROP_SHRINKS,
    class_properties,
    collecting_statistics,
    example_properties,
    failure_properties,
    first_error_line,
    printed_seed,
    versions,
)
from harness.catalogue import newer_than
from harness.markers import (
    attribute_to_marker,
    case_log,
    fail_fast_order,
    fit_to_declared_scope,
    parse_invariant_marker,
    since_of,
)
from harness.devices import require_devices, select_devices
from harness.guard import ImplementationFault, forget_hangs, guard
from harness.interface import Implementation
from harness.isolation import MODES as ISOLATION_MODES
from harness.isolation import end_test as end_isolated_test
from harness.loading import (
    CONFIGURATION_SEPARATOR,
    ImplementationError,
    LoadedConfigurations,
    LoadedImplementation,
    UnknownConfiguration,
    load_configurations,
    resolve_spec,
)
from harness.report import (
    Completion,
    FailureDetail,
    ReportDirectoryError,
    ReportWriter,
    RunContext,
    RunConfiguration,
    TestRecord,
    build_report,
    enforced_class_gaps,
    ensure_report_directory,
    repro_sources,
    terminal_lines,
)
from harness.repro import recorder
from harness.repro.script import PROP_REPRO_SCRIPTS, repro_scripts
from harness.xfails import XfailEntry, first_match, read_xfails, resolve_xfails_path, stale_entries

#: ``report.user_properties`` keys written by this plugin.
PROP_INVARIANT = "kvconform.invariant"
PROP_MISSING = "kvconform.missing_capabilities"
PROP_XFAIL = "kvconform.xfail"
PROP_CONFIGURATION = "kvconform.configuration"
PROP_NEW_SINCE = "kvconform.new_since"  #: the test's ``since`` when newer than its configuration's target
#: The xfails entry (its label) whose witness now passes, on a test that passed: "fixed".
PROP_FIXED = "kvconform.fixed"
#: Where ``--corpus-out`` saved the test's new failures (a JSON list of paths).
PROP_SAVED_CASES = "kvconform.saved_cases"
#: The regression corpus shipped with kvconform (docs/corpus.md).
BUNDLED_CORPUS = Path(__file__).resolve().parent.parent / "corpus"

DEVICE_CHOICES = ("cpu", "cuda", "all")
#: Isolation of plain pytest runs (the kvconform command passes its own, process by default).  In-process:
#: the project's CI runs the suite under pytest-xdist on 2 cores, and process isolation costs a round trip per
#: call (bench/isolation_overhead.py); CI exercises isolation through the CLI tests (tests/test_hostile.py).
DEFAULT_PYTEST_ISOLATION = "in-process"
CONFORMANCE_DIR = Path(__file__).resolve().parent / "conformance"
_STASH: pytest.StashKey["ConformanceRun"] = pytest.StashKey()
_MARKER_ERROR: pytest.StashKey[str] = pytest.StashKey()
_XFAIL_ENTRY: pytest.StashKey[XfailEntry] = pytest.StashKey()
_FAULTS_BEFORE: pytest.StashKey[int] = pytest.StashKey()  #: ImplementationFault.made when the test started
_UNCLEAN: pytest.StashKey[bool] = pytest.StashKey()  #: a phase of the test did not pass


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
        help="expected-failure list (JSON: per entry a test, its expected error and a witness case replayed "
        "first; harness/xfails/__init__.py); a bare name reads harness/xfails/NAME.json.",
    )
    group.addoption(
        "--kvconform-report", dest="kvconform_report", default=None, metavar="DIR",
        help="directory for kvconform-report.md and kvconform-report.json (default: current directory).",
    )
    group.addoption(
        "--device", dest="kvconform_device", default="all", choices=DEVICE_CHOICES,
        help="devices conformance tests use: cpu, cuda, or all available (default).",
    )
    group.addoption(
        "--impl-config", dest="kvconform_config", default=None, metavar="NAME[,NAME]",
        help="configurations to test of an implementation that declares several (e.g. vllm: pull,push); "
        "default: all it declares.",
    )
    group.addoption(
        "--isolation", dest="kvconform_isolation", default=None, metavar="MODE",
        help="where the implementation runs: 'process' (a worker process; a crash, hang or patched harness module "
        "there cannot end or fool the judge) or 'in-process' (inside pytest's process, for debugging). "
        f"Default for plain pytest: {DEFAULT_PYTEST_ISOLATION}; the kvconform command defaults to process.",
    )
    group.addoption(
        "--strict-xfails", dest="kvconform_strict_xfails", action="store_true",
        help="a test whose xfails entry is fixed (its witness and the test pass) fails instead of reading 'fixed'.",
    )
    group.addoption(
        "--corpus", dest="kvconform_corpus", default=None, metavar="DIR",
        help="regression corpus replayed before generation: DIR/<test name>/*.json (docs/corpus.md); "
        "default: the corpus shipped with kvconform; 'none' replays nothing.",
    )
    group.addoption(
        "--corpus-out", dest="kvconform_corpus_out", default=None, metavar="DIR",
        help="write each new failure (the shrunk counterexample) as a corpus case into DIR/<test name>/ "
        "(created if missing); nothing is written without it.",
    )
    group.addoption(
        "--replay-case", dest="kvconform_replay_case", default=None, metavar="FILE",
        help="run only the test of this stored case, on this case alone (no generation); printed in repro lines.",
    )
    group.addoption(
        "--explore-seconds", dest="kvconform_explore_seconds", default=None, metavar="S",
        help=f"explore profile: seconds each test generates before it stops (default {profiles.EXPLORE_SECONDS:g}); "
        "a test that found a failure shrinks it first.",
    )
    parser.addini("kvconform_profile", "Hypothesis profile of this project's own pytest runs, used when neither "
                  "--hypothesis-profile nor $KVCONFORM_PROFILE chooses one (never for kvconform CLI runs).")
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
def impl_configuration() -> str | None:
    """The configuration under test: parametrized per selected configuration (``pytest_generate_tests``) when
    the implementation declares configurations, else ``None``."""
    return None


@pytest.fixture(scope="session")
def loaded_impl(pytestconfig: pytest.Config, impl_configuration: str | None) -> LoadedImplementation:
    """The validated implementation under test (the configuration's), with its spec and capabilities."""
    run = pytestconfig.stash[_STASH]
    try:
        return run.ensure_loaded().get(impl_configuration)
    except ImplementationError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def impl(loaded_impl: LoadedImplementation) -> Implementation:
    """The implementation conformance tests call (typed with every capability's Protocol), behind
    ``harness.guard``: every call has a deadline and its return checked, in a worker process or in this one."""
    return guard(loaded_impl.implementation)


@pytest.fixture(scope="session")
def impl_in_process(pytestconfig: pytest.Config, impl_configuration: str | None) -> Implementation:
    """The implementation object itself (the configuration's), loaded in this process whatever ``--isolation``
    says, unguarded: for the device tests, which observe the implementation's own process (CUDA sync-debug
    mode, the freed-memory probe) and patch its methods."""
    run = pytestconfig.stash[_STASH]
    try:
        if run.isolation == "in-process":
            return run.ensure_loaded().get(impl_configuration).implementation
        names = [impl_configuration] if impl_configuration is not None else None
        return load_configurations(run.spec, names, first_only=True).selected[0].implementation
    except ImplementationError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def devices(pytestconfig: pytest.Config) -> list[str]:
    """Device strings selected by ``--device`` and available; skips (with the reason) when none is."""
    run = pytestconfig.stash[_STASH]
    selected, note = run.devices()
    if not selected:
        pytest.skip(f"--device {run.device_option}: {note}")
    return list(selected)


def _invariant_of(item: pytest.Item) -> str | None:
    value = dict(item.user_properties).get(PROP_INVARIANT)
    return value if isinstance(value, str) else None


def _examples_run(item: pytest.Item, statistics: list[dict], log: Any) -> list[tuple[str, Any]]:
    """Example-count properties: Hypothesis's statistics (which leave explicit examples out) plus the stored
    cases replayed; when Hypothesis reported nothing (a stored case failed, explore's budget stopped it), the
    calls the test's case log counted."""
    if log is None or not log.calls:
        return example_properties(item, statistics)
    if not statistics:
        return [(PROP_EXAMPLES, log.calls), (PROP_SHRINKS, 0)]
    counted = dict(example_properties(item, statistics))
    return [(PROP_EXAMPLES, counted.get(PROP_EXAMPLES, 0) + log.replayed), (PROP_SHRINKS, counted.get(PROP_SHRINKS, 0))]


def _leaf_failures(exc: BaseException) -> list[BaseException]:
    """The distinct failures in Hypothesis's exception group (nested groups flattened), else ``[exc]``."""
    members = getattr(exc, "exceptions", None) if type(exc).__name__ in ("ExceptionGroup", "BaseExceptionGroup") else None
    return [leaf for member in members for leaf in _leaf_failures(member)] if members else [exc]


def _reproduces(entry: XfailEntry, exc: BaseException, log: Any) -> bool:
    """Whether a failed test is the entry's known bug: its witness failed as expected (when it has one) and
    every distinct failure of the run is the expected error."""
    if entry.witness is not None:
        outcome = log.witness_outcome(entry.witness) if log is not None else None
        if outcome is None or outcome.error is None or not entry.expects(outcome.error):
            return False
    return all(entry.expects(failure) for failure in _leaf_failures(exc))


@dataclass(eq=False)  # registered as a pytest plugin: must stay hashable
class ConformanceRun:
    """Per-session state and hooks; one instance per pytest config (xdist: per process)."""

    config: pytest.Config
    loaded: LoadedConfigurations | None = None
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
    corpus_dir: Path | None = None
    corpus_out: Path | None = None
    replay_case: Any = None  #: the ``harness.cases.StoredCase`` of ``--replay-case``
    explore_seconds: float = profiles.EXPLORE_SECONDS
    #: Labels of xfails entries that matched no collected test (collection warns about them).
    stale_xfails: tuple[str, ...] = ()

    # -- setup -----------------------------------------------------------------------------

    @property
    def spec(self) -> str:
        return resolve_spec(self.config.getoption("kvconform_impl"))

    @property
    def isolation(self) -> str:
        return self.config.getoption("kvconform_isolation") or DEFAULT_PYTEST_ISOLATION

    @property
    def device_option(self) -> str:
        return self.config.getoption("kvconform_device")

    @property
    def is_worker(self) -> bool:
        return hasattr(self.config, "workerinput")

    def configure(self) -> None:
        """Check the inputs, select the Hypothesis profile, read the xfails file and, when wanted, load the implementation."""
        self._load_hypothesis_profile()
        if self.isolation not in ISOLATION_MODES:
            raise pytest.UsageError(f"--isolation={self.isolation}: not a mode; use one of "
                                    f"{', '.join(ISOLATION_MODES)}")
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
            try:
                self.xfails, self.xfails_file = read_xfails(path), str(path)
            except ValueError as exc:
                raise pytest.UsageError(str(exc)) from None
        self._configure_corpus()
        self.eager = self._wants_conformance()
        if self.eager and not self.is_worker and not self.config.getoption("collectonly"):
            try:
                self.writer = ReportWriter(ensure_report_directory(self.report_directory(), "--kvconform-report"))
            except ReportDirectoryError as exc:
                raise pytest.UsageError(str(exc)) from None
        if self.eager:
            self.load_or_usage_error()

    def _configure_corpus(self) -> None:
        """Check ``--corpus``, ``--corpus-out``, ``--replay-case`` and ``--explore-seconds`` before any test."""
        from harness.cases import CaseFormatError, read_case

        corpus = self.config.getoption("kvconform_corpus")
        if corpus is None:
            self.corpus_dir = BUNDLED_CORPUS if BUNDLED_CORPUS.is_dir() else None
        elif corpus.lower() == "none":
            self.corpus_dir = None
        else:
            self.corpus_dir = Path(corpus).expanduser().resolve()
            if not self.corpus_dir.is_dir():
                raise pytest.UsageError(f"--corpus={corpus}: not a directory; name a corpus directory "
                                        "(DIR/<test name>/*.json) or 'none'")
        out = self.config.getoption("kvconform_corpus_out")
        if out:
            try:
                self.corpus_out = ensure_report_directory(out, "--corpus-out")
            except ReportDirectoryError as exc:
                raise pytest.UsageError(str(exc)) from None
        replay = self.config.getoption("kvconform_replay_case")
        if replay:
            try:
                self.replay_case = read_case(Path(replay).expanduser().resolve())
            except CaseFormatError as exc:
                raise pytest.UsageError(f"--replay-case={replay}: {exc}; pass a case file (docs/corpus.md)") from None
        seconds = self.config.getoption("kvconform_explore_seconds")
        if seconds is not None:
            try:
                value = float(seconds)
            except ValueError:
                value = float("nan")
            if not (0 < value < float("inf")):
                raise pytest.UsageError(f"--explore-seconds={seconds}: expected a positive number of seconds, "
                                        f"e.g. --explore-seconds={profiles.EXPLORE_SECONDS:g}")
            self.explore_seconds = value

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
        profiles.register_profiles(profiles.database_directory(self.config.invocation_params.dir),
                                   profiles.shared_database())
        command_line_profile = self.config.getoption("hypothesis_profile", None)
        try:
            if command_line_profile:
                profiles.check_profile_name(command_line_profile)
            project_default = None if self.config.getoption("kvconform_prog") else self.config.getini("kvconform_profile")
            selected = profiles.selected_profile(command_line_profile, project_default or None)
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
        options = ("kvconform_impl", "kvconform_xfails", "kvconform_report", "kvconform_config")
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

    def ensure_loaded(self) -> LoadedConfigurations:
        if self.loaded is None:
            self.loaded = load_configurations(self.spec, self._configuration_names(),
                                              isolated=self.isolation == "process")
        return self.loaded

    def load_or_usage_error(self) -> LoadedConfigurations:
        try:
            return self.ensure_loaded()
        except UnknownConfiguration as exc:
            raise pytest.UsageError(f"{self._configuration_option()}: {exc}") from None
        except ImplementationError as exc:
            raise pytest.UsageError(f"kvconform could not load the implementation:\n{exc}") from None

    def _configuration_names(self) -> list[str] | None:
        """The ``--impl-config`` names; ``None`` when absent (every declared configuration)."""
        raw = self.config.getoption("kvconform_config")
        if raw is None:
            return None
        names = [name.strip() for name in raw.split(",")]
        if not all(names):
            raise pytest.UsageError(f"{self._configuration_option()}: an empty configuration name; "
                                    "pass names separated by commas, e.g. pull,push")
        return names

    def _configuration_option(self) -> str:
        """``--config=VALUE`` (the CLI's spelling) or ``--impl-config=VALUE``, for one-line usage errors."""
        option = "--config" if self.config.getoption("kvconform_prog") else "--impl-config"
        return f"{option}={self.config.getoption('kvconform_config')}"

    def devices(self) -> tuple[tuple[str, ...], str | None]:
        if self._devices is None:
            self._devices = select_devices(self.device_option)
        return self._devices

    # -- collection ------------------------------------------------------------------------

    @pytest.hookimpl(trylast=True)  # after the device parametrization: ids read [cpu-pull]
    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        """One instance per selected configuration of every test that uses the implementation."""
        if "impl_configuration" not in metafunc.fixturenames:
            return
        try:
            loaded = self.ensure_loaded()
        except ImplementationError:
            return  # reported at collection (controller) or by the loaded_impl fixture (worker)
        if loaded.declared:
            names = [c.configuration for c in loaded.selected]
            metafunc.parametrize("impl_configuration", [pytest.param(n, id=n) for n in names], scope="session")

    def pytest_report_header(self, config: pytest.Config) -> list[str] | None:
        if self.loaded is None:
            return None
        selected, note = self.devices()
        lines = [
            f"kvconform: impl {self.loaded.name} ({self.loaded.spec}), capabilities: "
            + (", ".join(sorted(self.loaded.capabilities)) or "(none)"),
            *([f"kvconform: configurations {', '.join(c.configuration or '' for c in self.loaded.selected)} "
               f"(declared: {', '.join(self.loaded.declared)})"] if self.loaded.declared else []),
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
                loaded: LoadedConfigurations | None = self.ensure_loaded()
            except ImplementationError:
                loaded = None
        else:
            loaded = self.load_or_usage_error()
        active = self._active_xfails(loaded)
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
            configuration = _configuration_of(item)
            tested = loaded.get(configuration) if configuration else None
            if configuration:
                item.user_properties.append((PROP_CONFIGURATION, configuration))
            capabilities = tested.capabilities if tested else loaded.capabilities
            missing = [cap for cap in requires if cap not in capabilities]
            if missing:
                item.user_properties.append((PROP_MISSING, ",".join(missing)))
                item.add_marker(pytest.mark.skip(
                    reason=f"not implemented: {(tested or loaded).name} lacks capability '{missing[0]}'"))
                continue
            fit_to_declared_scope(getattr(item, "obj", None))
            entry = first_match(active, item.nodeid, invariant)
            if entry is not None:
                item.stash[_XFAIL_ENTRY] = entry
                item.user_properties.append((PROP_XFAIL, entry.label))
                continue
            self._mark_if_new_since_target(item, marker, tested or loaded.get(None))
        if problems and not self.is_worker:  # on a worker, pytest_runtest_setup fails each such test instead
            raise pytest.UsageError("invalid @pytest.mark.invariant markers:\n  " + "\n  ".join(problems))
        self._warn_stale(active, tagged)
        try:
            self._install_cases([item for item, _ in tagged])
        except ValueError as exc:  # a malformed corpus file or a case of other arguments: name it, run nothing
            raise pytest.UsageError(f"kvconform corpus: {exc}") from None
        if self.replay_case is not None:
            keep = [item for item in items if getattr(item, "originalname", item.name) == self.replay_case.function]
            config.hook.pytest_deselected(items=[item for item in items if item not in keep])
            items[:] = keep

    def _active_xfails(self, loaded: LoadedConfigurations | None) -> tuple[XfailEntry, ...]:
        """The entries whose version condition holds for the implementation's version."""
        if not self.xfails or loaded is None:
            return self.xfails
        version = runinfo.implementation_identity(loaded.implementation, loaded.name, loaded.target)["version"]
        return tuple(e for e in self.xfails if e.applies_to_version(version))

    def _warn_stale(self, active: tuple[XfailEntry, ...], tagged: list[tuple[pytest.Item, pytest.Mark]]) -> None:
        """Warn, naming it, about each entry whose test is not collected although its file is (a renamed or
        removed test; ``harness.xfails.stale_entries``)."""
        import warnings

        tests = [(item.nodeid, _invariant_of(item)) for item, _ in tagged]
        stale = stale_entries(active, tests)
        self.stale_xfails = tuple(e.label for e in stale)
        for entry in stale:
            warnings.warn(pytest.PytestWarning(
                f"kvconform: xfails entry {entry.label} matches no collected test; fix its 'test' or remove it"))

    def _install_cases(self, items: list[pytest.Item]) -> None:
        """Give each Hypothesis test its corpus cases and the witnesses of its xfails entries (harness.replay)."""
        from harness.cases import corpus_cases
        from harness.replay import install_cases

        by_test: dict[int, tuple[Any, list[XfailEntry]]] = {}
        for item in items:
            test = getattr(item, "obj", None)
            if case_log(test) is None:
                continue
            entries = by_test.setdefault(id(test), (test, []))[1]
            entry = item.stash.get(_XFAIL_ENTRY, None)
            if entry is not None and entry.witness is not None and entry not in entries:
                entries.append(entry)
        for test, entries in by_test.values():
            log = case_log(test)
            log.budget_s = self.explore_seconds if profiles.current_profile_name() == profiles.EXPLORE else None
            name = test.__name__
            stored = corpus_cases(self.corpus_dir, name) if self.corpus_dir else []
            only = self.replay_case if self.replay_case is not None and self.replay_case.function == name else None
            install_cases(test, log, stored, [e.witness for e in entries if e.witness is not None], only)

    @staticmethod
    def _mark_if_new_since_target(item: pytest.Item, marker: pytest.Mark, tested: LoadedImplementation) -> None:
        """A test newer than the catalogue version ``tested`` targets: a failure is "new since your version"."""
        since = since_of(marker)
        if tested.catalogue_version is not None and newer_than(since, tested.catalogue_version):
            item.user_properties.append((PROP_NEW_SINCE, since))
            item.add_marker(pytest.mark.xfail(strict=False, reason=(
                f"new since your version: added in catalogue {since}, {tested.name} targets {tested.catalogue_version}")))

    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        item.stash[_FAULTS_BEFORE] = ImplementationFault.made
        if _MARKER_ERROR in item.stash:
            pytest.fail(f"invalid @pytest.mark.invariant marker: {item.stash[_MARKER_ERROR]}", pytrace=False)

    # -- running ---------------------------------------------------------------------------

    @pytest.hookimpl(wrapper=True, trylast=True)  # innermost wrapper: inside Hypothesis's own
    def pytest_runtest_call(self, item: pytest.Item):
        """Count Hypothesis test cases and keep a failure's counterexample, for the report."""
        if item.get_closest_marker("invariant") is None:
            return (yield)
        from harness.replay import BudgetSpent

        statistics: list[dict] = []
        plain = not is_hypothesis_test(getattr(item, "obj", None))
        log = case_log(getattr(item, "obj", None))
        entry = item.stash.get(_XFAIL_ENTRY, None)
        if log is not None:
            log.start()
        with collecting_statistics(statistics), recorder.enabled(plain) as plain_trace:
            try:
                result = yield
            except BudgetSpent:  # explore: the time budget ran out before any failure; a pass
                return None
            except Exception as exc:
                attribute_to_marker(item, exc)
                item.user_properties.extend(failure_properties(exc, item, statistics))
                item.user_properties.extend(repro_scripts(exc, plain_trace, item.nodeid, self._repro_spec(item)))
                self._save_new_failures(item, log)
                if entry is not None and _reproduces(entry, exc, log):
                    how = "its witness fails the same way" if entry.witness is not None else "the failure matches"
                    pytest.xfail(f"{entry.reason} ({entry.label}: {how}; {entry.upstream})")
                raise
            finally:
                item.user_properties.extend(_examples_run(item, statistics, log))
                item.user_properties.extend(class_properties(statistics))
            if entry is not None:
                item.user_properties.append((PROP_FIXED, entry.label))
                if self.config.getoption("kvconform_strict_xfails"):
                    pytest.fail(f"fixed: xfails entry {entry.label} no longer fails (its witness and the test pass); "
                                "remove the entry (--strict-xfails)", pytrace=False)
            return result

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo):
        report = yield
        if report.outcome != "passed":
            item.stash[_UNCLEAN] = True
        return report

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> None:
        """The worker goes on to the next test only when nothing abnormal happened in this one (it passed, no
        call crashed, hung or returned garbage, no thread of the implementation is left running); otherwise it
        is retired, so whatever the implementation left running cannot reach the next test."""
        if self.loaded is not None and self.isolation == "process":
            faults = ImplementationFault.made != item.stash.get(_FAULTS_BEFORE, ImplementationFault.made)
            end_isolated_test(abnormal=faults or item.stash.get(_UNCLEAN, False))
            forget_hangs()  # a hung worker is gone: the next test's calls get the full deadline

    def _repro_spec(self, item: pytest.Item) -> str | None:
        """The factory a standalone repro builds the implementation with: ``module:factory``, plus ``#NAME`` for
        the configuration the failing item ran (a declared configuration is what failed, not the container)."""
        target = getattr(self.loaded, "target", None)
        configuration = _configuration_of(item)
        return f"{target}{CONFIGURATION_SEPARATOR}{configuration}" if target and configuration else target

    def _save_new_failures(self, item: pytest.Item, log: Any) -> None:
        """``--corpus-out``: each generated failure's shrunk counterexample as a case file (never lost: a file
        that cannot be written is reported as the test's note, the run goes on)."""
        if self.corpus_out is None or log is None or not log.new_failures:
            return
        from harness.cases import StoredCase, case_file_name, decode, write_case

        saved = []
        for kwargs in log.new_failures:
            case = StoredCase(f"{item.nodeid.partition('::')[0]}::{getattr(item, 'originalname', item.name)}",
                              {name: decode(value) for name, value in kwargs.items()},
                              origin=f"explore run against {self.spec}", note="found by generation")
            try:
                saved.append(str(write_case(self.corpus_out / case.function / case_file_name(case), case)))
            except OSError as exc:
                item.add_report_section("call", "kvconform", f"--corpus-out: could not save a case: {exc}")
        item.user_properties.append((PROP_SAVED_CASES, json.dumps(saved)))

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
        record.configuration = props.get(PROP_CONFIGURATION)
        record.new_since = props.get(PROP_NEW_SINCE)
        if PROP_MISSING in props:
            record.missing_capabilities = tuple(props[PROP_MISSING].split(","))
        if PROP_EXAMPLES in props:
            record.examples = int(props[PROP_EXAMPLES])
            record.shrinks = int(props.get(PROP_SHRINKS, 0))
        if PROP_CLASSES in props:
            record.classes = json.loads(props[PROP_CLASSES])
        failures: tuple[FailureDetail, ...] = ()
        if report.failed or (record.new_since and report.skipped and hasattr(report, "wasxfail")):  # a new check's failure is kept
            found = json.loads(props[PROP_FAILURES]) if report.when == "call" and PROP_FAILURES in props else [{}]
            scripts = json.loads(props.get(PROP_REPRO_SCRIPTS, "[]")) if report.when == "call" else []
            scripts += [{}] * (len(found) - len(scripts))
            failures = tuple(FailureDetail(
                phase=report.when,
                error=found_one.get("error") or first_error_line(report),
                counterexample=found_one.get("counterexample"),
                reproduce_failure=found_one.get("reproduce_failure"),
                seed=found_one.get("seed") or printed_seed(report),
                explanation=tuple(found_one.get("explanation", ())),
                repro_script=script.get("name"),
                repro_source=script.get("source"),
                repro_note=script.get("note"),
                case_file=_shown_path(found_one.get("case_file"), str(self.config.invocation_params.dir)),
                case=found_one.get("case"),
            ) for found_one, script in zip(found, scripts))
        record.add_phase(report.when, report.outcome, hasattr(report, "wasxfail"), failures)
        if PROP_XFAIL in props:
            record.xfail_entry = props[PROP_XFAIL]
        if PROP_FIXED in props and report.when == "call" and report.passed:
            record.status = "fixed"
        if PROP_SAVED_CASES in props and report.when == "call":
            record.saved_cases = tuple(json.loads(props[PROP_SAVED_CASES]))

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
            note = "interrupted (Ctrl-C) during " + (
                ", ".join(sorted(self.running)) or "the run")
        elif stopped_first:
            note = "stopped at the first failure (--exitfirst): tests after it did not run" + (
                f"; {', '.join(sorted(self.running))} did not finish" if self.running else "")
        elif not any(record.ran for record in self.records.values()) and (self.records or not self.others_ran):
            note = self._nothing_checked()
            if session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED
        else:
            gaps = enforced_class_gaps(self._context(), list(self.records.values()))
            if gaps:  # the thorough profile: an expected case class got no case (see harness.case_classes)
                note = (f"{len(gaps)} expected case class value(s) got no case under the {profiles.current_profile_name()} "
                        f"profile: " + "; ".join(f"{g.invariant} '{g.case_class}: {g.value}'" for g in gaps))
                if session.exitstatus == pytest.ExitCode.OK:
                    session.exitstatus = pytest.ExitCode.TESTS_FAILED
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
        self.report = build_report(self._context(), list(self.records.values()), completion,
                                   tuple(entry.label for entry in self.xfails), self.stale_xfails)
        self.report_paths = self.writer.write(self.report, repro_sources(self.records.values()))

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
        plain = loaded.selected[0] if loaded and not loaded.declared else None  # no configurations declared
        limits = tuple(sorted(scope.declared_limits(plain.implementation))) if plain else ()
        configurations = tuple(RunConfiguration(
            c.configuration or "", c.name, tuple(sorted(c.capabilities)),
            tuple(sorted(scope.declared_limits(c.implementation))), c.catalogue_version)
            for c in (loaded.selected if loaded and loaded.declared else ()))
        configuration = {"impl_spec": self.spec, "profile": profiles.current_profile_name(),
                         "device_option": self.device_option, "devices": list(selected),
                         "xfails": [entry.label for entry in self.xfails], "limits": list(limits),
                         "isolation": self.isolation,
                         "environment": runinfo.environment()}
        if configurations:
            configuration["configurations"] = [c.name for c in configurations]
        return RunContext(
            impl_spec=self.spec,
            impl_name=loaded.name if loaded else self.spec,
            impl_target=loaded.target if loaded else None,
            capabilities=tuple(sorted(loaded.capabilities)) if loaded else (),
            limits=limits,
            impl_error=error,
            catalogue_target=plain.catalogue_version if plain else None,
            configurations=configurations,
            profile=profiles.current_profile_name(),
            devices_requested=self.device_option,
            devices_selected=selected,
            devices_note=note,
            versions=versions(),
            xfails_file=self.xfails_file,
            cli_prog=self.config.getoption("kvconform_prog"),
            rootdir=str(self.config.rootpath),
            invocation_dir=str(self.config.invocation_params.dir),
            isolation=self.isolation,
            run_info=runinfo.collect(loaded.implementation if loaded else None, loaded.name if loaded else self.spec,
                                     loaded.target if loaded else None, configuration, selected),
        )


def _configuration_of(item: pytest.Item) -> str | None:
    """The configuration an item was instantiated for (its ``impl_configuration`` parameter), if any."""
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("impl_configuration") if callspec is not None else None


def _shown_path(path: str | None, invocation_dir: str) -> str | None:
    """``path`` relative to where the run was started when it lies below it (the shipped corpus in a checkout),
    so a repro line and a committed report name no machine's absolute paths; else unchanged."""
    if not path:
        return path
    relative = os.path.relpath(os.path.abspath(path), invocation_dir)
    return path if relative.startswith(os.pardir) else relative
