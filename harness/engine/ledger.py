"""The allocation ledger: the implementation's allocator, watched.  It *is* the allocator oracle.

Every allocator rule of the catalogue is judged here and nowhere else, whether the allocator is driven
alone (``test_allocator``) or by a decode handler (every rank test, in process and distributed):

* ``assign`` refuses exactly what does not fit, and places what it accepts inside the ring;
* the watermark never moves back and never passes the oldest live data;
* a writer allowed to write never overlaps older live data (safety), and a writer is never kept
  waiting when nothing older is live (liveness);
* bytes a writer wrote into a live region are not overwritten by anyone else before it is freed;
* once everything is freed the whole ring is one writable allocation at offset 0.

Violations seen while the implementation calls in (the handler calls ``assign``/``free``) are recorded,
not raised inside its code, and surface at the next :meth:`Ledger.raise_if_violated`.  A freed region
(the part no other live allocation overlaps) is scribbled *before* the allocator learns it is free, so
its next user never races the scribble; on CUDA from a stream of its own, so a region freed while a
scatter still reads it corrupts the pool, visibly.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from harness import case_classes
from harness.engine.buffers import SCRIBBLE_BYTE
from harness.oracles import InvariantViolation

HISTORY = 24  # allocator operations a violation message lists


@dataclass
class Placement:
    """One accepted ``assign``; ``order`` is assignment order (lower is older)."""

    alloc_id: int
    offset: int
    nbytes: int
    round: int
    order: int
    owner: Optional[tuple[int, int]] = None  # (request, chunk) once allocate_chunk answered it
    live: bool = True
    written: bool = False

    @property
    def end(self) -> int:
        return self.offset + self.nbytes

    def overlaps(self, other: "Placement") -> bool:
        return self.offset < other.end and other.offset < self.end


class Ledger:
    """The allocator a handler is given: the implementation's, with a ledger and the allocator rules.

    ``ring`` (optional) is scribbled where freed; without it only the rules are judged.
    """

    def __init__(self, inner: Any, capacity: int, ring: Optional[torch.Tensor] = None) -> None:
        self.inner, self.capacity, self.ring = inner, capacity, ring
        self.ledger: list[Placement] = []
        self.violations: list[str] = []
        self.history: collections.deque = collections.deque(maxlen=HISTORY)
        self.last_watermark: tuple[int, int] = (0, 0)
        self.on_free: Optional[Callable[[Placement], None]] = None  # called (under the lock) per freed placement
        self._owner = torch.full((capacity,), -1, dtype=torch.int64)  # which placement's writer last wrote a byte
        self._wrote: dict[int, list[tuple[int, int]]] = {}  # placement order -> byte ranges its writers wrote
        self._lock = threading.RLock()
        self._scribble_stream = torch.cuda.Stream(device=ring.device) if ring is not None and ring.is_cuda else None

    @property
    def streams(self) -> tuple[torch.cuda.Stream, ...]:
        """The CUDA streams the ledger itself writes the ring from (none on CPU)."""
        return () if self._scribble_stream is None else (self._scribble_stream,)

    # -- the allocator interface -----------------------------------------------------------
    def assign(self, nbytes: int):
        placed = self.inner.assign(nbytes)
        with self._lock:
            self.history.append(f"assign({nbytes}) -> {placed}")
            if placed is None:
                if nbytes <= self.capacity:
                    self._violate(f"assign({nbytes}) refused although it fits the {self.capacity}-byte ring")
                else:
                    case_classes.record("fault", "oversized chunk")
                return None
            alloc_id, offset, rnd = (int(x) for x in placed)
            if nbytes > self.capacity:
                self._violate(f"assign({nbytes}) on a {self.capacity}-byte ring answered {placed} instead of refusing")
            elif offset < 0 or offset + nbytes > self.capacity:
                self._violate(f"assign({nbytes}) placed bytes [{offset}, {offset + nbytes}) outside the "
                              f"{self.capacity}-byte ring")
            self.ledger.append(Placement(alloc_id, offset, nbytes, rnd, len(self.ledger)))
            case_classes.record("ring wrap", "yes" if rnd != self.ledger[0].round else "no")
            case_classes.record("live allocations", case_classes.LIVE_ALLOCATIONS(len(self.live())))
        return placed

    def free(self, alloc_id: int) -> None:
        with self._lock:
            self.history.append(f"free({alloc_id})")
            dying = [p for p in self.ledger if p.live and p.alloc_id == alloc_id]
            for p in dying:
                p.live = False
                if self.on_free is not None:
                    self.on_free(p)
            spans = [span for p in dying for span in self._unshared(p)]
        self._scribble(spans)
        self.inner.free(alloc_id)
        self.watermark()

    def watermark(self) -> tuple[int, int]:
        """The allocator's watermark, judged: never backwards, never past the oldest live allocation."""
        with self._lock:  # read and judged atomically: another thread's newer read must not look like a step back
            round_, tail = (int(x) for x in self.inner.watermark())
            wm = (round_, tail)
            if wm < self.last_watermark:
                self._violate(f"watermark moved backwards from {self.last_watermark} to {wm}")
            ahead = [p for p in self.ledger if p.live and wm > (p.round, p.offset)]
            if ahead:
                self._violate(f"watermark {wm} is ahead of live allocation {ahead[0]}")
            self.last_watermark = max(self.last_watermark, wm)
        return wm

    # -- queries ---------------------------------------------------------------------------
    def live(self) -> list[Placement]:
        with self._lock:
            return [p for p in self.ledger if p.live]

    def older_live(self, placement: Placement) -> list[Placement]:
        with self._lock:
            return [p for p in self.ledger if p.live and p.order < placement.order]

    def placement_of(self, answer: tuple[int, int, int], nbytes: int) -> Optional[Placement]:
        """The newest placement (live or not) matching an ``allocate_chunk`` answer ``(offset, round, end)``."""
        offset, rnd, end = answer
        with self._lock:
            return next((p for p in reversed(self.ledger)
                         if (p.offset, p.round, p.end) == (offset, rnd, end) and p.nbytes == nbytes), None)

    # -- writers ---------------------------------------------------------------------------
    def judge_writer(self, placement: Placement, heard: tuple[int, int], may_write: bool, strict: bool = True) -> None:
        """A writer of ``placement`` that heard watermark ``heard`` was told ``may_write``.

        Safety always: allowed, it must not overlap older live data.  Liveness when ``strict`` (nobody else
        can free meanwhile): refused, something older must still be live.
        """
        older = self.older_live(placement)
        if may_write:
            clash = [p for p in older if p.overlaps(placement)]
            if clash:
                self.fail(f"writer allowed to write {placement} under watermark {heard} while older live "
                          f"{clash[0]} overlaps it (safety)")
        elif strict and not older:
            self.fail(f"writer kept waiting for {placement} under watermark {heard} although nothing older is "
                      f"live (liveness)")

    def wrote(self, placement: Placement, start: int, nbytes: int) -> None:
        """A writer wrote ring bytes ``[start, start + nbytes)`` of ``placement``."""
        with self._lock:
            placement.written = True
            self._owner[max(0, start):max(0, start + nbytes)] = placement.order
            self._wrote.setdefault(placement.order, []).append((max(0, start), max(0, start + nbytes)))

    def check_written(self) -> None:
        """No byte a writer wrote into a still-live region was overwritten by another region's writer."""
        with self._lock:
            for p in self.ledger:
                if not (p.live and p.written):
                    continue
                for start, end in self._wrote.get(p.order, ()):
                    mine = self._owner[start:end]
                    thieves = mine[mine != p.order]
                    if thieves.numel():
                        self.fail(f"live allocation {p} was overwritten by the writer of {self.ledger[int(thieves[0])]}")

    def check_empty_ring(self, may_write: Callable[[int, int, tuple[int, int]], bool]) -> None:
        """Everything is free: the whole ring is one allocation at offset 0, writable at once; freed again."""
        got = self.assign(self.capacity)
        self.raise_if_violated()
        if got is None or int(got[1]) != 0:
            self.fail(f"after freeing everything, assign({self.capacity}) gave {got}; the ring still holds something")
        wm = self.watermark()
        if not may_write(int(got[2]), self.capacity, wm):
            self.fail(f"after freeing everything, the whole-ring allocation {got} is not writable under {wm}")
        self.free(int(got[0]))

    # -- verdicts --------------------------------------------------------------------------
    def fail(self, message: str) -> None:
        raise InvariantViolation(f"{message}\n  allocator operations so far: {'; '.join(self.history)}")

    def raise_if_violated(self) -> None:
        if self.violations:
            raise InvariantViolation(self.violations[0])

    def _violate(self, message: str) -> None:
        self.violations.append(f"{message}\n  allocator operations so far: {'; '.join(self.history)}")

    # -- internals -------------------------------------------------------------------------
    def _unshared(self, freed: Placement) -> list[tuple[int, int]]:
        """Byte ranges of ``freed`` that no live allocation overlaps (overcommit: older data may still sit there)."""
        spans, cursor = [], max(0, freed.offset)
        for p in sorted((p for p in self.ledger if p.live and p.overlaps(freed)), key=lambda p: p.offset):
            if p.offset > cursor:
                spans.append((cursor, min(p.offset, freed.end)))
            cursor = max(cursor, p.end)
        if cursor < min(freed.end, self.capacity):
            spans.append((cursor, min(freed.end, self.capacity)))
        return spans

    def _scribble(self, spans: list[tuple[int, int]]) -> None:
        """Overwrite freed bytes as their next user may at once (RDMA in production, ordered after no stream of
        the handler's): on CUDA from our own stream, waited for so the next writer never races the scribble."""
        if self.ring is None or not spans:
            return
        if self._scribble_stream is None:
            for start, end in spans:
                self.ring[start:end] = SCRIBBLE_BYTE
            return
        with torch.cuda.stream(self._scribble_stream):
            for start, end in spans:
                self.ring[start:end].fill_(SCRIBBLE_BYTE)
        # Our own wait, often inside a handler call a device test watches for host syncs: not the handler's.
        previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode(0)
        try:
            self._scribble_stream.synchronize()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
