"""Stateful testing: random interleavings of the allocator's and the decode handler's operations.

Two Hypothesis state machines, run against the plugged-in implementation:

* ``AllocatorMachine`` drives the ring allocator alone: assigns (oversized
  ones too), frees in any order (double and unknown frees too), and prefill
  writers that write a region once the watermark they heard allows it.  After
  every step: no written live region was overwritten, the watermark never
  moves back nor passes live data, a writer never waits when nothing older is
  live; ``drain`` frees everything and the whole ring must restart at 0.
* ``HandlerMachine`` drives the decode staging handler with several requests
  at once (see ``harness.engine.rank``): registration with any receiver,
  chunk allocation, writers writing (sometimes only part of their bytes, then
  dying), arrivals in any order, duplicated, stray ones, prefill done, polls,
  aborts, clock ticks past the timeout, oversized chunks, misaligned
  prefixes, release, and late messages after release.  After every step:
  every pool byte is untouched or correct, chunks wait for all their writer
  slots, failures have a cause and touch nobody else, nothing leaks, buffers
  were not written outside their bounds.

On failure Hypothesis prints the shrunk step sequence (``state.register(...)``
...).  The implementation runs behind ``harness.guard``: a raise, a garbage
answer or a hang is reported as a failure of the machine's invariant.
"""

from __future__ import annotations

import random
import sys
from typing import Any

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import (Bundle, RuleBasedStateMachine, initialize, invariant, multiple, precondition, rule,
                                 run_state_machine_as_test)

import strategies as kst
from harness.guard import guard
from harness.engine.ledger import Ledger
from harness.engine.rank import Rank
from harness.engine.shapes import plan_request, rank_shapes

MAX_REQUESTS = 4
TIMEOUT_S = 10.0


def machine_settings(**overrides) -> settings:
    """The loaded profile, with a modest number of steps per run (more under the larger profiles)."""
    steps = 30 if settings().max_examples <= 25 else 50  # settings(): the loaded profile's values
    return settings(settings.default, **{"stateful_step_count": steps, **overrides})


# -- the allocator alone ----------------------------------------------------------------------
class AllocatorRules(RuleBasedStateMachine):
    """Rules over ``impl.make_allocator``, judged by the engine's ledger; ``impl`` is set by :func:`allocator_machine`."""

    impl: Any = None

    def __init__(self) -> None:
        super().__init__()
        self._ledger: Ledger | None = None

    @initialize(capacity=st.integers(1, 96))
    def build(self, capacity: int) -> None:
        self.capacity = capacity
        self._ledger = Ledger(self.impl.make_allocator(capacity), capacity)
        self.heard = (0, 0)

    @property
    def ledger(self) -> Ledger:
        """The ledger ``build`` made; Hypothesis runs that initialize rule before any other rule."""
        if self._ledger is None:
            raise RuntimeError("AllocatorRules.ledger used before the build rule ran")
        return self._ledger

    @rule(nbytes=st.integers(1, 32))
    def assign(self, nbytes: int) -> None:
        self.ledger.assign(nbytes)
        self.ledger.raise_if_violated()

    @rule(extra=st.integers(0, 1))
    def assign_whole_ring(self, extra: int) -> None:
        """Exactly the capacity (must be placed) or one byte more (must be refused)."""
        self.ledger.assign(self.capacity + extra)
        self.ledger.raise_if_violated()

    @rule(pick=st.integers(0, 15))
    def free(self, pick: int) -> None:
        live = self.ledger.live()
        if live:
            self.ledger.free(live[pick % len(live)].alloc_id)

    @rule(pick=st.integers(0, 15))
    def free_again_or_unknown(self, pick: int) -> None:
        dead = [p for p in self.ledger.ledger if not p.live]
        self.ledger.free(dead[pick % len(dead)].alloc_id if dead else 10**9 + pick)

    @rule(pick=st.integers(0, 15))
    def writer_writes(self, pick: int) -> None:
        """A prefill writer reads the watermark and writes its region if allowed."""
        live = self.ledger.live()
        if not live:
            return
        target = live[pick % len(live)]
        self.heard = max(self.heard, self.ledger.watermark())
        may_write = bool(self.impl.writer_may_write(target.round, target.end, self.heard))
        self.ledger.judge_writer(target, self.heard, may_write)
        if may_write:
            self.ledger.wrote(target, target.offset, target.nbytes)

    @rule()
    def drain(self) -> None:
        """Free everything: the whole ring must then be one writable allocation at offset 0."""
        for p in self.ledger.live():
            self.ledger.free(p.alloc_id)
        self.check_ledger()
        self.ledger.check_empty_ring(self.impl.writer_may_write)

    @invariant()
    def check_ledger(self) -> None:
        """The watermark never moves back nor passes live data; written live data is intact."""
        if self._ledger is None:
            return
        self.ledger.watermark()
        self.ledger.raise_if_violated()
        self.ledger.check_written()


