"""Buffers handed to an implementation, each between canary margins, and the marker bytes the engine writes.

A marker never equals a byte of generated ground truth (``pool.seeded_truth``), so a row full of one says
where it came from: never written (canary), a freed staging region (scribble), a writer that died mid-write
(garbage).
"""

from __future__ import annotations

import torch

from harness.oracles import ExpectedBytes, InvariantViolation
from harness.world import CANARY_BYTE

SCRIBBLE_BYTE = 0x5A  # what a freed region is overwritten with, as its next user would
GARBAGE_BYTE = 0x3C   # what a partial write leaves in the rest of a writer's part
PROBE_BYTE = 0x6B     # what the freed-memory probe's stand-in next user writes (harness.freed_memory)
MARKERS = (CANARY_BYTE, SCRIBBLE_BYTE, GARBAGE_BYTE, PROBE_BYTE)
MARGIN = 64           # canary bytes guarding each side of every buffer handed to the implementation


class Guarded:
    """A uint8 buffer with canary margins on both sides; ``inner`` is what the implementation gets."""

    def __init__(self, nbytes: int, device, fill: int = CANARY_BYTE) -> None:
        self.whole = torch.full((nbytes + 2 * MARGIN,), fill, dtype=torch.uint8, device=device)
        self.inner = self.whole[MARGIN:MARGIN + nbytes]

    def check_margins(self, what: str) -> None:
        """Both margins still hold the canary, or the violation names the buffer and the side."""
        for name, edge in (("before", self.whole[:MARGIN]), ("after", self.whole[-MARGIN:])):
            if bool((edge != CANARY_BYTE).any()):
                margins = torch.ones_like(self.whole, dtype=torch.bool)
                margins[MARGIN:self.whole.numel() - MARGIN] = False
                raise InvariantViolation(f"{what} wrote outside its buffer ({name} it)").expecting(
                    ExpectedBytes(self.whole, torch.full_like(self.whole, CANARY_BYTE), margins))


class CanaryFence:
    """Every buffer handed to an implementation, each between canary margins (:class:`Guarded`).

    ``check`` reports the first buffer written outside its bounds: an out-of-bounds write from a kernel or an
    ``as_strided`` view is caught even though torch indexing cannot do it.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._buffers: list[tuple[str, Guarded]] = []

    def bytes(self, nbytes: int, what: str, fill: int) -> torch.Tensor:
        """A fenced uint8 buffer of ``nbytes`` filled with ``fill``."""
        buffer = Guarded(nbytes, self.device)
        buffer.inner.fill_(fill)
        self._buffers.append((what, buffer))
        return buffer.inner

    def tensor(self, shape: tuple[int, ...], dtype: torch.dtype, what: str, fill: int) -> torch.Tensor:
        """A fenced tensor of ``shape`` and ``dtype`` whose every byte is ``fill``."""
        nbytes = torch.empty((), dtype=dtype).element_size()
        for size in shape:
            nbytes *= size
        return self.bytes(nbytes, what, fill).view(dtype).view(shape)

    def check(self) -> None:
        for what, buffer in self._buffers:
            buffer.check_margins(what)
