"""The one decode-rank driver: an implementation's handler with its ring, pool, ledger and request model.

A :class:`Rank` is what every rank test drives, whatever the plan: one request moved from a ``World``
(round trip, lifecycle, receivers, device, distributed mode) or many requests interleaved (state
machines, faults, concurrency).  It plays the roles around the handler: the scheduler (register, poll,
abort, release, the clock), the transfer side (allocate, writers that honour the watermark and write
their part, arrivals) and the judge (see ``ledger``, ``model``, ``pool``; every buffer the implementation
gets sits between canary margins).  Writers either pack their part from the request's ground truth or,
for a request of a ``World``, gather it from the world's prefill pools with the implementation's gather.

Declared scope limits are applied here to what the rank is built from and to each request it registers,
so the stress suites generate inside an implementation's scope like every other test.  Safe to drive from
two threads (a transfer and a scheduler thread).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from harness import case_classes, oracles, scope
from harness.engine.buffers import GARBAGE_BYTE, CanaryFence
from harness.engine.ledger import Ledger, Placement
from harness.engine.model import RequestModel, Tracked
from harness.engine.pool import SPARE_PAGES, DecodePool, seeded_truth, world_truth
from harness.engine.shapes import MAX_TOKENS, RankShape, RequestPlan
from harness.engine.writers import MAX_POLLS, check_span, chunk_layout, gather, wait_until_writable, writer_plans
from harness.interface import PENDING
from harness.oracles import InvariantViolation
from harness.world import CANARY_BYTE, World, slots_of


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Rank:
    """The implementation's handler on one decode rank, with fenced buffers, writers and oracles.

    ``world``: the rank is decode pool ``shape.decode_index`` of that world (its pool, its ground truth, its
    prefill pools for gathering); else a pool of its own sized for ``max_requests`` of ``max_tokens``.
    ``ring_bytes`` defaults to the largest chunk times ``shape.ring_chunks``.
    """

    def __init__(self, impl: Any, shape: RankShape, device: str | torch.device, *, max_requests: int = 1,
                 ring_bytes: Optional[int] = None, timeout_s: float = 10.0, max_tokens: int = MAX_TOKENS,
                 world: Optional[World] = None, first_request_id: int = 1) -> None:
        self.impl, self.device, self.world = impl, torch.device(device), world
        self.shape = shape = scope.fit(impl, shape)
        case_classes.label_shape(shape)
        self.plans = writer_plans(impl, shape, world)
        self.num_writers = len(self.plans)
        self.timeout_s = timeout_s
        self.clock = FakeClock()
        self.fence = CanaryFence(self.device)
        self._layouts: dict[int, tuple[int, list[tuple[int, int]]]] = {}
        pages = max_requests * -(-max_tokens // shape.page_size) + SPARE_PAGES
        self.pool = DecodePool(shape, self.device, self.fence, pages, world)
        capacity = ring_bytes if ring_bytes is not None else self.largest_chunk_bytes() * shape.ring_chunks
        self.ring = self.fence.bytes(capacity, "staging ring", CANARY_BYTE)
        self.ledger = Ledger(impl.make_allocator(capacity), capacity, self.ring)
        self.model = RequestModel(self.num_writers, timeout_s)
        self.ledger.on_free = self._judge_free
        self.handler = impl.make_decode_handler(
            staging=self.ring, allocator=self.ledger, k_layers=self.pool.k, v_layers=self.pool.v,
            page_size=shape.page_size, num_writers=self.num_writers,
            writer_destinations=[(p.destination_start, p.layer_start) for p in self.plans],
            heads_per_writer=self.plans[0].count, layers_per_writer=shape.layers_per_writer,
            timeout_s=timeout_s, clock=self.clock)
        self.heard_watermark = (0, 0)  # what prefill writers last heard; only ever raised
        self._next_rid = first_request_id

    @property
    def capacity(self) -> int:
        return self.ring.numel()

    @property
    def requests(self) -> dict[int, Tracked]:
        return self.model.requests

    def chunk_bytes(self, tokens: int) -> tuple[int, list[tuple[int, int]]]:
        """Staging bytes of a chunk of ``tokens`` and its writer spans, asked of the implementation once."""
        if tokens not in self._layouts:
            spans = chunk_layout(self.impl, self.shape, self.plans, tokens, self.world)
            self._layouts[tokens] = sum(n for _, n in spans), spans
        return self._layouts[tokens]

    def largest_chunk_bytes(self) -> int:
        return self.chunk_bytes(self.shape.max_chunk_pages * self.shape.page_size)[0]

    # -- scheduler side --------------------------------------------------------------------
    def register(self, plan: RequestPlan, receiver: Any, *, from_world: bool = False) -> int:
        """Lay out pages, fill the cached prefix, register; the staged/plain answer must follow the receiver.

        ``from_world``: the request is the world's (its ground truth; writers gather from prefill pools)."""
        shape, rid = self.shape, self._next_rid
        self._next_rid += 1
        plan = scope.fit_plan(self.impl, plan, shape.page_size)
        case_classes.label_request(plan.num_tokens, plan.prefix_len, shape.page_size)
        case_classes.label_receiver(receiver)
        table = self.pool.page_table(plan)
        truth = world_truth(self.require_world(), shape) if from_world else seeded_truth(shape, plan, self.device)
        staged = oracles.expects_staging(receiver)
        t = Tracked(rid, plan, receiver, staged, table, slots_of(table, shape.page_size, plan.num_tokens), truth,
                    oracles.chunk_grid(plan.prefix_len, plan.num_tokens, shape.page_size, plan.chunk_pages),
                    self.clock(), gathered=from_world)
        if staged and plan.prefix_len % shape.page_size:
            t.cause = "misaligned prefix"
            case_classes.record("fault", t.cause)
        self.pool.fill(t, 0, plan.prefix_len)
        self.requests[rid] = t
        answer = self.handler.register(rid, receiver, table, plan.prefix_len, plan.num_tokens)
        if bool(answer) != staged:
            raise InvariantViolation(f"{receiver!r} took the {'staged' if answer else 'plain'} path; "
                                     f"require_staging is {'truthy' if staged else 'absent or falsy'}")
        return rid

    def poll(self, rid: int, settle: bool = True) -> str:
        """Poll (repeatedly while a complete request is pending, when ``settle``) and judge the state."""
        t = self.requests[rid]
        state = self.handler.poll(rid)
        for _ in range(MAX_POLLS if settle else 0):
            if state != PENDING or not self.model.complete(t):
                break
            self._sync()
            state = self.handler.poll(rid)
        self.model.judge(t, state, self.clock(), settle, MAX_POLLS, lambda: self.reason(rid))
        return state

    def expect(self, rid: int, want: str, settle: bool = True) -> str:
        """Poll; the request must be in state ``want``."""
        state = self.poll(rid, settle)
        if state != want:
            reason = self.reason(rid)
            raise InvariantViolation(f"request {rid} is {state!r}, expected {want!r}" + (f" ({reason})" if reason else ""))
        return state

    def abort(self, rid: int, reason: str = "aborted by the test") -> None:
        self.model.set_cause(self.requests[rid], "aborted")
        self.handler.fail(rid, reason)

    def tick(self, seconds: float) -> None:
        self.clock.now += seconds
        for t in self.requests.values():
            if not t.released and self.clock() - t.registered_at > self.timeout_s:
                self.model.set_cause(t, "timed out")

    def release(self, rid: int) -> None:
        """Release; afterwards nothing may be held for the request."""
        t = self.requests[rid]
        t.released = True
        self.handler.release(rid)
        t.release_returned = True
        self.ledger.raise_if_violated()
        held = [p for p in self.ledger.live() if p.owner is not None and p.owner[0] == rid]
        if held:
            raise InvariantViolation(f"release of request {rid} left allocations held: {held} (leak)")

    def raise_if_leaked(self) -> None:
        """No live allocation belongs to a request whose release returned (checkable while other threads run)."""
        for p in self.ledger.live():
            if p.owner is not None and self.requests[p.owner[0]].release_returned:
                raise InvariantViolation(f"allocation {p} of chunk {p.owner[1]} is still held after request "
                                         f"{p.owner[0]} was released (leak)")

    def reason(self, rid: int) -> str:
        getter = getattr(self.handler, "failure_reason", None)
        return getter(rid) if callable(getter) else ""

    # -- transfer side ---------------------------------------------------------------------
    def allocate(self, rid: int, chunk: int, nbytes: Optional[int] = None) -> Optional[Placement]:
        """Ask for a chunk's region twice; both answers must agree and match one allocation of that size.

        Judged conservatively, so the scheduler thread may abort or release the request meanwhile: only a
        request released *before* the ask must get nothing, only one with no cause at all must not be refused.
        """
        t = self.requests[rid]
        size, spans = self.chunk_bytes(t.grid[chunk][2])
        nbytes = size if nbytes is None else nbytes
        released_before, before = t.released, len(self.ledger.ledger)
        if nbytes > self.capacity:
            self.model.set_cause(t, "oversized chunk")
        answer = self.handler.allocate_chunk(rid, chunk, nbytes)
        self.ledger.raise_if_violated()
        if answer is None:
            fresh = [p for p in self.ledger.ledger[before:] if p.live]  # only the transfer side allocates
            if fresh:
                raise InvariantViolation(f"allocate_chunk({rid}, {chunk}) refused but keeps {fresh} (leak)")
            if not (t.cause or t.released or t.observed != PENDING):
                raise InvariantViolation(f"chunk {chunk} of {nbytes} bytes refused by the {self.capacity}-byte "
                                         f"ring for pending request {rid}")
            return None
        answer = tuple(int(x) for x in answer)
        again = self.handler.allocate_chunk(rid, chunk, nbytes)
        if (again is None and not (t.cause or t.released)) or (again is not None and tuple(int(x) for x in again) != answer):
            raise InvariantViolation(f"chunk {chunk} of request {rid} allocated twice: {answer} then {again}")
        if released_before:
            raise InvariantViolation(f"allocate_chunk answered {answer} for released request {rid} (leak)")
        earlier = t.placed.get(chunk)
        if earlier is not None:  # a repeated ask, maybe after the region was freed: the same answer
            if answer != (earlier.offset, earlier.round, earlier.end):
                raise InvariantViolation(f"chunk {chunk} of request {rid} was answered "
                                         f"{(earlier.offset, earlier.round, earlier.end)}, later {answer}")
            return earlier
        placement = self.ledger.placement_of(answer, nbytes)
        if placement is None or placement.owner not in (None, (rid, chunk)) or not (placement.live or t.cause or t.released):
            raise InvariantViolation(f"allocate_chunk({rid}, {chunk}, {nbytes}) answered {answer}, which "
                                     f"matches no live allocation of its own")
        placement.owner = (rid, chunk)
        t.placed[chunk], t.spans[chunk] = placement, spans
        return placement

    def ask_writer(self, placement: Placement, watermark: tuple[int, int]) -> tuple[bool, tuple[int, int]]:
        """The writer of ``placement`` hears ``watermark`` (keeping the highest it heard) and decides."""
        self.heard_watermark = max(self.heard_watermark, watermark)
        heard = self.heard_watermark
        return bool(self.impl.writer_may_write(placement.round, placement.end, heard)), heard

    def writable(self, placement: Placement, strict: bool = True) -> bool:
        """Whether a writer may write now, asked once; safety always judged, liveness when ``strict``."""
        may_write, heard = self.ask_writer(placement, self.ledger.watermark())
        self.ledger.raise_if_violated()
        self.ledger.judge_writer(placement, heard, may_write, strict)
        return may_write

    def wait_writable(self, placement: Placement, progress: Optional[Callable[[], None]] = None, **kwargs: Any) -> bool:
        """The writer waits for the watermark while the scheduler polls the owners of older live regions (or
        ``progress`` runs: a scheduler thread of the test's own polls); see
        :func:`~harness.engine.writers.wait_until_writable` for ``kwargs``."""
        return wait_until_writable(self.ledger, placement, lambda wm: self.ask_writer(placement, wm),
                                   progress or (lambda: self.poll_older_owners(placement)), **kwargs)

    def poll_older_owners(self, placement: Placement) -> None:
        """Let time pass (in-flight scatters finish) and poll the owners of live regions older than ``placement``."""
        self._sync()
        owners = {p.owner[0] for p in self.ledger.older_live(placement) if p.owner}
        for rid in sorted(owners):
            if not self.requests[rid].released:
                self.poll(rid)

    def write(self, rid: int, chunk: int, slot: int, fraction: float = 1.0,
              fill: Optional[Callable[[torch.Tensor], None]] = None) -> None:
        """Write a writer slot's part of the chunk (``fill`` writes it into the ring slice it is given; by default
        packed from ground truth, or gathered for a world's request).  A partial write leaves garbage after
        ``fraction`` of it and its writer never arrives."""
        t = self.requests[rid]
        placement, span = t.placed[chunk], t.spans[chunk][slot]
        check_span(slot, span, placement)
        start, nbytes = placement.offset + span[0], span[1]
        done = int(nbytes * fraction)
        target = self.ring[start:start + nbytes]
        if fill is not None:
            fill(target)
        else:
            target[:done].copy_(self._part(t, chunk, slot, nbytes)[:done])
            target[done:] = GARBAGE_BYTE
        self._sync()
        self.ledger.wrote(placement, start, nbytes)
        if fraction < 1.0:
            case_classes.record("fault", "partial write")
            t.dead_writers.add((chunk, slot))
        else:
            t.written[chunk].add(slot)

    def arrive(self, rid: int, chunk: int, slot: int) -> None:
        """Report a writer's arrival (recorded first, so a fast handler is never ahead of the model)."""
        t = self.requests[rid]
        if slot in t.arrived.get(chunk, ()):
            case_classes.record("messages", "duplicate")
        if t.released or t.observed != PENDING or len(t.arrived.get(chunk, ())) >= self.num_writers:
            case_classes.record("messages", "late")
        if 0 <= slot < self.num_writers and slot in t.written.get(chunk, ()):
            t.arrived[chunk].add(slot)
        self.handler.chunk_arrived(rid, chunk, slot, *t.grid[chunk])

    def prefill_done(self, rid: int) -> None:
        t = self.requests[rid]
        if not t.staged and not t.prefill_done:
            self.pool.fill(t, t.plan.prefix_len, t.plan.num_tokens)  # the plain backend wrote the KV itself
        t.prefill_done = True
        self.handler.prefill_done(rid)

    # -- oracles ---------------------------------------------------------------------------
    def check_ledger(self) -> None:
        """Allocator rules; nothing held for released requests or for nobody; written live data intact."""
        self.ledger.raise_if_violated()
        live = self.ledger.live()
        for p in live:
            if p.owner is None:
                raise InvariantViolation(f"allocation {p} was never answered to allocate_chunk (leak)")
            if self.requests[p.owner[0]].released:
                raise InvariantViolation(f"allocation {p} of chunk {p.owner[1]} is still held after request "
                                         f"{p.owner[0]} was released (leak)")
        written = [p for p in live if p.written]
        for i, a in enumerate(written):
            for b in written[i + 1:]:
                if a.overlaps(b):
                    raise InvariantViolation(f"live written regions overlap: {a} and {b}")
        self.ledger.check_written()

    def check_pool(self, rids: Optional[list[int]] = None) -> None:
        """Margins, then the rows of ``rids`` (default: every request, and the rows of no request)."""
        self._sync()
        self.fence.check()
        everyone = list(self.requests.values())
        chosen = everyone if rids is None else [self.requests[r] for r in rids]
        self.pool.check(chosen, everyone, self.num_writers, outside=rids is None)

    def check_not_scattered(self, rid: int, chunk: int) -> None:
        """A chunk whose writers have not all arrived is not in the pool yet (cheap: one chunk's rows)."""
        self._sync()
        self.pool.check_chunk_untouched(self.requests[rid], chunk, self.num_writers)

    def check_all(self) -> None:
        self.check_ledger()
        self.check_pool()

    def check_drained(self) -> None:
        """Every request was released: nothing may be held."""
        self.check_all()
        held = self.ledger.live()
        if held:
            raise InvariantViolation(f"every request was released but allocations are held: {held}")

    # -- internals -------------------------------------------------------------------------
    def _judge_free(self, placement: Placement) -> None:
        problem = self.model.freed_early(placement)
        if problem:
            self.ledger.violations.append(problem)

    def _part(self, t: Tracked, chunk: int, slot: int, nbytes: int) -> torch.Tensor:
        """Writer ``slot``'s bytes of a chunk, ``[K,V][layer][token][head][dim]`` of its heads and layers:
        gathered by the implementation from the world's prefill pool, or packed from ground truth."""
        plan = self.plans[slot]
        if t.gathered:
            return gather(self.impl, self.require_world().prefill[plan.prefill_index], plan, self.shape.page_size,
                          t.plan.prefix_len, t.grid[chunk], nbytes, self.device, reuse=True).inner
        page_start, _, tokens = t.grid[chunk]
        first = t.plan.prefix_len + page_start * self.shape.page_size
        part = t.truth[:, plan.layer_start:plan.layer_start + self.shape.layers_per_writer, first:first + tokens,
                       plan.destination_start:plan.destination_start + plan.count]
        return part.contiguous().view(torch.uint8).flatten()

    def require_world(self) -> World:
        if self.world is None:
            raise ValueError("a request from_world needs a Rank built with world=...")
        return self.world

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def ring_bytes_for(impl: Any, shape: RankShape, plans: list[RequestPlan]) -> int:
    """Staging bytes of every chunk of every request in ``plans`` at once (in ``impl``'s declared scope): a
    ring this large never makes one request's writer wait on another's region."""
    shape = scope.fit(impl, shape)
    slots = writer_plans(impl, shape)
    total = 0
    for plan in plans:
        plan = scope.fit_plan(impl, plan, shape.page_size)
        for _, _, tokens in oracles.chunk_grid(plan.prefix_len, plan.num_tokens, shape.page_size, plan.chunk_pages):
            total += sum(n for _, n in chunk_layout(impl, shape, slots, tokens))
    return total
