"""vLLM 0.33.0's NIXL connector behind kvconform's ``head_mapping`` and ``end_to_end`` capabilities.

What runs is vLLM's own code (see ``docs/vllm.md`` for the full list):

* ``head_mapping``: ``TransferTopology`` + ``compute_tp_mapping`` (the TP
  mapping module) give the source ranks; head offsets and counts are read off
  the descriptors vLLM's own builders make from that mapping
  (``_build_fa_remote`` for the prefill side, ``_build_local_splits_from_plan``
  for the decode side) over a one-block region of one byte per head, so a
  byte offset is a head index.
* ``end_to_end``, pull: one ``NixlPullConnectorWorker`` per prefill and decode
  rank, each with ``register_kv_caches`` over vLLM-layout caches; decode ranks
  run ``start_load_kv`` (the background handshake: ``_nixl_handshake`` with
  compatibility hash, metadata decoding, ``add_remote_agent``,
  ``_validate_remote_agent_handshake``; then ``_read_blocks_for_req``: block-id
  mapping, prefix trimming, descriptor ids, READs) and ``get_transfer_results``
  (completion, post-receive processing); prefill ranks count reader
  notifications in their own ``get_transfer_results``.  Push: the same with
  ``NixlPushConnectorWorker`` (decode workers send the registration, prefill
  writer threads WRITE).  Permute: pull into a token-major (LBNHC) decode cache.

``HANDSHAKE_TIMEOUT_S`` bounds one move: in one process a move takes
milliseconds, so a request not received by then is one vLLM will not deliver.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Any, ContextManager, Sequence

import torch

from adapters.toolkit import LogCapture, ThreadScoped
from adapters.vllm import environment as env
from adapters.vllm.loader import VllmCode, install_environment
from adapters.vllm.nixl_standin import Fabric, InProcessNixlAgent
from adapters.vllm.pin import ADAPTER, VLLM_VERSION

PREFILL_ENGINE = "kvconform-prefill"
DECODE_ENGINE = "kvconform-decode"
REQUEST_ID = "kvconform-request"
HANDSHAKE_TIMEOUT_S = 3.0
_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


class VllmTransferFailed(RuntimeError):
    """vLLM reported the request's transfer as failed; the message carries vLLM's own log lines."""


# ===================================================================== environment installation
class _Environment:
    """The stand-ins, installed once per process into vLLM's worker module: shared by every implementation
    (configuration) built in the process, since installing them again would point vLLM at another's."""

    _shared: dict[int, "_Environment"] = {}
    _shared_lock = threading.Lock()

    @classmethod
    def of(cls, code: VllmCode) -> "_Environment":
        with cls._shared_lock:
            if id(code) not in cls._shared:
                cls._shared[id(code)] = cls(code)
            return cls._shared[id(code)]

    def __init__(self, code: VllmCode) -> None:
        self.move_lock = threading.Lock()  # one move at a time per process: the installed globals are shared
        self.ranks = env.RankContext()
        self.listeners = env.HandshakeListeners(code)
        self.backend = env.attention_backend(code)
        self._fabric: ThreadScoped[Fabric] = ThreadScoped()
        install_environment(code, {
            "NixlWrapper": self._agent,
            "nixl_agent_config": None,
            "check_nixl_version": lambda minimum: None,
            "current_platform": env.CpuPlatformStandIn(),
            "get_tensor_model_parallel_rank": self.ranks.get_tensor_model_parallel_rank,
            "get_tensor_model_parallel_world_size": self.ranks.get_tensor_model_parallel_world_size,
            "get_pcp_group": env.get_pcp_group,
            "get_current_attn_backends": lambda vllm_config, layer_names=None: [self.backend],
            "zmq_ctx": self.listeners.zmq_ctx,
        })

    def _agent(self, name: str, config: Any = None) -> InProcessNixlAgent:
        return InProcessNixlAgent(name, self._fabric.require(f"{ADAPTER}: a NIXL agent was created outside move_request"))

    def fabric(self, fabric: Fabric) -> ContextManager[Fabric]:
        """NIXL agents vLLM creates on this thread while the block runs join ``fabric``."""
        return self._fabric.using(fabric)


