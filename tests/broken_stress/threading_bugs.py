"""A handler that is only safe from one thread."""

from __future__ import annotations

import contextlib
import time

from reference import handler
from reference.plugin import ReferenceImplementation

YIELD_S = 0.0005  # long enough for the other thread to run between a lookup and the action on it


class _YieldingRequests(dict):
    """The request table; every lookup yields the GIL before the caller acts on what it read."""

    def get(self, key, default=None):
        value = super().get(key, default)
        time.sleep(YIELD_S)
        return value


class ThreadUnsafeHandler(ReferenceImplementation):
    """The reference handler without its lock: the transfer thread can act on a request the scheduler
    thread is releasing (allocating into a forgotten request, scattering a freed region)."""

    class Handler(handler.DecodeStagingHandler):
        def __init__(self, **kwargs) -> None:
            super().__init__(**kwargs)
            self._lock = contextlib.nullcontext()
            self._requests = _YieldingRequests()

    def make_decode_handler(self, **kwargs):
        return self.Handler(scatter=self.scatter, **kwargs)
