"""How kvconform's calls map onto SGLang's TP-size view, and the limits of that mapping.

The interface gives ``scatter`` and ``make_decode_handler`` writer
destinations, not TP sizes; SGLang derives destinations from TP sizes.  The
decode rank is presented to SGLang as decode TP 1, rank 0, total KV heads =
its own head count, fed by ``num_writers`` prefill ranks.  SGLang's own
``compute_head_slice_params`` must reproduce the given destinations under that
view, else ``NotImplementedError``; for valid topologies it equals what SGLang
computes from the real sizes (proved in docs/sglang.md, tested).

Adapter limits (raise ``NotImplementedError("sglang 0.5.23 cannot ...")``):
partial last pages (SGLang stages whole pages; this includes ``allocate_chunk``
sizes that are not whole pages of the region, STAGING_REQ carrying a page
count), writer parts carrying a subset of the layers (prefill PP > decode PP:
SGLang's PP stages share a TP writer's part) and writer destinations SGLang's
formula would not produce.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch

from adapters.sglang.pin import SGLANG_VERSION
from adapters.toolkit import cuda_sync_debug_paused

if TYPE_CHECKING:
    from adapters.sglang.loader import SglangCode


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
    with cuda_sync_debug_paused(table.device):
        return table.to("cpu", torch.int64).numpy()


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

