"""Move one request's KV from prefill pools to decode pools, in one process.

The reference's own orchestration for the ``end_to_end`` capability: for each
decode rank and each chunk of the suffix, every writer gathers its head slice
into its own buffer, the transport writes it into the decode rank's staging
region, and the region is scattered.  Receivers without staging take the
direct head-slice copy instead.

Prefill and decode may use different page sizes: chunks are whole decode
pages, and the prefill side is read token by token through its slot list (a
page table of one-token pages), so a chunk may start inside a prefill page.
"""

from __future__ import annotations

from typing import Sequence

import torch

from reference import kv_copy, transport
from reference.layout import StagingLayout
from reference.topology import TpTopology

Pool = tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]]


def chunk_grid(prefix_len: int, num_tokens: int, page_size: int, chunk_pages: int) -> list[tuple[int, int, int]]:
    """``(page_start, num_pages, num_tokens)`` of each chunk of the suffix, counted from the prefix."""
    suffix = num_tokens - prefix_len
    total_pages = -(-suffix // page_size)
    chunks = []
    for page_start in range(0, total_pages, chunk_pages):
        pages = min(chunk_pages, total_pages - page_start)
        chunks.append((page_start, pages, min(pages * page_size, suffix - page_start * page_size)))
    return chunks


def move_request(
    *,
    total_kv_heads: int,
    prefill_tp: int,
    decode_tp: int,
    prefill_pp: int,
    decode_pp: int,
    prefill_page_size: int,
    decode_page_size: int,
    prefill_pools: Sequence[Pool],
    prefill_page_tables: Sequence[torch.Tensor],
    decode_pools: Sequence[Pool],
    decode_page_tables: Sequence[torch.Tensor],
    prefix_len: int,
    num_tokens: int,
    chunk_pages: int,
    staged: bool,
) -> None:
    """Move tokens ``[prefix_len, num_tokens)``; pools are indexed ``pp_stage * tp + tp_rank``."""
    topo = TpTopology(total_kv_heads, prefill_tp, decode_tp, prefill_pp, decode_pp)
    if len(prefill_pools) != prefill_tp * prefill_pp or len(decode_pools) != decode_tp * decode_pp:
        raise ValueError(
            f"expected {prefill_tp * prefill_pp} prefill and {decode_tp * decode_pp} decode pools, "
            f"got {len(prefill_pools)} and {len(decode_pools)}"
        )
    if not 0 <= prefix_len < num_tokens:
        raise ValueError(f"prefix_len {prefix_len} must lie in [0, num_tokens={num_tokens})")
    if prefill_page_size < 1 or decode_page_size < 1:
        raise ValueError(f"page sizes must be >= 1, got prefill {prefill_page_size}, decode {decode_page_size}")
    # Prefix hits are whole decode pages; a partially cached last page is moved again, whole.
    prefix_len -= prefix_len % decode_page_size
    prefill_slots = [_slots(table, prefill_page_size, num_tokens) for table in prefill_page_tables]
    for stage in range(decode_pp):
        for rank in range(decode_tp):
            index = stage * decode_tp + rank
            _feed_decode_rank(topo, stage, rank, decode_page_size, prefill_pools, prefill_slots,
                              decode_pools[index], decode_page_tables[index], prefix_len, num_tokens, chunk_pages, staged)


def _slots(page_table: torch.Tensor, page_size: int, num_tokens: int) -> torch.Tensor:
    """Pool slots of the request's tokens: a page table of one-token pages."""
    token = torch.arange(num_tokens, device=page_table.device)
    return page_table[token // page_size] * page_size + token % page_size


def _writers(topo: TpTopology, stage: int, rank: int) -> list[tuple[int, int, int]]:
    """``(prefill pool index, prefill tp rank, destination layer start)`` per writer slot."""
    writers = []
    for offset in range(topo.pp_writers):
        prefill_stage = stage * topo.pp_writers + offset
        for prefill_rank in topo.writers_of_decode_rank(rank):
            writers.append((prefill_stage * topo.prefill_tp + prefill_rank, prefill_rank, offset))
    return writers


def _feed_decode_rank(topo, stage, rank, page_size, prefill_pools, prefill_slots, pool, table,
                      prefix_len, num_tokens, chunk_pages, staged) -> None:
    """``page_size`` and ``table`` are the decode rank's; ``prefill_slots`` each prefill rank's token slots."""
    k_dst, v_dst = pool
    writers = _writers(topo, stage, rank)
    slices = [topo.head_slice(prefill_rank, rank) for _, prefill_rank, _ in writers]
    layers_per_writer = len(prefill_pools[writers[0][0]][0])
    first_page = prefix_len // page_size
    if not staged:
        decode_slots = _slots(table, page_size, num_tokens)[prefix_len:]
        for (pool_index, _, layer_slot), hs in zip(writers, slices):
            k_src, v_src = prefill_pools[pool_index]
            layers = slice(layer_slot * layers_per_writer, (layer_slot + 1) * layers_per_writer)
            kv_copy.direct_copy(k_src, v_src, prefill_slots[pool_index][prefix_len:], hs.source_start,
                                k_dst[layers], v_dst[layers], decode_slots, hs.destination_start,
                                hs.count, 1, num_tokens - prefix_len)
        return
    destinations = [(hs.destination_start, layer_slot * layers_per_writer) for (_, _, layer_slot), hs in zip(writers, slices)]
    for page_start, _, tokens in chunk_grid(prefix_len, num_tokens, page_size, chunk_pages):
        layout = StagingLayout(len(writers), tokens, slices[0].count, layers_per_writer,
                               k_dst[0].shape[2], k_dst[0].element_size())
        region = torch.empty(layout.total_bytes, dtype=torch.uint8, device=k_dst[0].device)
        for slot, ((pool_index, _, _), hs) in enumerate(zip(writers, slices)):
            k_src, v_src = prefill_pools[pool_index]
            buffer = torch.empty(layout.writer_bytes, dtype=torch.uint8, device=k_src[0].device)
            first_token = prefix_len + page_start * page_size
            kv_copy.gather(k_src, v_src, prefill_slots[pool_index][first_token:], 1, tokens,
                           hs.source_start, hs.count, buffer)
            transport.write(region, layout.writer_span(slot)[0], buffer.to(region.device))
        kv_copy.scatter(region, destinations, slices[0].count, layers_per_writer, k_dst, v_dst,
                        table[first_page + page_start:], page_size, tokens)
