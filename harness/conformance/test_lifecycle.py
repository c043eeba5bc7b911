"""Request lifecycle: exactly-once scatter after full fan-in, in any order; contained failures; clean release."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, strategies as st

import strategies as kst
from harness.engine.moves import StagedReceiver, case_rank, chunk_bytes_for, chunk_count, ring_bytes_for, stage_case
from harness.engine.shapes import RequestPlan
from harness.interface import FAILED
from harness.oracles import InvariantViolation
from harness.world import World
from strategies.cases import KvSpec, RequestSpec, TpTopology, TransferCase

_LIFECYCLE = ("allocator", "kv_copy", "decode_handler")

_TWO_WRITERS = TransferCase(TpTopology(2, 2, 1), KvSpec(1, 2, torch.float32, 2),
                            RequestSpec(4, 0, 1, (0, 1), 3, (2, 0), 3), seed=0, nan_payloads=False)


@pytest.mark.invariant("lifecycle", requires=_LIFECYCLE, since="1.0")
@given(case=kst.transfer_cases(max_tokens=24), data=st.data())
@example(case=_TWO_WRITERS, data=[(0, 0), (0, 0), (1, 1), (0, 1), (1, 0)])  # duplicate before fan-in
def test_lifecycle_arrival_orders(impl, device, case, data):
    """Writers and chunks arrive interleaved, out of order and duplicated; freed regions get reused.
    (``data`` is an explicit arrival order in examples.)"""
    world = World.build(case, device)
    chunks = chunk_count(case)
    rank = case_rank(impl, world, 0, ring_bytes_for(impl, world, chunks))
    pairs = [(c, s) for c in range(chunks) for s in range(rank.num_writers)]
    order = data if isinstance(data, list) else data.draw(kst.arrival_orders(pairs), label="arrival order")
    stage_case(rank, order=order)
    world.check_decode(part="all", indices=[0])


_FAULTS = ("abort", "timeout", "oversized", "misaligned_prefix")


@pytest.mark.invariant("lifecycle", requires=_LIFECYCLE, since="1.0")
@given(case=kst.transfer_cases(max_tokens=16), fault=st.sampled_from(_FAULTS), when=st.integers(0, 64))
@example(case=_TWO_WRITERS, fault="abort", when=1)
@example(case=_TWO_WRITERS, fault="misaligned_prefix", when=2)
def test_lifecycle_failure_is_contained(impl, device, case, fault, when):
    """Another request fails (abort, timeout, oversized chunk, misaligned prefix) and is released
    while this one moves: it alone fails, leaves nothing held, and this request is unharmed."""
    world = World.build(case, device)
    kv, req = case.kv, case.request
    steps = chunk_count(case)
    victim_bytes = chunk_bytes_for(impl, world, kv.page_size)
    # Room for the victim and every chunk of ours: our writers never wait on the victim's region.
    rank = case_rank(impl, world, 0, victim_bytes + ring_bytes_for(impl, world, steps))
    spare = sorted(set(range(req.decode_pool_pages)) - set(req.decode_page_table))[0]
    if fault == "misaligned_prefix" and kv.page_size == 1:
        fault = "abort"  # every prefix is aligned to one-token pages
    victim = rank.register(RequestPlan(kv.page_size, 1 if fault == "misaligned_prefix" else 0, 1, case.seed + 1,
                                       (spare,)), StagedReceiver())
    if fault in ("abort", "timeout"):
        if rank.allocate(victim, 0) is None:
            raise InvariantViolation(f"a one-page chunk of {victim_bytes} bytes was refused")
        rank.write(victim, 0, 0, fraction=0.0)  # garbage of a writer that died: it must never be scattered
        if rank.num_writers > 1:  # its report (alone, the chunk would rightly be scattered)
            rank.arrive(victim, 0, 0)
    elif fault == "oversized":
        if rank.allocate(victim, 0, nbytes=rank.capacity + 1) is not None:
            raise InvariantViolation(f"a chunk larger than the {rank.capacity}-byte ring was accepted")
    rank.tick(rank.timeout_s - 1)  # the victim registered long ago; ours registers now
    inject_at = when % (steps * rank.num_writers)

    def inject(step: int) -> None:
        if step != inject_at:
            return
        if fault == "abort":
            rank.abort(victim)
        elif fault == "timeout":
            rank.tick(1.5)
        rank.expect(victim, FAILED)
        rank.release(victim)
        rank.handler.chunk_arrived(victim, 0, 0, *rank.requests[victim].grid[0])  # late message after release
        rank.check_all()

    stage_case(rank, between=inject)
    world.check_decode(part="request", indices=[0])
