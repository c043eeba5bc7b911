"""SGLang 0.5.23's decode-side KV staging, plugged into kvconform.

Load with ``--impl sglang`` or ``--impl harness.adapters.sglang:make_implementation``
(``make_torch_implementation`` / ``make_triton_implementation`` force one kernel
path).  Needs ``pip install --no-deps sglang==0.5.23`` plus ``triton`` and
``numpy`` (SGLang's staging modules import both), none of SGLang's other
dependencies: the adapter loads the staging modules without running SGLang's
package initialisers.  Mapping, differences and findings: ``docs/sglang.md``.

Capabilities and what runs (all SGLang code is the installed 0.5.23 code)
--------------------------------------------------------------------------
* ``head_mapping``: ``head_slice`` = ``compute_head_slice_params``
  (common/staging_buffer.py).  ``writers_of_decode_rank`` = the
  ``target_tp_ranks`` that ``CommonKVManager._resolve_rank_mapping``
  (common/conn.py) computes.  ``heads_of_rank`` is *derived*, SGLang has no
  function for it (the model layer decides it inline): the heads of rank ``r``
  of a TP group of ``T`` are where ``compute_head_slice_params(T, 1, r, 0, H)``
  puts rank ``r``'s slice inside a single decode rank holding all ``H`` heads.
* ``layout``: ``compute_staging_layout``; offsets are the running sums of its
  per-writer byte counts, as ``MooncakeKVManager.send_kvcache_staged`` computes
  them.
* ``allocator``: ``StagingAllocator`` (assign / free / get_watermark);
  ``writer_may_write`` = ``handle_watermark_msg`` into a fresh
  ``PrefillStagingContext`` then ``is_watermark_ready`` (staging_handler.py).
* ``kv_copy``: ``gather_all_layers_to_staging`` into a prefill-side
  ``StagingBuffer``, then a byte copy into ``out`` (the bulk RDMA);
  ``scatter_staging_to_kv``.  SGLang's default Triton kernels (compiled on
  CUDA; on a machine without CUDA run by the Triton interpreter, shim 8);
  ``make_torch_implementation`` selects its torch variants instead.
* ``decode_handler``: ``DecodeStagingHandler`` (created by its ``create``
  factory) driven through SGLang's own entry points: ``register`` runs
  ``DecodePreallocQueue._send_kv_metadata`` (decode.py: the ``require_staging``
  read and ``register_decode_req``) which calls
  ``CommonKVReceiver.send_metadata``; ``allocate_chunk`` sends a STAGING_REQ
  through ``StagingManagerMixin._handle_staging_req`` -> ``handle_staging_req``
  and reads back the STAGING_RSP it sends; ``chunk_arrived`` sends CHUNK_READY
  through ``CommonKVManager.handle_chunk_ready`` -> ``handle_chunk_arrived``;
  ``prefill_done`` is one ``CommonKVManager.apply_prefill_status(Success)`` per
  prefill rank (-> ``submit_last_scatter_async``); ``poll`` is
  ``poll_and_all_reduce_with_staging`` (utils.py: ``advance_scatter``,
  ``is_done``, ``is_failed``, the receiver's ``CommonKVReceiver.poll`` with its
  waiting timeout) over a real single-rank gloo group; ``fail`` is
  ``CommonKVReceiver.abort``; ``release`` is ``CommonKVReceiver.clear`` then,
  for staging rooms, ``unregister_decode_req`` (-> ``release_room``), as
  decode.py's ``pop_transferred`` does.
* Not claimed: ``direct_copy`` and ``end_to_end`` (SGLang has no
  in-process equivalent: its non-staged path is per-page RDMA by the backend).

Shims (how SGLang is loaded and run; none replaces staging logic)
-----------------------------------------------------------------
1. Package initialisers skipped: ``sglang``, ``sglang.srt``,
   ``sglang.srt.disaggregation``, ``sglang.srt.disaggregation.common``,
   ``sglang.kernels``, ``sglang.kernels.ops``, ``sglang.kernels.ops.memory``
   and ``sglang.srt.utils`` become empty placeholder packages (right
   ``__path__``) unless already imported; the leaves ``sglang.srt.environ``,
   ``sglang.kernels.ops.memory.ptr_table``, ``...common.staging_buffer`` and
   ``...common.staging_handler`` are then imported normally.
2. ``sglang.srt.utils`` placeholder carries SGLang's own
   ``create_device_stream``, ``device_stream_context`` and
   ``create_device_event``, compiled from ``srt/utils/common.py`` (shim 4).
3. ``sglang.srt.runtime_context`` placeholder: its ``get_schedule`` (used only
   by the prefill-side ``PrefillStagingStrategy``) raises if ever called; the
   real module needs ``msgspec``.
4. Borrowed definitions: functions, methods and classes of modules whose import
   chain cannot load here (decode.py, utils.py, common/conn.py,
   mooncake/conn.py, base/conn.py, srt/utils/common.py) are compiled from the
   installed source files (``ast``; file names and line numbers kept, so
   tracebacks point into SGLang) into a namespace holding exactly the globals
   they use; :data:`BORROWED` lists them and the load fails if one uses a
   global the adapter does not provide.  Globals given: ``KVPoll``,
   ``KVTransferDestination``, ``envs``, ``random``, ``torch``, ``dist``,
   ``deque``, ``enum``, SGLang's borrowed siblings, a logger with
   ``warning_once`` (SGLang patches that in at package import), ``time`` = the
   clock router (shim 7), and two never-reached placeholders that raise if
   called: ``get_disagg`` (read only for re-bootstrapped requests) and
   ``_apply_metadata_gate`` (only with metadata buffers, which the adapter
   does not pass).
5. CPU device: SGLang's staging is CUDA/XPU-only.  On CPU: ``"cpu"`` is added
   to ``staging_buffer._STAGING_SUPPORTED_DEVICE_TYPES``; the stream and event
   helpers bound in staging_buffer / staging_handler dispatch CPU devices to a
   synchronous stream and an always-complete event (CPU work is finished when
   the call returns) and everything else to SGLang's own helpers; a CPU
   ``StagingBuffer``'s ``device`` is normalised from ``cpu:0`` to ``cpu`` (CPU
   tensors carry no index, so ``_check_kv_on_staging_device`` would refuse);
   ``DecodeStagingHandler.__init__`` asserts an indexed device, so on CPU it is
   created against a placeholder first K entry reporting ``cpu:0`` and then
   given the real pools.
6. Kernel path: ``staging_buffer._USE_TRITON_STAGING`` (SGLang's switch, set
   from ``SGLANG_STAGING_USE_TORCH`` at import) is set before each call to the
   path chosen for the tensors' device.
7. Clock: ``staging_handler.time`` and the ``time`` of borrowed common/conn.py
   code are a router whose ``time()``/``monotonic()`` return the handler's
   ``clock`` while a handler method runs on that thread (real time otherwise);
   ``completion_timeout`` and ``kv_mgr.waiting_timeout`` are set to
   ``timeout_s`` (SGLang reads both from SGLANG_DISAGGREGATION_WAITING_TIMEOUT).
8. No CUDA: staging_buffer is imported with ``triton.knobs.runtime.interpret``
   on (scoped to that import), so its two ``@triton.jit`` kernels become
   Triton-interpreter functions and SGLang's default (Triton) path runs on CPU.

Stand-ins (SGLang-side environment: state and transport, no staging logic)
-------------------------------------------------------------------------
* KV manager: ``StagingManagerMixin`` subclass with the borrowed
  ``CommonKVManager`` / ``MooncakeKVManager`` methods above; holds
  ``kv_args`` (``engine_rank`` 0, page size, per-layer ``kv_item_lens``, head
  counts), a real ``DecodeStagingContext``, status tables, and
  ``waiting_timeout``.  ``build_receiver_metadata_message`` is transport.
* Receiver: the borrowed ``CommonKVReceiver`` methods above over one request's
  state (``prefill_info``, ``bootstrap_infos``, ``chunk_staging_infos``, as
  after ``CommonKVReceiver.init`` under the default "early" decode-allocation
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
  ``kv.req_pool_idx``, ``metadata_buffer_index`` ...); the prealloc-queue stand-in
  holds a borrowed ``ReqToMetadataIdxAllocator``.
* The decode rank is presented to SGLang as decode TP 1, rank 0, total KV heads
  = its own head count, fed by ``num_writers`` prefill ranks (the interface
  gives writer destinations, not TP sizes).  SGLang's own
  ``compute_head_slice_params`` must reproduce the given destinations under that
  view, else ``NotImplementedError``; for valid topologies it equals what SGLang
  computes from the real sizes (proved in docs/sglang.md, tested).

Adapter limits (raise ``NotImplementedError("sglang 0.5.23 cannot ...")``)
---------------------------------------------------------------------------
Partial last pages (SGLang stages whole pages; this includes ``allocate_chunk``
sizes that are not whole pages of the region, STAGING_REQ carrying a page
count), writer parts carrying a subset of the layers (prefill PP > decode PP:
SGLang's PP stages share a TP writer's part) and writer destinations SGLang's
formula would not produce.
"""

