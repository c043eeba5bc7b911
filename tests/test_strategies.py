"""The public strategies produce what their docstrings promise.

Validity is recomputed here from docs/domain.md#valid-topologies, independently of the
strategies' own code; distribution claims ("every regime is common") are
checked with a deterministic census of generated examples.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from hypothesis import Phase, find, given, settings, strategies as st

import strategies as S
from strategies import TpTopology

# Explicit budgets, derandomized: settings made at import otherwise inherit the session's profile (random, its
# budget), and a ``find`` for a rare regime then flaked with NoSuchExample in some runs.
FAST = settings(max_examples=60, deadline=None, database=None, derandomize=True)
NO_DB = settings(database=None, deadline=None, derandomize=True, max_examples=500)


def simplest(strategy: st.SearchStrategy):
    """What ``strategy`` shrinks to when anything goes."""
    return find(strategy, lambda _: True, settings=settings(NO_DB, max_examples=10))


def census(strategy: st.SearchStrategy, n: int) -> list:
    """``n`` generated examples (fewer if the space is exhausted), deterministic."""
    drawn: list = []

    @settings(max_examples=n, database=None, derandomize=True, phases=[Phase.generate], deadline=None)
    @given(strategy)
    def collect(value):
        drawn.append(value)

    collect()
    return drawn


# --- independent oracles (docs/domain.md) ----------------------------------------------------


def broken_rules(t: TpTopology) -> set[str]:
    """Every rule ``t`` breaks, named like ``INVALID_TOPOLOGY_REASONS``."""
    broken = set()
    h, p, d = t.total_kv_heads, t.prefill_tp, t.decode_tp
    if h < 1:
        broken.add("heads_not_positive")
    if p < 1 or d < 1:
        broken.add("tp_not_positive")
    if t.prefill_pp < 1 or t.decode_pp < 1:
        broken.add("pp_not_positive")
    if h >= 1 and any(tp >= 1 and h % tp and tp % h for tp in (p, d)):
        broken.add("heads_tp_not_divisible")
    if t.prefill_pp >= 1 and t.decode_pp >= 1 and t.prefill_pp % t.decode_pp:
        broken.add("pp_not_divisible")
    if not broken and max(p, d) % min(p, d):
        broken.add(S.TP_NOT_NESTED)
    return broken


def regime(t: TpTopology) -> str:
    prefill, decode = t.prefill_tp > t.total_kv_heads, t.decode_tp > t.total_kv_heads
    return {(False, False): "none", (True, False): "prefill", (False, True): "decode", (True, True): "both"}[
        (prefill, decode)
    ]


def signed_ratio(t: TpTopology) -> int:
    """P/D when P >= D, else -(D/P)."""
    p, d = t.prefill_tp, t.decode_tp
    return p // d if p >= d else -(d // p)


# --- topologies -------------------------------------------------------------------------------


@FAST
@given(S.topologies())
def test_topologies_are_valid_and_within_default_bounds(t):
    assert broken_rules(t) == set()
    assert max(t.prefill_tp, t.decode_tp) // min(t.prefill_tp, t.decode_tp) <= 64
    assert t.prefill_tp <= 64 and t.decode_tp <= 64
    assert t.prefill_tp * t.prefill_pp <= 64 and t.decode_tp * t.decode_pp <= 64
    assert t.prefill_pp in (1, 2, 4)
    assert t.num_query_heads is not None and t.num_query_heads % t.total_kv_heads == 0


@FAST
@given(st.data(), st.integers(1, 8), st.integers(1, 16), st.booleans(), st.integers(1, 32))
def test_topologies_respect_their_arguments(data, max_ratio, max_tp, pipeline, max_ranks):
    t = data.draw(S.topologies(max_ratio=max_ratio, max_tp=max_tp, pipeline=pipeline, max_ranks=max_ranks))
    assert broken_rules(t) == set()
    assert abs(signed_ratio(t)) <= max_ratio
    assert max(t.prefill_tp, t.decode_tp) <= max_tp
    assert t.prefill_tp * t.prefill_pp <= max_ranks and t.decode_tp * t.decode_pp <= max_ranks
    if not pipeline:
        assert (t.prefill_pp, t.decode_pp) == (1, 1)


@FAST
@given(st.data(), st.sampled_from(S.REPLICATION_REGIMES))
def test_topologies_fixed_heads_and_single_regime(data, wanted):
    t = data.draw(S.topologies(heads=4, regimes=(wanted,)))
    assert t.total_kv_heads == 4 and regime(t) == wanted and broken_rules(t) == set()
    t = data.draw(S.topologies(heads=st.sampled_from((2, 6)), regimes=("none",)))
    assert t.total_kv_heads in (2, 6) and regime(t) == "none"
    t = data.draw(S.topologies(heads=128))  # too many heads to replicate within max_tp=64
    assert t.total_kv_heads == 128 and regime(t) == "none" and broken_rules(t) == set()


def test_topologies_with_caller_heads_still_cover_every_regime():
    drawn = census(S.topologies(heads=st.sampled_from((1, 8, 128))), 200)
    assert {regime(t) for t in drawn} == set(S.REPLICATION_REGIMES)
    assert {t.total_kv_heads for t in drawn} == {1, 8, 128}


def test_topology_census_covers_regimes_directions_ratios_and_pipelines():
    drawn = census(S.topologies(), 600)
    regimes = Counter(map(regime, drawn))
    assert all(regimes[r] >= len(drawn) // 10 for r in S.REPLICATION_REGIMES), regimes
    ratios = Counter(map(signed_ratio, drawn))
    assert ratios[1] and ratios[64] and ratios[-64], ratios
    assert sum(n for r, n in ratios.items() if r > 1) >= len(drawn) // 5
    assert sum(n for r, n in ratios.items() if r < -1) >= len(drawn) // 5
    pipelines = {(t.prefill_pp, t.decode_pp) for t in drawn}
    assert pipelines == {(1, 1), (2, 1), (2, 2), (4, 1), (4, 2), (4, 4)}
    assert any(t.total_kv_heads not in (1, 2, 4, 8, 16, 32, 64, 128) for t in drawn)  # not only powers of two


def test_topologies_shrink_to_the_smallest_topology_of_each_regime():
    assert simplest(S.topologies()) == TpTopology(1, 1, 1, 1, 1, num_query_heads=1)
    smallest = {"prefill": (2, 1), "decode": (1, 2), "both": (2, 2)}
    for wanted, (p, d) in smallest.items():
        t = find(S.topologies(), lambda t: regime(t) == wanted, settings=NO_DB)
        assert t == TpTopology(1, p, d, 1, 1, num_query_heads=1)


@pytest.mark.parametrize(
    "kwargs",
    [{"max_ratio": 0}, {"max_tp": 0}, {"max_ranks": 0}, {"regimes": ()}, {"regimes": ("sideways",)},
     {"heads": 0}, {"heads": "8"}, {"max_tp": 1, "regimes": ("prefill",)}],
)
def test_topologies_refuse_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        S.topologies(**kwargs)


@FAST
@given(S.kv_head_counts(), S.tp_sizes(), S.gqa_configs(), S.pipeline_sizes())
def test_small_topology_pieces(heads, tp, gqa, pp):
    assert 1 <= heads <= 128 and 1 <= tp <= 64
    q, kv = gqa
    assert kv >= 1 and q % kv == 0
    assert pp[0] in (1, 2, 4) and pp[0] % pp[1] == 0


def test_gqa_census_has_mha_gqa_and_mqa():
    pairs = census(S.gqa_configs(), 200)
    assert any(q == kv for q, kv in pairs)  # MHA
    assert any(kv == 1 and q > 1 for q, kv in pairs)  # MQA
    assert any(q > kv > 1 for q, kv in pairs)  # GQA
    assert simplest(S.gqa_configs()) == (1, 1)
    assert simplest(S.kv_head_counts()) == 1


# --- invalid topologies ---------------------------------------------------------------------


@FAST
@given(S.invalid_topologies(reasons=(*S.INVALID_TOPOLOGY_REASONS, S.TP_NOT_NESTED)))
def test_invalid_topologies_break_exactly_their_stated_rule(bad):
    assert broken_rules(bad.topology) == {bad.reason}
    assert bad.field in TpTopology.__dataclass_fields__
    assert bad.keyword in bad.field.replace("total_kv_", "")


def test_invalid_topology_census_covers_every_reason():
    drawn = census(S.invalid_topologies(), 200)
    assert {bad.reason for bad in drawn} == set(S.INVALID_TOPOLOGY_REASONS)
    assert S.TP_NOT_NESTED not in {bad.reason for bad in drawn}  # opt-in only
    fields = {bad.field for bad in drawn}
    assert {"prefill_tp", "decode_tp", "prefill_pp", "decode_pp", "total_kv_heads"} <= fields
    with pytest.raises(ValueError):
        S.invalid_topologies(reasons=("nope",))


# --- KV shapes ------------------------------------------------------------------------------


def test_dtypes_page_sizes_and_head_dims():
    assert set(census(S.dtypes(), 100)) == {
        torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2}
    assert set(census(S.dtypes(fp8=False, float64=True), 100)) == {
        torch.float32, torch.float16, torch.bfloat16, torch.float64}
    assert simplest(S.dtypes()) == torch.float32
    pages = set(census(S.page_sizes(), 100))
    assert {1, 2, 64} <= pages and pages & {3, 5, 7}
    assert set(census(S.page_sizes(min_size=2, max_size=8), 100)) <= set(range(2, 9))
    assert simplest(S.page_sizes()) == 1
    dims = census(S.head_dims(), 600)
    assert set(dims) <= set(range(1, 17)) | set(S.LARGE_HEAD_DIMS)
    large = sum(d > 16 for d in dims)
    assert len(dims) // 16 < large < len(dims) // 4  # present, not dominant (large pools are slow on CPU)
    assert {1, 15, 16, 31, 33, 63, 64, 65, 127, 128, 129, 256} <= set(dims)  # powers of two and neighbours
    with pytest.raises(ValueError):
        S.page_sizes(min_size=65)


@FAST
@given(st.data(), S.topologies(max_tp=8))
def test_kv_specs_fit_the_pipeline(data, topology):
    kv = data.draw(S.kv_specs(topology))
    assert kv.num_layers % topology.prefill_pp == 0 and kv.num_layers % topology.decode_pp == 0
    assert 1 <= kv.num_layers <= 4 * topology.prefill_pp
    assert kv.head_dim >= 1 and kv.page_size >= 1 and isinstance(kv.dtype, torch.dtype)


# --- requests -------------------------------------------------------------------------------


@FAST
@given(st.data(), st.integers(0, 12), st.integers(0, 6))
def test_page_tables_are_distinct_and_in_range(data, num_pages, spare):
    table = data.draw(S.page_tables(num_pages, num_pages + spare))
    assert isinstance(table, tuple) and len(table) == num_pages
    assert len(set(table)) == num_pages and all(0 <= p < num_pages + spare for p in table)


def test_page_tables_are_fragmented_and_shrink_to_contiguous():
    tables = census(S.page_tables(6, 12), 100)
    assert any(list(t) != sorted(t) for t in tables)  # out of order
    assert any(sorted(t) != list(range(min(t), min(t) + 6)) for t in tables)  # holes
    assert simplest(S.page_tables(4, 9)) == (0, 1, 2, 3)
    with pytest.raises(ValueError):
        S.page_tables(5, 4)


def check_request(r, page_size):
    pages = -(-r.num_tokens // page_size)
    assert r.num_tokens > r.prefix_len >= 0 and r.chunk_pages >= 1
    for table, pool in ((r.prefill_page_table, r.prefill_pool_pages), (r.decode_page_table, r.decode_pool_pages)):
        assert len(table) == pages and len(set(table)) == pages
        assert all(0 <= p < pool for p in table) and pool > pages


@FAST
@given(st.data(), S.page_sizes(), st.sampled_from((True, False, None)))
def test_request_specs_follow_the_prefix_alignment(data, page_size, aligned):
    if aligned is False and page_size == 1:
        with pytest.raises(ValueError):
            S.request_specs(page_size, aligned)
        return
    r = data.draw(S.request_specs(page_size, aligned))
    check_request(r, page_size)
    assert r.num_tokens <= 64 and r.chunk_pages <= 4
    if aligned is True:
        assert r.prefix_len % page_size == 0
    if aligned is False:
        assert r.prefix_len % page_size != 0


def test_request_specs_either_alignment_and_minimal():
    drawn = census(S.request_specs(4, None), 150)
    assert {r.prefix_len % 4 == 0 for r in drawn} == {True, False}
    assert any(r.prefix_len == 0 for r in drawn) and any(r.prefix_len >= 4 for r in drawn)
    minimal = simplest(S.request_specs(4))
    assert minimal == S.RequestSpec(1, 0, 1, (0,), 2, (0,), 2)
    with pytest.raises(ValueError):
        S.prefix_lengths(1, 4, aligned=False)


# --- transfer cases -------------------------------------------------------------------------


@settings(max_examples=40, deadline=None, database=None)
@given(S.transfer_cases(aligned_prefix=None))
def test_transfer_cases_are_consistent_and_small(case):
    t, kv, r = case.topology, case.kv, case.request
    assert broken_rules(t) == set()
    assert kv.num_layers % t.prefill_pp == 0 and kv.num_layers % t.decode_pp == 0
    check_request(r, kv.page_size)
    assert 0 <= case.seed < 2**32 and isinstance(case.nan_payloads, bool)
    elements = S.pool_elements(t, kv.num_layers, kv.head_dim, r.prefill_pool_pages * kv.page_size,
                               r.decode_pool_pages * kv.page_size)
    floor = S.pool_elements(t, t.prefill_pp, 1, r.prefill_pool_pages * kv.page_size,
                            r.decode_pool_pages * kv.page_size)
    assert elements <= max(1 << 17, floor)  # within budget unless even the smallest shape exceeds it


@FAST
@given(S.transfer_cases(aligned_prefix=False, nan_payloads=True, max_tokens=8))
def test_transfer_cases_non_aligned_prefix(case):
    assert case.kv.page_size > 1 and case.request.prefix_len % case.kv.page_size != 0
    assert case.request.num_tokens <= 8 and case.nan_payloads


def test_transfer_cases_shrink_to_the_trivial_case():
    case = simplest(S.transfer_cases())
    assert case.topology == TpTopology(1, 1, 1, 1, 1, num_query_heads=1)
    assert case.kv == S.KvSpec(1, 1, torch.float32, 1)
    assert case.request == S.RequestSpec(1, 0, 1, (0,), 2, (0,), 2)
    assert (case.seed, case.nan_payloads) == (0, False)
    assert case.layout == S.CONTIGUOUS


# --- pool layouts ---------------------------------------------------------------------------

LAYOUT_SIZES = dict(num_layers=3, pool_tokens=4, heads=2, head_dim=3)


def layout_facts(layout: S.PoolLayout) -> dict[str, bool]:
    """The layout classes recomputed from where its views land, not from its axis order."""
    geometry = layout.geometry(**LAYOUT_SIZES)
    views = [place for placements in geometry.views for place in placements]
    shape = (LAYOUT_SIZES["pool_tokens"], LAYOUT_SIZES["heads"], LAYOUT_SIZES["head_dim"])
    spans = [(p.offset, p.offset + sum((n - 1) * s for n, s in zip(shape, p.strides))) for p in views]
    k, v = geometry.views
    return {
        "strided_dim": any(p.strides[2] != 1 for p in views),
        "kv_interleaved": any(spans[i][0] <= spans[i + 3][1] and spans[i + 3][0] <= spans[i][1]
                              for i in range(3) if k[i].allocation == v[i].allocation),
        "head_major": any(p.strides[1] > p.strides[0] for p in views),
        "kv_fused": all(k[i].allocation == v[i].allocation for i in range(3)),
        "layer_slices": len({p.allocation for p in k}) == 1,
        "padded": sum(geometry.allocation_elements) > len(views) * shape[0] * shape[1] * shape[2],
    }


@FAST
@given(S.pool_layouts())
def test_pool_layout_views_are_disjoint_and_inside_their_allocations(layout):
    geometry = layout.geometry(**LAYOUT_SIZES)
    shape = (LAYOUT_SIZES["pool_tokens"], LAYOUT_SIZES["heads"], LAYOUT_SIZES["head_dim"])
    owner = [torch.full((n,), -1) for n in geometry.allocation_elements]
    for index, place in enumerate(p for placements in geometry.views for p in placements):
        region = owner[place.allocation].as_strided(shape, place.strides, place.offset)
        assert bool((region == -1).all()), f"{layout}: view {index} overlaps another"
        region.fill_(index)
    assert all(bool((o[: layout.lead] == -1).all()) for o in owner), "the lead padding holds a view"


@FAST
@given(S.pool_layouts())
def test_pool_layout_kind_and_features_match_where_the_views_land(layout):
    facts = layout_facts(layout)
    assert set(layout.features) == {kind for kind, holds in facts.items() if holds}, (layout, facts)
    assert layout.kind == (layout.features[0] if layout.features else "contiguous") and layout.kind in S.LAYOUT_KINDS
    assert layout.name == ("+".join(layout.features) or "contiguous")


def test_pool_layouts_reach_every_kind_and_shrink_to_contiguous():
    drawn = census(S.pool_layouts(), 300)
    assert {layout.kind for layout in drawn} == set(S.LAYOUT_KINDS)
    assert {feature for layout in drawn for feature in layout.features} == set(S.LAYOUT_KINDS) - {"contiguous"}
    assert simplest(S.pool_layouts()) == S.CONTIGUOUS
    assert S.CONTIGUOUS.kind == "contiguous" and simplest(S.pool_layouts(max_pad=0)) == S.CONTIGUOUS
    assert all(not layout.lead and not any(layout.pads) for layout in census(S.pool_layouts(max_pad=0), 50))
    assert {case.layout.kind for case in census(S.transfer_cases(), 200)} == set(S.LAYOUT_KINDS)


def test_pool_layout_refuses_what_is_not_a_layout():
    for order, pads in ((("token", "head"), (0, 0)), (("token", "head", "dim", "dim"), (0,) * 4),
                        (("token", "head", "dim", "page"), (0,) * 4), (("token", "head", "dim"), (0, 0)),
                        (("token", "head", "dim"), (0, -1, 0))):
        with pytest.raises(ValueError):
            S.PoolLayout(order, pads)
    with pytest.raises(ValueError):
        S.pool_layouts(max_pad=-1)


@pytest.mark.parametrize("layout, extra, where", [
    (S.PoolLayout(("layer", "token", "head", "dim"), (2, 0, 0, 0)), 2, "after K layer 4 and before K layer 5"),
    (S.PoolLayout(("token", "head", "kv", "dim"), (1, 0, 0, 0)), 0, "inside the span of K layer 4 and V layer 4"),
    (S.PoolLayout(("token", "head", "dim"), (0, 0, 0), lead=1), 0, "before K layer 4"),
])
def test_canary_fence_catches_a_write_into_a_layout_gap_and_names_the_layer(layout, extra, where):
    """The harness side of the layouts: every gap of a carved pool is canary, and a write there is an
    out-of-bounds write naming the layer next to it (the layers' own bytes are the pool oracles' business)."""
    from harness.engine.buffers import CanaryFence
    from harness.oracles import InvariantViolation

    fence = CanaryFence(torch.device("cpu"))
    k, v = fence.pool(layout, range(4, 6), 4, 2, 3, torch.float16, "decode pool 0")
    for layer in (*k, *v):
        layer.view(torch.int16).fill_(7)  # writing every view touches no gap
    fence.check()
    flat = torch.as_strided(k[0], (k[0].numel() + extra,), (1,), k[0].storage_offset() - layout.lead)
    flat.view(torch.int16)[:] = 7  # a flat copy that assumes contiguity (from the lead padding on)
    with pytest.raises(InvariantViolation, match="wrote outside its buffer") as caught:
        fence.check()
    assert where in str(caught.value) and "decode pool 0" in str(caught.value)


# --- arrival orders -------------------------------------------------------------------------

SLOTS = [(chunk, writer) for chunk in range(3) for writer in range(2)]


@FAST
@given(st.data(), st.booleans())
def test_arrival_orders_cover_every_slot(data, duplicates):
    events = data.draw(S.arrival_orders(list(reversed(SLOTS)), duplicates=duplicates))
    assert set(events) == set(SLOTS)
    assert len(events) <= 2 * len(SLOTS)
    if not duplicates:
        assert len(events) == len(SLOTS)


def test_arrival_orders_interleave_duplicate_and_shrink_to_sorted():
    drawn = census(S.arrival_orders(SLOTS), 100)
    assert any(len(e) > len(SLOTS) for e in drawn)
    assert any(e[: len(SLOTS)] != SLOTS and len(e) == len(SLOTS) for e in drawn)
    assert any(e.index((1, 0)) < e.index((0, 1)) for e in drawn)  # chunks interleave
    assert simplest(S.arrival_orders(list(reversed(SLOTS)))) == SLOTS
    assert simplest(S.arrival_orders([object, int])) == [object, int]
    assert simplest(S.arrival_orders([])) == []
    with pytest.raises(ValueError):
        S.arrival_orders([(0, 0), (0, 0)])


# --- receivers ------------------------------------------------------------------------------

#: repr prefix -> kind; more specific prefixes first.
KIND_BY_REPR = (
    ("<Receiver require_staging=", "attribute"),
    ("namespace(require_staging=", "namespace"),
    ("<ClassAttributeReceiver", "class_attribute"),
    ("<FrozenReceiver", "frozen_dataclass"),
    ("<PropertyReceiver", "property"),
    ("<GetattrReceiver", "getattr"),
    ("<Mock(require_staging=", "mock_configured"),
    ("<object object at", "object"),
    ("<BareReceiver", "bare_class"),
    ("namespace(", "namespace_without"),
    ("<SlotsReceiver", "slots_unset"),
    ("<RaisingPropertyReceiver", "raising_property"),
    ("<Mock(spec=[])", "mock_spec_empty"),
    ("<Mock()", "mock"),
    ("<MagicMock()", "magic_mock"),
    ("<generated receiver: ", "generated"),
)


def kind_of(receiver) -> str:
    text = repr(receiver)
    return next(kind for prefix, kind in KIND_BY_REPR if text.startswith(prefix))


def asks_for_staging(receiver) -> bool:
    """docs/domain.md#receivers: the attribute present and truthy; missing, falsy or raising (on access or on
    its truth test) is the plain path."""
    try:
        return bool(getattr(receiver, "require_staging"))
    except Exception:
        return False


def test_receiver_census_has_every_kind_and_both_answers():
    drawn = census(S.receivers(), 400)
    kinds = Counter(map(kind_of, drawn))
    assert set(kinds) == set(S.RECEIVER_KINDS), kinds
    assert {asks_for_staging(r) for r in drawn} == {True, False}
    flag_types = {type(r.require_staging).__name__ for r in drawn if kind_of(r) == "attribute"}
    assert {"bool", "int", "str", "list", "NoneType"} <= flag_types
    assert all(" at 0x" not in repr(r) for r in drawn if kind_of(r) != "object")


@FAST
@given(S.staged_receivers())
def test_staged_receivers_ask_for_staging(receiver):
    assert asks_for_staging(receiver)


@FAST
@given(S.plain_receivers())
def test_plain_receivers_do_not_ask_for_staging(receiver):
    assert not asks_for_staging(receiver)


def test_receiver_subsets_and_kinds():
    assert {kind_of(r) for r in census(S.plain_receivers(), 300)} == set(S.RECEIVER_KINDS) - {"mock", "magic_mock"}
    staged_kinds = {kind_of(r) for r in census(S.staged_receivers(), 200)}
    assert "mock" in staged_kinds and "object" not in staged_kinds
    assert {kind_of(r) for r in census(S.receivers(kinds=("slots_unset", "getattr")), 50)} == {
        "slots_unset", "getattr"}
    assert repr(simplest(S.receivers())) == "<Receiver require_staging=True (bool)>"
    with pytest.raises(ValueError):
        S.staged_receivers(kinds=("object",))


def test_receiver_values_are_fresh_and_counterexamples_read_well():
    lists = [r.require_staging for r in census(S.receivers(kinds=("attribute",)), 100)
             if isinstance(r.require_staging, list)]
    assert len(lists) >= 2 and len({id(v) for v in lists}) == len(lists)

    @settings(database=None, deadline=None, max_examples=200)
    @given(S.receivers(kinds=("mock", "slots_unset")))
    def fails_on_mock(receiver):
        assert kind_of(receiver) != "mock"

    with pytest.raises(AssertionError) as failure:
        fails_on_mock()
    assert "<Mock() require_staging auto-created (truthy Mock)>" in "\n".join(failure.value.__notes__)


# --- allocator programs ---------------------------------------------------------------------


def check_program(program, capacity, max_ops=40):
    assigns = 0
    assert len(program) <= max_ops
    for op in program:
        assert isinstance(op, tuple)
        if op[0] == "assign":
            assert len(op) == 2 and 1 <= op[1] <= 2 * capacity + 1
            assigns += 1
        elif op[0] == "free":
            assert len(op) == 2 and 0 <= op[1] < assigns
        else:
            assert op == ("watermark",)


@FAST
@given(st.data(), S.capacities())
def test_allocator_programs_are_well_formed(data, capacity):
    assert 1 <= capacity <= 4096
    check_program(data.draw(S.allocator_programs(capacity)), capacity)
    program = data.draw(S.allocator_programs(capacity, max_ops=10, oversized=False))
    check_program(program, capacity, max_ops=10)
    assert all(op[1] <= capacity for op in program if op[0] == "assign")


def test_allocator_program_census_has_the_hard_cases():
    programs = census(S.allocator_programs(64), 200)
    ops = [op for program in programs for op in program]
    assert any(op[0] == "assign" and op[1] > 64 for op in ops)  # oversized
    assert any(op == ("assign", 64) for op in ops)  # exact fit
    assert any(op[0] == "watermark" for op in ops)

    def frees(program):
        return [op[1] for op in program if op[0] == "free"]

    assert any(len(set(frees(p))) < len(frees(p)) for p in programs)  # double free
    assert any(frees(p) != sorted(frees(p)) for p in programs)  # out of order
    assert simplest(S.allocator_programs(64)) == []
    assert find(S.allocator_programs(64), lambda p: any(op[0] == "free" for op in p), settings=NO_DB) == [
        ("assign", 1), ("free", 0)]


# --- boundaries (docs/mutation.md#boundaries-the-strategies-reach) ------------------------------


def test_boundary_values_are_the_edges_of_a_range():
    from strategies.sizes import boundary_values

    assert boundary_values(1, 100) == (1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 99, 100)
    assert boundary_values(5, 5) == (5,)
    assert {255, 256, 257, 4095, 4096, 4097} <= set(boundary_values(1, 10_000))
    assert {(1 << 31) - 1, 1 << 31, (1 << 31) + 1, 1 << 32} <= set(boundary_values(1, 1 << 40))  # integer widths
    with pytest.raises(ValueError):
        boundary_values(3, 2)


def test_capacities_reach_one_the_maximum_and_powers_of_two():
    drawn = set(census(S.capacities(), 200))
    assert {1, 2, 4095, 4096, 1023, 1024, 1025} <= drawn
    assert len(drawn) > 60  # and values in between
    assert simplest(S.capacities()) == 1


def ring_events(program, capacity):
    """Replay ``program`` on the ring's placement rule (docs/domain.md#the-staging-ring: assigns placed one after
    another, wrapping to 0 when they do not fit before the end, an emptied ring restarting at 0) and name the
    boundaries it hits; ``most_live`` is the most allocations alive at once."""
    head, live, index, events, most_live = 0, set(), 0, set(), 0
    for op in program:
        if op[0] == "assign":
            n = op[1]
            if n > capacity:
                events.add("oversized")
            else:
                if head + n > capacity:
                    events.add("wrap" if head + n == capacity + 1 else "wrap_far")
                    head = 0
                elif head and head + n == capacity:
                    events.add("exactly_full")
                elif head and head + n == capacity - 1:
                    events.add("one_short")
                if n == capacity:
                    events.add("whole_ring")
                head += n
                live.add(index)
                most_live = max(most_live, len(live))
            index += 1
        elif op[0] == "free" and op[1] in live:
            live.discard(op[1])
            head = head if live else 0
    return events, most_live


def test_allocator_programs_reach_the_ring_boundaries():
    capacity = 64
    programs = census(S.allocator_programs(capacity), 200)
    seen = set()
    for program in programs:
        seen |= ring_events(program, capacity)[0]
    assert {"oversized", "wrap", "exactly_full", "one_short", "whole_ring"} <= seen
    assert max(ring_events(p, capacity)[1] for p in programs) >= 16  # many allocations alive at once
    without = census(S.allocator_programs(capacity, oversized=False), 100)
    assert all(op[1] <= capacity for p in without for op in p if op[0] == "assign")


@pytest.mark.parametrize("capacity", [1, 2, 7, 4096])
def test_allocator_programs_find_each_boundary(capacity):
    """find() (derandomized) reaches a wrap onto the next round and 32 live allocations on any ring size."""
    wraps = find(S.allocator_programs(capacity), lambda p: "wrap" in ring_events(p, capacity)[0], settings=NO_DB)
    assert ring_events(wraps, capacity)[0] >= {"wrap"}
    many = find(S.allocator_programs(capacity), lambda p: ring_events(p, capacity)[1] >= min(32, capacity),
                settings=NO_DB)
    assert ring_events(many, capacity)[1] >= min(32, capacity)


def test_token_counts_reach_page_multiples_and_their_neighbours():
    drawn = set(census(S.token_counts(64, page_size=12), 200))
    assert {1, 2, 11, 12, 13, 23, 24, 25, 63, 64, 15, 16, 17, 31, 32, 33} <= drawn
    assert simplest(S.token_counts(64, page_size=12)) == 1


@pytest.mark.parametrize("page_size", [2, 4, 7])
def test_request_specs_reach_the_partial_tail_and_chunk_boundaries(page_size):
    specs = census(S.request_specs(page_size, max_tokens=40, max_chunk_pages=4), 200)
    tails = {spec.num_tokens % page_size for spec in specs}
    assert {0, 1, page_size - 1} <= tails  # whole pages, one token over, one token short
    assert {1, 4} <= {spec.chunk_pages for spec in specs}
    assert any(spec.num_tokens - spec.prefix_len <= page_size and spec.prefix_len > 0 for spec in specs)  # last page
    assert 40 in {spec.num_tokens for spec in specs}


def test_head_dims_reach_powers_of_two_and_neighbours_in_transfer_cases():
    dims = {case.kv.head_dim for case in census(S.transfer_cases(topologies=S.topologies(max_tp=2, max_ranks=2),
                                                                 max_tokens=4), 400)}
    assert 1 in dims and all(dims & {2 ** k - 1, 2 ** k + 1} for k in (5, 6, 7))  # neighbours of 32, 64, 128


def test_steer_is_a_no_op_outside_tests_and_for_a_repeated_label():
    from strategies.sizes import steer

    steer(3, "outside")  # no test running: nothing happens

    @settings(max_examples=5, database=None, derandomize=True)
    @given(st.data())
    def twice(data):
        data.draw(S.allocator_programs(8))
        data.draw(S.allocator_programs(8))  # the second draw's observation is dropped, not an error

    twice()


# --- generated receivers ----------------------------------------------------------------------


def halves(receiver) -> tuple[str, str]:
    """(access label, value label) from a generated receiver's repr."""
    text = repr(receiver)[len("<generated receiver: "):-1]
    access, value = text.split(", value ", 1)
    return access, value


