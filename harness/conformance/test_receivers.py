"""Receivers: any receiver object survives the whole decode lifecycle; only truthy require_staging stages."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given

import strategies as kst
from harness.engine.moves import case_rank, ring_bytes_for, stage_case
from harness.oracles import InvariantViolation
from harness.world import World
from strategies.cases import KvSpec, RequestSpec, TpTopology, TransferCase


class _NoFlagReceiver:
    """A backend receiver class that never heard of staging."""

    def __repr__(self) -> str:
        return "_NoFlagReceiver()"


def _lifecycle(impl, world: World, receiver) -> None:
    rank = case_rank(impl, world, 0, ring_bytes_for(impl, world, 2))
    try:
        stage_case(rank, receiver)
    except InvariantViolation:
        raise
    except Exception as exc:
        raise InvariantViolation(f"{type(exc).__name__}: {exc} — raised for receiver {receiver!r}") from exc
    world.check_decode(part="request", indices=[0])


@pytest.mark.invariant("receivers", requires=("allocator", "kv_copy", "decode_handler"), since="1.0")
@given(case=kst.transfer_cases(max_tokens=16), receiver=kst.receivers())
@example(case=TransferCase(TpTopology(1, 1, 1), KvSpec(1, 1, torch.float32, 1), RequestSpec(1, 0, 1, (0,), 2, (0,), 2),
                           seed=0, nan_payloads=False),
         receiver=_NoFlagReceiver())  # the receiver of SGLang PR #22153: no require_staging at all
def test_receivers_lifecycle(impl, device, case, receiver):
    _lifecycle(impl, World.build(case, device), receiver)


@pytest.mark.invariant("receivers", requires=("allocator", "kv_copy", "decode_handler"), since="1.0")
@given(receiver=kst.receivers())
def test_receivers_registration(impl, receiver):
    """Register, abort and release: the minimal lifecycle of every receiver kind, fast."""
    from harness.oracles import expects_staging

    pool = [torch.zeros(8, 1, 1)]
    handler = impl.make_decode_handler(
        staging=torch.zeros(64, dtype=torch.uint8), allocator=impl.make_allocator(64), k_layers=pool, v_layers=pool,
        page_size=1, num_writers=1, writer_destinations=[(0, 0)], heads_per_writer=1, layers_per_writer=1,
        timeout_s=1.0, clock=lambda: 0.0)
    try:
        staged = handler.register(5, receiver, torch.arange(4), 0, 4)
        handler.poll(5)
        handler.fail(5, "aborted by the test")
        handler.poll(5)
        handler.release(5)
    except Exception as exc:
        raise InvariantViolation(f"{type(exc).__name__}: {exc} — raised for receiver {receiver!r}") from exc
    if bool(staged) != expects_staging(receiver):
        raise InvariantViolation(f"{receiver!r} registered as {'staged' if staged else 'plain'}")
