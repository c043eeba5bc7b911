"""Head coverage: each decode rank receives every head it must hold, from the right global head."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given

import strategies as kst
from harness import oracles
from harness.engine.moves import move_with_kv_copy
from harness.oracles import InvariantViolation
from harness.world import World
from strategies.cases import KvSpec, RequestSpec, TpTopology, TransferCase

# Decode-side replication (D > H): consecutive decode ranks share a head.
_REPLICATED = TransferCase(TpTopology(2, 2, 4), KvSpec(1, 2, torch.float32, 1),
                           RequestSpec(1, 0, 1, (0,), 2, (1,), 2), seed=0, nan_payloads=False)


def check_head_mapping(impl, topo) -> None:
    H, P, D = topo.total_kv_heads, topo.prefill_tp, topo.decode_tp
    for tp, side in ((P, "prefill"), (D, "decode")):
        for rank in range(tp):
            got, want = list(impl.heads_of_rank(H, tp, rank)), oracles.owned_heads(H, tp, rank)
            if got != want:
                raise InvariantViolation(f"{side} rank {rank} of TP {tp}, H={H}: holds {got}, must hold {want}")
    for d in range(D):
        writers = list(impl.writers_of_decode_rank(H, P, D, d))
        if writers != oracles.source_ranks(H, P, D, d):
            raise InvariantViolation(f"decode rank {d} (H={H}, P={P}, D={D}): writers {writers}, "
                                     f"expected {oracles.source_ranks(H, P, D, d)} in slot order")
        covered: set[int] = set()
        dst_heads = oracles.owned_heads(H, D, d)
        for p in writers:
            src, count, dst = impl.head_slice(H, P, D, p, d)
            src_heads = oracles.owned_heads(H, P, p)
            if src < 0 or count < 1 or src + count > len(src_heads) or dst < 0 or dst + count > len(dst_heads):
                raise InvariantViolation(f"slice {(src, count, dst)} from prefill rank {p} to decode rank {d} "
                                         f"leaves the ranks' heads ({len(src_heads)} and {len(dst_heads)} local heads)")
            sent, landed = src_heads[src:src + count], dst_heads[dst:dst + count]
            if sent != landed:
                raise InvariantViolation(f"prefill rank {p} sends global heads {sent} into decode rank {d}'s "
                                         f"slots of global heads {landed} (H={H}, P={P}, D={D})")
            covered.update(landed)
        if covered != set(dst_heads):
            raise InvariantViolation(f"decode rank {d} must hold {dst_heads}; writers cover {sorted(covered)}")


@pytest.mark.invariant("head_coverage", requires=("head_mapping",), since="1.0")
@given(topo=kst.topologies())
@example(topo=_REPLICATED.topology)
def test_head_coverage_mapping(impl, topo):
    check_head_mapping(impl, topo)


@pytest.mark.invariant("head_coverage", requires=("kv_copy",), since="1.0")
@given(case=kst.transfer_cases(max_tokens=8, max_layers_per_stage=1))
@example(case=_REPLICATED)
def test_head_coverage_data(impl, device, case):
    world = World.build(case, device)
    move_with_kv_copy(impl, world)
    world.check_decode(part="request")
