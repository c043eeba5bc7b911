"""Round trip and isolation on the suite's own case strategy, restricted to the topologies vLLM supports.

The conformance run stops each test at its first failing example, so the report shows few passing
ones; this script gives the evidence for the rest.  Usage (from the repository root, vLLM installed):

    python reports/vllm-0.33.0/supported_cases.py make_pull_implementation 150
    python reports/vllm-0.33.0/supported_cases.py make_push_implementation 150
    python reports/vllm-0.33.0/supported_cases.py make_permute_implementation 150 --no-fp8

Cases come from ``transfer_cases(aligned_prefix=None, page_size_pairs=page_size_pairs())`` (interface
1.1: two block sizes, decode prefix hits, partial blocks re-read).  Excluded, with the READING.md finding
that explains why: replicated prefill with P > D (1), decode PP > 1 (2), pull with prefill PP > 1
(declared limit), push with decode replication D > H (7), with --no-fp8 the fp8 dtypes (8), a prefix hit
into a partly filled larger decode block (9), pull with a larger prefill block or any ratio with
P TP > D TP (10), push with two block sizes (11), fp8 with two block sizes (8).  With two block sizes, isolation is
judged on whole pages: vLLM zeroes the untransferred tail of the last decode block (12).
"""

from __future__ import annotations

import sys
import time

import torch
from hypothesis import HealthCheck, assume, given, settings

import adapters.vllm as vllm_adapter
import strategies as kst
from harness import scope
from harness.engine.moves import move_end_to_end
from harness.world import World, check_untouched, int_view


def supported_blocks(case, mode: str) -> bool:
    kv, req, topo = case.kv, case.request, case.topology
    prefill_block, decode_block = kv.page_size, kv.decode_page_size
    if prefill_block == decode_block:
        return True
    if mode == "push":
        return False  # (11)
    if decode_block % prefill_block or topo.prefill_tp > topo.decode_tp:
        return False  # (10)
    if kv.dtype.itemsize == 1:
        return False  # (8): the sub-block permutation copies in the KV dtype
    ratio, hits = decode_block // prefill_block, req.prefix_len // decode_block
    uncached = -(-req.num_tokens // decode_block) - hits
    return not hits or uncached * ratio == -(-req.num_tokens // prefill_block) - hits * ratio  # (9)


def supported(topology, mode: str) -> bool:
    if topology.decode_pp != 1 or (mode != "push" and topology.prefill_pp != 1):
        return False
    if topology.prefill_tp > topology.decode_tp and topology.prefill_tp > topology.total_kv_heads:
        return False  # (1)
    if mode == "push" and topology.decode_tp > topology.prefill_tp and topology.decode_tp > topology.total_kv_heads:
        return False  # (7)
    return True


def check_outside_request_pages(world: World) -> None:
    """Every decode pool slot outside the request's pages still holds its canary."""
    for index, pool in enumerate(world.decode):
        expected = world.expected_decode(index)
        page_of_slot = torch.arange(pool.k[0].shape[0]) // pool.page_size
        outside = ~torch.isin(page_of_slot, pool.page_table.cpu())
        for got, want in zip((*pool.k, *pool.v), (*expected.k, *expected.v)):
            if not torch.equal(int_view(got)[outside], int_view(want)[outside]):
                raise AssertionError(f"decode pool {index}: a slot outside the request's pages changed")


def main(factory: str, examples: int, no_fp8: bool) -> None:
    impl = getattr(vllm_adapter, factory)()
    passed = 0

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=kst.transfer_cases(aligned_prefix=None, page_size_pairs=kst.page_size_pairs()))
    def run(case):
        nonlocal passed
        case = scope.fit(impl, case)
        assume(supported(case.topology, impl.mode) and supported_blocks(case, impl.mode))
        assume(not no_fp8 or case.kv.dtype.itemsize > 1)
        world = World.build(case, "cpu")
        prefill_before, _ = world.snapshot()
        move_end_to_end(impl, world)
        world.check_decode(part="request")
        check_untouched("prefill", prefill_before, world.prefill)
        if case.kv.page_size == case.kv.decode_page_size:
            world.check_decode(part="outside")
        else:  # (12): vLLM zeroes the untransferred tail of the last decode block; judge whole pages
            check_outside_request_pages(world)
        passed += 1

    start = time.time()
    run()
    print(f"{impl.name}: {passed} supported examples passed round_trip and isolation in {time.time() - start:.0f}s")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), "--no-fp8" in sys.argv[3:])
