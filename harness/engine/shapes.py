"""What a decode rank and its requests look like, in the suite's own case vocabulary.

A :class:`RankShape` is one decode rank of a ``TpTopology`` with a ``KvSpec`` (the types every other test
draws), plus the two numbers only a staging rank has: the largest chunk and the ring size in chunks.  A
:class:`RequestPlan` is the request-level part of a ``RequestSpec`` (tokens, prefix, chunking) with the seed
of its ground truth; its page table is the spec's when it comes from a ``TransferCase``, else the rank lays
out its shared pool itself.  ``rank_shapes`` draws small stress geometries as topologies whose decode rank 0
is fed by 1-2 prefill TP ranks times 1-2 prefill PP stages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from hypothesis import strategies as st

from harness.oracles import owned_heads
from strategies.cases import KvSpec, RequestSpec, TpTopology, TransferCase
from strategies.pool_layout import CONTIGUOUS, PoolLayout

MAX_TOKENS = 12


@dataclass(frozen=True)
class RankShape:
    """Decode rank ``decode_index`` (``pp_stage * decode_tp + tp_rank``) of ``topology`` with KV ``kv``.

    ``max_chunk_pages`` bounds the chunks its requests are cut into; the staging ring holds the largest chunk
    ``ring_chunks`` times (1: every chunk wraps).  ``layout``: how its own pool's layers sit in memory.
    """

    topology: TpTopology
    kv: KvSpec
    decode_index: int = 0
    max_chunk_pages: int = 1
    ring_chunks: int = 1
    layout: PoolLayout = CONTIGUOUS

    @classmethod
    def of(cls, *, page_size: int, tp_writers: int, pp_writers: int, heads_per_writer: int, layers_per_writer: int,
           head_dim: int, dtype: torch.dtype, max_chunk_pages: int, ring_chunks: int,
           layout: PoolLayout = CONTIGUOUS) -> "RankShape":
        """The single decode rank fed by ``tp_writers`` prefill TP ranks times ``pp_writers`` prefill stages."""
        topology = TpTopology(tp_writers * heads_per_writer, tp_writers, 1, prefill_pp=pp_writers, decode_pp=1)
        kv = KvSpec(pp_writers * layers_per_writer, head_dim, dtype, page_size)
        return cls(topology, kv, 0, max_chunk_pages, ring_chunks, layout)

    @classmethod
    def of_case(cls, case: TransferCase, decode_index: int, ring_chunks: int = 1) -> "RankShape":
        return cls(case.topology, case.kv, decode_index, case.request.chunk_pages, ring_chunks, case.layout)

    @property
    def page_size(self) -> int:
        return self.kv.page_size

    @property
    def heads(self) -> list[int]:
        """Global KV heads this decode rank holds."""
        topo = self.topology
        return owned_heads(topo.total_kv_heads, topo.decode_tp, self.decode_index % topo.decode_tp)

    @property
    def layers(self) -> range:
        """Global layers this decode rank's PP stage holds."""
        per_stage = self.kv.num_layers // self.topology.decode_pp
        stage = self.decode_index // self.topology.decode_tp
        return range(stage * per_stage, (stage + 1) * per_stage)

    @property
    def layers_per_writer(self) -> int:
        return self.kv.num_layers // self.topology.prefill_pp

    @property
    def element_size(self) -> int:
        return torch.empty((), dtype=self.kv.dtype).element_size()


@dataclass(frozen=True)
class RequestPlan:
    """One request on a rank: ``RequestSpec``'s token range and chunking, the seed of its ground truth, and
    (from a ``TransferCase``) its decode page table."""

    num_tokens: int
    prefix_len: int
    chunk_pages: int
    seed: int
    page_table: Optional[tuple[int, ...]] = None

    @classmethod
    def of_spec(cls, spec: RequestSpec, seed: int) -> "RequestPlan":
        return cls(spec.num_tokens, spec.prefix_len, spec.chunk_pages, seed, tuple(spec.decode_page_table))


def rank_shapes(min_page_size: int = 1, layouts: st.SearchStrategy[PoolLayout] = st.just(CONTIGUOUS)
                ) -> st.SearchStrategy[RankShape]:
    """Small geometries: 1-4 writer slots splitting heads and/or layers, pages of 1-4 tokens, rings of 1-3 chunks;
    pools laid out as ``layouts`` draws (contiguous by default: the stress suites' budgets are tuned to find
    lifecycle bugs, and every single-request test draws layouts, ``strategies.pool_layout.pool_layouts()``)."""
    return st.builds(
        RankShape.of,
        page_size=st.sampled_from([p for p in (1, 2, 4) if p >= min_page_size]),
        tp_writers=st.integers(1, 2), pp_writers=st.integers(1, 2),
        heads_per_writer=st.integers(1, 2), layers_per_writer=st.integers(1, 2),
        head_dim=st.sampled_from((1, 2, 4)),
        dtype=st.sampled_from((torch.float32, torch.float16, torch.float8_e4m3fn)),
        max_chunk_pages=st.integers(1, 3), ring_chunks=st.integers(1, 3), layout=layouts,
    )


def plan_request(shape: RankShape, tokens: int, prefix_pages: int, chunk_pages: int, misaligned: bool, seed: int,
                 max_tokens: int = MAX_TOKENS) -> RequestPlan:
    """A request from loosely drawn numbers: the prefix leaves a suffix; ``misaligned`` adds one token to it."""
    tokens, page = max(1, min(tokens, max_tokens)), shape.page_size
    if misaligned and page > 1 and tokens >= 2:
        prefix = min(prefix_pages, (tokens - 2) // page) * page + 1
    else:
        prefix = min(prefix_pages, -(-tokens // page) - 1) * page
    return RequestPlan(tokens, prefix, max(1, min(chunk_pages, shape.max_chunk_pages)), seed)


def request_plans(shape: RankShape, misaligned: bool = False) -> st.SearchStrategy[RequestPlan]:
    """Requests of up to ``MAX_TOKENS`` tokens; ``misaligned`` ones (on pages of 2+ tokens) fail when staged."""
    return st.builds(plan_request, st.just(shape), st.integers(2 if misaligned else 1, MAX_TOKENS), st.integers(0, 3),
                     st.integers(1, 3), st.just(misaligned), st.integers(0, 2**16))
