"""A handler that is only safe from one thread."""

from __future__ import annotations

import contextlib
import time

from reference import handler
from reference.plugin import ReferenceImplementation

YIELD_S = 0.001  # long enough for the other thread to act between a check and the action it allowed


class _YieldingAllocator:
    """The handler's allocator, yielding the GIL right after an assignment (before the handler records it)."""

    def __init__(self, inner) -> None:
        self._inner = inner

    def assign(self, nbytes):
        placed = self._inner.assign(nbytes)
        time.sleep(YIELD_S)
        return placed

    def free(self, alloc_id) -> None:
        self._inner.free(alloc_id)

    def watermark(self):
        return self._inner.watermark()


class ThreadUnsafeHandler(ReferenceImplementation):
    """The reference handler without its lock, yielding between checking that a request is pending and acting
    on it: the scheduler thread can release the request in between, so the transfer thread records a region
    in a forgotten request (a leak) or scatters a region already freed."""

    class Handler(handler.DecodeStagingHandler):
        def __init__(self, **kwargs) -> None:
            kwargs["allocator"] = _YieldingAllocator(kwargs["allocator"])
            super().__init__(**kwargs)
            self._lock = contextlib.nullcontext()

        def _submit_scatter(self, req, chunk) -> None:
            time.sleep(YIELD_S)
            super()._submit_scatter(req, chunk)

    def make_decode_handler(self, **kwargs):
        return self.Handler(scatter=self.scatter, **kwargs)
