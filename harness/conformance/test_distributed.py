"""Distributed mode: round trip and lifecycle with every prefill and decode rank its own process.

Hypothesis draws the case in this (parent) process; one pool of rank
processes (``harness.distributed.WorkerGroup``) is started per module and
reused by every example.  KV bytes cross the process group (gloo on CPU by
default; ``KVCONFORM_DIST_BACKEND=nccl`` moves them GPU to GPU), each rank
checks the in-process invariants on its own pools, and rank 0 gathers the
verdicts.  Knobs (environment): ``KVCONFORM_DIST_BACKEND`` (gloo, nccl, off),
``KVCONFORM_DIST_DEVICE``, ``KVCONFORM_DIST_RANKS`` (group size, the largest
topology drawn), ``KVCONFORM_DIST_SHARE_GPUS``, ``KVCONFORM_DIST_TIMEOUT``.
See docs/distributed.md.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import strategies as kst
from harness.distributed import (
    BackendUnavailable,
    CaseJob,
    WorkerGroup,
    config_from_env,
    ranks_needed,
)
from harness.distributed.schedule import writer_slot_counts

_NEEDS = ("allocator", "kv_copy", "decode_handler")
_CONFIG = config_from_env()
_WORLD_SIZE = _CONFIG.world_size if _CONFIG is not None else 2
# A distributed example costs rounds of messages among every rank: run half the profile's examples.
_EXAMPLES = max(3, settings().max_examples // 2)
_SETTINGS = settings(max_examples=_EXAMPLES, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def _topologies():
    """Valid topologies whose prefill and decode ranks together fit the process group."""
    cap = max(1, _WORLD_SIZE - 1)
    return kst.topologies(max_tp=cap, max_ranks=cap).filter(lambda t: ranks_needed(t) <= _WORLD_SIZE)


@pytest.fixture(scope="module")
def worker_group():
    """The module's pool of rank processes; a backend this machine lacks skips with the reason."""
    if _CONFIG is None:
        pytest.skip("distributed mode is off (KVCONFORM_DIST_BACKEND=off)")
    try:
        group = WorkerGroup(_CONFIG).start()
    except BackendUnavailable as exc:
        pytest.skip(f"distributed {_CONFIG.backend} on {_CONFIG.device}: {exc}")
    try:
        yield group
    finally:
        group.close()


@pytest.mark.invariant("round_trip", requires=_NEEDS, since="1.0")
@_SETTINGS
@given(case=kst.transfer_cases(topologies=_topologies(), max_tokens=32), slack=st.integers(1, 3))
def test_distributed_round_trip(worker_group, loaded_impl, case, slack):
    """Writers in other processes fill each decode rank's ring (holding ``slack`` chunks) through the
    process group; every decode pool ends bit-identical to ground truth, nothing else changes."""
    worker_group.run(CaseJob(case, loaded_impl.spec, slack=slack)).raise_if_failed()


@pytest.mark.invariant("lifecycle", requires=_NEEDS, since="1.0")
@_SETTINGS
@given(case=kst.transfer_cases(topologies=_topologies(), max_tokens=24), data=st.data())
def test_distributed_arrival_orders(worker_group, loaded_impl, case, data):
    """Each decode rank's writers arrive interleaved, out of order and duplicated; every chunk is
    scattered once, after its last writer, and the pools match ground truth."""
    slots, chunks = writer_slot_counts(loaded_impl.implementation, case)
    orders = tuple(
        tuple(data.draw(kst.arrival_orders([(c, s) for c in range(chunks) for s in range(n)]), label=f"arrivals at decode {j}"))
        for j, n in enumerate(slots)
    )
    # A ring holding every chunk: writers of a later chunk never wait on an earlier one that arrives last.
    worker_group.run(CaseJob(case, loaded_impl.spec, slack=chunks, arrival_orders=orders)).raise_if_failed()
