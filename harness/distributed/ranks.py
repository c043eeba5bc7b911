"""What one rank process does for one case: rebuild the world, play its role, check its invariants.

Every rank rebuilds the case's :class:`~harness.world.World` from the seed and
keeps only its own pool (a decode rank cannot read prefill pools, so its KV
must arrive through the process group).  Prefill ranks are the writers: they
wait for the watermark, gather their head slice and send it.  Decode ranks
drive the implementation's allocator and decode handler through the engine's
:class:`harness.engine.rank.Rank` (the same driver, ledger and oracles as in
process): they allocate each chunk, offer writers the allocation and the
watermark in the engine's one wait-until-writable loop, receive each
writer's bytes straight into the staging ring at the allocated offset,
report arrivals, poll, release, and compare their pool with ground truth.

One exchange (see :mod:`harness.distributed.schedule` for their order)::

    decode -> writer   offer [OFFER, offset, round, end, wm_round, wm_tail, span_offset, span_bytes]
    writer -> decode   reply [writer_ok, may_write, wm_round, wm_tail]   (after gathering when may_write)
    writer -> decode   payload (span_bytes) when writer_ok and may_write
    ... or, while the writer may not write, the decode rank polls its handler and offers again.

It ends with an ``ABORT`` offer, a failed reply, or the payload; a rank that
already failed answers every later exchange with ``ABORT`` / a failed reply,
so the others never wait for it.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from harness import oracles
from harness.distributed import schedule
from harness.distributed.job import CaseJob
from harness.distributed.results import (
    ERROR,
    IDLE,
    PASS,
    PEER_FAILED,
    VIOLATION,
    RankResult,
)
from harness.distributed.roles import DECODE, PREFILL, RankRoles
from harness.distributed.roles import IDLE as IDLE_ROLE
from harness.distributed.transport import (
    ABORT,
    OFFER,
    OFFER_FIELDS,
    REPLY_FIELDS,
    Transport,
    TransportError,
)
from harness.engine.buffers import Guarded
from harness.engine.ledger import Placement
from harness.engine.moves import StagedReceiver, ring_bytes_for
from harness.engine.rank import Rank
from harness.engine.shapes import RankShape, RequestPlan
from harness.engine.writers import WriterPlan, chunk_layout, gather, wait_until_writable, writer_plans
from harness.interface import DONE
from harness.oracles import InvariantViolation
from harness.world import RankPool, World, check_untouched


@dataclass
class CasePlan:
    """Everything the ranks must agree on, computed identically on each from the case and the implementation."""

    plans: list[list[WriterPlan]]              # per decode pool index, by writer slot
    grid: list[tuple[int, int, int]]           # (page_start, num_pages, tokens) per chunk
    layouts: list[list[list[tuple[int, int]]]]  # [decode][chunk][slot] -> (offset, nbytes)
    orders: list[tuple[tuple[int, int], ...]]  # per decode pool index
    exchanges: list[schedule.Exchange]
    capacity: int                              # decode staging ring bytes

    @classmethod
    def build(cls, impl: Any, world: World, job: CaseJob) -> CasePlan:
        req, kv = world.case.request, world.case.kv
        shapes = [RankShape.of_case(world.case, j) for j in range(len(world.decode))]
        plans = [writer_plans(impl, shape) for shape in shapes]
        grid = oracles.chunk_grid(req.prefix_len, req.num_tokens, kv.page_size, req.chunk_pages)
        layouts = [[chunk_layout(impl, shape, p, tokens) for _, _, tokens in grid] for shape, p in zip(shapes, plans)]
        orders = schedule.arrival_orders(plans, len(grid), job.arrival_orders)
        return cls(plans, grid, layouts, orders, schedule.exchanges(orders, plans),
                   ring_bytes_for(impl, world, job.slack))

    def fingerprint(self) -> str:
        return schedule.fingerprint(self.orders, self.plans, self.layouts) + f"/{self.capacity}"


class RoleFailure:
    """A rank's first failure; after it the rank only keeps its partners from waiting."""

    def __init__(self) -> None:
        self.outcome: str | None = None
        self.message = ""

    @property
    def ok(self) -> bool:
        return self.outcome is None

    def record(self, exc: BaseException) -> None:
        if self.outcome is None:
            violation = isinstance(exc, InvariantViolation)
            self.outcome, self.message = (VIOLATION, str(exc)) if violation else (ERROR, describe(exc))

    def peer(self, message: str) -> None:
        if self.outcome is None:
            self.outcome, self.message = PEER_FAILED, message


