"""What the vLLM adapter relies on in vLLM 0.33.0: modules, signatures, attributes, replaced globals.

Checked at load (:func:`adapters.vllm.loader.load_vllm` collects every
difference) and refused by :func:`require_matching_api` before anything runs;
``tests/test_vllm_adapter.py`` checks each signature and replaced global
separately.  Updating the adapter to a new vLLM release starts here.
"""

from __future__ import annotations

from typing import Any

from adapters.toolkit import ApiMismatch, ApiPin, EngineUnavailable

#: The vLLM release this adapter was written and checked against.
VLLM_VERSION = "0.33.0"
VLLM_PIN = ApiPin(distribution="vllm", version=VLLM_VERSION,
                  install=f"pip install --no-deps vllm=={VLLM_VERSION} (plus the packages listed in docs/vllm.md)",
                  sources="adapters/vllm/ and docs/vllm.md")

#: How the adapter names itself in errors raised by its stand-ins.
ADAPTER = "kvconform's vllm adapter"

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


class VllmUnavailable(EngineUnavailable):
    """vLLM (or a package its connector imports) is not installed."""


class VllmApiMismatch(ApiMismatch):
    """The installed vLLM differs from 0.33.0 in something the adapter relies on."""


def require_matching_api(code: Any) -> None:
    """Raise :class:`VllmApiMismatch` naming every difference of ``code`` (a loaded
    :class:`~adapters.vllm.loader.VllmCode`); warn on another version that matches."""
    VLLM_PIN.require(code.version, code.problems, VllmApiMismatch, stacklevel=3)
