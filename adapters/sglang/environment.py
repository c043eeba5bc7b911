"""The SGLang-side environment of a decode rank: state and transport, no staging logic.

SGLang's decode-side staging code runs as methods of its KV manager and
receiver and reads a scheduler, a prealloc queue and decode requests.  These
stand-ins hold exactly the state those methods read, as SGLang 0.5.23 leaves
it; every method that acts on the state is SGLang's own, attached by
:func:`environment_classes` (borrowed definitions, ``pin.BORROWED``).

* KV manager: ``StagingManagerMixin`` subclass with the borrowed
  ``CommonKVManager`` / ``MooncakeKVManager`` methods; holds ``kv_args``
  (``engine_rank`` 0, page size, per-layer ``kv_item_lens``, head counts), a
  real ``DecodeStagingContext``, status tables, and ``waiting_timeout``.
  ``build_receiver_metadata_message`` is transport.
* Receiver: the borrowed ``CommonKVReceiver`` methods over one request's state
  (``prefill_info``, ``bootstrap_infos``, ``chunk_staging_infos``, as after
  ``CommonKVReceiver.init`` under the default "early" decode-allocation
  policy).  ``require_staging`` is *not* its own: attribute reads are forwarded
  to the harness's receiver object, so SGLang reads exactly that object's
  attribute (absent, falsy, raising...).  Sockets to prefill are an outbox that
  records STAGING_RSP / WATERMARK / ABORT messages.
* Staging-allocator port (``kv_manager._staging_ctx.allocator``): forwards
  assign / free / get_watermark to the allocator passed to
  ``make_decode_handler`` and exposes the harness's ``staging`` tensor as
  ``buffer.buffer`` (the registered region writers fill).
* Scheduler: ``req_to_token_pool.req_to_token`` rows (int32 pool slots of each
  request's pages) and ``schedule_stream``; decode request / Req objects with
  the fields SGLang reads (``bootstrap_room``, ``kv.cache_protected_len``,
  ``kv.req_pool_idx``, ``metadata_buffer_index`` ...); the prealloc-queue
  stand-in holds a borrowed ``ReqToMetadataIdxAllocator``.
"""

from __future__ import annotations

import contextlib
import threading
import types
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Sequence

import torch

from adapters.sglang.pin import BORROWED

if TYPE_CHECKING:
    from adapters.sglang.loader import SglangCode


class PrefillOutbox:
    """The sockets to prefill: keeps the latest multipart messages SGLang sends (STAGING_RSP, WATERMARK...)."""

    def __init__(self) -> None:
        self.messages: deque[tuple[int, list[bytes]]] = deque(maxlen=512)
        self.sent = 0
        self.lock = threading.Lock()

    def send_multipart(self, parts: Sequence[Any]) -> None:
        self.messages.append((self.sent, [bytes(p) if not isinstance(p, str) else p.encode() for p in parts]))
        self.sent += 1

    def staging_answer(self, room: int, chunk: int, since: int) -> Optional[tuple[int, int, int]]:
        """``(offset, round, end)`` of the last STAGING_RSP for ``(room, chunk)`` sent at or after ``since``."""
        for seq, parts in reversed(self.messages):
            if seq < since:
                break
            if parts[0] == b"STAGING_RSP" and int(parts[1]) == room and int(parts[2]) == chunk:
                return int(parts[3]), int(parts[4]), int(parts[5])
        return None


class AllocatorPort:
    """``kv_manager._staging_ctx.allocator`` as SGLang's handler uses it, over the interface allocator."""

    def __init__(self, allocator: Any, staging: torch.Tensor) -> None:
        self._allocator = allocator
        self.buffer = types.SimpleNamespace(buffer=staging, data_ptr=staging.data_ptr(), device=staging.device)
        self.base_ptr = staging.data_ptr()
        self.total_size = staging.numel()
        self._scatter_stream = None  # SGLang creates it on the first scatter

    def assign(self, required_bytes: int) -> Optional[tuple[int, int, int]]:
        placed = self._allocator.assign(required_bytes)
        return None if placed is None else tuple(placed)

    def free(self, alloc_id: int) -> None:
        self._allocator.free(alloc_id)

    def get_watermark(self) -> tuple[int, int]:
        return tuple(self._allocator.watermark())


