"""The call recorder: what one failing test case did to the implementation, step by step.

``harness.guard`` reports every call into an implementation here (:func:`active` says whether one is being
recorded).  Recording is on only for the final replay of a Hypothesis example (``is_final``: the shrunk
failing example, or an explicit ``@example``) and for whole plain tests; the plugin turns it on per
conformance test (:func:`enabled`).  A trace holds, per call: the object and method, the arguments (tensors
as views of recorded storages, objects the implementation made by name, the clock and receivers by what they
read as), the return or the exception, the bytes the harness wrote into those storages since the last call,
and a digest of every storage after it.  When the test case fails, :meth:`Trace.finish` records the verdict:
the judge's exception, and the expected bytes an oracle attached to it (``InvariantViolation.expected``).
``harness.repro.script`` turns a finished trace into a standalone script.
"""

from __future__ import annotations

import base64
import hashlib
import sys
import threading
import zlib
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from harness.engine.ledger import Ledger
from harness.isolation.channel import RemoteRaised
from harness.interface import documented_arguments
from harness.oracles import ExpectedBytes, InvariantViolation
from harness.repro.runtime import plain

#: Attribute of a failing test case's exception holding its finished :class:`Trace`.
TRACE_ATTRIBUTE = "_kvconform_trace"
_PLAIN = (type(None), bool, int, float, str)


@dataclass(frozen=True)
class TensorArg:
    """A tensor argument: a view of recorded storage ``storage``."""

    storage: int
    dtype: str
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int


@dataclass(frozen=True)
class MadeArg:
    """An object the implementation made earlier (an allocator, a handler), by its name in the trace.

    ``through`` names the harness wrapper it was handed in (the engine's ledger wraps the allocator)."""

    name: str
    through: str = ""


@dataclass(frozen=True)
class ClockArg:
    """The clock: replayed as a clock reading, at each call, what the harness's clock read then."""

    clock: int


@dataclass(frozen=True)
class ReceiverArg:
    """A receiver, rebuilt from its type name, repr and what reading ``require_staging`` gave."""

    type_name: str
    text: str
    value: Any = None          # a plain value, or (truth, repr) for one that is not plain
    plain_value: bool = True
    raises: Optional[tuple[str, str]] = None


@dataclass
class Step:
    """One call into the implementation (``nested``: made by the implementation's own code through a harness
    object, e.g. the ledger asking the allocator: not replayed, the implementation makes it again)."""

    index: int
    target: str
    method: str
    args: tuple
    kwargs: dict
    nested: bool
    writes: list[tuple[int, int, bytes]] = field(default_factory=list)  # harness writes since the last call
    clocks: dict[int, float] = field(default_factory=dict)              # clock readings that changed
    outcome: str = "running"  # returned | raised | garbage | hung | harness
    result: Any = None
    made: Optional[str] = None
    error: Optional[tuple[str, str]] = None
    error_object: Optional[BaseException] = None
    after: dict[int, str] = field(default_factory=dict)                 # storage digests after the call


@dataclass
class Expected:
    """An oracle's expected bytes of one tensor, as recorded for the script."""

    what: str
    tensor: TensorArg
    data: bytes
    rows: Optional[list[int]]


@dataclass
class Verdict:
    """How the failing test case ended: the judge's exception; ``kind`` says what the script checks:
    ``raised`` (step ``step`` raised it again), ``bytes`` (the oracle's expected bytes) or ``behaviour``
    (every step behaved as in the failing run)."""

    exception: BaseException
    kind: str
    step: Optional[int] = None
    expected: list[Expected] = field(default_factory=list)
    writes: list[tuple[int, int, bytes]] = field(default_factory=list)


