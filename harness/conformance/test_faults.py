"""Fault injection: each fault fails only the request it hits, with a clear reason; the others lose nothing.

Every test moves a healthy *bystander* request through the handler, writer
by writer, and at a drawn step hits a *victim* request sharing the rank:

* a writer that never arrives: the victim times out, fails and frees everything;
* a partial write (a writer writes half its part, then dies; the transfer
  error aborts the victim, or it times out): the half-written region never
  reaches the pool;
* a duplicate completion (every "chunk ready" and "prefill done" of a finished
  victim again, after its regions were reused by the bystander): nothing is
  scattered twice, the victim stays done;
* a release in the middle of a chunk's fan-in or right after its last writer
  (on CUDA the scatter is still running on the side stream): release frees
  everything only once no scatter reads the region;
* a chunk larger than the ring: refused, the victim fails;
* a non-page-aligned decode prefix on the staged path: the victim fails, and
  nothing of it lands misplaced even if its writers go on.

After the fault: the victim's state and reason, nothing held after its
release, and every pool byte of both requests (see ``harness.engine.rank``).
``test_lifecycle_faults_regions_outlive_their_scatters`` moves chunks through a ring of one
chunk; on CUDA it stalls the caller's stream before each last report, so a
region freed (or released) before its side-stream scatter ran is scribbled
under it.
"""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from hypothesis import given, strategies as st

from harness.engine.moves import StagedReceiver
from harness.engine.rank import Rank, ring_bytes_for
from harness.engine.shapes import RankShape, RequestPlan, plan_request, rank_shapes, request_plans
from harness.guard import guard
from harness.interface import DONE, FAILED
from harness.oracles import InvariantViolation

_REQUIRES = ("allocator", "decode_handler")
TIMEOUT_S = 10.0
#: Words a clear failure reason contains, per fault (checked when the handler has ``failure_reason``).
REASON_WORDS = {
    "timed out": ("time",),
    "oversized chunk": ("ring", "byte", "large", "size", "capacity"),
    "misaligned prefix": ("page", "align"),
}


@st.composite
def scenarios(draw, misaligned_victim: bool = False):
    """A rank shape, a victim and a bystander request, and the bystander step at which the fault hits."""
    shape = draw(rank_shapes(min_page_size=2 if misaligned_victim else 1))
    victim = draw(request_plans(shape, misaligned=misaligned_victim))
    bystander = draw(request_plans(shape))
    return shape, victim, bystander, draw(st.integers(0, 63))


def roomy_rank(impl, device, shape: RankShape, victim: RequestPlan, bystander: RequestPlan, **kwargs) -> Rank:
    """A ring holding both requests whole: the bystander never waits on the victim's regions."""
    ring = ring_bytes_for(impl, shape, [victim, bystander])
    return Rank(impl, shape, device, max_requests=2, ring_bytes=ring, timeout_s=TIMEOUT_S, **kwargs)


def send_chunk(rank: Rank, rid: int, chunk: int, slots: range | list[int] | None = None,
               between: Callable[[], None] = lambda: None) -> None:
    """Allocate one chunk, then each writer slot writes and arrives; ``between`` runs after each arrival."""
    placement = rank.allocate(rid, chunk)
    if placement is None:
        raise InvariantViolation(f"chunk {chunk} of request {rid} was refused by a ring with room for it")
    for slot in range(rank.num_writers) if slots is None else slots:
        rank.wait_writable(placement)
        rank.write(rid, chunk, slot)
        rank.arrive(rid, chunk, slot)
        rank.check_all()
        between()


