"""Check a value an implementation returned against the return annotation its Protocol documents.

The annotations in ``harness/interface.py`` are the one description of what
each method returns; :func:`check_return` reads them, so a new method or a
changed answer needs no second table here.  A check never consumes what it
checks: a one-shot iterator (a generator) is materialized once into a list,
checked, and that list is what the caller gets, so the harness goes on with
the very values that were checked.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator, Sequence
from typing import Annotated, Any, Literal, Union

from harness.interface import OPTIONAL_EXTRAS, Named, protocol_methods
from harness.signatures import signature_mismatch


def expected_return(protocol: type, method: str) -> Any:
    """The documented return annotation of ``protocol.method`` (``Annotated`` metadata kept)."""
    return typing.get_type_hints(getattr(protocol, method), include_extras=True).get("return", Any)


def check_return(annotation: Any, value: Any) -> tuple[Any, str]:
    """``(value to pass on, why it is garbage or "")`` for ``value`` returned where ``annotation`` is documented.

    The reason reads after the value: ``f"{value!r} {reason}"``.
    """
    if annotation is None or annotation is type(None) or annotation is Any:
        return value, ""  # nothing documented to come back: the value is ignored
    if typing.get_origin(annotation) is Annotated and _tuple_length(annotation) is None:
        annotation = typing.get_args(annotation)[0]  # metadata that only names tuple items: check the bare type
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Union or origin is types.UnionType:
        members = [a for a in args if a is not type(None)]
        if value is None and len(members) < len(args):
            return value, ""
        (member,) = members
        checked, problem = check_return(member, value)
        return checked, (f"is neither None nor {expected_form(member)}" if problem and len(members) < len(args) else problem)
    length = _tuple_length(annotation)
    if isinstance(value, Iterator) and (origin is Sequence or length is not None):
        value = list(value)  # one-shot: checking would consume it, so materialize it once and pass that on
    if origin is Sequence:
        return _check_sequence(args[0], value)
    if origin is Literal:
        ok = isinstance(value, str) and value in args
    elif length is not None:
        ok = _is_int_tuple(value, length)
    elif getattr(annotation, "_is_protocol", False):
        return value, _protocol_problem(annotation, value)
    else:
        ok = {bool: is_bool, int: is_int, str: lambda v: isinstance(v, str)}[annotation](value)
    return value, "" if ok else f"is not {expected_form(annotation)}"


def expected_form(annotation: Any) -> str:
    """What ``annotation`` asks for, in words."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        named = next((meta for meta in annotation.__metadata__ if isinstance(meta, Named)), None)
        return f"({', '.join(named.names)}) integers" if named else expected_form(args[0])
    if origin is Union or origin is types.UnionType:
        return " or ".join("None" if a is type(None) else expected_form(a) for a in args)
    if origin is Literal:
        return f"one of {', '.join(map(repr, args))}"
    if origin is tuple:
        return f"a tuple of {len(args)} integers"
    if origin is Sequence:
        return "a sequence of integers" if args[0] is int else f"a sequence of {expected_form(args[0])}"
    if getattr(annotation, "_is_protocol", False):
        return f"an object with the {annotation.__name__} methods ({', '.join(protocol_methods(annotation))})"
    words = {bool: "a bool", int: "an integer", str: "a string"}
    if annotation not in words:
        raise TypeError(f"harness.returns cannot check return annotation {annotation!r}: teach check_return this form")
    return words[annotation]


def _tuple_length(annotation: Any) -> int | None:
    """Length of a fixed-length integer tuple annotation (``Annotated`` or plain), else None."""
    if typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) is tuple:
        return len(typing.get_args(annotation))
    return None


def _check_sequence(item: Any, value: Any) -> tuple[Any, str]:
    what = f"is not {expected_form(Sequence[item])}"
    if isinstance(value, (str, bytes)):
        return value, what
    try:
        items = list(value)
    except TypeError:
        return value, what
    checked = []
    for index, entry in enumerate(items):
        entry, problem = check_return(item, entry)
        if problem:
            return value, f"{what}: item {index} {entry!r} {problem}"
        checked.append(entry)
    return (checked if isinstance(value, list) else value), ""


def _is_int_tuple(value: Any, length: int) -> bool:
    try:
        items = tuple(value)
    except TypeError:
        return False
    return len(items) == length and all(is_int(v) for v in items)


def _protocol_problem(protocol: type, value: Any) -> str:
    """Why ``value`` cannot serve as a ``protocol`` (missing methods, non-callable optional extras, signatures
    that cannot take the documented call), or ``""``."""
    extras = OPTIONAL_EXTRAS.get(protocol)
    missing = [m for m in protocol_methods(protocol) if not callable(getattr(value, m, None))]
    broken = [m for m in (protocol_methods(extras) if extras else ()) if hasattr(value, m) and not callable(getattr(value, m))]
    problems = ([f"lacks {', '.join(missing)}"] if missing else []) + ([f"has non-callable {', '.join(broken)}"] if broken else [])
    for declaring in (protocol, extras) if extras else (protocol,):
        for method in protocol_methods(declaring):
            if callable(getattr(value, method, None)):
                mismatch = signature_mismatch(getattr(value, method), declaring, method)
                problems += [f"has {mismatch}"] if mismatch else []
    return f"is not a {protocol.__name__}: it " + " and ".join(problems) if problems else ""


def is_int(value: Any) -> bool:
    """An integer of any kind (numpy, 0-d tensor, ...) except bool."""
    if isinstance(value, bool):
        return False
    try:
        value.__index__()
    except (AttributeError, TypeError, RuntimeError):
        return False
    return True


def is_bool(value: Any) -> bool:
    """A bool, a numpy bool or an integer 0 or 1."""
    return isinstance(value, bool) or type(value).__name__ == "bool_" or (is_int(value) and int(value) in (0, 1))
