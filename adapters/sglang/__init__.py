"""SGLang 0.5.23's decode-side KV staging, plugged into kvconform.

Load with ``--impl sglang`` (the ``kvconform.implementations`` entry point) or
``--impl adapters.sglang:make_implementation``: two configurations, SGLang's
``triton`` and ``torch`` kernel paths, one report column each (``--config torch``
selects one; ``sglang#torch`` names one wherever a spec is expected).  Needs
``pip install --no-deps sglang==0.5.23`` plus ``triton`` and ``numpy``
(SGLang's staging modules import both), none of SGLang's other dependencies:
the adapter loads the staging modules without running SGLang's package
initialisers.  Mapping, differences and findings: ``docs/sglang.md``.

Modules, in dependency order:

* ``pin``: the SGLang release, the borrowed definitions, the pinned signatures
  and attributes, ``SglangApiMismatch``.
* ``shims``: how SGLang is loaded and run (placeholders, CPU streams and
  events, the clock; shims 1-8 are listed there).
* ``loader``: :func:`load_sglang`, once per process -> :class:`SglangCode`.
* ``environment``: the SGLang-side stand-ins of a decode rank (state and
  transport only).
* ``views``: the decode-rank view SGLang's scatter is given, and the adapter's
  limits.
* ``decode_handler`` and ``implementation``: the interface's capabilities.

The engine-neutral parts (source borrowing, the API pin, CPU stream/event
stand-ins, the clock router) are :mod:`adapters.toolkit`.  Imports nothing
from kvconform's harness (a standalone repro script runs it without kvconform).
"""

from adapters.sglang.implementation import (
    KERNEL_PATHS,
    SglangAllocator,
    SglangConfigurations,
    SglangImplementation,
    make_default_implementation,
    make_implementation,
    make_torch_implementation,
    make_triton_implementation,
)
from adapters.sglang.loader import SglangCode, load_sglang
from adapters.sglang.pin import (
    BORROWED,
    EXPECTED_ATTRIBUTES,
    EXPECTED_SIGNATURES,
    SGLANG_VERSION,
    SglangApiMismatch,
    SglangUnavailable,
    require_matching_api,
)

__all__ = [
    "BORROWED",
    "EXPECTED_ATTRIBUTES",
    "EXPECTED_SIGNATURES",
    "KERNEL_PATHS",
    "SGLANG_VERSION",
    "SglangAllocator",
    "SglangApiMismatch",
    "SglangCode",
    "SglangConfigurations",
    "SglangImplementation",
    "SglangUnavailable",
    "load_sglang",
    "make_default_implementation",
    "make_implementation",
    "make_torch_implementation",
    "make_triton_implementation",
    "require_matching_api",
]
