"""The judge's side of the worker: start it, call into it with a deadline, replace it when it dies or hangs.

A :class:`Supervisor` owns one implementation spec and at most one live
:class:`WorkerProcess` at a time (a *generation*).  Calls on the
implementation object go to the current generation, starting a fresh one
(which loads the implementation again, under the call deadline) when there is
none; calls on an object a dead generation made fail at once.  So after a
crash or a hang the next Hypothesis example, which starts from the
implementation object, gets a fresh worker, and shrinking works as usual.

One worker serves every test while nothing abnormal happens: at the end of
a test, :meth:`Supervisor.end_test` keeps it only when the test passed, no
call crashed, hung or returned garbage, and the implementation left no thread
running in it; otherwise it is retired and the next test starts a fresh one.

Workers come from a *forkserver* (a clean process that imported torch and
this package, never CUDA): forking it takes milliseconds, where spawning a
fresh interpreter takes seconds, and a fork never inherits an initialized
CUDA context.  Each worker has :data:`LANES` pipes; a judge thread takes a
free lane for its outermost call and keeps it through the nested calls
(``harness.isolation.channel``).
"""

from __future__ import annotations

import atexit
import collections.abc
import functools
import signal
import threading
import time
import typing
from dataclasses import dataclass
from typing import Any, Optional

import torch

from harness.forkserver import forkserver_context, main_module_hidden
from harness.interface import documented_signature, method_owners
from harness.isolation import crossing
from harness.isolation.channel import Call, Lane, RemoteRaised, WorkerDied, WorkerHung
from harness.isolation.proxy import ROOT, Handle, RemoteObject, Served

LANES = 4  #: judge threads that may call into one worker at the same time
START_TIMEOUT_S = 300.0  #: the worker process itself starting (python, torch), not the implementation
END_TEST_TIMEOUT_S = 10.0  #: the end-of-test check of a worker kept for the next test


class LoadRefused(Exception):
    """The worker's ``harness.loading`` refused the implementation (the message is its ImplementationError's)."""


def _context() -> Any:
    crossing.share_by_name()
    return forkserver_context()


class WorkerProcess:
    """One worker generation: the process, its lanes, and the judge objects it may call back."""

    def __init__(self, supervisor: "Supervisor") -> None:
        self.supervisor = supervisor
        context = _context()
        pairs = [context.Pipe(duplex=True) for _ in range(LANES)]
        from harness.isolation import worker

        self.process = context.Process(target=worker.main, args=([child for _, child in pairs],), daemon=True,
                                       name="kvconform-worker")
        with main_module_hidden():
            self.process.start()
        for _, child in pairs:
            child.close()
        self.served: dict[int, Any] = {}
        self._released: list[int] = []
        self._lock = threading.Lock()
        self.tables = [crossing.StorageTable() for _ in pairs]  #: storages each lane sent (crossing.StorageTable)
        self._free = [Lane(parent, table.dumps, crossing.judge_loads, self._serve, released=self._drain,
                           on_released=self._forget_served, keep_raising=(WorkerHung, WorkerDied),
                           remember_errors=True) for (parent, _), table in zip(pairs, self.tables)]
        self._lane_free = threading.Condition(self._lock)
        self.dead: Optional[str] = None

    # -- lanes ------------------------------------------------------------------------------------
    def take_lane(self, deadline: float) -> Lane:
        with self._lane_free:
            while not self._free:
                if not self._lane_free.wait(max(0.0, deadline - time.monotonic())):
                    raise WorkerHung(f"all {LANES} lanes of the worker stayed busy")
            return self._free.pop()

    def all_lanes_free(self) -> bool:
        with self._lane_free:
            return len(self._free) == LANES

    def give_lane(self, lane: Lane) -> None:
        with self._lane_free:
            self._free.append(lane)
            self._lane_free.notify()

    # -- what the worker calls back ---------------------------------------------------------------
    def _serve(self, call: Call) -> Any:
        obj = self.served[call.target]
        return obj(*call.args, **call.kwargs) if call.method is None else getattr(obj, call.method)(*call.args,
                                                                                                     **call.kwargs)

    def serve(self, obj: Any) -> Served:
        token = id(obj)
        self.served[token] = obj
        return Served(token)

    def _forget_served(self, tokens: list) -> None:
        for token in tokens:
            self.served.pop(token, None)

    def release(self, handle: int) -> None:
        with self._lock:
            self._released.append(handle)

    def _drain(self) -> list:
        with self._lock:
            out, self._released = self._released, []
        return out

    # -- life and death ---------------------------------------------------------------------------
    def kill(self, why: str) -> None:
        if self.dead is None:
            self.dead = why
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=10)

    def death(self) -> str:
        """How the process ended, in words (waits briefly for it to be reaped)."""
        self.process.join(timeout=5)
        code = self.process.exitcode
        if code is None:
            return "its pipe closed while the process was still running"
        if code < 0:
            try:
                return f"killed by signal {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit status {code}"


@dataclass
class _Ongoing:
    """The outermost call a judge thread is waiting on (its nested calls share its lane and deadline)."""

    worker: WorkerProcess
    lane: Lane
    deadline: float
    timeout: float


