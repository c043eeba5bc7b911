"""The worker process: loads the implementation by its spec and answers the judge's calls.

One thread per lane serves that lane's calls; the implementation runs on
those threads.  Objects it makes (allocators, decode handlers) stay here in a
table and cross as :class:`~harness.isolation.proxy.Handle`\\ s; objects the
judge serves (``Served`` arguments: the ledger, the clock) become
:class:`JudgeObject`\\ s whose calls go back over the calling thread's lane.

Before a reply, a worker that has used CUDA waits on the thread's current
stream (where the implementation ordered its work for the caller), not on
the whole device, so the judge reads finished bytes.

Nothing here is trusted by the judge: whatever runs in this process (the
implementation may patch any module, this one included) can only answer
calls, and the judge reads answers with a restricted unpickler
(``harness.isolation.crossing``) and checks them itself.
"""

from __future__ import annotations

import collections.abc
import itertools
import os
import signal
import sys
import threading
import weakref
from multiprocessing.connection import Connection
from typing import Any

import torch

from harness.interface import CAPABILITY_TABLE, OPTIONAL_EXTRAS, protocol_methods
from harness.isolation import crossing
from harness.isolation.channel import Call, Lane, Raised, describe
from harness.isolation.proxy import ROOT, Unpicklable, describe_object

#: Factory method -> Protocol of what it makes (its result stays here behind a handle).
_MADE_BY = {factory: made for cap in CAPABILITY_TABLE for factory, made in cap.products.items()}


class LoadFailed(Exception):
    """``harness.loading`` refused the implementation; the message is its ImplementationError's."""


class Worker:
    def __init__(self) -> None:
        self.objects: dict[int, Any] = {}
        self._ids = itertools.count(ROOT + 1)
        self._released: list[int] = []  # judge-served tokens whose JudgeObject died here
        self._released_lock = threading.Lock()
        self._local = threading.local()
        self._lane_threads: set[int] = set()

    # -- what the judge calls ------------------------------------------------------------------
    def serve(self, call: Call) -> Any:
        if call.method == "__load__":
            return self._load(*call.args)
        if call.method == "__end_test__":
            return self._end_test()
        obj = self.objects[call.target]
        method = call.method or "__call__"
        result = getattr(obj, method)(*call.args, **call.kwargs)
        self._finish_device_work()
        return self._outgoing(method, result)

    def _end_test(self) -> list[str]:
        """Between tests (the judge keeps this worker for the next one): forget the storages the judge sent, and
        name the threads the implementation left running (any Python thread but the lanes and the main one:
        the judge then retires this worker, so nothing it does reaches the next test)."""
        crossing.drop_storages(list(crossing._STORAGES))
        ours = self._lane_threads | {threading.main_thread().ident}
        frames = sys._current_frames()
        return sorted(f"{_thread_name(ident)} at {frame.f_code.co_filename}:{frame.f_lineno}"
                      for ident, frame in frames.items() if ident not in ours)

    def _load(self, spec: str) -> Any:
        from harness.loading import ImplementationError, load_configurations

        try:
            configurations = load_configurations(spec, first_only=True)
        except ImplementationError as exc:
            raise LoadFailed(str(exc)) from None
        loaded = configurations.selected[0]
        self.objects[ROOT] = loaded.implementation
        attributes = {key: _plain(getattr(loaded.implementation, key, None)) for key in ("name", "version", "limits")}
        attributes["capabilities"] = frozenset(loaded.capabilities)
        methods = tuple(method for cap in CAPABILITY_TABLE for method in cap.methods)
        return {"name": loaded.name, "target": loaded.target, "capabilities": tuple(sorted(loaded.capabilities)),
                "root": describe_object(loaded.implementation, ROOT, methods, attributes),
                # what the judge needs of the configurations without running the factory itself
                "display_name": configurations.name, "declared": tuple(configurations.declared),
                "configuration": loaded.configuration, "catalogue_version": loaded.catalogue_version}

    def _outgoing(self, method: str, result: Any) -> Any:
        made = _MADE_BY.get(method)
        if made is not None and not isinstance(result, (type(None), bool, int, float, str)):
            handle = next(self._ids)
            self.objects[handle] = result
            extras = OPTIONAL_EXTRAS.get(made)
            methods = protocol_methods(made) + (protocol_methods(extras) if extras else ())
            return describe_object(result, handle, methods, {})
        if isinstance(result, collections.abc.Iterator):
            result = list(result)  # a generator cannot cross; the judge checks the list it made
        return result

    def _finish_device_work(self) -> None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.current_stream().synchronize()

    def released(self) -> list[int]:
        with self._released_lock:
            out, self._released = self._released, []
        return out

    def drop(self, handles: list[int]) -> None:
        """Forget objects the judge released, and storages it dropped (negative tokens, ``crossing.StorageTable``:
        the storages the judge sent stay mapped here until then, so a pool sent on every call is mapped once)."""
        for handle in handles:
            if handle < 0:
                crossing.drop_storages([handle])
            else:
                self.objects.pop(handle, None)

    def judge_released(self, token: int) -> None:
        with self._released_lock:
            self._released.append(token)

    # -- calls back into the judge ------------------------------------------------------------
    def call_judge(self, token: int, method: str | None, args: tuple, kwargs: dict) -> Any:
        lane = getattr(self._local, "lane", None)
        if lane is None:
            raise RuntimeError("kvconform isolation: the implementation called a harness object from a thread the "
                               "harness did not call it on; under isolation callbacks must come from the calling "
                               "thread (run with --in-process to debug)")
        self._finish_device_work()  # the judge reads what was ordered before the callback
        return lane.call(Call(token, method, args, kwargs), None)

    def run_lane(self, connection: Connection) -> None:
        lane = Lane(connection, _dumps, crossing.worker_loads, self.serve, released=self.released,
                    on_released=self.drop)
        self._local.lane = lane
        self._lane_threads.add(threading.get_ident())
        while True:
            try:
                kind, payload = lane.receive(None)
            except (EOFError, OSError):
                return
            if kind == "call":
                lane.answer(payload)


