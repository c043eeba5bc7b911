"""A CPU stand-in for a CUDA side stream: submitted copies run later, not when submitted.

A handler that scatters on a real stream must keep the staging region until
the scatter's event completed.  On CPU the reference scatters synchronously,
so freeing early is harmless there and the bug cannot show; with this lazy
stream it can.  Work runs in submission order when an event is queried a
second time or synchronized (a query may still find it pending, as on a GPU).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Callable


class LazyStream:
    def __init__(self) -> None:
        self._work: deque[tuple[int, Callable[[], None]]] = deque()
        self._submitted = 0
        self._completed = 0
        self._lock = threading.Lock()

    def submit(self, work: Callable[[], None]) -> "LazyEvent":
        with self._lock:
            self._submitted += 1
            self._work.append((self._submitted, work))
            return LazyEvent(self, self._submitted)

    def run_through(self, ticket: int) -> None:
        """Run every piece of work up to and including ``ticket``, in order."""
        while True:
            with self._lock:
                if self._completed >= ticket or not self._work:
                    return
                number, work = self._work.popleft()
            work()
            with self._lock:
                self._completed = number

    def completed(self, ticket: int) -> bool:
        with self._lock:
            return self._completed >= ticket


class LazyEvent:
    """Recorded after one submission; ``query`` runs the work on its second call."""

    def __init__(self, stream: LazyStream, ticket: int) -> None:
        self._stream, self._ticket, self._queries = stream, ticket, 0

    def query(self) -> bool:
        self._queries += 1
        if self._queries > 1:
            self._stream.run_through(self._ticket)
        return self._stream.completed(self._ticket)

    def synchronize(self) -> None:
        self._stream.run_through(self._ticket)
