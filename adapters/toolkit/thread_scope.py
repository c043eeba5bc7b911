"""A value that engine code reads on the current thread while an adapter's ``with`` block runs.

Engine code reads ambient state through module globals (the time, the rank of
the worker being built, the transport its agents join); an adapter installs a
reader of one of these values as the global and sets the value around each
engine call.

Invariant upheld: a value is seen only on the thread that set it and only
inside its block; blocks nest, and on exit (error included) the enclosing
value, or none, is seen again.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Generic, Iterator, Optional, TypeVar

T = TypeVar("T")


class ThreadScoped(Generic[T]):
    """A per-thread value, set by :meth:`using` for the duration of a block (``None`` when unset)."""

    def __init__(self) -> None:
        self._local = threading.local()

    @contextlib.contextmanager
    def using(self, value: T) -> Iterator[T]:
        """``get()`` returns ``value`` on this thread while the block runs."""
        previous = getattr(self._local, "value", None)
        self._local.value = value
        try:
            yield value
        finally:
            self._local.value = previous

    def get(self) -> Optional[T]:
        """The value of the innermost block running on this thread, or ``None``."""
        return getattr(self._local, "value", None)

    def require(self, outside: str) -> T:
        """The value; raises ``RuntimeError(outside)`` when read outside any block on this thread."""
        value = self.get()
        if value is None:
            raise RuntimeError(outside)
        return value
