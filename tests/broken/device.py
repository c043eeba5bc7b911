"""Accelerator bugs (CUDA only)."""

from __future__ import annotations

import torch

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


class ScratchFreedUnderSideStream(ReferenceImplementation):
    """The handler snapshots each chunk's region into a scratch buffer on the caller's stream (so the ring could be
    reused at once) and scatters the snapshot on its side stream, but lets the scratch go when the call returns:
    no ``record_stream``, so the caching allocator hands the scratch to its next user while the scatter still reads it."""

    class Handler(handler.DecodeStagingHandler):
        def _submit_scatter(self, req, chunk):
            ring = self._staging
            scratch = torch.empty_like(ring)  # allocated on the caller's stream
            scratch[chunk.offset:chunk.offset + chunk.nbytes].copy_(ring[chunk.offset:chunk.offset + chunk.nbytes])
            self._staging = scratch
            try:
                super()._submit_scatter(req, chunk)  # the side stream waits for the copy, then reads the scratch
            finally:
                self._staging = ring

    def make_decode_handler(self, **kwargs):
        return self.Handler(scatter=lambda *a: self.scatter(*a), **kwargs)