class JudgeObject:
    """An object the judge serves (a ``Served`` argument): calling it or its methods calls the judge."""

    def __init__(self, token: int) -> None:
        self._token = token
        weakref.finalize(self, _WORKER.judge_released, token)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _WORKER.call_judge(self._token, None, args, kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: _WORKER.call_judge(self._token, name, args, kwargs)

    def __repr__(self) -> str:
        return f"<harness object {self._token} served by the judge>"


def _dumps(message: Any) -> bytes:
    """Pickle a message; a value that cannot cross goes as its description (the judge calls it garbage)."""
    try:
        return crossing.dumps(message)
    except Exception:
        kind, payload, released = message
        if kind == "reply":
            return crossing.dumps((kind, Unpicklable(type(payload).__name__, _safe_repr(payload)), released))
        if kind == "raised":
            return crossing.dumps((kind, Raised(payload.type_name, payload.message, payload.where, payload.token,
                                                   base=payload.base),
                                   released))
        raise


def _thread_name(ident: int) -> str:
    thread = threading._active.get(ident)  # type: ignore[attr-defined]
    return f"thread {thread.name!r}" if thread is not None else f"thread {ident}"


def _safe_repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception as exc:
        return f"<{type(value).__name__}; its repr raised {describe(exc).type_name}>"
    return text if len(text) <= 200 else text[:197] + "..."


def _plain(value: Any) -> Any:
    """An attribute value as plain data (``limits`` may be any iterable of names)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    try:
        return tuple(str(v) for v in value)
    except TypeError:
        return str(value)


_WORKER = Worker()


def main(connections: list[Connection]) -> None:
    """Process entry point: serve every lane until the judge closes them, then leave at once."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the judge's to handle; it ends this process
    crossing.share_by_name()
    threads = [threading.Thread(target=_WORKER.run_lane, args=(c,), daemon=True, name=f"kvconform-lane-{i}")
               for i, c in enumerate(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    os._exit(0)  # threads the implementation left behind must not keep the process alive