class _Storage:
    """One storage the implementation was handed a view of."""

    def __init__(self, sid: int, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        self.sid, self.device = sid, str(tensor.device)
        self.raw = torch.empty(0, dtype=torch.uint8, device=tensor.device).set_(storage, 0, (storage.nbytes(),), (1,))
        self.last = _host(self.raw)
        self.initial = _bytes(self.last)


class Trace:
    """The calls of one test case into one implementation, in the order they started."""

    def __init__(self) -> None:
        self.steps: list[Step] = []
        self.storages: dict[tuple[str, int], _Storage] = {}
        self.problem = ""  # why no script can be written, if any
        self.threads: set[int] = set()
        self.verdict: Optional[Verdict] = None
        self._root: Any = None
        self._names: dict[int, tuple[str, Any]] = {}  # id(object the implementation made) -> (name, object)
        self._made_count: dict[str, int] = {}
        self._clocks: dict[int, tuple[int, Any, float]] = {}  # id(clock) -> (clock id, clock, last reading)
        self._lock = threading.RLock()

    # -- what the guard reports (never raising: recording must not change what a test sees) --------------
    def started(self, target: Any, root: Any, method: str, args: tuple, kwargs: dict, nested: bool) -> Step:
        try:
            return self._started(target, root, method, args, kwargs, nested)
        except Exception as exc:
            self._broke(exc)
            return Step(0, "?", method, (), {}, nested)

    def returned(self, step: Step, result: Any, made: Any = None) -> None:
        try:
            self._returned(step, result, made)
        except Exception as exc:
            self._broke(exc)

    def raised(self, step: Step, exc: BaseException) -> None:
        try:
            self._raised(step, exc)
        except Exception as error:
            self._broke(error)

    def _broke(self, exc: Exception) -> None:
        self.problem = self.problem or f"recording failed: {type(exc).__name__}: {exc}"

    def _started(self, target: Any, root: Any, method: str, args: tuple, kwargs: dict, nested: bool) -> Step:
        with self._lock:
            if self._root is None:
                self._root = root
                self._names[id(root)] = ("impl", root)
            elif root is not self._root:
                self.problem = self.problem or "the test case called two implementations"
            name = self._names.get(id(target), ("?", None))[0]
            if name == "?":
                self.problem = self.problem or f"{method} was called on an object the trace never saw made"
            step = Step(len(self.steps) + 1, name, method, (), {}, nested)
            self.steps.append(step)
            if not nested:
                self.threads.add(threading.get_ident())
                step.writes = self._harness_writes()
            names = _parameter_names(method, args, kwargs)
            step.args = tuple(self._encode(a, n) for a, n in zip(args, names))
            step.kwargs = {k: self._encode(v, k) for k, v in kwargs.items()}
            if not nested:
                step.clocks = self._clock_readings()
        return step

    def _returned(self, step: Step, result: Any, made: Any = None) -> None:
        with self._lock:
            step.outcome = "returned"
            if made is not None:
                kind = step.method.removeprefix("make_")
                self._made_count[kind] = self._made_count.get(kind, 0) + 1
                step.made = f"{kind}{self._made_count[kind]}"
                self._names[id(made)] = (step.made, made)
            else:
                step.result = plain(result)
            self._settle(step)

    def _raised(self, step: Step, exc: BaseException) -> None:
        with self._lock:
            cause = exc.__cause__
            text = str(exc)
            if type(exc).__name__ == "ImplementationFault" and cause is not None:
                original = cause
            elif type(exc).__name__ == "ImplementationFault":
                step.outcome = "hung" if " hung: " in text else "garbage"
                if step.outcome == "hung":
                    self.problem = self.problem or f"step {step.index} {step.target}.{step.method} hung; hangs are not replayed"
                self._settle(step)
                return
            else:
                original = exc
            if isinstance(original, InvariantViolation):
                step.outcome = "harness"
                self.problem = self.problem or (f"step {step.index}: a harness object the implementation called "
                                                f"raised inside it; harness objects are not replayed")
            else:
                step.outcome = "raised"
            # raised in a worker process: the implementation's own class name, as a replay in one process sees it
            name = original.type_name if isinstance(original, RemoteRaised) else type(original).__name__
            step.error, step.error_object = (name, str(original)), original
            self._settle(step)

    def finish(self, exc: BaseException) -> None:
        """The test case failed with ``exc``: record the verdict."""
        try:
            self._finish(exc)
        except Exception as error:
            self._broke(error)

    def _finish(self, exc: BaseException) -> None:
        with self._lock:
            writes = self._harness_writes()
            failed_at = next((s for s in self.steps if s.error_object is not None and
                              (exc.__cause__ is s.error_object or exc is s.error_object)), None)
            if failed_at is not None:
                self.verdict = Verdict(exc, "raised", failed_at.index, writes=writes)
                return
            expected = [e for e in (self._expected(x) for x in getattr(exc, "expected", ())) if e is not None]
            if expected and len(expected) == len(getattr(exc, "expected", ())):
                self.verdict = Verdict(exc, "bytes", expected=expected, writes=writes)
            else:
                self.verdict = Verdict(exc, "behaviour", writes=writes)

    # -- internals -----------------------------------------------------------------------------
    def _settle(self, step: Step) -> None:
        if step.nested:
            return
        for storage in self.storages.values():
            storage.last = _host(storage.raw)
            step.after[storage.sid] = _digest(storage.last)

    def _harness_writes(self) -> list[tuple[int, int, bytes]]:
        """Bytes changed in known storages since the last call ended: the harness wrote them."""
        writes = []
        for storage in self.storages.values():
            now = _host(storage.raw)
            changed = (now != storage.last).nonzero().flatten().tolist()
            for start, end in _runs(changed):
                writes.append((storage.sid, start, _bytes(now[start:end])))
            storage.last = now
        return writes

    def _clock_readings(self) -> dict[int, float]:
        readings = {}
        for key, (cid, clock, last) in list(self._clocks.items()):
            now = float(clock())
            if now != last or not any(cid in s.clocks for s in self.steps):
                readings[cid] = now
                self._clocks[key] = (cid, clock, now)
        return readings

    def _encode(self, value: Any, name: str) -> Any:
        if isinstance(value, _PLAIN):
            return value
        if isinstance(value, torch.Tensor):
            return self._tensor(value)
        if isinstance(value, (list, tuple)):
            encoded = [self._encode(v, name) for v in value]
            return encoded if isinstance(value, list) else tuple(encoded)
        if name == "receiver":  # checked first: a hostile receiver is read as the implementation reads it, once
            return _receiver(value)
        if name == "clock" and callable(value):
            if id(value) not in self._clocks:
                self._clocks[id(value)] = (len(self._clocks), value, float("nan"))
            return ClockArg(self._clocks[id(value)][0])
        through = ""
        if isinstance(value, Ledger):  # the allocator oracle wraps the guarded allocator the implementation made
            value, through = value.inner, "the allocator oracle (harness.engine.ledger)"
        made = self._names.get(id(_guarded_inner(value)))
        if made is not None:
            return MadeArg(made[0], through)
        self.problem = self.problem or f"argument {name} ({type(value).__name__}) cannot be rebuilt outside kvconform"
        return None

    def _tensor(self, tensor: torch.Tensor) -> TensorArg:
        key = _storage_key(tensor)
        if key not in self.storages:
            self.storages[key] = _Storage(len(self.storages), tensor)
        return TensorArg(self.storages[key].sid, str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape),
                         tuple(tensor.stride()), int(tensor.storage_offset()))

    def _expected(self, expected: ExpectedBytes) -> Optional[Expected]:
        actual = expected.actual
        key = _storage_key(actual)
        if key not in self.storages:
            return None  # a tensor the implementation never saw
        rows = None if expected.rows is None else expected.rows.nonzero().flatten().tolist()
        data = _bytes(_host(expected.expected.contiguous().view(torch.uint8).flatten()))
        what = f"tensor of storage {self.storages[key].sid} {tuple(actual.shape)}:{str(actual.dtype).removeprefix('torch.')}"
        return Expected(what, self._tensor(actual), data, rows)


