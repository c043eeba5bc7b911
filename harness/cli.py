"""The ``kvconform`` command (also ``python -m harness``): run the conformance suite, write the report.

It runs pytest in-process on the conformance test modules of the *installed*
``harness/conformance`` directory (found from this package's path, so it works
from site-packages and from a checkout), with ``harness.pytest_plugin``
loaded.  ``KVCONFORM_CONFORMANCE_DIR`` points it at another test directory;
it exists for testing the harness itself.

Every input is checked before pytest starts, each problem one line
``PROG: error: ...`` naming the input and what to do, with exit status 4:
command-line options, the ``KVCONFORM_*`` environment (``harness.settings``),
the report directory (created and written to), ``--device cuda`` on a machine
without CUDA, and (at configure time, by the plugin) the implementation.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import textwrap
import time
from pathlib import Path

from harness import forkserver, settings
from harness.profiles import EXPLORE, EXPLORE_SECONDS, PROFILE_EXAMPLES

#: Overrides the directory of conformance test modules (for the harness's own tests).
CONFORMANCE_DIR_ENV_VAR = settings.CONFORMANCE_DIR
PACKAGE_ROOT = Path(__file__).resolve().parent.parent

#: Exit statuses (pytest's codes, with kvconform's meaning).
EXIT_OK = 0            # at least one invariant test ran and none failed
EXIT_FAILED = 1        # some test failed
EXIT_INTERRUPTED = 2   # interrupted: Ctrl-C (a KeyboardInterrupt out of the implementation is a crash of it)
EXIT_INTERNAL = 3      # internal error of pytest or the harness
EXIT_USAGE = 4         # usage error: a bad option, environment variable, directory, device or implementation
EXIT_NOTHING_CHECKED = 5  # no invariant test ran: none collected, all deselected or skipped, or no capabilities

DESCRIPTION = """\
Run kvconform's conformance suite (the test modules in harness/conformance/) under pytest
against one implementation and write a conformance report.

The report has one row per invariant of the catalogue (see --list-invariants) with its
status (pass, fail, interrupted, xfail, new-since-target, not-implemented, not-run), the number of tests and the number of
Hypothesis examples run, and each distinct failure of a failing test: its id, its failure
status (fail, timeout, crash, out-of-bounds), the shrunk counterexample, Hypothesis's
explanation, the @reproduce_failure(...) line, the seed when one reproduces it, the first
line of the error, a one-line command that reruns it, and a standalone script,
DIR/repro_<test>_<n>.py, that replays the failing calls with torch and the implementation only
(no kvconform) and fails with the same message.
An implementation that declares
configurations (vLLM's pull, push, permute; SGLang's triton, torch) runs once per configuration
(--config selects some), each a parameter of every test like the device ([cpu-pull]) and a
column of the report.  Every test carries the catalogue version that added it; a failing test
newer than the version the implementation targets (its catalogue_version) reads
new-since-target ("new since your version") and does not fail the run.  Its run info says what produced
it: kvconform version and commit, catalogue version, implementation and its version, the
configuration, device names, driver, and torch/Triton/Hypothesis/Python versions.  The report is printed at the end of the run and
written to DIR/kvconform-report.md and DIR/kvconform-report.json (--report-dir, default:
the current directory; checked before the first test); their paths are printed last.  The
files are rewritten after every test, marked INCOMPLETE until the run ends, so a run killed
from outside leaves its results so far; an interrupted run is marked INTERRUPTED.  If DIR
cannot be written at the end, the report goes to $TMPDIR/kvconform-report-PID/ instead (the
line saying so and the table are printed either way).

The implementation runs in a worker process (process isolation): a crash, a hang or a
patched harness module there cannot end the run or change a verdict.  A worker that dies
under a call is a "crash" failure, a call past KVCONFORM_CALL_TIMEOUT_S a "timeout" (the
worker is killed); either way a fresh worker continues the run.  Tensors cross by shared
memory (CPU) or CUDA IPC, so the judge checks the bytes the implementation wrote.
--in-process runs it inside the judge's process, for debugging only (see --in-process).

