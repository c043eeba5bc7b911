"""CPU as a device for engine code written for CUDA: streams, events, kernels, sync checks.

Engines stage KV on side streams and free regions when an event completes.
On CPU the work of a call is finished when the call returns, so a synchronous
stream (waits are no-ops) and an always-complete event are exact stand-ins,
not approximations.  Triton kernels run on CPU through Triton's interpreter.

Invariants upheld: the stand-ins never report work as complete before it is
(CPU work is synchronous); :func:`triton_interpreter` and
:func:`cuda_sync_debug_paused` restore the previous setting on exit, so their
effect is scoped to the adapter's own step.
"""

from __future__ import annotations

import contextlib
import datetime
from typing import Any, Iterator

import torch


class CompletedEvent:
    """A CPU device event: CPU work is complete when its call returns."""

    def record(self, stream: Any = None) -> None:
        pass

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        pass

    def wait(self, stream: Any = None) -> None:
        pass


class SynchronousStream:
    """A CPU device stream: work runs in order on the calling thread, so waits are no-ops."""

    def __init__(self, device: Any) -> None:
        self.device = torch.device(device)

    def wait_stream(self, stream: Any) -> None:
        pass

    def wait_event(self, event: Any) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def record_event(self, event: Any = None) -> Any:
        return event if event is not None else CompletedEvent()


def is_cpu(device: Any) -> bool:
    """Whether ``device`` (a ``torch.device`` or its name) is the CPU."""
    return torch.device(device).type == "cpu"


@contextlib.contextmanager
def triton_interpreter() -> Iterator[None]:
    """``triton.jit`` builds interpreter functions while this runs (no GPU to compile for).

    Import the engine's kernel module inside it.  Older Triton without
    ``triton.knobs`` only honours ``TRITON_INTERPRET=1`` set before import;
    there this does nothing.
    """
    import triton

    knobs = getattr(triton, "knobs", None)
    if knobs is None:
        yield
        return
    with knobs.runtime.scope():
        knobs.runtime.interpret = True
        yield


@contextlib.contextmanager
def cuda_sync_debug_paused(device: torch.device) -> Iterator[None]:
    """CUDA's sync debug mode off while the block runs (on ``device`` of type cuda; else nothing).

    For an adapter's own conversion step (e.g. page indices an engine takes
    on the host): a host sync reported around it is then the engine's own.
    """
    if device.type != "cuda":
        yield
        return
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(0)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def single_rank_gloo_group() -> Any:
    """A real one-rank gloo group: an engine's collective over it is the identity, as on one TP rank."""
    dist = torch.distributed
    return dist.ProcessGroupGloo(dist.HashStore(), 0, 1, datetime.timedelta(seconds=30))
