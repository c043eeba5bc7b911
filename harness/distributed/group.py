"""The parent's side: start a pool of rank processes once, run many cases on it, tear it down.

Starting processes and a process group costs seconds per rank on a small
machine, while a small case takes milliseconds, so a :class:`WorkerGroup`
keeps ``world_size`` rank processes and their group alive across cases;
a case smaller than the group leaves the extra ranks idle.  The parent is
not a rank: it owns the rendezvous store (bound to port 0, so the operating
system picks a free port and parallel runs never collide), puts each case
on every rank's queue, and waits for rank 0's gathered report.

Failure handling: a rank that reports its group broken, a rank that dies,
or a case outlasting ``job_timeout_s`` tears the whole pool down
(``DistributedFailure`` says which ranks and why) and the next case starts a
fresh one.  ``close()`` (also on ``with`` exit and at interpreter exit)
stops every rank process: terminate, then kill.
"""

from __future__ import annotations

import atexit
import os
import queue
import signal
import time
from functools import partial
from typing import Any

from harness.distributed import worker
from harness.distributed.config import (
    BackendUnavailable,
    DistributedConfig,
    rank_devices,
)
from harness.distributed.job import CaseJob, NumberedJob
from harness.distributed.results import CaseReport, DistributedFailure
from harness.distributed.roles import ranks_needed
from harness.forkserver import ensure_running, forkserver_context, main_module_hidden

STORE_HOST = "127.0.0.1"
POLL_S = 0.2        # how often the parent checks its ranks while waiting
STOP_GRACE_S = 5.0  # how long ranks get to leave the group before being terminated
FATAL_GRACE_S = 2.0  # after a first fatal report, how long to collect the others (the root cause may be among them)
#: Text NCCL uses when it refuses two ranks of one communicator on one GPU.
_NCCL_SHARED_GPU_REFUSAL = ("Duplicate GPU", "duplicate GPU")


