"""One decode rank serving several requests at once, watched byte by byte.

The stress suites (stateful, concurrency, faults) drive an implementation's
decode staging handler through interleavings of many requests.  A
:class:`SharedRank` holds what they share: the handler, its staging ring and
paged KV pool (every buffer inside canary margins), a :class:`RingLedger`
between the handler and the implementation's allocator, the prefill writers
(they honour the watermark and write each writer slot's bytes, packed from
ground truth by the interface's layout convention), and the oracles:

* every pool row is, at every step, either untouched (canary) or the right
  token's ground truth; a request's cached prefix never changes; rows of no
  request keep their canary; a chunk stays unscattered until every writer slot
  arrived; a request reported done holds its whole ground truth;
* a request fails only for a cause (misaligned prefix, oversized chunk, abort,
  timeout) and a done or failed request stays so;
* nothing is held for a released request, a refused allocation leaves nothing
  behind, written live regions never overlap, the watermark never moves back
  nor passes live data, a writer never waits when nothing older is live.

Safe to drive from two threads (a transfer and a scheduler thread): model
bookkeeping is recorded before the implementation is told, so a fast
implementation is never judged against a stale model.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from hypothesis import strategies as st

from harness import oracles
from harness.cluster import MAX_POLLS, SCRIBBLE_BYTE, FakeClock, has
from harness.guard import CanaryFence
from harness.interface import DONE, FAILED, PENDING
from harness.oracles import InvariantViolation
from harness.world import CANARY_BYTE, int_view, slots_of

GARBAGE_BYTE = 0x3C  # what a partial write leaves in the rest of a writer's part
MAX_TOKENS = 12
SPARE_PAGES = 2


# -- shapes and plans -------------------------------------------------------------------------
@dataclass(frozen=True)
class RankShape:
    """Geometry of the rank: writer slots split heads (``tp_writers``) and layers (``pp_writers``)."""

    page_size: int
    tp_writers: int
    pp_writers: int
    heads_per_writer: int
    layers_per_writer: int
    head_dim: int
    dtype: torch.dtype
    max_chunk_pages: int
    ring_chunks: int  # the ring holds this many of the largest chunk

    @property
    def num_writers(self) -> int:
        return self.tp_writers * self.pp_writers

    @property
    def heads(self) -> int:
        return self.tp_writers * self.heads_per_writer

    @property
    def layers(self) -> int:
        return self.pp_writers * self.layers_per_writer

    @property
    def element_size(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    def destinations(self) -> list[tuple[int, int]]:
        """``(head_start, layer_start)`` of writer slot ``pp * tp_writers + tp``."""
        return [(tp * self.heads_per_writer, pp * self.layers_per_writer)
                for pp in range(self.pp_writers) for tp in range(self.tp_writers)]


@dataclass(frozen=True)
class RequestPlan:
    num_tokens: int
    prefix_len: int
    chunk_pages: int
    seed: int


def rank_shapes(min_page_size: int = 1) -> st.SearchStrategy[RankShape]:
    """Small geometries: 1-4 writer slots splitting heads and/or layers, pages of 1-4 tokens, rings of 1-3 chunks."""
    return st.builds(
        RankShape,
        page_size=st.sampled_from([p for p in (1, 2, 4) if p >= min_page_size]),
        tp_writers=st.integers(1, 2), pp_writers=st.integers(1, 2),
        heads_per_writer=st.integers(1, 2), layers_per_writer=st.integers(1, 2),
        head_dim=st.sampled_from((1, 2, 4)),
        dtype=st.sampled_from((torch.float32, torch.float16, torch.float8_e4m3fn)),
        max_chunk_pages=st.integers(1, 3), ring_chunks=st.integers(1, 3),
    )


def plan_request(shape: RankShape, tokens: int, prefix_pages: int, chunk_pages: int, misaligned: bool, seed: int,
                 max_tokens: int = MAX_TOKENS) -> RequestPlan:
    """A request from loosely drawn numbers: the prefix leaves a suffix; ``misaligned`` adds one token to it."""
    tokens, page = max(1, min(tokens, max_tokens)), shape.page_size
    if misaligned and page > 1 and tokens >= 2:
        prefix = min(prefix_pages, (tokens - 2) // page) * page + 1
    else:
        prefix = min(prefix_pages, -(-tokens // page) - 1) * page
    return RequestPlan(tokens, prefix, max(1, min(chunk_pages, shape.max_chunk_pages)), seed)


def request_plans(shape: RankShape, misaligned: bool = False) -> st.SearchStrategy[RequestPlan]:
    """Requests of up to ``MAX_TOKENS`` tokens; ``misaligned`` ones (on pages of 2+ tokens) fail when staged."""
    return st.builds(plan_request, st.just(shape), st.integers(2 if misaligned else 1, MAX_TOKENS), st.integers(0, 3),
                     st.integers(1, 3), st.just(misaligned), st.integers(0, 2**16))


def chunk_bytes(impl: Any, shape: RankShape, tokens: int) -> tuple[int, list[tuple[int, int]]]:
    """Staging bytes of a chunk of ``tokens`` and its writer spans (the implementation's layout when it has one)."""
    args = (shape.num_writers, tokens, shape.heads_per_writer, shape.layers_per_writer, shape.head_dim, shape.element_size)
    spans = [tuple(s) for s in (impl.staging_layout(*args) if has(impl, "layout") else oracles.expected_spans(*args))]
    return sum(n for _, n in spans), spans


def largest_chunk_bytes(impl: Any, shape: RankShape) -> int:
    return chunk_bytes(impl, shape, shape.max_chunk_pages * shape.page_size)[0]


# -- the ledger between handler and allocator ---------------------------------------------------
@dataclass
class Placement:
    alloc_id: int
    offset: int
    nbytes: int
    round: int
    order: int  # assignment order: lower is older
    owner: Optional[tuple[int, int]] = None  # (request, chunk) once allocate_chunk answered it
    live: bool = True
    written: bool = False

    @property
    def end(self) -> int:
        return self.offset + self.nbytes

    def overlaps(self, other: "Placement") -> bool:
        return self.offset < other.end and other.offset < self.end


class RingLedger:
    """The allocator the handler is given: the implementation's, with a ledger and checks.

    A freed region (the part no other live allocation overlaps) is scribbled
    *before* the implementation's allocator learns it is free, so its next
    user never races the scribble; on CUDA from a stream of its own, so a
    region freed while a scatter still reads it corrupts the pool, visibly.
    """

    def __init__(self, inner: Any, ring: torch.Tensor) -> None:
        self.inner = inner
        self.ring = ring
        self.capacity = ring.numel()
        self.ledger: list[Placement] = []
        self.violations: list[str] = []
        self.last_watermark: tuple[int, int] = (0, 0)
        self.on_free: Optional[Callable[[Placement], None]] = None  # called (under the lock) for each freed placement
        self._lock = threading.Lock()
        self._scribble_stream = torch.cuda.Stream(device=ring.device) if ring.is_cuda else None

    def assign(self, nbytes: int):
        placed = self.inner.assign(nbytes)
        with self._lock:
            if placed is None:
                if nbytes <= self.capacity:
                    self.violations.append(f"[allocator] assign({nbytes}) refused although it fits the {self.capacity}-byte ring")
                return None
            alloc_id, offset, rnd = (int(x) for x in placed)
            if offset < 0 or offset + nbytes > self.capacity:
                self.violations.append(f"[allocator] assign({nbytes}) placed bytes [{offset}, {offset + nbytes}) "
                                       f"outside the {self.capacity}-byte ring")
            self.ledger.append(Placement(alloc_id, offset, nbytes, rnd, len(self.ledger)))
        return placed

    def free(self, alloc_id: int) -> None:
        with self._lock:
            dying = [p for p in self.ledger if p.live and p.alloc_id == alloc_id]
            for p in dying:
                p.live = False
                if self.on_free is not None:
                    self.on_free(p)
            spans = [span for p in dying for span in self._unshared(p)]
        if self._scribble_stream is None:
            for start, end in spans:
                self.ring[start:end] = SCRIBBLE_BYTE  # its next user may overwrite it right away
        elif spans:
            # The next writer (RDMA in production) is ordered after none of the handler's streams: scribble
            # from a stream of our own; wait for it (only it) so the next writer never races the scribble.
            with torch.cuda.stream(self._scribble_stream):
                for start, end in spans:
                    self.ring[start:end].fill_(SCRIBBLE_BYTE)
            self._scribble_stream.synchronize()
        self.inner.free(alloc_id)
        self.watermark()

    def _unshared(self, freed: Placement) -> list[tuple[int, int]]:
        """Byte ranges of ``freed`` that no live allocation overlaps (overcommit: older data may still sit there)."""
        spans, cursor = [], max(0, freed.offset)
        for p in sorted((p for p in self.ledger if p.live and p.overlaps(freed)), key=lambda p: p.offset):
            if p.offset > cursor:
                spans.append((cursor, min(p.offset, freed.end)))
            cursor = max(cursor, p.end)
        if cursor < min(freed.end, self.capacity):
            spans.append((cursor, min(freed.end, self.capacity)))
        return spans

    def watermark(self) -> tuple[int, int]:
        with self._lock:
            wm = tuple(int(x) for x in self.inner.watermark())
            if wm < self.last_watermark:
                self.violations.append(f"[allocator] watermark moved backwards from {self.last_watermark} to {wm}")
            oldest = next((p for p in self.ledger if p.live), None)
            if oldest is not None and wm > (oldest.round, oldest.offset):
                self.violations.append(f"[allocator] watermark {wm} is ahead of live allocation {oldest}")
            self.last_watermark = max(self.last_watermark, wm)
            return wm

    def live(self) -> list[Placement]:
        with self._lock:
            return [p for p in self.ledger if p.live]

    def placement_of(self, answer: tuple[int, int, int], nbytes: int) -> Optional[Placement]:
        """The newest placement (live or not) matching an ``allocate_chunk`` answer ``(offset, round, end)``."""
        offset, rnd, end = answer
        with self._lock:
            return next((p for p in reversed(self.ledger)
                         if (p.offset, p.round, p.end) == (offset, rnd, end) and p.nbytes == nbytes), None)


# -- requests -----------------------------------------------------------------------------------
@dataclass
class Tracked:
    """What the harness knows of one request; mutated only before the implementation is told."""

    rid: int
    plan: RequestPlan
    receiver: Any
    staged: bool
    page_table: torch.Tensor
    slots: torch.Tensor          # pool slot of each token
    truth: torch.Tensor          # [K/V, layer, token, head, dim], integer view of the KV dtype
    grid: list[tuple[int, int, int]]
    registered_at: float
    placed: dict[int, Placement] = field(default_factory=dict)
    spans: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    written: dict[int, set[int]] = field(default_factory=dict)
    arrived: dict[int, set[int]] = field(default_factory=dict)
    dead_writers: set[tuple[int, int]] = field(default_factory=set)
    prefill_done: bool = False
    cause: str = ""              # why it may fail
    complete_at_cause: bool = False
    observed: str = PENDING
    released: bool = False       # set before release is called
    release_returned: bool = False

    def __post_init__(self) -> None:
        for chunk in range(len(self.grid)):
            self.written.setdefault(chunk, set())
            self.arrived.setdefault(chunk, set())


class SharedRank:
    """The implementation's handler on one decode rank, with fenced buffers, writers and oracles."""

    def __init__(self, impl: Any, shape: RankShape, device: str | torch.device, *, max_requests: int,
                 ring_bytes: Optional[int] = None, timeout_s: float = 10.0, max_tokens: int = MAX_TOKENS) -> None:
        self.impl, self.shape, self.device = impl, shape, torch.device(device)
        self.timeout_s = timeout_s
        self.clock = FakeClock()
        self.fence = CanaryFence(self.device)
        self._layouts: dict[int, tuple[int, list[tuple[int, int]]]] = {}
        pages_per_request = -(-max_tokens // shape.page_size)
        self.pool_pages = max_requests * pages_per_request + SPARE_PAGES
        self.free_pages = list(range(self.pool_pages))
        random.Random(len(self.free_pages)).shuffle(self.free_pages)  # fragmented page tables
        rows = (self.pool_pages * shape.page_size, shape.heads, shape.head_dim)
        self.k = [self.fence.tensor(rows, shape.dtype, f"K pool layer {i}", CANARY_BYTE) for i in range(shape.layers)]
        self.v = [self.fence.tensor(rows, shape.dtype, f"V pool layer {i}", CANARY_BYTE) for i in range(shape.layers)]
        capacity = ring_bytes if ring_bytes is not None else largest_chunk_bytes(impl, shape) * shape.ring_chunks
        self.ring = self.fence.bytes(capacity, "staging ring", CANARY_BYTE)
        self.ledger = RingLedger(impl.make_allocator(capacity), self.ring)
        self.ledger.on_free = self._judge_free
        self.handler = impl.make_decode_handler(
            staging=self.ring, allocator=self.ledger, k_layers=self.k, v_layers=self.v, page_size=shape.page_size,
            num_writers=shape.num_writers, writer_destinations=shape.destinations(),
            heads_per_writer=shape.heads_per_writer, layers_per_writer=shape.layers_per_writer,
            timeout_s=timeout_s, clock=self.clock)
        self.requests: dict[int, Tracked] = {}
        self.heard_watermark = (0, 0)  # what prefill writers last heard; only ever raised
        self._next_rid = 1

    @property
    def capacity(self) -> int:
        return self.ring.numel()

    def chunk_bytes(self, tokens: int) -> tuple[int, list[tuple[int, int]]]:
        """``chunk_bytes`` for this rank, asked of the implementation once per token count."""
        if tokens not in self._layouts:
            self._layouts[tokens] = chunk_bytes(self.impl, self.shape, tokens)
        return self._layouts[tokens]

    # -- scheduler side -------------------------------------------------------------------------
    def register(self, plan: RequestPlan, receiver: Any) -> int:
        """Preallocate pages, fill the cached prefix, register; the staged/plain answer must follow the receiver."""
        shape, rid = self.shape, self._next_rid
        self._next_rid += 1
        pages = -(-plan.num_tokens // shape.page_size)
        if pages > len(self.free_pages):
            raise ValueError(f"the pool has {len(self.free_pages)} free pages left, request {plan} needs {pages}: "
                             f"size the rank with a larger max_requests or max_tokens")
        table = torch.tensor([self.free_pages.pop() for _ in range(pages)], dtype=torch.int64, device=self.device)
        truth = self._truth(plan)
        staged = oracles.expects_staging(receiver)
        t = Tracked(rid, plan, receiver, staged, table, slots_of(table, shape.page_size, plan.num_tokens), truth,
                    oracles.chunk_grid(plan.prefix_len, plan.num_tokens, shape.page_size, plan.chunk_pages),
                    self.clock())
        if staged and plan.prefix_len % shape.page_size:
            t.cause = "misaligned prefix"
        self._fill(t, 0, plan.prefix_len)
        self.requests[rid] = t
        answer = self.handler.register(rid, receiver, table, plan.prefix_len, plan.num_tokens)
        if bool(answer) != staged:
            raise InvariantViolation(f"[receivers] {receiver!r} took the {'staged' if answer else 'plain'} path; "
                                     f"require_staging is {'truthy' if staged else 'absent or falsy'}")
        return rid

    def poll(self, rid: int, settle: bool = True) -> str:
        """Poll (repeatedly while a complete request is pending, when ``settle``) and judge the state."""
        t = self.requests[rid]
        state = self.handler.poll(rid)
        for _ in range(MAX_POLLS if settle else 0):
            if state != PENDING or not self.complete(t):
                break
            self._sync()
            state = self.handler.poll(rid)
        self.judge(t, state, settled=settle)
        return state

    def abort(self, rid: int, reason: str = "aborted by the test") -> None:
        t = self.requests[rid]
        self._set_cause(t, "aborted")
        self.handler.fail(rid, reason)

    def tick(self, seconds: float) -> None:
        self.clock.now += seconds
        for t in self.requests.values():
            if not t.released and self.clock() - t.registered_at > self.timeout_s:
                self._set_cause(t, "timed out")

    def release(self, rid: int) -> None:
        """Release; afterwards nothing may be held for the request."""
        t = self.requests[rid]
        t.released = True
        self.handler.release(rid)
        t.release_returned = True
        held = [p for p in self.ledger.live() if p.owner is not None and p.owner[0] == rid]
        if held:
            raise InvariantViolation(f"[lifecycle] release of request {rid} left allocations held: {held}")

    def raise_if_leaked(self) -> None:
        """No live allocation belongs to a request whose release returned (checkable while other threads run)."""
        for p in self.ledger.live():
            if p.owner is not None and self.requests[p.owner[0]].release_returned:
                raise InvariantViolation(f"[lifecycle] allocation {p} of chunk {p.owner[1]} is still held after request "
                                         f"{p.owner[0]} was released (leak)")

    def reason(self, rid: int) -> str:
        getter = getattr(self.handler, "failure_reason", None)
        return getter(rid) if callable(getter) else ""

    # -- transfer side --------------------------------------------------------------------------
    def allocate(self, rid: int, chunk: int, nbytes: Optional[int] = None) -> Optional[Placement]:
        """Ask for a chunk's region twice; both answers must agree and match one allocation of that size.

        Judged conservatively, so the scheduler thread may abort or release the
        request meanwhile: only a request released *before* the ask must get
        nothing, only one with no cause at all must not be refused.
        """
        t = self.requests[rid]
        size, spans = self.chunk_bytes(t.grid[chunk][2])
        nbytes = size if nbytes is None else nbytes
        released_before, before = t.released, len(self.ledger.ledger)
        if nbytes > self.capacity:
            self._set_cause(t, "oversized chunk")
        answer = self.handler.allocate_chunk(rid, chunk, nbytes)
        self.raise_if_violated()
        if answer is None:
            fresh = [p for p in self.ledger.ledger[before:] if p.live]  # only the transfer side allocates
            if fresh:
                raise InvariantViolation(f"[lifecycle] allocate_chunk({rid}, {chunk}) refused but keeps {fresh} (leak)")
            if not (t.cause or t.released or t.observed != PENDING):
                raise InvariantViolation(f"[lifecycle] chunk {chunk} of {nbytes} bytes refused by the {self.capacity}-byte "
                                         f"ring for pending request {rid}")
            return None
        answer = tuple(int(x) for x in answer)
        again = self.handler.allocate_chunk(rid, chunk, nbytes)
        if (again is None and not (t.cause or t.released)) or (again is not None and tuple(int(x) for x in again) != answer):
            raise InvariantViolation(f"[lifecycle] chunk {chunk} of request {rid} allocated twice: {answer} then {again}")
        if released_before:
            raise InvariantViolation(f"[lifecycle] allocate_chunk answered {answer} for released request {rid} (leak)")
        earlier = t.placed.get(chunk)
        if earlier is not None:  # a repeated ask, maybe after the region was freed: the same answer
            if answer != (earlier.offset, earlier.round, earlier.end):
                raise InvariantViolation(f"[lifecycle] chunk {chunk} of request {rid} was answered "
                                         f"{(earlier.offset, earlier.round, earlier.end)}, later {answer}")
            return earlier
        placement = self.ledger.placement_of(answer, nbytes)
        if placement is None or placement.owner not in (None, (rid, chunk)) or not (placement.live or t.cause or t.released):
            raise InvariantViolation(f"[lifecycle] allocate_chunk({rid}, {chunk}, {nbytes}) answered {answer}, which "
                                     f"matches no live allocation of its own")
        placement.owner = (rid, chunk)
        t.placed[chunk], t.spans[chunk] = placement, spans
        return placement

    def writable(self, placement: Placement, strict: bool = True) -> bool:
        """Whether a writer may write now; safety always judged, liveness when ``strict`` (single thread)."""
        older_before = [p for p in self.ledger.live() if p.order < placement.order]
        self.heard_watermark = max(self.heard_watermark, self.ledger.watermark())
        ok = bool(self.impl.writer_may_write(placement.round, placement.end, self.heard_watermark))
        if ok:
            clash = [p for p in self.ledger.live() if p.order < placement.order and p.overlaps(placement)]
            if clash:
                raise InvariantViolation(f"[allocator] writer allowed to write {placement} under watermark "
                                         f"{self.heard_watermark} while older live {clash[0]} overlaps it (safety)")
        elif strict and not older_before:
            raise InvariantViolation(f"[allocator] writer kept waiting for {placement} under watermark "
                                     f"{self.heard_watermark} although nothing older is live (liveness)")
        return ok

    def write(self, rid: int, chunk: int, slot: int, fraction: float = 1.0) -> None:
        """Write a writer slot's part of the chunk; a partial write leaves garbage and its writer never arrives."""
        t = self.requests[rid]
        placement, (offset, nbytes) = t.placed[chunk], t.spans[chunk][slot]
        if offset < 0 or offset + nbytes > placement.nbytes:
            raise InvariantViolation(f"[layout] writer {slot} span {(offset, nbytes)} leaves its {placement.nbytes}-byte allocation")
        part = self._part(t, chunk, slot)
        start, done = placement.offset + offset, int(nbytes * fraction)
        self.ring[start:start + done].copy_(part[:done])
        self.ring[start + done:start + nbytes] = GARBAGE_BYTE
        self._sync()
        placement.written = True
        if fraction < 1.0:
            t.dead_writers.add((chunk, slot))
        else:
            t.written[chunk].add(slot)

    def arrive(self, rid: int, chunk: int, slot: int) -> None:
        """Report a writer's arrival (recorded first, so a fast handler is never ahead of the model)."""
        t = self.requests[rid]
        if 0 <= slot < self.shape.num_writers and slot in t.written.get(chunk, ()):
            t.arrived[chunk].add(slot)
        self.handler.chunk_arrived(rid, chunk, slot, *t.grid[chunk])

    def prefill_done(self, rid: int) -> None:
        t = self.requests[rid]
        if not t.staged and not t.prefill_done:
            self._fill(t, t.plan.prefix_len, t.plan.num_tokens)  # the plain backend wrote the KV itself
        t.prefill_done = True
        self.handler.prefill_done(rid)

    # -- the model ------------------------------------------------------------------------------
    def complete(self, t: Tracked) -> bool:
        """Everything needed for done was sent: prefill finished and every chunk's every slot arrived."""
        if not t.prefill_done:
            return False
        return not t.staged or all(len(t.arrived[c]) == self.shape.num_writers for c in range(len(t.grid)))

    def _set_cause(self, t: Tracked, cause: str) -> None:
        if not t.cause:
            t.cause, t.complete_at_cause = cause, self.complete(t)

    def judge(self, t: Tracked, state: str, settled: bool = True) -> None:
        """A polled state must follow from what was sent and which faults hit the request."""
        where = f"request {t.rid} ({'staged' if t.staged else 'plain'}, {t.plan})"
        if self.clock() - t.registered_at > self.timeout_s:
            self._set_cause(t, "timed out")
        if t.observed != PENDING and state != t.observed:
            raise InvariantViolation(f"[lifecycle] {where} went from {t.observed!r} to {state!r}")
        if state == DONE:
            if not self.complete(t):
                raise InvariantViolation(f"[lifecycle] {where} reported done before it was complete "
                                         f"(arrived {dict(t.arrived)}, prefill done: {t.prefill_done})")
            if t.cause and not t.complete_at_cause and t.cause != "timed out":  # data that beat the timeout may count
                raise InvariantViolation(f"[lifecycle] {where} reported done although it was {t.cause} before completing")
        elif state == FAILED:
            if not t.cause:
                raise InvariantViolation(f"[lifecycle] {where} failed without a cause: {self.reason(t.rid) or 'no reason given'}")
        elif settled and t.cause and not (t.complete_at_cause or (t.cause == "timed out" and self.complete(t))):
            raise InvariantViolation(f"[lifecycle] {where} still pending after it was {t.cause}")
        elif settled and self.complete(t):
            raise InvariantViolation(f"[lifecycle] {where} is complete (every slot arrived, prefill done) but still "
                                     f"pending after {MAX_POLLS} polls")
        t.observed = state

    def _judge_free(self, placement: Placement) -> None:
        """A region may be freed once its chunk was scattered, or once its request failed or was released."""
        if placement.owner is None:
            return
        rid, chunk = placement.owner
        t = self.requests[rid]
        waiting = len(t.arrived[chunk]) < self.shape.num_writers
        if waiting and not (t.cause or t.released or t.observed != PENDING):
            self.ledger.violations.append(
                f"[lifecycle] the region of request {rid} chunk {chunk} was freed while the request is pending and the "
                f"chunk still waits for writers (slots {sorted(t.arrived[chunk])} of {self.shape.num_writers} arrived)")

    # -- oracles --------------------------------------------------------------------------------
    def raise_if_violated(self) -> None:
        if self.ledger.violations:
            raise InvariantViolation(self.ledger.violations[0])

    def check_ledger(self) -> None:
        """Watch violations; nothing held for released requests or for nobody; written live regions disjoint."""
        self.raise_if_violated()
        live = self.ledger.live()
        for p in live:
            if p.owner is None:
                raise InvariantViolation(f"[lifecycle] allocation {p} was never answered to allocate_chunk (leak)")
            if self.requests[p.owner[0]].released:
                raise InvariantViolation(f"[lifecycle] allocation {p} of chunk {p.owner[1]} is still held after request "
                                         f"{p.owner[0]} was released (leak)")
        written = [p for p in live if p.written]
        for i, a in enumerate(written):
            for b in written[i + 1:]:
                if a.overlaps(b):
                    raise InvariantViolation(f"[allocator] live written regions overlap: {a} and {b}")

    def check_pool(self, rids: Optional[list[int]] = None) -> None:
        """Margins, then every request's rows, then rows of no request (see the module docstring)."""
        self._sync()
        self.fence.check()
        pool = self._pool_stack()
        for t in [self.requests[r] for r in rids] if rids is not None else list(self.requests.values()):
            self._check_rows(t, pool)
        if rids is None:
            mask = torch.zeros(pool.shape[2], dtype=torch.bool, device=self.device)
            for t in list(self.requests.values()):
                mask[t.slots] = True
            outside = pool.view(torch.uint8)[:, :, ~mask] != CANARY_BYTE
            if bool(outside.any()):
                kv, layer, row = (int(x) for x in outside.nonzero()[0][:3])
                slot = int((~mask).nonzero()[row])
                raise InvariantViolation(f"[lifecycle] pool slot {slot} (page {slot // self.shape.page_size}) belongs to no "
                                         f"request but {'KV'[kv]} layer {layer} was written")

    def check_all(self) -> None:
        self.check_ledger()
        self.check_pool()

    def _check_rows(self, t: Tracked, pool: torch.Tensor) -> None:
        got = pool.index_select(2, t.slots)
        is_truth = (got == t.truth).movedim(2, 0).flatten(1).all(1)
        is_canary = (got.view(torch.uint8) == CANARY_BYTE).movedim(2, 0).flatten(1).all(1)
        full = self.shape.num_writers
        for token in (~is_truth).nonzero().flatten().tolist():
            if token < t.plan.prefix_len:
                problem = "its cached prefix changed"
            elif t.observed == DONE:
                problem = "the request was reported done"
            elif not bool(is_canary[token]):
                problem = "a pool row is either untouched or ground truth"
            else:
                continue  # untouched suffix row of a request not done
            raise InvariantViolation(f"[lifecycle] request {t.rid} token {token}: {self._explain(t, got, token)}; "
                                     f"expected ground truth: {problem}")
        for chunk, (page_start, _, tokens) in enumerate(t.grid if t.staged else ()):
            if len(t.arrived[chunk]) < full:
                first = t.plan.prefix_len + page_start * self.shape.page_size
                touched = (~is_canary[first:first + tokens]).nonzero().flatten().tolist()
                if touched and t.observed != DONE:
                    raise InvariantViolation(
                        f"[lifecycle] request {t.rid} chunk {chunk} was scattered although only writer slots "
                        f"{sorted(t.arrived[chunk])} of {full} arrived (token {first + touched[0]})")

    def _explain(self, t: Tracked, got: torch.Tensor, token: int) -> str:
        """Where the wrong row came from: canary, scribble of a freed region, garbage, or whose ground truth."""
        diff = (got[:, :, token] != t.truth[:, :, token]).nonzero()[0].tolist()
        kv, layer, head = diff[0], diff[1], diff[2]
        row = got[kv, layer, token, head]
        as_bytes = row.view(torch.uint8)
        where = f"{'KV'[kv]} layer {layer} head {head} holds {as_bytes[:8].tolist()}"
        for byte, meaning in ((CANARY_BYTE, "never written (canary)"),
                              (SCRIBBLE_BYTE, "the scribble of a freed staging region: scattered after its region was freed"),
                              (GARBAGE_BYTE, "a partial write's garbage: a region scattered before its writers finished")):
            if bool((as_bytes == byte).all()):
                return f"{where} = {meaning}"
        for other in list(self.requests.values()):
            match = (other.truth[kv, layer, :, head] == row).all(-1).nonzero()
            if match.numel():
                return f"{where} = ground truth of request {other.rid} token {int(match[0])}"
        return where

    # -- internals ------------------------------------------------------------------------------
    def _truth(self, plan: RequestPlan) -> torch.Tensor:
        s = self.shape
        gen = torch.Generator().manual_seed(plan.seed)
        bits = 8 * s.element_size
        values = torch.randint(-(2 ** (bits - 1)), 2 ** (bits - 1),
                               (2, s.layers, plan.num_tokens, s.heads, s.head_dim), generator=gen, dtype=torch.int64)
        values = values.to(int_view(torch.empty(0, dtype=s.dtype)).dtype)
        # No byte equals a marker, so a marker-filled row never passes for data and explanations are unambiguous.
        as_bytes = values.view(torch.uint8)
        for marker in (CANARY_BYTE, SCRIBBLE_BYTE, GARBAGE_BYTE):
            as_bytes[as_bytes == marker] = 0x11
        return values.to(self.device)

    def _part(self, t: Tracked, chunk: int, slot: int) -> torch.Tensor:
        """Writer ``slot``'s bytes of a chunk: ``[K,V][layer][token][head][dim]`` of its heads and layers."""
        s = self.shape
        head, layer = s.destinations()[slot]
        page_start, _, tokens = t.grid[chunk]
        first = t.plan.prefix_len + page_start * s.page_size
        part = t.truth[:, layer:layer + s.layers_per_writer, first:first + tokens, head:head + s.heads_per_writer]
        return part.contiguous().view(torch.uint8).flatten()

    def _fill(self, t: Tracked, first: int, last: int) -> None:
        if last <= first:
            return
        slots = t.slots[first:last]
        for layer in range(self.shape.layers):
            int_view(self.k[layer])[slots] = t.truth[0, layer, first:last]
            int_view(self.v[layer])[slots] = t.truth[1, layer, first:last]

    def _pool_stack(self) -> torch.Tensor:
        return torch.stack([torch.stack([int_view(x) for x in self.k]), torch.stack([int_view(x) for x in self.v])])

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
