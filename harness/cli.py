"""The ``kvconform`` command (also ``python -m harness``): run the conformance suite, write the report.

It runs pytest in-process on the conformance test modules of the *installed*
``harness/conformance`` directory (found from this package's path, so it works
from site-packages and from a checkout), with ``harness.pytest_plugin``
loaded.  ``KVCONFORM_CONFORMANCE_DIR`` points it at another test directory;
it exists for testing the harness itself.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import textwrap
import time
from pathlib import Path

from harness.profiles import DATABASE_ENV_VAR, PROFILE_EXAMPLES

#: Overrides the directory of conformance test modules (for the harness's own tests).
CONFORMANCE_DIR_ENV_VAR = "KVCONFORM_CONFORMANCE_DIR"
PACKAGE_ROOT = Path(__file__).resolve().parent.parent

DESCRIPTION = """\
Run kvconform's conformance suite (the test modules in harness/conformance/) under pytest
against one implementation and write a conformance report.

The report has one row per invariant of the catalogue (see --list-invariants) with its
status (pass, fail, xfail, not-implemented, not-run), the number of tests and the number of
Hypothesis examples run, and for each failing test: its id, the shrunk counterexample, the
@reproduce_failure(...) line, the seed when one reproduces it, the first line of the error
and a one-line command that reruns it.  The report is printed at the end of the run and
written to DIR/kvconform-report.md and DIR/kvconform-report.json (--report-dir, default:
the current directory); their paths are printed last."""

EPILOG = """\
exit status: 0 when no test failed, 1 when some test failed, 2 interrupted, 3 internal
error, 4 usage error (e.g. the implementation cannot be loaded), 5 no test collected.

environment: KVCONFORM_IMPL (default for --impl), KVCONFORM_PROFILE (default for
--profile), KVCONFORM_HYPOTHESIS_DB (Hypothesis example database directory, default
./.hypothesis/examples; failing examples saved there are replayed first on the next run).

examples:
  {prog} --impl mypkg.kvstaging:make_implementation
  {prog} --impl sglang --xfails sglang --profile ci -n 4
  {prog} --impl mypkg.kvstaging -k layout -- -x -v
  {prog} --impl reference harness/conformance/test_layout.py::test_layout_spans"""


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=DESCRIPTION, epilog=EPILOG.format(prog=prog), formatter_class=argparse.RawDescriptionHelpFormatter,
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
        "or a registered name (see --list-impls); default: $KVCONFORM_IMPL or 'reference'",
    )
    parser.add_argument(
        "--profile", choices=tuple(PROFILE_EXAMPLES),
        help="Hypothesis profile: " + ", ".join(f"{n} ({k} examples per test)" for n, k in PROFILE_EXAMPLES.items())
        + "; default: $KVCONFORM_PROFILE or 'default'",
    )
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all",
                        help="devices to test on (default: all available; cuda without CUDA skips with a reason)")
    parser.add_argument("--report-dir", metavar="DIR", default=".",
                        help="where kvconform-report.md and kvconform-report.json go (default: current directory)")
    parser.add_argument("--xfails", metavar="FILE",
                        help="expected-failure list: invariant ids or node-id substrings, one per line, '#' comments; "
                        "a bare name reads harness/xfails/NAME.txt")
    parser.add_argument("-k", dest="keyword", metavar="EXPR", help="only tests matching the pytest -k expression")
    parser.add_argument("-n", "--numprocesses", metavar="N",
                        help="run tests in N processes (or 'auto') with pytest-xdist, which must be installed")
    parser.add_argument("--junitxml", metavar="PATH", help="also write a JUnit XML report to PATH")
    parser.add_argument("--hypothesis-seed", metavar="N", help="seed for Hypothesis (as printed in repro lines)")
    parser.add_argument("--list-impls", action="store_true", help="list registered implementation names and exit")
    parser.add_argument("--list-invariants", action="store_true", help="list the invariants checked and exit")
    return parser


def conformance_directory() -> Path:
    """The conformance test directory: ``$KVCONFORM_CONFORMANCE_DIR`` or ``harness/conformance``."""
    override = os.environ.get(CONFORMANCE_DIR_ENV_VAR)
    return Path(override).resolve() if override else PACKAGE_ROOT / "harness" / "conformance"


def main(argv: list[str] | None = None, prog: str = "kvconform") -> int:
    """Run the command; returns the pytest exit status (0 iff no test failed and some ran)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    own, passthrough = _split_passthrough(argv)
    parser = build_parser(prog)
    args = parser.parse_args(own)
    if args.list_invariants:
        print(_invariant_listing())
        return 0
    if args.list_impls:
        print(_implementation_listing())
        return 0
    if args.numprocesses and importlib.util.find_spec("xdist") is None:
        print(f"{prog}: error: -n/--numprocesses needs pytest-xdist: pip install pytest-xdist "
              "(or kvconform[test])", file=sys.stderr)
        return 4
    directory = conformance_directory()
    if not directory.is_dir():
        print(f"{prog}: error: conformance test directory {directory} does not exist", file=sys.stderr)
        return 4
    try:
        pytest_args = _pytest_arguments(args, passthrough, prog, directory)
    except ValueError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 4
    os.environ.setdefault(DATABASE_ENV_VAR, str(Path.cwd() / ".hypothesis" / "examples"))
    started = time.time()
    import pytest

    status = int(pytest.main(pytest_args))
    _print_report_paths(Path(args.report_dir), started)
    return status


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
    ]
    for option, value in (
        ("--hypothesis-profile", args.profile),
        ("--xfails", args.xfails),
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
    paths = [report_dir.resolve() / f"kvconform-report.{ext}" for ext in ("md", "json")]
    if all(p.exists() and p.stat().st_mtime >= started - 1 for p in paths):
        print(f"kvconform report: {paths[0]}")
        print(f"kvconform report: {paths[1]}")


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
