"""KV cache shapes: element types, page sizes, head dims, layer counts."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from strategies.cases import KvSpec, TpTopology

#: Shrink order: float32 first (counterexamples print plainly), then the
#: 2-byte and 1-byte types whose bit patterns float arithmetic would mangle.
_DTYPE_NAMES = ("float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2")
#: Powers of two first, then odd sizes: any page size must work.
_PAGE_SIZES = (1, 2, 4, 8, 16, 32, 64, 3, 5, 7, 12)
#: Head dims of real models and the powers of two around them with their neighbours (where a kernel's
#: rounded-up row stops being exact), drawn one draw in eight on top of the small ones.
LARGE_HEAD_DIMS = (31, 32, 33, 63, 64, 65, 96, 127, 128, 129, 256)


def dtypes(fp8: bool = True, float64: bool = False) -> st.SearchStrategy[torch.dtype]:
    """KV element types: float32, float16, bfloat16, and (``fp8``) float8_e4m3fn,
    float8_e5m2, plus (``float64``) float64.  Shrinks toward float32."""
    names = [n for n in _DTYPE_NAMES if fp8 or not n.startswith("float8")]
    if float64:
        names.append("float64")
    return st.sampled_from(tuple(getattr(torch, n) for n in names if hasattr(torch, n)))


def page_sizes(min_size: int = 1, max_size: int = 64) -> st.SearchStrategy[int]:
    """Tokens per page: powers of two up to 64 and some odd sizes (3, 5, 7, 12),
    within ``[min_size, max_size]``; shrinks toward the smallest."""
    sizes = tuple(sorted(p for p in _PAGE_SIZES if min_size <= p <= max_size))
    if not sizes:
        raise ValueError(f"no page size in [{min_size}, {max_size}]; widen the range")
    return st.sampled_from(sizes)


def head_dims(max_dim: int = 16, large: tuple[int, ...] = LARGE_HEAD_DIMS) -> st.SearchStrategy[int]:
    """Head dims 1..``max_dim`` (1, powers of two and their neighbours included), plus, one draw in eight,
    the ``large`` ones (real models' 64, 96, 128, 256 and the neighbours of 32, 64, 128): large pools are
    the cost of an example on CPU, and transfer cases fold a head dim that overflows their element budget
    back into range.  Shrinks toward 1."""
    if max_dim < 1:
        raise ValueError(f"max_dim must be >= 1, got {max_dim}")
    small = st.sampled_from(tuple(range(1, max_dim + 1)))
    big = tuple(d for d in large if d > max_dim)
    if not big:
        return small
    return st.integers(0, 7).flatmap(lambda pick: st.sampled_from(big) if pick == 7 else small)


def layer_counts(topology: TpTopology, max_layers_per_stage: int = 4) -> st.SearchStrategy[int]:
    """Layer counts ``k * prefill_pp``, k in 1..``max_layers_per_stage``, hence
    divisible by both PP sizes (decode PP divides prefill PP)."""
    if max_layers_per_stage < 1:
        raise ValueError(f"max_layers_per_stage must be >= 1, got {max_layers_per_stage}")
    if topology.prefill_pp < 1 or topology.decode_pp < 1 or topology.prefill_pp % topology.decode_pp:
        raise ValueError(f"layer_counts needs a valid topology (decode_pp divides prefill_pp), got {topology}")
    return st.integers(1, max_layers_per_stage).map(lambda k: k * topology.prefill_pp)


def kv_specs(
    topology: TpTopology,
    *,
    dtype: st.SearchStrategy[torch.dtype] | None = None,
    page_size: st.SearchStrategy[int] | None = None,
    head_dim: st.SearchStrategy[int] | None = None,
    max_layers_per_stage: int = 4,
) -> st.SearchStrategy[KvSpec]:
    """``KvSpec`` consistent with ``topology``'s PP sizes; each component can be
    replaced by a strategy.  Shrinks toward ``KvSpec(prefill_pp, 1, float32, 1)``."""
    return st.builds(
        KvSpec,
        num_layers=layer_counts(topology, max_layers_per_stage),
        head_dim=head_dims() if head_dim is None else head_dim,
        dtype=dtypes() if dtype is None else dtype,
        page_size=page_sizes() if page_size is None else page_size,
    )


#: Ratios between the larger and the smaller page size of a pair (1: equal sizes).
PAGE_SIZE_RATIOS = (1, 2, 4, 3)


def page_size_pairs(max_size: int = 64, ratios: tuple[int, ...] = PAGE_SIZE_RATIOS
                    ) -> st.SearchStrategy[tuple[int, int]]:
    """``(prefill page size, decode page size)`` where one is a whole multiple of the other, in both
    directions (vLLM's decode block ``r`` x the prefill block in pull mode, and the reverse in push
    mode), the larger at most ``max_size``.  Shrinks toward equal sizes, then a larger decode page,
    then the smallest sizes."""
    if not ratios or min(ratios) < 1:
        raise ValueError(f"ratios must be a non-empty tuple of integers >= 1, got {ratios!r}")

    def pair(ratio: int) -> st.SearchStrategy[tuple[int, int]]:
        smaller = page_sizes(max_size=max(1, max_size // ratio))
        return st.tuples(smaller, st.booleans()).map(
            lambda drawn: (drawn[0] * ratio, drawn[0]) if drawn[1] else (drawn[0], drawn[0] * ratio))

    return st.sampled_from(tuple(r for r in ratios if r <= max_size)).flatmap(pair)
