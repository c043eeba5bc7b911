"""The ``decode_handler`` capability: SGLang's ``DecodeStagingHandler`` driven through its own entry points.

One :class:`SglangDecodeHandler` is one decode rank.  Each interface method
sends what SGLang's transport would deliver into SGLang's own code
(the stand-ins of ``environment`` hold only state and transport):

* ``register``: ``DecodePreallocQueue._send_kv_metadata`` (decode.py: the
  ``require_staging`` read and ``register_decode_req``), which calls
  ``CommonKVReceiver.send_metadata``;
* ``allocate_chunk``: a STAGING_REQ through
  ``StagingManagerMixin._handle_staging_req`` -> ``handle_staging_req``; the
  answer is the STAGING_RSP it sends;
* ``chunk_arrived``: CHUNK_READY through ``CommonKVManager.handle_chunk_ready``
  -> ``handle_chunk_arrived``;
* ``prefill_done``: one ``CommonKVManager.apply_prefill_status(Success)`` per
  prefill rank (-> ``submit_last_scatter_async``);
* ``poll``: ``poll_and_all_reduce_with_staging`` (utils.py: ``advance_scatter``,
  ``is_done``, ``is_failed``, the receiver's ``CommonKVReceiver.poll`` with its
  waiting timeout) over a real single-rank gloo group;
* ``fail``: ``CommonKVReceiver.abort``; ``release``: ``CommonKVReceiver.clear``
  then, for staging rooms, ``unregister_decode_req`` (-> ``release_room``), as
  decode.py's ``pop_transferred`` does.

Every call runs under the handler's clock (shim 7) and kernel path (shim 6).
"""

from __future__ import annotations

import contextlib
import types
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch

from adapters.sglang.environment import (
    AllocatorPort,
    DecodeRequestEnvironment,
    IndexedDevicePlaceholder,
    PrefillOutbox,
    SchedulerEnvironment,
    environment_classes,
)
from adapters.sglang.pin import SGLANG_VERSION
from adapters.sglang.views import DecodeRankView, rank_mapping, whole_pages
from adapters.toolkit import single_rank_gloo_group

#: The states ``poll`` returns, spelled as the interface documents them (``harness.interface.PollState``);
#: written here so the adapter, like a standalone repro of it, runs without kvconform.
PENDING, DONE, FAILED = "pending", "done", "failed"

if TYPE_CHECKING:
    from adapters.sglang.implementation import SglangImplementation


