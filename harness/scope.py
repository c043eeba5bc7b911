"""Declared scope limits: what an implementation's design does not cover, stated up front.

An implementation may set ``limits`` to names from :data:`LIMITS`.  The suite
then maps every generated case into that scope before running it, and the
report lists the declared limits next to the capabilities, so a narrower
design is visible instead of showing up as failures or being silently
skipped.  A limit never relaxes a check on a case that runs: it only changes
which cases are generated.
"""

from __future__ import annotations

import dataclasses
from typing import Any

#: Limit name -> what the suite stops generating when an implementation declares it.
LIMITS: dict[str, str] = {
    "whole_pages": "requests end on a page boundary (no partially filled last page)",
    "no_pipeline_fan_in": "prefill and decode run the same PP size (no decode stage fed by several prefill stages)",
}


def declared_limits(impl: Any) -> frozenset[str]:
    """The limits ``impl`` declares (``limits`` attribute; none when absent)."""
    return frozenset(getattr(impl, "limits", ()) or ())


def unknown_limits(raw: Any) -> list[str]:
    return sorted(str(name) for name in (raw or ()) if name not in LIMITS)


def fit(impl: Any, case):
    """``case`` mapped into ``impl``'s declared scope; the case itself when nothing is declared."""
    limits = declared_limits(impl)
    if "whole_pages" in limits:
        page = case.kv.page_size
        case = dataclasses.replace(case, request=dataclasses.replace(
            case.request, num_tokens=-(-case.request.num_tokens // page) * page))
    if "no_pipeline_fan_in" in limits and case.topology.prefill_pp != case.topology.decode_pp:
        case = dataclasses.replace(case, topology=dataclasses.replace(case.topology, prefill_pp=case.topology.decode_pp))
    return case