def _storage_key(tensor: torch.Tensor) -> tuple[str, int]:
    """Which storage ``tensor`` views, by the storage itself rather than its data address: process isolation
    moves a CPU storage into shared memory in place when it first crosses, so its address changes mid-case."""
    return str(tensor.device), tensor.untyped_storage()._cdata


def _guarded_inner(value: Any) -> Any:
    """The object a ``harness.guard`` wrapper wraps (``None`` for anything else; no attribute read on others)."""
    if type(value).__module__ != "harness.guard":
        return None
    try:
        return object.__getattribute__(value, "_inner")
    except AttributeError:
        return None


def _parameter_names(method: str, args: tuple, kwargs: dict) -> list[str]:
    try:
        bound = documented_arguments(method, args, kwargs)
    except (TypeError, KeyError):
        return [""] * len(args)
    return list(bound.arguments)[:len(args)]


def _receiver(value: Any) -> ReceiverArg:
    type_name, text = type(value).__name__, repr(value)
    try:
        flag = getattr(value, "require_staging")
    except Exception as exc:
        return ReceiverArg(type_name, text, raises=(type(exc).__name__, str(exc)))
    if isinstance(flag, _PLAIN) or (isinstance(flag, list) and all(isinstance(v, _PLAIN) for v in flag)):
        return ReceiverArg(type_name, text, flag)
    try:
        truth = bool(flag)
    except Exception as exc:
        return ReceiverArg(type_name, text, raises=(type(exc).__name__, str(exc)))
    return ReceiverArg(type_name, text, (truth, repr(flag)), plain_value=False)


