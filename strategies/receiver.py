"""Receiver objects as different transfer backends hand them to the decode side.

Deployed backends disagree on ``require_staging``: some set a bool, some a
truthy or falsy non-bool, some compute it, many never define it.  The decode
side must accept all of them; only a *present and truthy* attribute asks for
staging.  Each kind below documents how its attribute reads; the strategies
keep no oracle (the harness has its own).  Every receiver has a repr that says
what it is, so a counterexample reads well.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any, Callable
from unittest import mock

from hypothesis import strategies as st

from strategies.receiver_protocol import generated_receivers


def _describe(value: Any) -> str:
    """``repr (type)``, with the module for non-builtin types: ``1 (int)``."""
    kind = type(value)
    name = kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"
    return f"{value!r} ({name})"


def _flag_makers() -> tuple[tuple, tuple]:
    """Zero-argument makers of truthy and falsy flag values, simplest first;
    makers rather than values so that each draw gets a fresh list."""
    truthy: list = [lambda: True, lambda: 1, lambda: "yes", lambda: [1]]
    falsy: list = [lambda: False, lambda: 0, lambda: "", lambda: None, list]
    try:
        import numpy
    except ImportError:  # numpy is optional: its bools are just one more flavour
        pass
    else:
        truthy.append(lambda: numpy.bool_(True))
        falsy.append(lambda: numpy.bool_(False))
    return tuple(truthy), tuple(falsy)


def require_staging_values(truthy: bool | None = None) -> st.SearchStrategy[Any]:
    """Values backends put in ``require_staging``: bools, truthy non-bools (1,
    "yes", a non-empty list, ``numpy.True_``) and falsy ones (0, "", None,
    [], ``numpy.False_``).  ``truthy`` picks one side; lists are fresh per
    draw.  Shrinks toward ``True`` (``False`` when ``truthy=False``)."""
    true, false = _flag_makers()
    if truthy is None:
        makers = tuple(m for pair in zip(true, false) for m in pair) + false[len(true):]
    else:
        makers = true if truthy else false
    return st.sampled_from(makers).map(lambda make: make())


class Receiver:
    """Plain object whose ``require_staging`` is set in ``__init__``: reads as
    ``bool(value)``."""

    def __init__(self, require_staging: Any) -> None:
        self.require_staging = require_staging

    def __repr__(self) -> str:
        return f"<Receiver require_staging={_describe(self.require_staging)}>"


def class_attribute_receiver(require_staging: Any) -> object:
    """Instance of a fresh class declaring ``require_staging`` as a class
    attribute (how many backends mark themselves): reads as ``bool(value)``."""
    cls = type("ClassAttributeReceiver", (), {
        "require_staging": require_staging,
        "__repr__": lambda self: f"<ClassAttributeReceiver class attribute require_staging={_describe(require_staging)}>",
    })
    return cls()


@dataclass(frozen=True, eq=False, repr=False)
class FrozenReceiver:
    """Frozen dataclass with a ``require_staging`` field: reads as
    ``bool(value)``; the object cannot be modified (``eq=False`` keeps it
    hashable by identity even when the value is a list)."""

    require_staging: Any

    def __repr__(self) -> str:
        return f"<FrozenReceiver (frozen dataclass) require_staging={_describe(self.require_staging)}>"


class PropertyReceiver:
    """``require_staging`` is a property returning the value: reads as
    ``bool(value)``; it is absent from the instance ``__dict__``."""

    def __init__(self, value: Any) -> None:
        self._value = value

    @property
    def require_staging(self) -> Any:
        return self._value

    def __repr__(self) -> str:
        return f"<PropertyReceiver property require_staging -> {_describe(self._value)}>"


class GetattrReceiver:
    """Proxy-like object whose ``__getattr__`` answers every public name
    (``require_staging`` included) with the value: reads as ``bool(value)``;
    ``hasattr`` is True for any public name."""

    def __init__(self, value: Any) -> None:
        self._value = value

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # keep copy/pickle/introspection probes honest
            raise AttributeError(name)
        return self._value

    def __repr__(self) -> str:
        return f"<GetattrReceiver __getattr__ -> {_describe(self._value)}>"


class _LabelledMock(mock.Mock):
    """A ``Mock`` that prints as what it models.  Hypothesis's printer asks
    the instance for ``_repr_pretty_``, which a bare ``Mock`` would invent
    (printing nothing), so both hooks are defined on the class; children are
    plain ``Mock`` objects so their reprs do not pretend to be receivers."""

    def _describe(self) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return self._describe()

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(self._describe())

    def _get_child_mock(self, **kw) -> mock.Mock:
        return mock.Mock(**kw)


class ConfiguredMock(_LabelledMock):
    """``Mock(require_staging=value)``: reads as ``bool(value)``."""

    def _describe(self) -> str:
        return f"<Mock(require_staging={_describe(self.require_staging)})>"


def configured_mock(require_staging: Any) -> mock.Mock:
    """``Mock(require_staging=value)``: reads as ``bool(value)``."""
    return ConfiguredMock(require_staging=require_staging)


def namespace_receiver(require_staging: Any) -> types.SimpleNamespace:
    """``SimpleNamespace(require_staging=value)``: reads as ``bool(value)``."""
    return types.SimpleNamespace(require_staging=require_staging)


class BareReceiver:
    """A class that never heard of staging: the attribute is absent (reads as
    absent, i.e. falsy through ``getattr(r, name, False)``)."""

    def __repr__(self) -> str:
        return "<BareReceiver (no require_staging)>"


class SlotsReceiver:
    """``require_staging`` declared in ``__slots__`` but never set: ``hasattr``
    is False and reading it raises ``AttributeError`` (absent)."""

    __slots__ = ("require_staging",)

    def __repr__(self) -> str:
        return "<SlotsReceiver (require_staging unset)>"


class RaisingPropertyReceiver:
    """``require_staging`` is a property raising ``AttributeError``: ``hasattr``
    is False although the class defines the name (absent)."""

    @property
    def require_staging(self) -> Any:
        raise AttributeError("require_staging is not available on this backend")

    def __repr__(self) -> str:
        return "<RaisingPropertyReceiver (property raises AttributeError)>"


def namespace_without_flag() -> types.SimpleNamespace:
    """``SimpleNamespace`` with other fields only: absent."""
    return types.SimpleNamespace(bootstrap_room=0)


class SpecEmptyMock(_LabelledMock):
    """``Mock(spec=[])``: every attribute access raises ``AttributeError``
    (absent)."""

    def __init__(self) -> None:
        super().__init__(spec=[])

    def _describe(self) -> str:
        return "<Mock(spec=[]) (no attributes)>"


class AutoMock(_LabelledMock):
    """``Mock()``: the attribute is auto-created as a child ``Mock``, which is
    truthy (present and truthy)."""

    def _describe(self) -> str:
        return "<Mock() require_staging auto-created (truthy Mock)>"


class AutoMagicMock(mock.MagicMock):
    """``MagicMock()``: the attribute is an auto-created ``MagicMock`` whose
    ``__bool__`` returns True (present and truthy).  Labelled like
    ``_LabelledMock``."""

    def __repr__(self) -> str:
        return "<MagicMock() require_staging auto-created (truthy MagicMock)>"

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(repr(self))

    def _get_child_mock(self, **kw) -> mock.MagicMock:
        return mock.MagicMock(**kw)


#: Kinds built around a ``require_staging`` value (staging iff it is truthy).
_VALUED: dict[str, Callable[[Any], object]] = {
    "attribute": Receiver,
    "namespace": namespace_receiver,
    "class_attribute": class_attribute_receiver,
    "frozen_dataclass": FrozenReceiver,
    "property": PropertyReceiver,
    "getattr": GetattrReceiver,
    "mock_configured": configured_mock,
}
#: Kinds without a readable attribute (never staging).
_ABSENT: dict[str, Callable[[], object]] = {
    "object": object,
    "bare_class": BareReceiver,
    "namespace_without": namespace_without_flag,
    "slots_unset": SlotsReceiver,
    "raising_property": RaisingPropertyReceiver,
    "mock_spec_empty": SpecEmptyMock,
}
#: Kinds whose attribute is auto-created and truthy (always staging).
_AUTO_TRUTHY: dict[str, Callable[[], object]] = {"mock": AutoMock, "magic_mock": AutoMagicMock}

#: Every receiver kind's name, in shrink order; ``generated`` composes the attribute protocol (module docstring).
GENERATED = "generated"
RECEIVER_KINDS: tuple[str, ...] = (*_VALUED, *_ABSENT, *_AUTO_TRUTHY, GENERATED)


@st.composite
def _build_receiver(draw, makers, values):
    """Draw a kind, then always a value (ignored by kinds without one) so
    every kind costs the shrinker the same number of choices and the value
    kinds, listed first, are the simplest."""
    make, takes_value = draw(st.sampled_from(makers))
    value = draw(values)
    return make(value) if takes_value else make()


def _receivers(truthy: bool | None, kinds: tuple[str, ...] | None) -> st.SearchStrategy[object]:
    """Kinds uniformly (so every kind is common in a census), then a value."""
    chosen = RECEIVER_KINDS if kinds is None else kinds
    unknown = [k for k in chosen if k not in RECEIVER_KINDS]
    if unknown or not chosen:
        raise ValueError(f"kinds must be a non-empty subset of {RECEIVER_KINDS}, got {kinds!r}")
    makers: list[tuple[Callable[..., object], bool]] = [(make, True) for k, make in _VALUED.items() if k in chosen]
    if truthy is not True:
        makers += [(make, False) for k, make in _ABSENT.items() if k in chosen]
    if truthy is not False:
        makers += [(make, False) for k, make in _AUTO_TRUTHY.items() if k in chosen]
    fixed = _build_receiver(makers, require_staging_values(truthy)) if makers else None
    if GENERATED not in chosen:
        if fixed is None:
            raise ValueError(f"none of kinds {chosen!r} can be {'truthy' if truthy else 'falsy'}")
        return fixed
    # The fixed kinds first (they shrink to the plainest receiver), then the generated ones, one draw in two.
    generated = generated_receivers(truthy)
    return generated if fixed is None else st.one_of(fixed, generated)


def receivers(kinds: tuple[str, ...] | None = None) -> st.SearchStrategy[object]:
    """Any receiver: every kind of ``RECEIVER_KINDS`` (or those in ``kinds``),
    with truthy, falsy or absent ``require_staging``.  Fresh objects per draw.
    Shrinks toward ``<Receiver require_staging=True (bool)>``."""
    return _receivers(None, kinds)


def staged_receivers(kinds: tuple[str, ...] | None = None) -> st.SearchStrategy[object]:
    """Receivers whose ``require_staging`` is present and truthy (bool True,
    truthy non-bools, auto-created mock attributes)."""
    return _receivers(True, kinds)


def plain_receivers(kinds: tuple[str, ...] | None = None) -> st.SearchStrategy[object]:
    """Receivers whose ``require_staging`` is falsy or absent (including unset
    slots, properties raising ``AttributeError`` and ``Mock(spec=[])``)."""
    return _receivers(False, kinds)
