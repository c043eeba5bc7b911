"""vLLM 0.33.0's NIXL KV connector, plugged into kvconform (``--impl vllm``).

``--impl vllm`` declares three configurations, each a column of the report: ``pull``
(the default connector), ``push`` and ``permute`` (pull with permute-on-receive);
``--config push`` selects one, ``vllm#push`` names one wherever a spec is expected.

Layout: :mod:`adapters.vllm.pin` (the vLLM release, pinned signatures and
attributes, the globals the stand-ins replace), :mod:`adapters.vllm.loader`
(imports vLLM once, installs the stand-ins), :mod:`adapters.vllm.nixl_standin`
(the in-process NIXL agent), :mod:`adapters.vllm.environment` (config,
platform, rank getters, handshake socket), :mod:`adapters.vllm.implementation`
(the capabilities).  The engine-neutral parts (API pin, load-once, thread-scoped
values, log capture, never-reached globals) are :mod:`adapters.toolkit`.
Details, stand-ins and findings: ``docs/vllm.md``.
"""

from __future__ import annotations

from adapters.vllm.loader import load_vllm
from adapters.vllm.pin import VLLM_VERSION, VllmApiMismatch, VllmUnavailable, require_matching_api

__all__ = ["VLLM_VERSION", "VllmApiMismatch", "VllmConfigurations", "VllmUnavailable", "make_implementation",
           "make_pull_implementation", "make_push_implementation", "make_permute_implementation"]


def _make(mode: str, decode_layout: str = "LBHNC"):
    from adapters.vllm.implementation import VllmImplementation

    code = load_vllm()
    require_matching_api(code)
    return VllmImplementation(code, mode=mode, decode_layout=decode_layout)


def make_pull_implementation():
    """vLLM's pull mode (``NixlConnector``: decode ranks READ head slices from prefill ranks)."""
    return _make("pull")


def make_push_implementation():
    """vLLM's push mode (``NixlPushConnector``: prefill ranks WRITE into decode ranks after a registration)."""
    return _make("push")


def make_permute_implementation():
    """Pull into a token-major (LBNHC) decode cache from a head-major (LBHNC) prefill, with vLLM's
    ``enable_permute_local_kv``: blocks arrive head-major and vLLM rearranges them after the transfer
    (``kv_postprocess_blksize_and_layout_on_receive``)."""
    return _make("pull", decode_layout="LBNHC")


class VllmConfigurations:
    """``--impl vllm``: the connector in each configuration it supports, one column of one report each
    (``--config pull,push`` selects).  Each is built (vLLM imported) only when selected."""

    name = f"vllm {VLLM_VERSION}"
    configurations = {"pull": make_pull_implementation, "push": make_push_implementation,
                      "permute": make_permute_implementation}


def make_implementation() -> VllmConfigurations:
    """``--impl vllm``: pull, push and permute-on-receive (``vllm#push`` is one of them alone)."""
    return VllmConfigurations()
