"""Keep the harness up whatever an implementation does, and say which invariant it broke.

``guard(impl)`` wraps an implementation so that every call into it, and into
the allocators and handlers it makes:

* runs with a deadline.  The call runs on a helper thread (one per calling
  thread, so two threads driving a handler still overlap); the caller waits
  for it like a watchdog.  A call that does not return in time is reported as
  an :class:`ImplementationFault` ("hung") naming the call,
  with the calls that led there, and Hypothesis adds the repro; the stuck
  helper is abandoned (and, when it spins in Python code, stopped) so the
  rest of the suite goes on.  The deadline is ``$KVCONFORM_CALL_TIMEOUT_S``
  (default 30 s, generous for a first CUDA call that compiles kernels); once
  an implementation has hung, its later calls get
  ``$KVCONFORM_CALL_TIMEOUT_AFTER_HANG_S`` (default 0.05 s), so that
  shrinking a hang takes seconds, not hours (each shrink step that reaches
  the hang waits that long);
* turns an exception into an :class:`ImplementationFault` naming the method
  and its arguments (an ``InvariantViolation`` raised by harness code the
  implementation called back passes through untouched);
* checks what comes back against the return annotation its Protocol documents
  in ``harness/interface.py`` (``poll`` returns a state, ``assign`` ``None`` or
  three integers, ...; ``harness/returns.py``), so garbage is reported where
  it appears instead of as a confusing failure later.  A returned generator is
  materialized once and that list is passed on: checking never consumes it.

* reports each call, during the final replay of a failing example, to the
  repro recorder (``harness.repro.recorder``), which turns it into a standalone
  script.  The plugin's ``impl`` fixture hands every test the implementation
  behind this guard, so every call of every test crosses this one boundary.
  ``guard(impl, checked=False)`` only records, passing calls straight through
  (no deadline, no helper thread); only tests/test_repro.py uses it now.

The transport under the deadline is either a helper thread in this process
(``--in-process``) or the worker process of ``harness.isolation``: a method of
a worker object (:class:`~harness.isolation.proxy.RemoteMethod`) is called
there with the same deadline, and a worker that dies under the call is a
"crashed: the worker process died (...)" fault, a worker that does not answer
in time is killed and the call "hung".  Either way every call goes through
``_Guarded._call``, the one place that labels, times and checks calls.

A fault is reported on the invariant of the test it happens in: the test's
``invariant`` marker decides (``oracles.attribute``), as for every violation.

Calls made by an implementation into harness objects it was given (the
engine's ledger) run inline on the same helper thread (in-process) or on the
waiting judge thread (isolated), under the outer deadline.
"""

from __future__ import annotations

import collections
import ctypes
import dis
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from harness import settings
from harness.isolation.channel import RemoteRaised, WorkerDied, WorkerHung
from harness.isolation.proxy import RemoteMethod
from harness.interface import CAPABILITY_TABLE, OPTIONAL_EXTRAS, Allocator, DecodeHandler, method_owners, protocol_methods
from harness.oracles import InvariantViolation
from harness.repro import recorder
from harness.returns import check_return, expected_return

TIMEOUT_ENV_VAR = settings.CALL_TIMEOUT
AFTER_HANG_ENV_VAR = settings.CALL_TIMEOUT_AFTER_HANG
TRAIL_LENGTH = 12



@dataclass(frozen=True)
class _Documented:
    """What the interface says about one method: its return annotation."""

    returns: Any


#: Every method the guard wraps (each capability's, and those of the allocators and handlers its factories
#: make), with its documented return.
_DOCUMENTED = {method: _Documented(expected_return(protocol, method))
               for method, (cap, protocol) in method_owners().items()}
_IMPLEMENTATION_METHODS = frozenset(method for cap in CAPABILITY_TABLE for method in cap.methods)


class ImplementationFault(InvariantViolation):
    """The implementation raised, returned garbage or hung; the message names the call."""

    made = 0  #: how many were made in this process (the plugin retires a worker after a test that saw one)

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        ImplementationFault.made += 1


class _Abandoned(BaseException):
    """Raised inside a helper thread whose call outlived its deadline (BaseException: ``except Exception`` keeps out)."""


def call_timeout_s(after_hang: bool) -> float:
    """Deadline of one call, from ``harness.settings`` (validated before the first test; tests may lower it)."""
    current = settings.current()
    return current.call_timeout_after_hang_s if after_hang else current.call_timeout_s


