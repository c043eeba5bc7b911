"""Receivers generated from Python's attribute and truthiness protocols.

A receiver is composed of two drawn halves:

* an *access*: how ``receiver.require_staging`` is reached -- an instance
  attribute, a class attribute, a set or unset ``__slots__`` entry, a
  property, a data or non-data descriptor, ``functools.cached_property``,
  ``__getattr__``, ``__getattribute__``, a metaclass (the class object itself
  finds it; its instances do not), a module attribute, a dict key (no
  attribute at all), a named tuple field; each either *yields* the value, is
  *absent* (``AttributeError``) or *raises* another exception (``RuntimeError``,
  ``KeyError``, ``ValueError``, ``TypeError``, ``NotImplementedError``);
* a *value*: what ``bool(value)`` does -- bools, ints, strings, containers,
  ``None``, NaN, numpy and torch scalars (truthy or falsy), objects whose
  ``__bool__`` or ``__len__`` return, return a non-bool or a negative length
  (``bool()`` raises), or raise, and multi-element numpy arrays and torch
  tensors (ambiguous: ``bool()`` raises).

The decode side stages only when the access yields and the value's truth
test returns True; anything absent or raising means the plain path.  The
strategy draws the outcome it was asked for (``truthy``) and picks halves
that produce it, so it keeps no oracle of its own (the harness's oracle
judges).  Every receiver's repr names its two halves.
"""

from __future__ import annotations

import functools
import types
from typing import Any, Callable, NamedTuple

from hypothesis import strategies as st

YIELDS, ABSENT, RAISES = "yields", "absent", "raises"
TRUTHY, FALSY = "truthy", "falsy"  # RAISES is the third outcome of a truth test
_NAME = "require_staging"

#: Exceptions an attribute lookup or a truth test raises besides AttributeError.
_ERRORS: tuple[type[Exception], ...] = (RuntimeError, KeyError, ValueError, TypeError, NotImplementedError)


# --------------------------------------------------------------------------- values


class _Value:
    """A drawn flag value: a maker (fresh object per receiver), its truth-test outcome and a label."""

    def __init__(self, label: str, outcome: str, make: Callable[[], Any]) -> None:
        self.label, self.outcome, self.make = label, outcome, make


def _truth_object(label: str, **methods: Any) -> Callable[[], Any]:
    """Maker of an instance of a fresh class with the given dunder methods and a repr naming them."""
    def make() -> Any:
        cls = type("Flag", (), {**methods, "__repr__": lambda self: f"<flag {label}>"})
        return cls()
    return make


def _raiser(error: type[Exception]) -> Callable[..., Any]:
    def method(self: Any, *args: Any) -> Any:
        raise error(f"{_NAME} cannot be evaluated here")
    return method


