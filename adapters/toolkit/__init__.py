"""Engine-neutral pieces for adapters that run an engine's own staging code inside kvconform.

Every adapter faces the same problems: the engine's modules cannot be imported
whole (their package initialisers pull in the serving stack), its code assumes
a GPU, reads wall-clock time, and its API moves between releases.  This
toolkit solves them once; an adapter (``adapters/sglang/``, ``adapters/vllm/``)
keeps only what is specific to its engine.  It imports nothing from kvconform
and nothing from any engine.

Public API (import from ``adapters.toolkit``):

Loading engine code (:mod:`.placeholders`, :mod:`.borrowing`)
    ``skip_package_initialisers(root, packages, doc)`` registers empty
    placeholder packages (real ``__path__``) so leaf modules import without
    their parents' ``__init__``; ``placeholder_module(name, directory, doc)``
    for one module; ``PLACEHOLDER_MARK`` marks them.
    ``borrow(root, relpath, qualnames, namespace)`` compiles functions,
    classes or ``Class.method`` definitions straight from an installed source
    file into a namespace holding exactly the globals they read, and returns
    ``(objects by qualname, problems)``: a missing definition or a global the
    namespace lacks is a problem, never a later ``NameError``.
    ``free_globals(node)`` and ``find_definition(tree, qualname)`` are its parts.
    ``never_reached(name, adapter, because)`` fills a global named only on
    branches the adapter never takes (raises if called, saying why).
    ``load_once(load)`` (:mod:`.once`): the engine is loaded once per process,
    thread-safe; a failed load is retried on the next call.

The version and signature pin (:mod:`.api_pin`)
    ``ApiPin(distribution, version, install, sources)`` and its
    ``require(installed, problems, error)``: refuse a mismatching engine with one
    error naming the pinned and installed versions and every difference; warn
    on another version whose API matches.  ``api_differences(signatures,
    attributes, resolve)`` collects the differences (``attribute_at(root,
    "a.b")`` walks a pin key's dotted path); ``parameters_of(obj)`` is
    the annotation-free parameter list pins are written in (enum defaults as
    ``Enum.MEMBER``).  ``installed_version(distribution)``,
    ``package_directory(package, install)`` (found without importing it).
    Exceptions ``EngineUnavailable`` and ``ApiMismatch`` (both ``ImportError``;
    an adapter subclasses them to name its engine).

Shims for running GPU code on CPU (:mod:`.devices`)
    ``SynchronousStream`` and ``CompletedEvent`` (exact stand-ins: CPU work is
    done when its call returns), ``is_cpu(device)``, ``triton_interpreter()``
    (import kernel modules inside it to get interpreter functions),
    ``cuda_sync_debug_paused(device)`` (exclude the adapter's own host copies
    from "no host sync" checks), ``single_rank_gloo_group()`` (an engine's
    collective over one rank is the identity).

Ambient state, time and logging (:mod:`.thread_scope`, :mod:`.clock`, :mod:`.loggers`)
    ``ThreadScoped``: a value engine code reads (through a global the adapter
    installs) on the current thread while ``with scoped.using(value):`` runs;
    ``get()``, ``require(message)``.  ``ClockRouter``: install as the ``time``
    global of engine code; ``with router.using(clock):`` makes
    ``time()``/``monotonic()`` read the harness's clock on this thread.
    ``OnceLogger``: the ``warning_once`` / ``info_once`` / ``debug_once``
    loggers engines patch in at package import.  ``LogCapture``: ``with
    LogCapture().attached(logger_name) as log:`` keeps what the engine logs
    (warnings and up) in ``log.lines``, its failure reasons.

Import rules (``tests/test_import_graph.py``): the toolkit imports nothing from
kvconform or an engine adapter; an engine adapter imports the toolkit and its own
package only, nothing from ``harness/`` (so a standalone repro runs it without kvconform); the harness
imports no adapter.
"""

from adapters.toolkit.api_pin import (
    ApiMismatch,
    ApiPin,
    EngineUnavailable,
    api_differences,
    attribute_at,
    installed_version,
    package_directory,
    parameters_of,
)
from adapters.toolkit.borrowing import borrow, find_definition, free_globals
from adapters.toolkit.clock import ClockRouter
from adapters.toolkit.devices import (
    CompletedEvent,
    SynchronousStream,
    cuda_sync_debug_paused,
    is_cpu,
    single_rank_gloo_group,
    triton_interpreter,
)
from adapters.toolkit.loggers import LogCapture, OnceLogger
from adapters.toolkit.once import load_once
from adapters.toolkit.placeholders import PLACEHOLDER_MARK, never_reached, placeholder_module, skip_package_initialisers
from adapters.toolkit.thread_scope import ThreadScoped

__all__ = [
    "ApiMismatch",
    "ApiPin",
    "ClockRouter",
    "CompletedEvent",
    "EngineUnavailable",
    "LogCapture",
    "OnceLogger",
    "PLACEHOLDER_MARK",
    "SynchronousStream",
    "ThreadScoped",
    "api_differences",
    "attribute_at",
    "borrow",
    "cuda_sync_debug_paused",
    "find_definition",
    "free_globals",
    "installed_version",
    "is_cpu",
    "load_once",
    "never_reached",
    "package_directory",
    "parameters_of",
    "placeholder_module",
    "single_rank_gloo_group",
    "skip_package_initialisers",
    "triton_interpreter",
]