class Supervisor:
    """Runs the implementation ``spec`` names in worker processes (see the module docstring)."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self._worker: Optional[WorkerProcess] = None
        self._lock = threading.RLock()
        self._local = threading.local()
        self.root: Optional[RemoteObject] = None
        self.loaded: dict = {}
        self.starts = 0
        atexit.register(self.retire)

    # -- loading ----------------------------------------------------------------------------------
    def load(self, timeout: float) -> RemoteObject:
        """Start a worker and load the implementation in it (the factory runs under ``timeout``)."""
        self._start(timeout)
        self.root = RemoteObject(self.loaded["root"], self, self._call, lambda generation, handle: None)
        return self.root

    def _start(self, timeout: float) -> WorkerProcess:
        with self._lock:
            if self._worker is not None and self._worker.dead is None:
                return self._worker
            worker = WorkerProcess(self)
            self.starts += 1
            lane = worker.take_lane(time.monotonic() + START_TIMEOUT_S)
            try:
                info = self._wait(worker, lane, Call(ROOT, "__load__", (self.spec,), {}),
                                  time.monotonic() + START_TIMEOUT_S + timeout, timeout, f"loading --impl {self.spec}")
            except RemoteRaised as refused:
                worker.kill("the implementation could not be loaded")
                raise LoadRefused(str(refused)) from None
            finally:
                worker.give_lane(lane)
            self.loaded = info
            self._worker = worker
            return worker

    def retire(self) -> None:
        """End the current worker (between tests: nothing it left running reaches the next test)."""
        with self._lock:
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.kill("retired between tests")

    def end_test(self, abnormal: bool, timeout: float = END_TEST_TIMEOUT_S) -> Optional[str]:
        """Between tests: keep the worker for the next test when nothing abnormal happened in this one, else
        retire it.  Abnormal: ``abnormal`` (the test did not pass, or a call crashed, hung or returned garbage),
        a lane still busy (a judge thread still in a call), or threads the implementation left running in the
        worker (it names them).  A kept worker forgets the storages the judge sent it, and the judge the
        storages it holds for them.  Returns why the worker was retired, or None when it was kept."""
        with self._lock:
            worker = self._worker
        why = None
        if worker is None or worker.dead is not None:
            why = "no live worker"
        elif abnormal:
            why = "the test did not end cleanly"
        elif not worker.all_lanes_free():
            why = "a call was still in progress"
        else:
            lane = worker.take_lane(time.monotonic() + timeout)
            try:
                left = self._wait(worker, lane, Call(ROOT, "__end_test__", (), {}), time.monotonic() + timeout,
                                  timeout, "the end-of-test check")
            except Exception as exc:  # hung, died, or a patched worker answering nonsense: a fresh one is safer
                left, why = None, f"the end-of-test check failed ({type(exc).__name__})"
            finally:
                if worker.dead is None:
                    worker.give_lane(lane)
            if why is None and (not isinstance(left, list) or left):
                why = f"the implementation left threads running: {left!r}"
            for table in worker.tables:
                table.clear()
        if why is not None:
            self.retire()
        return why

    # -- calls ------------------------------------------------------------------------------------
    def _call(self, target: RemoteObject, method: str, args: tuple, kwargs: dict, timeout: float) -> Any:
        ongoing: Optional[_Ongoing] = getattr(self._local, "ongoing", None)
        if target.handle == ROOT:
            worker = ongoing.worker if ongoing else self._start(timeout)
        else:
            worker = target.generation
        if worker.dead is not None:
            raise WorkerDied(f"the worker process that made {target!r} is gone ({worker.dead})")
        call = Call(target.handle, method, *self._crossing_arguments(worker, method, args, kwargs))
        if ongoing is not None and ongoing.worker is worker:  # called back from inside the implementation
            return self._incoming(worker, self._wait(worker, ongoing.lane, call, ongoing.deadline, ongoing.timeout,
                                                     method))
        deadline = time.monotonic() + timeout
        lane = worker.take_lane(deadline)
        self._local.ongoing = _Ongoing(worker, lane, deadline, timeout)
        try:
            return self._incoming(worker, self._wait(worker, lane, call, deadline, timeout, method))
        finally:
            self._local.ongoing = None
            if worker.dead is None:
                worker.give_lane(lane)

    def _wait(self, worker: WorkerProcess, lane: Lane, call: Call, deadline: float, timeout: float,
              what: str) -> Any:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.current_stream().synchronize()  # the worker must read what the judge wrote
        try:
            return lane.call(call, deadline)
        except TimeoutError:
            worker.kill(f"it did not answer {what} within {timeout:g}s")
            raise WorkerHung(f"no return within {timeout:g}s") from None
        except (EOFError, OSError):
            how = worker.death()
            worker.kill(how)
            raise WorkerDied(f"the worker process died ({how})") from None

    def _incoming(self, worker: WorkerProcess, value: Any) -> Any:
        """A worker's answer as the judge uses it: a made object becomes a proxy of it."""
        if isinstance(value, Handle):
            return RemoteObject(value, worker, self._call, lambda generation, handle: generation.release(handle))
        return value

    def _crossing_arguments(self, worker: WorkerProcess, method: str, args: tuple, kwargs: dict) -> tuple:
        """``(args, kwargs)`` with the judge objects the interface documents as Protocols or callables served."""
        served = _served_parameters(method)
        if not served:
            return args, kwargs
        owner = method_owners()[method]
        try:
            bound = documented_signature(owner[1], method).bind_partial(*args, **kwargs)
        except TypeError:  # not the documented call: sent as it is, the implementation answers it
            return args, kwargs
        for name in served:
            if name in bound.arguments:
                bound.arguments[name] = worker.serve(bound.arguments[name])
        return tuple(bound.args), dict(bound.kwargs)


@functools.cache
def _served_parameters(method: str) -> tuple[str, ...]:
    """Parameters of interface method ``method`` that the judge serves rather than sends."""
    owner = method_owners().get(method)
    if owner is None:
        return ()
    return tuple(name for name, parameter in documented_signature(owner[1], method).parameters.items()
                 if _is_served(parameter.annotation))


def _is_served(annotation: Any) -> bool:
    """Whether a documented parameter is an object the judge serves rather than data it sends."""
    return bool(getattr(annotation, "_is_protocol", False)) or typing.get_origin(annotation) is collections.abc.Callable
