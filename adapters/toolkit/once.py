"""Engine code loaded once per process.

Loading an engine (imports, borrowing, installing stand-ins into its modules)
changes process-wide state, so it must run once however many implementations
and threads ask for it.

Invariant upheld: the wrapped load runs to success at most once per process,
concurrent callers wait for it and all receive the same object; a load that
raises leaves nothing cached, so the next call tries again (and raises again
while the cause remains).
"""

from __future__ import annotations

import functools
import threading
from typing import Callable, TypeVar

T = TypeVar("T")


def load_once(load: Callable[[], T]) -> Callable[[], T]:
    """``load`` wrapped to run once per process (thread-safe); its result is returned to every caller."""
    lock = threading.Lock()
    loaded: list[T] = []

    @functools.wraps(load)
    def once() -> T:
        with lock:
            if not loaded:
                loaded.append(load())
            return loaded[0]

    return once
