"""Portable torch gather / scatter / direct copy between paged KV pools and staging.

Every copy moves bytes through an integer view of the element size, never
through float arithmetic, so fp8 values and NaN payloads survive bit-exactly.
Token ``i`` of a page table lives in pool slot
``page_table[i // page_size] * page_size + i % page_size``.
"""

from __future__ import annotations

from typing import Sequence

import torch

_INT_OF_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def as_int(t: torch.Tensor) -> torch.Tensor:
    """The same bytes viewed as the signed integer type of the element size."""
    return t.view(_INT_OF_SIZE[t.element_size()])


def token_slots(page_table: torch.Tensor, page_size: int, num_tokens: int) -> torch.Tensor:
    """Pool slots of the first ``num_tokens`` tokens of ``page_table``, in order."""
    if page_size < 1:
        raise ValueError(f"page_size must be >= 1, got {page_size}")
    pages_needed = -(-num_tokens // page_size)
    if page_table.dim() != 1 or page_table.numel() < pages_needed:
        raise ValueError(
            f"page table must be 1-D with at least {pages_needed} pages for {num_tokens} tokens "
            f"of page size {page_size}, got shape {tuple(page_table.shape)}"
        )
    pages = page_table[:pages_needed].to(torch.int64)
    within = torch.arange(page_size, device=pages.device, dtype=torch.int64)
    return (pages[:, None] * page_size + within).reshape(-1)[:num_tokens]


def _check_pool(k_layers: Sequence[torch.Tensor], v_layers: Sequence[torch.Tensor], what: str) -> None:
    if len(k_layers) != len(v_layers) or not k_layers:
        raise ValueError(f"{what}: need the same non-zero number of K and V layers, got {len(k_layers)} and {len(v_layers)}")
    first = k_layers[0]
    for layer in (*k_layers, *v_layers):
        if layer.dim() != 3 or layer.shape != first.shape or layer.dtype != first.dtype:
            raise ValueError(
                f"{what}: every layer must be [pool_tokens, heads, head_dim] of one shape and dtype; "
                f"got {tuple(layer.shape)} {layer.dtype} beside {tuple(first.shape)} {first.dtype}"
            )


def _check_heads(start: int, count: int, heads: int, what: str) -> None:
    if count < 1 or start < 0 or start + count > heads:
        raise ValueError(f"{what}: head range [{start}, {start + count}) does not fit the rank's {heads} heads")


def _staging_view(buf: torch.Tensor, layers: int, tokens: int, heads: int, head_dim: int, like: torch.Tensor) -> torch.Tensor:
    nbytes = 2 * layers * tokens * heads * head_dim * like.element_size()
    if buf.dtype != torch.uint8 or buf.dim() != 1 or buf.numel() < nbytes:
        raise ValueError(f"staging buffer must be 1-D uint8 of at least {nbytes} bytes, got {buf.dtype} {tuple(buf.shape)}")
    return buf[:nbytes].view(_INT_OF_SIZE[like.element_size()]).view(2, layers, tokens, heads, head_dim)


def gather(
    k_layers: Sequence[torch.Tensor],
    v_layers: Sequence[torch.Tensor],
    page_table: torch.Tensor,
    page_size: int,
    num_tokens: int,
    head_start: int,
    head_count: int,
    out: torch.Tensor,
) -> None:
    """Copy one writer's head slice of a chunk, every layer, K then V, into ``out``.

    Upholds: ``out`` holds ``[K,V][layer][token][head][dim]`` bit-exactly; the
    pool is only read.
    """
    _check_pool(k_layers, v_layers, "gather")
    _check_heads(head_start, head_count, k_layers[0].shape[1], "gather")
    slots = token_slots(page_table, page_size, num_tokens)
    dst = _staging_view(out, len(k_layers), num_tokens, head_count, k_layers[0].shape[2], k_layers[0])
    for kv, layers in enumerate((k_layers, v_layers)):
        for index, layer in enumerate(layers):
            torch.index_select(as_int(layer).narrow(1, head_start, head_count), 0, slots, out=dst[kv, index])


def scatter(
    staging: torch.Tensor,
    writer_destinations: Sequence[tuple[int, int]],
    heads_per_writer: int,
    layers_per_writer: int,
    k_layers: Sequence[torch.Tensor],
    v_layers: Sequence[torch.Tensor],
    page_table: torch.Tensor,
    page_size: int,
    num_tokens: int,
) -> None:
    """Copy a whole chunk's staging region (every writer) into the pool.

    Upholds: only heads ``[dst_head, dst_head + heads_per_writer)`` of layers
    ``[dst_layer, dst_layer + layers_per_writer)`` of the chunk's tokens are
    written, each bit-exactly from its writer's part.
    """
    _check_pool(k_layers, v_layers, "scatter")
    pool_heads, head_dim = k_layers[0].shape[1], k_layers[0].shape[2]
    slots = token_slots(page_table, page_size, num_tokens)
    writer_bytes = 2 * layers_per_writer * num_tokens * heads_per_writer * head_dim * k_layers[0].element_size()
    if staging.numel() < writer_bytes * len(writer_destinations):
        raise ValueError(f"staging region holds {staging.numel()} bytes, {len(writer_destinations)} writers need {writer_bytes * len(writer_destinations)}")
    for slot, (dst_head, dst_layer) in enumerate(writer_destinations):
        _check_heads(dst_head, heads_per_writer, pool_heads, f"scatter writer {slot}")
        if dst_layer < 0 or dst_layer + layers_per_writer > len(k_layers):
            raise ValueError(f"scatter writer {slot}: layers [{dst_layer}, {dst_layer + layers_per_writer}) exceed the pool's {len(k_layers)}")
        part = staging[slot * writer_bytes:(slot + 1) * writer_bytes]
        src = _staging_view(part, layers_per_writer, num_tokens, heads_per_writer, head_dim, k_layers[0])
        for kv, layers in enumerate((k_layers, v_layers)):
            for index in range(layers_per_writer):
                pool = as_int(layers[dst_layer + index]).narrow(1, dst_head, heads_per_writer)
                pool.index_copy_(0, slots, src[kv, index])


def direct_copy(
    src_k_layers: Sequence[torch.Tensor],
    src_v_layers: Sequence[torch.Tensor],
    src_page_table: torch.Tensor,
    src_head_start: int,
    dst_k_layers: Sequence[torch.Tensor],
    dst_v_layers: Sequence[torch.Tensor],
    dst_page_table: torch.Tensor,
    dst_head_start: int,
    head_count: int,
    page_size: int,
    num_tokens: int,
) -> None:
    """Non-staged path: copy a head slice straight from one pool to another.

    Upholds: the same bytes land as the staged path would put there; only the
    destination head slice of the listed tokens is written.
    """
    _check_pool(src_k_layers, src_v_layers, "direct_copy source")
    _check_pool(dst_k_layers, dst_v_layers, "direct_copy destination")
    if len(src_k_layers) != len(dst_k_layers):
        raise ValueError(f"direct_copy: source has {len(src_k_layers)} layers, destination {len(dst_k_layers)}")
    _check_heads(src_head_start, head_count, src_k_layers[0].shape[1], "direct_copy source")
    _check_heads(dst_head_start, head_count, dst_k_layers[0].shape[1], "direct_copy destination")
    src_slots = token_slots(src_page_table, page_size, num_tokens)
    dst_slots = token_slots(dst_page_table, page_size, num_tokens)
    for src_layers, dst_layers in ((src_k_layers, dst_k_layers), (src_v_layers, dst_v_layers)):
        for src, dst in zip(src_layers, dst_layers):
            rows = as_int(src).narrow(1, src_head_start, head_count).index_select(0, src_slots)
            as_int(dst).narrow(1, dst_head_start, head_count).index_copy_(0, dst_slots, rows)