def _host(raw: torch.Tensor) -> torch.Tensor:
    """A host copy of ``raw`` (a snapshot of the recorder's own: not a sync the implementation made)."""
    if not raw.is_cuda:
        return raw.clone()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(0)
    try:
        return raw.cpu()
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def _bytes(host: torch.Tensor) -> bytes:
    return host.numpy().tobytes()


def _digest(host: torch.Tensor) -> str:
    return hashlib.sha256(_bytes(host)).hexdigest()[:16]


def _runs(indices: list[int], gap: int = 16) -> list[tuple[int, int]]:
    """Sorted byte indices as ``[start, end)`` runs, merging runs less than ``gap`` apart."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and i - runs[-1][1] < gap:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def pack(data: bytes) -> str:
    """Bytes as the script embeds them: zlib-compressed, base64 (``runtime.unpack`` reverses it)."""
    return base64.b64encode(zlib.compress(data, 9)).decode("ascii")


# -- when to record ---------------------------------------------------------------------------
_enabled = False
_current: Optional[Trace] = None  # the trace calls without a build context join (other threads, plain tests)


def _build_context() -> Any:
    try:
        from hypothesis.control import _current_build_context
    except ImportError:
        return None
    return _current_build_context.value


def active() -> Optional[Trace]:
    """The trace the current call belongs to, or ``None`` when nothing is recorded (the common case)."""
    global _current
    if not _enabled:
        return None
    context = _build_context()
    if context is None:
        return _current
    if not context.is_final:
        return None
    trace = getattr(context, TRACE_ATTRIBUTE, None)
    if trace is None:
        trace = Trace()
        setattr(context, TRACE_ATTRIBUTE, trace)
        context.tasks.append(lambda: _finish_final(trace))
        _current = trace
    return trace


def _finish_final(trace: Trace) -> None:
    """Runs when the final replay's build context exits; during a failure, ``sys.exc_info`` holds it."""
    global _current
    if _current is trace:
        _current = None
    exc = sys.exc_info()[1]
    if exc is not None:
        attach(trace, exc)


def attach(trace: Trace, exc: BaseException) -> None:
    """Record ``exc`` as the trace's verdict and hang the trace on it (first trace wins)."""
    if getattr(exc, TRACE_ATTRIBUTE, None) is not None or not trace.steps:
        return
    trace.finish(exc)
    try:
        setattr(exc, TRACE_ATTRIBUTE, trace)
    except AttributeError:
        pass


class enabled:
    """Record for the duration of one conformance test call (``with enabled(plain=...) as plain_trace``).

    ``plain``: the test is not a Hypothesis test, so its whole call is one trace (returned on entry)."""

    def __init__(self, plain: bool) -> None:
        self.trace = Trace() if plain else None

    def __enter__(self) -> Optional[Trace]:
        global _enabled, _current
        _enabled, _current = True, self.trace
        return self.trace

    def __exit__(self, *exc_info: Any) -> None:
        global _enabled, _current
        _enabled, _current = False, None