class WorkerGroup:
    """``config.world_size`` rank processes in one process group, reused for every case."""

    def __init__(self, config: DistributedConfig, gpu_count: int | None = None) -> None:
        self.config = config
        self._check_backend()
        self.gpu_count = _gpu_count() if gpu_count is None else gpu_count
        self.devices = rank_devices(config, self.gpu_count)
        self._processes: list[Any] = []
        self._job_queues: list[Any] = []
        self._results: Any = None
        self._store: Any = None
        self._next_job = 0
        self.starts = 0              # how many times the pool was (re)started
        self.start_seconds = 0.0     # wall time of the last start
        atexit.register(self.close)

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return bool(self._processes) and all(p.is_alive() for p in self._processes)

    @property
    def pids(self) -> tuple[int, ...]:
        """Process ids of the running rank processes (empty once closed)."""
        return tuple(p.pid for p in self._processes)

    def start(self) -> WorkerGroup:
        """Start the rank processes and wait until the group passed its start-up probe (no-op when running)."""
        if self.alive:
            return self
        self.close()
        import torch.distributed as dist
        import torch.multiprocessing as mp

        began = time.perf_counter()
        ctx, parent_pid = _context(mp)
        size = self.config.world_size
        self._store = dist.TCPStore(STORE_HOST, 0, None, is_master=True, wait_for_workers=False)
        self._results = ctx.Queue()
        for rank in range(size):
            args = worker.WorkerArgs(rank, size, STORE_HOST, self._store.port, self.config, self.devices[rank], parent_pid,
                                     dict(os.environ))
            jobs = ctx.Queue()
            process = ctx.Process(target=worker.main, args=(args, jobs, self._results), name=f"kvconform-rank-{rank}",
                                  daemon=True)
            with main_module_hidden():
                process.start()
            self._job_queues.append(jobs)
            self._processes.append(process)
        self._await_ready(began)
        self.starts += 1
        self.start_seconds = time.perf_counter() - began
        return self

    def close(self) -> None:
        """Stop every rank process; nothing started here survives this call."""
        if self._processes and all(p.is_alive() for p in self._processes):
            for jobs in self._job_queues:
                _quietly(partial(jobs.put, worker.Stop()))
            deadline = time.monotonic() + STOP_GRACE_S
            for p in self._processes:
                p.join(max(0.0, deadline - time.monotonic()))
        for p in self._processes:
            if p.is_alive():
                p.terminate()
        for p in self._processes:
            p.join(STOP_GRACE_S)
            if p.is_alive():
                p.kill()
                p.join()
        for q in [*self._job_queues, *([self._results] if self._results is not None else [])]:
            q.cancel_join_thread()
            q.close()
        self._processes, self._job_queues, self._results, self._store = [], [], None, None

    def __enter__(self) -> WorkerGroup:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- running cases -----------------------------------------------------------------------
    def run(self, job: CaseJob) -> CaseReport:
        """Run one case on every rank; the report holds each rank's result (``report.raise_if_failed()``)."""
        needed = ranks_needed(job.case.topology)
        if needed > self.config.world_size:
            raise ValueError(f"the case needs {needed} ranks; this group has {self.config.world_size} "
                             f"(start one with world_size >= {needed})")
        self.start()
        self._next_job += 1
        numbered = NumberedJob(self._next_job, job)
        for jobs in self._job_queues:
            jobs.put(numbered)
        deadline = time.monotonic() + self.config.job_timeout_s
        while True:
            message = self._next_message()
            if isinstance(message, CaseReport) and message.job_id == numbered.job_id:
                return message
            if isinstance(message, worker.Fatal):
                self._fail(f"the process group broke during case {numbered.job_id} (a rank that times out waiting "
                           f"for a partner means the partner is stuck, e.g. in implementation code, or dead)", [message])
            if message is None:
                self._raise_if_dead(f"during case {numbered.job_id}")
                if time.monotonic() > deadline:
                    self._fail(f"case {numbered.job_id} did not finish within {self.config.job_timeout_s:g}s "
                               f"(no rank reported a broken group); the pool was torn down", [])

    # -- internals ---------------------------------------------------------------------------
    def _check_backend(self) -> None:
        import torch.distributed as dist

        if not dist.is_available():
            raise BackendUnavailable("this torch build has no torch.distributed")
        available = {"gloo": dist.is_gloo_available, "nccl": dist.is_nccl_available}[self.config.backend]()
        if not available:
            raise BackendUnavailable(f"this torch build has no {self.config.backend} backend")

    def _await_ready(self, began: float) -> None:
        ready: set[int] = set()
        deadline = began + self.config.start_timeout_s
        while len(ready) < self.config.world_size:
            message = self._next_message()
            if isinstance(message, worker.Ready):
                ready.add(message.rank)
            elif isinstance(message, worker.Fatal):
                self._fail_start([message])
            elif message is None:
                if any(not p.is_alive() for p in self._processes):
                    self._fail_start([])
                if time.monotonic() > deadline:
                    missing = sorted(set(range(self.config.world_size)) - ready)
                    self.close()
                    raise DistributedFailure(f"ranks {missing} did not join the {self.config.backend} group within "
                                             f"{self.config.start_timeout_s:g}s")

    def _fail_start(self, fatals: list) -> None:
        fatals = fatals + self._collect_fatals()
        text = "; ".join(t for t in (self._exit_codes({f.rank for f in fatals}), _fatal_lines(fatals)) if t)
        self.close()
        if self.config.backend == "nccl" and any(s in text for s in _NCCL_SHARED_GPU_REFUSAL):
            raise BackendUnavailable(
                f"NCCL refused ranks sharing a GPU: {self.config.world_size} ranks need {self.config.world_size} GPUs "
                f"(one per rank), {self.gpu_count} visible. NCCL said: {text}")
        raise DistributedFailure(f"the {self.config.backend} process group of {self.config.world_size} ranks "
                                 f"on {', '.join(sorted(set(self.devices)))} failed to start: {text}")

    def _fail(self, what: str, fatals: list) -> None:
        fatals = fatals + self._collect_fatals()
        text = "; ".join(t for t in (self._exit_codes({f.rank for f in fatals}), _fatal_lines(fatals)) if t)
        self.close()
        raise DistributedFailure(f"{what}: {text}" if text else what)

    def _raise_if_dead(self, when: str) -> None:
        if any(not p.is_alive() for p in self._processes):
            self._fail(f"a rank process died {when}", [])

    def _collect_fatals(self) -> list:
        """Other ranks' fatal reports arriving shortly after the first (a timeout spreads)."""
        found, deadline = [], time.monotonic() + FATAL_GRACE_S
        while time.monotonic() < deadline:
            message = self._next_message()
            if isinstance(message, worker.Fatal):
                found.append(message)
            if message is None and all(not p.is_alive() for p in self._processes):
                break
        return found

    def _exit_codes(self, reported: set[int]) -> str:
        """Ranks that died without saying why (a crash in native code, a kill)."""
        dead = [(rank, p.exitcode) for rank, p in enumerate(self._processes) if not p.is_alive() and rank not in reported]
        return ", ".join(f"rank {rank} died without a report ({_exit_text(code)})" for rank, code in dead)

    def _next_message(self):
        try:
            return self._results.get(timeout=POLL_S)
        except queue.Empty:
            return None


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            pass
    return f"exit code {code}"


def _fatal_lines(fatals: list) -> str:
    return "; ".join(f"rank {f.rank}: {f.message}" for f in sorted(fatals, key=lambda f: f.rank))


def _context(mp: Any) -> tuple[Any, int]:
    """Rank processes fork from a forkserver that imported torch once (a clean process that never initializes
    CUDA: as safe as spawn, without every rank importing torch again); spawn where there is no forkserver.
    Also the pid the ranks' parent will have (the forkserver's, which ends with this process; or this one's)."""
    server_pid = ensure_running()
    if server_pid is not None:
        return forkserver_context(), server_pid
    return mp.get_context("spawn"), os.getpid()


def _quietly(action) -> None:
    try:
        action()
    except Exception:
        pass


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