`%(prog)s matrix REPORT.json ... [--markdown OUT.md] [--json OUT.json]` merges reports into
one table across implementations, versions, configurations and devices (see its --help)."""

EPILOG = """\
exit status:
  0  at least one invariant test ran and none failed (new-since-target failures
     do not count: the implementation targets an older catalogue version)
  1  some test failed; or, under --profile thorough, a case class expected for an
     invariant got no case (the report's case-class table names it)
  2  interrupted (Ctrl-C); the report is marked INTERRUPTED and the test that was
     running reads "interrupted" (KeyboardInterrupt or SystemExit raised inside the
     implementation is a crash of the test it happens in, and the run goes on)
  3  internal error
  4  usage error, reported before any test runs: a bad option, KVCONFORM_* variable,
     report directory or Hypothesis profile, --device cuda without CUDA, an
     implementation that cannot be loaded, or a --config name it does not declare
  5  no invariant test ran: none collected, all deselected or skipped, or the
     implementation claims no capability the selected tests need

environment (checked before the first test; a bad value is a usage error):
{environment}

examples:
  {prog} --impl mypkg.kvstaging:make_implementation
  {prog} --impl sglang --xfails sglang --profile gate -n 4
  {prog} --impl vllm --config pull,push --device cpu
  {prog} --impl mypkg.kvstaging --profile explore --explore-seconds 120 --corpus-out new-cases
  {prog} --impl mypkg.kvstaging --profile gate --exitfirst
  {prog} --impl mypkg.kvstaging -k layout -- -v
  {prog} --impl reference harness/conformance/test_layout.py::test_layout_spans"""


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        prog=prog, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG.format(prog=prog, environment="\n".join(
            textwrap.fill(f"{name}: {meaning}", width=88, initial_indent="  ", subsequent_indent="      ")
            for name, meaning in settings.VARIABLES.items())),
        usage=f"{prog} [options] [TEST ...] [-- PYTEST_ARGS ...]",
    )
    parser.add_argument(
        "tests", nargs="*", metavar="TEST",
        help="run only these tests: pytest node ids such as harness/conformance/test_layout.py::test_layout_spans "
        "or test_layout.py (relative to the conformance directory); default: the whole suite",
    )
    parser.add_argument(
        "--impl", metavar="SPEC",
        help="implementation under test: package.module:factory, package.module (uses its make_implementation), "
        "or a registered name (see --list-impls); modules are searched in the current directory, then on "
        "sys.path; default: $KVCONFORM_IMPL or 'reference'",
    )
    parser.add_argument(
        "--config", metavar="NAME[,NAME]",
        help="for an implementation that declares configurations (e.g. vllm: pull, push, permute): test only "
        "these; default: every one, each a column of the report (an unknown name is a usage error listing "
        "the valid ones)",
    )
    parser.add_argument(
        "--profile", "--hypothesis-profile", dest="profile", choices=tuple(PROFILE_EXAMPLES),
        help="Hypothesis profile: " + ", ".join(f"{n} ({k} examples per test)" for n, k in PROFILE_EXAMPLES.items()
                                                if n != EXPLORE)
        + f", {EXPLORE} (random, example database on, each test generates for --explore-seconds; "
        "nightly: pair it with --corpus-out)"
        + "; default: $KVCONFORM_PROFILE or 'default'",
    )
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all",
                        help="devices to test on (default: all available; cuda on a machine without CUDA is a "
                        "usage error, never a passing run)")
    parser.add_argument("--report-dir", metavar="DIR", default=".",
                        help="where kvconform-report.md and kvconform-report.json go, created if missing "
                        "(default: current directory)")
    parser.add_argument("--xfails", metavar="FILE",
                        help="expected-failure list (JSON; each entry a test, its expected error and a witness case "
                        "replayed first: harness/xfails/__init__.py); a bare name reads harness/xfails/NAME.json")
    parser.add_argument("--strict-xfails", action="store_true",
                        help="an xfails entry whose witness and test pass fails the run instead of reading 'fixed'")
    parser.add_argument("--corpus", metavar="DIR",
                        help="regression corpus replayed before generation (DIR/<test name>/*.json); default: the "
                        "corpus shipped with kvconform; 'none' replays nothing (docs/corpus.md)")
    parser.add_argument("--corpus-out", metavar="DIR",
                        help="write each new failure's shrunk counterexample as a corpus case into DIR/<test name>/")
    parser.add_argument("--replay-case", metavar="FILE",
                        help="run the test of this stored case on this case alone, no generation (repro lines use it)")
    parser.add_argument("--explore-seconds", metavar="S",
                        help=f"explore profile: seconds each test generates (default {EXPLORE_SECONDS:g})")
    parser.add_argument("--in-process", action="store_true",
                        help="run the implementation inside the judge's process instead of a worker process, for "
                        "debugging (breakpoints, profilers). Not for verdicts: there, an implementation that "
                        "crashes ends the run, and one that patches harness modules (oracles, pytest hooks, the "
                        "report) can turn its failures into passes; the default worker process keeps both out")
    parser.add_argument("-x", "--exitfirst", action="store_true",
                        help="stop at the first failing invariant test; the report is still written, with that "
                        "failure, its counterexample and repro (the invariants not reached read not-run)")
    parser.add_argument("-k", dest="keyword", metavar="EXPR", help="only tests matching the pytest -k expression")
    parser.add_argument("-n", "--numprocesses", metavar="N",
                        help="run tests in N processes (or 'auto') with pytest-xdist, which must be installed")
    parser.add_argument("--junitxml", metavar="PATH", help="also write a JUnit XML report to PATH")
    parser.add_argument("--hypothesis-seed", metavar="N", help="seed for Hypothesis (as printed in repro lines)")
    parser.add_argument("--list-impls", action="store_true", help="list registered implementation names and exit")
    parser.add_argument("--list-invariants", action="store_true", help="list the invariants checked and exit")
    return parser


class UsageError(Exception):
    """A bad input found before any test runs; the message is one line naming it and what to do."""


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse exits 2, pytest's "interrupted"; usage errors are 4 everywhere
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def conformance_directory() -> Path:
    """The conformance test directory: ``$KVCONFORM_CONFORMANCE_DIR`` or ``harness/conformance``."""
    override = settings.current().conformance_dir
    return override if override is not None else PACKAGE_ROOT / "harness" / "conformance"


def main(argv: list[str] | None = None, prog: str = "kvconform") -> int:
    """Run the command; returns its exit status (see ``EXIT_*``: 0 iff some invariant ran and none failed)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["matrix"]:  # the one subcommand: merge reports (harness.matrix)
        from harness import matrix

        return matrix.main(argv[1:], prog=f"{prog} matrix")
    own, passthrough = _split_passthrough(argv)
    parser = build_parser(prog)
    args = parser.parse_args(own)
    if args.list_invariants:
        print(_invariant_listing())
        return EXIT_OK
    if args.list_impls:
        print(_implementation_listing())
        return EXIT_OK
    if not args.in_process and not args.numprocesses:
        # Under isolation this process forks the worker; started now, the server's torch import (seconds)
        # runs beside ours instead of after it.  (With -n, the xdist workers fork theirs.)
        forkserver.ensure_running()
    try:
        pytest_args = _checked_pytest_arguments(args, passthrough, prog)
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    os.environ.setdefault(settings.HYPOTHESIS_DB, str(Path.cwd() / ".hypothesis" / "examples"))
    started = time.time()
    import pytest

    status = int(pytest.main(pytest_args))
    _print_report_paths(Path(args.report_dir), started)
    return status


def _checked_pytest_arguments(args: argparse.Namespace, passthrough: list[str], prog: str) -> list[str]:
    """Check every input that can be checked before pytest starts; the pytest command line for them."""
    try:
        current = settings.current()
    except settings.SettingsError as exc:
        raise UsageError(str(exc)) from None
    from harness.devices import require_devices
    from harness.report import ReportDirectoryError, ensure_report_directory

    if current.unknown_variables_line():
        print(f"{prog}: warning: {current.unknown_variables_line()}", file=sys.stderr)
    if args.numprocesses and importlib.util.find_spec("xdist") is None:
        raise UsageError("-n/--numprocesses needs pytest-xdist: pip install pytest-xdist (or kvconform[test])")
    directory = conformance_directory()
    if not directory.is_dir():
        raise UsageError(f"conformance test directory {directory} does not exist; reinstall kvconform")
    try:
        ensure_report_directory(args.report_dir, "--report-dir")
        require_devices(args.device)
        return _pytest_arguments(args, passthrough, prog, directory)
    except (ReportDirectoryError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def _split_passthrough(argv: list[str]) -> tuple[list[str], list[str]]:
    """Arguments before the first ``--`` are ours; the rest go to pytest untouched."""
    if "--" in argv:
        index = argv.index("--")
        return argv[:index], argv[index + 1:]
    return argv, []


def _pytest_arguments(args: argparse.Namespace, passthrough: list[str], prog: str, directory: Path) -> list[str]:
    """The pytest command line for ``args``; rootdir is the package root so node ids read harness/conformance/..."""
    from harness.loading import resolve_spec

    rootdir = directory.parent.parent
    targets = [_resolve_test(test, rootdir, directory) for test in args.tests] or [str(directory)]
    result = [
        *targets,
        "-p", "harness.pytest_plugin",
        "--rootdir", str(rootdir),
        "--confcutdir", str(directory),
        "-o", f"cache_dir={Path.cwd() / '.pytest_cache'}",
        "--impl", resolve_spec(args.impl),
        "--device", args.device,
        "--kvconform-report", str(Path(args.report_dir).resolve()),
        "--kvconform-prog", prog,
        "--isolation", "in-process" if args.in_process else "process",
    ]
    if args.exitfirst:
        result.append("--exitfirst")
    if args.strict_xfails:
        result.append("--strict-xfails")
    for option, value in (
        ("--hypothesis-profile", args.profile),
        ("--xfails", args.xfails),
        ("--impl-config", args.config),
        ("--corpus", args.corpus),
        ("--corpus-out", args.corpus_out),
        ("--replay-case", args.replay_case),
        ("--explore-seconds", args.explore_seconds),
        ("-k", args.keyword),
        ("-n", args.numprocesses),
        ("--junitxml", args.junitxml),
        ("--hypothesis-seed", args.hypothesis_seed),
    ):
        if value:
            result += [option, value]
    return result + passthrough


def _resolve_test(test: str, rootdir: Path, directory: Path) -> str:
    """A node id whose path part is relative to the package root, the conformance directory or the cwd."""
    path, sep, rest = test.partition("::")
    for base in (rootdir, directory, Path.cwd()):
        candidate = base / path
        if candidate.exists():
            return f"{candidate}{sep}{rest}"
    raise ValueError(f"test {test!r} not found: no {path!r} under {rootdir}, {directory} or the current directory")


def _print_report_paths(report_dir: Path, started: float) -> None:
    """Print the report files this run wrote: in ``report_dir``, or in the fallback directory if it had to."""
    from harness.report import REPORT_BASENAME, fallback_directory

    for directory in (report_dir.resolve(), fallback_directory()):
        paths = [directory / f"{REPORT_BASENAME}.{ext}" for ext in ("md", "json")]
        if all(p.exists() and p.stat().st_mtime >= started - 1 for p in paths):
            print(f"kvconform report: {paths[0]}")
            print(f"kvconform report: {paths[1]}")
            return


def _invariant_listing() -> str:
    from harness.catalogue import INVARIANTS

    blocks = []
    for inv in INVARIANTS:
        body = textwrap.fill(inv.statement, width=88, initial_indent="    ", subsequent_indent="    ")
        blocks.append(f"{inv.id}: {inv.title}\n{body}")
    return "\n".join(blocks)


def _implementation_listing() -> str:
    from harness.loading import available_implementations

    rows = available_implementations()
    width = max(len(name) for name in rows)
    lines = [f"{name:<{width}}  {target}" for name, target in rows.items()]
    lines.append("(any importable package.module:factory works too)")
    return "\n".join(lines)
