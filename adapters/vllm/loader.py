"""Loading vLLM 0.33.0's NIXL connector with its environment stood in, and the API pin.

The connector's modules are imported for real (``pip install --no-deps
vllm==0.33.0`` plus the packages their import chain needs, see
``docs/vllm.md``).  Then the names the worker module reads from its
environment are pointed at the stand-ins (:func:`install_environment`):
``NixlWrapper``, ``nixl_agent_config``, ``check_nixl_version``,
``current_platform``, the TP rank getters, ``get_current_attn_backends`` and
the handshake socket ``zmq_ctx``.  No transfer, mapping or validation code is
replaced.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import threading
import types
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

#: The vLLM release this adapter was written and checked against.
VLLM_VERSION = "0.33.0"
INSTALL_HINT = f"pip install --no-deps vllm=={VLLM_VERSION} (plus the packages listed in docs/vllm.md)"

NIXL = "vllm.distributed.kv_transfer.kv_connector.v1.nixl"
MODULES = {
    "tp_mapping": f"{NIXL}.tp_mapping",
    "base_worker": f"{NIXL}.base_worker",
    "pull_worker": f"{NIXL}.pull_worker",
    "push_worker": f"{NIXL}.push_worker",
    "metadata": f"{NIXL}.metadata",
    "kv_utils": "vllm.distributed.kv_transfer.kv_connector.utils",
    "kv_cache_interface": "vllm.v1.kv_cache_interface",
    "backend": "vllm.v1.attention.backend",
    "config": "vllm.config",
    "torch_utils": "vllm.utils.torch_utils",
}

#: Parameter lists (no annotations) of every vLLM callable the adapter calls or relies on, as in 0.33.0.
EXPECTED_SIGNATURES: dict[str, str] = {
    "tp_mapping.compute_tp_mapping": "(transfer_topology, remote_tp_size, group_spec_types, remote_dcp_size=1, head_sharded_kv_heads=None)",
    "tp_mapping.compute_head_offset": "(tp_rank, tp_size, remote_tp_size, total_num_kv_heads)",
    "kv_utils.TransferTopology": "(tp_rank, tp_size, block_size, engine_id, is_mla, is_mamba, total_num_kv_heads, attn_backends, dcp_size=1, tensor_shape=None)",
    "kv_utils.EngineTransferInfo": "(remote_tp_size, remote_block_len, remote_block_size, remote_physical_blocks_per_logical, remote_pp_rank=0, start_layer=0, end_layer=0, remote_dcp_size=1)",
    "kv_utils.TransferTopology.register_remote_engine": "(self, remote_engine_id, info)",
    "base_worker.NixlBaseConnectorWorker": "(vllm_config, engine_id, kv_cache_config)",
    "base_worker.NixlBaseConnectorWorker.register_kv_caches": "(self, kv_caches)",
    "base_worker.NixlBaseConnectorWorker._nixl_handshake": "(self, host, port, remote_tp_size, expected_engine_id, remote_dcp_size=1, remote_pp_size=1, notif_agents_only=False)",
    "base_worker.NixlBaseConnectorWorker.add_remote_agent": "(self, nixl_agent_meta, remote_tp_rank=0, remote_tp_size=1, remote_dcp_size=1)",
    "base_worker.NixlBaseConnectorWorker._validate_remote_agent_handshake": "(self, nixl_agent_meta, remote_tp_size, remote_dcp_size=1)",
    "base_worker.NixlBaseConnectorWorker._build_fa_remote": "(self, plan, nixl_agent_meta, block_size_ratio)",
    "base_worker.NixlBaseConnectorWorker._build_local_splits_from_plan": "(self, plan, src_blocks_data, num_fa_descs, block_size_ratio=1)",
    "base_worker.NixlBaseConnectorWorker._fa_desc_replicated": "(self, desc_starts, num_fa_descs, block_size_ratio=1)",
    "base_worker.NixlBaseConnectorWorker._is_region_replicated": "(self, region_idx)",
    "base_worker.NixlBaseConnectorWorker._strided_desc_starts": "(strided_descs)",
    "base_worker.NixlBaseConnectorWorker.get_transfer_results": "(self)",
    "base_worker.NixlBaseConnectorWorker.shutdown": "(self)",
    "pull_worker.NixlPullConnectorWorker": "(vllm_config, engine_id, kv_cache_config)",
    "pull_worker.NixlPullConnectorWorker.start_load_kv": "(self, metadata)",
    "metadata.NixlAgentMetadata": "(engine_id, agent_metadata, kv_caches_base_addr, device_id, num_blocks, block_lens, block_strides, kv_cache_layout, block_size, ssm_sizes, attn_backend_name, physical_blocks_per_logical_kv_block, region_num_blocks=None, region_group_ids=None, region_names=None, region_mem_types=None, dcp_size=1, pcp_size=1, ple_block_len=None, region_members=<factory>, packed_member_layouts=<factory>)",
    "metadata.NixlConnectorMetadata": "()",
    "metadata.NixlConnectorMetadata.add_new_req_to_recv": "(self, request_id, local_block_ids, kv_transfer_params, local_num_computed_blocks=(), awaiting_kvs=False)",
    "kv_cache_interface.FullAttentionSpec": "(block_size, *, dcp_sharded=True, block_stride_alignment=None, is_draft=False, max_tp_shards=None, num_kv_heads, head_size, dtype, head_size_v=None, kv_quant_mode=KVQuantMode.NONE, page_size_padded=None, num_head_slots=None, state_content_bytes=None, tokens_per_state=1, sliding_window=None, attention_chunk_size=None, non_causal=False)",
    "kv_cache_interface.KVCacheConfig": "(num_blocks, kv_cache_tensors, kv_cache_groups, prefix_cache_retention_interval=None, kv_cache_layout=None, hash_block_size=None, cache_hit_alignment_tokens=None, hisparse_host_num_blocks=None, hisparse_host_block_stride=None, hisparse_shared_host_pool=False, kv_tp_replicas=1)",
}

#: Classes the adapter instantiates whose full signatures are not pinned (pydantic configs, enums).
EXPECTED_ATTRIBUTES: tuple[str, ...] = (
    "config.ParallelConfig",
    "config.KVTransferConfig",
    "kv_cache_interface.KVCacheLayout.LBHNC",
    "kv_cache_interface.KVCacheTensor",
    "kv_cache_interface.KVCacheGroupSpec",
    "backend.AttentionBackend",
    "base_worker.msgspec",
    "torch_utils.PIN_MEMORY",
)

#: Module globals of the worker module that the stand-ins replace (environment only).
ENVIRONMENT_GLOBALS = (
    "NixlWrapper",
    "nixl_agent_config",
    "check_nixl_version",
    "current_platform",
    "get_tensor_model_parallel_rank",
    "get_tensor_model_parallel_world_size",
    "get_pcp_group",
    "get_current_attn_backends",
    "zmq_ctx",
)


class VllmUnavailable(ImportError):
    """vLLM (or a package its connector imports) is not installed."""


class VllmApiMismatch(ImportError):
    """The installed vLLM differs from 0.33.0 in something the adapter relies on."""


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
        """The object an :data:`EXPECTED_SIGNATURES` key names."""
        module, _, path = key.partition(".")
        value: Any = self.modules[module]
        for part in path.split("."):
            value = getattr(value, part)
        return value


def installed_vllm_version() -> Optional[str]:
    try:
        return importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return None


_LOCK = threading.Lock()
_LOADED: Optional[VllmCode] = None


def load_vllm() -> VllmCode:
    """Import (once) vLLM's NIXL connector modules and check them against the pin."""
    global _LOADED
    with _LOCK:
        if _LOADED is None:
            _LOADED = _load()
        return _LOADED