# -- calls with a deadline --------------------------------------------------------------------
@dataclass
class _Job:
    fn: Callable[..., Any]
    args: tuple
    kwargs: dict
    stream: Any
    done: threading.Lock = field(default_factory=threading.Lock)  # held until the call returned
    result: Any = None
    error: Optional[BaseException] = None
    pending: list["_CallLabel"] = field(default_factory=list)  # calls in progress on the helper, outermost first

    def __post_init__(self) -> None:
        self.done.acquire()

    def run(self) -> None:
        try:
            if self.stream is not None:
                with torch.cuda.stream(self.stream):
                    self.result = self.fn(*self.args, **self.kwargs)
            else:
                self.result = self.fn(*self.args, **self.kwargs)
        except _Abandoned:
            raise
        except BaseException as exc:  # handed to the caller, who decides what it means
            self.error = exc
        finally:
            self.done.release()

    def wait(self, timeout: float) -> bool:
        return self.done.acquire(timeout=timeout)


class _Helper(threading.Thread):
    """Runs the calls of one calling thread, one at a time; abandoned (and maybe stopped) when a call hangs.

    Plain locks hand the job over (a condition variable costs several times more per call).
    """

    def __init__(self) -> None:
        super().__init__(name="kvconform-call", daemon=True)
        self._wake = threading.Lock()
        self._wake.acquire()  # held while there is nothing to do
        self._job: Optional[_Job] = None
        self._stopping = False

    def submit(self, job: Optional[_Job]) -> None:
        if job is None:
            self._stopping = True
        else:
            self._job = job
        try:
            self._wake.release()
        except RuntimeError:  # already woken (a stop request after an abandon): nothing more to do
            pass

    def run(self) -> None:
        _local.helper_job = None
        try:
            while True:
                self._wake.acquire()
                job, self._job = self._job, None
                if self._stopping or job is None:
                    return
                _local.helper_job = job
                job.run()
                _local.helper_job = None
        except _Abandoned:
            return

    def abandon(self) -> None:
        """Stop the helper: ask it to leave its loop and, when it spins in Python code, interrupt it.

        A thread blocked in C (a lock, an event, a sleep) is left blocked: before
        Python 3.13 an asynchronous exception pending on a thread that never runs
        keeps every other thread's eval breaker set, which livelocks the test thread.
        """
        self.submit(None)
        ident = self.ident
        if ident is None or (sys.version_info < (3, 13) and not _spins_in_python(ident)):
            return  # never started, or blocked in C
        try:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(_Abandoned))
        except Exception:  # not CPython: the daemon thread is simply left behind
            pass


def _spins_in_python(ident: int) -> bool:
    """Whether thread ``ident`` burns CPU in Python bytecode (then an asynchronous exception reaches it at once),
    rather than waiting or computing inside a C call (where it would stay pending)."""
    try:
        clock = time.pthread_getcpuclockid(ident)
        before = time.clock_gettime(clock)
        time.sleep(0.02)
        busy = time.clock_gettime(clock) - before > 0.001
    except (AttributeError, OSError):  # no per-thread CPU clocks here: never interrupt
        return False
    frame = sys._current_frames().get(ident)
    if not busy or frame is None:
        return False
    code = frame.f_code.co_code
    opcode = dis.opname[code[frame.f_lasti]] if 0 <= frame.f_lasti < len(code) else "CALL"
    return "CALL" not in opcode


class _HelperOwner:
    """Lives in the calling thread's locals; when that thread ends, its helper is told to stop."""

    def __init__(self, helper: _Helper) -> None:
        self.helper = helper
        weakref.finalize(self, helper.submit, None)


_local = threading.local()


class _HungImplementations:
    """Implementations that hung once: their later calls get the short deadline (weakly held when possible)."""

    def __init__(self) -> None:
        self._objects: weakref.WeakSet = weakref.WeakSet()
        self._ids: set[int] = set()  # implementations that cannot be weakly referenced

    def add(self, impl: Any) -> None:
        try:
            self._objects.add(impl)
        except TypeError:
            self._ids.add(id(impl))

    def __contains__(self, impl: Any) -> bool:
        try:
            return impl in self._objects
        except TypeError:
            return id(impl) in self._ids

    def clear(self) -> None:
        self._objects.clear()
        self._ids.clear()


_hung = _HungImplementations()


def _helper() -> _Helper:
    owner = getattr(_local, "owner", None)
    if owner is None or not owner.helper.is_alive():
        helper = _Helper()
        helper.start()
        owner = _local.owner = _HelperOwner(helper)
    return owner.helper