def run_bystander(rank: Rank, rid: int, fault_at: int, fault: Callable[[], None]) -> None:
    """Move the bystander writer by writer; the fault hits after arrival number ``fault_at`` (modulo their count)."""
    t = rank.requests[rid]
    steps = len(t.grid) * rank.num_writers
    counter = iter(range(steps))

    def maybe_fault() -> None:
        if next(counter) == fault_at % steps:
            fault()
            rank.check_all()

    for chunk in range(len(t.grid)):
        send_chunk(rank, rid, chunk, between=maybe_fault)
    rank.prefill_done(rid)
    if rank.poll(rid) != DONE:
        raise InvariantViolation(f"bystander request {rid} did not complete: {rank.reason(rid)}")
    rank.check_all()
    rank.release(rid)
    rank.check_all()


def expect_failed(rank: Rank, rid: int, cause: str) -> None:
    """The victim polls failed (``Rank.poll`` judges it), with a reason naming the cause when one is given."""
    state = rank.poll(rid)
    if state != FAILED:
        raise InvariantViolation(f"request {rid} hit by {cause} is {state!r}, expected 'failed'")
    reason = rank.reason(rid)
    words = REASON_WORDS.get(cause, ())
    if callable(getattr(rank.handler, "failure_reason", None)) and words and not any(w in reason.lower() for w in words):
        raise InvariantViolation(f"request {rid} failed by {cause} gives an unclear reason: {reason!r} "
                                 f"(expected a mention of {' or '.join(words)})")


def start(impl, device, scenario, **kwargs) -> tuple[Rank, int]:
    """A roomy rank whose victim registered long ago (staged); the bystander is registered later by the caller."""
    shape, victim, bystander, _ = scenario
    rank = roomy_rank(guard(impl), device, shape, victim, bystander, **kwargs)
    return rank, rank.register(victim, StagedReceiver())


def register_bystander(rank: Rank, plan: RequestPlan) -> int:
    rank.tick(TIMEOUT_S - 1)  # the victim is old by now; the bystander is new
    return rank.register(plan, StagedReceiver())


@pytest.mark.invariant("lifecycle", requires=_REQUIRES, since="1.0")
@given(scenario=scenarios())
def test_lifecycle_faults_writer_never_arrives(impl, device, scenario):
    """The victim's last writer never reports: the victim times out, fails, and frees everything on release."""
    rank, victim = start(impl, device, scenario)
    writers = rank.num_writers
    send_chunk(rank, victim, 0, slots=range(writers - 1))
    bystander = register_bystander(rank, scenario[2])

    def fault() -> None:
        rank.tick(1.5)
        expect_failed(rank, victim, "timed out")
        rank.release(victim)
        rank.handler.chunk_arrived(victim, 0, writers - 1, *rank.requests[victim].grid[0])  # far too late

    run_bystander(rank, bystander, scenario[3], fault)


@pytest.mark.invariant("lifecycle", requires=_REQUIRES, since="1.0")
@given(scenario=scenarios(), how=st.sampled_from(("abort", "timeout")))
def test_lifecycle_faults_partial_write_never_lands(impl, device, scenario, how):
    """Writer 0 writes half its part and dies; the others write and arrive.  The transfer error aborts the
    victim (or it times out): it fails, and its half-written region never reaches the pool."""
    rank, victim = start(impl, device, scenario)
    send_chunk(rank, victim, 0, slots=range(1, rank.num_writers))
    rank.write(victim, 0, 0, fraction=0.5)
    bystander = register_bystander(rank, scenario[2])

    def fault() -> None:
        if how == "abort":
            rank.abort(victim, "transfer of writer 0 failed")
            expect_failed(rank, victim, "aborted")
        else:
            rank.tick(1.5)
            expect_failed(rank, victim, "timed out")
        rank.release(victim)

    run_bystander(rank, bystander, scenario[3], fault)


