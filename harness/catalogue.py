"""The invariants kvconform checks: one id per invariant, one report row each.

Conformance tests (``harness/conformance/test_*.py``) tag themselves with
``@pytest.mark.invariant("<id>", requires=("<capability>", ...), since="<version>")``.  A test
whose required capabilities the implementation lacks is reported as
"not implemented" rather than run.

Versioning: ``since`` is the catalogue version that added the test (every conformance test
carries one, ``tests/test_spec_version.py``).  A test added with a new version says
``since=`` that version after :data:`CATALOGUE_VERSION` is bumped to it; nothing else changes.
An implementation may declare the version it targets (``catalogue_version = "1.0"``); a test
newer than that which fails is reported as ``new-since-target`` ("new since your version",
``harness.report``), not as a failure.

README.md's invariant table is generated from :data:`INVARIANTS`
(``python -m harness.docs --update README.md``); a test fails when they differ.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Version of the invariant catalogue (the ids and statements below), recorded in every report's run info.
#: Bump the minor part when an invariant is added or a statement tightened, the major part when an id is
#: removed or renamed, so reports made against different catalogues are not compared silently.
CATALOGUE_VERSION = "1.1"
#: The first catalogue version; no conformance test is older.
FIRST_CATALOGUE_VERSION = "1.0"
_VERSION = re.compile(r"^(\d+)\.(\d+)$")


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
              "scatter completed, no buffer freed while work on another stream still uses it (no "
              "`record_stream` / event wait: checked by holding side streams back and poisoning what was freed)."),
    Invariant("bad_topology", "Bad topology",
              "Invalid configurations raise a `ValueError` that names the problem, before any byte moves."),
)

BY_ID: dict[str, Invariant] = {inv.id: inv for inv in INVARIANTS}


def parse_catalogue_version(text: object) -> tuple[int, int]:
    """``(major, minor)`` of a catalogue version this suite knows (``FIRST_CATALOGUE_VERSION`` up to
    ``CATALOGUE_VERSION``); ``ValueError`` saying which versions are valid otherwise."""
    match = _VERSION.match(text) if isinstance(text, str) else None
    version = (int(match.group(1)), int(match.group(2))) if match else None
    if version is None or not (_key(FIRST_CATALOGUE_VERSION) <= version <= _key(CATALOGUE_VERSION)):
        raise ValueError(f"{text!r} is not a catalogue version this kvconform knows: use 'MAJOR.MINOR' from "
                         f"{FIRST_CATALOGUE_VERSION} to {CATALOGUE_VERSION} (a newer target needs a newer kvconform)")
    return version


def newer_than(since: str, target: str) -> bool:
    """Whether a test added in catalogue version ``since`` is newer than version ``target`` (both valid)."""
    return parse_catalogue_version(since) > parse_catalogue_version(target)


def _key(version: str) -> tuple[int, int]:
    major, _, minor = version.partition(".")
    return int(major), int(minor)
