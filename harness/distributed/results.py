"""What each rank found, gathered to rank 0 and handed to the parent as one report.

A rank's outcome is ``pass``, ``violation`` (an invariant broke: the message
starts with its ``[invariant]`` tag), ``error`` (the implementation raised),
``peer_failed`` (this rank could not finish because a rank it talks to
failed first: a consequence, not a finding) or ``idle`` (no part in the case).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.oracles import InvariantViolation

PASS, VIOLATION, ERROR, PEER_FAILED, IDLE = "pass", "violation", "error", "peer_failed", "idle"
#: Outcomes that are findings about the implementation.
PRIMARY = (VIOLATION, ERROR)


class DistributedFailure(RuntimeError):
    """The process group itself failed (a rank died, an operation or the whole case timed out).

    Not a finding about the implementation's invariants; the group was torn
    down and the next case starts a fresh one.
    """


class RankError(AssertionError):
    """The implementation raised on some rank; the message names the rank and carries its traceback's last line."""


@dataclass(frozen=True)
class RankResult:
    """One rank's verdict on one case."""

    rank: int
    role: str          # prefill, decode or idle
    index: int         # pool index of its role, -1 when idle
    device: str
    outcome: str
    message: str = ""
    payload_bytes: int = 0    # KV bytes this rank received (decode) or sent (prefill)
    transfer_s: float = 0.0   # time spent receiving them (decode)

    @property
    def where(self) -> str:
        what = f"{self.role} {self.index}" if self.index >= 0 else self.role
        return f"rank {self.rank} ({what}, {self.device})"


@dataclass(frozen=True)
class CaseReport:
    """Every rank's result for one case, as rank 0 gathered them."""

    job_id: int
    results: tuple[RankResult, ...]
    wall_s: float = 0.0
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def primary(self) -> list[RankResult]:
        return [r for r in self.results if r.outcome in PRIMARY]

    @property
    def passed(self) -> bool:
        return all(r.outcome in (PASS, IDLE) for r in self.results)

    @property
    def payload_bytes(self) -> int:
        return sum(r.payload_bytes for r in self.results if r.role == "decode")

    def bandwidth_gbps(self) -> float:
        """Received payload bytes over receive time, summed over decode ranks (0 when nothing moved)."""
        seconds = sum(r.transfer_s for r in self.results if r.role == "decode")
        return self.payload_bytes / seconds / 1e9 if seconds > 0 else 0.0

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for r in self.results:
            counts[r.outcome] = counts.get(r.outcome, 0) + 1
        return ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))

    def raise_if_failed(self) -> None:
        """Raise the first finding (an InvariantViolation, or RankError for an exception); list the others."""
        if self.passed:
            return
        findings = self.primary
        others = [r for r in self.results if r.outcome not in (PASS, IDLE)]
        if not findings:  # only consequences: say so rather than invent a culprit
            raise DistributedFailure("ranks failed without a finding: " + "; ".join(f"{r.where}: {r.message}" for r in others))
        first = findings[0]
        text = _located(first)
        rest = [r for r in others if r is not first]
        if rest:
            text += "\nother ranks: " + "; ".join(f"{r.where} {r.outcome}: {r.message.splitlines()[0] if r.message else ''}"
                                                  for r in rest)
        raise (InvariantViolation if first.outcome == VIOLATION else RankError)(text)


def _located(result: RankResult) -> str:
    """A finding, prefixed with where it happened (the invariant is attributed by the test's marker)."""
    return f"{result.where}: {result.message}"