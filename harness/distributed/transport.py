"""Messages between rank processes, every operation bounded by a timeout.

Two planes: small control messages (int64 vectors, result objects) always go
through a gloo group on CPU, so deciding what to do next never waits on a GPU;
KV payloads go through the data group (gloo, or NCCL GPU to GPU).  Payloads
land straight in the receiver's tensor (the decode rank's staging ring at the
allocated offset); with gloo and CUDA tensors they are staged through host
memory, since gloo sends CPU tensors only.

Any failure or timeout of the process group raises :class:`TransportError`:
a gloo pair that timed out is closed by gloo, so the group cannot be trusted
afterwards and the worker gives up the whole group.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

#: Decode -> writer message kinds (first field of an offer).
ABORT, OFFER = 0, 1
#: ``[kind, alloc_offset, alloc_round, alloc_end, wm_round, wm_tail, span_offset, span_nbytes]``
OFFER_FIELDS = 8
#: Writer -> decode reply: ``[writer_ok, may_write, wm_round, wm_tail]`` (the watermark the writer judged by).
REPLY_FIELDS = 4
#: Characters of a backend's error text kept in a TransportError (NCCL's reasons come after its first line).
MAX_DETAIL = 600


class TransportError(RuntimeError):
    """A process-group operation failed or timed out; the group is no longer usable."""


class Transport:
    """Point-to-point and gather operations of one rank, with timeouts and readable failures."""

    def __init__(self, rank: int, data_group: Any, control_group: Any, timeout_s: float, stage_through_host: bool) -> None:
        self.rank = rank
        self.data_group = data_group
        self.control_group = control_group
        self.timeout = timedelta(seconds=timeout_s)
        self.stage_through_host = stage_through_host

    # -- control plane (gloo, CPU) ---------------------------------------------------------
    def send_ints(self, values: Sequence[int], dst: int, what: str) -> None:
        message = torch.tensor(list(values), dtype=torch.int64)
        self._wait(lambda: dist.isend(message, dst, group=self.control_group), f"sending {what} to rank {dst}")

    def recv_ints(self, count: int, src: int, what: str) -> list[int]:
        out = torch.empty(count, dtype=torch.int64)
        self._wait(lambda: dist.irecv(out, src, group=self.control_group), f"receiving {what} from rank {src}")
        return out.tolist()

    def all_gather(self, value: Any, what: str) -> list[Any]:
        """Every rank's ``value``, on every rank (the group's timeout applies)."""
        out: list[Any] = [None] * dist.get_world_size()
        self._call(lambda: dist.all_gather_object(out, value, group=self.control_group), f"all-gathering {what}")
        return out

    def gather_to_first(self, value: Any, what: str) -> list[Any] | None:
        """Every rank's ``value`` on rank 0 (``None`` elsewhere)."""
        out = [None] * dist.get_world_size() if self.rank == 0 else None
        self._call(lambda: dist.gather_object(value, out, dst=0, group=self.control_group), f"gathering {what} to rank 0")
        return out

    # -- data plane ------------------------------------------------------------------------
    def send_bytes(self, payload: torch.Tensor, dst: int, what: str) -> None:
        if self.stage_through_host and payload.is_cuda:
            payload = payload.cpu()
        payload = payload.contiguous()
        self._wait(lambda: dist.isend(payload, dst, group=self.data_group), f"sending {what} to rank {dst}")

    def recv_bytes(self, out: torch.Tensor, src: int, what: str) -> float:
        """Receive into ``out`` (contiguous uint8); returns the seconds the transfer took."""
        start = time.perf_counter()
        if self.stage_through_host and out.is_cuda:
            staged = torch.empty(out.shape, dtype=out.dtype)
            self._wait(lambda: dist.irecv(staged, src, group=self.data_group), f"receiving {what} from rank {src}")
            out.copy_(staged)
        else:
            self._wait(lambda: dist.irecv(out, src, group=self.data_group), f"receiving {what} from rank {src}")
        if out.is_cuda:
            torch.cuda.synchronize(out.device)
        return time.perf_counter() - start

    # -- failures ----------------------------------------------------------------------------
    def _wait(self, start_work, what: str) -> None:
        """Start an isend/irecv and wait for it, at most the timeout."""
        self._call(lambda: start_work().wait(timeout=self.timeout), what)

    def _call(self, operation, what: str) -> None:
        try:
            operation()
        except Exception as exc:
            detail = " ".join(str(exc).split())[:MAX_DETAIL] or type(exc).__name__
            limit = self.timeout.total_seconds()
            raise TransportError(f"rank {self.rank}: {what} failed (timeout {limit:g}s): {detail}") from exc
