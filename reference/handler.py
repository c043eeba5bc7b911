"""The decode rank's staging handler: request lifecycle over the staging ring.

register → (allocate_chunk → chunk_arrived × writers → scatter) per chunk →
prefill_done → poll reports done; or failed (timeout, oversized chunk,
non-page-aligned prefix, abort) → release frees every allocation.

Two threads use a handler in production: the transfer thread (allocation
requests, arrivals, scatter submission) and the scheduler thread (poll,
fail, release).  One lock serialises all state changes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch

from reference import kv_copy
from reference.receivers import requires_staging

PENDING, DONE, FAILED = "pending", "done", "failed"

ScatterFn = Callable[..., None]


@dataclass
class _Chunk:
    alloc_id: int
    offset: int
    round: int
    nbytes: int
    arrived: set[int] = field(default_factory=set)
    geometry: Optional[tuple[int, int, int]] = None  # (page_start, num_pages, num_tokens)
    scattered: bool = False
    event: Any = None  # CUDA event of an in-flight scatter
    freed: bool = False

    @property
    def answer(self) -> tuple[int, int, int]:
        return self.offset, self.round, self.offset + self.nbytes


@dataclass
class _Request:
    page_table: torch.Tensor
    prefix_len: int
    num_tokens: int
    staged: bool
    registered_at: float
    state: str = PENDING
    reason: str = ""
    prefill_done: bool = False
    tokens_scattered: int = 0
    chunks: dict[int, _Chunk] = field(default_factory=dict)


class DecodeStagingHandler:
    """Staging handler of one decode rank.

    Upholds: a chunk is scattered exactly once, only after every writer slot
    arrived; it lands at token ``prefix_len + page_start * page_size`` of the
    request; a region is freed only after its scatter completed; release
    frees everything the request holds; unknown, late and duplicate messages
    change nothing.
    """

    def __init__(
        self,
        *,
        staging: torch.Tensor,
        allocator: Any,
        k_layers: Sequence[torch.Tensor],
        v_layers: Sequence[torch.Tensor],
        page_size: int,
        num_writers: int,
        writer_destinations: Sequence[tuple[int, int]],
        heads_per_writer: int,
        layers_per_writer: int,
        timeout_s: float,
        clock: Callable[[], float],
        scatter: ScatterFn = kv_copy.scatter,
    ) -> None:
        if staging.dtype != torch.uint8 or staging.dim() != 1:
            raise ValueError(f"staging ring must be a 1-D uint8 tensor, got {staging.dtype} {tuple(staging.shape)}")
        if num_writers != len(writer_destinations) or num_writers < 1:
            raise ValueError(f"need one destination per writer slot: {num_writers} slots, {len(writer_destinations)} destinations")
        self._staging = staging
        self._allocator = allocator
        self._k, self._v = list(k_layers), list(v_layers)
        self._page_size = page_size
        self._num_writers = num_writers
        self._destinations = list(writer_destinations)
        self._heads_per_writer = heads_per_writer
        self._layers_per_writer = layers_per_writer
        self._timeout_s = timeout_s
        self._clock = clock
        self._scatter = scatter
        self._requests: dict[int, _Request] = {}
        self._lock = threading.RLock()
        self._stream = torch.cuda.Stream(device=staging.device) if staging.is_cuda else None

    # -- transfer thread --------------------------------------------------------------
    def register(self, request_id: int, receiver: Any, page_table: torch.Tensor, prefix_len: int, num_tokens: int) -> bool:
        """Record a request before prefill learns where to write; return whether it is staged."""
        staged = requires_staging(receiver)
        with self._lock:
            req = _Request(page_table, prefix_len, num_tokens, staged, self._clock())
            self._requests[request_id] = req
            if staged and prefix_len % self._page_size:
                self._fail(req, f"decode prefix of {prefix_len} tokens is not a multiple of page size {self._page_size}")
        return staged

    def allocate_chunk(self, request_id: int, chunk_index: int, nbytes: int) -> Optional[tuple[int, int, int]]:
        """``(offset, round, end)`` of the chunk's region, the same on repeated asks; None if refused."""
        with self._lock:
            req = self._requests.get(request_id)
            if req is None or not req.staged or req.state != PENDING:
                return None
            chunk = req.chunks.get(chunk_index)
            if chunk is None:
                placed = self._allocator.assign(nbytes)
                if placed is None:
                    self._fail(req, f"chunk {chunk_index} needs {nbytes} bytes, more than the staging ring holds")
                    return None
                chunk = req.chunks[chunk_index] = _Chunk(placed[0], placed[1], placed[2], nbytes)
            return chunk.answer

    def chunk_arrived(self, request_id: int, chunk_index: int, writer_slot: int, page_start: int, num_pages: int, num_tokens: int) -> None:
        """Count a writer's arrival; scatter the chunk when its last distinct slot arrives."""
        with self._lock:
            req = self._requests.get(request_id)
            if req is None or req.state != PENDING or not 0 <= writer_slot < self._num_writers:
                return
            chunk = req.chunks.get(chunk_index)
            if chunk is None or chunk.scattered:
                return
            geometry = (page_start, num_pages, num_tokens)
            problem = self._geometry_problem(req, geometry)
            if chunk.geometry not in (None, geometry):
                problem = f"writers disagree on chunk {chunk_index}: {chunk.geometry} vs {geometry}"
            if problem:
                self._fail(req, problem)
                return
            chunk.geometry = geometry
            chunk.arrived.add(writer_slot)
            if len(chunk.arrived) == self._num_writers:
                self._submit_scatter(req, chunk)

    def prefill_done(self, request_id: int) -> None:
        with self._lock:
            req = self._requests.get(request_id)
            if req is not None:
                req.prefill_done = True

    # -- scheduler thread -------------------------------------------------------------
    def poll(self, request_id: int) -> str:
        """Advance the request: free completed scatters, time out, report its state."""
        with self._lock:
            req = self._requests.get(request_id)
            if req is None:
                return FAILED
            for chunk in req.chunks.values():
                if chunk.scattered and not chunk.freed and (chunk.event is None or chunk.event.query()):
                    self._free(chunk)
            if req.state == PENDING:
                if req.prefill_done and self._complete(req):
                    req.state = DONE
                elif self._clock() - req.registered_at > self._timeout_s:
                    self._fail(req, f"timed out after {self._timeout_s}s waiting for KV")
            return req.state

    def fail(self, request_id: int, reason: str) -> None:
        with self._lock:
            req = self._requests.get(request_id)
            if req is not None and req.state == PENDING:
                self._fail(req, reason)

    def failure_reason(self, request_id: int) -> str:
        with self._lock:
            req = self._requests.get(request_id)
            return "" if req is None else req.reason

    def release(self, request_id: int) -> None:
        """Wait for in-flight scatters, free every allocation, forget the request."""
        with self._lock:
            req = self._requests.pop(request_id, None)
            if req is None:
                return
            for chunk in req.chunks.values():
                if chunk.event is not None:
                    chunk.event.synchronize()
                self._free(chunk)

    # -- internals --------------------------------------------------------------------
    def _fail(self, req: _Request, reason: str) -> None:
        req.state, req.reason = FAILED, reason

    def _free(self, chunk: _Chunk) -> None:
        if not chunk.freed:
            chunk.freed = True
            self._allocator.free(chunk.alloc_id)

    def _complete(self, req: _Request) -> bool:
        if not req.staged:
            return True
        suffix = req.num_tokens - req.prefix_len
        return req.tokens_scattered == suffix and all(c.freed for c in req.chunks.values())

    def _geometry_problem(self, req: _Request, geometry: tuple[int, int, int]) -> str:
        page_start, num_pages, num_tokens = geometry
        first_page = req.prefix_len // self._page_size + page_start
        last_token = req.prefix_len + page_start * self._page_size + num_tokens
        if page_start < 0 or num_pages < 1 or not 0 < num_tokens <= num_pages * self._page_size or last_token > req.num_tokens:
            return f"chunk pages [{first_page}, {first_page + num_pages}) / {num_tokens} tokens fall outside the request"
        return ""

    def _submit_scatter(self, req: _Request, chunk: _Chunk) -> None:
        assert chunk.geometry is not None, "a chunk is scattered only after its writers reported its geometry"
        page_start, num_pages, num_tokens = chunk.geometry
        first_page = req.prefix_len // self._page_size + page_start
        args = (
            self._staging[chunk.offset:chunk.offset + chunk.nbytes],
            self._destinations, self._heads_per_writer, self._layers_per_writer,
            self._k, self._v, req.page_table[first_page:first_page + num_pages], self._page_size, num_tokens,
        )
        if self._stream is None:
            self._scatter(*args)
        else:
            # The region's bytes were written on the producer's stream; order the
            # scatter after them, then let poll() free the region once it ran.
            self._stream.wait_stream(torch.cuda.current_stream(self._staging.device))
            with torch.cuda.stream(self._stream):
                self._scatter(*args)
                chunk.event = torch.cuda.Event()
                chunk.event.record(self._stream)
        chunk.scattered = True
        req.tokens_scattered += num_tokens
