"""The harness's drivers and oracles judge the reference's Triton kernels on the CPU (``TRITON_INTERPRET=1``).

The same checks as ``kvconform --impl reference-triton`` (round trip through
gather/scatter and through the decode handler, isolation), on small cases:
the interpreter runs each kernel program in Python.
"""

from __future__ import annotations

import os

import pytest

if not os.environ.get("TRITON_INTERPRET"):
    os.environ["TRITON_INTERPRET"] = "1"  # before Triton is imported, as the interpreter requires
triton = pytest.importorskip("triton", reason="triton is not installed: the Triton KV copy path is optional")

from hypothesis import given, settings  # noqa: E402

import strategies as kst  # noqa: E402
from harness import cluster  # noqa: E402
from harness.world import World, check_untouched  # noqa: E402
from reference.plugin import make_triton_implementation  # noqa: E402

SMALL = kst.transfer_cases(topologies=kst.topologies(max_tp=4, max_ratio=4, max_ranks=8), max_tokens=12,
                           max_layers_per_stage=2, max_chunk_pages=2)


@settings(max_examples=12, deadline=None, database=None)
@given(case=SMALL)
def test_triton_gather_scatter_round_trip_and_isolation(case):
    impl = make_triton_implementation()
    world = World.build(case, "cpu")
    prefill_before, _ = world.snapshot()
    cluster.move_with_kv_copy(impl, world)
    check_untouched("isolation", "prefill", prefill_before, world.prefill)
    world.check_decode("round_trip")


@settings(max_examples=6, deadline=None, database=None)
@given(case=SMALL)
def test_triton_scatter_through_the_decode_handler(case):
    impl = make_triton_implementation()
    world = World.build(case, "cpu")
    run = cluster.DecodeRankRun(impl, world, 0, cluster.ring_capacity_for(world, impl, 1))
    cluster.staged_request(run, request_id=1, receiver=cluster.StagedReceiver())
    world.check_decode("round_trip", indices=[0])


def test_reference_triton_really_uses_the_triton_kernels(monkeypatch):
    """The control: the checks above run the Triton module, not the torch fallback."""
    import torch

    from reference import kv_copy, triton_kv_copy

    calls = []
    monkeypatch.setattr(triton_kv_copy, "gather", lambda *a: calls.append("gather") or kv_copy.gather(*a))
    impl = make_triton_implementation()
    from strategies.cases import KvSpec, RequestSpec, TpTopology, TransferCase

    case = TransferCase(TpTopology(2, 2, 1), KvSpec(2, 4, torch.bfloat16, 2), RequestSpec(5, 2, 1, (2, 0, 1), 4, (3, 1, 0), 4),
                        seed=3, nan_payloads=True)
    world = World.build(case, "cpu")
    cluster.move_with_kv_copy(impl, world)
    world.check_decode("round_trip")
    assert calls and impl.kernels(torch.empty(1, dtype=torch.uint8)) is triton_kv_copy