from __future__ import annotations

import __future__
import ast
import builtins
import contextlib
import copy
import datetime
import enum
import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import inspect
import logging
import random
import symtable
import sys
import threading
import time
import types
import warnings
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import torch

#: The SGLang release this adapter was written and checked against.
SGLANG_VERSION = "0.5.23"
#: States returned by ``poll`` (the interface's values; adapters import nothing from kvconform).
PENDING, DONE, FAILED = "pending", "done", "failed"

STAGING_BUFFER = "sglang.srt.disaggregation.common.staging_buffer"
STAGING_HANDLER = "sglang.srt.disaggregation.common.staging_handler"

#: Packages whose ``__init__`` is skipped (shim 1), parent first.
SKIPPED_PACKAGES = (
    "sglang",
    "sglang.srt",
    "sglang.srt.disaggregation",
    "sglang.srt.disaggregation.common",
    "sglang.kernels",
    "sglang.kernels.ops",
    "sglang.kernels.ops.memory",
    "sglang.srt.utils",
)
#: Modules imported for real, in order.
LEAF_MODULES = ("sglang.srt.environ", "sglang.kernels.ops.memory.ptr_table", STAGING_BUFFER, STAGING_HANDLER)

#: Definitions compiled from SGLang's source files (shim 4): file -> qualified names.
BORROWED: dict[str, tuple[str, ...]] = {
    "srt/utils/common.py": ("create_device_stream", "device_stream_context", "create_device_event"),
    "srt/disaggregation/base/conn.py": ("KVPoll", "KVTransferDestination"),
    "srt/disaggregation/utils.py": (
        "all_reduce_flags",
        "_all_reduce_polls",
        "_poll_with_failure_injection",
        "poll_and_all_reduce_with_staging",
        "ReqToMetadataIdxAllocator",
    ),
    "srt/disaggregation/decode.py": ("DecodePreallocQueue._send_kv_metadata",),
    "srt/disaggregation/common/conn.py": (
        "CommonKVManager._resolve_rank_mapping",
        "CommonKVManager.check_status",
        "CommonKVManager.update_status",
        "CommonKVManager.record_failure",
        "CommonKVManager.handle_chunk_ready",
        "CommonKVManager.apply_prefill_status",
        "CommonKVReceiver.send_metadata",
        "CommonKVReceiver.poll",
        "CommonKVReceiver._poll",
        "CommonKVReceiver._check_waiting_timeout",
        "CommonKVReceiver.abort",
        "CommonKVReceiver.ensure_abort_notified",
        "CommonKVReceiver.clear",
        "CommonKVReceiver._clear",
    ),
    "srt/disaggregation/mooncake/conn.py": (
        "MooncakeKVManager.register_staging_room_bootstrap",
        "MooncakeKVManager.set_kv_buffer_tensors",
    ),
}

