"""SGLang 0.5.23's staging primitives behind kvconform's interface, and the factories.

Capabilities and what runs (all SGLang code is the installed 0.5.23 code):

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
  ``make_torch_implementation`` selects its torch variants instead; ``--impl sglang`` runs both, the
  ``triton`` and ``torch`` configurations, one report column each.
* ``decode_handler``: ``DecodeStagingHandler``, see ``decode_handler``.
* Not claimed: ``direct_copy`` and ``end_to_end`` (SGLang has no in-process
  equivalent: its non-staged path is per-page RDMA by the backend).
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional, Sequence

import torch

from adapters.sglang.decode_handler import SglangDecodeHandler
from adapters.sglang.loader import SglangCode, load_sglang
from adapters.sglang.pin import SGLANG_VERSION, require_matching_api
from adapters.sglang.views import decode_rank_view, host_page_indices, rank_mapping, whole_pages

#: Kernel paths a factory can select: SGLang's own choice, or one forced.
KERNEL_PATHS = ("auto", "torch", "triton")


class SglangImplementation:
    """SGLang 0.5.23's staging primitives behind kvconform's interface."""

    capabilities = frozenset({"head_mapping", "layout", "allocator", "kv_copy", "decode_handler"})
    # SGLang's design, not bugs: staging moves whole pages (STAGING_REQ counts pages),
    # pipeline stages share one TP writer's part, and its memory pool allocates every layer's K and
    # V buffer as a contiguous tensor of its own (its kernels index them as packed).  Declared so the
    # suite generates within them.
    limits = frozenset({"whole_pages", "no_pipeline_fan_in", "contiguous_layers"})

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


def _make(kernel_path: str) -> SglangImplementation:
    code = load_sglang()
    require_matching_api(code)
    if kernel_path == "triton" and not (torch.cuda.is_available() or code.kernels_interpreted):
        raise RuntimeError("SGLang's Triton staging kernels were compiled for CUDA, which is not available here")
    return SglangImplementation(code, kernel_path)


def make_torch_implementation() -> SglangImplementation:
    """SGLang's torch staging kernels, as with ``SGLANG_STAGING_USE_TORCH=1``."""
    return _make("torch")


def make_triton_implementation() -> SglangImplementation:
    """SGLang's Triton staging kernels (compiled on CUDA, interpreted on a machine without CUDA)."""
    return _make("triton")


def make_default_implementation() -> SglangImplementation:
    """SGLang's staging as it runs by default: Triton kernels (torch for CPU tensors on a CUDA machine)."""
    return _make("auto")


class SglangConfigurations:
    """``--impl sglang``: SGLang's two kernel paths, one column of one report each (``--config torch``
    selects one); each is built only when selected."""

    name = f"sglang {SGLANG_VERSION}"
    configurations = {"triton": make_triton_implementation, "torch": make_torch_implementation}


def make_implementation() -> SglangConfigurations:
    """``--impl sglang``: the Triton and the torch kernel paths (``sglang#torch`` is one of them alone)."""
    return SglangConfigurations()
