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

Configurations: the object a spec resolves to may declare named configurations instead of
being an implementation itself -- ``configurations``, a mapping of name to a zero-argument
factory (or the implementation object) of that configuration, e.g. vLLM's
``{"pull": ..., "push": ..., "permute": ...}``; each configuration is an implementation
validated on its own (its capabilities, declared ``limits`` and ``catalogue_version`` are its
own).  :func:`load_configurations` loads the selected ones for a run (one report column each);
``SPEC#NAME`` names one configuration, which :func:`load_implementation` loads (a worker
process gets it from :attr:`LoadedImplementation.spec`).  Without ``#NAME`` it loads the first
declared configuration.

An implementation may declare the catalogue version it targets (``catalogue_version =
"1.0"``, see ``harness.catalogue``); an unknown version is a loading error.

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
import threading
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from harness import scope, settings
from harness.catalogue import parse_catalogue_version
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

#: Separates a spec from a configuration name: ``vllm#push``.
CONFIGURATION_SEPARATOR = "#"
#: Configuration names: usable in pytest ids, ``--config a,b`` lists and ``SPEC#NAME``.
_CONFIGURATION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")

_MODULE_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


class ImplementationError(Exception):
    """The implementation named by a spec cannot be loaded or does not fit the interface."""


@dataclass(frozen=True)
class LoadedImplementation:
    """A validated implementation and where it came from."""

    spec: str  #: the spec as resolved (never empty); ``SPEC#NAME`` for a configuration: loads it back
    name: str  #: display name for reports
    implementation: Implementation  #: the object conformance tests call
    capabilities: frozenset[str]  #: validated capability names it claims
    target: str  #: the ``module:attribute`` the spec resolved to
    configuration: str | None = None  #: the configuration's name; ``None`` for an implementation without
    catalogue_version: str | None = None  #: the catalogue version it targets (validated); ``None``: the current one

    #: ``"process"``: ``implementation`` is the guarded proxy of one running in a worker process
    #: (``harness.isolation``); ``"in-process"``: the object itself, in this process.
    isolation: str = "in-process"


@dataclass(frozen=True)
class LoadedConfigurations:
    """The configurations of one implementation a run tests, each validated; one column each in the report."""

    spec: str  #: the spec as resolved, without ``#NAME``
    name: str  #: display name of the implementation as a whole
    target: str  #: the ``module:attribute`` the spec resolved to
    declared: tuple[str, ...]  #: every configuration it declares; ``()`` for an implementation without
    selected: tuple[LoadedImplementation, ...]  #: the ones under test (the implementation alone when none declared)
    implementation: Any  #: the object the spec resolved to (the implementation itself when none declared)

    def get(self, name: str | None) -> LoadedImplementation:
        """The selected configuration ``name``; the first selected one for ``None``."""
        if name is None:
            return self.selected[0]
        for loaded in self.selected:
            if loaded.configuration == name:
                return loaded
        raise KeyError(name)

    @property
    def capabilities(self) -> frozenset[str]:
        """Capabilities any selected configuration claims."""
        return frozenset().union(*(loaded.capabilities for loaded in self.selected))


class UnknownConfiguration(ImplementationError):
    """A configuration was named that the implementation does not declare; the message lists the valid ones."""


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
    """Load, build and validate the implementation ``spec`` names (``SPEC#NAME``: that configuration of it;
    an implementation with configurations and no ``#NAME``: its first).

    Raises :class:`ImplementationError` with an actionable message when the
    module or attribute is missing, the factory raises, or the object does not
    provide every method of every capability it claims.  ``isolated``: load it
    in a worker process (the same resolution, run there; the factory under the
    call deadline) and answer its guarded proxy.
    """
    return load_configurations(spec, first_only=True, isolated=isolated).selected[0]


def load_configurations(spec: str | None = None, names: Sequence[str] | None = None, *,
                        first_only: bool = False, isolated: bool = False) -> LoadedConfigurations:
    """Load the implementation ``spec`` names with the configurations ``names`` (default: the one ``SPEC#NAME``
    names, else every declared one, or with ``first_only`` the first), each built and validated.
    ``isolated``: each configuration is loaded in a worker process of its own (``harness.isolation``; the
    factory runs there, under the call deadline) and answered as its guarded proxy.

    Raises :class:`UnknownConfiguration` for a name it does not declare (or any name when it declares none),
    :class:`ImplementationError` for everything else.
    """
    resolved, separator, named = resolve_spec(spec).partition(CONFIGURATION_SEPARATOR)
    if separator and not names:
        names = [named]
    if isolated:
        return _load_isolated(resolved, names, first_only)
    target, display_name = _target_of(resolved)
    module_name, _, attribute = target.partition(":")
    module = _import_module(module_name, resolved)
    found = _get_attribute(module, module_name, attribute or DEFAULT_FACTORY, resolved, explicit=bool(attribute))
    factory = f"{module_name}:{attribute or DEFAULT_FACTORY}"
    built = _build(found, factory)
    name = _display_name(built, display_name)
    declared = _declared_configurations(built, resolved)
    if not declared:
        if names:
            raise UnknownConfiguration(f"{resolved!r} declares no configurations (no 'configurations' attribute); "
                                       "leave the configuration out")
        loaded = _validated(built, resolved, name, factory, None, built)
        return LoadedConfigurations(resolved, name, factory, (), (loaded,), built)
    unknown = [n for n in names or () if n not in declared]
    if unknown:
        raise UnknownConfiguration(f"{', '.join(map(repr, unknown))} is not a configuration of {resolved!r}; "
                                   f"valid: {', '.join(declared)}")
    chosen = list(dict.fromkeys(names)) if names else list(declared)[:1 if first_only else None]
    selected = []
    for config in chosen:
        config_spec = f"{resolved}{CONFIGURATION_SEPARATOR}{config}"
        implementation = _build(declared[config], f"{factory} configuration {config!r}")
        selected.append(_validated(implementation, config_spec, _display_name(implementation, f"{name} {config}"),
                                   factory, config, built))
    return LoadedConfigurations(resolved, name, factory, tuple(declared), tuple(selected), built)