#: Parameter lists (no annotations) of every SGLang callable the adapter relies on, as in 0.5.23.
EXPECTED_SIGNATURES: dict[str, str] = {
    "staging_buffer.compute_head_slice_params": "(src_attn_tp_size, dst_attn_tp_size, src_tp_rank, dst_tp_rank, total_kv_heads)",
    "staging_buffer.compute_staging_layout": "(src_attn_tp_size, dst_attn_tp_size, dst_tp_rank, total_kv_heads, num_tokens, bytes_per_head_token, num_layers)",
    "staging_buffer.resolve_total_kv_heads": "(kv_args, attn_tp_size)",
    "staging_buffer.gather_all_layers_to_staging": "(k_buffers, v_buffers, page_indices_np, staging_buffer, src_head_start, num_heads, page_size)",
    "staging_buffer.scatter_staging_to_kv": "(staging_buffer_view, k_buffers, v_buffers, page_idx_tensor, page_size, prefill_attn_tp_size, decode_attn_tp_size, dst_tp_rank, total_kv_heads)",
    "staging_buffer.StagingBuffer": "(size_bytes, device, gpu_id, custom_mem_pool=None)",
    "staging_buffer.StagingAllocator": "(total_size_bytes, device, gpu_id, custom_mem_pool=None)",
    "staging_buffer.StagingAllocator.assign": "(self, required_bytes)",
    "staging_buffer.StagingAllocator.free": "(self, alloc_id)",
    "staging_buffer.StagingAllocator.get_watermark": "(self)",
    "staging_handler.DecodeStagingHandler": "(kv_manager, staging_allocator, kv_buffer_info, decode_tp, total_kv_heads, tp_rank, scheduler)",
    "staging_handler.DecodeStagingHandler.create": "(kv_manager, scheduler, tp_rank)",
    "staging_handler.DecodeStagingHandler.register_decode_req": "(self, room, decode_req)",
    "staging_handler.DecodeStagingHandler.unregister_decode_req": "(self, room)",
    "staging_handler.DecodeStagingHandler.release_room": "(self, room, decode_req, receiver)",
    "staging_handler.DecodeStagingHandler.handle_chunk_arrived": "(self, room, chunk_idx, page_start, num_pages, writer_id)",
    "staging_handler.DecodeStagingHandler.submit_last_scatter_async": "(self, room)",
    "staging_handler.DecodeStagingHandler.is_staging_room": "(self, room)",
    "staging_handler.DecodeStagingHandler.is_done": "(self, decode_req)",
    "staging_handler.DecodeStagingHandler.is_failed": "(self, decode_req)",
    "staging_handler.DecodeStagingHandler.advance_scatter": "(self, decode_req)",
    "staging_handler.DecodeStagingContext": "(allocator=None, room_bootstrap=<factory>, room_receivers=<factory>)",
    "staging_handler.PrefillStagingContext": "(buffers=<factory>, remote_watermarks=<factory>, watermark_cv=<factory>, prefetch_requested=<factory>, prefetched_rooms=<factory>, prefetch_sockets=<factory>)",
    "staging_handler.StagingManagerMixin._handle_staging_req": "(self, msg)",
    "staging_handler.handle_staging_req": "(msg, staging_allocator, kv_args, attn_tp_size, prefill_attn_tp_size, kv_buffer_tensors, room_receivers, room_bootstrap)",
    "staging_handler.is_watermark_ready": "(staging_state, session_id, alloc_round, alloc_end)",
    "staging_handler.handle_watermark_msg": "(staging_ctx, msg_parts)",
    "srt/utils/common.py:create_device_stream": "(device)",
    "srt/utils/common.py:device_stream_context": "(stream)",
    "srt/utils/common.py:create_device_event": "(device)",
    "srt/disaggregation/utils.py:poll_and_all_reduce_with_staging": "(decode_reqs, staging_handler, gloo_group, metadata_buffers=None, pollers=None)",
    "srt/disaggregation/utils.py:ReqToMetadataIdxAllocator": "(size)",
    "srt/disaggregation/decode.py:DecodePreallocQueue._send_kv_metadata": "(self, decode_req, kv_indices, page_size, state_indices=None, **metadata_kwargs)",
    "srt/disaggregation/common/conn.py:CommonKVManager._resolve_rank_mapping": "(self, info)",
    "srt/disaggregation/common/conn.py:CommonKVManager.update_status": "(self, bootstrap_room, status)",
    "srt/disaggregation/common/conn.py:CommonKVManager.record_failure": "(self, bootstrap_room, failure_reason)",
    "srt/disaggregation/common/conn.py:CommonKVManager.handle_chunk_ready": "(self, msg)",
    "srt/disaggregation/common/conn.py:CommonKVManager.apply_prefill_status": "(self, *, bootstrap_room, status, prefill_rank, failure_reason=None)",
    "srt/disaggregation/common/conn.py:CommonKVReceiver.send_metadata": "(self, kv_indices, aux_index=None, state_indices=None, decode_prefix_len=None, destination=KVTransferDestination.DEVICE, device_kv_indices=None)",
    "srt/disaggregation/common/conn.py:CommonKVReceiver.poll": "(self)",
    "srt/disaggregation/common/conn.py:CommonKVReceiver.abort": "(self)",
    "srt/disaggregation/common/conn.py:CommonKVReceiver.clear": "(self)",
    "srt/disaggregation/mooncake/conn.py:MooncakeKVManager.register_staging_room_bootstrap": "(self, room, bootstrap_infos, receiver)",
    "srt/disaggregation/mooncake/conn.py:MooncakeKVManager.set_kv_buffer_tensors": "(self, k_buffers, v_buffers, page_size, slot_layer_ids=None)",
}

#: Module attributes the shims and the mapping touch.
EXPECTED_ATTRIBUTES: tuple[str, ...] = (
    "staging_buffer._USE_TRITON_STAGING",
    "staging_buffer._STAGING_SUPPORTED_DEVICE_TYPES",
    "staging_buffer._check_kv_on_staging_device",
    "staging_buffer.StagingAllocator.ALLOC_OVERSIZED",
    "staging_buffer._fused_gather_to_staging_kernel",
    "staging_handler.time",
    "staging_handler.create_device_stream",
    "staging_handler.create_device_event",
    "staging_handler.device_stream_context",
    "staging_buffer.create_device_stream",
    "staging_buffer.device_stream_context",
)


class SglangUnavailable(ImportError):
    """SGLang is not installed, so the adapter cannot load."""


class SglangApiMismatch(ImportError):
    """The installed SGLang differs from 0.5.23 in something the adapter relies on."""


# ===================================================================== loading SGLang (shims 1-4)
def installed_sglang_version() -> Optional[str]:
    """The installed ``sglang`` distribution's version, or ``None`` when absent."""
    try:
        return importlib.metadata.version("sglang")
    except importlib.metadata.PackageNotFoundError:
        return None


