"""Path equivalence: staged, non-staged and (equal TP) plain page copy give identical decode KV."""

from __future__ import annotations

import pytest
from hypothesis import given

import strategies as kst
from harness.engine.moves import has, move_end_to_end, move_with_direct_copy, move_with_kv_copy
from harness.world import World, int_view, slots_of


def plain_page_copy(world: World) -> None:
    """Equal TP and PP: decode rank i holds exactly prefill rank i's heads, so copy whole token rows."""
    req, ps = world.case.request, world.case.kv.page_size
    for src, dst in zip(world.prefill, world.decode):
        src_slots = slots_of(src.page_table, ps, req.num_tokens)[req.prefix_len:]
        dst_slots = slots_of(dst.page_table, ps, req.num_tokens)[req.prefix_len:]
        for s, d in zip((*src.k, *src.v), (*dst.k, *dst.v)):
            int_view(d)[dst_slots] = int_view(s)[src_slots]


def _paths(impl):
    paths = {"staged (gather/scatter)": move_with_kv_copy, "non-staged (direct copy)": move_with_direct_copy}
    if has(impl, "end_to_end"):
        paths["end-to-end staged"] = lambda i, w: move_end_to_end(i, w, staged=True)
        paths["end-to-end non-staged"] = lambda i, w: move_end_to_end(i, w, staged=False)
    return paths


@pytest.mark.invariant("path_equivalence", requires=("kv_copy", "direct_copy"), since="1.0")
@given(case=kst.transfer_cases())
def test_path_equivalence(impl, device, case):
    # One world, put back as it was built before each path: every path starts from the same pools.
    world = World.build(case, device)
    built = world.snapshot()
    moves = dict(_paths(impl))
    topo = case.topology
    if topo.prefill_tp == topo.decode_tp and topo.prefill_pp == topo.decode_pp:
        moves["plain page copy"] = lambda _, w: plain_page_copy(w)
    results = {}
    for name, move in moves.items():
        world.restore(built)
        move(impl, world)
        results[name] = [pool.clone() for pool in world.decode]
    (first_name, first), *others = results.items()
    for name, decode in others:
        for index, (a, b) in enumerate(zip(first, decode)):
            world.check_pool_equal(f"decode pool {index}: {first_name} vs {name}", b, a)
