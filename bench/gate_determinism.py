"""Two ``gate`` runs of the whole suite on one commit: same verdict?  And how long does the gate take?

Runs the public CLI twice, each in a fresh process with a different
``PYTHONHASHSEED`` (Python's per-process string-hash randomisation, which a
set iterated in a strategy would leak into the draws)::

    python -m harness --profile gate -n N --report-dir DIR --junitxml DIR/junit.xml

and compares the two verdicts (:func:`verdict`): every test's outcome and
Hypothesis example count (from the JUnit XML, where the plugin's per-test
properties land), every invariant row (status, tests, examples) and every
failure (test, error line) of the JSON report.  Prints JSON with both wall
times, the load average before each run, and the differences (none when
deterministic); exits 1 on a difference.  A speed target lives here, never
in a timed unit test.

    PYTHONPATH=. python bench/gate_determinism.py [-n 2] [--impl SPEC] [--out bench/results]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from harness.runinfo import suite_commit  # noqa: E402
#: Different per run on purpose: a verdict must not depend on string-hash randomisation.
HASH_SEEDS = ("1", "2")


def verdict(report_dir: Path) -> dict[str, Any]:
    """What a gate run decided, stripped of anything that may differ between identical runs (times, paths)."""
    report = json.loads((report_dir / "kvconform-report.json").read_text())
    tests = {}
    for case in ET.parse(report_dir / "junit.xml").getroot().iter("testcase"):
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = child.tag
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        tests[f"{case.get('classname')}::{case.get('name')}"] = {
            "outcome": outcome, "examples": props.get("kvconform.examples"), "shrinks": props.get("kvconform.shrinks")}
    return {
        "tests": tests,
        "rows": {r["invariant"]: {k: r[k] for k in ("status", "tests", "passed", "failed", "examples")}
                 for r in report["rows"]},
        "failures": sorted((f["test"], f["error"]) for f in report["failures"]),
        "exit_status": report["completion"]["exit_status"],
    }


def differences(first: dict[str, Any], second: dict[str, Any]) -> list[str]:
    """Human-readable differences between two verdicts (empty when identical)."""
    found = []
    for section in ("tests", "rows"):
        for key in sorted(set(first[section]) | set(second[section])):
            a, b = first[section].get(key), second[section].get(key)
            if a != b:
                found.append(f"{section} {key}: {a} != {b}")
    for key in ("failures", "exit_status"):
        if first[key] != second[key]:
            found.append(f"{key}: {first[key]} != {second[key]}")
    return found


def gate_run(report_dir: Path, hash_seed: str, numprocesses: str | None, impl: str | None,
             extra: list[str]) -> dict[str, Any]:
    """One CLI run; its wall time, exit status and the load average before it started."""
    command = [sys.executable, "-m", "harness", "--profile", "gate", "--report-dir", str(report_dir),
               "--junitxml", str(report_dir / "junit.xml")]
    command += ["-n", numprocesses] if numprocesses else []
    command += ["--impl", impl] if impl else []
    command += ["--", "-p", "no:cacheprovider", "-q", *extra]
    env = {**os.environ, "PYTHONHASHSEED": hash_seed,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    load = [round(x, 2) for x in os.getloadavg()]
    started = time.monotonic()
    done = subprocess.run(command, cwd=report_dir, env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
    return {"hash_seed": hash_seed, "wall_seconds": round(wall, 1), "exit_status": done.returncode,
            "load_average_before": load, "output_tail": tail}


def _gate_examples() -> int:
    sys.path.insert(0, str(REPO_ROOT))
    from harness.profiles import GATE_EXAMPLES

    return GATE_EXAMPLES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--numprocesses", default="2", help="kvconform -n (default 2; 0 for one process)")
    parser.add_argument("--impl", help="implementation (default: the reference)")
    parser.add_argument("--out", metavar="DIR", help="also write gate-determinism-<date>.json into DIR")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    numprocesses = None if args.numprocesses == "0" else args.numprocesses
    runs, verdicts = [], []
    with tempfile.TemporaryDirectory(prefix="kvconform-gate-") as tmp:
        for seed in HASH_SEEDS:
            report_dir = Path(tmp) / f"run-{seed}"
            report_dir.mkdir()
            runs.append(gate_run(report_dir, seed, numprocesses, args.impl, args.pytest_args))
            verdicts.append(verdict(report_dir))
    diff = differences(*verdicts)
    result = {
        "benchmark": "gate_determinism", "date": datetime.date.today().isoformat(), "cpus": os.cpu_count(),
        "numprocesses": args.numprocesses, "impl": args.impl or "reference", "commit": suite_commit(),
        "gate_examples_per_test": _gate_examples(), "runs": runs,
        "tests": len(verdicts[0]["tests"]), "examples": sum(int(t["examples"] or 0) for t in verdicts[0]["tests"].values()),
        "identical": not diff, "differences": diff,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / f"gate-determinism-cpu-{result['date']}.json").write_text(text + "\n")
    return 0 if not diff else 1


if __name__ == "__main__":
    sys.exit(main())
