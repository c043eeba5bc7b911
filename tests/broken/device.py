"""Accelerator bugs (CUDA only)."""

from __future__ import annotations


from reference import handler
from reference.plugin import ReferenceImplementation


class SyncsInHotPath(ReferenceImplementation):
    """Gather reads a value back to the host (``.item()``) on every call."""

    def gather(self, k, v, page_table, page_size, num_tokens, head_start, head_count, out):
        int(page_table.max().item())  # a "cheap" bounds check that stalls the pipeline
        super().gather(k, v, page_table, page_size, num_tokens, head_start, head_count, out)


class ScattersOnCallerStream(ReferenceImplementation):
    """The handler scatters on the caller's stream and frees the region at once (no side stream, no event)."""

    class Handler(handler.DecodeStagingHandler):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self._stream = None  # scatter inline on whatever stream the transfer thread uses

    def make_decode_handler(self, **kwargs):
        return self.Handler(scatter=lambda *a: self.scatter(*a), **kwargs)
