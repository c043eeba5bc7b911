"""Staging layout: writer parts are disjoint, ordered, sized from the KV geometry, and sum to the total."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from harness import oracles
from harness.oracles import InvariantViolation

_geometry = st.tuples(
    st.integers(1, 64),        # writers
    st.integers(0, 8192),      # tokens
    st.integers(1, 128),       # heads per writer
    st.integers(1, 128),       # layers per writer
    st.sampled_from((1, 2, 3, 64, 96, 128, 256)),  # head_dim
    st.sampled_from((1, 2, 4, 8)),                 # element size
)


def check_layout(impl, geometry) -> None:
    got = [tuple(span) for span in impl.staging_layout(*geometry)]
    want = oracles.expected_spans(*geometry)
    if got != want:
        writers, tokens, heads, layers, dim, esize = geometry
        raise InvariantViolation(
            f"{writers} writers x {tokens} tokens x {heads} heads x {layers} layers x dim {dim} x {esize} B: "
            f"spans {got[:4]}{'...' if len(got) > 4 else ''}, expected {want[:4]}{'...' if len(want) > 4 else ''} "
            f"(each writer 2*layers*tokens*heads*dim*esize bytes, back to back in slot order)")


@pytest.mark.invariant("layout", requires=("layout",), since="1.0")
@given(geometry=_geometry)
def test_layout_spans(impl, geometry):
    check_layout(impl, geometry)