def sglang_directory() -> Path:
    """The installed ``sglang`` package directory, found without importing it."""
    loaded = sys.modules.get("sglang")
    if loaded is not None and getattr(loaded, "__path__", None):
        return Path(list(loaded.__path__)[0])
    spec = importlib.util.find_spec("sglang")  # a top-level find_spec runs no __init__
    if spec is None or not spec.submodule_search_locations:
        raise SglangUnavailable(
            f"sglang is not installed; the sglang adapter needs it: pip install --no-deps sglang=={SGLANG_VERSION}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _placeholder(name: str, directory: Optional[Path], doc: str) -> types.ModuleType:
    """An empty module standing in for ``name`` (a package when ``directory`` is given)."""
    module = types.ModuleType(name, f"kvconform placeholder: {doc}")
    spec = importlib.machinery.ModuleSpec(name, None, is_package=directory is not None)
    if directory is not None:
        spec.submodule_search_locations = [str(directory)]
        module.__path__ = [str(directory)]
    module.__spec__ = spec
    module.__kvconform_placeholder__ = True
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent in sys.modules:
        setattr(sys.modules[parent], child, module)
    return module


def _find_definition(tree: ast.Module, qualname: str) -> Optional[ast.stmt]:
    """The ``def``/``class`` node named by a dotted path in ``tree``, or ``None``."""
    body, node = tree.body, None
    for part in qualname.split("."):
        node = next(
            (n for n in body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.name == part),
            None,
        )
        if node is None:
            return None
        body = node.body
    return node


def _free_globals(node: ast.stmt) -> set[str]:
    """Global names a definition reads at run time (annotations excluded: never evaluated)."""
    bare = copy.deepcopy(node)
    for sub in ast.walk(bare):
        if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
            sub.returns = None
            every = sub.args.posonlyargs + sub.args.args + sub.args.kwonlyargs + [sub.args.vararg, sub.args.kwarg]
            for arg in every:
                if arg is not None:
                    arg.annotation = None
        elif isinstance(sub, ast.AnnAssign):
            sub.annotation = ast.Constant(None)
    names: set[str] = set()

    def walk(table: symtable.SymbolTable) -> None:
        for symbol in table.get_symbols():
            if symbol.is_global() and symbol.is_referenced():
                names.add(symbol.get_name())
        for child in table.get_children():
            walk(child)

    walk(symtable.symtable(ast.unparse(bare), "<borrowed>", "exec"))
    return names - set(dir(builtins)) - {bare.name}


def borrow(root: Path, relpath: str, qualnames: Sequence[str], namespace: dict) -> tuple[dict[str, Any], list[str]]:
    """Compile ``qualnames`` from ``root/relpath`` into ``namespace`` (their module globals).

    Returns the objects by qualified name and a list of problems (missing
    definitions, globals the namespace lacks).  Methods do not become globals;
    top-level definitions do, as in the real module.
    """
    path = root / relpath
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: dict[str, Any] = {}
    problems: list[str] = []
    for qualname in qualnames:
        node = _find_definition(tree, qualname)
        if node is None:
            problems.append(f"{relpath}: {qualname} no longer exists")
            continue
        siblings = {q for q in qualnames if "." not in q}
        missing = sorted(_free_globals(node) - set(namespace) - siblings)
        if missing:
            problems.append(f"{relpath}: {qualname} now reads globals the adapter does not provide: {', '.join(missing)}")
        code = compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec",
                       flags=__future__.annotations.compiler_flag, dont_inherit=True)
        exec(code, namespace)
        found[qualname] = namespace[node.name] if "." not in qualname else namespace.pop(node.name)
    return found, problems


class _OnceLogger:
    """A logger with ``warning_once``, which SGLang adds to its loggers at package import."""

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(name)
        self._seen: set[str] = set()

    def warning_once(self, msg: str, *args: Any, **kwargs: Any) -> None:
        if msg not in self._seen:
            self._seen.add(msg)
            self._logger.warning(msg, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._logger, name)


def _never_reached(name: str) -> Callable[..., Any]:
    """A global SGLang code names on a branch the adapter never takes."""

    def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"kvconform's sglang adapter does not provide {name}(); this branch was not expected to run")

    unavailable.__name__ = name
    return unavailable


# ===================================================================== device and clock stand-ins (shims 5, 7)
class _CompletedEvent:
    """A CPU device event: CPU work is complete when its call returns."""

    def record(self, stream: Any = None) -> None:
        pass

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        pass

    def wait(self, stream: Any = None) -> None:
        pass


class _SynchronousStream:
    """A CPU device stream: work runs in order on the calling thread, so waits are no-ops."""

    def __init__(self, device: Any) -> None:
        self.device = torch.device(device)

    def wait_stream(self, stream: Any) -> None:
        pass

    def wait_event(self, event: Any) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def record_event(self, event: Any = None) -> Any:
        return event if event is not None else _CompletedEvent()


def _device_helpers(sglang_helpers: Mapping[str, Callable]) -> dict[str, Callable]:
    """Stream/event helpers sending CPU devices to the stand-ins, others to SGLang's own."""

    def create_device_stream(device: Any) -> Any:
        if torch.device(device).type == "cpu":
            return _SynchronousStream(device)
        return sglang_helpers["create_device_stream"](device)

    def device_stream_context(stream: Any) -> Any:
        if isinstance(stream, _SynchronousStream):
            return contextlib.nullcontext()
        return sglang_helpers["device_stream_context"](stream)

    def create_device_event(device: Any) -> Any:
        if torch.device(device).type == "cpu":
            return _CompletedEvent()
        return sglang_helpers["create_device_event"](device)

    return {"create_device_stream": create_device_stream, "device_stream_context": device_stream_context,
            "create_device_event": create_device_event}


class ClockRouter:
    """Stands in for the ``time`` module inside SGLang's staging code.

    ``time()`` and ``monotonic()`` read the clock of the handler whose method
    is running on this thread (see :meth:`using`), real time otherwise; every
    other attribute is the real ``time`` module's.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def monotonic(self) -> float:
        clock = getattr(self._local, "clock", None)
        return time.monotonic() if clock is None else float(clock())

    def time(self) -> float:
        clock = getattr(self._local, "clock", None)
        return time.time() if clock is None else float(clock())

    @contextlib.contextmanager
    def using(self, clock: Callable[[], float]):
        previous = getattr(self._local, "clock", None)
        self._local.clock = clock
        try:
            yield
        finally:
            self._local.clock = previous

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


# ===================================================================== the loaded code
@dataclass(frozen=True)
class SglangCode:
    """SGLang's staging code as loaded here, with whatever differs from 0.5.23."""

    version: Optional[str]
    root: Path
    staging_buffer: types.ModuleType
    staging_handler: types.ModuleType
    borrowed: Mapping[str, Any]  #: ``"relpath:qualname"`` -> object
    problems: tuple[str, ...]  #: API differences from 0.5.23 (empty when it matches)
    clock: ClockRouter
    triton_by_default: bool  #: SGLang's own kernel choice (``SGLANG_STAGING_USE_TORCH`` unset)
    kernels_interpreted: bool  #: Triton kernels were compiled for the CPU interpreter

    def get(self, relpath: str, qualname: str) -> Any:
        return self.borrowed[f"{relpath}:{qualname}"]

    @property
    def kv_poll(self) -> Any:
        return self.get("srt/disaggregation/base/conn.py", "KVPoll")

    def resolve(self, name: str) -> Any:
        """The object an :data:`EXPECTED_SIGNATURES` / :data:`EXPECTED_ATTRIBUTES` key names."""
        if ":" in name:
            return self.borrowed[name]
        module_key, _, path = name.partition(".")
        value: Any = self.staging_buffer if module_key == "staging_buffer" else self.staging_handler
        for part in path.split("."):
            value = getattr(value, part)
        return value


_LOAD_LOCK = threading.Lock()
_LOADED: Optional[SglangCode] = None


def load_sglang() -> SglangCode:
    """Load (once) SGLang's staging modules and borrowed definitions, with the shims applied."""
    global _LOADED
    with _LOAD_LOCK:
        if _LOADED is None:
            _LOADED = _load()
        return _LOADED


