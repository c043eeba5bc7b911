"""Operation sequences for the decode staging ring allocator.

A program is a list of plain tuples:

* ``("assign", nbytes)``: ask for ``nbytes`` (1..capacity, sometimes more,
  which must be refused as oversized);
* ``("free", k)``: free the allocation made by the ``k``-th ``assign`` of the
  program (0-based, counting every assign, refused ones too); ``k`` always
  names an earlier assign, in any order, possibly one already freed (double
  free) or one that was refused (nothing to free: skip or ignore it);
* ``("watermark",)``: read the watermark.
"""

from __future__ import annotations

from hypothesis import strategies as st

#: One allocator operation: ("assign", nbytes), ("free", k) or ("watermark",).
Op = tuple[str] | tuple[str, int]


def capacities(max_capacity: int = 4096) -> st.SearchStrategy[int]:
    """Ring capacities in bytes, ``[1, max_capacity]``; shrinks toward 1."""
    if max_capacity < 1:
        raise ValueError(f"max_capacity must be >= 1, got {max_capacity}")
    return st.integers(1, max_capacity)


def assign_sizes(capacity: int, oversized: bool = True) -> st.SearchStrategy[int]:
    """Request sizes: small ones (a quarter of the ring, so several are live at
    once), any size up to ``capacity``, the boundary (``capacity`` exactly and,
    with ``oversized``, one more), and with ``oversized`` sizes up to twice the
    capacity plus one; shrinks toward 1."""
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}")
    # The boundary pair is a two-element choice so that it costs the shrinker
    # as much as an integer draw and never looks "simpler" than 1.
    boundary = (capacity, capacity + 1) if oversized else (capacity, max(1, capacity - 1))
    sizes = [st.integers(1, max(1, capacity // 4)), st.integers(1, capacity), st.sampled_from(boundary)]
    if oversized:
        sizes.append(st.integers(capacity + 1, 2 * capacity + 1))
    return st.one_of(sizes)


@st.composite
def _allocator_programs(draw: st.DrawFn, capacity: int, max_ops: int, oversized: bool) -> list[Op]:
    """Draw raw ops as a list (deleting one keeps the rest meaningful), then
    resolve each free's index modulo the assigns made so far."""
    raw = st.one_of(
        st.tuples(st.just("assign"), assign_sizes(capacity, oversized)),
        st.tuples(st.just("free"), st.integers(0, max_ops)),
        st.just(("watermark",)),
    )
    program: list[Op] = []
    assigns = 0
    for op in draw(st.lists(raw, max_size=max_ops)):
        if op[0] == "free" and len(op) == 2:  # always two long; len() lets the type checker see op[1]
            if not assigns:
                continue  # nothing to free yet: the op is dropped
            op = ("free", op[1] % assigns)
        assigns += op[0] == "assign"
        program.append(op)
    return program


def allocator_programs(capacity: int, max_ops: int = 40, oversized: bool = True
                       ) -> st.SearchStrategy[list[Op]]:
    """Programs of at most ``max_ops`` allocator operations on a ring of
    ``capacity`` bytes (format in the module docstring).  Frees come in any
    order, including out of order and twice.  Shrinks toward short programs
    of small assigns, ``[]`` first."""
    if max_ops < 0:
        raise ValueError(f"max_ops must be >= 0, got {max_ops}")
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}")
    return _allocator_programs(capacity, max_ops, oversized)
