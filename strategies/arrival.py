"""Orders in which "chunk ready" messages reach the decode side."""

from __future__ import annotations

from typing import Any, Hashable, Sequence, TypeVar

from hypothesis import strategies as st

Slot = TypeVar("Slot", bound=Hashable)


def _canonical_order(slots: Sequence[Slot]) -> list[Slot]:
    """Sorted when the slots are comparable, else as given."""
    comparable: Sequence[Any] = slots  # Hashable promises no ordering: sorting is tried, not assumed
    try:
        return sorted(comparable)
    except TypeError:
        return list(slots)


@st.composite
def _arrival_orders(draw, base, max_duplicates):
    events = list(draw(st.permutations(base)))
    extra = draw(st.integers(0, max_duplicates))
    for _ in range(extra):
        slot = draw(st.sampled_from(base))
        # Inserting at the end shrinks best: duplicates trail the run, late.
        at = len(events) - draw(st.integers(0, len(events)))
        events.insert(at, slot)
    return events


def arrival_orders(slots: Sequence[Slot], duplicates: bool = True, max_duplicates: int | None = None
                   ) -> st.SearchStrategy[list[Slot]]:
    """Event lists containing every slot of ``slots`` (e.g. ``(chunk, writer)``
    pairs) at least once, interleaved in any order; with ``duplicates`` up to
    ``max_duplicates`` (default ``len(slots)``) extra copies of slots, anywhere,
    including before the original and after everything else.

    Shrinks toward the sorted slots (or the given order if unsortable) with no
    duplicates.  ``slots`` must be distinct.
    """
    base = _canonical_order(slots)
    if len(set(base)) != len(base):
        raise ValueError(f"slots must be distinct, got {list(slots)!r}")
    if not base:
        return st.just([])
    cap = len(base) if max_duplicates is None else max_duplicates
    if cap < 0:
        raise ValueError(f"max_duplicates must be >= 0, got {max_duplicates}")
    return _arrival_orders(base, cap if duplicates else 0)
