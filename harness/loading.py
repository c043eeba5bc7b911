"""Find, build and validate the implementation under test, named by a spec string.

Resolution order for the spec: the explicit argument (``--impl``), then the
``KVCONFORM_IMPL`` environment variable, then ``"reference"``.

Spec forms:

* ``package.module:factory`` -- ``factory`` (a dotted attribute path is fine)
  is called with no arguments when callable; a non-callable object is used as
  is.
* ``package.module`` -- the module's ``make_implementation`` factory.
* a *name*: an entry point in the ``kvconform.implementations`` group (third-party
  adapters such as ``sglang`` are registered only there, by ``pip install -e .``), or a
  built-in name (``reference``, ``reference-triton``) that works from a checkout without
  ``pip install``.  Names win over modules of the same name; write
  ``module:factory`` to mean the module.

Modules are searched on ``sys.path`` with the current directory in front
(as ``python -m`` puts it), so ``kvconform`` and ``python -m harness`` find the
same adapters, e.g. ``my_adapter.py`` in the directory the command runs from.

Every problem surfaces as one :class:`ImplementationError` whose message says
what is missing and how to fix it.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import inspect
import os
import re
import sys
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from harness import scope, settings
from harness.interface import BY_NAME, CAPABILITIES, Implementation
from harness.signatures import signature_mismatch

#: Environment variable naming the implementation when ``--impl`` is absent.
IMPL_ENV_VAR = settings.IMPL
#: Spec used when neither ``--impl`` nor the environment names one.
DEFAULT_SPEC = "reference"
#: Entry-point group third-party packages register their factories in.
ENTRY_POINT_GROUP = "kvconform.implementations"
#: Names that resolve even when kvconform is not pip-installed: the reference only.  Adapters
#: of other engines are entry points, never named by the harness (tests/test_import_graph.py).
BUILTIN_IMPLEMENTATIONS: dict[str, str] = {
    "reference": "reference.plugin:make_implementation",
    "reference-triton": "reference.plugin:make_triton_implementation",
}
#: Factory looked up when the spec names a module without ``:factory``.
DEFAULT_FACTORY = "make_implementation"

_MODULE_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


class ImplementationError(Exception):
    """The implementation named by a spec cannot be loaded or does not fit the interface."""


@dataclass(frozen=True)
class LoadedImplementation:
    """A validated implementation and where it came from."""

    spec: str  #: the spec as resolved (never empty)
    name: str  #: display name for reports
    implementation: Implementation  #: the object conformance tests call
    capabilities: frozenset[str]  #: validated capability names it claims
    target: str  #: the ``module:attribute`` the spec resolved to
    #: ``"process"``: ``implementation`` is the guarded proxy of one running in a worker process
    #: (``harness.isolation``); ``"in-process"``: the object itself, in this process.
    isolation: str = "in-process"


def resolve_spec(spec: str | None) -> str:
    """The spec to load: explicit, else ``$KVCONFORM_IMPL``, else ``reference``."""
    for candidate in (spec, settings.current().impl):
        if candidate is not None and candidate.strip():
            return candidate.strip()
    return DEFAULT_SPEC


def available_implementations() -> dict[str, str]:
    """Implementation names usable as ``--impl NAME`` -> their ``module:attribute`` target.

    Entry points of the ``kvconform.implementations`` group override built-ins
    of the same name.
    """
    names = dict(BUILTIN_IMPLEMENTATIONS)
    names.update(_entry_point_targets())
    return dict(sorted(names.items()))


def load_implementation(spec: str | None = None, *, isolated: bool = False) -> LoadedImplementation:
    """Load, build and validate the implementation ``spec`` names.

    Raises :class:`ImplementationError` with an actionable message when the
    module or attribute is missing, the factory raises, or the object does not
    provide every method of every capability it claims.  ``isolated``: load it
    in a worker process (the same resolution, run there; the factory under the
    call deadline) and answer its guarded proxy.
    """
    resolved = resolve_spec(spec)
    if isolated:
        return _load_isolated(resolved)
    target, display_name = _target_of(resolved)
    module_name, _, attribute = target.partition(":")
    module = _import_module(module_name, resolved)
    found = _get_attribute(module, module_name, attribute or DEFAULT_FACTORY, resolved, explicit=bool(attribute))
    implementation = _build(found, f"{module_name}:{attribute or DEFAULT_FACTORY}")
    capabilities = validate_implementation(implementation, resolved)
    name = getattr(implementation, "name", None)
    if not isinstance(name, str) or not name.strip():
        name = display_name
    return LoadedImplementation(resolved, name, implementation, capabilities, f"{module_name}:{attribute or DEFAULT_FACTORY}")


def _load_isolated(spec: str) -> LoadedImplementation:
    from harness import isolation
    from harness.guard import call_timeout_s, guard

    timeout = call_timeout_s(after_hang=False)
    try:
        supervisor = isolation.start(spec, timeout)
    except isolation.LoadRefused as refused:
        raise ImplementationError(str(refused)) from None
    except Exception as exc:  # WorkerHung, WorkerDied: the factory hung or ended the worker's process
        raise ImplementationError(f"--impl {spec!r}: loading it in a worker process failed: "
                                  f"{type(exc).__name__}: {exc}") from None
    root, info = supervisor.root, supervisor.loaded
    capabilities = validate_implementation(root, spec)  # the judge's own check of what crossed
    return LoadedImplementation(spec, info["name"], guard(root), capabilities, info["target"], "process")


def validate_implementation(implementation: Any, spec: str) -> frozenset[str]:
    """The capabilities ``implementation`` claims, after checking it has every method they need."""
    what = f"the implementation from --impl {spec!r} ({_describe_object(implementation)})"
    if implementation is None:
        raise ImplementationError(f"{what} is None: the factory must return the implementation object.")
    if not hasattr(implementation, "capabilities"):
        raise ImplementationError(
            f"{what} has no 'capabilities' attribute. Add one listing what it implements, "
            f"e.g. capabilities = frozenset({{'head_mapping', 'layout'}}). Valid names: {_valid_names()}."
        )
    claimed = _capability_names(implementation.capabilities, what)
    problems = []
    for cap in sorted(claimed):
        for method in CAPABILITIES[cap]:
            value = getattr(implementation, method, None)
            if value is None:
                problems.append(f"capability {cap!r} needs method {method}() but it is missing")
            elif not callable(value):
                problems.append(f"capability {cap!r} needs method {method}() but it is a {type(value).__name__}, not callable")
            else:
                mismatch = signature_mismatch(value, BY_NAME[cap].protocol, method)
                if mismatch:
                    problems.append(f"capability {cap!r}: {mismatch}")
    unknown = scope.unknown_limits(getattr(implementation, "limits", ()))
    if unknown:
        problems.append(f"'limits' names {unknown}, which the suite does not know; valid: {sorted(scope.LIMITS)}")
    if problems:
        bullets = "".join(f"\n  - {p}" for p in problems)
        raise ImplementationError(
            f"{what} claims capabilities it does not fully provide:{bullets}\n"
            "Implement the methods with the signatures of harness/interface.py "
            "or remove the capability from 'capabilities'."
        )
    return frozenset(claimed)


def _capability_names(raw: Any, what: str) -> set[str]:
    """Capability names from a ``capabilities`` attribute; rejects strings and unknown names."""
    if isinstance(raw, (str, bytes)) or not isinstance(raw, Iterable):
        raise ImplementationError(
            f"{what}: 'capabilities' must be an iterable of capability names such as "
            f"frozenset({{'layout'}}), not {type(raw).__name__} {raw!r}. Valid names: {_valid_names()}."
        )
    names = list(raw)
    not_strings = [n for n in names if not isinstance(n, str)]
    if not_strings:
        raise ImplementationError(
            f"{what}: 'capabilities' must contain strings; got {not_strings!r}. Valid names: {_valid_names()}."
        )
    unknown = [n for n in names if n not in CAPABILITIES]
    if unknown:
        hints = []
        for n in unknown:
            close = difflib.get_close_matches(n, CAPABILITIES, n=1)
            hints.append(f"{n!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ImplementationError(
            f"{what}: unknown capability name(s) {', '.join(hints)}. Valid names: {_valid_names()}."
        )
    return set(names)


def _target_of(spec: str) -> tuple[str, str]:
    """``(module[:attribute], display name)`` for a spec, resolving registered names."""
    if ":" in spec:
        module_name, _, attribute = spec.partition(":")
        if not _MODULE_PATH.match(module_name) or not re.match(r"^[A-Za-z_][\w.]*$", attribute):
            raise ImplementationError(_bad_spec_message(spec))
        return spec, spec
    entry_points = _entry_point_targets()
    if spec in entry_points:
        return entry_points[spec], spec
    if spec in BUILTIN_IMPLEMENTATIONS:
        return BUILTIN_IMPLEMENTATIONS[spec], spec
    if not _MODULE_PATH.match(spec):
        raise ImplementationError(_bad_spec_message(spec))
    return spec, spec


def _bad_spec_message(spec: str) -> str:
    return (
        f"--impl {spec!r} is not a valid implementation spec. Use 'package.module:factory', "
        f"'package.module' (uses its {DEFAULT_FACTORY}()), or a registered name: "
        f"{', '.join(available_implementations())}."
    )


def _entry_point_targets() -> dict[str, str]:
    """Entry points of the implementations group, name -> ``module:attribute``."""
    return {ep.name: ep.value for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _search_current_directory() -> None:
    """Put the current directory first on ``sys.path`` unless it is there (``python -m`` does; scripts do not)."""
    cwd = os.getcwd()
    if not any(os.path.abspath(entry or os.curdir) == cwd for entry in sys.path):
        sys.path.insert(0, cwd)


def _import_module(module_name: str, spec: str):
    """Import ``module_name`` (current directory searched first); tell apart "not found" from "its import failed"."""
    _search_current_directory()
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            registered = ", ".join(available_implementations())
            raise ImplementationError(
                f"--impl {spec!r}: cannot import module {module_name!r} (no module named {missing!r}). "
                f"The module must be importable: install its package, run from its directory, or put its "
                f"directory on PYTHONPATH (searched: the current directory {os.getcwd()} and sys.path). "
                f"Registered names: {registered}."
            ) from None
        raise ImplementationError(
            f"--impl {spec!r}: module {module_name!r} was found but importing it failed: "
            f"{_exception_summary(exc)}"
        ) from exc
    except Exception as exc:  # any import-time error of the plug-in is the plug-in's bug
        raise ImplementationError(
            f"--impl {spec!r}: importing module {module_name!r} raised {_exception_summary(exc)}"
        ) from exc


def _get_attribute(module, module_name: str, attribute: str, spec: str, *, explicit: bool):
    """Follow a dotted attribute path; on failure list the module's public names, closest first."""
    value = module
    for part in attribute.split("."):
        if not hasattr(value, part):
            public = _public_names(module)
            close = difflib.get_close_matches(part, public, n=3)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            shown = ", ".join(public[:30]) + (", ..." if len(public) > 30 else "")
            how = (
                f"Name the factory explicitly: --impl '{module_name}:<factory>'."
                if not explicit
                else "Check the name after ':' in the spec."
            )
            raise ImplementationError(
                f"--impl {spec!r}: module {module_name!r} has no attribute {attribute!r}.{hint} "
                f"{how} Public names in the module: {shown or '(none)'}."
            )
        value = getattr(value, part)
    return value