def _load() -> SglangCode:
    root = sglang_directory()
    clock = ClockRouter()
    problems: list[str] = []
    borrowed: dict[str, Any] = {}

    def take(relpath: str, namespace: dict) -> dict[str, Any]:
        found, trouble = borrow(root, relpath, BORROWED[relpath], namespace)
        problems.extend(trouble)
        borrowed.update({f"{relpath}:{q}": v for q, v in found.items()})
        return found

    helpers = take("srt/utils/common.py", {"__name__": "sglang.srt.utils.common", "torch": torch})
    _install_placeholders(root, helpers)
    interpret = not torch.cuda.is_available() and STAGING_BUFFER not in sys.modules
    modules = []
    for name in LEAF_MODULES:
        with _triton_interpreter() if interpret and name == STAGING_BUFFER else contextlib.nullcontext():
            modules.append(importlib.import_module(name))
    staging_buffer, staging_handler = modules[2], modules[3]
    envs = modules[0].envs

    base = take("srt/disaggregation/base/conn.py", {"__name__": "sglang.srt.disaggregation.base.conn", "enum": enum})
    kv_poll, destination = base["KVPoll"], base["KVTransferDestination"]
    take("srt/disaggregation/utils.py", {
        "__name__": "sglang.srt.disaggregation.utils", "torch": torch, "dist": torch.distributed, "envs": envs,
        "random": random, "deque": deque, "KVPoll": kv_poll, "_apply_metadata_gate": _never_reached("_apply_metadata_gate"),
    })
    take("srt/disaggregation/decode.py", {"__name__": "sglang.srt.disaggregation.decode",
                                          "KVTransferDestination": destination, "get_disagg": _never_reached("get_disagg")})
    take("srt/disaggregation/common/conn.py", {
        "__name__": "sglang.srt.disaggregation.common.conn", "KVPoll": kv_poll, "KVTransferDestination": destination,
        "time": clock, "logger": _OnceLogger("sglang.srt.disaggregation.common.conn"),
    })
    take("srt/disaggregation/mooncake/conn.py", {"__name__": "sglang.srt.disaggregation.mooncake.conn"})

    triton_by_default = bool(getattr(staging_buffer, "_USE_TRITON_STAGING", True))
    kernel = getattr(staging_buffer, "_fused_gather_to_staging_kernel", None)
    code = SglangCode(
        version=installed_sglang_version(), root=root, staging_buffer=staging_buffer, staging_handler=staging_handler,
        borrowed=borrowed, problems=(), clock=clock, triton_by_default=triton_by_default,
        kernels_interpreted=type(kernel).__name__ == "InterpretedFunction",
    )
    problems.extend(api_differences(code))
    _apply_runtime_shims(staging_buffer, staging_handler, helpers, clock)
    return SglangCode(**{**code.__dict__, "problems": tuple(problems)})


def _install_placeholders(root: Path, sglang_helpers: Mapping[str, Callable]) -> None:
    """Shims 1-3: placeholder packages, the utils helpers, a runtime_context without msgspec."""
    for name in SKIPPED_PACKAGES:
        if name not in sys.modules:
            directory = root.joinpath(*name.split(".")[1:])
            module = _placeholder(name, directory, f"{name}/__init__.py skipped by kvconform's sglang adapter")
            if name == "sglang.srt.utils":
                for helper, fn in sglang_helpers.items():
                    setattr(module, helper, fn)
    if "sglang.srt.runtime_context" not in sys.modules:
        module = _placeholder("sglang.srt.runtime_context", None, "needs msgspec; only get_schedule is named")
        module.get_schedule = _never_reached("get_schedule")


@contextlib.contextmanager
def _triton_interpreter():
    """Shim 8: ``triton.jit`` builds interpreter functions while this runs (no GPU to compile for)."""
    import triton

    knobs = getattr(triton, "knobs", None)
    if knobs is None:  # older Triton: only TRITON_INTERPRET=1 set beforehand selects the interpreter
        yield
        return
    with knobs.runtime.scope():
        knobs.runtime.interpret = True
        yield


def _apply_runtime_shims(staging_buffer: types.ModuleType, staging_handler: types.ModuleType,
                         sglang_helpers: Mapping[str, Callable], clock: ClockRouter) -> None:
    """Shims 5 and 7: CPU as a staging device, CPU streams/events, the handler clock."""
    supported = tuple(getattr(staging_buffer, "_STAGING_SUPPORTED_DEVICE_TYPES", ()))
    if "cpu" not in supported:
        staging_buffer._STAGING_SUPPORTED_DEVICE_TYPES = supported + ("cpu",)
    dispatch = _device_helpers(sglang_helpers)
    for module in (staging_buffer, staging_handler):
        for name, fn in dispatch.items():
            if hasattr(module, name):
                setattr(module, name, fn)
    staging_handler.time = clock


# ===================================================================== API pin (version 0.5.23)
def parameters_of(obj: Any) -> str:
    """``obj``'s parameter list without annotations, e.g. ``(self, room, *, x=1)``."""
    signature = inspect.signature(obj)
    bare = [p.replace(annotation=inspect.Parameter.empty) for p in signature.parameters.values()]
    text = str(signature.replace(parameters=bare, return_annotation=inspect.Signature.empty))
    return text.replace("<KVTransferDestination.DEVICE: 'device'>", "KVTransferDestination.DEVICE")


def api_differences(code: SglangCode) -> list[str]:
    """Every way the loaded code differs from what the adapter expects of 0.5.23."""
    problems = []
    for name, expected in EXPECTED_SIGNATURES.items():
        try:
            found = parameters_of(code.resolve(name))
        except (AttributeError, KeyError):
            problems.append(f"{name} is missing")
            continue
        if found != expected:
            problems.append(f"{name} signature changed: expected {expected}, found {found}")
    for name in EXPECTED_ATTRIBUTES:
        try:
            code.resolve(name)
        except AttributeError:
            problems.append(f"{name} is missing")
    return problems


def require_matching_api(code: SglangCode) -> None:
    """Raise :class:`SglangApiMismatch` naming every difference; warn on another version that matches."""
    if code.problems:
        bullets = "".join(f"\n  - {p}" for p in code.problems)
        raise SglangApiMismatch(
            f"kvconform's sglang adapter targets sglang {SGLANG_VERSION}; the installed sglang {code.version} "
            f"differs:{bullets}\nInstall sglang=={SGLANG_VERSION} (pip install --no-deps sglang=={SGLANG_VERSION}) "
            "or update harness/adapters/sglang.py and docs/sglang.md."
        )
    if code.version != SGLANG_VERSION:
        warnings.warn(f"kvconform's sglang adapter targets sglang {SGLANG_VERSION}, found {code.version}; "
                      "its API matches, results are reported for the installed version", stacklevel=3)


