"""Loading vLLM 0.33.0's NIXL connector with its environment stood in.

The connector's modules are imported for real (``pip install --no-deps
vllm==0.33.0`` plus the packages their import chain needs, see
``docs/vllm.md``) and checked against the pin (:mod:`adapters.vllm.pin`).
Then the names the worker module reads from its environment are pointed at
the stand-ins (:func:`install_environment`): ``NixlWrapper``,
``nixl_agent_config``, ``check_nixl_version``, ``current_platform``, the TP
rank getters, ``get_current_attn_backends`` and the handshake socket
``zmq_ctx``.  No transfer, mapping or validation code is replaced.
"""

from __future__ import annotations

import importlib
import types
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from adapters.toolkit import api_differences, attribute_at, installed_version, load_once, package_directory
from adapters.vllm.pin import (
    ENVIRONMENT_GLOBALS,
    EXPECTED_ATTRIBUTES,
    EXPECTED_SIGNATURES,
    MODULES,
    VLLM_PIN,
    VllmUnavailable,
)


@dataclass(frozen=True)
class VllmCode:
    """vLLM's connector modules as loaded here, with whatever differs from 0.33.0."""

    version: Optional[str]
    modules: Mapping[str, types.ModuleType]
    problems: tuple[str, ...]

    def __getattr__(self, name: str) -> Any:
        for module in ("tp_mapping", "pull_worker", "push_worker", "metadata", "kv_utils", "kv_cache_interface",
                       "backend", "config", "base_worker"):
            loaded = self.__dict__["modules"].get(module)
            if loaded is not None and hasattr(loaded, name):
                return getattr(loaded, name)
        raise AttributeError(name)

    def resolve(self, key: str) -> Any:
        """The object a ``pin.EXPECTED_SIGNATURES`` / ``pin.EXPECTED_ATTRIBUTES`` key names."""
        module, _, path = key.partition(".")
        return attribute_at(self.modules[module], path)


@load_once
def load_vllm() -> VllmCode:
    """Import (once per process) vLLM's NIXL connector modules and check them against the pin.

    The worker-module globals the stand-ins replace (``pin.ENVIRONMENT_GLOBALS``)
    are pinned as attributes: a vanished one is a difference.
    """
    package_directory("vllm", VLLM_PIN.install, VllmUnavailable)
    modules = {}
    for key, name in MODULES.items():
        try:
            modules[key] = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            raise VllmUnavailable(f"importing {name} needs the package providing {exc.name!r}: {VLLM_PIN.install}") from exc
    code = VllmCode(installed_version("vllm"), modules, ())
    attributes = EXPECTED_ATTRIBUTES + tuple(f"base_worker.{name}" for name in ENVIRONMENT_GLOBALS)
    return VllmCode(code.version, modules, tuple(api_differences(EXPECTED_SIGNATURES, attributes, code.resolve)))


def install_environment(code: VllmCode, replacements: Mapping[str, Callable | Any]) -> None:
    """Point the worker module's environment globals at the stand-ins (idempotent).

    Also sets ``vllm.utils.torch_utils.PIN_MEMORY`` to what vLLM's own CPU
    platform reports (``CpuPlatform.is_pin_memory_available() -> False``): vLLM
    computes it once at import from the detected platform, which here is not
    the CPU platform (no ``vllm._C``), and pinned host memory needs an
    accelerator.
    """
    unknown = sorted(set(replacements) - set(ENVIRONMENT_GLOBALS))
    if unknown:
        raise ValueError(f"not an environment global of the NIXL worker: {unknown}")
    worker = code.modules["base_worker"]
    for name, value in replacements.items():
        setattr(worker, name, value)
    code.modules["torch_utils"].PIN_MEMORY = False