def _validated(implementation: Any, spec: str, name: str, target: str, configuration: str | None,
               declared_by: Any) -> LoadedImplementation:
    """``implementation`` checked against the interface, with the catalogue version it targets (its own
    ``catalogue_version``, else that of the object declaring its configuration)."""
    capabilities = validate_implementation(implementation, spec)
    version = getattr(implementation, "catalogue_version", getattr(declared_by, "catalogue_version", None))
    if version is not None:
        try:
            parse_catalogue_version(version)
        except ValueError as exc:
            raise ImplementationError(f"the implementation from --impl {spec!r}: 'catalogue_version' {exc}") from None
    return LoadedImplementation(spec, name, implementation, capabilities, target, configuration, version)


def _display_name(obj: Any, fallback: str) -> str:
    name = getattr(obj, "name", None)
    return name if isinstance(name, str) and name.strip() else fallback


def _declared_configurations(obj: Any, spec: str) -> dict[str, Any]:
    """``name -> factory or implementation`` of ``obj.configurations``, names checked; ``{}`` when absent."""
    raw = getattr(obj, "configurations", None)
    if raw is None:
        return {}
    what = f"the implementation from --impl {spec!r} ({_describe_object(obj)})"
    if not isinstance(raw, Mapping) or not raw:
        raise ImplementationError(f"{what}: 'configurations' must be a non-empty mapping of configuration name to "
                                  f"a zero-argument factory (or the implementation object), not {raw!r}")
    bad = [n for n in raw if not (isinstance(n, str) and _CONFIGURATION_NAME.match(n))]
    if bad:
        raise ImplementationError(f"{what}: configuration names {bad!r} must be letters, digits and '_.+-', "
                                  "starting with a letter or digit")
    return dict(raw)


def _load_isolated(resolved: str, names: Sequence[str] | None, first_only: bool) -> LoadedConfigurations:
    """Each selected configuration loaded in a worker process of its own; the judge learns the declared
    configurations from the first worker (the factory never runs in the judge's process)."""
    first, info = _start_worker(resolved)
    declared: tuple[str, ...] = tuple(info["declared"])
    if not declared:
        if names:
            raise UnknownConfiguration(f"{resolved!r} declares no configurations (no 'configurations' attribute); "
                                       "leave the configuration out")
        return LoadedConfigurations(resolved, info["display_name"], info["target"], (), (first,),
                                    first.implementation)
    unknown = [n for n in names or () if n not in declared]
    if unknown:
        raise UnknownConfiguration(f"{', '.join(map(repr, unknown))} is not a configuration of {resolved!r}; "
                                   f"valid: {', '.join(declared)}")
    chosen = list(dict.fromkeys(names)) if names else list(declared)[:1 if first_only else None]
    selected = [first if config == first.configuration else
                _start_worker(f"{resolved}{CONFIGURATION_SEPARATOR}{config}")[0] for config in chosen]
    return LoadedConfigurations(resolved, info["display_name"], info["target"], declared, tuple(selected),
                                first.implementation)


def _start_worker(spec: str) -> tuple[LoadedImplementation, dict]:
    """``spec`` loaded in a worker process (``harness.isolation``), as its guarded proxy, and what the worker
    said of it."""
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
    configuration = info["configuration"]
    own_spec = spec if configuration is None or CONFIGURATION_SEPARATOR in spec else \
        f"{spec}{CONFIGURATION_SEPARATOR}{configuration}"
    return LoadedImplementation(own_spec, info["name"], guard(root), capabilities, info["target"], configuration,
                                info["catalogue_version"], isolation="process"), info


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
    return _call_factory(found, target)


def _call_factory(found: Any, target: str) -> Any:
    """``found()`` on a thread of its own under the call deadline ($KVCONFORM_CALL_TIMEOUT_S): a factory that
    hangs, raises or exits (SystemExit, KeyboardInterrupt) is an :class:`ImplementationError`, never a stalled
    or ended judge (in a worker process the supervisor's deadline covers the same call)."""
    timeout = settings.current().call_timeout_s
    outcome: dict[str, Any] = {}

    def build() -> None:
        try:
            outcome["built"] = found()
        except BaseException as exc:  # noqa: BLE001 -- reported below, whatever it is
            outcome["error"] = exc

    builder = threading.Thread(target=build, name=f"kvconform factory {target}", daemon=True)
    builder.start()
    builder.join(timeout)
    if builder.is_alive():
        raise ImplementationError(f"factory {target}() did not return within {timeout:g}s "
                                  f"(${settings.CALL_TIMEOUT}); make it return, or raise the deadline")
    if "error" in outcome:
        exc = outcome["error"]
        raise ImplementationError(f"factory {target}() raised {_exception_summary(exc)}") from exc
    return outcome["built"]


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