@pytest.mark.invariant("lifecycle", requires=_REQUIRES, since="1.0")
@given(scenario=scenarios())
def test_lifecycle_faults_duplicate_completion(impl, device, scenario):
    """A finished victim's every "chunk ready" and "prefill done" arrive again while the bystander reuses its
    regions (a ring of 1-3 chunks): nothing is scattered twice, the victim stays done."""
    shape, victim_plan, bystander_plan, fault_at = scenario
    rank = Rank(guard(impl), shape, device, max_requests=2, timeout_s=TIMEOUT_S)
    victim = rank.register(victim_plan, StagedReceiver())
    t = rank.requests[victim]
    for chunk in range(len(t.grid)):
        send_chunk(rank, victim, chunk)
    rank.prefill_done(victim)
    if rank.poll(victim) != DONE:
        raise InvariantViolation(f"request {victim} did not complete: {rank.reason(victim)}")
    bystander = rank.register(bystander_plan, StagedReceiver())

    def duplicates() -> None:
        for chunk in range(len(t.grid)):
            for slot in range(rank.num_writers):
                rank.arrive(victim, chunk, slot)
        rank.prefill_done(victim)
        rank.poll(victim)

    run_bystander(rank, bystander, fault_at, duplicates)
    duplicates()
    rank.check_all()
    rank.release(victim)
    for chunk in range(len(t.grid)):
        rank.handler.chunk_arrived(victim, chunk, 0, *t.grid[chunk])
    rank.check_all()


@pytest.mark.invariant("lifecycle", requires=_REQUIRES, since="1.0")
@given(scenario=scenarios(), arrived=st.integers(0, 4))
def test_lifecycle_faults_release_mid_scatter(impl, device, scenario, arrived):
    """The victim is released after ``arrived`` of its chunk's writers reported (all of them: its scatter was
    just submitted); late reports follow; the bystander then reuses its region.  Release frees everything,
    and no byte of the region reaches the pool after it was freed."""
    shape, victim_plan, bystander_plan, fault_at = scenario
    rank = Rank(guard(impl), shape, device, max_requests=2, timeout_s=TIMEOUT_S)
    victim = rank.register(victim_plan, StagedReceiver())
    writers = rank.num_writers
    arrived = min(arrived, writers)
    placement = rank.allocate(victim, 0)
    if placement is None:
        raise InvariantViolation(f"chunk 0 of request {victim} was refused by a ring with room for it")
    for slot in range(writers):
        rank.write(victim, 0, slot)
    for slot in range(arrived):
        rank.arrive(victim, 0, slot)
    rank.abort(victim, "released mid-transfer")
    rank.release(victim)
    for slot in range(writers):
        rank.handler.chunk_arrived(victim, 0, slot, *rank.requests[victim].grid[0])
    rank.check_all()
    bystander = rank.register(bystander_plan, StagedReceiver())
    run_bystander(rank, bystander, fault_at, lambda: None)


@pytest.mark.invariant("lifecycle", requires=_REQUIRES, since="1.0")
@given(scenario=scenarios())
def test_lifecycle_faults_oversized_chunk(impl, device, scenario):
    """The victim asks for a chunk one byte larger than the ring: refused; the victim alone fails."""
    rank, victim = start(impl, device, scenario)
    bystander = register_bystander(rank, scenario[2])

    def fault() -> None:
        if rank.allocate(victim, 0, nbytes=rank.capacity + 1) is not None:
            raise InvariantViolation(f"a chunk larger than the {rank.capacity}-byte ring was accepted")
        expect_failed(rank, victim, "oversized chunk")
        rank.release(victim)

    run_bystander(rank, bystander, scenario[3], fault)


@pytest.mark.invariant("lifecycle", requires=_REQUIRES, since="1.0")
@given(scenario=scenarios(misaligned_victim=True))
def test_lifecycle_faults_misaligned_prefix(impl, device, scenario):
    """A staged victim whose cached prefix is not page-aligned registers mid-transfer: it fails; if the
    handler still hands out regions, its writers write and report, and nothing of it lands misplaced."""
    shape, victim_plan, bystander_plan, fault_at = scenario
    rank = roomy_rank(guard(impl), device, shape, victim_plan, bystander_plan)
    bystander = rank.register(bystander_plan, StagedReceiver())

    def fault() -> None:
        victim = rank.register(victim_plan, StagedReceiver())
        expect_failed(rank, victim, "misaligned prefix")
        t = rank.requests[victim]
        for chunk in range(len(t.grid)):
            placement = rank.allocate(victim, chunk)
            if placement is not None and rank.writable(placement, strict=False):
                for slot in range(rank.num_writers):
                    rank.write(victim, chunk, slot)
                    rank.arrive(victim, chunk, slot)
        rank.poll(victim)
        rank.check_all()
        rank.release(victim)

    run_bystander(rank, bystander, fault_at, fault)


