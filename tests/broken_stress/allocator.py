"""Allocator bugs."""

from __future__ import annotations

from reference import allocator
from reference.plugin import ReferenceImplementation


class HeadRoundRing(allocator.RingAllocator):
    """The watermark pairs the oldest live offset with the head's round, not the oldest's own round."""

    def free(self, alloc_id) -> None:
        super().free(alloc_id)
        with self._lock:
            if self._live:
                oldest = next(iter(self._live.values()))
                self._watermark = max(self._watermark, (self._round, oldest.offset))


class WatermarkPastLiveAllocation(ReferenceImplementation):
    """After a wrap, the watermark runs one round ahead of the oldest live allocation."""

    def make_allocator(self, capacity):
        return HeadRoundRing(capacity)
