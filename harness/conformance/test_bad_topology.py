"""Bad topology: invalid configurations raise a clear ValueError before any byte moves."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given

import strategies as kst
from harness.guard import guard
from harness.oracles import InvariantViolation

_MAPPING_REASONS = ("heads_not_positive", "tp_not_positive", "heads_tp_not_divisible", kst.TP_NOT_NESTED)
_ALL_REASONS = kst.INVALID_TOPOLOGY_REASONS + (kst.TP_NOT_NESTED,)


def _expect_refusal(call, bad, what: str) -> None:
    try:
        call()
    except ValueError as exc:
        if bad.keyword not in str(exc).lower():
            raise InvariantViolation(f"{what} for {bad.topology} ({bad.reason}) raised {exc!r}, "
                                     f"which does not mention {bad.keyword!r}: say what to fix") from exc
        return
    except Exception as exc:
        raise InvariantViolation(f"{what} for {bad.topology} ({bad.reason}) raised "
                                 f"{type(exc).__name__}: {exc}; expected ValueError") from exc
    raise InvariantViolation(f"{what} accepted {bad.topology}, which is invalid ({bad.reason})")


@pytest.mark.invariant("bad_topology", requires=("head_mapping",), since="1.0")
@given(bad=kst.invalid_topologies(reasons=_MAPPING_REASONS))
def test_bad_topology_head_mapping(impl, bad):
    impl = guard(impl, convert_errors=False)  # the ValueError is the expected answer, not a fault
    t = bad.topology
    side_tp = t.decode_tp if bad.field == "decode_tp" else t.prefill_tp
    if bad.reason != kst.TP_NOT_NESTED:  # each side alone is valid when only the nesting is wrong
        _expect_refusal(lambda: list(impl.heads_of_rank(t.total_kv_heads, side_tp, 0)), bad, "heads_of_rank")
    _expect_refusal(lambda: list(impl.writers_of_decode_rank(t.total_kv_heads, t.prefill_tp, t.decode_tp, 0)), bad,
                    "writers_of_decode_rank")
    _expect_refusal(lambda: impl.head_slice(t.total_kv_heads, t.prefill_tp, t.decode_tp, 0, 0), bad, "head_slice")


@pytest.mark.invariant("bad_topology", requires=("end_to_end",), since="1.0")
@given(bad=kst.invalid_topologies(reasons=_ALL_REASONS))
def test_bad_topology_end_to_end(impl, bad):
    impl = guard(impl, convert_errors=False)  # the ValueError is the expected answer, not a fault
    t = bad.topology
    k = [torch.zeros(4, 1, 1)]
    pools = [(k, k)] * max(1, t.prefill_tp * t.prefill_pp)
    before = k[0].clone()
    _expect_refusal(lambda: impl.move_request(
        total_kv_heads=t.total_kv_heads, prefill_tp=t.prefill_tp, decode_tp=t.decode_tp, prefill_pp=t.prefill_pp,
        decode_pp=t.decode_pp, prefill_page_size=1, decode_page_size=1, prefill_pools=pools, prefill_page_tables=[torch.arange(4)] * len(pools),
        decode_pools=pools, decode_page_tables=[torch.arange(4)] * len(pools), prefix_len=0, num_tokens=4,
        chunk_pages=1, staged=True), bad, "move_request")
    if not torch.equal(k[0], before):
        raise InvariantViolation(f"move_request wrote bytes before refusing {t}")