def test_generated_receivers_cover_every_access_and_value():
    from strategies.receiver_protocol import ACCESS_LABELS, VALUE_LABELS, generated_receivers

    drawn = census(generated_receivers(), 800)
    assert {halves(r)[0] for r in drawn} == set(ACCESS_LABELS)
    assert {halves(r)[1] for r in drawn} == set(VALUE_LABELS)
    outcomes = Counter(asks_for_staging(r) for r in drawn)
    assert outcomes[True] > 40 and outcomes[False] > 40
    raising = 0
    for r in drawn:  # a lookup or truth test that raises is common, not an accident
        try:
            bool(getattr(r, "require_staging"))
        except AttributeError:
            pass
        except Exception:
            raising += 1
    assert raising > len(drawn) // 4
    assert repr(simplest(generated_receivers())) == "<generated receiver: instance attribute, value True>"


@FAST
@given(S.staged_receivers(kinds=("generated",)))
def test_generated_staged_receivers_ask_for_staging(receiver):
    assert asks_for_staging(receiver)


@FAST
@given(S.plain_receivers(kinds=("generated",)))
def test_generated_plain_receivers_do_not(receiver):
    assert not asks_for_staging(receiver)


def test_generated_receivers_include_the_protocol_corners():
    """The corners the fixed kinds miss: a metaclass attribute seen only from the class, a dict key that is no
    attribute, an ambiguous tensor truth test, a __bool__ that returns a non-bool."""
    import numpy
    import torch as t

    from strategies.receiver_protocol import generated_receivers

    drawn = census(generated_receivers(), 800)
    by_half = {halves(r): r for r in drawn}
    on_class = next(r for (a, _), r in by_half.items() if a == "metaclass attribute, read on the class")
    assert isinstance(on_class, type) and "require_staging" not in vars(on_class)
    dict_key = next(r for (a, _), r in by_half.items() if a == "dict key, no attribute")
    assert "require_staging" in dict_key and not hasattr(dict_key, "require_staging")
    values = set()
    for r in drawn:
        try:
            values.add(type(getattr(r, "require_staging")))
        except Exception:
            pass
    assert {t.Tensor, numpy.ndarray, numpy.bool_, numpy.int64, float, complex, bytes} <= values


