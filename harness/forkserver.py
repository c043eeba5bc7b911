"""The one forkserver kvconform's child processes fork from: isolation workers and distributed ranks.

The server imports torch once (:data:`FORKSERVER_PRELOAD`), and every child forks from it ready to run: a
clean process that never initialized CUDA, as safe as spawn without importing torch again.  Importing
torch takes seconds, so the CLI calls :func:`ensure_running` to start the server before the judge imports torch itself: the
two imports then run side by side instead of one after the other.  This module imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import sys
from typing import Any, Iterator, Optional

#: What the forkserver imports once: one server serves the isolation workers and the distributed ranks.
FORKSERVER_PRELOAD = ["torch", "harness.isolation.worker", "harness.distributed.worker"]


@contextlib.contextmanager
def main_module_hidden() -> Iterator[None]:
    """Start a process without it importing the judge's ``__main__`` (pytest, the CLI or a user's script: the
    worker needs none of it, and a script without a ``__main__`` guard would run again there)."""
    main = sys.modules["__main__"]
    saved: dict[str, Any] = {key: main.__dict__[key] for key in ("__file__", "__spec__") if key in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__dict__["__spec__"] = None
    try:
        yield
    finally:
        main.__dict__.update(saved)
        if "__spec__" not in saved:
            main.__dict__.pop("__spec__", None)


def forkserver_context() -> Any:
    """The forkserver context both kinds of process fork from."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(FORKSERVER_PRELOAD)
    return context


def ensure_running() -> Optional[int]:
    """Start the server unless it runs; its pid, or None where this platform has no forkserver (a server that
    cannot start fails again, with its reason, where a worker is first needed)."""
    try:
        forkserver_context()
        from multiprocessing import forkserver

        with main_module_hidden():  # the server must not run the judge's __main__ again
            forkserver.ensure_running()
    except (ValueError, OSError):
        return None
    pid = getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None)
    return pid if isinstance(pid, int) and pid > 0 else None


__all__ = ["FORKSERVER_PRELOAD", "ensure_running", "forkserver_context", "main_module_hidden"]