def _values() -> list[_Value]:
    values = [
        _Value("True", TRUTHY, lambda: True), _Value("False", FALSY, lambda: False),
        _Value("1", TRUTHY, lambda: 1), _Value("0", FALSY, lambda: 0), _Value("-1", TRUTHY, lambda: -1),
        _Value("'yes'", TRUTHY, lambda: "yes"), _Value("''", FALSY, lambda: ""), _Value("'False'", TRUTHY, lambda: "False"),
        _Value("[0]", TRUTHY, lambda: [0]), _Value("[]", FALSY, list), _Value("{}", FALSY, dict),
        _Value("None", FALSY, lambda: None), _Value("nan", TRUTHY, lambda: float("nan")), _Value("0.0", FALSY, lambda: 0.0),
        _Value("0j", FALSY, lambda: 0j), _Value("b'\\x00'", TRUTHY, lambda: b"\x00"),
        _Value("__bool__ -> True", TRUTHY, _truth_object("__bool__ -> True", __bool__=lambda self: True)),
        _Value("__bool__ -> False", FALSY, _truth_object("__bool__ -> False", __bool__=lambda self: False)),
        _Value("__len__ -> 3", TRUTHY, _truth_object("__len__ -> 3", __len__=lambda self: 3)),
        _Value("__len__ -> 0", FALSY, _truth_object("__len__ -> 0", __len__=lambda self: 0)),
        _Value("__bool__ -> False beside __len__ -> 3", FALSY, _truth_object(
            "__bool__ -> False beside __len__ -> 3", __bool__=lambda self: False, __len__=lambda self: 3)),
        _Value("__bool__ -> 1 (not a bool)", RAISES, _truth_object("__bool__ -> 1", __bool__=lambda self: 1)),
        _Value("__len__ -> -1", RAISES, _truth_object("__len__ -> -1", __len__=lambda self: -1)),
        _Value("__len__ -> 2**64", RAISES, _truth_object("__len__ -> 2**64", __len__=lambda self: 1 << 64)),
        _Value("__bool__ = None", RAISES, _truth_object("__bool__ = None", __bool__=None)),
    ]
    for error in _ERRORS:
        values.append(_Value(f"__bool__ raises {error.__name__}", RAISES,
                             _truth_object(f"__bool__ raises {error.__name__}", __bool__=_raiser(error))))
        values.append(_Value(f"__len__ raises {error.__name__}", RAISES,
                             _truth_object(f"__len__ raises {error.__name__}", __len__=_raiser(error))))
    try:
        import numpy
    except ImportError:  # numpy is optional here
        pass
    else:
        values += [
            _Value("numpy.True_", TRUTHY, lambda: numpy.bool_(True)), _Value("numpy.False_", FALSY, lambda: numpy.bool_(False)),
            _Value("numpy.int64(0)", FALSY, lambda: numpy.int64(0)), _Value("numpy.uint8(255)", TRUTHY, lambda: numpy.uint8(255)),
            _Value("numpy.float32(0.5)", TRUTHY, lambda: numpy.float32(0.5)),
            _Value("numpy.array([1])", TRUTHY, lambda: numpy.array([1])),
            _Value("numpy.array([1, 0]) (ambiguous)", RAISES, lambda: numpy.array([1, 0])),
        ]
    import torch

    values += [
        _Value("torch.tensor(True)", TRUTHY, lambda: torch.tensor(True)),
        _Value("torch.tensor(False)", FALSY, lambda: torch.tensor(False)),
        _Value("torch.tensor(0)", FALSY, lambda: torch.tensor(0)), _Value("torch.tensor([2])", TRUTHY, lambda: torch.tensor([2])),
        _Value("torch.tensor([1, 1]) (ambiguous)", RAISES, lambda: torch.tensor([1, 1])),
        _Value("torch.tensor([]) (ambiguous)", RAISES, lambda: torch.tensor([])),
    ]
    return values


_VALUES = _values()


# --------------------------------------------------------------------------- accesses


class _Access:
    """How the attribute is reached: ``build(value, label)`` returns the receiver; ``outcome`` says whether
    the lookup yields the value, finds nothing, or raises."""

    def __init__(self, label: str, outcome: str, build: Callable[[Any, str], object]) -> None:
        self.label, self.outcome, self.build = label, outcome, build


def _repr_for(label: str) -> Callable[[Any], str]:
    return lambda self: f"<generated receiver: {label}>"


def _klass(label: str, namespace: dict[str, Any], bases: tuple[type, ...] = (), meta: type = type) -> type:
    return meta("GeneratedReceiver", bases, {**namespace, "__repr__": _repr_for(label)})


def _instance_attribute(value: Any, label: str) -> object:
    obj = _klass(label, {})()
    setattr(obj, _NAME, value)
    return obj


def _slots(value: Any, label: str) -> object:
    obj = _klass(label, {"__slots__": (_NAME,)})()
    setattr(obj, _NAME, value)
    return obj


class _DataDescriptor:
    def __init__(self, value: Any, error: type[Exception] | None) -> None:
        self.value, self.error = value, error

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        if self.error is not None:
            raise self.error(f"{_NAME} descriptor refuses")
        return self.value

    def __set__(self, obj: Any, value: Any) -> None:
        raise AttributeError("read-only")


