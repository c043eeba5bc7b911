"""Whether a callable can take the call the harness makes of an interface method.

The harness passes positional-or-keyword parameters of the Protocols in
``harness/interface.py`` by position (an implementation may rename them) and
keyword-only ones by keyword (names must match, or ``**kwargs``).  Used at load
time for the implementation's methods (``harness/loading.py``) and when an
implementation hands back an allocator or handler (``harness/returns.py``).
"""

from __future__ import annotations

import inspect
from typing import Any

from harness.interface import documented_signature


def signature_mismatch(method: Any, protocol: type, name: str) -> str:
    """Why ``method`` cannot accept the call the harness makes of ``protocol.name``, or ``""``.

    The harness passes positional-or-keyword parameters by position (names may
    differ) and keyword-only ones by keyword (names must match, or ``**kwargs``).
    """
    try:
        actual = inspect.signature(method)
    except (TypeError, ValueError):
        return ""  # no introspectable signature (a builtin): the first call will tell
    documented = documented_signature(protocol, name)
    positional = [p.name for p in documented.parameters.values() if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    keywords = [p.name for p in documented.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    try:
        actual.bind(*positional, **{k: k for k in keywords})
        return ""
    except TypeError as exc:
        reason = _why_unbindable(actual, positional, keywords) or str(exc)
    call = ", ".join(positional + [f"{k}=..." for k in keywords])
    return (f"{name}{_bare(actual)} cannot accept the harness's call {name}({call}): {reason} "
            f"(documented in harness/interface.py, {protocol.__name__}.{name})")


def _bare(signature: inspect.Signature) -> inspect.Signature:
    """``signature`` without annotations, as short as the parameter list itself."""
    bare = [p.replace(annotation=inspect.Parameter.empty) for p in signature.parameters.values()]
    return signature.replace(parameters=bare, return_annotation=inspect.Signature.empty)


def _why_unbindable(actual: inspect.Signature, positional: list[str], keywords: list[str]) -> str:
    """The missing or extra parameter that makes the harness's call fail to bind, in words."""
    kinds = inspect.Parameter
    params = list(actual.parameters.values())
    takes_varargs = any(p.kind is kinds.VAR_POSITIONAL for p in params)
    takes_varkw = any(p.kind is kinds.VAR_KEYWORD for p in params)
    slots = [p for p in params if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)]
    if positional and not takes_varargs and len(slots) < len(positional):
        missing = positional[len(slots):]
        return (f"it takes {len(slots)} positional argument(s) but the harness passes {len(positional)}; "
                f"add parameter(s) {', '.join(missing)} (passed by position, so names may differ) or *args")
    by_name = {p.name: p for p in params}
    for keyword in keywords:
        param = by_name.get(keyword)
        if param is not None and param.kind is kinds.POSITIONAL_ONLY:
            return f"parameter {keyword!r} is positional-only but the harness passes it by keyword; remove the '/'"
        if param is None and not takes_varkw:
            return f"it has no parameter {keyword!r}, which the harness passes by keyword; add {keyword} (or **kwargs)"
    extra = [p.name for p in slots[len(positional):] if p.default is kinds.empty and p.name not in keywords]
    extra += [p.name for p in params if p.kind is kinds.KEYWORD_ONLY and p.default is kinds.empty and p.name not in keywords]
    if extra:
        return (f"it requires parameter(s) {', '.join(extra)}, which the harness never passes; "
                f"give each a default or remove it")
    return ""
