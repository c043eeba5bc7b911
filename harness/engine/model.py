"""What the harness knows of each request on a rank, and how a polled state is judged against it.

A request may fail only for a cause (misaligned prefix, oversized chunk, abort, timeout); a done or failed
request stays so; done means every chunk's every writer slot arrived and prefill finished.  Bookkeeping is
recorded before the implementation is told, so a fast implementation (or a second thread) is never judged
against a stale model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from harness import case_classes
from harness.engine.ledger import Placement
from harness.engine.shapes import RequestPlan
from harness.interface import DONE, FAILED, PENDING
from harness.oracles import InvariantViolation


@dataclass
class Tracked:
    """One request; mutated only before the implementation is told."""

    rid: int
    plan: RequestPlan
    receiver: Any
    staged: bool
    page_table: torch.Tensor
    slots: torch.Tensor          # pool slot of each token
    truth: torch.Tensor          # [K/V, layer, token, head, dim] of the rank's heads and layers, integer view
    grid: list[tuple[int, int, int]]
    registered_at: float
    gathered: bool = False       # writers gather from prefill pools (a World) instead of packing ground truth
    placed: dict[int, Placement] = field(default_factory=dict)
    spans: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    written: dict[int, set[int]] = field(default_factory=dict)
    arrived: dict[int, set[int]] = field(default_factory=dict)
    dead_writers: set[tuple[int, int]] = field(default_factory=set)
    prefill_done: bool = False
    cause: str = ""              # why it may fail
    complete_at_cause: bool = False
    observed: str = PENDING
    released: bool = False       # set before release is called
    release_returned: bool = False

    def __post_init__(self) -> None:
        for chunk in range(len(self.grid)):
            self.written.setdefault(chunk, set())
            self.arrived.setdefault(chunk, set())

    def describe(self) -> str:
        return f"request {self.rid} ({'staged' if self.staged else 'plain'}, {self.plan})"


class RequestModel:
    """The requests of one rank with ``num_writers`` writer slots per chunk and a ``timeout_s`` handler timeout."""

    def __init__(self, num_writers: int, timeout_s: float) -> None:
        self.num_writers, self.timeout_s = num_writers, timeout_s
        self.requests: dict[int, Tracked] = {}

    def complete(self, t: Tracked) -> bool:
        """Everything needed for done was sent: prefill finished and every chunk's every slot arrived."""
        if not t.prefill_done:
            return False
        return not t.staged or all(len(t.arrived[c]) == self.num_writers for c in range(len(t.grid)))

    def set_cause(self, t: Tracked, cause: str) -> None:
        if not t.cause:
            t.cause, t.complete_at_cause = cause, self.complete(t)
            case_classes.record("fault", cause)

    def judge(self, t: Tracked, state: str, now: float, settled: bool, polls: int, reason: Callable[[], str]) -> None:
        """A polled state must follow from what was sent and which faults hit the request."""
        where = t.describe()
        if now - t.registered_at > self.timeout_s:
            self.set_cause(t, "timed out")
        if t.observed != PENDING and state != t.observed:
            raise InvariantViolation(f"{where} went from {t.observed!r} to {state!r}")
        if state == DONE:
            if not self.complete(t):
                raise InvariantViolation(f"{where} reported done before it was complete "
                                         f"(arrived {dict(t.arrived)}, prefill done: {t.prefill_done})")
            if t.cause and not t.complete_at_cause and t.cause != "timed out":  # data that beat the timeout may count
                raise InvariantViolation(f"{where} reported done although it was {t.cause} before completing")
        elif state == FAILED:
            if not t.cause:
                raise InvariantViolation(f"{where} failed without a cause: {reason() or 'no reason given'}")
        elif settled and t.cause and not (t.complete_at_cause or (t.cause == "timed out" and self.complete(t))):
            raise InvariantViolation(f"{where} still pending after it was {t.cause}")
        elif settled and self.complete(t):
            raise InvariantViolation(f"{where} is complete (every slot arrived, prefill done) but still "
                                     f"pending after {polls} polls")
        t.observed = state

    def freed_early(self, placement: Placement) -> str:
        """Why freeing ``placement`` now is a violation, or ``""``: a region may be freed once its chunk was
        scattered, or once its request failed or was released."""
        if placement.owner is None:
            return ""
        rid, chunk = placement.owner
        t = self.requests[rid]
        if len(t.arrived[chunk]) < self.num_writers and not (t.cause or t.released or t.observed != PENDING):
            return (f"the region of request {rid} chunk {chunk} was freed while the request is pending and the "
                    f"chunk still waits for writers (slots {sorted(t.arrived[chunk])} of {self.num_writers} arrived)")
        return ""