def _data_descriptor(error: type[Exception] | None) -> Callable[[Any, str], object]:
    return lambda value, label: _klass(label, {_NAME: _DataDescriptor(value, error)})()


class _NonDataDescriptor:
    def __init__(self, value: Any) -> None:
        self.value = value

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        return self.value


def _property(error: type[Exception] | None) -> Callable[[Any, str], object]:
    def build(value: Any, label: str) -> object:
        def get(self: Any) -> Any:
            if error is not None:
                raise error(f"{_NAME} is unavailable")
            return value
        return _klass(label, {_NAME: property(get)})()
    return build


def _cached_property(error: type[Exception] | None) -> Callable[[Any, str], object]:
    def build(value: Any, label: str) -> object:
        def get(self: Any) -> Any:
            if error is not None:
                raise error(f"{_NAME} is unavailable")
            return value
        return _klass(label, {_NAME: functools.cached_property(get)})()
    return build


def _getattr_hook(error: type[Exception] | None) -> Callable[[Any, str], object]:
    """``__getattr__`` answering only the flag; other names stay absent (repr probes stay honest)."""
    def build(value: Any, label: str) -> object:
        def __getattr__(self: Any, name: str) -> Any:
            if name != _NAME:
                raise AttributeError(name)
            if error is not None:
                raise error(f"{_NAME} lookup failed")
            return value
        return _klass(label, {"__getattr__": __getattr__})()
    return build


def _getattribute_hook(error: type[Exception] | None) -> Callable[[Any, str], object]:
    def build(value: Any, label: str) -> object:
        def __getattribute__(self: Any, name: str) -> Any:
            if name != _NAME:
                return object.__getattribute__(self, name)
            if error is not None:
                raise error(f"{_NAME} lookup failed")
            return value
        return _klass(label, {"__getattribute__": __getattribute__})()
    return build


def _metaclass(on_class: bool) -> Callable[[Any, str], object]:
    """The flag lives on the metaclass: the class object finds it, its instances do not."""
    def build(value: Any, label: str) -> object:
        meta = type("GeneratedMeta", (type,), {_NAME: value, "__repr__": _repr_for(label)})
        cls = _klass(label, {}, meta=meta)
        return cls if on_class else cls()
    return build


class _LabelledModule(types.ModuleType):
    label = ""

    def __repr__(self) -> str:
        return f"<generated receiver: {self.label}>"


def _module(value: Any, label: str) -> object:
    module = _LabelledModule("generated_receiver_module")
    module.label = label
    setattr(module, _NAME, value)
    return module


class _LabelledDict(dict):
    label = ""

    def __repr__(self) -> str:
        return f"<generated receiver: {self.label}>"


def _dict_key(value: Any, label: str) -> object:
    receiver = _LabelledDict({_NAME: value})
    receiver.label = label
    return receiver


class _Flagged(NamedTuple):
    require_staging: Any
    label: str

    def __repr__(self) -> str:
        return f"<generated receiver: {self.label}>"


