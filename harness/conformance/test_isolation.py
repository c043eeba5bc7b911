"""Isolation: only the request's decode pages change; prefill pools are only read; no stray bytes."""

from __future__ import annotations

import pytest
from hypothesis import example, given

import strategies as kst
from harness.engine.moves import move_end_to_end, move_with_direct_copy, move_with_kv_copy
from harness.conformance.test_round_trip import DECODE_PAGES_LARGER, PREFILL_PAGES_LARGER
from harness.world import World, check_untouched


@pytest.mark.invariant("isolation", requires=("kv_copy",), since="1.0")
@given(case=kst.transfer_cases())
def test_isolation_kv_copy(impl, device, case):
    world = World.build(case, device)
    prefill_before, _ = world.snapshot()
    move_with_kv_copy(impl, world)  # also checks canary margins around every buffer
    check_untouched("prefill", prefill_before, world.prefill)
    world.check_decode(part="outside")


@pytest.mark.invariant("isolation", requires=("direct_copy",), since="1.0")
@given(case=kst.transfer_cases(topologies=kst.topologies(pipeline=False, max_tp=kst.DEFAULT_MAX_RANKS)))
def test_isolation_direct_copy(impl, device, case):
    world = World.build(case, device)
    prefill_before, _ = world.snapshot()
    move_with_direct_copy(impl, world)
    check_untouched("prefill", prefill_before, world.prefill)
    world.check_decode(part="outside")


@pytest.mark.invariant("isolation", requires=("end_to_end",), since="1.0")
@given(case=kst.transfer_cases())
def test_isolation_end_to_end(impl, device, case):
    world = World.build(case, device)
    prefill_before, _ = world.snapshot()
    move_end_to_end(impl, world, staged=True)
    check_untouched("prefill", prefill_before, world.prefill)
    world.check_decode(part="outside")


@pytest.mark.invariant("isolation", requires=("end_to_end",), since="1.1")
@given(case=kst.transfer_cases(aligned_prefix=None, page_size_pairs=kst.page_size_pairs()))
@example(case=DECODE_PAGES_LARGER)
@example(case=PREFILL_PAGES_LARGER)
def test_isolation_end_to_end_page_sizes_and_prefix_hits(impl, device, case):
    """Interface 1.1: prefill and decode page sizes may differ; the decode's prefix-hit pages keep its own KV,
    a partially cached page is re-read."""
    world = World.build(case, device)
    prefill_before, _ = world.snapshot()
    move_end_to_end(impl, world, staged=True)
    check_untouched("prefill", prefill_before, world.prefill)
    world.check_decode(part="outside")
