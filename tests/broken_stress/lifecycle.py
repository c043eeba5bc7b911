"""Request-lifecycle bugs: early free, double scatter, leak on abort, a failure hitting neighbours."""

from __future__ import annotations

from reference import handler
from reference.plugin import ReferenceImplementation
from tests.broken_stress.lazy_stream import LazyStream


class _HandlerImplementation(ReferenceImplementation):
    """The reference with its decode handler replaced by the nested ``Handler`` class."""

    Handler = handler.DecodeStagingHandler

    def make_decode_handler(self, **kwargs):
        return self.Handler(scatter=self.scatter, **kwargs)


class LazyScatterHandler(handler.DecodeStagingHandler):
    """Correct: scatters on a lazy CPU stream and, like the reference, frees only once the event completed."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._lazy = LazyStream() if not self._staging.is_cuda else None

    def _submit_scatter(self, req, chunk) -> None:
        if self._lazy is None:
            return super()._submit_scatter(req, chunk)
        real, events = self._scatter, []
        self._scatter = lambda *args: events.append(self._lazy.submit(lambda: real(*args)))
        try:
            super()._submit_scatter(req, chunk)
        finally:
            self._scatter = real
        chunk.event = events[0]


class AsyncScatterReference(_HandlerImplementation):
    """Positive control: an asynchronous CPU scatter handled correctly; the suites must pass it."""

    Handler = LazyScatterHandler


class FreesBeforeScatterCompletes(_HandlerImplementation):
    """Frees the region right after submitting its scatter, not after the scatter's event completed."""

    class Handler(LazyScatterHandler):
        def _submit_scatter(self, req, chunk) -> None:
            super()._submit_scatter(req, chunk)
            self._free(chunk)


class FreesRightAfterLaunch(_HandlerImplementation):
    """The same bug with the reference's real CUDA side stream (on CPU the scatter is synchronous: harmless)."""

    class Handler(handler.DecodeStagingHandler):
        def _submit_scatter(self, req, chunk) -> None:
            super()._submit_scatter(req, chunk)
            self._free(chunk)


class ReleaseSkipsScatterWait(_HandlerImplementation):
    """Release frees every region at once, without waiting for scatters still in flight (CUDA)."""

    class Handler(handler.DecodeStagingHandler):
        def release(self, request_id) -> None:
            with self._lock:
                req = self._requests.pop(request_id, None)
                for chunk in (req.chunks.values() if req else ()):
                    self._free(chunk)


class DoubleScatterOnDuplicate(_HandlerImplementation):
    """A duplicate "chunk ready" for a chunk already scattered scatters it again, from a region maybe reused."""

    class Handler(handler.DecodeStagingHandler):
        def chunk_arrived(self, request_id, chunk_index, writer_slot, page_start, num_pages, num_tokens) -> None:
            with self._lock:
                req = self._requests.get(request_id)
                chunk = req.chunks.get(chunk_index) if req else None
                if chunk is not None and chunk.scattered and writer_slot in chunk.arrived:
                    self._submit_scatter(req, chunk)
                    return
            super().chunk_arrived(request_id, chunk_index, writer_slot, page_start, num_pages, num_tokens)


class LeakOnAbort(_HandlerImplementation):
    """An abort forgets the request on the spot, so its release finds nothing to free."""

    class Handler(handler.DecodeStagingHandler):
        def fail(self, request_id, reason) -> None:
            super().fail(request_id, reason)
            with self._lock:
                self._requests.pop(request_id, None)


class FailureFreesNeighbours(_HandlerImplementation):
    """A failing request frees the unscattered regions of every request (the loop walks the wrong dict)."""

    class Handler(handler.DecodeStagingHandler):
        def _fail(self, req, reason) -> None:
            super()._fail(req, reason)
            for other in self._requests.values():
                for chunk in other.chunks.values():
                    if not chunk.scattered:
                        self._free(chunk)
