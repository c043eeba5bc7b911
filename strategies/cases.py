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
    """Shape of the KV cache: ``num_layers`` is divisible by both PP sizes.

    ``page_size`` is the prefill side's page size, and the decode side's unless
    ``decode_page_size`` is given (``None`` means the same; it reads back as an
    int either way).  Different sizes exist only for end-to-end moves (vLLM's
    decode block a multiple of the prefill block, or the reverse); the
    primitive capabilities take one page size (docs/domain.md).
    """

    num_layers: int
    head_dim: int
    dtype: torch.dtype
    page_size: int
    decode_page_size: int = None  # type: ignore[assignment]  # normalised to an int below

    def __post_init__(self) -> None:
        if self.decode_page_size is None:  # a normalisation, not a check: invalid specs stay representable
            object.__setattr__(self, "decode_page_size", self.page_size)

    @property
    def prefill_page_size(self) -> int:
        return self.page_size


@dataclass(frozen=True)
class RequestSpec:
    """One request's token range, chunk grid and page tables on both sides.

    Each side's page table holds ``ceil(num_tokens / page size)`` distinct page
    ids of that side's page size (``KvSpec.page_size`` / ``decode_page_size``)
    below its pool size; each pool has pages outside the request (canaries).
    The decode side holds the first ``prefix_len`` tokens already (its own
    copy; ``chunk_pages`` counts decode pages).
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
