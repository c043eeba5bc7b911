"""Drive a transfer through an implementation, in one process, and watch it.

The drivers move one request of a :class:`~harness.world.World` from its
prefill pools into its decode pools using the implementation's pieces
(head mapping, layout, allocator, gather, scatter, decode handler), or its
``move_request``.  They play the roles around the implementation: prefill
writers that honour the watermark, the transport (a memcpy), the scheduler
polling the handler.  Watchers record what the oracles need: allocations,
watermarks, writes outside regions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch

from harness import oracles
from harness.oracles import InvariantViolation
from harness.world import CANARY_BYTE, World, canary_bytes, slots_of

SCRIBBLE_BYTE = 0x5A  # what a freed region is overwritten with, as its next user would
MARGIN = 64           # canary bytes guarding each side of every buffer handed to the implementation
MAX_POLLS = 64


def has(impl: Any, capability: str) -> bool:
    return capability in impl.capabilities


@dataclass(frozen=True)
class WriterPlan:
    """One writer slot of a decode rank: where its bytes come from and go."""

    slot: int
    prefill_index: int     # pool index pp_stage * prefill_tp + tp_rank
    source_start: int
    count: int
    destination_start: int
    layer_start: int       # first local layer on the decode rank


def writer_plans(impl: Any, world: World, decode_index: int) -> list[WriterPlan]:
    """Writer slots of one decode rank; head mapping from the implementation when it has one."""
    topo = world.case.topology
    stage, rank = divmod(decode_index, topo.decode_tp)
    H, P, D = topo.total_kv_heads, topo.prefill_tp, topo.decode_tp
    mapped = has(impl, "head_mapping")
    ranks = list(impl.writers_of_decode_rank(H, P, D, rank) if mapped else oracles.source_ranks(H, P, D, rank))
    ratio = topo.prefill_pp // topo.decode_pp
    layers = world.case.kv.num_layers // topo.prefill_pp
    plans = []
    for offset in range(ratio):
        for tp_slot, prefill_rank in enumerate(ranks):
            if mapped:
                src, count, dst = impl.head_slice(H, P, D, prefill_rank, rank)
            else:
                e = oracles.expected_slice(H, P, D, prefill_rank, rank)
                src, count, dst = e.source_start, e.count, e.destination_start
            plans.append(WriterPlan(offset * len(ranks) + tp_slot, (stage * ratio + offset) * P + prefill_rank,
                                    src, count, dst, offset * layers))
    return plans


def spans(impl: Any, world: World, plans: Sequence[WriterPlan], tokens: int) -> list[tuple[int, int]]:
    kv = world.case.kv
    args = (len(plans), tokens, plans[0].count, kv.num_layers // world.case.topology.prefill_pp, kv.head_dim,
            torch.empty((), dtype=kv.dtype).element_size())
    return list(impl.staging_layout(*args) if has(impl, "layout") else oracles.expected_spans(*args))


class Guarded:
    """A uint8 buffer with canary margins on both sides; ``inner`` is what the implementation gets."""

    def __init__(self, nbytes: int, device, fill: int = CANARY_BYTE) -> None:
        self.whole = torch.full((nbytes + 2 * MARGIN,), fill, dtype=torch.uint8, device=device)
        self.inner = self.whole[MARGIN:MARGIN + nbytes]

    def check_margins(self, invariant: str, what: str) -> None:
        for name, edge in (("before", self.whole[:MARGIN]), ("after", self.whole[-MARGIN:])):
            if bool((edge != CANARY_BYTE).any()):
                raise InvariantViolation(f"[{invariant}] {what} wrote outside its buffer ({name} it)")


# -- level 1: gather + transport + scatter, no allocator -------------------------------------
def move_with_kv_copy(impl: Any, world: World) -> None:
    """Gather every writer, write its bytes into a guarded region, scatter the region."""
    case = world.case
    req, kv = case.request, case.kv
    first_page = req.prefix_len // kv.page_size
    for index, pool in enumerate(world.decode):
        plans = writer_plans(impl, world, index)
        for page_start, num_pages, tokens in oracles.chunk_grid(req.prefix_len, req.num_tokens, kv.page_size, req.chunk_pages):
            layout = spans(impl, world, plans, tokens)
            region = Guarded(sum(n for _, n in layout), world.device)
            for plan, (offset, nbytes) in zip(plans, layout):
                source = world.prefill[plan.prefill_index]
                buf = Guarded(nbytes, world.device)
                impl.gather(source.k, source.v, source.page_table[first_page + page_start:], kv.page_size, tokens,
                            plan.source_start, plan.count, buf.inner)
                buf.check_margins("isolation", f"gather of writer {plan.slot}")
                region.inner[offset:offset + nbytes].copy_(buf.inner)
            impl.scatter(region.inner, [(p.destination_start, p.layer_start) for p in plans], plans[0].count,
                         kv.num_layers // case.topology.prefill_pp, pool.k, pool.v,
                         pool.page_table[first_page + page_start:], kv.page_size, tokens)
            region.check_margins("isolation", "scatter")


def move_with_direct_copy(impl: Any, world: World) -> None:
    """Non-staged path: every writer's head slice copied straight into the decode pool."""
    req, kv = world.case.request, world.case.kv
    first_page = req.prefix_len // kv.page_size
    layers = kv.num_layers // world.case.topology.prefill_pp
    for index, pool in enumerate(world.decode):
        for plan in writer_plans(impl, world, index):
            src = world.prefill[plan.prefill_index]
            span = slice(plan.layer_start, plan.layer_start + layers)
            impl.direct_copy(src.k, src.v, src.page_table[first_page:], plan.source_start,
                             pool.k[span], pool.v[span], pool.page_table[first_page:], plan.destination_start,
                             plan.count, kv.page_size, req.num_tokens - req.prefix_len)


