"""The reference as a kvconform plug-in: ``--impl reference`` (``reference.plugin:make_implementation``).

Maps the suite's interface (plain values and tensors) onto the reference
modules.  Gather and scatter use the Triton kernels for CUDA tensors when
Triton is available, and the portable torch path otherwise.
``--impl reference-triton`` forces the Triton kernels everywhere, so the
conformance suite judges the kernels themselves on a CPU-only machine.
"""

from __future__ import annotations

import os
import types
from typing import Any, Sequence

import torch

from reference import allocator, end_to_end, handler, kv_copy
from reference.layout import StagingLayout
from reference.topology import TpTopology


def _kernels_for(tensor: torch.Tensor) -> types.ModuleType:
    """Triton for CUDA tensors when available; the torch path otherwise (CPU included, whatever
    ``TRITON_INTERPRET`` says: the interpreter is for judging the kernels, not for speed)."""
    if not tensor.is_cuda:
        return kv_copy
    from reference import triton_kv_copy  # imports without Triton; is_available says so

    return triton_kv_copy if triton_kv_copy.is_available(tensor.device) else kv_copy


class ReferenceImplementation:
    """Every capability, backed by the reference modules."""

    name = "reference"
    kernels = staticmethod(_kernels_for)
    capabilities = frozenset(
        {"head_mapping", "layout", "allocator", "kv_copy", "direct_copy", "decode_handler", "end_to_end"}
    )

    # head_mapping
    def heads_of_rank(self, total_kv_heads: int, tp_size: int, rank: int) -> Sequence[int]:
        return TpTopology(total_kv_heads, tp_size, tp_size).heads_of_rank(tp_size, rank)

    def writers_of_decode_rank(self, total_kv_heads: int, prefill_tp: int, decode_tp: int, decode_rank: int) -> Sequence[int]:
        return TpTopology(total_kv_heads, prefill_tp, decode_tp).writers_of_decode_rank(decode_rank)

    def head_slice(self, total_kv_heads: int, prefill_tp: int, decode_tp: int, prefill_rank: int, decode_rank: int) -> tuple[int, int, int]:
        hs = TpTopology(total_kv_heads, prefill_tp, decode_tp).head_slice(prefill_rank, decode_rank)
        return hs.source_start, hs.count, hs.destination_start

    # layout
    def staging_layout(self, num_writers: int, num_tokens: int, heads_per_writer: int, layers_per_writer: int,
                       head_dim: int, element_size: int) -> list[tuple[int, int]]:
        return StagingLayout(num_writers, num_tokens, heads_per_writer, layers_per_writer, head_dim, element_size).spans()

    # allocator
    def make_allocator(self, capacity: int) -> allocator.RingAllocator:
        return allocator.RingAllocator(capacity)

    def writer_may_write(self, alloc_round: int, alloc_end: int, watermark: tuple[int, int]) -> bool:
        return allocator.writer_may_write(alloc_round, alloc_end, watermark)

    # kv_copy
    def gather(self, k_layers: Sequence[torch.Tensor], v_layers: Sequence[torch.Tensor], page_table: torch.Tensor,
               page_size: int, num_tokens: int, head_start: int, head_count: int, out: torch.Tensor) -> None:
        self.kernels(out).gather(k_layers, v_layers, page_table, page_size, num_tokens, head_start, head_count, out)

    def scatter(self, staging: torch.Tensor, writer_destinations: Sequence[tuple[int, int]], heads_per_writer: int,
                layers_per_writer: int, k_layers: Sequence[torch.Tensor], v_layers: Sequence[torch.Tensor],
                page_table: torch.Tensor, page_size: int, num_tokens: int) -> None:
        self.kernels(staging).scatter(staging, writer_destinations, heads_per_writer, layers_per_writer,
                                      k_layers, v_layers, page_table, page_size, num_tokens)

    # direct_copy
    def direct_copy(self, *args: Any) -> None:
        kv_copy.direct_copy(*args)

    # decode_handler
    def make_decode_handler(self, **kwargs: Any) -> handler.DecodeStagingHandler:
        return handler.DecodeStagingHandler(scatter=self.scatter, **kwargs)

    # end_to_end
    def move_request(self, **kwargs: Any) -> None:
        end_to_end.move_request(**kwargs)


class TritonReferenceImplementation(ReferenceImplementation):
    """The reference with gather and scatter always through the Triton kernels."""

    name = "reference-triton"

    def __init__(self) -> None:
        from reference import triton_kv_copy

        if triton_kv_copy.triton is None:
            raise RuntimeError("reference-triton needs Triton: pip install triton")
        if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
            raise RuntimeError("reference-triton on a machine without CUDA needs TRITON_INTERPRET=1 "
                               "(set before Triton is imported)")
        self.kernels = lambda tensor: triton_kv_copy


def make_implementation() -> ReferenceImplementation:
    return ReferenceImplementation()


def make_triton_implementation() -> TritonReferenceImplementation:
    return TritonReferenceImplementation()
