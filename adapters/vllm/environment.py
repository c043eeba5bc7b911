"""The environment vLLM's NIXL worker expects around it, stood in for one process.

Nothing here transfers or maps KV: it is what a vLLM engine process would
provide (configuration, platform, TP rank, the attention backend's identity,
the handshake socket).  Each stand-in is listed in ``docs/vllm.md``.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
import types
from dataclasses import dataclass
from typing import Any, ContextManager, Iterator

import torch

from adapters.toolkit import ThreadScoped, never_reached
from adapters.vllm.pin import ADAPTER

#: Layer names as vLLM's model runner registers attention layers.
LAYER_NAME = "model.layers.{}.self_attn.attn"


# ===================================================================== TP rank getters
class RankContext:
    """``get_tensor_model_parallel_rank`` / ``_world_size`` for the worker being built on this thread."""

    def __init__(self) -> None:
        self._rank: ThreadScoped[tuple[int, int]] = ThreadScoped()

    def rank(self, tp_rank: int, tp_size: int) -> ContextManager[tuple[int, int]]:
        """The getters answer ``tp_rank`` / ``tp_size`` on this thread while the block runs."""
        return self._rank.using((tp_rank, tp_size))

    def _current(self) -> tuple[int, int]:
        return self._rank.require(f"{ADAPTER}: a TP rank was read outside a worker construction")

    def get_tensor_model_parallel_rank(self) -> int:
        return self._current()[0]

    def get_tensor_model_parallel_world_size(self) -> int:
        return self._current()[1]


#: ``get_pcp_group``: the adapter runs without prefill context parallelism, so vLLM never asks for the group.
get_pcp_group = never_reached("get_pcp_group", ADAPTER, "it runs without prefill context parallelism (PCP size 1)")


# ===================================================================== platform
class CpuPlatformStandIn:
    """``current_platform`` as the NIXL worker reads it: a CPU device, no NUMA pinning, DRAM memory."""

    device_type = "cpu"

    @staticmethod
    def discover_numa_topology() -> list[list[int]]:
        return []  # no cores reserved: the real CPU platform would pin this whole process

    @staticmethod
    def get_nixl_memory_type() -> None:
        return None  # vLLM then derives DRAM from kv_buffer_device="cpu"

    @staticmethod
    def get_nixl_supported_devices() -> dict:
        return {}

    @staticmethod
    def set_device(device: Any) -> None:
        pass

    @staticmethod
    def is_rocm() -> bool:
        return False


# ===================================================================== configuration
@dataclass(frozen=True)
class ModelStandIn:
    """``vllm_config.model_config``: the model facts the connector reads (no Hugging Face config)."""

    total_kv_heads: int
    head_size: int
    num_layers: int
    dtype: torch.dtype
    pipeline_size: int
    pipeline_rank: int
    model: str = "kvconform/paged-kv"
    use_mla: bool = False
    enable_sleep_mode: bool = False
    revision: Any = None

    def get_total_num_kv_heads(self) -> int:
        return self.total_kv_heads

    def get_head_size(self) -> int:
        return self.head_size

    def get_total_num_hidden_layers(self) -> int:
        return self.num_layers

    def get_layers_start_end_indices(self, parallel_config: Any) -> tuple[int, int]:
        per_stage = self.num_layers // self.pipeline_size
        return self.pipeline_rank * per_stage, (self.pipeline_rank + 1) * per_stage


def parallel_config(code: Any, tp_size: int, pp_size: int) -> Any:
    """vLLM's own ``ParallelConfig`` (its pydantic validation refuses sizes below 1 with a ValueError)."""
    return code.ParallelConfig(tensor_parallel_size=tp_size, pipeline_parallel_size=pp_size)


