"""Accelerator behaviour: CUDA results equal CPU results; no host sync in the per-chunk hot path.

These tests need CUDA; without it they are reported as skipped with that reason.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from hypothesis import given

import strategies as kst
from harness.engine.moves import case_rank, move_with_kv_copy, ring_bytes_for, stage_case
from harness.freed_memory import FreedMemoryProbe
from harness.oracles import InvariantViolation
from harness.world import World, int_view

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)")


@pytest.fixture(scope="session")
def impl(impl_in_process):
    """These tests observe the implementation's own process (CUDA sync-debug mode, the freed-memory probe) and
    patch its methods, so they run it in this process whatever ``--isolation`` says (unguarded, as before)."""
    return impl_in_process


@contextlib.contextmanager
def no_host_sync(what: str):
    """Turn any synchronising CUDA call inside the block into an InvariantViolation."""
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    except RuntimeError as exc:
        if "synchroniz" in str(exc).lower():
            raise InvariantViolation(f"{what} synchronised with the host: {exc}") from exc
        raise
    finally:
        torch.cuda.set_sync_debug_mode(previous)


@needs_cuda
@pytest.mark.invariant("device", requires=("kv_copy",), since="1.0")
@given(case=kst.transfer_cases())
def test_device_cuda_matches_cpu(impl, case):
    worlds = {}
    for device in ("cpu", "cuda"):
        worlds[device] = World.build(case, device)
        move_with_kv_copy(impl, worlds[device])
    for index, (c, g) in enumerate(zip(worlds["cpu"].decode, worlds["cuda"].decode)):
        for name, cl, gl in (("K", c.k, g.k), ("V", c.v, g.v)):
            for layer, (a, b) in enumerate(zip(cl, gl)):
                if not torch.equal(int_view(a), int_view(b).cpu()):
                    raise InvariantViolation(f"decode pool {index} {name} layer {layer}: CUDA result differs from CPU")


@needs_cuda
@pytest.mark.invariant("device", requires=("allocator", "kv_copy", "decode_handler"), since="1.0")
@given(case=kst.transfer_cases(max_tokens=32))
def test_device_no_host_sync_in_hot_path(impl, case):
    """Gather and chunk arrival (which submits the scatter) never wait for the GPU."""
    world = World.build(case, "cuda")
    rank = case_rank(impl, world, 0, ring_bytes_for(impl, world, 4))
    hot = rank.impl

    class _Watched:
        """Forwards to the implementation, wrapping the per-chunk calls in no_host_sync."""

        capabilities = hot.capabilities

        def __getattr__(self, name):
            return getattr(hot, name)

        def gather(self, *args):
            torch.cuda.synchronize()  # what came before is not the hot path's business
            with no_host_sync("gather"):
                hot.gather(*args)

    handler = rank.handler
    arrived = handler.chunk_arrived

    def watched_arrival(*args):
        torch.cuda.synchronize()
        with no_host_sync("chunk_arrived (scatter submission)"):
            arrived(*args)

    rank.impl, handler.chunk_arrived = _Watched(), watched_arrival
    stage_case(rank)
    torch.cuda.synchronize()
    world.check_decode(indices=[0])


@needs_cuda
@pytest.mark.invariant("device", requires=("allocator", "kv_copy", "decode_handler"), since="1.0")
@given(case=kst.transfer_cases(max_tokens=32))
def test_device_scatter_on_its_own_stream(impl, case):
    """The handler's scatters run on a stream other than the caller's (the transfer thread's),
    so they overlap with it; regions it frees get overwritten at once from yet another stream
    (the engine's ``Ledger``), so a region freed before its scatter finished shows in the data.

    Judged when the handler scatters through ``impl.scatter``; a handler with a scatter of
    its own is judged by the data check alone.
    """
    caller = torch.cuda.current_stream()
    streams = []
    original = impl.scatter

    def recording_scatter(*args):
        streams.append(torch.cuda.current_stream())
        original(*args)

    try:
        impl.scatter = recording_scatter  # seen by handlers that look scatter up on the implementation
    except (AttributeError, TypeError):
        pass  # immutable implementation object: the data check still judges it
    try:
        world = World.build(case, "cuda")
        stage_case(case_rank(impl, world, 0, ring_bytes_for(impl, world, 1)))
    finally:
        if getattr(impl, "__dict__", {}).get("scatter") is recording_scatter:
            del impl.scatter
    torch.cuda.synchronize()
    world.check_decode(indices=[0])
    if any(s == caller for s in streams):
        raise InvariantViolation("the decode handler scattered on the caller's stream; "
                                 "scatter on a side stream and track completion with an event")


@needs_cuda
@pytest.mark.invariant("device", requires=("allocator", "kv_copy", "decode_handler"), since="1.0")
@given(case=kst.transfer_cases(max_tokens=32))
def test_device_buffers_outlive_their_side_stream_work(impl, case):
    """Memory the handler frees while a kernel on another stream still uses it goes to its next user at once:
    :class:`~harness.freed_memory.FreedMemoryProbe` holds side streams back during each handler call, then
    takes and poisons what the caller's pool has free, so the race that fires once in many runs fires every
    time: as probe bytes in the decode pool, or as a probe written after the fact."""
    world = World.build(case, "cuda")
    rank = case_rank(impl, world, 0, ring_bytes_for(impl, world, 2))
    probe = FreedMemoryProbe("cuda")
    for stream in rank.ledger.streams:
        probe.exempt(stream)
    handler = rank.handler

    class _Probed:
        """The handler, each call made under the probe."""

        def __getattr__(self, name):
            method = getattr(handler, name)
            if not callable(method):
                return method
            return lambda *args, **kwargs: probe.call(f"handler.{name}", method, *args, **kwargs)

    rank.handler = _Probed()
    stage_case(rank)
    problems = probe.check()
    if problems:
        raise InvariantViolation(problems[0])
    world.check_decode(indices=[0])
