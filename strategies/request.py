"""One request: token counts, cached prefixes, chunk grids and page tables.

Boundaries reached (tests/test_strategies.py): token counts 1, the maximum,
powers of two and their neighbours, and in a request a whole number of pages,
one token short of it and one over (the partial tail); the longest aligned
prefix (a suffix of at most one page) besides 0; chunks of one page and of
``max_chunk_pages``; page tables whose last page is the pool's last page.
"""

from __future__ import annotations

from hypothesis import strategies as st

from strategies.cases import RequestSpec
from strategies.sizes import sizes, steer


def _pages_for(num_tokens: int, page_size: int) -> int:
    return -(-num_tokens // page_size)


def page_tables(num_pages: int, pool_pages: int) -> st.SearchStrategy[tuple[int, ...]]:
    """``num_pages`` distinct page ids in ``[0, pool_pages)``, in any order
    (fragmented, out of order); shrinks toward ``(0, 1, ..., num_pages - 1)``."""
    if num_pages < 0 or pool_pages < num_pages:
        raise ValueError(f"need 0 <= num_pages <= pool_pages, got num_pages={num_pages}, pool_pages={pool_pages}")
    if pool_pages == 0:
        return st.just(())
    ids = st.integers(0, pool_pages - 1)
    return st.lists(ids, min_size=num_pages, max_size=num_pages, unique=True).map(tuple)


def token_counts(max_tokens: int = 64, min_tokens: int = 1, page_size: int = 1) -> st.SearchStrategy[int]:
    """Request lengths in ``[min_tokens, max_tokens]``: uniform, or a boundary (the bounds, powers of two
    and neighbours, multiples of ``page_size`` and their neighbours); shrinks toward ``min_tokens``."""
    if not 1 <= min_tokens <= max_tokens:
        raise ValueError(f"need 1 <= min_tokens <= max_tokens, got {min_tokens}, {max_tokens}")
    if page_size < 1:
        raise ValueError(f"page_size must be >= 1, got {page_size}")
    return sizes(min_tokens, max_tokens, edges=tuple(range(page_size, max_tokens + 2, page_size)))


def _check_alignment(page_size: int, aligned: bool | None) -> None:
    if page_size < 1:
        raise ValueError(f"page_size must be >= 1, got {page_size}")
    if aligned is False and page_size == 1:
        raise ValueError("a non-aligned prefix needs page_size > 1 (every prefix is aligned to 1-token pages)")


def prefix_lengths(num_tokens: int, page_size: int, aligned: bool | None = True) -> st.SearchStrategy[int]:
    """Decode-side cached prefix lengths in ``[0, num_tokens)``: multiples of
    ``page_size`` (``aligned=True``), not multiples (``False``; needs
    ``page_size > 1`` and ``num_tokens >= 2``), or either (``None``).
    Shrinks toward 0 (aligned) or 1 (non-aligned)."""
    _check_alignment(page_size, aligned)
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
    aligned_prefixes = sizes(0, (num_tokens - 1) // page_size).map(lambda pages: pages * page_size)
    can_misalign = page_size > 1 and num_tokens >= 2
    if aligned is False and not can_misalign:
        raise ValueError(f"no non-aligned prefix below num_tokens={num_tokens}; use num_tokens >= 2")
    if aligned is True or not can_misalign:
        return aligned_prefixes
    # Remainder first, then whole pages that still leave one suffix token.
    misaligned = st.integers(1, min(page_size, num_tokens) - 1).flatmap(
        lambda rem: st.integers(0, (num_tokens - 1 - rem) // page_size).map(lambda pages: pages * page_size + rem)
    )
    return misaligned if aligned is False else aligned_prefixes | misaligned


@st.composite
def _request_specs(draw, page_size, decode_page_size, aligned, max_tokens, max_chunk_pages, max_extra_pool_pages):
    num_tokens = draw(token_counts(max_tokens, min_tokens=2 if aligned is False else 1, page_size=page_size))
    # The cached prefix is the decode side's: whole decode pages when aligned.
    prefix_len = draw(prefix_lengths(num_tokens, decode_page_size, aligned))
    chunk_pages = draw(sizes(1, max_chunk_pages))
    tables = []
    for side_page_size in (page_size, decode_page_size):
        num_pages = _pages_for(num_tokens, side_page_size)
        pool_pages = num_pages + draw(st.integers(1, max_extra_pool_pages))
        tables += [draw(page_tables(num_pages, pool_pages)), pool_pages]
    # More chunks: more arrivals to interleave, more regions alive in the ring at once.
    steer(-(-_pages_for(num_tokens - prefix_len, page_size) // chunk_pages), "request: chunks")
    return RequestSpec(num_tokens, prefix_len, chunk_pages, *tables)


def request_specs(
    page_size: int,
    aligned_prefix: bool | None = True,
    *,
    max_tokens: int = 64,
    max_chunk_pages: int = 4,
    max_extra_pool_pages: int = 4,
    decode_page_size: int | None = None,
) -> st.SearchStrategy[RequestSpec]:
    """``RequestSpec`` for ``page_size``: 1..``max_tokens`` tokens, a prefix as
    in ``prefix_lengths(aligned=aligned_prefix)``, 1..``max_chunk_pages`` pages
    per chunk, and on each side a fragmented page table in a pool 1..
    ``max_extra_pool_pages`` pages larger than the table (canary pages).

    ``decode_page_size`` (default: ``page_size``) is the decode side's page
    size: its table, pool and the prefix alignment count decode pages.
    Shrinks toward one token, no prefix, one-page chunks, tables ``(0, ...)``
    and one spare page.  ``aligned_prefix=False`` needs a decode page size > 1.
    """
    decode_page_size = page_size if decode_page_size is None else decode_page_size
    _check_alignment(decode_page_size, aligned_prefix)
    _check_alignment(page_size, None)
    if max_tokens < (2 if aligned_prefix is False else 1):
        raise ValueError(f"max_tokens too small for aligned_prefix={aligned_prefix}: {max_tokens}")
    if max_chunk_pages < 1 or max_extra_pool_pages < 1:
        raise ValueError("max_chunk_pages and max_extra_pool_pages must be >= 1 (pools need canary pages)")
    return _request_specs(page_size, decode_page_size, aligned_prefix, max_tokens, max_chunk_pages, max_extra_pool_pages)
