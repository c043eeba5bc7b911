"""The decode rank's staging ring: assignment, release and the (round, tail) watermark.

Assignment never waits ("overcommit"): a region may still hold bytes of an
older, live allocation.  Safety is the writer's job: it writes only once
:func:`writer_may_write` says the previous occupant of its bytes is gone,
judged from the watermark the decode side publishes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

Watermark = tuple[int, int]


@dataclass(frozen=True)
class Allocation:
    alloc_id: int
    offset: int
    nbytes: int
    round: int

    @property
    def end(self) -> int:
        return self.offset + self.nbytes


class RingAllocator:
    """A ring of ``capacity`` bytes.

    Upholds: allocations of one round never overlap (the head only moves
    forward within a round); the watermark is the (round, offset) of the
    oldest live allocation, so it never passes live data and never moves
    backwards; an empty ring restarts at offset 0 of a fresh round.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"staging ring capacity must be >= 1 byte, got {capacity}")
        self.capacity = capacity
        self._head = 0
        self._round = 0
        self._next_id = 0
        self._live: dict[int, Allocation] = {}  # insertion order == age
        self._watermark: Watermark = (0, 0)
        self._lock = threading.Lock()

    def assign(self, nbytes: int) -> tuple[int, int, int] | None:
        """``(alloc_id, offset, round)`` for ``nbytes``; ``None`` (refused) when it exceeds the ring."""
        if nbytes < 0:
            raise ValueError(f"cannot assign a negative byte count ({nbytes})")
        with self._lock:
            if nbytes > self.capacity:
                return None
            if self._head + nbytes > self.capacity:
                self._round += 1
                self._head = 0
            alloc = Allocation(self._next_id, self._head, nbytes, self._round)
            self._next_id += 1
            self._head = alloc.end
            self._live[alloc.alloc_id] = alloc
            return alloc.alloc_id, alloc.offset, alloc.round

    def free(self, alloc_id: int) -> None:
        """Release ``alloc_id`` (unknown ids are ignored) and raise the watermark."""
        with self._lock:
            if self._live.pop(alloc_id, None) is None:
                return
            if self._live:
                oldest = next(iter(self._live.values()))
                self._watermark = max(self._watermark, (oldest.round, oldest.offset))
            else:
                self._round += 1
                self._head = 0
                self._watermark = (self._round, 0)

    def watermark(self) -> Watermark:
        with self._lock:
            return self._watermark

    def live(self) -> list[Allocation]:
        """Live allocations, oldest first."""
        with self._lock:
            return list(self._live.values())


def writer_may_write(alloc_round: int, alloc_end: int, watermark: Watermark) -> bool:
    """Whether allocation ``(round, end)`` may be written given a received watermark.

    Round 0 has no previous occupant.  Otherwise the previous occupant of these
    bytes belongs to round ``round - 1``: it is gone once the oldest live
    allocation is in a later round, or in that round at or beyond ``end``.
    """
    wm_round, wm_tail = watermark
    if alloc_round == 0 or alloc_round - 1 < wm_round:
        return True
    return alloc_round - 1 == wm_round and alloc_end <= wm_tail