class KvManagerEnvironment:
    """State a decode-side ``MooncakeKVManager`` holds for staging (methods come from SGLang)."""

    DEFAULT_PREFILL_FAILURE_REASON = "prefill reported failure"
    attn_tp_size = 1
    pp_size = 1
    enable_staging = True
    defer_decode_allocation = False
    deferred_bootstrap = None
    enable_deferred_decode_kv_release = False

    def __init__(self, code: SglangCode, kv_args: Any, allocator: AllocatorPort, waiting_timeout: float) -> None:
        self.kv_args = kv_args
        self._staging_ctx = code.staging_handler.DecodeStagingContext(allocator=allocator)
        self._staging_handler = None
        self.kv_buffer_tensors = None
        self.waiting_timeout = waiting_timeout
        self.request_status: dict[int, Any] = {}
        self.prefill_response_tracker: dict[int, set] = {}
        self.required_prefill_response_num_table: dict[int, int] = {}
        self.addr_to_rooms_tracker: defaultdict[str, set] = defaultdict(set)
        self._deferred_ack_targets: dict = {}
        self._deferred_ack_poisoned_rooms: set = set()
        self._staging_outstanding: dict = {}
        self.failure_lock = threading.Lock()
        self.failure_records: dict[int, str] = {}

    def build_receiver_metadata_message(self, **fields: Any) -> list[bytes]:
        """Transport: the metadata message to prefill (its content goes nowhere here)."""
        return [b"METADATA", str(fields.get("bootstrap_room")).encode()]


class ReceiverEnvironment:
    """One request's backend receiver state (methods come from ``CommonKVReceiver``).

    ``require_staging`` is read from the wrapped receiver object, unchanged.
    """

    _lifecycle_lock = contextlib.nullcontext()
    _prefill_wait_start = None
    _owns_bootstrap_room = True

    def __init__(self, inner: Any, kv_mgr: Any, room: int, prefill_info: Any, outbox: PrefillOutbox) -> None:
        self._inner = inner
        self._outbox = outbox
        self.kv_mgr = kv_mgr
        self.bootstrap_room = room
        self.bootstrap_addr = "kvconform-prefill:0"
        self.prefill_info = prefill_info
        self.required_dst_info_num = prefill_info.required_dst_info_num
        self.bootstrap_infos = [{"rank_ip": "kvconform-prefill", "rank_port": 0, "pp_rank": 0, "is_dummy": False}]
        self.conclude_state = None
        self.init_time = None
        self.abort_notified = False
        self.chunk_staging_infos: list = []

    def __getattr__(self, name: str) -> Any:
        if name == "require_staging":
            return getattr(self.__dict__["_inner"], name)
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    def __repr__(self) -> str:
        return f"<sglang receiver stand-in room={self.bootstrap_room} around {self.__dict__['_inner']!r}>"

    # transport ---------------------------------------------------------------------
    def _connect_to_bootstrap_server(self, bootstrap_info: dict) -> tuple[PrefillOutbox, Any]:
        return self._outbox, self._outbox.lock

    def _send_bootstrap_message(self, *, bootstrap_info: dict, message: list, operation: str) -> bool:
        self._outbox.send_multipart(message)
        return True

    def _send_abort_notification(self, *, force_arm: bool = False) -> None:
        self._outbox.send_multipart([b"ABORT", str(self.bootstrap_room).encode()])

    def invalidate_cached_bootstrap_infos(self) -> None:
        pass


