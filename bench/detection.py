"""Detection power of the ``gate`` profile: every deliberately broken implementation through the public CLI.

Each broken implementation in ``tests/broken*/`` is run as a user would run
it, in its own process::

    python -m harness --impl tests.broken.<module>:<Class> --profile gate --exitfirst --report-dir DIR

and the JSON written per implementation says whether the gate killed it
(exit status 1 with a failing invariant row), the invariant and test of the
first failure, the seconds from launching the process to that failure
(the report is rewritten after every test; it is polled), and the wall time
of the whole run (start-up, the tests before the failure, shrinking, the
report).  A speed target lives here, never in a timed unit test.

Discovery: every public class defined in a module of a ``tests/broken*``
package that loads as an implementation (``harness.loading``: callable with
no arguments, valid capabilities).  A class whose docstring calls it a
"positive control" or "correct" is run too and must *survive* (a false
positive of the gate would show there).  A class whose docstring or module
docstring says it needs CUDA is listed as ``not-run`` with the reason on a
machine without CUDA.

    PYTHONPATH=. python bench/detection.py [--out bench/results] [-n N] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import inspect
import json
import os
import pkgutil
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from harness.loading import ImplementationError, load_implementation  # noqa: E402
from harness.runinfo import suite_commit  # noqa: E402

#: Seconds one broken implementation's run may take before it is reported as "timeout".
RUN_TIMEOUT_S = 600
POLL_S = 0.05
CONTROL_WORDS = ("positive control", "correct:")


@dataclass(frozen=True)
class Candidate:
    """One class of a ``tests/broken*`` module, pluggable as ``--impl SPEC``."""

    spec: str
    role: str  # "broken" (must be killed) or "control" (must survive)
    needs_cuda: bool
    doc: str


@dataclass(frozen=True)
class Outcome:
    """What one run of the gate did to one candidate."""

    spec: str
    role: str
    status: str  # killed | survived | not-run | timeout | error
    invariant: str | None
    test: str | None
    error: str | None
    seconds_to_first_failure: float | None
    wall_seconds: float | None
    exit_status: int | None
    tests_run: int | None
    reason: str | None
    doc: str


def discover() -> list[Candidate]:
    """Every loadable implementation class in the ``tests/broken*`` packages, in module then source order."""
    found = []
    for package_dir in sorted((REPO_ROOT / "tests").glob("broken*/")):
        if not (package_dir / "__init__.py").exists():
            continue
        package = f"tests.{package_dir.name}"
        for info in sorted(pkgutil.iter_modules([str(package_dir)]), key=lambda i: i.name):
            module = importlib.import_module(f"{package}.{info.name}")
            found.extend(_candidates_of(module))
    return found


def _candidates_of(module: Any) -> list[Candidate]:
    classes = [c for name, c in vars(module).items()
               if inspect.isclass(c) and c.__module__ == module.__name__ and not name.startswith("_")]
    result = []
    for cls in sorted(classes, key=lambda c: inspect.getsourcelines(c)[1]):
        spec = f"{module.__name__}:{cls.__name__}"
        try:
            load_implementation(spec)
        except (ImplementationError, Exception):  # noqa: BLE001 - helpers (streams, allocators) are not implementations
            continue
        doc = inspect.cleandoc(cls.__doc__ or "")
        words = doc.lower()
        role = "control" if any(w in words for w in CONTROL_WORDS) else "broken"
        needs_cuda = "cuda" in words or "cuda only" in (module.__doc__ or "").lower()
        result.append(Candidate(spec, role, needs_cuda, doc.splitlines()[0] if doc else ""))
    return result


def run_one(candidate: Candidate, numprocesses: str | None, python: str) -> Outcome:
    """Run the gate with ``--exitfirst`` on one candidate; poll its report for the first failure."""
    with tempfile.TemporaryDirectory(prefix="kvconform-detection-") as tmp:
        report_path = Path(tmp) / "kvconform-report.json"
        command = [python, "-m", "harness", "--impl", candidate.spec, "--profile", "gate", "--exitfirst",
                   "--report-dir", tmp, "--device", "cpu"]
        if numprocesses:
            command += ["-n", numprocesses]
        command += ["--", "-p", "no:cacheprovider", "-q"]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
        started = time.monotonic()
        process = subprocess.Popen(command, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)
        first_failure = None
        output_chunks: list[str] = []
        while process.poll() is None:
            if first_failure is None and _failures(report_path):
                first_failure = time.monotonic() - started
            if time.monotonic() - started > RUN_TIMEOUT_S:
                process.kill()
                break
            time.sleep(POLL_S)
        output_chunks.append(process.communicate()[0] or "")
        wall = time.monotonic() - started
        report = _read(report_path)
        return _outcome(candidate, process.returncode, report, first_failure, wall, "".join(output_chunks))


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # not written yet, or being replaced
        return None


def _failures(path: Path) -> list[dict[str, Any]]:
    report = _read(path)
    return report.get("failures", []) if report else []


def _outcome(candidate: Candidate, rc: int | None, report: dict[str, Any] | None, first_failure: float | None,
             wall: float, output: str) -> Outcome:
    common = dict(spec=candidate.spec, role=candidate.role, doc=candidate.doc, exit_status=rc,
                  wall_seconds=round(wall, 2))
    if report is None:
        return Outcome(**common, status="error", invariant=None, test=None, error=None,
                       seconds_to_first_failure=None, tests_run=None,
                       reason="no report written; last output: " + " | ".join(output.strip().splitlines()[-3:]))
    failures = report.get("failures", [])
    tests_run = report["summary"]["tests"]
    if rc is not None and rc < 0 or wall > RUN_TIMEOUT_S:
        status, reason = "timeout", f"killed after {RUN_TIMEOUT_S}s"
    elif failures:
        status, reason = "killed", None
    elif rc == 0:
        status, reason = "survived", None
    else:
        status, reason = "error", f"exit status {rc} without a failing test: {report['completion']['note']}"
    first = failures[0] if failures else {}
    if failures and first_failure is None:  # the failure landed between the last poll and the exit
        first_failure = wall
    return Outcome(**common, status=status, invariant=first.get("invariant"), test=first.get("test"),
                   error=first.get("error"), tests_run=tests_run, reason=reason,
                   seconds_to_first_failure=round(first_failure, 2) if first_failure is not None else None)


def not_run(candidate: Candidate, reason: str) -> Outcome:
    return Outcome(candidate.spec, candidate.role, "not-run", None, None, None, None, None, None, None, reason,
                   candidate.doc)


def summary(outcomes: list[Outcome]) -> dict[str, Any]:
    """Killed count and median seconds to the first failure over the broken implementations that ran."""
    broken = [o for o in outcomes if o.role == "broken" and o.status != "not-run"]
    killed = [o for o in broken if o.status == "killed"]
    seconds = [o.seconds_to_first_failure for o in killed if o.seconds_to_first_failure is not None]
    controls = [o for o in outcomes if o.role == "control" and o.status != "not-run"]
    return {
        "broken_run": len(broken),
        "killed": len(killed),
        "not_killed": [o.spec for o in broken if o.status != "killed"],
        "not_run": [o.spec for o in outcomes if o.status == "not-run"],
        "median_seconds_to_first_failure": round(statistics.median(seconds), 2) if seconds else None,
        "max_seconds_to_first_failure": max(seconds) if seconds else None,
        "controls_survived": sum(o.status == "survived" for o in controls),
        "controls_run": len(controls),
        "total_wall_seconds": round(sum(o.wall_seconds or 0 for o in outcomes), 1),
    }


def machine() -> dict[str, Any]:
    import hypothesis
    import torch

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpus": os.cpu_count(), "cuda": torch.cuda.is_available(), "python": platform.python_version(),
            "torch": torch.__version__, "hypothesis": hypothesis.__version__,
            "load_average_at_start": [round(x, 2) for x in load] if load else None,
            "commit": suite_commit()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", metavar="DIR", help="also write detection-<cpu|cuda>-<date>.json into DIR")
    parser.add_argument("-n", "--numprocesses", metavar="N", help="pass -n N to kvconform (default: one process)")
    parser.add_argument("--only", nargs="*", metavar="NAME", help="only candidates whose spec contains NAME")
    args = parser.parse_args(argv)
    import torch

    cuda = torch.cuda.is_available()
    info = machine()
    outcomes = []
    for candidate in discover():
        if args.only and not any(name in candidate.spec for name in args.only):
            continue
        if candidate.needs_cuda and not cuda:
            outcome = not_run(candidate, "needs CUDA (the bug only shows with real device streams); no CUDA here")
        else:
            outcome = run_one(candidate, args.numprocesses, sys.executable)
        print(f"{outcome.status:9} {outcome.seconds_to_first_failure or '':>6} {outcome.wall_seconds or '':>6}  "
              f"{outcome.spec}  {outcome.invariant or outcome.reason or ''}", file=sys.stderr, flush=True)
        outcomes.append(outcome)
    from harness.profiles import GATE_EXAMPLES

    result = {"benchmark": "detection", "profile": "gate", "gate_examples_per_test": GATE_EXAMPLES, "exitfirst": True,
              "numprocesses": args.numprocesses or "1 (no xdist)",
              "date": datetime.date.today().isoformat(), "machine": info, "summary": summary(outcomes),
              "implementations": [asdict(o) for o in outcomes]}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        name = f"detection-{'cuda' if cuda else 'cpu'}-{result['date']}.json"
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / name).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
