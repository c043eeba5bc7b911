"""Process isolation: the implementation runs in a worker process, the judge keeps everything that judges.

The judge (the pytest session: oracles, ground truth, the engine's ledger, the
report) never runs implementation code.  The implementation is loaded by its
spec in a worker process (``supervisor``: started from a forkserver, replaced
after a crash or a hang, and after a test in which anything abnormal happened); every call crosses a lane
(``channel``) under ``harness.guard``'s deadline; tensors cross by shared
memory on CPU and CUDA IPC handles on GPU, so the implementation writes the
judge's own bytes (``crossing``); objects it makes stay in the worker behind
proxies, and judge objects it is handed are called back (``proxy``).  The
worker process is ``worker``.  ``--in-process`` (``harness.cli``) runs the
implementation in the judge's process instead, for debugging.
"""

from __future__ import annotations

from typing import Optional

from harness.isolation.supervisor import LoadRefused, Supervisor

MODES = ("process", "in-process")  #: how the implementation runs: in a worker process, or in the judge's

_supervisors: list[Supervisor] = []


def start(spec: str, timeout: float) -> Supervisor:
    """A supervisor with a worker that loaded ``spec`` (the factory under ``timeout``); raises LoadRefused."""
    supervisor = Supervisor(spec)
    supervisor.load(timeout)
    _supervisors.append(supervisor)
    return supervisor


def retire_workers() -> None:
    """End every worker (between tests); the next call starts a fresh one."""
    for supervisor in _supervisors:
        supervisor.retire()


def end_test(abnormal: bool) -> None:
    """Between tests: each worker is kept for the next test, or retired when anything abnormal happened
    (``Supervisor.end_test``)."""
    for supervisor in _supervisors:
        supervisor.end_test(abnormal)


def current() -> Optional[Supervisor]:
    return _supervisors[-1] if _supervisors else None


__all__ = ["MODES", "LoadRefused", "Supervisor", "current", "end_test", "retire_workers", "start"]