class PreallocQueueEnvironment:
    """What ``DecodePreallocQueue._send_kv_metadata`` reads from its queue."""

    is_rebootstrap = False

    def __init__(self, code: SglangCode, handler: Any) -> None:
        self.req_to_metadata_buffer_idx_allocator = code.get("srt/disaggregation/utils.py", "ReqToMetadataIdxAllocator")(4096)
        self.transfer_queue = types.SimpleNamespace(enable_staging=True, staging_handler=handler)
        self._num_published_destinations = 0

    def _transfer_page_indices(self, decode_req: Any, kv_indices: torch.Tensor, page_size: int) -> Any:
        """The page list sent to prefill (goes to the transport stand-in only)."""
        return (kv_indices[::page_size] // page_size).to("cpu").numpy().astype("int32")


class _TimeStats:
    def set_decode_transfer_queue_entry_time(self) -> None:
        pass


class DecodeRequestEnvironment:
    """A ``DecodeRequest`` with the fields SGLang's staging path reads; the handler adds its own."""

    is_rebootstrap = False

    def __init__(self, room: int, prefix_len: int, row: int, receiver: Any) -> None:
        self.req = types.SimpleNamespace(
            rid=f"kvconform-{room}", bootstrap_room=room, time_stats=_TimeStats(),
            kv=types.SimpleNamespace(cache_protected_len=prefix_len, req_pool_idx=row))
        self.kv_receiver = receiver
        self.metadata_buffer_index = -1


class SchedulerEnvironment:
    """``scheduler.req_to_token_pool.req_to_token``: each request's pool token slots, by row."""

    schedule_stream = None  # read on XPU only

    def __init__(self, device: torch.device) -> None:
        self.req_to_token_pool = types.SimpleNamespace(req_to_token=torch.zeros((0, 0), dtype=torch.int32, device=device))
        self._free_rows: list[int] = []

    def add(self, page_table: torch.Tensor, page_size: int, num_tokens: int) -> int:
        """Write a row of slots for every page of ``page_table`` covering ``num_tokens``; return its index."""
        pages = -(-num_tokens // page_size)
        table = self.req_to_token_pool.req_to_token
        tokens = torch.arange(pages * page_size, device=table.device)
        slots = page_table.to(table.device, torch.int64)[tokens // page_size] * page_size + tokens % page_size
        row = self._free_rows.pop() if self._free_rows else table.shape[0]
        rows, cols = max(table.shape[0], row + 1), max(table.shape[1], slots.numel())
        if (rows, cols) != tuple(table.shape):
            grown = torch.zeros((rows, cols), dtype=table.dtype, device=table.device)
            grown[: table.shape[0], : table.shape[1]] = table
            self.req_to_token_pool.req_to_token = table = grown
        table[row, : slots.numel()] = slots.to(table.dtype)
        return row

    def remove(self, row: int) -> None:
        self._free_rows.append(row)


@dataclass
class IndexedDevicePlaceholder:
    """Stands for a KV tensor during ``DecodeStagingHandler.__init__`` on CPU (shim 5)."""

    device: torch.device


def environment_classes(code: SglangCode) -> tuple[type, type, type]:
    """KV manager, receiver and prealloc-queue stand-ins with SGLang's methods attached."""
    conn = "srt/disaggregation/common/conn.py"
    mooncake = "srt/disaggregation/mooncake/conn.py"
    manager_methods = {q.rpartition(".")[2]: code.get(conn, q) for q in BORROWED[conn] if q.startswith("CommonKVManager.")}
    manager_methods.update({q.rpartition(".")[2]: code.get(mooncake, q) for q in BORROWED[mooncake]})
    receiver_methods = {q.rpartition(".")[2]: code.get(conn, q) for q in BORROWED[conn] if q.startswith("CommonKVReceiver.")}
    manager = type("SglangKvManagerStandIn", (code.staging_handler.StagingManagerMixin, KvManagerEnvironment), manager_methods)
    receiver = type("SglangReceiverStandIn", (ReceiverEnvironment,), receiver_methods)
    queue = type("SglangPreallocQueueStandIn", (PreallocQueueEnvironment,), {
        "_send_kv_metadata": code.get("srt/disaggregation/decode.py", "DecodePreallocQueue._send_kv_metadata")})
    return manager, receiver, queue