# ===================================================================== topology views and checks
@dataclass(frozen=True)
class DecodeRankView:
    """TP sizes under which SGLang's scatter places writers as the interface asks.

    The decode rank is presented as the only rank of a decode TP group
    (``decode_tp = 1``, rank 0) whose total KV heads are its own heads, fed by
    one prefill rank per writer slot (``prefill_tp = num_writers``).
    """

    prefill_tp: int
    total_kv_heads: int
    decode_tp: int = 1
    decode_rank: int = 0


def decode_rank_view(code: SglangCode, writer_destinations: Sequence[tuple[int, int]], heads_per_writer: int,
                     layers_per_writer: int, k_layers: Sequence[torch.Tensor]) -> DecodeRankView:
    """The view for this writer placement, checked against SGLang's ``compute_head_slice_params``.

    Raises ``NotImplementedError`` when SGLang cannot express the placement:
    writers carrying a subset of the layers, or destinations its formula would
    not produce.
    """
    destinations = [tuple(int(x) for x in d) for d in writer_destinations]
    if not destinations or not k_layers:
        raise ValueError("writer_destinations and k_layers must not be empty")
    if layers_per_writer != len(k_layers) or any(layer != 0 for _, layer in destinations):
        raise NotImplementedError(
            f"sglang {SGLANG_VERSION} cannot scatter writer parts that carry a subset of the layers "
            f"(layers_per_writer={layers_per_writer} of {len(k_layers)}, layer starts "
            f"{[layer for _, layer in destinations]}): scatter_staging_to_kv gives each TP writer one part holding "
            "every decode layer, and SGLang's pipeline stages fill layer slots inside that part "
            "(mooncake/conn.py send_kvcache_staged), so per-writer layer offsets have no counterpart")
    view = DecodeRankView(prefill_tp=len(destinations), total_kv_heads=int(k_layers[0].shape[1]))
    params = code.staging_buffer.compute_head_slice_params
    for slot, (start, _) in enumerate(destinations):
        _, count, sglang_start, _ = params(view.prefill_tp, view.decode_tp, slot, view.decode_rank, view.total_kv_heads)
        if (count, sglang_start) != (heads_per_writer, start):
            raise NotImplementedError(
                f"sglang {SGLANG_VERSION} cannot place writer {slot} at destination head {start} with "
                f"{heads_per_writer} heads: scatter_staging_to_kv derives placements from TP sizes "
                f"(compute_head_slice_params), which put it at head {sglang_start} with {count} heads on a decode "
                f"rank holding {view.total_kv_heads} heads fed by {view.prefill_tp} writers")
    return view


def whole_pages(num_tokens: int, page_size: int, what: str) -> int:
    """``num_tokens`` in pages; ``NotImplementedError`` for a partial last page."""
    if page_size <= 0:
        raise ValueError(f"page_size must be positive, got {page_size}")
    if num_tokens % page_size:
        raise NotImplementedError(
            f"sglang {SGLANG_VERSION} cannot {what} a partial last page ({num_tokens} tokens, page size "
            f"{page_size}): it stages whole pages (num_pages * page_size tokens per writer part)")
    return num_tokens // page_size


def host_page_indices(page_table: torch.Tensor, num_pages: int) -> Any:
    """The first ``num_pages`` entries as the host int64 array SGLang's gather takes.

    SGLang's prefill page indices already live on the host (numpy); the
    interface may hand them over on the GPU.  That device-to-host copy is the
    adapter's, so CUDA's sync debug mode is paused for it alone: a host sync
    reported in ``gather`` is then SGLang's own.
    """
    table = page_table[:num_pages]
    if table.device.type != "cuda":
        return table.to(torch.int64).numpy()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(0)
    try:
        return table.to("cpu", torch.int64).numpy()
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def rank_mapping(code: SglangCode, prefill_tp: int, decode_tp: int, decode_rank: int) -> types.SimpleNamespace:
    """SGLang's ``_resolve_rank_mapping`` for a non-MLA decode rank (TP only; CP and PP 1)."""
    manager = types.SimpleNamespace(
        is_mla_backend=False, is_hybrid_mla_backend=False, attn_tp_size=decode_tp,
        kv_args=types.SimpleNamespace(engine_rank=decode_rank), attn_cp_size=1, attn_cp_rank=0,
        enable_all_cp_ranks_for_transfer=False, pp_size=1, pp_rank=0)
    info = types.SimpleNamespace(attn_tp_size=prefill_tp, attn_cp_size=1, pp_size=1,
                                 enable_kv_cache_sharding=False, enable_dsa_cache_layer_split=False)
    code.get("srt/disaggregation/common/conn.py", "CommonKVManager._resolve_rank_mapping")(manager, info)
    return info


# ===================================================================== the implementation
KERNEL_PATHS = ("auto", "torch", "triton")


