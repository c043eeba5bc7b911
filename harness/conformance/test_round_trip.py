"""Round trip: gather → transfer → scatter leaves decode pages bit-identical to ground truth."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, strategies as st

import strategies as kst
from harness.engine.moves import case_rank, move_end_to_end, move_with_kv_copy, ring_bytes_for, stage_case
from harness.world import World
from strategies.cases import KvSpec, RequestSpec, TpTopology, TransferCase

# Random bit patterns (NaN payloads, signalling NaNs, -0.0) must survive: no float arithmetic on the way.
_NAN_PAYLOADS = TransferCase(TpTopology(2, 2, 1), KvSpec(1, 4, torch.bfloat16, 2),
                             RequestSpec(6, 2, 1, (2, 0, 1), 4, (1, 3, 0), 4), seed=7, nan_payloads=True)
# Two page sizes with a prefix hit, each direction (interface 1.1): decode pages of 4 prefill pages, one
# cached and 3 tokens of the next (re-read); prefill pages of 2 decode pages, the first decode page cached
# (prefill page 0 half re-read).
DECODE_PAGES_LARGER = TransferCase(TpTopology(2, 1, 2), KvSpec(2, 3, torch.float16, 2, 8),
                                   RequestSpec(19, 11, 1, (9, 3, 0, 7, 1, 8, 2, 6, 4, 5), 11, (2, 0, 3), 4),
                                   seed=3, nan_payloads=False)
PREFILL_PAGES_LARGER = TransferCase(TpTopology(2, 2, 1), KvSpec(1, 2, torch.bfloat16, 8, 4),
                                    RequestSpec(13, 4, 2, (1, 0), 3, (3, 1, 4, 0), 5), seed=5, nan_payloads=True)


@pytest.mark.invariant("round_trip", requires=("kv_copy",), since="1.0")
@given(case=kst.transfer_cases())
@example(case=_NAN_PAYLOADS)
def test_round_trip_kv_copy(impl, device, case):
    world = World.build(case, device)
    move_with_kv_copy(impl, world)
    world.check_decode(part="request")


@pytest.mark.invariant("round_trip", requires=("allocator", "kv_copy", "decode_handler"), since="1.0")
@given(case=kst.transfer_cases(), slack=st.integers(1, 3))
def test_round_trip_decode_handler(impl, device, case, slack):
    """Through the decode handler and a ring that holds ``slack`` chunks (1: every chunk wraps), on the first
    and the last decode rank and one between (chosen by the case's seed): the handler of every decode rank runs
    the same code on its own shape, and the data of every rank is judged by ``test_round_trip_kv_copy`` (a rank
    costs ~15 calls per chunk here)."""
    world = World.build(case, device)
    last = len(world.decode) - 1
    ranks = sorted({0, last, case.seed % (last + 1)})
    for index in ranks:
        stage_case(case_rank(impl, world, index, ring_bytes_for(impl, world, slack, index)))
    world.check_decode(part="request", indices=ranks)


@pytest.mark.invariant("round_trip", requires=("end_to_end",), since="1.0")
@given(case=kst.transfer_cases())
def test_round_trip_end_to_end(impl, device, case):
    world = World.build(case, device)
    move_end_to_end(impl, world, staged=True)
    world.check_decode(part="request")


@pytest.mark.invariant("round_trip", requires=("end_to_end",), since="1.1")
@given(case=kst.transfer_cases(aligned_prefix=None, page_size_pairs=kst.page_size_pairs()))
@example(case=DECODE_PAGES_LARGER)
@example(case=PREFILL_PAGES_LARGER)
def test_round_trip_end_to_end_page_sizes_and_prefix_hits(impl, device, case):
    """Prefill and decode page sizes may differ; the decode's prefix-hit pages keep its own KV, a partially
    cached page is re-read."""
    world = World.build(case, device)
    move_end_to_end(impl, world, staged=True)
    world.check_decode(part="request")
