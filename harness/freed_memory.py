"""Catch device memory that an implementation frees while work on another stream still uses it.

PyTorch's caching allocator hands a freed block to the next allocation on the
stream the block was allocated on, ordered after that stream's work only.  A
buffer allocated on the caller's stream and used by a kernel on a side stream
must therefore be protected (``tensor.record_stream(side)``, or the caller
waiting on the side stream's event before freeing it); otherwise the next user
of the block can overwrite it under the kernel, or the kernel can write into
the next user's data.  Such a race fires once in many runs, so a test can not
wait for it: :class:`FreedMemoryProbe` makes it happen every time.

During a probed call every side stream the implementation uses (any stream it
makes current, or makes wait on another) is held back by a *gate*: it waits on
an event recorded after a long ``torch.cuda._sleep`` on a stream of ours.
When the call returns, each block the call freed back to the caller stream's
pool is taken at once by the probe, as the allocator's next user would, and
filled with :data:`PROBE_BYTE` on the caller's stream (ordered after the
caller-stream work of the call, exactly as a real next user is).  Only then
does the gate open.  A correctly protected buffer is never handed out, so no
probe touches it; an unprotected one is overwritten *before* the held-back
kernel runs: the kernel reads probe bytes (visible as corrupted KV) or writes
into the probe (visible by :meth:`FreedMemoryProbe.check`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

import torch

from harness.engine.buffers import PROBE_BYTE  # a marker: never a byte of generated ground truth

GATE_CYCLES = 40_000_000  # ~20 ms at 2 GHz: far longer than planting the probes takes (~1 ms)
SMALL_POOL_LIMIT = 1 << 20  # requests up to this size are served from the allocator's small-block segments

T = TypeVar("T")


@dataclass(frozen=True)
class Block:
    """A block of the caching allocator: its device address, size and allocation stream handle."""

    address: int
    size: int
    stream: int
    small: bool  # in a small-block segment (served only to requests of at most SMALL_POOL_LIMIT bytes)

    @property
    def end(self) -> int:
        return self.address + self.size


def _blocks(device: torch.device, state: str) -> list[Block]:
    """Blocks of the caching allocator on ``device`` in ``state`` ('active_allocated', 'inactive', ...)."""
    try:
        segments = torch.cuda.memory_snapshot(include_traces=False)
    except TypeError:  # torch without the include_traces argument
        segments = torch.cuda.memory_snapshot()
    found = []
    for segment in segments:
        if segment.get("device") != device.index:
            continue
        address = segment["address"]
        for block in segment["blocks"]:
            if block["state"] == state:
                found.append(Block(address, block["size"], segment["stream"], segment.get("segment_type") == "small"))
            address += block["size"]
    return found


class FreedMemoryProbe:
    """Hold side streams during calls, then take and poison what the calls freed (see the module docstring)."""

    def __init__(self, device: torch.device | str, gate_cycles: int = GATE_CYCLES) -> None:
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ValueError(f"FreedMemoryProbe needs a CUDA device, got device={self.device}")
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.gate_cycles = gate_cycles
        self._gate_stream = torch.cuda.Stream(device=self.device)
        self._probes: list[tuple[str, Block, torch.Tensor]] = []
        self._exempt: set[int] = {self._gate_stream.cuda_stream}
        self.inconclusive = 0  # probed calls whose gate opened before the probes were in place

    def exempt(self, stream: Any) -> None:
        """Never hold ``stream`` (the harness's own streams: holding them would only stall the harness)."""
        self._exempt.add(stream.cuda_stream)

    def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` with side streams held; then every free block of the caller's pool is probed."""
        caller = torch.cuda.current_stream(self.device)
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()  # keeps the free cache (all of which gets probed) small
        with torch.cuda.stream(self._gate_stream):
            torch.cuda._sleep(self.gate_cycles)
        gate = self._gate_stream.record_event()
        with _holding_side_streams(gate, exempt=self._exempt | {caller.cuda_stream}):
            result = fn(*args, **kwargs)
        planted = self._plant(what, caller)
        while not planted.query():
            if gate.query():  # the caller's stream waited on a held stream (then its pool is safe), or we were slow
                self.inconclusive += 1
                break
        return result

    def _plant(self, what: str, caller: torch.cuda.Stream) -> torch.cuda.Event:
        """Take every free block of the caller stream's pool, as its next users would, and fill it on that stream.

        Blocks freed with ``record_stream`` are not free yet, and blocks of other streams' pools are only handed
        out on those streams (ordered after their work): neither is taken.  Requests go largest first, each the
        size of a free block (small-pool blocks in pieces), so best fit hands the free blocks out whole.
        """
        free = [b for b in _blocks(self.device, "inactive") if b.stream == caller.cuda_stream]
        sizes = []
        for block in free:
            piece = SMALL_POOL_LIMIT if block.small else block.size
            sizes += [piece] * (block.size // piece) + ([block.size % piece] if block.size % piece else [])
        for size in sorted(sizes, reverse=True):
            taken = torch.empty(size, dtype=torch.uint8, device=self.device)
            taken.fill_(PROBE_BYTE)
            self._probes.append((what, Block(taken.data_ptr(), size, caller.cuda_stream, size <= SMALL_POOL_LIMIT),
                                 taken))
        return caller.record_event()

    def check(self) -> list[str]:
        """After every stream finished: the probes still hold only :data:`PROBE_BYTE`.

        Returns one description per overwritten probe (empty when none), and lets the probes go.
        """
        torch.cuda.synchronize(self.device)
        problems = []
        for what, block, taken in self._probes:
            changed = int((taken != PROBE_BYTE).sum())
            if changed:
                problems.append(f"{changed} of {block.size} bytes of a block freed during {what} (allocated on the "
                                f"caller's stream) were written by work still running on another stream after the "
                                f"block was handed to its next user: protect buffers used on a side stream with "
                                f"record_stream or an event the caller waits on before freeing them")
        self._probes.clear()
        return problems


@contextlib.contextmanager
def _holding_side_streams(gate: torch.cuda.Event, exempt: set[int]) -> Iterator[None]:
    """While inside, any stream made current or made to wait (except ``exempt``) also waits on ``gate``."""
    held: set[int] = set()
    original_set_stream = torch.cuda.set_stream
    original_wait_event = torch.cuda.Stream.wait_event
    original_event_wait = torch.cuda.Event.wait

    def hold(stream: Any) -> None:
        handle = getattr(stream, "cuda_stream", None)
        if handle is not None and handle not in exempt and handle not in held:
            held.add(handle)
            original_wait_event(stream, gate)

    def set_stream(stream: Any) -> None:
        original_set_stream(stream)
        hold(stream)

    def wait_event(self: Any, event: Any) -> None:
        original_wait_event(self, event)
        hold(self)

    def event_wait(self: Any, stream: Any = None) -> None:
        original_event_wait(self, stream)
        hold(stream if stream is not None else torch.cuda.current_stream())

    torch.cuda.set_stream = set_stream
    torch.cuda.Stream.wait_event = wait_event  # type: ignore[method-assign]
    torch.cuda.Event.wait = event_wait  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.cuda.set_stream = original_set_stream
        torch.cuda.Stream.wait_event = original_wait_event  # type: ignore[method-assign]
        torch.cuda.Event.wait = original_event_wait  # type: ignore[method-assign]