class DecodeSide:
    """One decode rank: the engine's rank around the implementation's handler, fed by writers over the group."""

    def __init__(self, impl: Any, world: World, index: int, plan: CasePlan, job: CaseJob, transport: Transport,
                 roles: RankRoles) -> None:
        self.world, self.index, self.plan, self.job = world, index, plan, job
        self.transport, self.roles = transport, roles
        self.failure = RoleFailure()
        self.payload_bytes, self.transfer_s = 0, 0.0
        self._rank: Rank | None = None
        self.rid = job.request_id
        self._attempt(lambda: self._start(impl))

    @property
    def rank(self) -> Rank:
        """The engine's rank; every later step runs through ``_attempt``, which skips it when ``_start`` failed."""
        if self._rank is None:
            raise RuntimeError(f"decode rank {self.index}: a step ran although the engine's rank was never built")
        return self._rank

    def _start(self, impl: Any) -> None:
        case = self.world.case
        self._rank = Rank(impl, RankShape.of_case(case, self.index), self.world.device, world=self.world,
                          ring_bytes=self.plan.capacity, first_request_id=self.job.request_id)
        self.rid = self.rank.register(RequestPlan.of_spec(case.request, case.seed), StagedReceiver(), from_world=True)

    def play(self) -> None:
        """Walk this rank's arrival order, exchanging with writers at first arrivals; then finish and check."""
        seen: set[tuple[int, int]] = set()
        for chunk, slot in self.plan.orders[self.index]:
            if (chunk, slot) not in seen:
                seen.add((chunk, slot))
                self._exchange(chunk, slot)
            self._attempt(partial(self._arrive, chunk, slot))
        self._attempt(self._finish)
        self._attempt(self._check_pool)

    def result(self, rank: int, device: str) -> RankResult:
        outcome = self.failure.outcome or PASS
        return RankResult(rank, DECODE, self.index, device, outcome, self.failure.message, self.payload_bytes, self.transfer_s)

    # -- one exchange --------------------------------------------------------------------
    def _exchange(self, chunk: int, slot: int) -> None:
        """Offer the writer the allocation and watermark until it may write (the engine's one wait loop, judged
        by the ledger), then receive its bytes into the ring; a writer told it may write always sends them."""
        writer = self.roles.prefill_rank(self.plan.plans[self.index][slot].prefill_index)
        what = f"chunk {chunk} slot {slot}"
        placement = self._attempt(lambda: self._allocation(chunk))
        if placement is _FAILED:
            return self.transport.send_ints([ABORT] + [0] * (OFFER_FIELDS - 1), writer, f"abort of {what}")
        span_offset, span_bytes = self.plan.layouts[self.index][chunk][slot]
        told = {"may_write": False}

        def ask(wm: tuple[int, int]):
            self.transport.send_ints([OFFER, placement.offset, placement.round, placement.end, *wm, span_offset,
                                      span_bytes], writer, f"offer of {what}")
            writer_ok, may_write, *heard = self.transport.recv_ints(REPLY_FIELDS, writer, f"reply for {what}")
            if not writer_ok:
                self.failure.peer(f"writer on rank {writer} failed at {what}")
                return None
            told["may_write"] = bool(may_write)
            return bool(may_write), tuple(heard)

        ready = self._attempt(lambda: wait_until_writable(self.rank.ledger, placement, ask,
                                                          lambda: self.rank.poll_older_owners(placement)))
        if ready is True:
            self._attempt(lambda: self.rank.write(self.rid, chunk, slot, fill=partial(self._receive, writer, what)))
        elif told["may_write"]:  # judged unsafe: take the bytes the writer sends anyway, but not into live data
            self._receive(writer, what, torch.empty(span_bytes, dtype=torch.uint8, device=self.world.device))
        elif ready is _FAILED:
            self.transport.send_ints([ABORT] + [0] * (OFFER_FIELDS - 1), writer, f"abort of {what}")

    def _allocation(self, chunk: int) -> Placement:
        """The chunk's staging allocation, asked for once (twice, to check the answer repeats)."""
        if not self.failure.ok:
            raise _AlreadyFailed()
        t = self.rank.requests[self.rid]
        if chunk not in t.placed and self.rank.allocate(self.rid, chunk) is None:
            raise InvariantViolation(f"chunk {chunk} of request {self.rid} refused by a {self.rank.capacity}-byte ring")
        return t.placed[chunk]

    def _receive(self, writer: int, what: str, target: torch.Tensor) -> None:
        self.transfer_s += self.transport.recv_bytes(target, writer, f"payload of {what}")
        self.payload_bytes += target.numel()

    # -- local steps -------------------------------------------------------------------
    def _arrive(self, chunk: int, slot: int) -> None:
        self.rank.arrive(self.rid, chunk, slot)
        if len(self.rank.requests[self.rid].arrived[chunk]) < self.rank.num_writers:
            self.rank.check_not_scattered(self.rid, chunk)

    def _finish(self) -> None:
        """As in process: prefill done, poll to completion, late duplicates harmless, release frees everything."""
        rank, rid, first = self.rank, self.rid, self.plan.grid[0]
        rank.prefill_done(rid)
        rank.expect(rid, DONE)
        rank.handler.chunk_arrived(rid, 0, 0, *first)
        rank.release(rid)
        rank.handler.chunk_arrived(rid, 0, 0, *first)
        rank.handler.poll(rid)
        rank.check_all()

    def _check_pool(self) -> None:
        self.world.check_decode(part="all", indices=[self.index])

    def _attempt(self, step):
        """Run a local step unless this rank already failed; record its failure.  Its value, or ``_FAILED``.
        A failing process group is not the implementation's failure: it propagates."""
        if not self.failure.ok:
            return _FAILED
        try:
            return step()
        except (_AlreadyFailed, TransportError) as exc:
            if isinstance(exc, TransportError):
                raise
            return _FAILED
        except Exception as exc:
            self.failure.record(exc)
            return _FAILED