class SglangDecodeHandler:
    """One decode rank: SGLang's ``DecodeStagingHandler`` and the decode-side code around it."""

    def __init__(self, impl: SglangImplementation, view: DecodeRankView, *, staging: torch.Tensor, allocator: Any,
                 k_layers: list[torch.Tensor], v_layers: list[torch.Tensor], page_size: int, timeout_s: float,
                 clock: Callable[[], float]) -> None:
        if staging.dtype != torch.uint8 or staging.dim() != 1:
            raise ValueError(f"staging must be a 1-D uint8 tensor, got {staging.dtype} of shape {tuple(staging.shape)}")
        code = impl.code
        self._impl, self._code, self._view, self._clock = impl, code, view, clock
        self._device = k_layers[0].device
        self._page_size = page_size
        self._kv_poll = code.kv_poll
        manager_class, self._receiver_class, queue_class = environment_classes(code)
        bytes_per_page = page_size * view.total_kv_heads * k_layers[0].shape[-1] * k_layers[0].element_size()
        kv_args = types.SimpleNamespace(
            engine_rank=view.decode_rank, gpu_id=self._device.index or 0, page_size=page_size,
            kv_item_lens=[bytes_per_page] * (2 * len(k_layers)),
            kv_head_num=view.total_kv_heads, total_kv_head_num=view.total_kv_heads)
        self._kv_mgr = manager_class(code, kv_args, AllocatorPort(allocator, staging), float(timeout_s))
        self._kv_mgr.set_kv_buffer_tensors(k_layers, v_layers, page_size)
        self._prefill_info = rank_mapping(code, view.prefill_tp, view.decode_tp, view.decode_rank)
        self._scheduler = SchedulerEnvironment(self._device)
        self._outbox = PrefillOutbox()
        with self._entered():
            self.sglang_handler = self._create_sglang_handler()
        self.sglang_handler.completion_timeout = float(timeout_s)
        self._kv_mgr._staging_handler = self.sglang_handler
        self._queue = queue_class(code, self.sglang_handler)
        self._group = single_rank_gloo_group()
        self._requests: dict[int, Any] = {}
        self._rows: dict[int, int] = {}
        self._reasons: dict[int, str] = {}
        self._page_bytes = code.staging_buffer.compute_staging_layout(
            view.prefill_tp, view.decode_tp, view.decode_rank, view.total_kv_heads, page_size,
            k_layers[0].shape[-1] * k_layers[0].element_size(), len(k_layers))[2]

    def _create_sglang_handler(self) -> Any:
        """``DecodeStagingHandler.create``; on CPU against an indexed placeholder first (shim 5)."""
        create = self._code.staging_handler.DecodeStagingHandler.create
        if self._device.index is not None:
            return create(self._kv_mgr, self._scheduler, self._view.decode_rank)
        real = self._kv_mgr.kv_buffer_tensors
        self._kv_mgr.kv_buffer_tensors = {**real, "k_buffers": [IndexedDevicePlaceholder(torch.device(self._device.type, 0))]}
        try:
            handler = create(self._kv_mgr, self._scheduler, self._view.decode_rank)
        finally:
            self._kv_mgr.kv_buffer_tensors = real
        handler.kv_buffer_info = real
        return handler

    @contextlib.contextmanager
    def _entered(self):
        """Run SGLang code with this handler's clock and kernel path."""
        self._impl.select_kernels(self._device)
        with self._code.clock.using(self._clock):
            yield

    def _session(self, writer_slot: int) -> str:
        return f"kvconform-writer-{int(writer_slot)}"

    # -- the interface ------------------------------------------------------------------
    def register(self, request_id: int, receiver: Any, page_table: torch.Tensor, prefix_len: int, num_tokens: int) -> bool:
        room = int(request_id)
        kv_poll = self._kv_poll
        with self._entered():
            row = self._scheduler.add(page_table, self._page_size, num_tokens)
            standin = self._receiver_class(receiver, self._kv_mgr, room, self._prefill_info, self._outbox)
            # What CommonKVReceiver.__init__ and .init ("early" allocation policy) leave in the manager.
            self._kv_mgr.addr_to_rooms_tracker[standin.bootstrap_addr].add(room)
            self._kv_mgr.prefill_response_tracker.setdefault(room, set())
            self._kv_mgr.update_status(room, kv_poll.Bootstrapping)
            self._kv_mgr.required_prefill_response_num_table[room] = self._prefill_info.required_prefill_response_num
            self._kv_mgr.update_status(room, kv_poll.WaitingForInput)
            decode_req = DecodeRequestEnvironment(room, prefix_len, row, standin)
            self._requests[room], self._rows[room] = decode_req, row
            kv_indices = self._scheduler.req_to_token_pool.req_to_token[row, prefix_len:num_tokens]
            self._queue._send_kv_metadata(decode_req, kv_indices, self._page_size, decode_prefix_len=prefix_len)
            return bool(self.sglang_handler.is_staging_room(room))

    def allocate_chunk(self, request_id: int, chunk_index: int, nbytes: int) -> Optional[tuple[int, int, int]]:
        """A STAGING_REQ for ``nbytes`` as a page count; the STAGING_RSP SGLang sends back.

        STAGING_REQ carries pages and SGLang sizes the allocation itself, so
        ``nbytes`` must be whole pages of this rank's region, except for a
        request larger than the ring, sent as ``ceil(nbytes / page bytes)``
        pages (SGLang refuses it either way).
        """
        room = int(request_id)
        pages = -(-int(nbytes) // self._page_bytes)
        if nbytes % self._page_bytes and nbytes <= self._kv_mgr._staging_ctx.allocator.total_size:
            raise NotImplementedError(
                f"sglang {SGLANG_VERSION} cannot allocate {nbytes} bytes: STAGING_REQ carries a page count and one "
                f"page of this rank's staging region is {self._page_bytes} bytes (a partial last page?)")
        message = [b"STAGING_REQ", str(room).encode(), str(int(chunk_index)).encode(), str(pages).encode(),
                   self._session(0).encode()]
        with self._entered():
            since = self._outbox.sent
            self._kv_mgr._handle_staging_req(message)
            answer = self._outbox.staging_answer(room, int(chunk_index), since)
        if answer is None or answer[0] == self._code.staging_buffer.StagingAllocator.ALLOC_OVERSIZED:
            return None
        return answer

    def chunk_arrived(self, request_id: int, chunk_index: int, writer_slot: int, page_start: int, num_pages: int,
                      num_tokens: int) -> None:
        if num_tokens != num_pages * self._page_size:
            whole_pages(num_tokens, self._page_size, "scatter")
            raise NotImplementedError(
                f"sglang {SGLANG_VERSION} cannot scatter {num_tokens} tokens as {num_pages} pages of {self._page_size}: "
                "CHUNK_READY carries pages only")
        message = [b"CHUNK_READY", str(int(request_id)).encode(), str(int(chunk_index)).encode(),
                   str(int(page_start)).encode(), str(int(num_pages)).encode(), self._session(writer_slot).encode(),
                   str(int(writer_slot)).encode()]
        with self._entered():
            self._kv_mgr.handle_chunk_ready(message)

    def prefill_done(self, request_id: int) -> None:
        """Every prefill rank this decode rank waits for reports Success."""
        with self._entered():
            for prefill_rank in self._prefill_info.target_tp_ranks:
                self._kv_mgr.apply_prefill_status(bootstrap_room=int(request_id), status=self._kv_poll.Success,
                                                  prefill_rank=prefill_rank)

    def poll(self, request_id: int) -> str:
        """``poll_and_all_reduce_with_staging`` over this request; a forgotten request is ``failed``."""
        decode_req = self._requests.get(int(request_id))
        if decode_req is None:
            return FAILED
        poll = self._code.get("srt/disaggregation/utils.py", "poll_and_all_reduce_with_staging")
        with self._entered():
            state = poll([decode_req], self.sglang_handler, self._group)[0]
        if state == self._kv_poll.Failed:
            return FAILED
        return DONE if state == self._kv_poll.Success else PENDING

    def fail(self, request_id: int, reason: str) -> None:
        """``CommonKVReceiver.abort`` (SGLang records its own reason; ours is kept for reports)."""
        decode_req = self._requests.get(int(request_id))
        if decode_req is None:
            return
        self._reasons[int(request_id)] = reason
        with self._entered():
            decode_req.kv_receiver.abort()

    def release(self, request_id: int) -> None:
        """As decode.py tears a request down: receiver ``clear()``, then ``unregister_decode_req`` for staging rooms."""
        room = int(request_id)
        decode_req = self._requests.pop(room, None)
        if decode_req is None:
            return
        with self._entered():
            decode_req.kv_receiver.clear()
            decode_req.kv_receiver = None
            if self.sglang_handler.is_staging_room(room):
                self.sglang_handler.unregister_decode_req(room)
            if decode_req.metadata_buffer_index >= 0:
                self._queue.req_to_metadata_buffer_idx_allocator.free(decode_req.metadata_buffer_index)
        self._scheduler.remove(self._rows.pop(room))
        self._reasons.pop(room, None)

    def failure_reason(self, request_id: int) -> str:
        """Why a request failed, as far as SGLang recorded it (for reports)."""
        room = int(request_id)
        reasons = [self._reasons.get(room), self._kv_mgr.failure_records.get(room)]
        decode_req = self._requests.get(room)
        if decode_req is not None and getattr(decode_req, "_staging_failed", False):
            reasons.append("DecodeStagingHandler marked it failed (non-page-aligned prefix or completion timeout)")
        return "; ".join(r for r in reasons if r)