def allocator_machine(impl) -> type[RuleBasedStateMachine]:
    return type("AllocatorMachine", (AllocatorRules,), {"impl": guard(impl)})


@pytest.mark.invariant("allocator", requires=("allocator",), since="1.0")
def test_allocator_state_machine(impl):
    run_state_machine_as_test(allocator_machine(impl), settings=machine_settings())


# -- the decode staging handler ---------------------------------------------------------------
#: Staged receivers three times in four.  Drawn inside the rule (``st.data()``): Hypothesis reprs rule
#: strategies, and the receiver strategy's repr pretty-prints its mock classes, which fails there
#: (``strategies.receiver._LabelledMock._repr_pretty_`` is unbound when looked up on the class).
_RECEIVERS = st.one_of(kst.staged_receivers(), kst.receivers())


class HandlerRules(RuleBasedStateMachine):
    """Rules over one decode rank's handler; ``impl`` and ``device`` are set by :func:`handler_machine`.

    ``pick`` chooses a chunk modulo the request's chunk count and ``slot`` a
    writer slot modulo the slot count.  Coarse rules (``send_chunk``,
    ``send_request``, ``scheduler_pass``) make progress in a few steps;
    fine ones (``write``, ``arrive``) interleave single writers.  A rule that
    does not apply to the chosen request (e.g. a write for a plain request)
    does nothing, and the shrinker drops it.
    """

    impl: Any = None
    device = "cpu"
    requests = Bundle("requests")

    def __init__(self) -> None:
        super().__init__()
        self._rank: Rank | None = None

    @initialize(target=requests, shape=rank_shapes(), tokens=st.integers(1, 12), chunk_pages=st.integers(1, 3),
                data=st.data())
    def build(self, shape, tokens, chunk_pages, data):
        """The rank and two staged requests, so that rules interleave requests from the first step."""
        self._rank = Rank(self.impl, shape, self.device, max_requests=MAX_REQUESTS, timeout_s=TIMEOUT_S)
        first, second = (data.draw(kst.staged_receivers(), label="receiver") for _ in range(2))
        return multiple(self.rank.register(plan_request(shape, tokens, 0, chunk_pages, False, 0), first),
                        self.rank.register(plan_request(shape, tokens, 0, chunk_pages, False, 1), second))

    @property
    def rank(self) -> Rank:
        """The rank ``build`` made; Hypothesis runs that initialize rule before any other rule."""
        if self._rank is None:
            raise RuntimeError("HandlerRules.rank used before the build rule ran")
        return self._rank

    # -- helpers ---------------------------------------------------------------------------
    def _open(self, rid: int, staged: bool = True):
        """The tracked request if it is not released and (when asked) staged, else None."""
        t = self.rank.requests[rid]
        return None if t.released or (staged and not t.staged) else t

    def _send(self, t, chunk: int, order_seed: int, duplicate: bool, upto: int = 4) -> bool:
        """Allocate, write up to ``upto`` remaining slots (until one must wait) and report them, shuffled;
        whether every slot of the chunk was written."""
        if chunk not in t.placed and self.rank.allocate(t.rid, chunk) is None:
            return False
        placement, writers = t.placed[chunk], self.rank.num_writers
        for slot in [s for s in range(writers) if s not in t.written[chunk] and (chunk, s) not in t.dead_writers][:upto]:
            if not self.rank.wait_writable(placement, attempts=4, must=False):
                return False
            self.rank.write(t.rid, chunk, slot)
        order = [s for s in sorted(t.written[chunk]) if s not in t.arrived[chunk]]
        random.Random(order_seed).shuffle(order)
        if duplicate and t.written[chunk]:
            order.insert(order_seed % (len(order) + 1), min(t.written[chunk]))
        for slot in order:
            self.rank.arrive(t.rid, chunk, slot)
        return len(t.written[chunk]) == writers

    # -- scheduler side --------------------------------------------------------------------
    @precondition(lambda self: self._rank is not None and len(self.rank.requests) < MAX_REQUESTS)
    @rule(target=requests, tokens=st.integers(1, 12), prefix_pages=st.integers(0, 3), chunk_pages=st.integers(1, 3),
          misaligned=st.integers(0, 5).map(lambda x: x == 5), seed=st.integers(0, 255), data=st.data())
    def register(self, tokens, prefix_pages, chunk_pages, misaligned, seed, data):
        receiver = data.draw(_RECEIVERS, label="receiver")
        return self.rank.register(plan_request(self.rank.shape, tokens, prefix_pages, chunk_pages, misaligned, seed), receiver)

    @rule()
    def scheduler_pass(self) -> None:
        """The scheduler polls every open request once (settling the complete ones)."""
        for rid, t in list(self.rank.requests.items()):
            if not t.released:
                self.rank.poll(rid)

    @rule(rid=requests)
    def poll(self, rid: int) -> None:
        if self._open(rid, staged=False):
            self.rank.poll(rid, settle=False)

    @rule(rid=requests)
    def abort(self, rid: int) -> None:
        if self._open(rid, staged=False):
            self.rank.abort(rid)

    @rule(rid=requests)
    def release(self, rid: int) -> None:
        if self._open(rid, staged=False):
            self.rank.release(rid)

    # -- transfer side ---------------------------------------------------------------------
    @rule(rid=requests, pick=st.integers(0, 3))
    def allocate(self, rid: int, pick: int) -> None:
        t = self._open(rid)
        if t:
            self.rank.allocate(rid, pick % len(t.grid))

    @rule(rid=requests, pick=st.integers(0, 3), slot=st.integers(0, 3), partial=st.integers(0, 3).map(lambda x: x == 3))
    def write(self, rid: int, pick: int, slot: int, partial: bool) -> None:
        """One writer waits for the watermark, then writes its part (``partial``: half of it, then it dies)."""
        t = self._open(rid)
        if not t:
            return
        chunk, slot = pick % len(t.grid), slot % self.rank.num_writers
        placement = t.placed.get(chunk)
        if placement is None or slot in t.written[chunk] or (chunk, slot) in t.dead_writers:
            return
        if self.rank.writable(placement):
            self.rank.write(rid, chunk, slot, fraction=0.5 if partial else 1.0)

    @rule(rid=requests, pick=st.integers(0, 3), slot=st.integers(0, 3))
    def arrive(self, rid: int, pick: int, slot: int) -> None:
        """A writer that wrote its part reports it (again, for a duplicate)."""
        t = self.rank.requests[rid]
        if t.staged:
            chunk, slot = pick % len(t.grid), slot % self.rank.num_writers
            if slot in t.written[chunk]:
                self.rank.arrive(rid, chunk, slot)

    @rule(rid=requests, pick=st.integers(0, 3), order_seed=st.integers(0, 7), duplicate=st.booleans(),
          upto=st.integers(1, 4))
    def send_chunk(self, rid: int, pick: int, order_seed: int, duplicate: bool, upto: int) -> None:
        """Up to ``upto`` remaining writers of one chunk write and report, in a shuffled order, maybe twice."""
        t = self._open(rid)
        if t:
            self._send(t, pick % len(t.grid), order_seed, duplicate, upto)

    @rule(rid=requests, order_seed=st.integers(0, 7))
    def send_request(self, rid: int, order_seed: int) -> None:
        """Prefill sends every chunk (chunks in order, writers shuffled) and then reports success."""
        t = self._open(rid, staged=False)
        if t is None:
            return
        if t.staged and not all(self._send(t, chunk, order_seed + chunk, False) for chunk in range(len(t.grid))):
            return
        self.rank.prefill_done(rid)

    @rule(rid=requests)
    def prefill_done(self, rid: int) -> None:
        """Prefill reports success once every writer wrote (arrivals may still be in flight)."""
        t = self._open(rid, staged=False)
        if t and not (t.staged and any(len(t.written[c]) < self.rank.num_writers for c in range(len(t.grid)))):
            self.rank.prefill_done(rid)

    @rule(rid=requests, kind=st.sampled_from(("clock +4s", "clock past timeout", "oversized chunk",
                                              "slot out of range", "unknown chunk", "unknown request",
                                              "late messages")), pick=st.integers(0, 3))
    def fault(self, rid: int, kind: str, pick: int) -> None:
        """Time passing, an oversized chunk (each may fail its request alone), or stray messages that match
        nothing (they change nothing); after release, arrivals, prefill done, abort and allocation asks are
        ignored and allocate nothing."""
        t, writers = self.rank.requests[rid], self.rank.num_writers
        chunk = pick % len(t.grid)
        if kind.startswith("clock"):
            self.rank.tick(4.0 if kind == "clock +4s" else TIMEOUT_S + 1)
        elif kind == "oversized chunk":
            if self._open(rid) and chunk not in t.placed:
                self.rank.allocate(rid, chunk, nbytes=self.rank.capacity + 1)
        elif kind == "slot out of range":
            self.rank.handler.chunk_arrived(rid, chunk, writers + pick, *t.grid[chunk])
        elif kind == "unknown chunk":
            self.rank.handler.chunk_arrived(rid, len(t.grid) + pick, 0, *t.grid[chunk])
        elif kind == "unknown request":
            self.rank.handler.chunk_arrived(10**6 + rid, chunk, 0, *t.grid[chunk])
        elif t.released:
            for slot in range(writers):
                self.rank.handler.chunk_arrived(rid, chunk, slot, *t.grid[chunk])
            self.rank.handler.prefill_done(rid)
            self.rank.handler.fail(rid, "late abort")
            if t.staged:
                self.rank.allocate(rid, chunk)

    # -- after every step ------------------------------------------------------------------
    @invariant()
    def bytes_and_allocations(self) -> None:
        if self._rank is not None:
            self.rank.check_all()

    def teardown(self) -> None:
        """Release whatever is left; then nothing may be held (skipped when a step already failed)."""
        if self._rank is None or sys.exc_info()[0] is not None:
            return
        for rid, t in list(self.rank.requests.items()):
            if not t.released:
                self.rank.release(rid)
        self.rank.check_drained()


def handler_machine(impl, device: str = "cpu") -> type[RuleBasedStateMachine]:
    return type("HandlerMachine", (HandlerRules,), {"impl": guard(impl), "device": device})


@pytest.mark.invariant("lifecycle", requires=("allocator", "decode_handler"), since="1.0")
def test_lifecycle_handler_state_machine(impl, device):
    run_state_machine_as_test(handler_machine(impl, device), settings=machine_settings())
