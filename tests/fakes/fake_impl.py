"""A fake implementation claiming ``head_mapping`` and ``layout``, with two planted bugs.

* ``staging_layout`` shifts every writer from slot 2 on by one byte.
* ``heads_of_rank`` maps replicated heads by ``rank % H`` (a known historical bug).
Imports nothing but the standard library, so runs using it stay fast.
"""

from __future__ import annotations


class FakeImplementation:
    name = "fake"
    capabilities = frozenset({"head_mapping", "layout"})

    def heads_of_rank(self, total_kv_heads, tp_size, rank):
        if tp_size > total_kv_heads:
            return [rank % total_kv_heads]  # planted bug: should be rank // (tp_size // total_kv_heads)
        per_rank = total_kv_heads // tp_size
        return list(range(rank * per_rank, (rank + 1) * per_rank))

    def writers_of_decode_rank(self, total_kv_heads, prefill_tp, decode_tp, decode_rank):
        return [decode_rank * prefill_tp // decode_tp] if prefill_tp <= decode_tp else list(range(prefill_tp // decode_tp))

    def head_slice(self, total_kv_heads, prefill_tp, decode_tp, prefill_rank, decode_rank):
        return 0, max(1, total_kv_heads // max(prefill_tp, decode_tp)), 0

    def staging_layout(self, num_writers, num_tokens, heads_per_writer, layers_per_writer, head_dim, element_size):
        size = 2 * layers_per_writer * num_tokens * heads_per_writer * head_dim * element_size
        return [(w * size + (1 if w >= 2 else 0), size) for w in range(num_writers)]  # planted bug from slot 2


def make_implementation() -> FakeImplementation:
    return FakeImplementation()