# ===================================================================== pool conversion
#: Cache layouts the adapter builds: per-layer memory order of vLLM's logical ``[blocks, heads, block_size, K|V]``.
LAYOUTS = ("LBHNC", "LBNHC")


def to_vllm_cache(k: torch.Tensor, v: torch.Tensor, page_size: int, layout: str = "LBHNC") -> torch.Tensor:
    """A whole layer pool as vLLM's layer view ``[blocks, heads, block_size, K|V]``, bit for bit.

    ``LBHNC`` stores it head-major (contiguous); ``LBNHC`` token-major, the view
    then being a transpose of ``[blocks, block_size, heads, K|V]`` storage.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    tokens, heads, dim = k.shape
    if tokens % page_size:
        raise ValueError(f"pool of {tokens} tokens is not whole pages of {page_size}")
    blocks = tokens // page_size
    shape = (blocks, heads, page_size, 2 * dim) if layout == "LBHNC" else (blocks, page_size, heads, 2 * dim)
    storage = torch.empty(shape, dtype=k.dtype, device=k.device)
    cache = storage if layout == "LBHNC" else storage.transpose(1, 2)
    bits = cache.view(_INT[k.element_size()])
    for part, source in ((slice(0, dim), k), (slice(dim, 2 * dim), v)):
        bits[..., part] = source.view(_INT[k.element_size()]).view(blocks, page_size, heads, dim).transpose(1, 2)
    return cache


def from_vllm_cache(cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Copy a whole vLLM layer cache back into the suite's K and V pools (every slot, bit for bit)."""
    blocks, heads, page_size, both = cache.shape
    dim = both // 2
    bits = cache.view(_INT[cache.element_size()])
    for part, target in ((slice(0, dim), k), (slice(dim, 2 * dim), v)):
        target.view(_INT[k.element_size()]).copy_(bits[..., part].transpose(1, 2).reshape(blocks * page_size, heads, dim))


@dataclass
class _Rank:
    """One engine rank: its worker, its vLLM caches and the suite pools they mirror."""

    pp_stage: int
    tp_rank: int
    worker: Any
    caches: dict[str, torch.Tensor]
    pools: tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]]
    layer_names: list[str]

    def copy_back(self) -> None:
        for name, k, v in zip(self.layer_names, *self.pools):
            from_vllm_cache(self.caches[name], k, v)


