"""The rank process: join the process group once, then run every case the parent sends.

Started by :class:`harness.distributed.group.WorkerGroup` (forked from the
forkserver, ``spawn`` where there is none; one process per rank).  Messages to the parent go through one shared queue:
``Ready`` once the group works (a chain of point-to-point probes has crossed
the data plane), a ``CaseReport`` from rank 0 per case (every rank's result,
gathered to it), and ``Fatal`` when this rank's group broke; the rank then
exits, and the parent tears the others down.  A rank also exits when its
parent dies (``PR_SET_PDEATHSIG`` where Linux offers it, else a parent-pid
check while idle), so no rank outlives the run.
"""

from __future__ import annotations

import ctypes
import os
import queue
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional

from harness.distributed.config import DistributedConfig

#: Multicast (NVLS) off: the suite only sends point to point; multicast can take shared GPUs down.
NO_MULTICAST_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
#: Seconds between parent-liveness checks while waiting for a job.
IDLE_POLL_S = 1.0


@dataclass(frozen=True)
class Ready:
    rank: int
    device: str
    seconds: float  # from process start to a working group


@dataclass(frozen=True)
class Fatal:
    rank: int
    job_id: int  # -1 outside a job (start-up)
    message: str


@dataclass(frozen=True)
class Stop:
    """Sent by the parent: leave the group and exit."""


@dataclass(frozen=True)
class WorkerArgs:
    rank: int
    world_size: int
    store_host: str
    store_port: int
    config: DistributedConfig
    device: str
    parent_pid: int
    #: The parent's environment when it started the rank: a rank forked from the forkserver would otherwise see
    #: the server's, from when it started (``None``: keep the process's own).
    environ: Optional[dict] = None


def main(args: WorkerArgs, jobs: Any, results: Any) -> None:
    """Process entry point: never raises; reports a broken group as ``Fatal`` and exits non-zero."""
    started = time.perf_counter()
    _die_with_parent()
    if os.getppid() != args.parent_pid:  # the parent died before the request took effect
        os._exit(4)
    if args.environ is not None:
        os.environ.clear()
        os.environ.update(args.environ)
    os.environ.update(NO_MULTICAST_ENV)
    job_id = -1
    try:
        import torch

        torch.set_num_threads(1)  # ranks share the machine's cores
        transport = _join_group(args)
        _probe_data_plane(args, transport)
        results.put(Ready(args.rank, args.device, time.perf_counter() - started))
        impls: dict[str, Any] = {}
        while True:
            message = _next_job(args, jobs)
            if message is None or isinstance(message, Stop):
                break
            job_id = message.job_id
            _run_job(args, transport, message, impls, results)
            job_id = -1
    except BaseException as exc:  # the group is unusable: say why, then leave
        results.put(Fatal(args.rank, job_id, _fatal_text(exc)))
        _exit_now(results, 3)  # skips torch.distributed teardown, which may hang on a broken group
    _leave_group()
    _exit_now(results, 0)


def _exit_now(results, code: int) -> None:
    """Deliver queued messages, then exit without the interpreter's slow teardown (seconds with torch loaded)."""
    results.close()
    results.join_thread()  # the queue's feeder thread must deliver the last message first
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _join_group(args: WorkerArgs):
    import torch
    import torch.distributed as dist

    from harness.distributed.transport import Transport

    config = args.config
    timeout = timedelta(seconds=config.op_timeout_s)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    store = dist.TCPStore(args.store_host, args.store_port, None, is_master=False,
                          timeout=timedelta(seconds=config.start_timeout_s))
    _await_all_ranks(store, args)
    dist.init_process_group(config.backend, store=store, rank=args.rank, world_size=args.world_size, timeout=timeout,
                            device_id=device if config.backend == "nccl" else None)  # None: torch's default
    control = dist.new_group(backend="gloo", timeout=timeout) if config.backend != "gloo" else dist.group.WORLD
    return Transport(args.rank, dist.group.WORLD, control, config.op_timeout_s, config.stages_through_host)


def _await_all_ranks(store, args: WorkerArgs) -> None:
    """Wait (up to the start timeout) until every rank reached the store, so that the group's own
    rendezvous, bounded by the shorter operation timeout, never waits on a rank still importing torch."""
    arrived_key = "kvconform/arrived"
    store.add(arrived_key, 1)
    deadline = time.monotonic() + args.config.start_timeout_s
    while (arrived := store.add(arrived_key, 0)) < args.world_size:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {arrived} of {args.world_size} ranks reached the rendezvous store within "
                               f"{args.config.start_timeout_s:g}s (machine overloaded?)")
        time.sleep(0.05)


def _probe_data_plane(args: WorkerArgs, transport) -> None:
    """Pass a few bytes along the chain 0 -> 1 -> ... -> W-1 so a refusing backend fails at start, not mid-case."""
    import torch

    token = torch.arange(8, dtype=torch.uint8, device=args.device)
    if args.rank > 0:
        got = torch.zeros(8, dtype=torch.uint8, device=args.device)
        transport.recv_bytes(got, args.rank - 1, "start-up probe")
        if not torch.equal(got, token):
            raise RuntimeError(f"start-up probe from rank {args.rank - 1} arrived corrupted: {got.tolist()}")
    if args.rank + 1 < args.world_size:
        transport.send_bytes(token, args.rank + 1, "start-up probe")


def _run_job(args: WorkerArgs, transport, numbered, impls: dict, results) -> None:
    """This rank's part of one case, then the gather of every rank's result to rank 0."""
    from harness.distributed.ranks import describe, run_case
    from harness.distributed.results import ERROR, CaseReport, RankResult
    from harness.distributed.transport import TransportError
    from harness.guard import guard
    from harness.loading import load_implementation

    def load(spec: str) -> Any:
        if spec not in impls:  # every call with the guard's deadline: a hang is a "hung" failure of this rank;
            # exceptions pass unchanged (a rank reports a raising implementation as its own "error" outcome)
            impls[spec] = guard(load_implementation(spec).implementation, convert_errors=False)
        return impls[spec]

    started = time.perf_counter()
    try:
        result = run_case(numbered.job, args.rank, args.device, transport, args.world_size, load)
    except TransportError:
        raise
    except Exception as exc:  # outside any exchange (e.g. a topology too large): every rank fails alike
        result = RankResult(args.rank, "unknown", -1, args.device, ERROR, describe(exc))
    gathered = transport.gather_to_first(result, f"results of job {numbered.job_id}")
    if args.rank == 0:
        results.put(CaseReport(numbered.job_id, tuple(gathered), time.perf_counter() - started))


def _next_job(args: WorkerArgs, jobs):
    """The next message from the parent, or ``None`` once the parent is gone."""
    while True:
        try:
            return jobs.get(timeout=IDLE_POLL_S)
        except queue.Empty:
            if os.getppid() != args.parent_pid:
                return None


def _die_with_parent() -> None:
    """Ask Linux to kill this process when the parent dies (best effort elsewhere)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _leave_group() -> None:
    try:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    except Exception:
        pass


def _fatal_text(exc: BaseException) -> str:
    """One readable line: a TransportError already says what and with whom; anything else gets its location."""
    from harness.distributed.transport import TransportError

    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    frames = traceback.extract_tb(exc.__traceback__)
    if frames and not isinstance(exc, TransportError):
        last = frames[-1]
        text += f" (at {last.filename}:{last.lineno} in {last.name})"
    return text