class WriterSide:
    """One prefill rank: for each exchange, wait for the watermark, gather the head slice, send it."""

    def __init__(self, impl: Any, world: World, index: int, plan: CasePlan, transport: Transport, roles: RankRoles) -> None:
        self.impl, self.world, self.index, self.plan = impl, world, index, plan
        self.transport, self.roles = transport, roles
        self.failure = RoleFailure()
        self.pool = world.prefill[index]
        self.before = self.pool.clone()
        self.heard: dict[int, tuple[int, int]] = {}  # per decode pool: highest watermark heard (only ever raised)
        self.payload_bytes = 0

    def play(self) -> None:
        for exchange in self.plan.exchanges:
            if exchange.prefill_index == self.index:
                self._serve(exchange)
        if self.failure.ok:
            try:
                check_untouched(f"gather on prefill rank {self.index}:", [self.before], [self.pool])
            except Exception as exc:
                self.failure.record(exc)

    def result(self, rank: int, device: str) -> RankResult:
        outcome = self.failure.outcome or PASS
        return RankResult(rank, PREFILL, self.index, device, outcome, self.failure.message, self.payload_bytes)

    def _serve(self, x: schedule.Exchange) -> None:
        decode = self.roles.decode_rank(x.decode_index)
        what = f"chunk {x.chunk} slot {x.slot} of decode {x.decode_index}"
        while True:
            kind, _, alloc_round, alloc_end, wm_round, wm_tail, _, span_bytes = self.transport.recv_ints(
                OFFER_FIELDS, decode, f"offer of {what}")
            if kind != OFFER:
                return
            if not self.failure.ok:
                return self.transport.send_ints([0] * REPLY_FIELDS, decode, f"failed reply for {what}")
            heard = max(self.heard.get(x.decode_index, (0, 0)), (wm_round, wm_tail))
            self.heard[x.decode_index] = heard
            try:
                may_write = bool(self.impl.writer_may_write(alloc_round, alloc_end, heard))
                staged = self._gather(x, span_bytes) if may_write else None
            except Exception as exc:
                self.failure.record(exc)
                return self.transport.send_ints([0] * REPLY_FIELDS, decode, f"failed reply for {what}")
            self.transport.send_ints([1, int(may_write), *heard], decode, f"reply for {what}")
            if staged is not None:
                self.transport.send_bytes(staged.inner, decode, f"payload of {what}")
                self.payload_bytes += span_bytes
                return None

    def _gather(self, x: schedule.Exchange, nbytes: int) -> Guarded:
        """The writer's head slice of the chunk, in its own canary-guarded staging buffer."""
        kv, req = self.world.case.kv, self.world.case.request
        return gather(self.impl, self.pool, self.plan.plans[x.decode_index][x.slot], kv.page_size, req.prefix_len,
                      self.plan.grid[x.chunk], nbytes, self.world.device)


