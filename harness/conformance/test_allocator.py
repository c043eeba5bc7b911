"""Allocator and watermark: safety, liveness, monotonic watermark, clean empty ring, explicit refusal."""

from __future__ import annotations

import pytest
from hypothesis import example, given, strategies as st

import strategies as kst
from harness.cluster import Placed
from harness.oracles import InvariantViolation


def _fail(msg: str, history: list[str]) -> None:
    raise InvariantViolation(f"[allocator] {msg}\n  operations so far: {'; '.join(history)}")


def check_program(impl, capacity: int, program) -> None:
    alloc = impl.make_allocator(capacity)
    placed: list[Placed | None] = []
    history: list[str] = []
    last_wm = tuple(alloc.watermark())
    for op in list(program) + [("free", k) for k in range(len([o for o in program if o[0] == "assign"]))]:
        if op[0] == "assign":
            got = alloc.assign(op[1])
            history.append(f"assign({op[1]}) -> {got}")
            if op[1] > capacity:
                if got is not None:
                    _fail(f"assign({op[1]}) on a {capacity}-byte ring was not refused", history)
                placed.append(None)
                continue
            if got is None:
                _fail(f"assign({op[1]}) refused although it fits the {capacity}-byte ring", history)
            p = Placed(got[0], got[1], op[1], got[2])
            if p.offset < 0 or p.end > capacity:
                _fail(f"{p} lies outside the ring [0, {capacity})", history)
            placed.append(p)
        elif op[0] == "free":
            target = placed[op[1]] if op[1] < len(placed) else None
            if target is not None:
                alloc.free(target.alloc_id)
                target.live = False
                history.append(f"free(#{op[1]})")
        wm = tuple(alloc.watermark())
        if wm < last_wm:
            _fail(f"watermark moved backwards: {last_wm} -> {wm}", history)
        last_wm = wm
        live = [p for p in placed if p is not None and p.live]
        for i, x in enumerate(live):
            if wm > (x.round, x.offset):
                _fail(f"watermark {wm} is ahead of live allocation {x}", history)
            older = live[:i]
            ready = impl.writer_may_write(x.round, x.end, wm)
            clash = [y for y in older if y.offset < x.end and x.offset < y.end]
            if ready and clash:
                _fail(f"writer of {x} may write under watermark {wm} while older live {clash[0]} overlaps it (safety)", history)
            if not ready and not older:
                _fail(f"writer of {x} kept waiting under watermark {wm} although nothing older is live (liveness)", history)
    # Everything is free now: the whole ring must be usable at once.
    got = alloc.assign(capacity)
    history.append(f"assign({capacity}) -> {got}")
    if got is None or got[1] != 0:
        _fail(f"after freeing everything, assign({capacity}) gave {got}; the ring still holds something", history)
    if not impl.writer_may_write(got[2], capacity, tuple(alloc.watermark())):
        _fail(f"after freeing everything, the whole-ring allocation {got} is not writable under {alloc.watermark()}", history)


@st.composite
def _programs(draw):
    capacity = draw(kst.capacities())
    return capacity, draw(kst.allocator_programs(capacity))


@pytest.mark.invariant("allocator", requires=("allocator",))
@given(program=_programs())
@example(program=(8, [("assign", 4), ("assign", 4), ("free", 1)]))  # out-of-order free
@example(program=(8, [("assign", 6), ("assign", 6)]))  # wrap onto a live older region
@example(program=(8, [("assign", 6), ("free", 0), ("assign", 6)]))  # empty ring, then wrap
@example(program=(8, [("assign", 9)]))  # oversized
def test_allocator_program(impl, program):
    check_program(impl, *program)
