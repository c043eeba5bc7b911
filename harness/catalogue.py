"""The invariants kvconform checks: one id per invariant, one report row each.

Conformance tests (``harness/conformance/test_*.py``) tag themselves with
``@pytest.mark.invariant("<id>", requires=("<capability>", ...))``.  A test
whose required capabilities the implementation lacks is reported as
"not implemented" rather than run.

README.md's invariant table is generated from :data:`INVARIANTS`
(``python -m harness.catalogue --update README.md``); a test fails when they differ.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Invariant:
    id: str
    title: str
    statement: str


INVARIANTS: tuple[Invariant, ...] = (
    Invariant("head_coverage", "Head coverage",
              "Every head a decode rank must hold is written with the right global head's data; no writer's "
              "source or destination range leaves its rank's heads."),
    Invariant("layout", "Staging layout",
              "Writer regions are disjoint, ordered and sum to the total; sizes follow from tokens, heads, "
              "head_dim, element size and layers."),
    Invariant("round_trip", "Round trip",
              "gather → transfer → scatter leaves decode pages bit-identical to ground truth (all layers, K and V, "
              "fp8 and NaN payloads included), through raw kv_copy, the decode handler with a wrapping ring, "
              "and end to end."),
    Invariant("isolation", "Isolation",
              "Nothing outside the request's pages changes (canary-filled pools), gather leaves prefill pools "
              "untouched, nothing is written outside a buffer (canary margins)."),
    Invariant("path_equivalence", "Path equivalence",
              "Staged, non-staged and (equal TP) plain page copy give identical decode KV."),
    Invariant("receivers", "Receivers",
              "Any receiver object (attribute missing, `__slots__` unset, property, Mock, truthy non-bool, ...) "
              "goes through the whole lifecycle; only a truthy `require_staging` stages."),
    Invariant("allocator", "Allocator and watermark",
              "Safety (a writer allowed by the watermark never overlaps an older live allocation), liveness "
              "(nothing older live → never waits, empty ring and wraps included), watermark monotonic and never "
              "ahead of live data, whole ring usable once all is freed, oversized refused."),
    Invariant("lifecycle", "Request lifecycle",
              "Each chunk scattered exactly once after all distinct writer slots arrived, in any order with "
              "duplicates and late messages; pages at prefix + page offset; failures (abort, timeout, oversized, "
              "misaligned prefix, a writer that never arrives, partial writes) stay contained and release frees "
              "everything; Hypothesis state machines drive the allocator and handler through random "
              "interleavings of all of these (`test_stateful.py`, `test_faults.py`)."),
    Invariant("concurrency", "Concurrent use",
              "A transfer thread (allocations, arrivals, scatter submission) and a scheduler thread (polls, "
              "aborts, releases) drive the handler at once: no exception, hang, lost byte or leak."),
    Invariant("device", "Accelerator behaviour",
              "On CUDA: results bit-identical to the CPU run, no host sync in the per-chunk hot path (gather, "
              "arrival, scatter submission), scatters on a side stream, regions freed only after their "
              "scatter completed."),
    Invariant("bad_topology", "Bad topology",
              "Invalid configurations raise a `ValueError` that names the problem, before any byte moves."),
)

BY_ID: dict[str, Invariant] = {inv.id: inv for inv in INVARIANTS}

#: Markers around the generated invariant table in README.md.
README_BEGIN = "<!-- BEGIN invariant table: generated from harness/catalogue.py, do not edit by hand -->"
README_END = "<!-- END invariant table -->"
#: The command that rewrites README.md's table from this catalogue.
UPDATE_COMMAND = "python -m harness.catalogue --update README.md"


def markdown_table() -> str:
    """The invariants as a Markdown table: one row per id, its title and what is checked."""
    lines = ["| id | invariant | what is checked |", "|---|---|---|"]
    lines += [f"| `{inv.id}` | {inv.title} | {inv.statement} |" for inv in INVARIANTS]
    return "\n".join(lines) + "\n"


def with_table(readme: str) -> str:
    """``readme`` with the text between the markers replaced by :func:`markdown_table`."""
    head, begin, rest = readme.partition(README_BEGIN)
    _, end, tail = rest.partition(README_END)
    if not begin or not end:
        raise ValueError(f"README lacks the markers {README_BEGIN!r} ... {README_END!r}: add them where the table goes")
    return f"{head}{README_BEGIN}\n{markdown_table()}{README_END}{tail}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.catalogue", description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--markdown", action="store_true", help="print the invariant table as Markdown")
    action.add_argument("--update", metavar="README", type=Path, help="rewrite the table between the markers in README")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown_table(), end="")
    else:
        args.update.write_text(with_table(args.update.read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
