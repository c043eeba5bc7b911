"""Who holds which KV head, and which prefill ranks write to which decode rank.

A TP group of size ``T`` over ``H`` KV heads gives each rank ``max(1, H // T)``
heads.  When ``T > H`` heads are replicated on ``T // H`` *consecutive* ranks,
so rank ``r`` holds head ``r // (T // H)`` (never ``r % H``).
"""

from __future__ import annotations

from dataclasses import dataclass


def _check_group(name: str, total_kv_heads: int, tp_size: int) -> None:
    if tp_size < 1:
        raise ValueError(f"{name} TP size must be >= 1, got {tp_size}")
    if total_kv_heads % tp_size and tp_size % total_kv_heads:
        raise ValueError(
            f"{name} TP size {tp_size} and total KV heads {total_kv_heads} must divide one another "
            f"(heads are split evenly when TP <= heads and replicated when TP > heads); "
            f"use a {name} TP size that divides {total_kv_heads} or is a multiple of it"
        )


@dataclass(frozen=True)
class TpTopology:
    """A validated prefill/decode parallel layout.

    Construction refuses, with a ValueError saying what to change, any layout
    whose head split is not exact: sizes < 1, a TP size that neither divides
    nor is divided by the head count, TP sizes that are not multiples of one
    another, or a decode PP size that does not divide the prefill PP size.
    """

    total_kv_heads: int
    prefill_tp: int
    decode_tp: int
    prefill_pp: int = 1
    decode_pp: int = 1

    def __post_init__(self) -> None:
        if self.total_kv_heads < 1:
            raise ValueError(f"total KV heads must be >= 1, got {self.total_kv_heads}")
        _check_group("prefill", self.total_kv_heads, self.prefill_tp)
        _check_group("decode", self.total_kv_heads, self.decode_tp)
        small, large = sorted((self.prefill_tp, self.decode_tp))
        if large % small:
            raise ValueError(
                f"prefill TP {self.prefill_tp} and decode TP {self.decode_tp} must be multiples of one another "
                f"(each decode rank is fed by whole prefill ranks, or shares one)"
            )
        if self.prefill_pp < 1 or self.decode_pp < 1:
            raise ValueError(f"PP sizes must be >= 1, got prefill {self.prefill_pp}, decode {self.decode_pp}")
        if self.prefill_pp % self.decode_pp:
            raise ValueError(
                f"decode PP size {self.decode_pp} must divide prefill PP size {self.prefill_pp} "
                f"(each decode stage is fed by whole prefill stages)"
            )

    # -- heads per rank -------------------------------------------------------------
    def heads_per_rank(self, tp_size: int) -> int:
        """Heads held by one rank of a group of ``tp_size``: ``max(1, H // T)``."""
        return max(1, self.total_kv_heads // tp_size)

    def replication(self, tp_size: int) -> int:
        """How many consecutive ranks share each head: ``max(1, T // H)``."""
        return max(1, tp_size // self.total_kv_heads)

    def heads_of_rank(self, tp_size: int, rank: int) -> range:
        """Global heads of ``rank``: an even split, or ``rank // replication`` when replicated."""
        if not 0 <= rank < tp_size:
            raise ValueError(f"rank {rank} is outside a TP group of size {tp_size}")
        per_rank = self.heads_per_rank(tp_size)
        first = (rank // self.replication(tp_size)) * per_rank
        return range(first, first + per_rank)

    # -- writers --------------------------------------------------------------------
    @property
    def tp_writers(self) -> int:
        """Prefill TP ranks feeding one decode rank: ``P // D`` when P > D, else 1."""
        return max(1, self.prefill_tp // self.decode_tp)

    @property
    def pp_writers(self) -> int:
        """Prefill PP stages feeding one decode PP stage."""
        return self.prefill_pp // self.decode_pp

    @property
    def writer_slots(self) -> int:
        """Writer slots of one decode chunk: every (PP stage, TP writer) pair."""
        return self.tp_writers * self.pp_writers

    def writers_of_decode_rank(self, decode_rank: int) -> range:
        """Prefill TP ranks writing to ``decode_rank``; position in the range is the writer slot."""
        if not 0 <= decode_rank < self.decode_tp:
            raise ValueError(f"decode rank {decode_rank} is outside decode TP size {self.decode_tp}")
        if self.prefill_tp > self.decode_tp:
            first = decode_rank * self.tp_writers
            return range(first, first + self.tp_writers)
        source = decode_rank // (self.decode_tp // self.prefill_tp)
        return range(source, source + 1)

    def head_slice(self, prefill_rank: int, decode_rank: int) -> "HeadSlice":
        """The local head range ``prefill_rank`` sends to ``decode_rank``.

        Upholds: the source range lies inside the prefill rank's heads, the
        destination range inside the decode rank's heads, and both name the
        same global heads.
        """
        if prefill_rank not in self.writers_of_decode_rank(decode_rank):
            raise ValueError(f"prefill rank {prefill_rank} does not write to decode rank {decode_rank}")
        src_heads = self.heads_per_rank(self.prefill_tp)
        dst_heads = self.heads_per_rank(self.decode_tp)
        if self.prefill_tp > self.decode_tp:
            unique = prefill_rank // self.replication(self.prefill_tp)
            return HeadSlice(0, src_heads, (unique * src_heads) % dst_heads)
        unique = decode_rank // self.replication(self.decode_tp)
        return HeadSlice((unique * dst_heads) % src_heads, dst_heads, 0)


@dataclass(frozen=True)
class HeadSlice:
    """Local head indices of one prefill → decode transfer."""

    source_start: int
    count: int
    destination_start: int