# ===================================================================== the implementation
class VllmImplementation:
    """vLLM's NIXL connector: head mapping and whole-request moves through its pull worker."""

    capabilities = frozenset({"head_mapping", "end_to_end"})
    #: Declared per mode (vLLM's design, see docs/vllm.md): a decode worker refuses PP > 1 in both modes
    #: (``NotImplementedError`` in its ``__init__``); pull has no pipeline fan-in either (a decode rank compares
    #: its regions with one prefill rank's), so no PP at all; push writes PP>1 prefill stages into a PP=1 decode.
    LIMITS_BY_MODE = {"pull": frozenset({"no_decode_pipeline", "no_pipeline_fan_in"}),
                      "push": frozenset({"no_decode_pipeline"})}

    def __init__(self, code: VllmCode, mode: str = "pull", decode_layout: str = "LBHNC") -> None:
        if mode not in self.LIMITS_BY_MODE:
            raise ValueError(f"mode must be one of {sorted(self.LIMITS_BY_MODE)}, got {mode!r}")
        if decode_layout not in LAYOUTS:
            raise ValueError(f"decode_layout must be one of {LAYOUTS}, got {decode_layout!r}")
        self.code = code
        self.mode = mode
        self.decode_layout = decode_layout
        self.limits = self.LIMITS_BY_MODE[mode]
        permute = "" if decode_layout == "LBHNC" else f", decode {decode_layout} permuted on receive"
        self.name = f"vllm {code.version} (NIXL {mode}{permute})"
        self._env = _Environment.of(code)

    # -- head_mapping -------------------------------------------------------------------
    def _topology(self, total_kv_heads: int, tp_size: int, tp_rank: int) -> Any:
        return self.code.TransferTopology(
            tp_rank=tp_rank, tp_size=tp_size, block_size=1, engine_id=DECODE_ENGINE, is_mla=False, is_mamba=False,
            total_num_kv_heads=total_kv_heads, attn_backends=[self._env.backend])

    def _plan(self, total_kv_heads: int, prefill_tp: int, decode_tp: int, decode_rank: int) -> tuple[Any, Any]:
        topology = self._topology(total_kv_heads, decode_tp, decode_rank)
        plan = self.code.compute_tp_mapping(transfer_topology=topology, remote_tp_size=prefill_tp,
                                            group_spec_types=(self.code.FullAttentionSpec,))
        return topology, plan

    def _descriptor_shell(self, topology: Any, local_heads: int) -> Any:
        """A pull worker with one registered region of one 1-token block, one byte per local head.

        Only the attributes vLLM's descriptor builders read are set; the
        methods called on it are the real class's.
        """
        shell = object.__new__(self.code.NixlPullConnectorWorker)
        shell.transfer_topo = topology
        shell._group_spec_types = (self.code.FullAttentionSpec,)
        shell.block_len_per_layer = [local_heads]
        shell.block_stride_per_layer = [local_heads]
        shell.region_num_blocks = [1]
        shell.num_regions = 1
        shell._region_is_mla = [False]
        shell._transfer_layer_region_indices = ()
        shell._head_sharded_draft_regions = set()
        shell.draft_tp_mappings = {}
        shell._logical_num_blocks = 1
        shell._ple_region_index = None
        shell.device_id = 0
        shell.use_mla = False
        return shell

    def _remote_meta(self, remote_heads: int) -> Any:
        return self.code.NixlAgentMetadata(
            engine_id=PREFILL_ENGINE, agent_metadata=b"", kv_caches_base_addr=[0], device_id=0, num_blocks=1,
            block_lens=[remote_heads], block_strides=[remote_heads], kv_cache_layout="LBHNC", block_size=1,
            ssm_sizes=(0, 0), attn_backend_name=self._env.backend.get_name(), physical_blocks_per_logical_kv_block=1)

    def _read_geometry(self, total_kv_heads: int, prefill_tp: int, decode_tp: int, decode_rank: int
                       ) -> tuple[Any, dict[int, tuple[int, int, int]]]:
        """``prefill rank -> (source head, count, destination head)`` as vLLM's descriptors place the reads."""
        topology, plan = self._plan(total_kv_heads, prefill_tp, decode_tp, decode_rank)
        local_heads = max(1, total_kv_heads // decode_tp)
        remote_heads = max(1, total_kv_heads // prefill_tp)
        shell = self._descriptor_shell(topology, local_heads)
        remote = shell._build_fa_remote(plan, self._remote_meta(remote_heads), 1)
        source_start, count = int(remote[0, 0]), int(remote[0, 1])
        local_rows = shell._build_fa_local([0], 1)
        tp_ratio = topology.tp_ratio(prefill_tp)
        if shell._needs_split_local_xfer_handles(tp_ratio, plan):
            splits = list(shell._build_local_splits_from_plan(plan, local_rows, int(local_rows[:, 4].sum()), 1))
            destinations = [int(s[0, 0]) for s in splits]
            counts = [int(s[0, 1]) for s in splits]
        else:
            destinations = [int(local_rows[0, 0])] * len(plan.all_source_ranks)
            counts = [int(local_rows[0, 1])] * len(plan.all_source_ranks)
        geometry = {}
        for rank, destination, local_count in zip(plan.all_source_ranks, destinations, counts):
            if local_count != count:
                raise RuntimeError(f"vllm {self.code.version}: local read of {local_count} heads from prefill rank {rank} "
                                   f"paired with a remote read of {count} heads")
            geometry[int(rank)] = (source_start, count, destination)
        return plan, geometry

    def heads_of_rank(self, total_kv_heads: int, tp_size: int, rank: int) -> list[int]:
        """Derived (vLLM has no such function): the heads rank ``rank`` of TP ``tp_size`` reads from a TP-1 engine holding all heads."""
        _, geometry = self._read_geometry(total_kv_heads, 1, tp_size, rank)
        start, count, _ = geometry[0]
        return list(range(start, start + count))

    def writers_of_decode_rank(self, total_kv_heads: int, prefill_tp: int, decode_tp: int, decode_rank: int) -> list[int]:
        """``compute_tp_mapping(...).source_ranks_per_group`` of the attention group: the ranks vLLM reads from."""
        _, plan = self._plan(total_kv_heads, prefill_tp, decode_tp, decode_rank)
        return [int(r) for r in plan.source_ranks_per_group[0]]

    def head_slice(self, total_kv_heads: int, prefill_tp: int, decode_tp: int, prefill_rank: int,
                   decode_rank: int) -> tuple[int, int, int]:
        _, geometry = self._read_geometry(total_kv_heads, prefill_tp, decode_tp, decode_rank)
        if prefill_rank not in geometry:
            raise ValueError(f"prefill rank {prefill_rank} is not one vLLM reads from for decode rank {decode_rank} "
                             f"(H={total_kv_heads}, prefill TP={prefill_tp}, decode TP={decode_tp}; it reads {sorted(geometry)})")
        return geometry[prefill_rank]

    # -- end_to_end -----------------------------------------------------------------------
    def move_request(self, *, total_kv_heads: int, prefill_tp: int, decode_tp: int, prefill_pp: int, decode_pp: int,
                     prefill_page_size: int, decode_page_size: int, prefill_pools: Sequence,
                     prefill_page_tables: Sequence[torch.Tensor], decode_pools: Sequence,
                     decode_page_tables: Sequence[torch.Tensor], prefix_len: int, num_tokens: int, chunk_pages: int,
                     staged: bool) -> None:
        """One request through vLLM's pull or push path (``staged`` and ``chunk_pages`` have no vLLM counterpart:
        NIXL moves the request's blocks directly, all at once).  Each engine's block size is its page size;
        the decode's prefix hit is ``prefix_len // decode_page_size`` whole blocks."""
        with self._env.move_lock:
            fabric = Fabric()
            with self._env.fabric(fabric), LogCapture().attached("vllm.distributed.kv_transfer") as log:
                move = _Move(self, fabric, log, total_kv_heads=total_kv_heads, prefill_tp=prefill_tp,
                             decode_tp=decode_tp, prefill_pp=prefill_pp, decode_pp=decode_pp,
                             block_sizes={PREFILL_ENGINE: prefill_page_size, DECODE_ENGINE: decode_page_size},
                             prefix_len=prefix_len, num_tokens=num_tokens)
                try:
                    move.run(prefill_pools, prefill_page_tables, decode_pools, decode_page_tables)
                finally:
                    move.close()


class _Move:
    """One ``move_request``: build both engines' workers, run the mode's protocol, copy the pools back."""

    def __init__(self, impl: VllmImplementation, fabric: Fabric, log: LogCapture, *, total_kv_heads: int,
                 prefill_tp: int, decode_tp: int, prefill_pp: int, decode_pp: int, block_sizes: dict[str, int],
                 prefix_len: int,
                 num_tokens: int) -> None:
        self.impl, self.code, self.fabric, self.log = impl, impl.code, fabric, log
        self.H, self.P, self.D, self.prefill_pp, self.decode_pp = total_kv_heads, prefill_tp, decode_tp, prefill_pp, decode_pp
        self.block_sizes, self.prefix_len, self.num_tokens = block_sizes, prefix_len, num_tokens
        self.worker_class = self.code.NixlPullConnectorWorker if impl.mode == "pull" else self.code.NixlPushConnectorWorker
        self.prefill: list[_Rank] = []
        self.decode: list[_Rank] = []
        self.addresses: dict[str, Any] = {}

    @property
    def ranks(self) -> list[_Rank]:
        return self.prefill + self.decode

    def run(self, prefill_pools, prefill_tables, decode_pools, decode_tables) -> None:
        # Each engine's sizes go through vLLM's own ParallelConfig first, as at engine start-up.
        env.parallel_config(self.code, self.P, self.prefill_pp)
        env.parallel_config(self.code, self.D, self.decode_pp)
        prefill_table = _shared_table(prefill_tables, "prefill")
        decode_table = _shared_table(decode_tables, "decode")
        num_layers = len(prefill_pools[0][0]) * self.prefill_pp
        self.prefill = [self._rank("kv_producer", PREFILL_ENGINE, index, self.P, self.prefill_pp, pools, num_layers)
                        for index, pools in enumerate(prefill_pools)]
        self.addresses[PREFILL_ENGINE] = self._listen(self.prefill)
        self.decode = [self._rank("kv_consumer", DECODE_ENGINE, index, self.D, self.decode_pp, pools, num_layers)
                       for index, pools in enumerate(decode_pools)]
        self.addresses[DECODE_ENGINE] = self._listen(self.decode)
        prefill_block, decode_block = self.block_sizes[PREFILL_ENGINE], self.block_sizes[DECODE_ENGINE]
        cached = self.prefix_len // decode_block  # vLLM's prefix cache hits are whole decode blocks
        # Prefill hands over every block of the request; decode allocates only its uncached blocks.
        remote_blocks = [int(b) for b in prefill_table[:-(-self.num_tokens // prefill_block)].tolist()]
        local_blocks = [int(b) for b in decode_table[cached:-(-self.num_tokens // decode_block)].tolist()]
        for rank in self.prefill:
            sending = self.code.NixlConnectorMetadata()
            sending.reqs_to_send[REQUEST_ID] = time.perf_counter() + 3600.0
            sending.reqs_in_batch.add(REQUEST_ID)
            if self.impl.mode == "push":  # what the push scheduler hands P's workers when the request finished
                sending.push_finished_blocks[REQUEST_ID] = [remote_blocks]
            rank.worker.start_load_kv(sending)
        for rank in self.decode:
            rank.worker.start_load_kv(self._receiving(local_blocks, remote_blocks, cached))
        self._step_until_received()

    def _listen(self, ranks: list[_Rank]) -> Any:
        payloads = {(r.pp_stage, r.tp_rank): self.code.msgspec.msgpack.Encoder().encode(r.worker.xfer_handshake_metadata)
                    for r in ranks}
        return self.impl._env.listeners.listen(payloads)

    def _receiving(self, local_blocks: list[int], remote_blocks: list[int], cached: int) -> Any:
        """What the decode scheduler hands each decode worker for the request (``build_connector_meta``)."""
        host, port = self.addresses[PREFILL_ENGINE]
        metadata = self.code.NixlConnectorMetadata()
        push = self.impl.mode == "push"
        metadata.add_new_req_to_recv(
            REQUEST_ID, local_block_ids=[local_blocks],
            kv_transfer_params={"remote_block_ids": () if push else [remote_blocks], "remote_engine_id": PREFILL_ENGINE,
                                "remote_request_id": REQUEST_ID, "remote_host": host, "remote_port": port,
                                "tp_size": self.P, "pp_size": self.prefill_pp, "remote_block_size": self.block_sizes[PREFILL_ENGINE],
                                "remote_num_tokens": self.num_tokens},
            local_num_computed_blocks=(cached,), awaiting_kvs=True)
        if push:  # the push scheduler's registration (push_scheduler.py update_state_after_alloc)
            decode_host, decode_port = self.addresses[DECODE_ENGINE]
            metadata.push_registrations[REQUEST_ID] = {
                "request_id": REQUEST_ID, "decode_engine_id": DECODE_ENGINE, "decode_host": decode_host,
                "decode_port": decode_port, "decode_tp_size": self.D, "local_block_ids": [local_blocks],
                "remote_engine_id": PREFILL_ENGINE, "remote_host": host, "remote_port": port,
                "remote_tp_size": self.P, "remote_pp_size": self.prefill_pp}
        return metadata

    def _rank(self, role: str, engine: str, index: int, tp_size: int, pp_size: int, pools, num_layers: int) -> _Rank:
        stage, tp_rank = divmod(index, tp_size)
        k_layers, v_layers = pools
        per_stage = num_layers // pp_size
        layers = range(stage * per_stage, stage * per_stage + len(k_layers))
        names = [env.LAYER_NAME.format(i) for i in layers]
        layout = self.impl.decode_layout if engine == DECODE_ENGINE else "LBHNC"
        block_size = self.block_sizes[engine]
        caches = {name: to_vllm_cache(k, v, block_size, layout) for name, k, v in zip(names, k_layers, v_layers)}
        for cache in caches.values():
            self.fabric.memory.add(cache)
        first = k_layers[0]
        model = env.ModelStandIn(total_kv_heads=self.H, head_size=first.shape[2], num_layers=num_layers, dtype=first.dtype,
                                 pipeline_size=pp_size, pipeline_rank=stage)
        config = env.vllm_config(self.code, model=model, tp_size=tp_size, block_size=block_size, kv_role=role,
                                 layout=layout, enable_permute_local_kv=layout != "LBHNC")
        cache_config = env.kv_cache_config(self.code, layers=layers, num_blocks=first.shape[0] // block_size,
                                           block_size=block_size, local_heads=first.shape[1], head_size=first.shape[2],
                                           dtype=first.dtype)
        with self.impl._env.ranks.rank(tp_rank, tp_size):
            worker = self.worker_class(config, engine, cache_config)
        rank = _Rank(stage, tp_rank, worker, caches, pools, names)
        (self.prefill if engine == PREFILL_ENGINE else self.decode).append(rank)
        worker.register_kv_caches(caches)
        return rank

    def _step_until_received(self) -> None:
        """The engines' step loop (``start_load_kv`` then ``get_finished`` on every worker) until each decode rank has the request."""
        waiting = {id(r): r for r in self.decode}
        deadline = time.monotonic() + HANDSHAKE_TIMEOUT_S
        while waiting:
            for rank in self.prefill:
                rank.worker.get_transfer_results()  # counts readers' notifications / WRITE completions
            for key, rank in list(waiting.items()):
                results = rank.worker.get_transfer_results()
                if REQUEST_ID in results.failed_recving:
                    raise VllmTransferFailed(f"vllm {self.code.version} reported the request failed on decode rank "
                                             f"(PP {rank.pp_stage}, TP {rank.tp_rank}): {self._reasons()}")
                if REQUEST_ID in results.finished_recving:
                    del waiting[key]
            if not waiting:
                return
            if time.monotonic() > deadline:
                stuck = [(r.pp_stage, r.tp_rank) for r in waiting.values()]
                raise VllmTransferFailed(f"vllm {self.code.version}: decode ranks (PP, TP) {stuck} did not receive the "
                                         f"request in {HANDSHAKE_TIMEOUT_S}s: {self._reasons()}")
            time.sleep(0.0005)
            for rank in self.ranks:
                rank.worker.start_load_kv(self.code.NixlConnectorMetadata())

    def _reasons(self) -> str:
        return "; ".join(self.log.lines + self.fabric.errors) or "no reason logged"

    def close(self) -> None:
        """Stop every worker (push writer threads included), then copy every vLLM cache back into its pools."""
        for address in self.addresses.values():
            self.impl._env.listeners.close(address)
        for rank in self.ranks:
            with contextlib.suppress(Exception):
                rank.worker.shutdown()
        for rank in self.ranks:
            rank.copy_back()


def _shared_table(tables: Sequence[torch.Tensor], side: str) -> torch.Tensor:
    """The block ids every rank of one side uses: vLLM's scheduler gives all TP/PP ranks the same ones."""
    first = tables[0]
    for index, table in enumerate(tables[1:], start=1):
        if not torch.equal(table.cpu(), first.cpu()):
            raise NotImplementedError(
                f"vllm {VLLM_VERSION} cannot give {side} rank {index} its own page table: one scheduler allocates the "
                "same block ids on every rank of an engine")
    return first.cpu()