def move_end_to_end(impl: Any, world: World, staged: bool = True) -> None:
    topo, req, kv = world.case.topology, world.case.request, world.case.kv
    impl.move_request(
        total_kv_heads=topo.total_kv_heads, prefill_tp=topo.prefill_tp, decode_tp=topo.decode_tp,
        prefill_pp=topo.prefill_pp, decode_pp=topo.decode_pp, page_size=kv.page_size,
        prefill_pools=[(p.k, p.v) for p in world.prefill], prefill_page_tables=[p.page_table for p in world.prefill],
        decode_pools=[(p.k, p.v) for p in world.decode], decode_page_tables=[p.page_table for p in world.decode],
        prefix_len=req.prefix_len, num_tokens=req.num_tokens, chunk_pages=req.chunk_pages, staged=staged,
    )


# -- level 2: the decode handler, its ring, and writers honouring the watermark -------------
@dataclass
class Placed:
    alloc_id: int
    offset: int
    nbytes: int
    round: int
    live: bool = True

    @property
    def end(self) -> int:
        return self.offset + self.nbytes


@dataclass
class AllocatorWatch:
    """Wraps an implementation's allocator: keeps a ledger, checks the watermark, scribbles freed regions."""

    inner: Any
    ring: torch.Tensor
    violations: list[str] = field(default_factory=list)
    ledger: list[Placed] = field(default_factory=list)
    last_watermark: tuple[int, int] = (0, 0)
    # On CUDA the next writer's bytes (RDMA in production) are not ordered after the
    # decode side's streams: scribble from a stream of our own, so a region freed
    # before its scatter finished gets overwritten under it.
    scribble_stream: Any = None

    def __post_init__(self) -> None:
        if self.ring.is_cuda:
            self.scribble_stream = torch.cuda.Stream(device=self.ring.device)

    def assign(self, nbytes: int):
        placed = self.inner.assign(nbytes)
        if placed is not None:
            alloc_id, offset, rnd = placed
            if offset < 0 or offset + nbytes > self.ring.numel():
                self.violations.append(f"[allocator] assign({nbytes}) placed bytes [{offset}, {offset + nbytes}) outside a {self.ring.numel()}-byte ring")
            self.ledger.append(Placed(alloc_id, offset, nbytes, rnd))
        elif nbytes <= self.ring.numel():
            self.violations.append(f"[allocator] assign({nbytes}) refused although it fits the {self.ring.numel()}-byte ring")
        return placed

    def free(self, alloc_id: int) -> None:
        self.inner.free(alloc_id)
        for p in self.live():
            if p.alloc_id == alloc_id:
                p.live = False
                # The region's next user may overwrite it right away (only its bytes that no
                # other live allocation still covers: overcommit lets regions overlap).
                for start, end in _uncovered(p, self.live()):
                    if self.scribble_stream is None:
                        self.ring[start:end] = SCRIBBLE_BYTE
                    else:
                        with torch.cuda.stream(self.scribble_stream):
                            self.ring[start:end].fill_(SCRIBBLE_BYTE)
        self.watermark()

    def before_write(self) -> None:
        """Order a writer's bytes after pending scribbles (both stand for writes into the ring)."""
        if self.scribble_stream is not None:
            torch.cuda.current_stream(self.ring.device).wait_stream(self.scribble_stream)

    def watermark(self) -> tuple[int, int]:
        wm = tuple(self.inner.watermark())
        if wm < self.last_watermark:
            self.violations.append(f"[allocator] watermark moved backwards from {self.last_watermark} to {wm}")
        live = self.live()
        if live and wm > (live[0].round, live[0].offset):
            self.violations.append(f"[allocator] watermark {wm} is ahead of live allocation {live[0]}")
        self.last_watermark = max(self.last_watermark, wm)
        return wm

    def live(self) -> list[Placed]:
        return [p for p in self.ledger if p.live]

    def raise_if_violated(self) -> None:
        if self.violations:
            raise InvariantViolation(self.violations[0])


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class DecodeRankRun:
    """One decode rank's handler with its ring and the watchers around it."""

    impl: Any
    world: World
    index: int
    capacity: int
    timeout_s: float = 30.0
    clock: FakeClock = field(default_factory=FakeClock)

    def __post_init__(self) -> None:
        kv = self.world.case.kv
        self.plans = writer_plans(self.impl, self.world, self.index)
        self.ring = canary_bytes(self.capacity, self.world.device)
        self.alloc = AllocatorWatch(self.impl.make_allocator(self.capacity), self.ring)
        pool = self.world.decode[self.index]
        self.handler = self.impl.make_decode_handler(
            staging=self.ring, allocator=self.alloc, k_layers=pool.k, v_layers=pool.v, page_size=kv.page_size,
            num_writers=len(self.plans), writer_destinations=[(p.destination_start, p.layer_start) for p in self.plans],
            heads_per_writer=self.plans[0].count, layers_per_writer=kv.num_layers // self.world.case.topology.prefill_pp,
            timeout_s=self.timeout_s, clock=self.clock,
        )
        self.writer_watermark = (0, 0)  # what prefill writers last heard; only ever raised

    # prefill writer side -------------------------------------------------------------
    def wait_until_writable(self, request_id: int, placed: Placed) -> None:
        """Poll until the writer may write ``placed``; judge safety and liveness on the way."""
        for _ in range(MAX_POLLS):
            self.writer_watermark = max(self.writer_watermark, tuple(self.alloc.watermark()))
            if self.impl.writer_may_write(placed.round, placed.end, self.writer_watermark):
                break
            older = [p for p in self.alloc.live() if p.alloc_id != placed.alloc_id and _before(p, placed)]
            if not older:
                raise InvariantViolation(
                    f"[allocator] writer kept waiting for {placed} under watermark {self.writer_watermark} "
                    f"although nothing older is live (liveness)")
            if self.world.device.type == "cuda":
                torch.cuda.synchronize(self.world.device)  # let time pass: in-flight scatters finish
            self.handler.poll(request_id)
        else:
            raise InvariantViolation(f"[allocator] {placed} never became writable; live: {self.alloc.live()}")
        for other in self.alloc.live():
            # Overcommit lets newer allocations overlap this one; only older live data must be safe.
            if _before(other, placed) and other.offset < placed.end and placed.offset < other.end:
                raise InvariantViolation(
                    f"[allocator] writer allowed to write {placed} under watermark {self.writer_watermark} while "
                    f"live allocation {other} overlaps it (safety)")

    def write_writer(self, plan: WriterPlan, placed: Placed, span: tuple[int, int], geometry: tuple[int, int, int]) -> None:
        """Gather one writer's bytes and transport them into its part of the region."""
        kv, req = self.world.case.kv, self.world.case.request
        page_start, _, tokens = geometry
        source = self.world.prefill[plan.prefill_index]
        buf = Guarded(span[1], self.world.device)
        self.impl.gather(source.k, source.v, source.page_table[req.prefix_len // kv.page_size + page_start:],
                         kv.page_size, tokens, plan.source_start, plan.count, buf.inner)
        buf.check_margins("isolation", f"gather of writer {plan.slot}")
        start = placed.offset + span[0]
        if span[0] < 0 or span[0] + span[1] > placed.nbytes:
            raise InvariantViolation(f"[layout] writer {plan.slot} span {span} leaves its {placed.nbytes}-byte allocation")
        self.alloc.before_write()
        self.ring[start:start + span[1]].copy_(buf.inner)

    # request driving -------------------------------------------------------------------
    def chunk_bytes(self, tokens: int) -> tuple[int, list[tuple[int, int]]]:
        layout = spans(self.impl, self.world, self.plans, tokens)
        return sum(n for _, n in layout), layout

    def allocate(self, request_id: int, chunk_index: int, nbytes: int) -> Optional[Placed]:
        answer = self.handler.allocate_chunk(request_id, chunk_index, nbytes)
        self.alloc.raise_if_violated()
        if answer is None:
            return None
        again = self.handler.allocate_chunk(request_id, chunk_index, nbytes)
        if tuple(again) != tuple(answer):
            raise InvariantViolation(f"[lifecycle] chunk {chunk_index} allocated twice: {answer} then {again}")
        placed = next((p for p in reversed(self.alloc.ledger) if (p.offset, p.round, p.end) == tuple(answer)), None)
        if placed is None or sum(1 for p in self.alloc.live() if p is placed) != 1:
            raise InvariantViolation(f"[lifecycle] allocate_chunk answered {answer}, which matches no live allocation")
        return placed

    def poll_until(self, request_id: int, want: str) -> str:
        state = self.handler.poll(request_id)
        for _ in range(MAX_POLLS):
            if state != "pending":
                break
            if self.world.device.type == "cuda":
                torch.cuda.synchronize(self.world.device)
            state = self.handler.poll(request_id)
        self.alloc.raise_if_violated()
        if state != want:
            reason = getattr(self.handler, "failure_reason", lambda _r: "")(request_id)
            raise InvariantViolation(f"[lifecycle] request {request_id} ended {state!r}, expected {want!r}"
                                     + (f" ({reason})" if reason else ""))
        return state

    def release_and_check(self, request_id: int) -> None:
        self.handler.release(request_id)
        self.alloc.raise_if_violated()
        leaked = [p for p in self.alloc.live()]
        if leaked:
            raise InvariantViolation(f"[lifecycle] release of request {request_id} left allocations held: {leaked}")


def _uncovered(freed: Placed, live: Sequence[Placed]) -> list[tuple[int, int]]:
    """Byte ranges of ``freed`` that no live allocation overlaps."""
    ranges = [(freed.offset, freed.end)]
    for other in live:
        ranges = [piece for start, end in ranges
                  for piece in ((start, min(end, other.offset)), (max(start, other.end), end)) if piece[0] < piece[1]]
    return ranges


def _before(a: Placed, b: Placed) -> bool:
    return (a.round, a.offset) < (b.round, b.offset)


def staged_request(run: DecodeRankRun, request_id: int, receiver: Any,
                   order: Optional[Sequence[tuple[int, int]]] = None,
                   between: Callable[[int], None] = lambda step: None) -> bool:
    """Move the world's request into one decode rank through the handler.

    ``order`` lists ``(chunk, writer slot)`` arrivals (duplicates allowed);
    by default chunks go one after another, slots in order.  ``between(step)``
    runs after each arrival (fault injection).  Returns whether it was staged.
    """
    world, req, kv = run.world, run.world.case.request, run.world.case.kv
    pool = world.decode[run.index]
    staged = run.handler.register(request_id, receiver, pool.page_table, req.prefix_len, req.num_tokens)
    want = oracles.expects_staging(receiver)
    if bool(staged) != want:
        raise InvariantViolation(f"[receivers] {receiver!r} took the {'staged' if staged else 'plain'} path; "
                                 f"require_staging is {'truthy' if want else 'absent or falsy'}")
    if not staged:
        world._fill(pool, req.prefix_len, req.num_tokens)  # the plain backend writes KV itself
        run.handler.prefill_done(request_id)
        run.poll_until(request_id, "done")
        run.release_and_check(request_id)
        return False
    grid = oracles.chunk_grid(req.prefix_len, req.num_tokens, kv.page_size, req.chunk_pages)
    slots = range(len(run.plans))
    order = list(order) if order is not None else [(c, s) for c in range(len(grid)) for s in slots]
    placed: dict[int, Placed] = {}
    layouts: dict[int, list[tuple[int, int]]] = {}
    arrived: dict[int, set[int]] = {c: set() for c in range(len(grid))}
    for step, (chunk, slot) in enumerate(order):
        page_start, num_pages, tokens = grid[chunk]
        if chunk not in placed:
            nbytes, layouts[chunk] = run.chunk_bytes(tokens)
            got = run.allocate(request_id, chunk, nbytes)
            if got is None:
                raise InvariantViolation(f"[lifecycle] chunk {chunk} of {nbytes} bytes refused by a {run.capacity}-byte ring")
            placed[chunk] = got
        if slot not in arrived[chunk]:
            run.wait_until_writable(request_id, placed[chunk])
            run.write_writer(run.plans[slot], placed[chunk], layouts[chunk][slot], grid[chunk])
        run.handler.chunk_arrived(request_id, chunk, slot, page_start, num_pages, tokens)
        arrived[chunk].add(slot)
        if len(arrived[chunk]) < len(slots):
            check_not_scattered(run, chunk, grid[chunk], arrived[chunk])
        between(step)
    run.handler.prefill_done(request_id)
    run.poll_until(request_id, "done")
    # Late duplicates after completion must change nothing.
    run.handler.chunk_arrived(request_id, 0, 0, *grid[0])
    run.release_and_check(request_id)
    run.handler.chunk_arrived(request_id, 0, 0, *grid[0])
    run.handler.poll(request_id)
    run.alloc.raise_if_violated()
    return True


def check_not_scattered(run: DecodeRankRun, chunk: int, geometry, arrived: set[int]) -> None:
    """Before the last distinct writer arrives, the chunk's decode pages hold no suffix data."""
    world, req, kv = run.world, run.world.case.request, run.world.case.kv
    page_start, _, tokens = geometry
    if run.world.device.type == "cuda":
        torch.cuda.synchronize(run.world.device)
    pool = world.decode[run.index]
    first = req.prefix_len + page_start * kv.page_size
    slots = slots_of(pool.page_table, kv.page_size, first + tokens)[first:]
    for layer in pool.k:
        if bool((layer[slots].view(torch.uint8) != CANARY_BYTE).any()):
            raise InvariantViolation(f"[lifecycle] chunk {chunk} was scattered after only writer slots {sorted(arrived)} "
                                     f"of {len(run.plans)} arrived")


def ring_capacity_for(run_world: World, impl: Any, slack: int) -> int:
    """A ring that holds the largest chunk ``slack`` times (1 forces a wrap every chunk)."""
    req, kv = run_world.case.request, run_world.case.kv
    plans = writer_plans(impl, run_world, 0)
    largest = max(sum(n for _, n in spans(impl, run_world, plans, tokens))
                  for _, _, tokens in oracles.chunk_grid(req.prefix_len, req.num_tokens, kv.page_size, req.chunk_pages))
    return largest * slack


class StagedReceiver:
    """A receiver whose backend stages KV (``require_staging = True``)."""

    require_staging = True

    def __repr__(self) -> str:
        return "StagedReceiver()"
