"""Buffers handed to an implementation, each between canary margins, and the marker bytes the engine writes.

A marker never equals a byte of generated ground truth (``pool.seeded_truth``), so a row full of one says
where it came from: never written (canary), a freed staging region (scribble), a writer that died mid-write
(garbage).  Pool layers are carved from allocations as a ``PoolLayout`` says (:meth:`CanaryFence.pool`),
with canary in every gap between and around the views.
"""

from __future__ import annotations

from typing import Sequence

import torch

from harness.oracles import ExpectedBytes, InvariantViolation
from strategies.pool_layout import PoolLayout, ViewPlacement

CANARY_BYTE = 0xA5    # 1010_0101: an unlikely KV byte, easy to spot in a dump

SCRIBBLE_BYTE = 0x5A  # what a freed region is overwritten with, as its next user would
GARBAGE_BYTE = 0x3C   # what a partial write leaves in the rest of a writer's part
PROBE_BYTE = 0x6B     # what the freed-memory probe's stand-in next user writes (harness.freed_memory)
MARKERS = (CANARY_BYTE, SCRIBBLE_BYTE, GARBAGE_BYTE, PROBE_BYTE)
MARGIN = 64           # canary bytes guarding each side of every buffer handed to the implementation


class Guarded:
    """A uint8 buffer with canary margins on both sides; ``inner`` is what the implementation gets."""

    def __init__(self, nbytes: int, device, fill: int = CANARY_BYTE, whole: torch.Tensor | None = None) -> None:
        """``whole``: ``nbytes + 2 * MARGIN`` bytes to use (a piece of a larger block), filled here."""
        if whole is None:
            self.whole = torch.full((nbytes + 2 * MARGIN,), fill, dtype=torch.uint8, device=device)
        else:
            self.whole = whole.fill_(fill)
        self.inner = self.whole[MARGIN:MARGIN + nbytes]
        #: Both margins as the two rows of one view: one comparison checks them (the side is found on a failure).
        self._edges = self.whole.as_strided((2, MARGIN), (nbytes + MARGIN, 1))

    def check_margins(self, what: str) -> None:
        """Both margins still hold the canary, or the violation names the buffer and the side."""
        if not bool((self._edges != CANARY_BYTE).any()):
            return
        for name, edge in (("before", self.whole[:MARGIN]), ("after", self.whole[-MARGIN:])):
            if bool((edge != CANARY_BYTE).any()):
                margins = torch.ones_like(self.whole, dtype=torch.bool)
                margins[MARGIN:self.whole.numel() - MARGIN] = False
                raise InvariantViolation(f"{what} wrote outside its buffer ({name} it)").expecting(
                    ExpectedBytes(self.whole, torch.full_like(self.whole, CANARY_BYTE), margins))


class CarvedAllocation:
    """One allocation of a pool layout between canary margins, the layer views carved from it (``tensors``,
    in the order of ``views``) and canary in every element no view covers (the gaps between them)."""

    def __init__(self, elements: int, dtype: torch.dtype, device, shape: tuple[int, int, int],
                 views: Sequence[tuple[str, ViewPlacement]], whole: torch.Tensor | None = None) -> None:
        self.element_size = torch.empty((), dtype=dtype).element_size()
        self.guarded = Guarded(elements * self.element_size, device, whole=whole)
        typed = self.guarded.inner.view(dtype)
        covered = torch.zeros(elements, dtype=torch.bool, device=device)
        self.tensors: list[torch.Tensor] = []
        self.spans: list[tuple[int, int, str]] = []  # first and last element of each view, its name
        for name, place in views:
            covered.as_strided(shape, place.strides, place.offset).fill_(True)
            self.tensors.append(typed.as_strided(shape, place.strides, typed.storage_offset() + place.offset))
            last = place.offset + sum((size - 1) * stride for size, stride in zip(shape, place.strides))
            self.spans.append((place.offset, last, name))
        self.gaps = None if bool(covered.all()) else ~covered

    def check_margins(self, what: str) -> None:
        """The margins and every gap still hold the canary, or the violation names the layer next to it."""
        self.guarded.check_margins(what)
        if self.gaps is None:
            return
        written = (self.guarded.inner.view(-1, self.element_size) != CANARY_BYTE).any(1) & self.gaps
        if bool(written.any()):
            element = int(written.nonzero()[0])
            raise InvariantViolation(f"{what} wrote outside its buffer: element {element} of the allocation is "
                                     f"padding {self._near(element)}, in no layer view (a write through the wrong "
                                     f"stride or past a view)")

    def _near(self, element: int) -> str:
        """Where the gap ``element`` sits: inside the span of a view, else between the views on either side."""
        inside = [name for first, last, name in self.spans if first <= element <= last]
        if inside:
            return "inside the span of " + " and ".join(inside)
        before = [(last, name) for first, last, name in self.spans if last < element]
        after = [(first, name) for first, last, name in self.spans if first > element]
        return " and ".join(([f"after {max(before)[1]}"] if before else []) + ([f"before {min(after)[1]}"] if after else []))


