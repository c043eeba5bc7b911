"""Accelerator bugs (CUDA only)."""

from __future__ import annotations

from harness.interface import documented_arguments
from reference import handler
from reference.plugin import ReferenceImplementation


class SyncsInHotPath(ReferenceImplementation):
    """Gather reads a value back to the host (``.item()``) on every call."""

    def gather(self, *args):
        page_table = documented_arguments("gather", args).arguments["page_table"]
        int(page_table.max().item())  # a "cheap" bounds check that stalls the pipeline
        super().gather(*args)


class ScattersOnCallerStream(ReferenceImplementation):
    """The handler scatters on the caller's stream and frees the region at once (no side stream, no event)."""

    class Handler(handler.DecodeStagingHandler):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self._stream = None  # scatter inline on whatever stream the transfer thread uses

    def make_decode_handler(self, **kwargs):
        return self.Handler(scatter=lambda *a: self.scatter(*a), **kwargs)
