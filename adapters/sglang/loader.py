"""Load SGLang 0.5.23's staging code once, with the shims applied, and record how it differs from the pin.

:func:`load_sglang` imports the staging modules without SGLang's package
initialisers, borrows the definitions listed in ``pin.BORROWED`` into
namespaces holding exactly the globals they read, applies the runtime shims
(``shims``) and checks the pinned signatures and attributes.  It never raises
for an API difference: the differences are in :attr:`SglangCode.problems`, and
the factories refuse to run on them (``pin.require_matching_api``).
"""

from __future__ import annotations

import contextlib
import enum
import importlib
import random
import sys
import types
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from adapters.sglang.pin import (
    BORROWED,
    EXPECTED_ATTRIBUTES,
    EXPECTED_SIGNATURES,
    LEAF_MODULES,
    SGLANG_PIN,
    STAGING_BUFFER,
    SglangUnavailable,
)
from adapters.sglang.shims import ADAPTER, apply_runtime_shims, install_placeholders
from adapters.toolkit import (
    ClockRouter,
    OnceLogger,
    api_differences,
    attribute_at,
    borrow,
    installed_version,
    load_once,
    never_reached,
    package_directory,
    triton_interpreter,
)


@dataclass(frozen=True)
class SglangCode:
    """SGLang's staging code as loaded here, with whatever differs from 0.5.23."""

    version: Optional[str]
    root: Path
    staging_buffer: types.ModuleType
    staging_handler: types.ModuleType
    borrowed: Mapping[str, Any]  #: ``"relpath:qualname"`` -> object
    problems: tuple[str, ...]  #: API differences from 0.5.23 (empty when it matches)
    clock: ClockRouter
    triton_by_default: bool  #: SGLang's own kernel choice (``SGLANG_STAGING_USE_TORCH`` unset)
    kernels_interpreted: bool  #: Triton kernels were compiled for the CPU interpreter

    def get(self, relpath: str, qualname: str) -> Any:
        return self.borrowed[f"{relpath}:{qualname}"]

    @property
    def kv_poll(self) -> Any:
        return self.get("srt/disaggregation/base/conn.py", "KVPoll")

    def resolve(self, name: str) -> Any:
        """The object a ``pin.EXPECTED_SIGNATURES`` / ``pin.EXPECTED_ATTRIBUTES`` key names."""
        if ":" in name:
            return self.borrowed[name]
        module_key, _, path = name.partition(".")
        return attribute_at(self.staging_buffer if module_key == "staging_buffer" else self.staging_handler, path)


@load_once
def load_sglang() -> SglangCode:
    """Load (once per process) SGLang's staging modules and borrowed definitions, with the shims applied."""
    root = package_directory("sglang", SGLANG_PIN.install, SglangUnavailable)
    clock = ClockRouter()
    problems: list[str] = []
    borrowed: dict[str, Any] = {}

    def take(relpath: str, namespace: dict) -> dict[str, Any]:
        found, trouble = borrow(root, relpath, BORROWED[relpath], namespace)
        problems.extend(trouble)
        borrowed.update({f"{relpath}:{q}": v for q, v in found.items()})
        return found

    helpers = take("srt/utils/common.py", {"__name__": "sglang.srt.utils.common", "torch": torch})
    install_placeholders(root, helpers)
    interpret = not torch.cuda.is_available() and STAGING_BUFFER not in sys.modules
    modules = []
    for name in LEAF_MODULES:
        with triton_interpreter() if interpret and name == STAGING_BUFFER else contextlib.nullcontext():
            modules.append(importlib.import_module(name))
    staging_buffer, staging_handler = modules[2], modules[3]
    envs = modules[0].envs

    base = take("srt/disaggregation/base/conn.py", {"__name__": "sglang.srt.disaggregation.base.conn", "enum": enum})
    kv_poll, destination = base["KVPoll"], base["KVTransferDestination"]
    take("srt/disaggregation/utils.py", {
        "__name__": "sglang.srt.disaggregation.utils", "torch": torch, "dist": torch.distributed, "envs": envs,
        "random": random, "deque": deque, "KVPoll": kv_poll,
        "_apply_metadata_gate": never_reached("_apply_metadata_gate", ADAPTER),
    })
    take("srt/disaggregation/decode.py", {"__name__": "sglang.srt.disaggregation.decode",
                                          "KVTransferDestination": destination,
                                          "get_disagg": never_reached("get_disagg", ADAPTER)})
    take("srt/disaggregation/common/conn.py", {
        "__name__": "sglang.srt.disaggregation.common.conn", "KVPoll": kv_poll, "KVTransferDestination": destination,
        "time": clock, "logger": OnceLogger("sglang.srt.disaggregation.common.conn"),
    })
    take("srt/disaggregation/mooncake/conn.py", {"__name__": "sglang.srt.disaggregation.mooncake.conn"})

    triton_by_default = bool(getattr(staging_buffer, "_USE_TRITON_STAGING", True))
    kernel = getattr(staging_buffer, "_fused_gather_to_staging_kernel", None)
    code = SglangCode(
        version=installed_version("sglang"), root=root, staging_buffer=staging_buffer, staging_handler=staging_handler,
        borrowed=borrowed, problems=(), clock=clock, triton_by_default=triton_by_default,
        kernels_interpreted=type(kernel).__name__ == "InterpretedFunction",
    )
    problems.extend(api_differences(EXPECTED_SIGNATURES, EXPECTED_ATTRIBUTES, code.resolve))
    apply_runtime_shims(staging_buffer, staging_handler, helpers, clock)
    return SglangCode(**{**code.__dict__, "problems": tuple(problems)})
