"""Request lifecycle: exactly-once scatter after full fan-in, in any order; contained failures; clean release."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, strategies as st

import strategies as kst
from harness import cluster, oracles, scope
from harness.oracles import InvariantViolation
from harness.world import World
from strategies.cases import KvSpec, RequestSpec, TpTopology, TransferCase

_LIFECYCLE = ("allocator", "kv_copy", "decode_handler")


def _writer_slots(case) -> int:
    topo = case.topology
    return max(1, topo.prefill_tp // topo.decode_tp) * (topo.prefill_pp // topo.decode_pp)


@st.composite
def _cases_with_arrivals(draw):
    """A case and an arrival order over its decode rank 0's (chunk, writer slot) pairs."""
    case = draw(kst.transfer_cases(max_tokens=24))
    req, kv = case.request, case.kv
    chunks = len(oracles.chunk_grid(req.prefix_len, req.num_tokens, kv.page_size, req.chunk_pages))
    return case, draw(kst.arrival_orders([(c, s) for c in range(chunks) for s in range(_writer_slots(case))]))


_TWO_WRITERS = TransferCase(TpTopology(2, 2, 1), KvSpec(1, 2, torch.float32, 2),
                            RequestSpec(4, 0, 1, (0, 1), 3, (2, 0), 3), seed=0, nan_payloads=False)


@pytest.mark.invariant("lifecycle", requires=_LIFECYCLE)
@given(case_and_order=_cases_with_arrivals())
@example(case_and_order=(_TWO_WRITERS, [(0, 0), (0, 0), (1, 1), (0, 1), (1, 0)]))  # duplicate before fan-in
def test_lifecycle_arrival_orders(impl, device, case_and_order):
    """Writers and chunks arrive interleaved, out of order and duplicated; freed regions get reused."""
    case, order = case_and_order
    case = scope.fit(impl, case)
    order = [(c, s) for c, s in order if s < _writer_slots(case)]  # a declared limit may drop PP writers
    world = World.build(case, device)
    req, kv = case.request, case.kv
    chunks = len(oracles.chunk_grid(req.prefix_len, req.num_tokens, kv.page_size, req.chunk_pages))
    run = cluster.DecodeRankRun(impl, world, 0, cluster.ring_capacity_for(world, impl, chunks))
    cluster.staged_request(run, request_id=1, receiver=cluster.StagedReceiver(), order=order)
    world.check_decode("lifecycle", indices=[0])


_FAULTS = ("abort", "timeout", "oversized", "misaligned_prefix")


@pytest.mark.invariant("lifecycle", requires=_LIFECYCLE)
@given(case=kst.transfer_cases(max_tokens=16), fault=st.sampled_from(_FAULTS), when=st.integers(0, 64))
@example(case=_TWO_WRITERS, fault="abort", when=1)
@example(case=_TWO_WRITERS, fault="misaligned_prefix", when=2)
def test_lifecycle_failure_is_contained(impl, device, case, fault, when):
    """Another request fails (abort, timeout, oversized chunk, misaligned prefix) and is released
    while this one moves: it alone fails, leaves nothing held, and this request is unharmed."""
    case = scope.fit(impl, case)
    world = World.build(case, device)
    kv, req = case.kv, case.request
    steps = len(oracles.chunk_grid(req.prefix_len, req.num_tokens, kv.page_size, req.chunk_pages))
    victim_bytes = sum(n for _, n in cluster.spans(impl, world, cluster.writer_plans(impl, world, 0), kv.page_size))
    # Room for the victim and every chunk of ours: our writers never wait on the victim's region.
    run = cluster.DecodeRankRun(impl, world, 0, victim_bytes + cluster.ring_capacity_for(world, impl, steps))
    spare = sorted(set(range(req.decode_pool_pages)) - set(req.decode_page_table))[0]
    if fault == "misaligned_prefix" and kv.page_size == 1:
        fault = "abort"  # every prefix is aligned to one-token pages
    prefix = 1 if fault == "misaligned_prefix" else 0
    victim, table = 2, torch.tensor([spare], device=world.device)
    run.handler.register(victim, cluster.StagedReceiver(), table, prefix, kv.page_size)
    if fault in ("abort", "timeout"):
        nbytes, layout = run.chunk_bytes(kv.page_size)
        placed = run.allocate(victim, 0, nbytes)
        if placed is None:
            raise InvariantViolation(f"[lifecycle] a one-page chunk of {nbytes} bytes was refused")
        run.ring[placed.offset:placed.end] = 0x3C  # half-written garbage that must never be scattered
        if len(run.plans) > 1:
            run.handler.chunk_arrived(victim, 0, 0, 0, 1, kv.page_size)
    elif fault == "oversized":
        if run.handler.allocate_chunk(victim, 0, run.capacity + 1) is not None:
            raise InvariantViolation(f"[lifecycle] a chunk larger than the {run.capacity}-byte ring was accepted")
    run.clock.now = run.timeout_s - 1  # the victim registered long ago; ours registers now
    inject_at = when % (steps * len(run.plans))

    def inject(step: int) -> None:
        if step != inject_at:
            return
        if fault == "abort":
            run.handler.fail(victim, "aborted by the test")
        elif fault == "timeout":
            run.clock.now = run.timeout_s + 0.5
        state = run.handler.poll(victim)
        if state != "failed":
            raise InvariantViolation(f"[lifecycle] request hit by {fault} is {state!r}, expected 'failed'")
        run.handler.release(victim)
        run.handler.chunk_arrived(victim, 0, 0, 0, 1, kv.page_size)  # late message after release
        run.alloc.raise_if_violated()

    cluster.staged_request(run, request_id=1, receiver=cluster.StagedReceiver(), between=inject)
    world.check_decode("lifecycle", indices=[0])  # the victim's page must still hold its canary
