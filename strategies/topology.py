"""Valid prefill/decode topologies: head counts, TP and PP sizes, GQA shapes.

Validity (docs/domain.md#valid-topologies): every size >= 1; on each side ``H % T == 0`` or
``T % H == 0``.  Suite scope on top of that: the larger TP size is a multiple
of the smaller one (the writer formulas use ``P/D`` or ``D/P``), and the
decode PP size divides the prefill PP size.
"""

from __future__ import annotations

from hypothesis import reject, strategies as st

from strategies.cases import TpTopology

#: Divisor-rich head counts and TP sizes, small first so shrinking heads there.
_DIVISOR_RICH = (1, 2, 4, 8, 3, 6, 12, 16, 24, 32, 48, 64, 96, 128)
#: GQA group sizes seen in released models (query heads per KV head).
_GQA_GROUPS = (1, 2, 4, 8, 16, 3, 5, 6, 7)
#: Where heads are replicated: neither side, prefill only, decode only, both.
REPLICATION_REGIMES = ("none", "prefill", "decode", "both")
#: Prefill PP sizes the suite draws from.
_PREFILL_PP_SIZES = (1, 2, 4)


def _at_least_one(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def _head_strategy(value, max_tp: int, max_ranks: int):
    """``(by_regime, heads)``: the default draws H per regime, bounded so that
    replication fits ``max_tp``; a fixed int or a caller's strategy is drawn
    first and the regime chosen among those its H allows."""
    if isinstance(value, bool) or not (value is None or isinstance(value, (int, st.SearchStrategy))):
        raise ValueError(f"heads must be None, an int or a strategy of ints, got {value!r}")
    if isinstance(value, int):
        _at_least_one("heads", value)
        return False, st.just(value)
    if isinstance(value, st.SearchStrategy):
        return False, value
    replicable = max(1, min(max_tp, max_ranks) // 2)
    return True, lambda regime: kv_head_counts(128 if regime == "none" else replicable)


def kv_head_counts(max_heads: int = 128) -> st.SearchStrategy[int]:
    """KV head counts in ``[1, max_heads]``, mostly divisor-rich (powers of two,
    3, 6, 12, 24 ...), sometimes arbitrary; shrinks toward 1."""
    _at_least_one("max_heads", max_heads)
    rich = tuple(h for h in _DIVISOR_RICH if h <= max_heads)
    return st.sampled_from(rich) | st.integers(1, max_heads)


def tp_sizes(max_tp: int = 64) -> st.SearchStrategy[int]:
    """TP group sizes in ``[1, max_tp]``, mostly powers of two and 3 * 2**k,
    sometimes arbitrary; shrinks toward 1."""
    _at_least_one("max_tp", max_tp)
    rich = tuple(t for t in _DIVISOR_RICH if t <= max_tp)
    return st.sampled_from(rich) | st.integers(1, max_tp)


def pipeline_sizes(max_pp: int = 4) -> st.SearchStrategy[tuple[int, int]]:
    """``(prefill_pp, decode_pp)`` with prefill_pp in 1, 2, 4 (up to ``max_pp``)
    and decode_pp a divisor of it; shrinks toward ``(1, 1)``."""
    _at_least_one("max_pp", max_pp)
    prefill = st.sampled_from(tuple(p for p in _PREFILL_PP_SIZES if p <= max_pp))
    return prefill.flatmap(
        lambda p: st.tuples(st.just(p), st.sampled_from(tuple(d for d in range(1, p + 1) if p % d == 0)))
    )


def gqa_group_sizes(max_group: int = 16) -> st.SearchStrategy[int]:
    """Query heads per KV head (1 is MHA); shrinks toward 1."""
    _at_least_one("max_group", max_group)
    return st.sampled_from(tuple(g for g in _GQA_GROUPS if g <= max_group))


def gqa_configs(max_kv_heads: int = 128, max_group: int = 16) -> st.SearchStrategy[tuple[int, int]]:
    """``(num_query_heads, num_kv_heads)`` with query heads a multiple of KV
    heads: MHA (group 1), GQA, and MQA (one KV head); shrinks toward ``(1, 1)``."""
    return st.tuples(kv_head_counts(max_kv_heads), gqa_group_sizes(max_group)).map(
        lambda hg: (hg[0] * hg[1], hg[0])
    )


def _tp_candidates(heads: int, max_tp: int) -> tuple[int, ...]:
    """TP sizes valid for ``heads``: its divisors, and multiples ``heads * m``
    with ``m`` divisor-rich (replication), capped at ``max_tp``."""
    divisors = {t for t in range(1, heads + 1) if heads % t == 0}
    multiples = {heads * m for m in _DIVISOR_RICH if m >= 2}
    return tuple(sorted(t for t in divisors | multiples if t <= max_tp))


def _regime_of(heads: int, prefill_tp: int, decode_tp: int) -> str:
    """Which side replicates heads (TP larger than the head count)."""
    return REPLICATION_REGIMES[(prefill_tp > heads) + 2 * (decode_tp > heads)]


def _direction_of(prefill_tp: int, decode_tp: int) -> str:
    if prefill_tp == decode_tp:
        return "equal"
    return "prefill_larger" if prefill_tp > decode_tp else "decode_larger"


def _tp_pairs(heads: int, max_prefill_tp: int, max_decode_tp: int, max_ratio: int) -> list[tuple[int, int]]:
    """Every nested ``(P, D)`` pair valid for ``heads`` within the bounds."""
    pairs = []
    for p in _tp_candidates(heads, max_prefill_tp):
        for d in _tp_candidates(heads, max_decode_tp):
            big, small = max(p, d), min(p, d)
            if big % small == 0 and big // small <= max_ratio:
                pairs.append((p, d))
    return pairs


def _pick(draw, options: list):
    """One of ``options``, index 0 preferred when shrinking.  Always one draw
    from a fixed range: a path with fewer draws would otherwise count as
    "simpler" to the shrinker, however large its values."""
    return options[draw(st.integers(0, 63)) % len(options)]


@st.composite
def _topologies(draw, max_ratio, max_tp, pipeline, heads, max_ranks, regimes, query_groups):
    """Draw the replication regime and H (regime first for the default heads,
    so each regime is common), then the TP direction, the ratio, a TP pair of
    that ratio, and PP sizes that keep the ranks per side within
    ``max_ranks``; every choice lists small values first so shrinking heads
    toward ``TpTopology(1, 1, 1, 1, 1, 1)``."""
    by_regime, head_counts = heads
    cap = min(max_tp, max_ranks)
    if by_regime:
        regime = draw(st.sampled_from(regimes))
        h = draw(head_counts(regime))
    else:
        h = draw(head_counts)
        if h < 1:
            reject()
        feasible = {_regime_of(h, *pair) for pair in _tp_pairs(h, cap, cap, max_ratio)}
        allowed = [r for r in regimes if r in feasible]
        if not allowed:
            reject()  # a caller-chosen H that allows none of the regimes asked for
        regime = _pick(draw, allowed)
    pairs = [pair for pair in _tp_pairs(h, cap, cap, max_ratio) if _regime_of(h, *pair) == regime]
    directions = [d for d in ("equal", "prefill_larger", "decode_larger") if any(_direction_of(*p) == d for p in pairs)]
    direction = _pick(draw, directions)
    pairs = [p for p in pairs if _direction_of(*p) == direction]
    ratios = sorted({max(p) // min(p) for p in pairs})
    # One draw in four takes the most extreme ratio, which bugs love.
    # (Both draws always happen, keeping the draw count fixed for the shrinker.)
    extreme, ratio = draw(st.integers(0, 3)) == 3, _pick(draw, ratios)
    ratio = ratios[-1] if extreme else ratio
    prefill_tp, decode_tp = _pick(draw, [p for p in pairs if max(p) // min(p) == ratio])
    pp_pairs = [(1, 1)]
    if pipeline:
        pp_pairs = [
            (p, d) for p in _PREFILL_PP_SIZES for d in range(1, p + 1)
            if p % d == 0 and prefill_tp * p <= max_ranks and decode_tp * d <= max_ranks
        ]
    prefill_pp, decode_pp = _pick(draw, pp_pairs)
    group = draw(query_groups)
    return TpTopology(h, prefill_tp, decode_tp, prefill_pp, decode_pp, num_query_heads=h * group)


def topologies(
    max_ratio: int = 64,
    max_tp: int = 64,
    pipeline: bool = True,
    heads: int | st.SearchStrategy[int] | None = None,
    *,
    max_ranks: int = 64,
    regimes: tuple[str, ...] = REPLICATION_REGIMES,
    max_group: int = 16,
) -> st.SearchStrategy[TpTopology]:
    """Valid ``TpTopology`` values.

    * TP sizes up to ``max_tp``; ``P/D`` or ``D/P`` is an integer up to
      ``max_ratio``, in all three directions (P > D, P < D, P == D).
    * Replication regime drawn first and uniformly among ``regimes``
      (``"none"``, ``"prefill"``, ``"decode"``, ``"both"``: which side has
      TP > H); then direction (P == D, P > D, P < D) and ratio, each uniform
      among the feasible ones (plus the most extreme ratio one draw in four),
      so extreme ratios are common too.  Regimes that the bounds exclude
      (e.g. any replication with ``max_tp=1``) are dropped.
    * With ``pipeline``: prefill_pp in 1, 2, 4 and decode_pp a divisor of it;
      otherwise both 1.  Ranks per side (TP * PP) stay <= ``max_ranks``, since
      the harness materialises one KV pool per rank.
    * ``heads``: a fixed H, a strategy of H, or ``None`` for ``kv_head_counts()``
      (bounded to ``min(max_tp, max_ranks) // 2`` in replicating regimes).
      A caller's H is drawn first and the regime chosen among those it allows
      (H=128 with ``max_tp=64`` can only be ``"none"``); an H allowing none of
      ``regimes`` is rejected.
    * ``num_query_heads`` is H times a GQA group size (<= ``max_group``).

    Shrinks toward ``TpTopology(1, 1, 1, 1, 1, num_query_heads=1)``.
    """
    for name, value in (("max_ratio", max_ratio), ("max_tp", max_tp), ("max_ranks", max_ranks)):
        _at_least_one(name, value)
    unknown = set(regimes) - set(REPLICATION_REGIMES)
    if unknown or not regimes:
        raise ValueError(f"regimes must be a non-empty subset of {REPLICATION_REGIMES}, got {regimes!r}")
    # Replication needs TP 2+; one-sided replication also needs P != D.
    room = min(max_tp, max_ranks) >= 2
    possible = {"none": True, "both": room, "prefill": room and max_ratio >= 2, "decode": room and max_ratio >= 2}
    usable = tuple(r for r in REPLICATION_REGIMES if r in regimes and possible[r])
    if not usable:
        raise ValueError(f"regimes {regimes!r} need TP sizes of 2+ (max_tp, max_ranks) and max_ratio >= 2")
    return _topologies(
        max_ratio, max_tp, pipeline, _head_strategy(heads, max_tp, max_ranks), max_ranks,
        usable, gqa_group_sizes(max_group),
    )
