"""vLLM 0.33.0's NIXL KV connector, plugged into kvconform (``--impl vllm``).

Layout: :mod:`adapters.vllm.loader` (imports vLLM, API pin, installs the
stand-ins), :mod:`adapters.vllm.nixl_standin` (the in-process NIXL agent),
:mod:`adapters.vllm.environment` (config, platform, rank getters, handshake
socket), :mod:`adapters.vllm.implementation` (the capabilities).  Details,
stand-ins and findings: ``docs/vllm.md``.
"""

from __future__ import annotations

from adapters.vllm.loader import VLLM_VERSION, VllmApiMismatch, VllmUnavailable, load_vllm, require_matching_api

__all__ = ["VLLM_VERSION", "VllmApiMismatch", "VllmUnavailable", "make_implementation", "make_push_implementation"]


def _make(mode: str):
    from adapters.vllm.implementation import VllmImplementation

    code = load_vllm()
    require_matching_api(code)
    return VllmImplementation(code, mode=mode)


def make_implementation():
    """vLLM's pull mode (``NixlConnector``: decode ranks READ head slices from prefill ranks), the default."""
    return _make("pull")


def make_push_implementation():
    """vLLM's push mode (``NixlPushConnector``: prefill ranks WRITE into decode ranks after a registration)."""
    return _make("push")
