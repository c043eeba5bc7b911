"""Integer sizes that reach their boundaries, not only small values.

Bugs in size arithmetic live at the edges: the smallest and largest size, a
power of two and its neighbours (where a rounded-up block or tile stops being
exact), the sizes where an implementation switches code path or an integer
width overflows.  :func:`boundary_values` lists those edges inside a range and
:func:`sizes` draws them often (about one draw in two) on top of a uniform
draw, so a 40-example run meets them while shrinking still heads for the
smallest size.  :func:`steer` is ``hypothesis.target`` for strategies: it
rewards draws that reach a hard region (many live allocations, a full ring)
so Hypothesis's targeting phase pushes further into it.
"""

from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context, target
from hypothesis.errors import InvalidArgument

#: Sizes where copy kernels switch code paths or counters overflow: 16-byte vectors, Triton tile rows
#: (the reference's default tile is 16 KiB), page/block sizes of real engines, and integer widths.
SWITCH_POINTS: tuple[int, ...] = (16, 256, 1024, 4096, 16384, 1 << 15, 1 << 16, 1 << 31, 1 << 32, 1 << 63)


def boundary_values(lo: int, hi: int, edges: tuple[int, ...] = ()) -> tuple[int, ...]:
    """Sorted edges inside ``[lo, hi]``: ``lo``, ``lo + 1``, ``hi - 1``, ``hi``, every power of two and
    its neighbours, and every value of ``edges`` and :data:`SWITCH_POINTS` with its neighbours."""
    if lo > hi:
        raise ValueError(f"need lo <= hi, got lo={lo}, hi={hi}")
    points = {lo, lo + 1, hi - 1, hi}
    power = 1
    while power <= hi + 1:
        points.update((power - 1, power, power + 1))
        power <<= 1
    for edge in (*edges, *SWITCH_POINTS):
        points.update((edge - 1, edge, edge + 1))
    return tuple(sorted(p for p in points if lo <= p <= hi))


def sizes(lo: int, hi: int, edges: tuple[int, ...] = ()) -> st.SearchStrategy[int]:
    """Integers in ``[lo, hi]``: (about one draw in two) one of :func:`boundary_values`, else any.
    Shrinks toward ``lo`` (the edges come first: with the uniform branch first the shrinker stalled between
    the two ways of drawing the same small value)."""
    return st.sampled_from(boundary_values(lo, hi, edges)) | st.integers(lo, hi)


def steer(observation: float, label: str) -> None:
    """``hypothesis.target(observation, label=label)`` when a test is running and the label is still free
    in this test case (a test may draw the same strategy twice; the first draw steers)."""
    if not currently_in_test_context():
        return
    try:
        target(observation, label=label)
    except InvalidArgument:
        pass  # this label was already observed in this test case