def _current_stream() -> Any:
    """The caller's CUDA stream, so the helper thread issues work where the caller would."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.current_stream()
    return None


# -- the guard --------------------------------------------------------------------------------
@dataclass
class _Context:
    """What every guarded object of one implementation shares."""

    root: Any
    convert_errors: bool = True
    checked: bool = True  # False: calls go straight through (recorded only, see ``guard``)
    trail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=TRAIL_LENGTH))

    def describe_trail(self) -> str:
        return "; ".join(map(str, self.trail)) if self.trail else "(none)"


@dataclass(frozen=True)
class _CallLabel:
    """One call, formatted only when a message needs it (formatting tensors on every call is slow)."""

    role: str
    method: str
    args: tuple
    kwargs: dict

    def __str__(self) -> str:
        return f"{self.role}.{self.method}({_show_args(self.args, self.kwargs)})"


class _Guarded:
    """Common machinery: guarded method calls on a wrapped object."""

    _ROLE = "impl"
    _METHODS: frozenset[str] = frozenset()

    def __init__(self, inner: Any, context: _Context) -> None:
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "_context", context)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name in self._METHODS and callable(attr):
            return lambda *args, **kwargs: self._call(name, attr, args, kwargs)
        return attr

    def __repr__(self) -> str:
        return f"guarded {self._ROLE} {self._inner!r}"

    def _call(self, name: str, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        run = self._call_checked if self._context.checked else self._call_through
        trace = recorder.active()
        if trace is None:
            return run(name, fn, args, kwargs)
        # The final replay of a failing example: every call is recorded for the standalone repro.  A call made
        # while another runs on this thread (unchecked) or on a helper (checked) is the implementation's own.
        depth = getattr(_local, "recorded_depth", 0)
        step = trace.started(self._inner, self._context.root, name, args, kwargs,
                             nested=depth > 0 or getattr(_local, "helper_job", None) is not None)
        _local.recorded_depth = depth + 1
        try:
            result = run(name, fn, args, kwargs)
        except BaseException as exc:
            trace.raised(step, exc)
            raise
        finally:
            _local.recorded_depth = depth
        trace.returned(step, result, made=result._inner if isinstance(result, _Guarded) else None)
        return result

    def _call_through(self, name: str, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        return self._wrap_result(name, fn(*args, **kwargs))

    def _call_checked(self, name: str, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        label = _CallLabel(self._ROLE, name, args, kwargs)
        self._context.trail.append(label)
        outer = getattr(_local, "helper_job", None)
        if outer is not None:  # called back from inside the implementation: the outer deadline covers it
            outer.pending.append(label)
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                converted = self._raised(label, exc)
                if converted is exc:
                    raise
                raise converted from exc
            finally:
                outer.pending.pop()
        else:
            result = self._with_deadline(label, fn, args, kwargs)
        result, problem = check_return(_DOCUMENTED[name].returns, result)
        if problem:
            raise ImplementationFault(f"{label} returned garbage: {_show(result)} {problem}; "
                                      f"calls so far: {self._context.describe_trail()}")
        return self._wrap_result(name, result)

    def _with_deadline(self, label: "_CallLabel", fn, args, kwargs) -> Any:
        hung_before = self._context.root in _hung
        timeout = call_timeout_s(after_hang=hung_before)
        if isinstance(fn, RemoteMethod):
            return self._in_worker(label, fn, args, kwargs, timeout, hung_before)
        job = _Job(fn, args, kwargs, _current_stream(), pending=[label])
        helper = _helper()
        helper.submit(job)
        if not job.wait(timeout):
            _local.owner = None  # the next call gets a fresh helper
            stuck = job.pending[-1] if job.pending else label
            helper.abandon()
            _hung.add(self._context.root)
            raise ImplementationFault(
                f"{stuck} hung: no return within {timeout:g}s "
                f"({'already hung before, short deadline' if hung_before else f'${TIMEOUT_ENV_VAR}'}); "
                f"calls so far: {self._context.describe_trail()}")
        if job.error is not None:
            converted = self._raised(label, job.error)
            if converted is job.error:
                raise converted
            raise converted from job.error
        return job.result

    def _in_worker(self, label: "_CallLabel", fn: RemoteMethod, args, kwargs, timeout: float,
                   hung_before: bool) -> Any:
        """The call made in the worker process (``harness.isolation``): the same faults as on a helper thread,
        plus a worker that died under the call."""
        try:
            return fn.call_with_deadline(args, kwargs, timeout)
        except WorkerHung as hung:
            _hung.add(self._context.root)
            raise ImplementationFault(
                f"{label} hung: {hung} "
                f"({'already hung before, short deadline' if hung_before else f'${TIMEOUT_ENV_VAR}'}); the worker "
                f"process was killed and a fresh one continues; calls so far: {self._context.describe_trail()}"
            ) from None
        except WorkerDied as died:
            raise ImplementationFault(f"{label} crashed: {died}; a fresh worker process continues; "
                                      f"calls so far: {self._context.describe_trail()}") from None
        except RemoteRaised as raised:
            if not self._context.convert_errors:
                raise
            where = f" (raised at {raised.raised.where})" if raised.raised.where else ""
            # from raised: the cause names the implementation's exception (and its nearest builtin class), as
            # in-process, for the xfail matcher and the repro recorder
            raise ImplementationFault(f"{label} raised {raised.type_name}: {raised}{where}; "
                                      f"calls so far: {self._context.describe_trail()}") from raised
        except InvariantViolation:
            raise
        except Exception as exc:  # a builtin exception the implementation raised, crossed as itself
            converted = self._raised(label, exc)
            if converted is exc:
                raise
            raise converted from exc

    def _raised(self, label: "_CallLabel", exc: BaseException) -> BaseException:
        """What to raise for an exception out of the implementation (harness violations pass through)."""
        if isinstance(exc, InvariantViolation) or not self._context.convert_errors:
            return exc
        return ImplementationFault(f"{label} raised {type(exc).__name__}: {exc}; "
                                   f"calls so far: {self._context.describe_trail()}")

    def _wrap_result(self, name: str, result: Any) -> Any:
        return result


class GuardedAllocator(_Guarded):
    _ROLE = "allocator"
    _METHODS = frozenset(protocol_methods(Allocator))


class GuardedHandler(_Guarded):
    _ROLE = "handler"
    _METHODS = frozenset(protocol_methods(DecodeHandler) + protocol_methods(OPTIONAL_EXTRAS[DecodeHandler]))


class GuardedImplementation(_Guarded):
    """An implementation whose every interface method is guarded; allocators and handlers it makes are too."""

    _ROLE = "impl"
    _METHODS = _IMPLEMENTATION_METHODS

    @property
    def capabilities(self) -> frozenset[str]:
        return frozenset(self._inner.capabilities)

    @property
    def name(self) -> str:
        return getattr(self._inner, "name", type(self._inner).__name__)

    @property
    def unguarded(self) -> Any:
        return self._inner

    def _wrap_result(self, name: str, result: Any) -> Any:
        # Each allocator and handler keeps its own trail: a message lists that object's calls only.
        made = _MADE_BY.get(name)
        if made is None:
            return result
        return _GUARD_OF[made](result, _Context(self._context.root, self._context.convert_errors,
                                                self._context.checked))


#: Factory method -> Protocol of what it makes, and the guard each made object gets.
_MADE_BY: dict[str, type] = {factory: made for cap in CAPABILITY_TABLE for factory, made in cap.products.items()}
_GUARD_OF: dict[type, type[_Guarded]] = {Allocator: GuardedAllocator, DecodeHandler: GuardedHandler}


def guard(impl: Any, convert_errors: bool = True, checked: bool = True) -> GuardedImplementation:
    """``impl`` with deadlines, exception and garbage checks on every call (idempotent).

    ``convert_errors=False`` lets the implementation's exceptions through
    unchanged, for tests that expect some (a ``ValueError`` for a bad topology).
    ``checked=False`` passes every call straight through, only recorded when a
    failing example is replayed (``harness.repro``); ``guard(...)`` of it adds
    the checks.  The plugin's ``impl`` fixture uses the checked guard.
    """
    if isinstance(impl, GuardedImplementation):
        context = impl._context
        if (context.checked or not checked) and context.convert_errors == convert_errors:
            return impl
        return GuardedImplementation(impl.unguarded, _Context(context.root, convert_errors, checked or context.checked))
    return GuardedImplementation(impl, _Context(impl, convert_errors, checked))


def forget_hangs() -> None:
    """Give every implementation the full deadline again (for tests of the guard itself)."""
    _hung.clear()


# -- what the calls return --------------------------------------------------------------------
def _show(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        if value.numel() <= 8 and value.dim() <= 1:
            return f"tensor({value.tolist()})"
        return f"tensor{tuple(value.shape)}:{str(value.dtype).removeprefix('torch.')}"
    if isinstance(value, (list, tuple)):
        inner = ", ".join(_show(v) for v in value[:4]) + (f", ... {len(value)} items" if len(value) > 4 else "")
        return f"[{inner}]" if isinstance(value, list) else f"({inner}{',' * (len(value) == 1)})"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _show_args(args: tuple, kwargs: dict) -> str:
    shown = [_show(a) for a in args] + [f"{k}={_show(v)}" for k, v in kwargs.items()]
    return ", ".join(shown)