def vllm_config(code: Any, *, model: ModelStandIn, tp_size: int, block_size: int, kv_role: str, layout: str = "LBHNC",
                enable_permute_local_kv: bool = False) -> Any:
    """A minimal ``VllmConfig``: vLLM's own ``KVTransferConfig``, ``ParallelConfig`` and ``KVCacheLayout``,
    the rest plain fields."""
    transfer = code.KVTransferConfig(kv_connector="NixlConnector", kv_role=kv_role, kv_buffer_device="cpu",
                                     enable_permute_local_kv=enable_permute_local_kv)
    cache = types.SimpleNamespace(block_size=block_size, cache_dtype="auto", enable_prefix_caching=True,
                                  get_resolved_kv_cache_layout=lambda: code.KVCacheLayout[layout])
    parallel = parallel_config(code, tp_size, model.pipeline_size)
    return types.SimpleNamespace(
        kv_transfer_config=transfer, cache_config=cache, parallel_config=parallel, model_config=model,
        scheduler_config=types.SimpleNamespace(disable_hybrid_kv_cache_manager=True),
        speculative_config=None, compilation_config=types.SimpleNamespace(static_forward_context={}),
        num_prefill_lookahead_tokens=0)


def kv_cache_config(code: Any, *, layers: range, num_blocks: int, block_size: int, local_heads: int, head_size: int,
                    dtype: torch.dtype) -> Any:
    """vLLM's ``KVCacheConfig``: one full-attention group over this rank's layers."""
    names = [LAYER_NAME.format(i) for i in layers]
    spec = code.FullAttentionSpec(block_size=block_size, num_kv_heads=local_heads, head_size=head_size, dtype=dtype)
    tensors = [code.KVCacheTensor(size=num_blocks * spec.page_size_bytes, layers=[name], layer_stride=0,
                                  block_stride=spec.page_size_bytes) for name in names]
    return code.KVCacheConfig(num_blocks=num_blocks, kv_cache_tensors=tensors,
                              kv_cache_groups=[code.KVCacheGroupSpec(names, spec)])


def attention_backend(code: Any) -> type:
    """The attention backend's identity: vLLM's ``AttentionBackend`` defaults (any kernel block size)."""

    class PagedAttentionStandIn(code.AttentionBackend):
        """Stands for the model's attention kernels; the connector reads only its name and block sizes."""

        @staticmethod
        def get_name() -> str:
            return "KVCONFORM_PAGED"

    return PagedAttentionStandIn


# ===================================================================== handshake transport
class HandshakeListeners:
    """The prefill engines' metadata listeners, reached through a ``zmq_ctx`` stand-in.

    The real listener (``base_scheduler.py``) answers ``(GET_META_MSG, pp_rank,
    tp_rank)`` with the rank's encoded ``NixlHandshakePayload`` and its
    ``perf_counter``; this one answers the same two frames from a table.
    """

    def __init__(self, code: Any) -> None:
        self._code = code
        self._tables: dict[tuple[str, int], dict[tuple[int, int], bytes]] = {}
        self._ports = itertools.count(20000)
        self._lock = threading.Lock()

    def listen(self, table: dict[tuple[int, int], bytes]) -> tuple[str, int]:
        with self._lock:
            address = ("kvconform-prefill", next(self._ports))
            self._tables[address] = table
        return address

    def close(self, address: tuple[str, int]) -> None:
        with self._lock:
            self._tables.pop(address, None)

    @contextlib.contextmanager
    def zmq_ctx(self, socket_type: Any, addr: str) -> Iterator["_RequestSocket"]:
        host, _, port = addr.rpartition("://")[2].rpartition(":")
        with self._lock:
            table = self._tables.get((host, int(port)))
        if table is None:
            raise ConnectionError(f"no prefill engine listens on {addr}")
        yield _RequestSocket(self._code, table)


class _RequestSocket:
    def __init__(self, code: Any, table: dict[tuple[int, int], bytes]) -> None:
        self._code, self._table, self._reply = code, table, None

    def setsockopt(self, *args: Any) -> None:
        pass

    def send(self, message: bytes) -> None:
        msgpack = self._code.msgspec.msgpack
        _, pp_rank, tp_rank = msgpack.decode(message)
        self._reply = [self._table[(pp_rank, tp_rank)], msgpack.encode(time.perf_counter())]

    def recv_multipart(self) -> list[bytes]:
        reply, self._reply = self._reply, None
        return reply
