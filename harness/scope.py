"""Declared scope limits: what an implementation's design does not cover, stated up front.

An implementation may set ``limits`` to names from :data:`LIMITS`.  The suite then maps every generated
input into that scope before running it, and the report lists the declared limits next to the
capabilities, so a narrower design is visible instead of showing up as failures or being silently
skipped.  A limit never relaxes a check on an input that runs: it only changes which inputs are run.

Applied in two places, never by a test: the pytest plugin fits every argument of a Hypothesis test that is
a :class:`~strategies.cases.TransferCase` or a :class:`~harness.engine.shapes.RankShape` (inside tuples and
lists too) before the test body sees it, in process and in the parent of distributed mode; the engine's
:class:`~harness.engine.rank.Rank` fits the shape it is built from and every request it registers (what
state machines and the other stress suites draw).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.engine.shapes import RequestPlan

#: Limit name -> what the suite stops generating when an implementation declares it.
LIMITS: dict[str, str] = {
    "whole_pages": "requests end on a page boundary (no partially filled last page)",
    "no_pipeline_fan_in": "prefill and decode run the same PP size (no decode stage fed by several prefill stages)",
    "contiguous_layers": "every pool layer is a contiguous tensor of its own (no shared, fused, strided or padded "
                         "pool layouts, docs/domain.md#pool-layouts)",
    "no_decode_pipeline": "decode runs one PP stage (no pipeline parallelism on the decode side; with "
                          "no_pipeline_fan_in, none on either side)",
}


def declared_limits(impl: Any) -> frozenset[str]:
    """The limits ``impl`` declares (``limits`` attribute; none when absent)."""
    return frozenset(getattr(impl, "limits", ()) or ())


def unknown_limits(raw: Any) -> list[str]:
    return sorted(str(name) for name in (raw or ()) if name not in LIMITS)


def fit(impl: Any, value: Any) -> Any:
    """``value`` mapped into ``impl``'s declared scope: a ``TransferCase``, a ``RankShape``, or a tuple or list
    of values (fitted item by item); anything else, and anything when nothing is declared, is returned as is."""
    limits = declared_limits(impl)
    return _fit(limits, value) if limits else value


def fit_plan(impl: Any, plan: "RequestPlan", page_size: int) -> "RequestPlan":
    """A request on pages of ``page_size`` tokens mapped into ``impl``'s declared scope."""
    if "whole_pages" in declared_limits(impl):
        return dataclasses.replace(plan, num_tokens=_whole_pages(plan.num_tokens, page_size))
    return plan


def _fit(limits: frozenset[str], value: Any) -> Any:
    # Imported here: the pytest plugin imports this module, and must not import torch for runs without conformance.
    from harness.engine.shapes import RankShape
    from strategies.cases import TransferCase

    if isinstance(value, TransferCase):
        if "whole_pages" in limits:
            value = dataclasses.replace(value, request=_whole_pages_on_both_sides(value.request, value.kv))
        return dataclasses.replace(value, topology=_fit_topology(limits, value.topology),
                                   layout=_fit_layout(limits, value.layout))
    if isinstance(value, RankShape):
        topology = _fit_topology(limits, value.topology)
        # A decode rank of a later stage becomes the same TP rank of the one stage left.
        return dataclasses.replace(value, topology=topology, decode_index=value.decode_index % topology.decode_tp
                                   if topology.decode_pp == 1 else value.decode_index,
                                   layout=_fit_layout(limits, value.layout))
    if type(value) in (tuple, list):
        return type(value)(_fit(limits, item) for item in value)
    return value


def _fit_topology(limits: frozenset[str], topology):
    # Decode PP first: decode PP 1 always divides prefill PP, and fan-in then brings prefill PP to 1 as well.
    if "no_decode_pipeline" in limits and topology.decode_pp != 1:
        topology = dataclasses.replace(topology, decode_pp=1)
    if "no_pipeline_fan_in" in limits and topology.prefill_pp != topology.decode_pp:
        return dataclasses.replace(topology, prefill_pp=topology.decode_pp)
    return topology


def _fit_layout(limits: frozenset[str], layout):
    from strategies.pool_layout import CONTIGUOUS

    return CONTIGUOUS if "contiguous_layers" in limits else layout


def _whole_pages_on_both_sides(request, kv):
    """The request grown to whole pages of the larger page size (one is a multiple of the other), the other
    side's page table extended by fresh pages at the end of its pool when it is then too short."""
    tokens = _whole_pages(request.num_tokens, max(kv.page_size, kv.decode_page_size))
    sides = {}
    for side, page_size in (("prefill", kv.page_size), ("decode", kv.decode_page_size)):
        table, pool_pages = getattr(request, f"{side}_page_table"), getattr(request, f"{side}_pool_pages")
        extra = tokens // page_size - len(table)
        if extra > 0:
            table, pool_pages = tuple(table) + tuple(range(pool_pages, pool_pages + extra)), pool_pages + extra
        sides.update({f"{side}_page_table": table, f"{side}_pool_pages": pool_pages})
    return dataclasses.replace(request, num_tokens=tokens, **sides)


def _whole_pages(tokens: int, page_size: int) -> int:
    return -(-tokens // page_size) * page_size
