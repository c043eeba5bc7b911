"""Prefill writers as a decode rank sees them: which slot writes what, where in a chunk, and when it may.

* :func:`writer_plans` is the one writer-slot computation: slot ``offset * len(sources) + tp_slot`` is
  prefill TP rank ``sources[tp_slot]`` of the ``offset``-th prefill stage feeding the decode rank's stage,
  with the head slice from the implementation's mapping when it has ``head_mapping`` (else the oracle's).
* :func:`chunk_layout` is where each slot's bytes sit in a chunk's staging region (the implementation's
  ``staging_layout`` when it has ``layout``, else the interface convention).
* Both are asked once per (case, rank shape): given the ``world`` a case built, the answers are kept for
  that world (``World.answers``, :func:`_case_answers`), so the moves of one case (staged, direct, each chunk's ring size)
  do not ask the same question again.  The head_coverage and layout tests judge the answers themselves,
  call by call; here every answer is still judged by what it moves (the pool oracles, the ledger).
* :func:`wait_until_writable` is the one loop in which a writer waits for the watermark while the
  scheduler polls the owners of older live regions; every answer it gets is judged by the ledger.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from harness import oracles
from harness.engine.buffers import CANARY_BYTE, Guarded
from harness.engine.ledger import Ledger, Placement
from harness.engine.shapes import RankShape
from harness.oracles import InvariantViolation

MAX_POLLS = 64


def has(impl: Any, capability: str) -> bool:
    return capability in impl.capabilities


@dataclass(frozen=True)
class WriterPlan:
    """One writer slot of a decode rank: where its bytes come from and go."""

    slot: int
    prefill_index: int     # pool index pp_stage * prefill_tp + tp_rank
    source_start: int      # first head on the prefill rank
    count: int             # heads it sends
    destination_start: int  # first head on the decode rank
    layer_start: int       # first local layer on the decode rank


def _case_answers(impl: Any, world: Any) -> Optional[dict]:
    """The answers ``impl`` gave for the case of ``world`` so far (None: no world, nothing kept); they live on
    the world, as long as the case (the impl is held beside them, so its id is not reused)."""
    if world is None:
        return None
    kept = world.answers.get(id(impl))
    if kept is None:
        kept = world.answers[id(impl)] = (impl, {})
    return kept[1]


def writer_plans(impl: Any, shape: RankShape, world: Any = None) -> list[WriterPlan]:
    """Writer slots of the decode rank ``shape`` describes; head mapping from the implementation when it has one
    (asked once per rank shape of ``world``'s case when a world is given)."""
    answers = _case_answers(impl, world)
    if answers is None:
        return _writer_plans(impl, shape)
    key = ("plans", shape)
    if key not in answers:
        answers[key] = _writer_plans(impl, shape)
    return list(answers[key])


def _writer_plans(impl: Any, shape: RankShape) -> list[WriterPlan]:
    topo = shape.topology
    stage, rank = divmod(shape.decode_index, topo.decode_tp)
    H, P, D = topo.total_kv_heads, topo.prefill_tp, topo.decode_tp
    mapped = has(impl, "head_mapping")
    ranks = list(impl.writers_of_decode_rank(H, P, D, rank) if mapped else oracles.source_ranks(H, P, D, rank))
    ratio = topo.prefill_pp // topo.decode_pp
    plans = []
    for offset in range(ratio):
        for tp_slot, prefill_rank in enumerate(ranks):
            if mapped:
                src, count, dst = impl.head_slice(H, P, D, prefill_rank, rank)
            else:
                e = oracles.expected_slice(H, P, D, prefill_rank, rank)
                src, count, dst = e.source_start, e.count, e.destination_start
            plans.append(WriterPlan(offset * len(ranks) + tp_slot, (stage * ratio + offset) * P + prefill_rank,
                                    src, count, dst, offset * shape.layers_per_writer))
    return plans


def chunk_layout(impl: Any, shape: RankShape, plans: list[WriterPlan], tokens: int,
                 world: Any = None) -> list[tuple[int, int]]:
    """``(offset, nbytes)`` of each writer slot's part of a chunk of ``tokens`` tokens (asked once per question
    of ``world``'s case when a world is given)."""
    args = (len(plans), tokens, plans[0].count, shape.layers_per_writer, shape.kv.head_dim, shape.element_size)
    answers = _case_answers(impl, world)
    if answers is not None and ("layout", args) in answers:
        return list(answers[("layout", args)])
    spans = [tuple(s) for s in (impl.staging_layout(*args) if has(impl, "layout") else oracles.expected_spans(*args))]
    if answers is not None:
        answers[("layout", args)] = tuple(spans)
    return spans


def check_span(slot: int, span: tuple[int, int], placement: Placement) -> None:
    """A writer's span lies inside its chunk's allocation."""
    offset, nbytes = span
    if offset < 0 or offset + nbytes > placement.nbytes:
        raise InvariantViolation(f"writer {slot} span {span} leaves its {placement.nbytes}-byte allocation")


#: A writer's decision: given the watermark the decode side offers, ``(may_write, watermark it judged by)``;
#: ``None`` when the writer is gone (distributed mode: it failed).
Ask = Callable[[tuple[int, int]], Optional[tuple[bool, tuple[int, int]]]]


def wait_until_writable(ledger: Ledger, placement: Placement, ask: Ask, progress: Callable[[], None], *,
                        strict: bool = True, attempts: Optional[int] = MAX_POLLS, deadline_s: Optional[float] = None,
                        meanwhile: Callable[[], None] = lambda: None, must: bool = True) -> bool:
    """Offer the writer the watermark until it may write; between refusals ``progress()`` lets the scheduler
    poll older owners.  Every answer is judged (safety; liveness when ``strict``).  Returns whether the writer
    may write (False: it is gone, or it gave up after ``attempts`` when not ``must``); raises when it ``must``
    and never may within ``attempts`` (or ``deadline_s`` seconds, checking ``meanwhile`` on each round: a
    leaked region would block it forever)."""
    started = time.monotonic()
    attempt = 0
    while True:
        answer = ask(ledger.watermark())
        ledger.raise_if_violated()
        if answer is None:
            return False
        may_write, heard = answer
        ledger.judge_writer(placement, heard, may_write, strict)
        if may_write:
            return True
        attempt += 1
        if attempts is not None and attempt >= attempts:
            if not must:
                return False
            raise InvariantViolation(f"writer of {placement} never became writable after {attempts} polls; "
                                     f"live: {ledger.live()}")
        if deadline_s is not None and time.monotonic() - started > deadline_s:
            raise InvariantViolation(f"writer of {placement} waited {deadline_s}s; live: {ledger.live()} (liveness)")
        meanwhile()
        progress()


#: Gather buffers kept for reuse, by (bytes, device): most recent last.
_GATHER_BUFFERS: dict[tuple[int, str], Guarded] = {}
KEPT_GATHER_BUFFERS = 32


def _gather_buffer(nbytes: int, device: Any) -> Guarded:
    """A canary-filled guarded buffer of ``nbytes``: a kept one refilled (as fresh as a new one; under process
    isolation its storage already crossed to the worker, so it is not shared again), or a new one."""
    key = (nbytes, str(device))
    buf = _GATHER_BUFFERS.pop(key, None)
    if buf is None:
        buf = Guarded(nbytes, device)
    else:
        buf.whole.fill_(CANARY_BYTE)
    _GATHER_BUFFERS[key] = buf
    while len(_GATHER_BUFFERS) > KEPT_GATHER_BUFFERS:
        _GATHER_BUFFERS.pop(next(iter(_GATHER_BUFFERS)))
    return buf


def gather(impl: Any, source, plan: WriterPlan, page_size: int, prefix_len: int, geometry: tuple[int, int, int],
           nbytes: int, device, reuse: bool = False) -> Guarded:
    """Writer ``plan``'s bytes of one chunk, gathered by the implementation from prefill pool ``source`` into a
    buffer of its own whose canary margins must survive.  ``reuse``: the caller is done with the bytes before
    its next gather (it copies them at once), so the buffer may be a kept one, refilled with canary."""
    page_start, _, tokens = geometry
    buf = _gather_buffer(nbytes, device) if reuse else Guarded(nbytes, device)
    impl.gather(source.k, source.v, source.page_table[prefix_len // page_size + page_start:], page_size, tokens,
                plan.source_start, plan.count, buf.inner)
    buf.check_margins(f"gather of writer {plan.slot}")
    return buf