class SglangImplementation:
    """SGLang 0.5.23's staging primitives behind kvconform's interface."""

    capabilities = frozenset({"head_mapping", "layout", "allocator", "kv_copy", "decode_handler"})
    # SGLang's design, not bugs: staging moves whole pages (STAGING_REQ counts pages) and
    # pipeline stages share one TP writer's part.  Declared so the suite generates within them.
    limits = frozenset({"whole_pages", "no_pipeline_fan_in"})

    def __init__(self, code: SglangCode, kernel_path: str = "auto") -> None:
        if kernel_path not in KERNEL_PATHS:
            raise ValueError(f"kernel_path must be one of {KERNEL_PATHS}, got {kernel_path!r}")
        self.code = code
        self.kernel_path = kernel_path
        self.name = f"sglang {code.version}" + ("" if kernel_path == "auto" else f" ({kernel_path} kernels)")
        self._prefill_buffers: dict[str, Any] = {}
        self._prefill_lock = threading.Lock()

    # -- kernels ------------------------------------------------------------------------
    def uses_triton(self, device: torch.device) -> bool:
        """Whether SGLang's Triton kernels run for tensors on ``device``."""
        if self.kernel_path != "auto":
            return self.kernel_path == "triton"
        return self.code.triton_by_default and (device.type != "cpu" or self.code.kernels_interpreted)

    def select_kernels(self, device: torch.device) -> None:
        """Shim 6: point SGLang's own kernel switch at the path for ``device``."""
        self.code.staging_buffer._USE_TRITON_STAGING = self.uses_triton(device)

    # -- head_mapping -------------------------------------------------------------------
    def heads_of_rank(self, total_kv_heads: int, tp_size: int, rank: int) -> list[int]:
        """Derived: where rank ``rank``'s slice lands in one decode rank holding all heads."""
        _, count, start, _ = self.code.staging_buffer.compute_head_slice_params(tp_size, 1, rank, 0, total_kv_heads)
        return list(range(start, start + count))

    def writers_of_decode_rank(self, total_kv_heads: int, prefill_tp: int, decode_tp: int, decode_rank: int) -> list[int]:
        """SGLang's ``target_tp_ranks`` (``total_kv_heads`` is not an input of its mapping)."""
        return list(rank_mapping(self.code, prefill_tp, decode_tp, decode_rank).target_tp_ranks)

    def head_slice(self, total_kv_heads: int, prefill_tp: int, decode_tp: int, prefill_rank: int,
                   decode_rank: int) -> tuple[int, int, int]:
        src, count, dst, _ = self.code.staging_buffer.compute_head_slice_params(
            prefill_tp, decode_tp, prefill_rank, decode_rank, total_kv_heads)
        return src, count, dst

    # -- layout -------------------------------------------------------------------------
    def staging_layout(self, num_writers: int, num_tokens: int, heads_per_writer: int, layers_per_writer: int,
                       head_dim: int, element_size: int) -> list[tuple[int, int]]:
        """``compute_staging_layout`` for ``num_writers`` writers of ``heads_per_writer`` heads each."""
        writers, sizes, _ = self.code.staging_buffer.compute_staging_layout(
            num_writers, 1, 0, num_writers * heads_per_writer, num_tokens, head_dim * element_size, layers_per_writer)
        if writers != num_writers:
            raise NotImplementedError(f"sglang {SGLANG_VERSION} lays out {writers} writers, not {num_writers}")
        offsets, total = [], 0
        for size in sizes:
            offsets.append((total, size))
            total += size
        return offsets

    # -- allocator ----------------------------------------------------------------------
    def make_allocator(self, capacity: int) -> "SglangAllocator":
        device = "cuda" if torch.cuda.is_available() else "cpu"
        return SglangAllocator(self.code.staging_buffer.StagingAllocator(capacity, device, 0))

    def writer_may_write(self, alloc_round: int, alloc_end: int, watermark: tuple[int, int]) -> bool:
        """SGLang's prefill-side check after it received ``watermark`` (a WATERMARK message)."""
        handler = self.code.staging_handler
        state = handler.PrefillStagingContext()
        wm_round, wm_tail = watermark
        handler.handle_watermark_msg(state, [b"WATERMARK", str(int(wm_round)).encode(), str(int(wm_tail)).encode(), b"w"])
        return bool(handler.is_watermark_ready(state, "w", alloc_round, alloc_end))

    # -- kv_copy ------------------------------------------------------------------------
    def gather(self, k_layers: Sequence[torch.Tensor], v_layers: Sequence[torch.Tensor], page_table: torch.Tensor,
               page_size: int, num_tokens: int, head_start: int, head_count: int, out: torch.Tensor) -> None:
        """SGLang gathers into a prefill StagingBuffer; the bytes then travel into ``out`` (the RDMA)."""
        num_pages = whole_pages(num_tokens, page_size, "gather")
        element = k_layers[0].element_size()
        expected = num_tokens * head_count * k_layers[0].shape[-1] * element * len(k_layers) * 2
        if out.dtype != torch.uint8 or out.numel() != expected:
            raise ValueError(f"out must be {expected} uint8 bytes (one writer's part), got {out.numel()} {out.dtype}")
        pages = host_page_indices(page_table, num_pages)
        device = k_layers[0].device
        self.select_kernels(device)
        with self._prefill_lock:
            buffer = self._prefill_buffer(device, expected)
            written = self.code.staging_buffer.gather_all_layers_to_staging(
                list(k_layers), list(v_layers), pages, buffer, head_start, head_count, page_size)
            out.copy_(buffer.buffer[:written])

    def _prefill_buffer(self, device: torch.device, nbytes: int) -> Any:
        """A prefill-side ``StagingBuffer`` on ``device`` of at least ``nbytes`` (grown on demand)."""
        key = str(device)
        buffer = self._prefill_buffers.get(key)
        if buffer is None or buffer.size_bytes < nbytes:
            buffer = self.code.staging_buffer.StagingBuffer(max(nbytes, 1), str(device), device.index or 0)
            if device.type == "cpu":
                buffer.device = torch.device("cpu")  # shim 5: CPU tensors carry no index
            self._prefill_buffers[key] = buffer
        return buffer

    def scatter(self, staging: torch.Tensor, writer_destinations: Sequence[tuple[int, int]], heads_per_writer: int,
                layers_per_writer: int, k_layers: Sequence[torch.Tensor], v_layers: Sequence[torch.Tensor],
                page_table: torch.Tensor, page_size: int, num_tokens: int) -> None:
        num_pages = whole_pages(num_tokens, page_size, "scatter")
        view = decode_rank_view(self.code, writer_destinations, heads_per_writer, layers_per_writer, k_layers)
        element = k_layers[0].element_size()
        expected = len(writer_destinations) * num_tokens * heads_per_writer * k_layers[0].shape[-1] * element * len(k_layers) * 2
        if staging.dtype != torch.uint8 or staging.numel() < expected:
            raise ValueError(f"staging must hold {expected} uint8 bytes (the chunk's region), got {staging.numel()} {staging.dtype}")
        device = k_layers[0].device
        self.select_kernels(device)
        pages = page_table[:num_pages].to(device, torch.int64)
        self.code.staging_buffer.scatter_staging_to_kv(
            staging, list(k_layers), list(v_layers), pages, page_size,
            view.prefill_tp, view.decode_tp, view.decode_rank, view.total_kv_heads)

    # -- decode_handler -----------------------------------------------------------------
    def make_decode_handler(self, *, staging: torch.Tensor, allocator: Any, k_layers: Sequence[torch.Tensor],
                            v_layers: Sequence[torch.Tensor], page_size: int, num_writers: int,
                            writer_destinations: Sequence[tuple[int, int]], heads_per_writer: int,
                            layers_per_writer: int, timeout_s: float, clock: Callable[[], float]) -> "SglangDecodeHandler":
        if len(writer_destinations) != num_writers:
            raise ValueError(f"{len(writer_destinations)} writer destinations for {num_writers} writers")
        view = decode_rank_view(self.code, writer_destinations, heads_per_writer, layers_per_writer, k_layers)
        return SglangDecodeHandler(self, view, staging=staging, allocator=allocator, k_layers=list(k_layers),
                                   v_layers=list(v_layers), page_size=page_size, timeout_s=timeout_s, clock=clock)


