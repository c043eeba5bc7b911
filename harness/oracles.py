"""Ground truth for the invariants, derived from first principles.

Nothing here calls the implementation under test (or the reference): head
ownership is re-derived from the TP split rule, head slices from the
intersection of the two ranks' global heads, layouts from byte arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ExpectedBytes:
    """What a tensor handed to the implementation must hold, as the oracle derived it from ground truth:
    ``expected``'s bytes (same shape and dtype as ``actual``) at the ``rows`` of dim 0 (a bool mask; ``None``: all).

    Carried by a violation for the standalone repro (``harness.repro``), which checks the same bytes."""

    actual: Any
    expected: Any
    rows: Any = None


class InvariantViolation(AssertionError):
    """An implementation broke an invariant; the message says how.

    Which invariant is not typed by whoever raises it: the test's ``invariant`` marker decides, and
    :func:`attribute` (called by the pytest plugin) prefixes the message with ``[<id>]``, so a message and
    its report row cannot disagree.
    """

    invariant: str | None = None
    #: The expected bytes of the tensors whose check failed, when the check compares bytes.
    expected: tuple[ExpectedBytes, ...] = ()

    def expecting(self, *expected: ExpectedBytes) -> "InvariantViolation":
        """This violation, carrying the expected bytes of the check that failed (``raise V(msg).expecting(...)``)."""
        self.expected = tuple(expected)
        return self


def attribute(exc: BaseException, invariant: str) -> None:
    """Tag every ``InvariantViolation`` in ``exc`` (and in its exception group members) with ``invariant``:
    its message then starts with ``[<invariant>] ``.  Idempotent; other exceptions are left alone."""
    if isinstance(exc, InvariantViolation) and exc.invariant is None:
        exc.invariant = invariant
        first = str(exc.args[0]) if exc.args else ""
        exc.args = (f"[{invariant}] {first}", *exc.args[1:])
    for member in getattr(exc, "exceptions", ()) or ():
        if isinstance(member, BaseException):
            attribute(member, invariant)


def owned_heads(total_kv_heads: int, tp_size: int, rank: int) -> list[int]:
    """Global heads rank ``rank`` must hold: contiguous blocks, or one head shared by consecutive ranks."""
    if tp_size <= total_kv_heads:
        block = total_kv_heads // tp_size
        return list(range(rank * block, rank * block + block))
    ranks_per_head = tp_size // total_kv_heads
    return [rank // ranks_per_head]


def source_ranks(total_kv_heads: int, prefill_tp: int, decode_tp: int, decode_rank: int) -> list[int]:
    """Prefill ranks feeding ``decode_rank``, in writer-slot order.

    With P > D the block of P/D consecutive prefill ranks; with P <= D the one
    prefill rank whose heads contain the decode rank's heads, ``d // (D/P)``.
    """
    if prefill_tp > decode_tp:
        ratio = prefill_tp // decode_tp
        return list(range(decode_rank * ratio, (decode_rank + 1) * ratio))
    return [decode_rank // (decode_tp // prefill_tp)]


@dataclass(frozen=True)
class ExpectedSlice:
    source_start: int
    count: int
    destination_start: int
    global_heads: tuple[int, ...]


def expected_slice(total_kv_heads: int, prefill_tp: int, decode_tp: int, prefill_rank: int, decode_rank: int) -> ExpectedSlice:
    """The heads both ranks hold, as local offsets on each side."""
    src = owned_heads(total_kv_heads, prefill_tp, prefill_rank)
    dst = owned_heads(total_kv_heads, decode_tp, decode_rank)
    shared = [h for h in src if h in dst]
    if not shared:
        raise InvariantViolation(f"prefill rank {prefill_rank} holds {src}, decode rank {decode_rank} holds {dst}: nothing to send")
    return ExpectedSlice(src.index(shared[0]), len(shared), dst.index(shared[0]), tuple(shared))


def expected_spans(num_writers: int, num_tokens: int, heads: int, layers: int, head_dim: int, element_size: int) -> list[tuple[int, int]]:
    """Writer spans of ``[writer][K,V][layer][token][head][dim]``."""
    nbytes = 2 * layers * num_tokens * heads * head_dim * element_size
    return [(w * nbytes, nbytes) for w in range(num_writers)]


def expects_staging(receiver: Any) -> bool:
    """Staged iff ``require_staging`` exists and is truthy; anything unreadable means plain."""
    try:
        return bool(getattr(receiver, "require_staging"))
    except Exception:
        return False


def chunk_grid(prefix_len: int, num_tokens: int, page_size: int, chunk_pages: int) -> list[tuple[int, int, int]]:
    """``(page_start, num_pages, num_tokens)`` of each chunk; pages counted after the prefix."""
    suffix = num_tokens - prefix_len
    pages = -(-suffix // page_size)
    return [
        (start, min(chunk_pages, pages - start), min(chunk_pages * page_size, suffix - start * page_size))
        for start in range(0, pages, chunk_pages)
    ]