def _accesses() -> list[_Access]:
    accesses = [
        _Access("instance attribute", YIELDS, _instance_attribute),
        _Access("class attribute", YIELDS, lambda value, label: _klass(label, {_NAME: value})()),
        _Access("__slots__ set", YIELDS, _slots),
        _Access("__slots__ unset", ABSENT, lambda value, label: _klass(label, {"__slots__": (_NAME,)})()),
        _Access("property", YIELDS, _property(None)),
        _Access("data descriptor", YIELDS, _data_descriptor(None)),
        _Access("non-data descriptor", YIELDS, lambda value, label: _klass(label, {_NAME: _NonDataDescriptor(value)})()),
        _Access("cached_property", YIELDS, _cached_property(None)),
        _Access("__getattr__", YIELDS, _getattr_hook(None)),
        _Access("__getattribute__", YIELDS, _getattribute_hook(None)),
        _Access("metaclass attribute, read on the class", YIELDS, _metaclass(on_class=True)),
        _Access("metaclass attribute, read on an instance", ABSENT, _metaclass(on_class=False)),
        _Access("module attribute", YIELDS, _module),
        _Access("named tuple field", YIELDS, lambda value, label: _Flagged(value, label)),
        _Access("dict key, no attribute", ABSENT, _dict_key),
        _Access("property raises AttributeError", ABSENT, _property(AttributeError)),
        _Access("__getattr__ raises AttributeError", ABSENT, _getattr_hook(AttributeError)),
        _Access("__getattribute__ raises AttributeError", ABSENT, _getattribute_hook(AttributeError)),
    ]
    for error in _ERRORS:
        name = error.__name__
        accesses += [
            _Access(f"property raises {name}", RAISES, _property(error)),
            _Access(f"data descriptor raises {name}", RAISES, _data_descriptor(error)),
            _Access(f"cached_property raises {name}", RAISES, _cached_property(error)),
            _Access(f"__getattr__ raises {name}", RAISES, _getattr_hook(error)),
            _Access(f"__getattribute__ raises {name}", RAISES, _getattribute_hook(error)),
        ]
    return accesses


_ACCESSES = _accesses()
#: Every access and value label, for censuses (tests/test_strategies.py).
ACCESS_LABELS = tuple(a.label for a in _ACCESSES)
VALUE_LABELS = tuple(v.label for v in _VALUES)


def _stages(access: _Access, value: _Value) -> bool:
    return access.outcome == YIELDS and value.outcome == TRUTHY


@st.composite
def _generated(draw: st.DrawFn, choices: tuple[tuple[_Access, tuple[_Value, ...]], ...]) -> object:
    """An access, then a value among those giving the wanted outcome with it (two index draws, so every
    access is as common as every other in a census)."""
    access, values = choices[draw(st.integers(0, len(choices) - 1))]
    value = values[draw(st.integers(0, len(values) - 1))]
    return rebuild_receiver(_ACCESSES.index(access), _VALUES.index(value))


def rebuild_receiver(access: int, value: int) -> object:
    """A fresh generated receiver from its recipe (indices into the accesses and values), remembered so that
    :func:`receiver_recipe` can answer it: how a process that did not draw it (an isolated implementation's
    worker) rebuilds the same receiver, closures and descriptors included, in its first-read state."""
    made = _ACCESSES[access].build(_VALUES[value].make(), f"{_ACCESSES[access].label}, value {_VALUES[value].label}")
    _RECIPES[id(made)] = (made, (access, value))
    while len(_RECIPES) > _KEPT_RECIPES:
        _RECIPES.pop(next(iter(_RECIPES)))
    return made


def receiver_recipe(obj: object) -> tuple[int, int] | None:
    """The arguments of :func:`rebuild_receiver` that made ``obj``; ``None`` for anything else.  Reads no
    attribute of ``obj`` (a receiver may raise on any)."""
    kept = _RECIPES.get(id(obj))
    return kept[1] if kept is not None and kept[0] is obj else None


# id -> (receiver, recipe); the receiver is kept so its id is not reused while remembered.  Bounded: only the
# receivers of the running example need answering.
_RECIPES: dict[int, tuple[object, tuple[int, int]]] = {}
_KEPT_RECIPES = 4096


def generated_receivers(truthy: bool | None = None) -> st.SearchStrategy[object]:
    """Receivers composed of an access and a value (module docstring); ``truthy=True`` only those that ask
    for staging, ``False`` only those that do not (falsy, absent or raising), ``None`` both.  Fresh objects
    per draw; shrinks toward an instance attribute holding True (False for ``truthy=False``)."""
    choices = []
    for access in _ACCESSES:
        values = tuple(v for v in _VALUES if truthy is None or _stages(access, v) == truthy)
        if values:
            choices.append((access, values))
    return _generated(tuple(choices))