class SglangAllocator:
    """The interface's allocator: SGLang's ``StagingAllocator`` (its assign already answers ``(id, offset, round)``)."""

    def __init__(self, staging_allocator: Any) -> None:
        self.staging_allocator = staging_allocator

    def assign(self, nbytes: int) -> Optional[tuple[int, int, int]]:
        return self.staging_allocator.assign(nbytes)

    def free(self, alloc_id: int) -> None:
        self.staging_allocator.free(alloc_id)

    def watermark(self) -> tuple[int, int]:
        return self.staging_allocator.get_watermark()


# ===================================================================== decode-side environment (stand-ins)
class _PrefillOutbox:
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


class _AllocatorPort:
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


class _KvManagerEnvironment:
    """State a decode-side ``MooncakeKVManager`` holds for staging (methods come from SGLang)."""

    DEFAULT_PREFILL_FAILURE_REASON = "prefill reported failure"
    attn_tp_size = 1
    pp_size = 1
    enable_staging = True
    defer_decode_allocation = False
    deferred_bootstrap = None
    enable_deferred_decode_kv_release = False

    def __init__(self, code: SglangCode, kv_args: Any, allocator: _AllocatorPort, waiting_timeout: float) -> None:
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


class _ReceiverEnvironment:
    """One request's backend receiver state (methods come from ``CommonKVReceiver``).

    ``require_staging`` is read from the wrapped receiver object, unchanged.
    """

    _lifecycle_lock = contextlib.nullcontext()
    _prefill_wait_start = None
    _owns_bootstrap_room = True

    def __init__(self, inner: Any, kv_mgr: Any, room: int, prefill_info: Any, outbox: _PrefillOutbox) -> None:
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
    def _connect_to_bootstrap_server(self, bootstrap_info: dict) -> tuple[_PrefillOutbox, Any]:
        return self._outbox, self._outbox.lock

    def _send_bootstrap_message(self, *, bootstrap_info: dict, message: list, operation: str) -> bool:
        self._outbox.send_multipart(message)
        return True

    def _send_abort_notification(self, *, force_arm: bool = False) -> None:
        self._outbox.send_multipart([b"ABORT", str(self.bootstrap_room).encode()])

    def invalidate_cached_bootstrap_infos(self) -> None:
        pass


class _PreallocQueueEnvironment:
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


class _DecodeRequestEnvironment:
    """A ``DecodeRequest`` with the fields SGLang's staging path reads; the handler adds its own."""

    is_rebootstrap = False

    def __init__(self, room: int, prefix_len: int, row: int, receiver: Any) -> None:
        self.req = types.SimpleNamespace(
            rid=f"kvconform-{room}", bootstrap_room=room, time_stats=_TimeStats(),
            kv=types.SimpleNamespace(cache_protected_len=prefix_len, req_pool_idx=row))
        self.kv_receiver = receiver
        self.metadata_buffer_index = -1


class _SchedulerEnvironment:
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
class _IndexedDevicePlaceholder:
    """Stands for a KV tensor during ``DecodeStagingHandler.__init__`` on CPU (shim 5)."""

    device: torch.device


def _environment_classes(code: SglangCode) -> tuple[type, type, type]:
    """KV manager, receiver and prealloc-queue stand-ins with SGLang's methods attached."""
    conn = "srt/disaggregation/common/conn.py"
    mooncake = "srt/disaggregation/mooncake/conn.py"
    manager_methods = {q.rpartition(".")[2]: code.get(conn, q) for q in BORROWED[conn] if q.startswith("CommonKVManager.")}
    manager_methods.update({q.rpartition(".")[2]: code.get(mooncake, q) for q in BORROWED[mooncake]})
    receiver_methods = {q.rpartition(".")[2]: code.get(conn, q) for q in BORROWED[conn] if q.startswith("CommonKVReceiver.")}
    manager = type("SglangKvManagerStandIn", (code.staging_handler.StagingManagerMixin, _KvManagerEnvironment), manager_methods)
    receiver = type("SglangReceiverStandIn", (_ReceiverEnvironment,), receiver_methods)
    queue = type("SglangPreallocQueueStandIn", (_PreallocQueueEnvironment,), {
        "_send_kv_metadata": code.get("srt/disaggregation/decode.py", "DecodePreallocQueue._send_kv_metadata")})
    return manager, receiver, queue


def _single_rank_group() -> Any:
    """A real one-rank gloo group: SGLang's poll all-reduce is then the identity, as on one TP rank."""
    dist = torch.distributed
    return dist.ProcessGroupGloo(dist.HashStore(), 0, 1, datetime.timedelta(seconds=30))


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
        manager_class, self._receiver_class, queue_class = _environment_classes(code)
        bytes_per_page = page_size * view.total_kv_heads * k_layers[0].shape[-1] * k_layers[0].element_size()
        kv_args = types.SimpleNamespace(
            engine_rank=view.decode_rank, gpu_id=self._device.index or 0, page_size=page_size,
            kv_item_lens=[bytes_per_page] * (2 * len(k_layers)),
            kv_head_num=view.total_kv_heads, total_kv_head_num=view.total_kv_heads)
        self._kv_mgr = manager_class(code, kv_args, _AllocatorPort(allocator, staging), float(timeout_s))
        self._kv_mgr.set_kv_buffer_tensors(k_layers, v_layers, page_size)
        self._prefill_info = rank_mapping(code, view.prefill_tp, view.decode_tp, view.decode_rank)
        self._scheduler = _SchedulerEnvironment(self._device)
        self._outbox = _PrefillOutbox()
        with self._entered():
            self.sglang_handler = self._create_sglang_handler()
        self.sglang_handler.completion_timeout = float(timeout_s)
        self._kv_mgr._staging_handler = self.sglang_handler
        self._queue = queue_class(code, self.sglang_handler)
        self._group = _single_rank_group()
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
        self._kv_mgr.kv_buffer_tensors = {**real, "k_buffers": [_IndexedDevicePlaceholder(torch.device(self._device.type, 0))]}
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
            decode_req = _DecodeRequestEnvironment(room, prefix_len, row, standin)
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


# ===================================================================== factories
def _make(kernel_path: str) -> SglangImplementation:
    code = load_sglang()
    require_matching_api(code)
    if kernel_path == "triton" and not (torch.cuda.is_available() or code.kernels_interpreted):
        raise RuntimeError("SGLang's Triton staging kernels were compiled for CUDA, which is not available here")
    return SglangImplementation(code, kernel_path)


def make_implementation() -> SglangImplementation:
    """SGLang's staging as it runs by default: Triton kernels (torch for CPU tensors on a CUDA machine)."""
    return _make("auto")


def make_torch_implementation() -> SglangImplementation:
    """SGLang's torch staging kernels, as with ``SGLANG_STAGING_USE_TORCH=1``."""
    return _make("torch")


def make_triton_implementation() -> SglangImplementation:
    """SGLang's Triton staging kernels (compiled on CUDA, interpreted on a machine without CUDA)."""
    return _make("triton")
