"""The order in which ranks talk: one global sequence of writer-to-decode exchanges.

Every rank computes the same schedule from the case and the implementation's
head mapping.  A decode rank walks its arrival order; the first arrival of a
``(chunk, slot)`` is an *exchange* with the prefill rank writing that slot
(duplicates are local "chunk ready" repeats).  Exchanges are ordered by
``(step in its decode rank's order, decode index)`` and every rank performs
its own exchanges in that order.  A totally ordered sequence of pairwise
rendezvous cannot deadlock: the earliest unfinished exchange always has both
of its ranks ready for it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from harness import oracles
from harness.engine.shapes import RankShape
from harness.engine.writers import WriterPlan, writer_plans


@dataclass(frozen=True)
class Exchange:
    """Writer slot ``slot`` of decode pool ``decode_index`` sends chunk ``chunk`` from prefill pool ``prefill_index``."""

    step: int
    decode_index: int
    chunk: int
    slot: int
    prefill_index: int


def default_order(chunks: int, slots: int) -> tuple[tuple[int, int], ...]:
    """Chunk after chunk, writer slots in order: what a well-behaved prefill side sends."""
    return tuple((c, s) for c in range(chunks) for s in range(slots))


def checked_order(order: Sequence[Sequence[int]], chunks: int, slots: int, decode_index: int) -> tuple[tuple[int, int], ...]:
    """``order`` as tuples, refused unless it has every ``(chunk, slot)`` at least once and nothing else."""
    events = tuple((int(c), int(s)) for c, s in order)
    wanted = set(default_order(chunks, slots))
    if set(events) != wanted:
        missing, stray = sorted(wanted - set(events)), sorted(set(events) - wanted)
        raise ValueError(f"arrival order of decode pool {decode_index} must cover every (chunk, slot) of "
                         f"{chunks} chunks x {slots} slots; missing {missing}, unknown {stray}")
    return events


def arrival_orders(plans: Sequence[Sequence[WriterPlan]], chunks: int,
                   given: Sequence[Sequence[Sequence[int]]] | None) -> list[tuple[tuple[int, int], ...]]:
    """Each decode pool's arrival order: the job's (validated) or the default one."""
    if given is None:
        return [default_order(chunks, len(p)) for p in plans]
    return [checked_order(order, chunks, len(p), index) for index, (order, p) in enumerate(zip(given, plans, strict=True))]


def exchanges(orders: Sequence[Sequence[tuple[int, int]]], plans: Sequence[Sequence[WriterPlan]]) -> list[Exchange]:
    """The global exchange sequence: first arrivals only, by (step, decode index)."""
    found = []
    for decode_index, order in enumerate(orders):
        seen: set[tuple[int, int]] = set()
        for step, (chunk, slot) in enumerate(order):
            if (chunk, slot) in seen:
                continue
            seen.add((chunk, slot))
            found.append(Exchange(step, decode_index, chunk, slot, plans[decode_index][slot].prefill_index))
    return sorted(found, key=lambda x: (x.step, x.decode_index))


def fingerprint(orders: Sequence[Sequence[tuple[int, int]]], plans: Sequence[Sequence[WriterPlan]],
                spans: Sequence[Sequence[Sequence[tuple[int, int]]]]) -> str:
    """A digest of everything the ranks must agree on before any byte moves."""
    text = repr(([list(o) for o in orders], [list(p) for p in plans], [[list(s) for s in per] for per in spans]))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def writer_slot_counts(impl, case) -> tuple[list[int], int]:
    """``(writer slots of each decode pool, chunks)``: what a parent needs to draw arrival orders for a case."""
    req, kv, topo = case.request, case.kv, case.topology
    chunks = len(oracles.chunk_grid(req.prefix_len, req.num_tokens, kv.page_size, req.chunk_pages))
    decode_pools = topo.decode_tp * topo.decode_pp
    return [len(writer_plans(impl, RankShape.of_case(case, j))) for j in range(decode_pools)], chunks
