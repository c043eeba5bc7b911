"""Operation sequences for the decode staging ring allocator.

A program is a list of plain tuples:

* ``("assign", nbytes)``: ask for ``nbytes`` (1..capacity, sometimes more,
  which must be refused as oversized);
* ``("free", k)``: free the allocation made by the ``k``-th ``assign`` of the
  program (0-based, counting every assign, refused ones too); ``k`` always
  names an earlier assign, in any order, possibly one already freed (double
  free) or one that was refused (nothing to free: skip or ignore it);
* ``("watermark",)``: read the watermark.

Boundaries reached (tests/test_strategies.py shows each): capacities 1, the
maximum, powers of two and their neighbours (:func:`strategies.sizes.sizes`);
assign sizes 1, ``capacity - 1``, ``capacity`` (exactly full) and
``capacity + 1`` (oversized); sizes aimed at the ring's head -- exactly the
bytes left before the end, one byte short of that, one byte more (so the
assign wraps to offset 0 of the next round) -- and bursts of equal small
assigns that keep many allocations alive at once.  The ring's head is
followed by a small model of "where the next assign lands" (no oracle: it
only aims sizes, and is right for any allocator that places assigns one
after another and restarts an emptied ring at 0).
"""

from __future__ import annotations

from hypothesis import strategies as st

from strategies.sizes import sizes, steer

#: One allocator operation: ("assign", nbytes), ("free", k) or ("watermark",).
Op = tuple[str] | tuple[str, int]


def capacities(max_capacity: int = 4096) -> st.SearchStrategy[int]:
    """Ring capacities in bytes, ``[1, max_capacity]``: uniform, or 1, the maximum, a power of two or
    its neighbour; shrinks toward 1."""
    if max_capacity < 1:
        raise ValueError(f"max_capacity must be >= 1, got {max_capacity}")
    return sizes(1, max_capacity)


def assign_sizes(capacity: int, oversized: bool = True) -> st.SearchStrategy[int]:
    """Request sizes: small ones (a quarter of the ring, so several are live at
    once), any size up to ``capacity`` with its boundaries (1, powers of two and
    neighbours, ``capacity - 1``), the ring's own boundary (``capacity`` exactly
    and, with ``oversized``, one more), and with ``oversized`` sizes up to
    twice the capacity plus one; shrinks toward 1."""
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}")
    # The boundary pair is a two-element choice so that it costs the shrinker
    # as much as an integer draw and never looks "simpler" than 1.
    boundary = (capacity, capacity + 1) if oversized else (capacity, max(1, capacity - 1))
    sizes_ = [st.integers(1, max(1, capacity // 4)), sizes(1, capacity), st.sampled_from(boundary)]
    if oversized:
        sizes_.append(st.integers(capacity + 1, 2 * capacity + 1))
    return st.one_of(sizes_)


class _RingModel:
    """Where the next assign lands: the head moves forward, wraps to 0 when the
    assign does not fit before the end, and restarts at 0 once nothing is live."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.head = 0
        self.live: set[int] = set()
        self.most_live = 0
        self.wraps = 0

    def assign(self, index: int, nbytes: int) -> None:
        if nbytes > self.capacity:
            return
        if self.head + nbytes > self.capacity:
            self.head, self.wraps = 0, self.wraps + 1
        self.head += nbytes
        self.live.add(index)
        self.most_live = max(self.most_live, len(self.live))

    def free(self, index: int) -> None:
        if index in self.live:
            self.live.discard(index)
            if not self.live:
                self.head = 0

    def to_end(self, delta: int) -> int:
        """Bytes left before the end of the ring, plus ``delta`` (at least 1)."""
        return max(1, self.capacity - self.head + delta)


@st.composite
def _allocator_programs(draw: st.DrawFn, capacity: int, max_ops: int, oversized: bool) -> list[Op]:
    """Draw raw ops as a list (deleting one keeps the rest meaningful), then
    resolve each free's index modulo the assigns made so far, each ring-aimed
    assign against the model's head and each burst into equal assigns."""
    aimed = (-1, 0, 1) if oversized else (-1, 0)
    raw = st.one_of(
        st.tuples(st.just("assign"), assign_sizes(capacity, oversized)),
        st.tuples(st.just("free"), st.integers(0, max_ops)),
        st.just(("watermark",)),
        st.tuples(st.just("to_end"), st.sampled_from(aimed)),  # exactly to the end, one short, one past (wrap)
        st.tuples(st.just("burst"), st.integers(2, 16), sizes(1, max(1, capacity // 16))),
    )
    program: list[Op] = []
    model = _RingModel(capacity)
    assigns = 0
    for op in draw(st.lists(raw, max_size=max_ops)):
        if op[0] == "free" and len(op) == 2:  # always two long; len() lets the type checker see op[1]
            if not assigns:
                continue  # nothing to free yet: the op is dropped
            model.free(op[1] % assigns)
            program.append(("free", op[1] % assigns))
            continue
        if op[0] == "watermark":
            program.append(("watermark",))
            continue
        if op[0] == "burst" and len(op) == 3:
            nbytes = [op[2]] * min(op[1], max_ops - len(program))
        elif op[0] == "to_end" and len(op) == 2:
            nbytes = [model.to_end(op[1])]
        else:
            nbytes = [op[1]] if len(op) == 2 else []
        for n in nbytes:
            model.assign(assigns, n)
            program.append(("assign", n))
            assigns += 1
    steer(model.most_live, "allocator: live allocations at once")
    steer(model.wraps, "allocator: wraps to offset 0")
    return program[:max_ops]


def allocator_programs(capacity: int, max_ops: int = 40, oversized: bool = True
                       ) -> st.SearchStrategy[list[Op]]:
    """Programs of at most ``max_ops`` allocator operations on a ring of
    ``capacity`` bytes (format and boundaries in the module docstring).  Frees
    come in any order, including out of order and twice.  Shrinks toward short
    programs of small assigns, ``[]`` first."""
    if max_ops < 0:
        raise ValueError(f"max_ops must be >= 0, got {max_ops}")
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}")
    return _allocator_programs(capacity, max_ops, oversized)