def run_case(job: CaseJob, rank: int, device: str, transport: Transport, world_size: int, load_impl) -> RankResult:
    """This rank's part of one case; every rank calls it with the same job, in step with the others.

    Setup (world, plan) is agreed on by an all-gather of plan fingerprints
    before any byte moves: a rank whose setup failed, or plans that differ,
    make every rank skip the transfer instead of waiting for each other.
    """
    roles = RankRoles.of(job.case.topology, world_size)
    role, index = roles.role_of(rank)
    if role == IDLE_ROLE:
        transport.all_gather(None, "case setup")
        return RankResult(rank, IDLE, -1, device, IDLE)
    try:
        impl = load_impl(job.impl_spec)
        world = _own_pools_only(World.build(job.case, device), role, index)
        plan = CasePlan.build(impl, world, job)
        mine = (plan.fingerprint(), None)
    except Exception as exc:
        transport.all_gather((None, describe(exc)), "case setup")
        failure = RoleFailure()
        failure.record(exc)
        return RankResult(rank, role, index, device, failure.outcome or ERROR, failure.message)  # record() set it
    agreed = transport.all_gather(mine, "case setup")
    setups = [a for a in agreed if a is not None]
    broken = [r for r, a in enumerate(agreed) if a is not None and a[1] is not None]
    if broken:
        return RankResult(rank, role, index, device, PEER_FAILED,
                          f"rank {broken[0]} failed to set up the case: {agreed[broken[0]][1]}")
    if len({a[0] for a in setups}) != 1:
        return RankResult(rank, role, index, device, ERROR,
                          "ranks computed different writer plans, layouts or ring sizes from the same case: the "
                          "implementation's head mapping or layout is not deterministic")
    side: DecodeSide | WriterSide
    if role == DECODE:
        side = DecodeSide(impl, world, index, plan, job, transport, roles)
    else:
        side = WriterSide(impl, world, index, plan, transport, roles)
    side.play()
    return side.result(rank, device)


def _own_pools_only(world: World, role: str, index: int) -> World:
    """Drop every pool but this rank's: bytes a decode rank holds must have crossed the process group."""
    world.prefill = [p if role == PREFILL and i == index else _PoolElsewhere(f"prefill pool {i}")
                     for i, p in enumerate(world.prefill)]
    world.decode = [p if role == DECODE and i == index else _PoolElsewhere(f"decode pool {i}")
                    for i, p in enumerate(world.decode)]
    return world


class _PoolElsewhere(RankPool):
    """Stands in for a pool another rank holds: reading any of its fields raises ``AttributeError``."""

    def __init__(self, what: str) -> None:  # no fields: k, v, heads, layers, page_table stay unset
        self.what = what

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"{self.what} is held by another rank: this rank cannot read its {name} "
                             f"(its bytes must cross the process group)")

    def __repr__(self) -> str:
        return f"<{self.what}, held by another rank>"


_FAILED = object()  # what DecodeSide._attempt returns for a step that failed or was skipped


class _AlreadyFailed(Exception):
    """Internal: a step skipped because the rank already failed."""


def describe(exc: BaseException) -> str:
    """``Type: message (at file:line in function)``, innermost frame: enough to find an implementation's bug."""
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        last = frames[-1]
        text += f" (at {last.filename}:{last.lineno} in {last.name})"
    return text