#: Chunks of two writers through a ring that holds one chunk: every region is reused as soon as it is freed.
ONE_CHUNK_RING = RankShape.of(page_size=2, tp_writers=2, pp_writers=1, heads_per_writer=1, layers_per_writer=2, head_dim=8,
                              dtype=torch.float32, max_chunk_pages=2, ring_chunks=1)
STALL_CYCLES = 100_000_000  # about 50 ms of GPU clock


def stall_caller_stream(device: torch.device) -> None:
    """On CUDA, keep the caller's stream busy for a while, so a scatter ordered after it (the reference orders it
    after the writers' stream) is still pending when an early free lets the region's next user in."""
    if device.type == "cuda":
        torch.cuda._sleep(STALL_CYCLES)


def send_chunk_late(rank: Rank, rid: int, chunk: int) -> None:
    """``send_chunk``, with the caller's CUDA stream stalled just before the last writer reports."""
    placement = rank.allocate(rid, chunk)
    if placement is None:
        raise InvariantViolation(f"chunk {chunk} of request {rid} was refused by a ring with room for it")
    rank.wait_writable(placement)
    for slot in range(rank.num_writers):
        rank.write(rid, chunk, slot)
    for slot in range(rank.num_writers):
        if slot == rank.num_writers - 1:
            stall_caller_stream(rank.device)
        rank.arrive(rid, chunk, slot)


@pytest.mark.invariant("lifecycle", requires=_REQUIRES, since="1.0")
def test_lifecycle_faults_regions_outlive_their_scatters(impl, device):
    """A ring of one chunk, so each region is reused as soon as it is freed.  Request 1 moves chunk after chunk;
    request 2 is released right after its first chunk's last writer reported; request 3 then reuses the region.
    A region freed (or released) before its scatter completed is scribbled or rewritten under the scatter and
    corrupts the pool.  On CUDA the caller's stream is stalled before each last report, so a scatter ordered
    after it is still pending when an early free happens (on CPU the reference scatters synchronously)."""
    if torch.device(device).type == "cuda":
        regions_outlive_their_scatters(guard(impl), device)  # a first pass compiles and loads the kernels: the
    regions_outlive_their_scatters(guard(impl), device)      # stall must not be spent waiting for a compiler


def regions_outlive_their_scatters(impl, device) -> None:
    rank = Rank(impl, ONE_CHUNK_RING, device, max_requests=3, timeout_s=TIMEOUT_S)
    first = rank.register(plan_request(ONE_CHUNK_RING, 8, 0, 1, False, 1), StagedReceiver())
    for chunk in range(len(rank.requests[first].grid)):
        send_chunk_late(rank, first, chunk)
    rank.prefill_done(first)
    if rank.poll(first) != DONE:
        raise InvariantViolation(f"request {first} did not complete: {rank.reason(first)}")
    rank.release(first)
    rank.check_all()
    second = rank.register(plan_request(ONE_CHUNK_RING, 8, 0, 2, False, 2), StagedReceiver())
    send_chunk_late(rank, second, 0)
    rank.abort(second, "released mid-scatter")
    rank.release(second)
    rank.check_all()
    third = rank.register(plan_request(ONE_CHUNK_RING, 8, 0, 1, False, 3), StagedReceiver())
    run_bystander(rank, third, 0, lambda: None)
    rank.check_all()
