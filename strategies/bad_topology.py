"""Topologies an implementation must refuse, each broken for one stated reason.

Every draw is an ``InvalidTopology``: the ``TpTopology`` plus the single rule
it breaks (``reason``), the offending field, and ``keyword``, a word an
actionable error message should contain (case-insensitively).  All the other
rules hold, so a refusal can be attributed to that reason alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from hypothesis import strategies as st

from strategies.cases import TpTopology

#: Reasons drawn by default, one per rule of docs/domain.md#valid-topologies:
#: ``heads_not_positive`` H < 1; ``tp_not_positive`` a TP size < 1;
#: ``pp_not_positive`` a PP size < 1; ``heads_tp_not_divisible`` H and a TP
#: size neither divide the other; ``pp_not_divisible`` prefill PP is not a
#: multiple of decode PP.
INVALID_TOPOLOGY_REASONS = (
    "heads_not_positive",
    "tp_not_positive",
    "pp_not_positive",
    "heads_tp_not_divisible",
    "pp_not_divisible",
)
#: Outside the suite's scope (docs/domain.md#valid-topologies), not a rule: both TP sizes
#: are valid for H but neither is a multiple of the other (H=6, P=2, D=3).
#: Opt in with ``invalid_topologies(reasons=...)``.
TP_NOT_NESTED = "tp_not_nested"

_KEYWORD_OF_FIELD = {
    "total_kv_heads": "heads",
    "prefill_tp": "tp",
    "decode_tp": "tp",
    "prefill_pp": "pp",
    "decode_pp": "pp",
}


@dataclass(frozen=True)
class InvalidTopology:
    """A topology that must raise ``ValueError``, and why.

    ``field`` names the offending ``TpTopology`` field; ``keyword`` is what an
    error message about it should mention (``"heads"``, ``"tp"`` or ``"pp"``).
    """

    topology: TpTopology
    reason: str
    field: str

    @property
    def keyword(self) -> str:
        return _KEYWORD_OF_FIELD[self.field]


_NON_POSITIVE = st.sampled_from((0, -1)) | st.integers(-64, 0)
_SIDES = st.sampled_from(("prefill", "decode"))


_BASE = TpTopology(total_kv_heads=4, prefill_tp=2, decode_tp=1, prefill_pp=2, decode_pp=1)


@st.composite
def _heads_not_positive(draw):
    h = draw(_NON_POSITIVE)
    return InvalidTopology(TpTopology(h, draw(st.sampled_from((1, 2, 4))), 1), "heads_not_positive", "total_kv_heads")


@st.composite
def _tp_not_positive(draw):
    field = draw(_SIDES) + "_tp"
    return InvalidTopology(replace(_BASE, **{field: draw(_NON_POSITIVE)}), "tp_not_positive", field)


@st.composite
def _pp_not_positive(draw):
    field = draw(_SIDES) + "_pp"
    # A non-positive prefill PP must not also make "prefill % decode" the story:
    # decode PP stays 1 so the only broken rule is positivity.
    changes = {"decode_pp": 1, field: draw(_NON_POSITIVE)}
    return InvalidTopology(replace(_BASE, **changes), "pp_not_positive", field)


#: (H, T) pairs where neither divides the other, small first.
_INDIVISIBLE = ((2, 3), (3, 2), (6, 4), (4, 6), (3, 4), (4, 3), (6, 8), (8, 6), (12, 8), (8, 12), (5, 2), (2, 5))


@st.composite
def _heads_tp_not_divisible(draw):
    h, bad = draw(st.sampled_from(_INDIVISIBLE))
    side = draw(_SIDES)
    # The other side gets TP 1, which is valid for any H and nests with any T.
    tps = {"prefill_tp": bad, "decode_tp": 1} if side == "prefill" else {"prefill_tp": 1, "decode_tp": bad}
    return InvalidTopology(TpTopology(h, **tps), "heads_tp_not_divisible", side + "_tp")


@st.composite
def _pp_not_divisible(draw):
    prefill_pp, decode_pp = draw(st.sampled_from(((1, 2), (2, 4), (3, 2), (2, 3), (4, 3), (1, 4), (4, 8))))
    return InvalidTopology(replace(_BASE, prefill_pp=prefill_pp, decode_pp=decode_pp), "pp_not_divisible", "decode_pp")


@st.composite
def _tp_not_nested(draw):
    h, p, d = draw(st.sampled_from(((6, 2, 3), (6, 3, 2), (12, 4, 6), (2, 4, 6), (24, 8, 12))))
    return InvalidTopology(TpTopology(h, p, d), TP_NOT_NESTED, "decode_tp")


_BY_REASON = {
    "heads_not_positive": _heads_not_positive(),
    "tp_not_positive": _tp_not_positive(),
    "pp_not_positive": _pp_not_positive(),
    "heads_tp_not_divisible": _heads_tp_not_divisible(),
    "pp_not_divisible": _pp_not_divisible(),
    TP_NOT_NESTED: _tp_not_nested(),
}


def invalid_topologies(reasons: tuple[str, ...] = INVALID_TOPOLOGY_REASONS) -> st.SearchStrategy[InvalidTopology]:
    """``InvalidTopology`` values, each breaking exactly one rule from ``reasons``
    (default ``INVALID_TOPOLOGY_REASONS``; add ``TP_NOT_NESTED`` to opt in).

    Check a refusal with ``pytest.raises(ValueError, match=f"(?i){bad.keyword}")``.
    """
    unknown = [r for r in reasons if r not in _BY_REASON]
    if unknown or not reasons:
        raise ValueError(f"reasons must be a non-empty subset of {tuple(_BY_REASON)}, got {reasons!r}")
    return st.one_of([_BY_REASON[r] for r in reasons])
