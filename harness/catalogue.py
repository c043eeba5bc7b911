"""The invariants kvconform checks: one id per invariant, one report row each.

Conformance tests (``harness/conformance/test_*.py``) tag themselves with
``@pytest.mark.invariant("<id>", requires=("<capability>", ...))``.  A test
whose required capabilities the implementation lacks is reported as
"not implemented" rather than run.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Invariant:
    id: str
    title: str
    statement: str


INVARIANTS: tuple[Invariant, ...] = (
    Invariant("head_coverage", "Head coverage",
              "Every head a decode rank must hold is written with the right global head's data; "
              "no writer's source or destination range leaves its rank's heads."),
    Invariant("layout", "Staging layout",
              "Writer regions are disjoint, ordered and sum to the total; sizes follow from "
              "tokens, heads, head_dim, element size and layers."),
    Invariant("round_trip", "Round trip",
              "gather -> transfer -> scatter leaves each decode rank's pages bit-identical to "
              "ground truth, all layers, K and V."),
    Invariant("isolation", "Isolation",
              "Nothing outside the request's pages changes in the decode pool, gather leaves "
              "prefill pools untouched, nothing is written outside the staging allocation."),
    Invariant("path_equivalence", "Path equivalence",
              "Staged path, non-staged path and (for equal TP) plain copy give identical decode KV."),
    Invariant("receivers", "Receivers",
              "Any receiver object goes through the whole decode lifecycle without an exception; "
              "only a truthy require_staging takes the staged path."),
    Invariant("allocator", "Allocator and watermark",
              "Writers that respect the watermark never write a live allocation; a writer with "
              "nothing older live never waits; the watermark never moves backwards nor ahead of "
              "live data; nothing is held once all is freed; oversized requests are refused."),
    Invariant("lifecycle", "Request lifecycle",
              "Each chunk is scattered exactly once, after all its writer slots arrived, in any "
              "order; duplicates and late messages are harmless; pages land at prefix + page "
              "offset; failure and release free everything and leave other requests alone."),
    Invariant("concurrency", "Concurrent use",
              "Driven from a transfer thread (allocations, arrivals, scatter submission) and a scheduler "
              "thread (polls, aborts, releases) at once, the handler keeps the lifecycle and allocator "
              "invariants: no exception, no hang, no lost or corrupted byte, no leaked allocation."),
    Invariant("device", "Accelerator behaviour",
              "On an accelerator: results bit-identical to the CPU run of the same example, no host "
              "synchronisation inside the per-chunk hot path (gather, arrival, scatter submission), "
              "and staging regions freed only after their scatter completed."),
    Invariant("bad_topology", "Bad topology",
              "Invalid configurations raise a clear ValueError instead of moving bytes."),
)

BY_ID: dict[str, Invariant] = {inv.id: inv for inv in INVARIANTS}
