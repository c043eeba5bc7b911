"""Byte layout of one chunk's staging region on a decode rank.

``[writer slot][K then V][layer][token][head][dim]``: writer parts follow one
another in slot order, each ``2 * layers * tokens * heads * head_dim * esize``
bytes, with no gaps and no overlap.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StagingLayout:
    """Writer parts of one chunk's staging region; upholds contiguity and order."""

    num_writers: int
    num_tokens: int
    heads_per_writer: int
    layers_per_writer: int
    head_dim: int
    element_size: int

    def __post_init__(self) -> None:
        for name in ("num_writers", "heads_per_writer", "layers_per_writer", "head_dim", "element_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"staging layout needs {name} >= 1, got {getattr(self, name)}")
        if self.num_tokens < 0:
            raise ValueError(f"staging layout needs num_tokens >= 0, got {self.num_tokens}")

    @property
    def token_bytes(self) -> int:
        """Bytes of one token of one layer of K (or V) for one writer."""
        return self.heads_per_writer * self.head_dim * self.element_size

    @property
    def writer_bytes(self) -> int:
        return 2 * self.layers_per_writer * self.num_tokens * self.token_bytes

    @property
    def total_bytes(self) -> int:
        return self.num_writers * self.writer_bytes

    def writer_span(self, slot: int) -> tuple[int, int]:
        """``(offset, nbytes)`` of writer ``slot``'s part."""
        if not 0 <= slot < self.num_writers:
            raise ValueError(f"writer slot {slot} is outside 0..{self.num_writers - 1}")
        return slot * self.writer_bytes, self.writer_bytes

    def spans(self) -> list[tuple[int, int]]:
        return [self.writer_span(slot) for slot in range(self.num_writers)]
