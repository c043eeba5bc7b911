"""What stands for an object on the other side: handles and proxies of the worker's objects, served judge objects.

The implementation and the allocators and handlers it makes live in the
worker; the judge holds a :class:`RemoteObject` for each, built from the
:class:`Handle` the worker sent: the same attributes, and for each interface
method a :class:`RemoteMethod` carrying the method's signature, so the
load-time and return-value checks (``harness/signatures.py``,
``harness/returns.py``) read it as they read a local object.  Calling a
``RemoteMethod`` is the guard's business: ``harness/guard.py`` hands it its
deadline (:meth:`RemoteMethod.call_with_deadline`).

Objects the judge passes where the interface documents a Protocol or a
callable (``make_decode_handler``'s ``allocator`` and ``clock``) cross as
:class:`Served` tokens and are called back, so the engine's ledger sees every
allocator call.
"""

from __future__ import annotations

import inspect
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

ROOT = 0  #: handle of the implementation object itself


@dataclass(frozen=True)
class Unpicklable:
    """A value the implementation returned that cannot cross (a lambda, a lock ...): its type and text."""

    type_name: str
    text: str

    def __repr__(self) -> str:
        return f"{self.text} (a {self.type_name} that cannot leave the worker)"


@dataclass(frozen=True)
class Handle:
    """An object kept in the worker: its id, how it prints, its methods' signatures and plain attributes."""

    id: int
    type_name: str
    text: str
    methods: dict  #: name -> bare ``inspect.Signature`` (or None when it has none), for callable ones
    not_callable: tuple  #: names present but not callable
    attributes: dict


def describe_object(obj: Any, handle: int, methods: tuple[str, ...], attributes: dict) -> Handle:
    """The worker's description of ``obj`` for the judge (run in the worker)."""
    found, not_callable = {}, []
    for name in methods:
        try:
            value = getattr(obj, name, None)
        except Exception:
            value = None
        if value is None:
            continue
        if not callable(value):
            not_callable.append(name)
            continue
        found[name] = _portable_signature(value)
    try:
        text = repr(obj)
    except Exception:
        text = f"<{type(obj).__name__}>"
    return Handle(handle, type(obj).__name__, text[:200], found, tuple(not_callable), attributes)


def _portable_signature(method: Any) -> Optional[inspect.Signature]:
    try:
        signature = inspect.signature(method)
    except (TypeError, ValueError):
        return None
    portable = []
    for p in signature.parameters.values():
        default = p.default
        if not (default is inspect.Parameter.empty or default is None or isinstance(default, (bool, int, float, str))):
            default = None  # only whether there is a default matters to the checks
        portable.append(p.replace(annotation=inspect.Parameter.empty, default=default))
    return signature.replace(parameters=portable, return_annotation=inspect.Signature.empty)


@dataclass(frozen=True)
class Served:
    """A judge object passed to the worker by reference: the worker calls it back through its token."""

    token: int

    def __reduce__(self) -> tuple:
        return _served_in_worker, (self.token,)


def _served_in_worker(token: int) -> Any:
    from harness.isolation.worker import JudgeObject  # only ever unpickled in the worker

    return JudgeObject(token)


class _NotCallable:
    """Stands for an attribute that is present but not callable (so the checks report it)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<non-callable {self.name}>"


@dataclass
class RemoteMethod:
    """One method of a worker object; ``transport(handle, method, args, kwargs, timeout)`` makes the call."""

    owner: "RemoteObject"
    name: str
    __signature__: Optional[inspect.Signature]
    transport: Callable[..., Any] = field(repr=False)

    def call_with_deadline(self, args: tuple, kwargs: dict, timeout: float) -> Any:
        return self.transport(self.owner, self.name, args, kwargs, timeout)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"{self.owner!r}.{self.name} lives in the worker process: call it through harness.guard")


class RemoteObject:
    """The judge's stand-in for a worker object (see the module docstring)."""

    def __init__(self, handle: Handle, generation: Any, transport: Callable[..., Any],
                 on_release: Callable[[Any, int], None]) -> None:
        self._handle, self._generation = handle, generation
        self._methods = {name: RemoteMethod(self, name, signature, transport)
                         for name, signature in handle.methods.items()}
        for key, value in handle.attributes.items():
            if value is not None:
                object.__setattr__(self, key, value)
        for name in handle.not_callable:
            object.__setattr__(self, name, _NotCallable(name))
        weakref.finalize(self, on_release, generation, handle.id)

    @property
    def handle(self) -> int:
        return self._handle.id

    @property
    def generation(self) -> Any:
        return self._generation

    def __getattr__(self, name: str) -> Any:
        methods = self.__dict__.get("_methods", {})
        if name in methods:
            return methods[name]
        raise AttributeError(name)

    def __repr__(self) -> str:
        return self._handle.text
