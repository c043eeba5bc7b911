"""Receiver routing, allocator and request-lifecycle bugs.

Handler bugs override one reference handler method taking ``*args`` and read the
arguments they need by their documented names
(``harness.interface.documented_arguments``): the signatures stay written once.
"""

from __future__ import annotations

from harness.interface import documented_arguments
from reference import allocator, handler
from reference.plugin import ReferenceImplementation


class _CustomHandler(ReferenceImplementation):
    """Base of the handler bugs below: the reference with its handler class swapped for ``Handler``."""

    Handler = handler.DecodeStagingHandler

    def make_decode_handler(self, **kwargs):
        return self.Handler(scatter=self.scatter, **kwargs)


class UnguardedRequireStaging(_CustomHandler):
    """Registration reads ``receiver.require_staging`` unguarded (SGLang PR #22153)."""

    class Handler(handler.DecodeStagingHandler):
        def register(self, *args):
            if documented_arguments("register", args).arguments["receiver"].require_staging:
                pass
            return super().register(*args)


class StagingOnlyIfTrue(_CustomHandler):
    """Routes with ``require_staging is True``: truthy non-bools (1, "yes", a Mock) take the plain path."""

    class Handler(handler.DecodeStagingHandler):
        def register(self, *args):
            staged = super().register(*args)
            call = documented_arguments("register", args).arguments
            if staged and getattr(call["receiver"], "require_staging", None) is not True:
                with self._lock:
                    self._requests[call["request_id"]].staged = False
                return False
            return staged


class WatermarkJumpsOnFree(allocator.RingAllocator):
    """Free moves the watermark to the freed region, even if older allocations are still live."""

    def free(self, alloc_id):
        live = {a.alloc_id: a for a in self.live()}
        super().free(alloc_id)
        if alloc_id in live and self.live():
            with self._lock:
                self._watermark = (live[alloc_id].round, live[alloc_id].end)


class OutOfOrderFree(ReferenceImplementation):
    """Allocator that frees out of order without holding the watermark."""

    def make_allocator(self, capacity):
        return WatermarkJumpsOnFree(capacity)


class NoOversizeCheck(allocator.RingAllocator):
    def assign(self, nbytes):
        if nbytes > self.capacity:
            return self._next_id + 10**6, 0, 0
        return super().assign(nbytes)


class AcceptsOversized(ReferenceImplementation):
    """Allocator that never refuses, even a chunk larger than the ring."""

    def make_allocator(self, capacity):
        return NoOversizeCheck(capacity)


class RoundZeroForever(ReferenceImplementation):
    """Writers check only the offset, forgetting rounds: may overwrite a live region after a wrap."""

    def writer_may_write(self, alloc_round, alloc_end, watermark):
        return True


class CountsDuplicateArrivals(_CustomHandler):
    """Counts arrivals, not distinct writer slots: a duplicate message triggers an early scatter."""

    class Handler(handler.DecodeStagingHandler):
        def chunk_arrived(self, *args):
            call = documented_arguments("chunk_arrived", args).arguments
            with self._lock:
                req = self._requests.get(call["request_id"])
                chunk = req.chunks.get(call["chunk_index"]) if req else None
                if chunk is not None and call["writer_slot"] in chunk.arrived and not chunk.scattered:
                    chunk.arrived.add(-len(chunk.arrived) - 1)  # a fake extra writer
                    if len(chunk.arrived) >= self._num_writers:
                        chunk.geometry = (call["page_start"], call["num_pages"], call["num_tokens"])
                        self._submit_scatter(req, chunk)
                    return
            super().chunk_arrived(*args)


class ReleaseLeaks(_CustomHandler):
    """Release forgets the request but frees only the chunks already scattered."""

    class Handler(handler.DecodeStagingHandler):
        def release(self, request_id):
            with self._lock:
                req = self._requests.pop(request_id, None)
                for chunk in (req.chunks.values() if req else ()):
                    if chunk.scattered:
                        self._free(chunk)


class IgnoresPrefix(_CustomHandler):
    """Scatter lands chunk pages at the page offset alone, forgetting the decode prefix."""

    class Handler(handler.DecodeStagingHandler):
        def _submit_scatter(self, req, chunk):
            prefix, req.prefix_len = req.prefix_len, 0
            try:
                super()._submit_scatter(req, chunk)
            finally:
                req.prefix_len = prefix


class TimeoutFailsEveryone(_CustomHandler):
    """A failure marks every pending request failed, not just the one that failed."""

    class Handler(handler.DecodeStagingHandler):
        def fail(self, request_id, reason):
            with self._lock:
                for req in self._requests.values():
                    if req.state == handler.PENDING:
                        self._fail(req, reason)


class NoMisalignedPrefixCheck(_CustomHandler):
    """Accepts a non-page-aligned decode prefix on the staged path."""

    class Handler(handler.DecodeStagingHandler):
        def register(self, *args):
            staged = super().register(*args)
            with self._lock:
                req = self._requests[documented_arguments("register", args).arguments["request_id"]]
                req.state, req.reason = handler.PENDING, ""
            return staged