def _public_names(module) -> list[str]:
    """Names defined by ``module`` itself (not imported into it), without leading underscores."""
    names = []
    for name, value in vars(module).items():
        if name.startswith("_") or inspect.ismodule(value) or type(value).__module__ == "__future__":
            continue
        if getattr(value, "__module__", module.__name__) != module.__name__:
            continue
        names.append(name)
    return sorted(names)


def _build(found: Any, target: str) -> Any:
    """Call ``found`` with no arguments if it is callable, else use it as is."""
    if not callable(found):
        return found
    try:
        inspect.signature(found).bind()
    except TypeError:
        raise ImplementationError(
            f"factory {target} must be callable with no arguments; its signature is {inspect.signature(found)}."
        ) from None
    except ValueError:
        pass  # builtins without a signature: just call them
    try:
        return found()
    except (Exception, SystemExit) as exc:  # SystemExit: a factory must not end the judge's process
        raise ImplementationError(f"factory {target}() raised {_exception_summary(exc)}") from exc


def _exception_summary(exc: BaseException) -> str:
    """``Type: message (at file:line in function)`` of the innermost frame."""
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        last = frames[-1]
        text += f"\n  (raised at {last.filename}:{last.lineno} in {last.name})"
    return text


def _describe_object(obj: Any) -> str:
    return "None" if obj is None else f"a {type(obj).__module__}.{type(obj).__qualname__}"


def _valid_names() -> str:
    return ", ".join(CAPABILITIES)
