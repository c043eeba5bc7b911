"""Mutation score of reference/ per module, from mutmut's results (run ``tox -e mutation`` first).

Reads ``mutmut results --all true`` (run in the checkout that holds ``mutants/``), classifies each mutant
with the written-down verdicts of docs/mutation.md (``EQUIVALENT``: mutants that cannot change what the
suite may observe, each with its reason), and prints JSON: per module the counts of killed, survived,
timeout (counted as killed: the mutant hangs the suite), no tests (code the CPU gate never runs),
equivalent and not run, and the score ``killed / (mutants run - equivalent)``.  ``--write PATH`` also
writes the JSON there (bench/results/).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path

#: mutmut's status words -> ours.
_STATUS = {"killed": "killed", "timeout": "killed", "survived": "survived", "tests": "no_tests",
           "checked": "not_run", "suspicious": "survived", "skipped": "not_run", "segfault": "killed",
           "interrupted": "not_run", "typecheck": "killed"}


def load_equivalent(doc: Path) -> dict[str, str]:
    """``mutant name -> reason`` from the table rows of docs/mutation.md whose verdict is ``equivalent``:
    ``| `name` | equivalent | reason |``."""
    equivalent = {}
    for line in doc.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[1] == "equivalent" and cells[0].startswith("`"):
            equivalent[cells[0].strip("`")] = cells[2]
    return equivalent


def results(checkout: Path) -> dict[str, str]:
    """``mutant name -> status word`` from mutmut."""
    out = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=checkout,
                         capture_output=True, text=True, check=True).stdout
    statuses = {}
    for line in out.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and name.startswith("reference."):
            statuses[name] = _STATUS.get(status.split()[-1], "not_run")
    return statuses


def score(statuses: dict[str, str], equivalent: dict[str, str]) -> dict:
    per_module: dict[str, Counter] = defaultdict(Counter)
    for name, status in statuses.items():
        module = name.split(".x")[0]
        if status == "survived" and name in equivalent:
            status = "equivalent"
        per_module[module][status] += 1
    rows = {}
    total: Counter = Counter()
    for module, counts in sorted(per_module.items()):
        total.update(counts)
        rows[module] = _row(counts)
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "modules": rows, "total": _row(total)}


def _row(counts: Counter) -> dict:
    """``score``: killed among the non-equivalent mutants the CPU gate ran; ``score_counting_no_tests``: the
    same with the mutants of code it never runs (CUDA-only paths) counted as survivors."""
    judged = counts["killed"] + counts["survived"]
    with_untested = judged + counts["no_tests"]
    return {**{k: counts[k] for k in ("killed", "survived", "equivalent", "no_tests", "not_run")},
            "score": round(counts["killed"] / judged, 4) if judged else None,
            "score_counting_no_tests": round(counts["killed"] / with_untested, 4) if with_untested else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, default=Path.cwd())
    parser.add_argument("--write", type=Path, default=None, help="also write the JSON to this path")
    args = parser.parse_args()
    report = score(results(args.checkout), load_equivalent(args.checkout / "docs" / "mutation.md"))
    text = json.dumps(report, indent=2)
    print(text)
    if args.write:
        args.write.write_text(text + "\n")


if __name__ == "__main__":
    main()
