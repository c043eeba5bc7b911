"""Which process rank plays which prefill or decode rank of a topology.

Prefill pools (index ``pp_stage * prefill_tp + tp_rank``) take process ranks
``0 .. n_prefill-1`` and decode pools the ranks right after them, so with one
GPU per rank prefill and decode never share a GPU.  Ranks beyond the
topology's need are idle for that case: they only join the result gather.
"""

from __future__ import annotations

from dataclasses import dataclass

PREFILL, DECODE, IDLE = "prefill", "decode", "idle"


@dataclass(frozen=True)
class RankRoles:
    """Process-rank layout of one topology inside a group of ``world_size`` processes."""

    prefill_ranks: int  # prefill_tp * prefill_pp
    decode_ranks: int   # decode_tp * decode_pp
    world_size: int

    @classmethod
    def of(cls, topology, world_size: int) -> RankRoles:
        roles = cls(topology.prefill_tp * topology.prefill_pp, topology.decode_tp * topology.decode_pp, world_size)
        if roles.needed > world_size:
            raise ValueError(
                f"topology P={topology.prefill_tp}x{topology.prefill_pp}pp D={topology.decode_tp}x{topology.decode_pp}pp "
                f"needs {roles.needed} ranks; the process group has {world_size}")
        return roles

    @property
    def needed(self) -> int:
        return self.prefill_ranks + self.decode_ranks

    def role_of(self, rank: int) -> tuple[str, int]:
        """``(role, pool index)``; the index is -1 for an idle rank."""
        if rank < self.prefill_ranks:
            return PREFILL, rank
        if rank < self.needed:
            return DECODE, rank - self.prefill_ranks
        return IDLE, -1

    def prefill_rank(self, index: int) -> int:
        return index

    def decode_rank(self, index: int) -> int:
        return self.prefill_ranks + index


def ranks_needed(topology) -> int:
    """Processes a topology needs: every prefill and every decode rank of every PP stage."""
    return topology.prefill_tp * topology.prefill_pp + topology.decode_tp * topology.decode_pp
