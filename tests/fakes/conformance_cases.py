"""A miniature conformance module, copied into pytester directories as ``test_fake_conformance.py``.

Run against ``tests/fakes/fake_impl.py`` it yields: layout -> fail (Hypothesis
finds the planted bug), head_coverage -> pass, round_trip -> not-implemented
(needs kv_copy), isolation -> fail, or xfail when listed, bad_topology -> pass
(a plain test), receivers -> pass or skipped by --device.
"""

import pytest
from hypothesis import given, strategies as st


@pytest.mark.invariant("layout", requires=("layout",))
@given(writers=st.integers(1, 6), tokens=st.integers(0, 64))
def test_layout_offsets(impl, writers, tokens):
    size = 2 * tokens * 2 * 1 * 4 * 2
    spans = [tuple(s) for s in impl.staging_layout(writers, tokens, 2, 1, 4, 2)]
    assert spans == [(w * size, size) for w in range(writers)]


@pytest.mark.invariant("head_coverage", requires=("head_mapping",))
@given(tp=st.sampled_from([1, 2, 4, 8]))
def test_heads_partition(impl, tp):
    heads = [h for rank in range(tp) for h in impl.heads_of_rank(8, tp, rank)]
    assert heads == list(range(8))


@pytest.mark.invariant("round_trip", requires=("kv_copy",))
def test_round_trip_needs_kv_copy(impl):
    raise AssertionError("must not run: the fake lacks kv_copy")


@pytest.mark.invariant("isolation", requires=("head_mapping",))
def test_replicated_heads(impl):
    assert list(impl.heads_of_rank(2, 4, 1)) == [0]


@pytest.mark.invariant("bad_topology")
def test_plain(impl):
    assert impl.name == "fake"


@pytest.mark.invariant("receivers")
def test_devices(devices):
    assert "cpu" in devices or "cuda" in devices
