"""A ``time`` module stand-in that reads the harness's clock while engine code runs for a handler.

Engine code calls ``time.time()`` / ``time.monotonic()`` for its timeouts;
the conformance suite drives time with a fake clock per decode handler.  The
router is installed as the ``time`` global of the engine's modules and borrowed
definitions.

Invariant upheld: engine code sees the clock of the handler whose method runs
on the *current thread* (handlers on other threads keep theirs), and real time
outside any handler call; every other ``time`` attribute is the real one.
"""

from __future__ import annotations

import time
from typing import Any, Callable, ContextManager

from adapters.toolkit.thread_scope import ThreadScoped


class ClockRouter:
    """Stands in for the ``time`` module inside an engine's code."""

    def __init__(self) -> None:
        self._clock: ThreadScoped[Callable[[], float]] = ThreadScoped()

    def monotonic(self) -> float:
        clock = self._clock.get()
        return time.monotonic() if clock is None else float(clock())

    def time(self) -> float:
        clock = self._clock.get()
        return time.time() if clock is None else float(clock())

    def using(self, clock: Callable[[], float]) -> ContextManager[Callable[[], float]]:
        """``time()``/``monotonic()`` return ``clock()`` on this thread while the block runs (nests)."""
        return self._clock.using(clock)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)
