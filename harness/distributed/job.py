"""One case for the process group: what every rank needs to play its part, picklable.

Every rank rebuilds the same :class:`~harness.world.World` from ``case`` (its
seed makes the ground truth deterministic) and loads the implementation from
``impl_spec`` itself, so nothing but this small description crosses process
boundaries before the KV bytes do.
"""

from __future__ import annotations

from dataclasses import dataclass

from strategies.cases import TransferCase

#: One decode rank's "chunk ready" events: ``(chunk, writer slot)``, duplicates allowed.
ArrivalOrder = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class CaseJob:
    """A transfer case to run on the group.

    ``slack``: the decode staging ring holds the largest chunk this many times
    (1 makes every chunk wrap).  ``arrival_orders``: per decode pool index, the
    order its writers' chunks arrive in (``None``: chunk after chunk, slots in
    order); an out-of-order schedule needs a ring holding every chunk at once,
    or writers of later chunks wait on earlier ones forever.
    """

    case: TransferCase
    impl_spec: str
    slack: int = 1
    arrival_orders: tuple[ArrivalOrder, ...] | None = None
    request_id: int = 1

    def __post_init__(self) -> None:
        if self.slack < 1:
            raise ValueError(f"slack must be >= 1 (ring capacity in largest chunks), got {self.slack}")
        if not isinstance(self.impl_spec, str) or not self.impl_spec.strip():
            raise ValueError("impl_spec must name the implementation (e.g. 'reference' or 'pkg.mod:factory')")
        if self.arrival_orders is not None:
            decode_ranks = self.case.topology.decode_tp * self.case.topology.decode_pp
            if len(self.arrival_orders) != decode_ranks:
                raise ValueError(f"arrival_orders has {len(self.arrival_orders)} orders; the topology has "
                                 f"{decode_ranks} decode ranks (one order each)")


@dataclass(frozen=True)
class NumberedJob:
    """A job as sent to the workers: the group numbers them so stale answers are recognised."""

    job_id: int
    job: CaseJob