#: Alignment of the pieces of one block (:func:`_pieces`): what a caching allocator's blocks give at least.
PIECE_ALIGN = 256


def _pieces(device, sizes: Sequence[int]) -> list[torch.Tensor]:
    """Byte tensors of ``sizes``, each a :data:`PIECE_ALIGN`-aligned piece of one block.  A rank's pool is one
    block, as an engine allocates it: under process isolation a block crosses to the worker as one storage (an
    allocation per layer cost a shared-memory segment each), and a repro script embeds that rank's bytes only."""
    starts, end = [], 0
    for size in sizes:
        starts.append(end)
        end += -(-size // PIECE_ALIGN) * PIECE_ALIGN
    block = torch.empty((end,), dtype=torch.uint8, device=device)
    return [block[start:start + size] for start, size in zip(starts, sizes)]


class CanaryFence:
    """Every buffer handed to an implementation, each between canary margins (:class:`Guarded`), and every
    pool allocation with canary in its gaps too (:class:`CarvedAllocation`).

    ``check`` reports the first buffer written outside its bounds: an out-of-bounds write from a kernel or an
    ``as_strided`` view is caught even though torch indexing cannot do it.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._buffers: list[tuple[str, Guarded | CarvedAllocation]] = []

    def bytes(self, nbytes: int, what: str, fill: int) -> torch.Tensor:
        """A fenced uint8 buffer of ``nbytes`` filled with ``fill``."""
        buffer = Guarded(nbytes, self.device)
        buffer.inner.fill_(fill)
        self._buffers.append((what, buffer))
        return buffer.inner

    def pool(self, layout: PoolLayout, layers: Sequence[int], rows: int, heads: int, head_dim: int,
             dtype: torch.dtype, what: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """K and V layers ``[rows, heads, head_dim]`` of global ``layers``, carved as ``layout`` says, all canary.

        The one pool builder: every pool the harness hands out comes from here."""
        geometry = layout.geometry(len(layers), rows, heads, head_dim)
        members: dict[int, list[tuple[int, int, ViewPlacement]]] = {}
        for kv, placements in enumerate(geometry.views):
            for local, place in enumerate(placements):
                members.setdefault(place.allocation, []).append((kv, local, place))
        k: list[torch.Tensor] = [torch.empty(0)] * len(layers)
        v: list[torch.Tensor] = [torch.empty(0)] * len(layers)
        pieces = _pieces(self.device, [geometry.allocation_elements[index] * torch.empty((), dtype=dtype).element_size()
                                       + 2 * MARGIN for index in sorted(members)])
        for (index, views), whole in zip(sorted(members.items()), pieces):
            named = [(f"{'KV'[kv]} layer {layers[local]}", place) for kv, local, place in views]
            allocation = CarvedAllocation(geometry.allocation_elements[index], dtype, self.device,
                                          (rows, heads, head_dim), named, whole)
            self._buffers.append((f"{what} " + (named[0][0] if len(named) == 1 else
                                                f"({named[0][0]} .. {named[-1][0]} in one allocation)"), allocation))
            for (kv, local, _), tensor in zip(views, allocation.tensors):
                (k, v)[kv][local] = tensor
        return k, v

    def check(self) -> None:
        for what, buffer in self._buffers:
            buffer.check_margins(what)