# -- two page sizes (interface 1.1) ------------------------------------------------------
def test_page_size_pairs_reach_both_directions_with_whole_ratios():
    drawn = census(S.page_size_pairs(), 200)
    assert all(max(p, d) % min(p, d) == 0 and max(p, d) <= 64 for p, d in drawn)
    assert any(d > p for p, d in drawn) and any(p > d for p, d in drawn) and any(p == d for p, d in drawn)
    assert simplest(S.page_size_pairs()) == (1, 1)
    with pytest.raises(ValueError, match="ratios"):
        S.page_size_pairs(ratios=(0,))


@given(case=S.transfer_cases(aligned_prefix=None, page_size_pairs=S.page_size_pairs()))
@settings(max_examples=60, derandomize=True, database=None)
def test_transfer_cases_with_two_page_sizes_have_tables_in_each_sides_pages(case):
    kv, req = case.kv, case.request
    assert len(req.prefill_page_table) == -(-req.num_tokens // kv.page_size)
    assert len(req.decode_page_table) == -(-req.num_tokens // kv.decode_page_size)
    assert max(req.decode_page_table) < req.decode_pool_pages and max(req.prefill_page_table) < req.prefill_pool_pages


def test_equal_page_sizes_stay_the_default_and_kv_specs_normalise():
    assert all(c.kv.decode_page_size == c.kv.page_size for c in census(S.transfer_cases(), 30))
    assert S.KvSpec(1, 1, torch.float32, 4) == S.KvSpec(1, 1, torch.float32, 4, 4)
    with pytest.raises(ValueError, match="not both"):
        S.transfer_cases(page_sizes=S.page_sizes(), page_size_pairs=S.page_size_pairs())
