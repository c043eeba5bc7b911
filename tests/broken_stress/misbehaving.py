"""Implementations that misbehave outright: hang, raise, return garbage, write out of bounds."""

from __future__ import annotations

import threading

import torch

from reference import handler
from reference.plugin import ReferenceImplementation


class _HandlerImplementation(ReferenceImplementation):
    Handler = handler.DecodeStagingHandler

    def make_decode_handler(self, **kwargs):
        return self.Handler(scatter=self.scatter, **kwargs)


class HangsInPoll(_HandlerImplementation):
    """Poll waits, without a timeout, for a completion signal nobody ever sets, once a chunk was scattered."""

    class Handler(handler.DecodeStagingHandler):
        def __init__(self, **kwargs) -> None:
            super().__init__(**kwargs)
            self._never = threading.Event()

        def poll(self, request_id) -> str:
            req = self._requests.get(request_id)
            if req is not None and any(c.scattered for c in req.chunks.values()):
                self._never.wait()
            return super().poll(request_id)


class RaisesOnDuplicate(_HandlerImplementation):
    """A duplicate arrival raises KeyError (the slot was popped from a pending set)."""

    class Handler(handler.DecodeStagingHandler):
        def chunk_arrived(self, request_id, chunk_index, writer_slot, page_start, num_pages, num_tokens) -> None:
            req = self._requests.get(request_id)
            chunk = req.chunks.get(chunk_index) if req else None
            if chunk is not None and writer_slot in chunk.arrived:
                raise KeyError(f"writer slot {writer_slot} already reported chunk {chunk_index}")
            super().chunk_arrived(request_id, chunk_index, writer_slot, page_start, num_pages, num_tokens)


class PollReturnsCodes(_HandlerImplementation):
    """Poll answers integer codes (0 pending, 1 done, 2 failed) instead of the interface's strings."""

    class Handler(handler.DecodeStagingHandler):
        def poll(self, request_id):
            return ("pending", "done", "failed").index(super().poll(request_id))


class ClearsPastRegionEnd(_HandlerImplementation):
    """After each scatter, zeroes its staging region and 16 bytes beyond it (through a raw strided view)."""

    OVERRUN = 16

    class Handler(handler.DecodeStagingHandler):
        def _submit_scatter(self, req, chunk) -> None:
            super()._submit_scatter(req, chunk)
            ring = self._staging
            raw = torch.as_strided(ring, (chunk.nbytes + ClearsPastRegionEnd.OVERRUN,), (1,),
                                   ring.storage_offset() + chunk.offset)
            raw.zero_()