def _load() -> VllmCode:
    if importlib.util.find_spec("vllm") is None:
        raise VllmUnavailable(f"vllm is not installed; the vllm adapter needs it: {INSTALL_HINT}")
    modules = {}
    for key, name in MODULES.items():
        try:
            modules[key] = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            raise VllmUnavailable(f"importing {name} needs the package providing {exc.name!r}: {INSTALL_HINT}") from exc
    code = VllmCode(installed_vllm_version(), modules, ())
    return VllmCode(code.version, modules, tuple(api_differences(code)))


def parameters_of(obj: Any) -> str:
    """``obj``'s parameter list without annotations, e.g. ``(self, x, *, y=1)``."""
    signature = inspect.signature(obj)
    bare = [p.replace(annotation=inspect.Parameter.empty) for p in signature.parameters.values()]
    text = str(signature.replace(parameters=bare, return_annotation=inspect.Signature.empty))
    return text.replace("<KVQuantMode.NONE: 0>", "KVQuantMode.NONE")


def api_differences(code: VllmCode) -> list[str]:
    """Every way the loaded code differs from what the adapter expects of 0.33.0."""
    problems = []
    for key, expected in EXPECTED_SIGNATURES.items():
        try:
            found = parameters_of(code.resolve(key))
        except (AttributeError, KeyError):
            problems.append(f"{key} is missing")
            continue
        if found != expected:
            problems.append(f"{key} signature changed: expected {expected}, found {found}")
    for key in EXPECTED_ATTRIBUTES:
        try:
            code.resolve(key)
        except (AttributeError, KeyError):
            problems.append(f"{key} is missing")
    worker = code.modules["base_worker"]
    problems.extend(f"base_worker.{name} (a global the stand-ins replace) is missing"
                    for name in ENVIRONMENT_GLOBALS if not hasattr(worker, name))
    return problems


def require_matching_api(code: VllmCode) -> None:
    """Raise :class:`VllmApiMismatch` naming every difference; warn on another version that matches."""
    if code.problems:
        bullets = "".join(f"\n  - {p}" for p in code.problems)
        raise VllmApiMismatch(
            f"kvconform's vllm adapter targets vllm {VLLM_VERSION}; the installed vllm {code.version} differs:{bullets}\n"
            f"Install vllm=={VLLM_VERSION} ({INSTALL_HINT}) or update adapters/vllm/ and docs/vllm.md.")
    if code.version != VLLM_VERSION:
        warnings.warn(f"kvconform's vllm adapter targets vllm {VLLM_VERSION}, found {code.version}; its API matches, "
                      "results are reported for the installed version", stacklevel=3)


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
