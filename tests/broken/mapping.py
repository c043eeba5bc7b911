"""Head-mapping and layout bugs."""

from __future__ import annotations

from harness.interface import documented_arguments
from reference.plugin import ReferenceImplementation


class ModuloReplication(ReferenceImplementation):
    """Replicated heads mapped by ``rank % H`` instead of ``rank // (T/H)`` (a historical bug)."""

    def heads_of_rank(self, total_kv_heads, tp_size, rank):
        if tp_size > total_kv_heads:
            return [rank % total_kv_heads]
        return super().heads_of_rank(total_kv_heads, tp_size, rank)

    def head_slice(self, total_kv_heads, prefill_tp, decode_tp, prefill_rank, decode_rank):
        src, count, dst = super().head_slice(total_kv_heads, prefill_tp, decode_tp, prefill_rank, decode_rank)
        if decode_tp > total_kv_heads and decode_tp >= prefill_tp:
            heads_per_src = max(1, total_kv_heads // prefill_tp)
            src = (decode_rank % total_kv_heads) % heads_per_src
        return src, count, dst


class SwappedWriterSlots(ReferenceImplementation):
    """Writer parts laid out in reverse slot order."""

    def staging_layout(self, *args):
        spans = list(super().staging_layout(*args))
        return [(offset, n) for (offset, _), (_, n) in zip(reversed(spans), spans)]


class LayoutIgnoresElementSize(ReferenceImplementation):
    """Sizes writer parts as if every dtype were one byte."""

    def staging_layout(self, *args):
        call = documented_arguments("staging_layout", args)
        call.arguments["element_size"] = 1
        return super().staging_layout(*call.args)


class AcceptsAnyTopology(ReferenceImplementation):
    """No validation: slices heads with floor division whatever the sizes (moves garbage instead of refusing)."""

    def heads_of_rank(self, total_kv_heads, tp_size, rank):
        per = max(1, total_kv_heads // max(tp_size, 1))
        return list(range(rank * per, rank * per + per))

    def writers_of_decode_rank(self, total_kv_heads, prefill_tp, decode_tp, decode_rank):
        return [decode_rank]

    def head_slice(self, total_kv_heads, prefill_tp, decode_tp, prefill_rank, decode_rank):
        return 0, max(1, total_kv_heads // max(decode_tp, 1)), 0

    def move_request(self, **kwargs):
        pass
