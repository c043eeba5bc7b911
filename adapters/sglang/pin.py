"""What the SGLang adapter relies on in SGLang 0.5.23: modules, borrowed definitions, signatures.

Checked at load (:func:`adapters.sglang.loader.load_sglang` collects every
difference) and refused by :func:`require_matching_api` before anything runs;
``tests/test_sglang_adapter.py`` checks each entry separately.  Updating the
adapter to a new SGLang release starts here.
"""

from __future__ import annotations

from typing import Any

from adapters.toolkit import ApiMismatch, ApiPin, EngineUnavailable

#: The SGLang release this adapter was written and checked against.
SGLANG_VERSION = "0.5.23"
SGLANG_PIN = ApiPin(distribution="sglang", version=SGLANG_VERSION,
                    install=f"pip install --no-deps sglang=={SGLANG_VERSION}", sources="adapters/sglang/ and docs/sglang.md")

STAGING_BUFFER = "sglang.srt.disaggregation.common.staging_buffer"
STAGING_HANDLER = "sglang.srt.disaggregation.common.staging_handler"

#: Packages whose ``__init__`` is skipped (shim 1), parent first.
SKIPPED_PACKAGES = (
    "sglang",
    "sglang.srt",
    "sglang.srt.disaggregation",
    "sglang.srt.disaggregation.common",
    "sglang.kernels",
    "sglang.kernels.ops",
    "sglang.kernels.ops.memory",
    "sglang.srt.utils",
)
#: Modules imported for real, in order.
LEAF_MODULES = ("sglang.srt.environ", "sglang.kernels.ops.memory.ptr_table", STAGING_BUFFER, STAGING_HANDLER)

#: Definitions compiled from SGLang's source files (shim 4): file -> qualified names.
BORROWED: dict[str, tuple[str, ...]] = {
    "srt/utils/common.py": ("create_device_stream", "device_stream_context", "create_device_event"),
    "srt/disaggregation/base/conn.py": ("KVPoll", "KVTransferDestination"),
    "srt/disaggregation/utils.py": (
        "all_reduce_flags",
        "_all_reduce_polls",
        "_poll_with_failure_injection",
        "poll_and_all_reduce_with_staging",
        "ReqToMetadataIdxAllocator",
    ),
    "srt/disaggregation/decode.py": ("DecodePreallocQueue._send_kv_metadata",),
    "srt/disaggregation/common/conn.py": (
        "CommonKVManager._resolve_rank_mapping",
        "CommonKVManager.check_status",
        "CommonKVManager.update_status",
        "CommonKVManager.record_failure",
        "CommonKVManager.handle_chunk_ready",
        "CommonKVManager.apply_prefill_status",
        "CommonKVReceiver.send_metadata",
        "CommonKVReceiver.poll",
        "CommonKVReceiver._poll",
        "CommonKVReceiver._check_waiting_timeout",
        "CommonKVReceiver.abort",
        "CommonKVReceiver.ensure_abort_notified",
        "CommonKVReceiver.clear",
        "CommonKVReceiver._clear",
    ),
    "srt/disaggregation/mooncake/conn.py": (
        "MooncakeKVManager.register_staging_room_bootstrap",
        "MooncakeKVManager.set_kv_buffer_tensors",
    ),
}

