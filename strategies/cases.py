"""The plain values the strategies produce: one transfer scenario, piece by piece.

These are descriptions, not behaviour: nothing here validates, so that invalid
topologies can be represented too (see ``strategies.bad_topology``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from strategies.pool_layout import CONTIGUOUS, PoolLayout


@dataclass(frozen=True)
class TpTopology:
    """Prefill/decode parallel layout of one deployment.

    ``total_kv_heads`` is the model's true KV head count ``H``; each side's TP
    size either divides ``H`` or is a multiple of it (replication) when valid.
    ``num_query_heads`` (GQA) is descriptive only: a multiple of ``H`` when set.
    """

    total_kv_heads: int
    prefill_tp: int
    decode_tp: int
    prefill_pp: int = 1
    decode_pp: int = 1
    num_query_heads: int | None = None


@dataclass(frozen=True)
class KvSpec:
    """Shape of the KV cache: ``num_layers`` is divisible by both PP sizes."""

    num_layers: int
    head_dim: int
    dtype: torch.dtype
    page_size: int


@dataclass(frozen=True)
class RequestSpec:
    """One request's token range, chunk grid and page tables on both sides.

    Page tables hold ``ceil(num_tokens / page_size)`` distinct page ids below
    their pool size; each pool has pages outside the request (canaries).
    """

    num_tokens: int
    prefix_len: int
    chunk_pages: int
    prefill_page_table: tuple[int, ...]
    prefill_pool_pages: int
    decode_page_table: tuple[int, ...]
    decode_pool_pages: int


@dataclass(frozen=True)
class TransferCase:
    """A complete scenario: topology, KV shape, request and ground-truth seed.

    ``nan_payloads`` asks the harness to plant NaNs and odd bit patterns in the
    ground truth so that float arithmetic on the copy path shows up.
    ``layout`` is how every rank's pool layers sit in memory (``strategies.pool_layout``).
    """

    topology: TpTopology
    kv: KvSpec
    request: RequestSpec
    seed: int
    nan_payloads: bool
    layout: PoolLayout = CONTIGUOUS
