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
from harness.engine.moves import case_rank, move_with_kv_copy, ring_bytes_for, stage_case  # noqa: E402
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
    move_with_kv_copy(impl, world)
    check_untouched("prefill", prefill_before, world.prefill)
    world.check_decode()


@settings(max_examples=6, deadline=None, database=None)
@given(case=SMALL)
def test_triton_scatter_through_the_decode_handler(case):
    impl = make_triton_implementation()
    world = World.build(case, "cpu")
    stage_case(case_rank(impl, world, 0, ring_bytes_for(impl, world, 1)))
    world.check_decode(indices=[0])


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
    move_with_kv_copy(impl, world)
    world.check_decode()
    assert calls and impl.kernels(torch.empty(1, dtype=torch.uint8)) is triton_kv_copy
