"""Allocator and watermark: safety, liveness, monotonic watermark, clean empty ring, explicit refusal.

Every rule is judged by the engine's ledger (``harness.engine.ledger``), the one allocator oracle.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given, strategies as st

import strategies as kst
from harness.engine.ledger import Ledger, Placement


def check_program(impl, capacity: int, program) -> None:
    """Run ``program`` (then free everything); after every operation every live allocation's writer is asked
    whether it may write under the current watermark, and the ledger judges the answer.  A question already
    asked (the same round, end and watermark: most operations leave the watermark where it was) is not asked
    again: ``writer_may_write`` is a function of its arguments (harness/interface.py)."""
    ledger = Ledger(impl.make_allocator(capacity), capacity)
    placed: list[Placement | None] = []
    asked: set[tuple[int, int, object]] = set()
    assigns = len([op for op in program if op[0] == "assign"])
    for op in list(program) + [("free", k) for k in range(assigns)]:
        if op[0] == "assign":
            got = ledger.assign(op[1])
            placed.append(ledger.ledger[-1] if got is not None else None)
        elif op[0] == "free":
            target = placed[op[1]] if op[1] < len(placed) else None
            if target is not None:  # double frees included
                ledger.free(target.alloc_id)
        wm = ledger.watermark()
        ledger.raise_if_violated()
        for p in ledger.live():
            question = (p.round, p.end, wm)
            if question not in asked:
                asked.add(question)
                ledger.judge_writer(p, wm, bool(impl.writer_may_write(*question)))
    ledger.check_empty_ring(impl.writer_may_write)


@st.composite
def _programs(draw):
    capacity = draw(kst.capacities())
    return capacity, draw(kst.allocator_programs(capacity))


@pytest.mark.invariant("allocator", requires=("allocator",), since="1.0")
@given(program=_programs())
@example(program=(8, [("assign", 4), ("assign", 4), ("free", 1)]))  # out-of-order free
@example(program=(8, [("assign", 6), ("assign", 6)]))  # wrap onto a live older region
@example(program=(8, [("assign", 6), ("free", 0), ("assign", 6)]))  # empty ring, then wrap
@example(program=(8, [("assign", 9)]))  # oversized
def test_allocator_program(impl, program):
    check_program(impl, *program)
