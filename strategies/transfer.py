"""Whole transfer scenarios, sized so that an example runs quickly on CPU."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from strategies.cases import KvSpec, TpTopology, TransferCase
from strategies.kv import dtypes as _dtypes, head_dims, page_sizes as _page_sizes
from strategies.pool_layout import PoolLayout, pool_layouts as _pool_layouts
from strategies.request import request_specs
from strategies.topology import topologies as _topologies

#: Default cap on KV pool elements over all ranks of both sides.
DEFAULT_MAX_POOL_ELEMENTS = 1 << 17
#: Ranks per side (TP x PP, so TP sizes too) of the default topologies of transfer cases.  An example moves KV
#: through every (decode rank, writer) pair: drawn up to 64 ranks (``topologies()``'s default), three examples in
#: four had more than 16 ranks on a side and took 97 % of a round-trip test's time.  Every case class (TP ratio
#: 9+, writers 9+, each replication side, PP fan-in 4) is reached within 16; the head mapping itself is tested up
#: to TP 64 and ratio 64 by the mapping tests, which move no KV.
DEFAULT_MAX_RANKS = 16
#: Default cap on (ranks of the larger side) x (prefill pages of the request): about the number of per-chunk
#: calls a staged move makes (every decode rank gathers every writer and scatters, once per chunk).
DEFAULT_MAX_RANK_PAGES = 128


def rank_count(topology: TpTopology) -> int:
    """Ranks of the larger side (TP x PP): the harness moves KV through each."""
    return max(topology.prefill_tp * topology.prefill_pp, topology.decode_tp * topology.decode_pp)


def pool_elements(topology: TpTopology, num_layers: int, head_dim: int, prefill_pool_tokens: int,
                  decode_pool_tokens: int) -> int:
    """Elements in every rank's K and V pools, both sides: a side with TP ``T``
    stores ``max(H, T)`` head copies over its PP stages, ``num_layers`` in all."""
    h = topology.total_kv_heads
    per_dim_layer = prefill_pool_tokens * max(h, topology.prefill_tp) + decode_pool_tokens * max(h, topology.decode_tp)
    return 2 * num_layers * head_dim * per_dim_layer


def _fold(value: int, cap: int) -> int:
    """``value`` if it is at most ``cap``, else wrapped into ``[1, cap]``."""
    return value if value <= cap else 1 + (value - 1) % cap


@st.composite
def _transfer_cases(draw, topologies, aligned_prefix, max_tokens, dtypes, page_sizes, max_layers_per_stage,
                    max_chunk_pages, nan_payloads, max_pool_elements, layouts, max_rank_pages):
    """Draw topology, dtype, page sizes and request first, then layers and head
    dim bounded so the pools fit the element budget (soft: one layer per stage
    and head_dim 1 are kept even if they exceed it).  ``page_sizes`` draws
    ``(prefill, decode)`` pairs."""
    topology = draw(topologies)
    dtype = draw(dtypes)
    page_size, decode_page_size = draw(page_sizes)
    # Many ranks, or many pages: an example with both costs their product in calls and finds nothing the two
    # apart do not (the rank-count and chunk-count case classes are each reached).
    pages_cap = max(2, max_rank_pages // rank_count(topology))
    request = draw(request_specs(page_size, aligned_prefix, max_tokens=min(max_tokens, pages_cap * page_size),
                                 max_chunk_pages=max_chunk_pages, decode_page_size=decode_page_size))

    def elements(num_layers: int, head_dim: int) -> int:
        return pool_elements(topology, num_layers, head_dim, request.prefill_pool_pages * page_size,
                             request.decode_pool_pages * decode_page_size)

    # Caps fold oversized draws back into range instead of narrowing the
    # strategies: every draw keeps its shape, so the shrinker sees a fixed
    # number of choices and a tight budget is not mistaken for "simpler".
    per_stage_cap = max(1, max_pool_elements // elements(topology.prefill_pp, 1))
    per_stage = _fold(draw(st.integers(1, max_layers_per_stage)), per_stage_cap)
    num_layers = per_stage * topology.prefill_pp
    head_dim = _fold(draw(head_dims()), max(1, max_pool_elements // elements(num_layers, 1)))
    seed = draw(st.integers(0, 2**32 - 1))
    nan = draw(st.booleans()) if nan_payloads is None else nan_payloads
    layout = draw(layouts)
    return TransferCase(topology, KvSpec(num_layers, head_dim, dtype, page_size, decode_page_size), request, seed, nan,
                        layout)


def _page_size_pairs_for(aligned_prefix: bool | None, page_sizes: st.SearchStrategy[int] | None,
                         page_size_pairs: st.SearchStrategy[tuple[int, int]] | None
                         ) -> st.SearchStrategy[tuple[int, int]]:
    """``(prefill, decode)`` page sizes; a non-aligned prefix exists only with decode pages of 2+ tokens."""
    if page_sizes is not None and page_size_pairs is not None:
        raise ValueError("give page_sizes (one size for both sides) or page_size_pairs, not both")
    if page_size_pairs is not None:
        return page_size_pairs if aligned_prefix is not False else page_size_pairs.filter(lambda p: p[1] > 1)
    if aligned_prefix is not False:
        sizes = _page_sizes() if page_sizes is None else page_sizes
    else:
        sizes = _page_sizes(min_size=2) if page_sizes is None else page_sizes.filter(lambda p: p > 1)
    return sizes.map(lambda p: (p, p))


def transfer_cases(
    topologies: st.SearchStrategy[TpTopology] | None = None,
    aligned_prefix: bool | None = True,
    max_tokens: int = 64,
    *,
    dtypes: st.SearchStrategy[torch.dtype] | None = None,
    page_sizes: st.SearchStrategy[int] | None = None,
    page_size_pairs: st.SearchStrategy[tuple[int, int]] | None = None,
    max_layers_per_stage: int = 4,
    max_chunk_pages: int = 4,
    nan_payloads: bool | None = None,
    max_pool_elements: int = DEFAULT_MAX_POOL_ELEMENTS,
    layouts: st.SearchStrategy[PoolLayout] | None = None,
    max_rank_pages: int = DEFAULT_MAX_RANK_PAGES,
) -> st.SearchStrategy[TransferCase]:
    """Full ``TransferCase`` values.

    ``topologies`` defaults to ``topologies(max_tp=16, max_ranks=16)``
    (:data:`DEFAULT_MAX_RANKS`); ``aligned_prefix`` as in
    ``request_specs`` (with ``False`` page sizes are 2 or more);
    ``nan_payloads=None`` draws it.  Prefill and decode use one page size
    from ``page_sizes`` unless ``page_size_pairs`` (e.g. ``page_size_pairs()``)
    draws ``(prefill, decode)`` sizes: cases for ``end_to_end`` moves only,
    the primitives take one page size.  The head dim is capped so the KV pools of
    all ranks hold about ``max_pool_elements`` elements at most (default
    2**17, i.e. about 0.5 MB at float32), which keeps an example well under a
    tenth of a second on CPU; layers per stage are capped the same way (the
    budget counts logical elements: a padded layout adds its gaps).
    ``layouts`` defaults to ``pool_layouts()``: how every rank's pool layers
    sit in memory.  ``max_rank_pages`` caps the request's prefill pages times
    the larger side's rank count (TP x PP) -- but never below two pages --
    since a staged move makes about that many calls; up to 16 ranks a request
    still reaches 8 pages, one rank reaches ``max_tokens``.  Shrinks toward one head, TP 1, one layer, float32, page 1,
    one token, seed 0, no NaNs, contiguous layers.
    """
    if max_pool_elements < 1:
        raise ValueError(f"max_pool_elements must be >= 1, got {max_pool_elements}")
    if max_rank_pages < 1:
        raise ValueError(f"max_rank_pages must be >= 1, got {max_rank_pages}")
    if max_tokens < 2 and aligned_prefix is False:
        raise ValueError("a non-aligned prefix needs max_tokens >= 2")
    if max_tokens < 1 or max_layers_per_stage < 1 or max_chunk_pages < 1:
        raise ValueError("max_tokens, max_layers_per_stage and max_chunk_pages must be >= 1")
    return _transfer_cases(
        _topologies(max_tp=DEFAULT_MAX_RANKS, max_ranks=DEFAULT_MAX_RANKS) if topologies is None else topologies,
        aligned_prefix,
        max_tokens,
        _dtypes() if dtypes is None else dtypes,
        _page_size_pairs_for(aligned_prefix, page_sizes, page_size_pairs),
        max_layers_per_stage,
        max_chunk_pages,
        nan_payloads,
        max_pool_elements,
        _pool_layouts() if layouts is None else layouts,
        max_rank_pages,
    )