#: Parameter lists (no annotations) of every SGLang callable the adapter relies on, as in 0.5.23.
EXPECTED_SIGNATURES: dict[str, str] = {
    "staging_buffer.compute_head_slice_params": "(src_attn_tp_size, dst_attn_tp_size, src_tp_rank, dst_tp_rank, total_kv_heads)",
    "staging_buffer.compute_staging_layout": "(src_attn_tp_size, dst_attn_tp_size, dst_tp_rank, total_kv_heads, num_tokens, bytes_per_head_token, num_layers)",
    "staging_buffer.resolve_total_kv_heads": "(kv_args, attn_tp_size)",
    "staging_buffer.gather_all_layers_to_staging": "(k_buffers, v_buffers, page_indices_np, staging_buffer, src_head_start, num_heads, page_size)",
    "staging_buffer.scatter_staging_to_kv": "(staging_buffer_view, k_buffers, v_buffers, page_idx_tensor, page_size, prefill_attn_tp_size, decode_attn_tp_size, dst_tp_rank, total_kv_heads)",
    "staging_buffer.StagingBuffer": "(size_bytes, device, gpu_id, custom_mem_pool=None)",
    "staging_buffer.StagingAllocator": "(total_size_bytes, device, gpu_id, custom_mem_pool=None)",
    "staging_buffer.StagingAllocator.assign": "(self, required_bytes)",
    "staging_buffer.StagingAllocator.free": "(self, alloc_id)",
    "staging_buffer.StagingAllocator.get_watermark": "(self)",
    "staging_handler.DecodeStagingHandler": "(kv_manager, staging_allocator, kv_buffer_info, decode_tp, total_kv_heads, tp_rank, scheduler)",
    "staging_handler.DecodeStagingHandler.create": "(kv_manager, scheduler, tp_rank)",
    "staging_handler.DecodeStagingHandler.register_decode_req": "(self, room, decode_req)",
    "staging_handler.DecodeStagingHandler.unregister_decode_req": "(self, room)",
    "staging_handler.DecodeStagingHandler.release_room": "(self, room, decode_req, receiver)",
    "staging_handler.DecodeStagingHandler.handle_chunk_arrived": "(self, room, chunk_idx, page_start, num_pages, writer_id)",
    "staging_handler.DecodeStagingHandler.submit_last_scatter_async": "(self, room)",
    "staging_handler.DecodeStagingHandler.is_staging_room": "(self, room)",
    "staging_handler.DecodeStagingHandler.is_done": "(self, decode_req)",
    "staging_handler.DecodeStagingHandler.is_failed": "(self, decode_req)",
    "staging_handler.DecodeStagingHandler.advance_scatter": "(self, decode_req)",
    "staging_handler.DecodeStagingContext": "(allocator=None, room_bootstrap=<factory>, room_receivers=<factory>)",
    "staging_handler.PrefillStagingContext": "(buffers=<factory>, remote_watermarks=<factory>, watermark_cv=<factory>, prefetch_requested=<factory>, prefetched_rooms=<factory>, prefetch_sockets=<factory>)",
    "staging_handler.StagingManagerMixin._handle_staging_req": "(self, msg)",
    "staging_handler.handle_staging_req": "(msg, staging_allocator, kv_args, attn_tp_size, prefill_attn_tp_size, kv_buffer_tensors, room_receivers, room_bootstrap)",
    "staging_handler.is_watermark_ready": "(staging_state, session_id, alloc_round, alloc_end)",
    "staging_handler.handle_watermark_msg": "(staging_ctx, msg_parts)",
    "srt/utils/common.py:create_device_stream": "(device)",
    "srt/utils/common.py:device_stream_context": "(stream)",
    "srt/utils/common.py:create_device_event": "(device)",
    "srt/disaggregation/utils.py:poll_and_all_reduce_with_staging": "(decode_reqs, staging_handler, gloo_group, metadata_buffers=None, pollers=None)",
    "srt/disaggregation/utils.py:ReqToMetadataIdxAllocator": "(size)",
    "srt/disaggregation/decode.py:DecodePreallocQueue._send_kv_metadata": "(self, decode_req, kv_indices, page_size, state_indices=None, **metadata_kwargs)",
    "srt/disaggregation/common/conn.py:CommonKVManager._resolve_rank_mapping": "(self, info)",
    "srt/disaggregation/common/conn.py:CommonKVManager.update_status": "(self, bootstrap_room, status)",
    "srt/disaggregation/common/conn.py:CommonKVManager.record_failure": "(self, bootstrap_room, failure_reason)",
    "srt/disaggregation/common/conn.py:CommonKVManager.handle_chunk_ready": "(self, msg)",
    "srt/disaggregation/common/conn.py:CommonKVManager.apply_prefill_status": "(self, *, bootstrap_room, status, prefill_rank, failure_reason=None)",
    "srt/disaggregation/common/conn.py:CommonKVReceiver.send_metadata": "(self, kv_indices, aux_index=None, state_indices=None, decode_prefix_len=None, destination=KVTransferDestination.DEVICE, device_kv_indices=None)",
    "srt/disaggregation/common/conn.py:CommonKVReceiver.poll": "(self)",
    "srt/disaggregation/common/conn.py:CommonKVReceiver.abort": "(self)",
    "srt/disaggregation/common/conn.py:CommonKVReceiver.clear": "(self)",
    "srt/disaggregation/mooncake/conn.py:MooncakeKVManager.register_staging_room_bootstrap": "(self, room, bootstrap_infos, receiver)",
    "srt/disaggregation/mooncake/conn.py:MooncakeKVManager.set_kv_buffer_tensors": "(self, k_buffers, v_buffers, page_size, slot_layer_ids=None)",
}

#: Module attributes the shims and the mapping touch.
EXPECTED_ATTRIBUTES: tuple[str, ...] = (
    "staging_buffer._USE_TRITON_STAGING",
    "staging_buffer._STAGING_SUPPORTED_DEVICE_TYPES",
    "staging_buffer._check_kv_on_staging_device",
    "staging_buffer.StagingAllocator.ALLOC_OVERSIZED",
    "staging_buffer._fused_gather_to_staging_kernel",
    "staging_handler.time",
    "staging_handler.create_device_stream",
    "staging_handler.create_device_event",
    "staging_handler.device_stream_context",
    "staging_buffer.create_device_stream",
    "staging_buffer.device_stream_context",
)


class SglangUnavailable(EngineUnavailable):
    """SGLang is not installed, so the adapter cannot load."""


class SglangApiMismatch(ApiMismatch):
    """The installed SGLang differs from 0.5.23 in something the adapter relies on."""


def require_matching_api(code: Any) -> None:
    """Raise :class:`SglangApiMismatch` naming every difference of ``code`` (a loaded
    :class:`~adapters.sglang.loader.SglangCode`); warn on another version that matches."""
    SGLANG_PIN.require(code.version, code.problems, SglangApiMismatch, stacklevel=3)
