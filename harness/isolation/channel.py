"""One lane between the judge and the worker: calls both ways over one pipe, nested to any depth.

A lane carries the calls of one judge thread.  Either side may call while it
waits for an answer: the worker calls back into objects the judge serves (the
ledger a handler allocates from, the clock), and while the judge serves such a
callback it may call the worker again (the ledger asks the implementation's
allocator).  So a side waiting for its answer serves every call that arrives
first, on the same thread, and only then reads on: the call stack of both
processes is one stack, split across them.

Messages are tuples ``(kind, payload, released)``: ``kind`` is ``"call"``
(payload :class:`Call`), ``"reply"`` (the value) or ``"raised"``
(:class:`Raised`); ``released`` lists ids of objects the sender stopped
using, so the other side can drop them.
"""

from __future__ import annotations

import builtins
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Callable, Optional


@dataclass(frozen=True)
class Call:
    """Call ``method`` of the object ``target`` (an id the receiving side knows), or the object itself."""

    target: int
    method: Optional[str]
    args: tuple
    kwargs: dict


@dataclass(frozen=True)
class Raised:
    """An exception the called side raised, described in plain data (its object only when builtin)."""

    type_name: str
    message: str
    where: str = ""  #: innermost frame of the traceback
    token: Optional[int] = None  #: set when the exception is the caller's own, coming back
    builtin: Optional[BaseException] = None
    base: str = "Exception"  #: the nearest builtin class it derives from (a custom ValueError stays a ValueError)


class WorkerHung(Exception):
    """The worker did not answer before the deadline; it has been killed."""


class WorkerDied(Exception):
    """The worker's process ended while a call was waiting on it (or before the call)."""


class RemoteRaised(Exception):
    """The implementation raised an exception that does not cross as itself; ``type_name`` says what it was.

    :func:`remote_raised` makes it an instance of the nearest builtin class too, so ``except ValueError``
    still catches a custom ``ValueError`` of the implementation."""

    def __init__(self, raised: Raised) -> None:
        super().__init__(raised.message)
        self.raised = raised
        self.type_name = raised.type_name


_REMOTE_CLASSES: dict[str, type] = {}


def remote_raised(raised: Raised) -> RemoteRaised:
    cls = _REMOTE_CLASSES.get(raised.base)
    if cls is None:
        base = getattr(builtins, raised.base, Exception)
        try:
            cls = type(f"Remote{raised.base}", (RemoteRaised, base), {}) if base is not Exception else RemoteRaised
        except TypeError:  # a builtin whose layout does not mix (OSError and kin)
            cls = RemoteRaised
        _REMOTE_CLASSES[raised.base] = cls
    return cls(raised)


class CallerRaised(Exception):
    """Raised on the called side where the caller's callback raised; carries the caller's token back."""

    def __init__(self, raised: Raised) -> None:
        super().__init__(f"{raised.type_name}: {raised.message}")
        self.token = raised.token


def describe(exc: BaseException) -> Raised:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}" if frames else ""
    crosses = isinstance(exc, Exception) and type(exc).__module__ == "builtins" and not exc.args[1:]
    builtin = exc.with_traceback(None) if crosses else None  # SystemExit & co. never re-raise in the judge
    token = exc.token if isinstance(exc, CallerRaised) else None
    base = next(c.__name__ for c in type(exc).__mro__ if c.__module__ == "builtins")
    if not (isinstance(getattr(builtins, base, None), type) and issubclass(getattr(builtins, base), Exception)):
        base = "Exception"  # SystemExit, KeyboardInterrupt: never re-raised as themselves in the judge
    return Raised(type(exc).__name__, str(exc), where, token, builtin, base)


@dataclass
class Lane:
    """One end of a lane.  ``serve(call)`` answers calls from the other side (exceptions are sent back);
    ``receive(deadline)`` reads the next message, raising on a deadline or a dead peer (side-specific)."""

    connection: Connection
    dumps: Callable[[Any], bytes]
    loads: Callable[[bytes], Any]
    serve: Callable[[Call], Any]
    released: Callable[[], list] = field(default=lambda: [])  #: ids this side stopped using, drained per message
    on_released: Callable[[list], None] = field(default=lambda ids: None)
    keep_raising: tuple[type[BaseException], ...] = ()  #: exceptions of ``serve`` that end the wait instead
    #: The judge's side: exceptions its callbacks raise are kept here by token and come back as themselves.
    remember_errors: bool = False
    errors: dict[int, BaseException] = field(default_factory=dict)

    def send(self, kind: str, payload: Any) -> None:
        self.connection.send_bytes(self.dumps((kind, payload, self.released())))

    def receive(self, deadline: Optional[float]) -> tuple[str, Any]:
        if deadline is not None and not self.connection.poll(max(0.0, deadline - time.monotonic())):
            raise TimeoutError
        kind, payload, released = self.loads(self.connection.recv_bytes())
        if released:
            self.on_released(released)
        return kind, payload

    def call(self, call: Call, deadline: Optional[float]) -> Any:
        """Send ``call``; serve calls from the other side until its answer comes; return it or raise."""
        self.send("call", call)
        while True:
            kind, payload = self.receive(deadline)
            if kind == "reply":
                return payload
            if kind == "raised":
                raise self._exception_for(payload)
            self.answer(payload)

    def answer(self, call: Call) -> None:
        """Serve one call from the other side and send its outcome."""
        try:
            value = self.serve(call)
        except self.keep_raising:
            raise
        except BaseException as exc:  # the other side decides what an exception means
            raised = describe(exc)
            if self.remember_errors and raised.token is None:
                self.errors[id(exc)] = exc
                raised = Raised(raised.type_name, raised.message, raised.where, id(exc), raised.builtin, raised.base)
            try:
                self.send("raised", raised)
            except OSError:
                raise exc from None  # the other side is gone: our own exception says why
            return
        self.send("reply", value)

    def _exception_for(self, raised: Raised) -> BaseException:
        if raised.token is not None:
            if raised.token in self.errors:
                return self.errors.pop(raised.token)  # our callback's exception, back through the other side
            if not self.remember_errors:
                return CallerRaised(raised)
        return raised.builtin if raised.builtin is not None else remote_raised(raised)
