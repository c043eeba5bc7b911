"""How SGLang 0.5.23's staging code is loaded and run here; none of it replaces staging logic.

1. Package initialisers skipped: the packages in ``pin.SKIPPED_PACKAGES``
   become empty placeholder packages (right ``__path__``) unless already
   imported; the leaves in ``pin.LEAF_MODULES`` (``sglang.srt.environ``,
   ``ptr_table``, ``common.staging_buffer``, ``common.staging_handler``) are
   then imported normally.
2. The ``sglang.srt.utils`` placeholder carries SGLang's own
   ``create_device_stream``, ``device_stream_context`` and
   ``create_device_event``, compiled from ``srt/utils/common.py`` (shim 4).
3. ``sglang.srt.runtime_context`` placeholder: its ``get_schedule`` (used only
   by the prefill-side ``PrefillStagingStrategy``) raises if ever called; the
   real module needs ``msgspec``.
4. Borrowed definitions (``pin.BORROWED``): compiled from the installed source
   files into namespaces holding exactly the globals they read
   (:func:`adapters.toolkit.borrow`); the load fails if one reads a global not
   provided.  Globals given (``loader``): ``KVPoll``, ``KVTransferDestination``,
   ``envs``, ``random``, ``torch``, ``dist``, ``deque``, ``enum``, borrowed
   siblings, a logger with ``warning_once`` (SGLang patches that in at package
   import), ``time`` = the clock router (shim 7), and two never-reached
   placeholders that raise if called: ``get_disagg`` (read only for
   re-bootstrapped requests) and ``_apply_metadata_gate`` (only with metadata
   buffers, which the adapter does not pass).
5. CPU device: SGLang's staging is CUDA/XPU-only.  On CPU: ``"cpu"`` is added
   to ``staging_buffer._STAGING_SUPPORTED_DEVICE_TYPES``; the stream and event
   helpers bound in staging_buffer / staging_handler dispatch CPU devices to a
   synchronous stream and an always-complete event (CPU work is finished when
   the call returns) and everything else to SGLang's own helpers; a CPU
   ``StagingBuffer``'s ``device`` is normalised from ``cpu:0`` to ``cpu``
   (``implementation``); ``DecodeStagingHandler.__init__`` asserts an indexed
   device, so on CPU it is created against a placeholder first K entry
   reporting ``cpu:0`` and then given the real pools (``decode_handler``).
6. Kernel path: ``staging_buffer._USE_TRITON_STAGING`` (SGLang's switch, set
   from ``SGLANG_STAGING_USE_TORCH`` at import) is set before each call to the
   path chosen for the tensors' device (``implementation``).
7. Clock: ``staging_handler.time`` and the ``time`` of borrowed common/conn.py
   code are a :class:`~adapters.toolkit.ClockRouter`; ``completion_timeout``
   and ``kv_mgr.waiting_timeout`` are set to ``timeout_s``.
8. No CUDA: staging_buffer is imported inside
   :func:`adapters.toolkit.triton_interpreter`, so its two ``@triton.jit``
   kernels become Triton-interpreter functions and SGLang's default (Triton)
   path runs on CPU.
"""

from __future__ import annotations

import contextlib
import sys
import types
from pathlib import Path
from typing import Any, Callable, Mapping

from adapters.sglang.pin import SKIPPED_PACKAGES
from adapters.toolkit import (
    ClockRouter,
    CompletedEvent,
    SynchronousStream,
    is_cpu,
    never_reached,
    placeholder_module,
    skip_package_initialisers,
)

#: How the adapter names itself in placeholders and never-reached errors.
ADAPTER = "kvconform's sglang adapter"


def install_placeholders(root: Path, sglang_helpers: Mapping[str, Callable]) -> None:
    """Shims 1-3: placeholder packages, the utils helpers, a runtime_context without msgspec."""
    created = skip_package_initialisers(root, SKIPPED_PACKAGES, f"skipped by {ADAPTER}")
    utils = created.get("sglang.srt.utils")
    if utils is not None:
        for helper, fn in sglang_helpers.items():
            setattr(utils, helper, fn)
    if "sglang.srt.runtime_context" not in sys.modules:
        module = placeholder_module("sglang.srt.runtime_context", None, "needs msgspec; only get_schedule is named")
        module.get_schedule = never_reached("get_schedule", ADAPTER)


def device_helpers(sglang_helpers: Mapping[str, Callable]) -> dict[str, Callable]:
    """Shim 5: stream/event helpers sending CPU devices to the stand-ins, others to SGLang's own."""

    def create_device_stream(device: Any) -> Any:
        if is_cpu(device):
            return SynchronousStream(device)
        return sglang_helpers["create_device_stream"](device)

    def device_stream_context(stream: Any) -> Any:
        if isinstance(stream, SynchronousStream):
            return contextlib.nullcontext()
        return sglang_helpers["device_stream_context"](stream)

    def create_device_event(device: Any) -> Any:
        if is_cpu(device):
            return CompletedEvent()
        return sglang_helpers["create_device_event"](device)

    return {"create_device_stream": create_device_stream, "device_stream_context": device_stream_context,
            "create_device_event": create_device_event}


def apply_runtime_shims(staging_buffer: types.ModuleType, staging_handler: types.ModuleType,
                        sglang_helpers: Mapping[str, Callable], clock: ClockRouter) -> None:
    """Shims 5 and 7: CPU as a staging device, CPU streams/events, the handler clock."""
    supported = tuple(getattr(staging_buffer, "_STAGING_SUPPORTED_DEVICE_TYPES", ()))
    if "cpu" not in supported:
        staging_buffer._STAGING_SUPPORTED_DEVICE_TYPES = supported + ("cpu",)
    dispatch = device_helpers(sglang_helpers)
    for module in (staging_buffer, staging_handler):
        for name, fn in dispatch.items():
            if hasattr(module, name):
                setattr(module, name, fn)
    staging_handler.time = clock
