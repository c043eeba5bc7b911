"""The vLLM 0.33.0 adapter: API pin, the strict in-process NIXL agent, head mapping, pull moves.

The agent and pool-conversion tests need only torch and numpy.  Everything
that runs vLLM is skipped, with the install command as the reason, when vLLM
cannot be imported (CI does not install it; ``tox -e vllm`` does).
"""

from __future__ import annotations

import pytest
import torch

from adapters.toolkit import parameters_of
from adapters.vllm import environment, loader, pin
from adapters.vllm.implementation import from_vllm_cache, to_vllm_cache
from adapters.vllm.nixl_standin import LOCAL_AGENT, Fabric, InProcessNixlAgent, NixlAccessError
from harness import oracles
from harness.oracles import InvariantViolation
from harness.engine.moves import move_end_to_end
from harness.world import World, check_untouched
from strategies.cases import KvSpec, RequestSpec, TpTopology, TransferCase


def _vllm_or_reason():
    try:
        return loader.load_vllm(), None
    except pin.VllmUnavailable as exc:
        return None, str(exc)


CODE, UNAVAILABLE = _vllm_or_reason()
needs_vllm = pytest.mark.skipif(CODE is None, reason=f"vllm not importable: {UNAVAILABLE}")


# ===================================================================== the in-process NIXL agent
def _two_agents():
    fabric = Fabric()
    local, remote = InProcessNixlAgent("decode", fabric), InProcessNixlAgent("prefill", fabric)
    dst, src = torch.zeros(64, dtype=torch.uint8), torch.arange(64, dtype=torch.uint8)
    for agent, tensor in ((local, dst), (remote, src)):
        fabric.memory.add(tensor)
        agent.register_memory(agent.get_reg_descs([(tensor.data_ptr(), tensor.nbytes, 0, "")], "DRAM"))
    local.add_remote_agent(remote.get_agent_metadata())
    return fabric, local, remote, dst, src


def test_agent_read_copies_strided_descriptors_and_notifies():
    _, local, remote, dst, src = _two_agents()
    # Two rows of strided descriptors: 4 blocks of 8 bytes, 16 bytes apart.
    lh = local.prep_xfer_dlist(LOCAL_AGENT, [[dst.data_ptr(), 8, 0, 16, 4]], mem_type="DRAM")
    rh = local.prep_xfer_dlist("prefill", [[src.data_ptr() + 8, 8, 0, 16, 4]], mem_type="DRAM")
    handle = local.make_prepped_xfer("READ", lh, [0, 2], rh, [3, 1], notif_msg=b"req:1")
    assert local.transfer(handle) == "DONE" and local.check_xfer_state(handle) == "DONE"
    assert torch.equal(dst[0:8], src[56:64]) and torch.equal(dst[32:40], src[24:32])
    assert int(dst[8:32].sum()) == 0 and int(dst[40:].sum()) == 0
    assert remote.get_new_notifs() == {"decode": [b"req:1"]}


def test_agent_refuses_descriptors_outside_registered_memory():
    _, local, _, dst, src = _two_agents()
    with pytest.raises(NixlAccessError, match="outside its registered"):
        local.prep_xfer_dlist(LOCAL_AGENT, [[dst.data_ptr() + 60, 8, 0, 8, 1]], mem_type="DRAM")
    with pytest.raises(NixlAccessError, match="outside its registered"):
        local.prep_xfer_dlist("prefill", [[src.data_ptr(), 8, 0, 16, 5]], mem_type="DRAM")  # 5th block past the end


def test_agent_refuses_unregistered_memory_and_unknown_peers():
    fabric, local, _, _, _ = _two_agents()
    stray = torch.zeros(16, dtype=torch.uint8)
    fabric.memory.add(stray)  # allocated but never registered with NIXL
    with pytest.raises(NixlAccessError):
        local.prep_xfer_dlist(LOCAL_AGENT, [[stray.data_ptr(), 4, 0, 4, 1]], mem_type="DRAM")
    with pytest.raises(NixlAccessError, match="never added"):
        local.prep_xfer_dlist("nobody", [[stray.data_ptr(), 4, 0, 4, 1]], mem_type="DRAM")
    with pytest.raises(NixlAccessError):
        local.register_memory(local.get_reg_descs([(12345, 8, 0, "")], "DRAM"))  # no allocation there


def test_agent_refuses_mismatched_pairs():
    _, local, _, dst, src = _two_agents()
    lh = local.prep_xfer_dlist(LOCAL_AGENT, [[dst.data_ptr(), 8, 0, 8, 2]], mem_type="DRAM")
    rh = local.prep_xfer_dlist("prefill", [[src.data_ptr(), 4, 0, 4, 2]], mem_type="DRAM")
    with pytest.raises(NixlAccessError, match="bytes"):
        local.make_prepped_xfer("READ", lh, [0], rh, [0])
    with pytest.raises(NixlAccessError, match="paired with"):
        local.make_prepped_xfer("READ", lh, [0, 1], rh, [0])
    with pytest.raises(NixlAccessError, match="outside a prepared list"):
        local.make_prepped_xfer("READ", lh, [2], rh, [0])
    assert int(dst.sum()) == 0


def test_agent_refuses_a_transfer_after_deregistration():
    _, local, _, dst, src = _two_agents()
    lh = local.prep_xfer_dlist(LOCAL_AGENT, [[dst.data_ptr(), 8, 0, 8, 1]], mem_type="DRAM")
    rh = local.prep_xfer_dlist("prefill", [[src.data_ptr(), 8, 0, 8, 1]], mem_type="DRAM")
    handle = local.make_prepped_xfer("READ", lh, [0], rh, [0])
    local.deregister_memory(local.get_reg_descs([(dst.data_ptr(), dst.nbytes, 0, "")], "DRAM"))
    with pytest.raises(NixlAccessError):
        local.transfer(handle)
    assert int(dst.sum()) == 0


# ===================================================================== rank getters
def test_rank_getters_answer_only_inside_a_worker_construction_and_pcp_is_never_reached():
    ranks = environment.RankContext()
    with pytest.raises(RuntimeError, match="TP rank was read outside a worker construction"):
        ranks.get_tensor_model_parallel_rank()
    with ranks.rank(2, 4):
        assert (ranks.get_tensor_model_parallel_rank(), ranks.get_tensor_model_parallel_world_size()) == (2, 4)
    with pytest.raises(RuntimeError, match=r"does not provide get_pcp_group\(\); it runs without prefill context parallelism"):
        environment.get_pcp_group()


# ===================================================================== pool conversion
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e5m2, torch.float32])
def test_pool_conversion_round_trips_every_bit(dtype):
    bits = torch.randint(-128, 128, (12, 3, 4 * torch.empty((), dtype=dtype).element_size()), dtype=torch.int8)
    k, v = bits.view(dtype), bits.flip(0).view(dtype)
    cache = to_vllm_cache(k, v, page_size=4)
    assert cache.shape == (3, 3, 4, 8)
    k2, v2 = torch.empty_like(k), torch.empty_like(v)
    from_vllm_cache(cache, k2, v2)
    assert torch.equal(k2.view(torch.int8), k.view(torch.int8)) and torch.equal(v2.view(torch.int8), v.view(torch.int8))


# ===================================================================== API pin
@needs_vllm
def test_installed_vllm_is_the_pinned_version():
    assert CODE.version == pin.VLLM_VERSION, f"expected vllm {pin.VLLM_VERSION}, found {CODE.version}"


@needs_vllm
@pytest.mark.parametrize("name", sorted(pin.EXPECTED_SIGNATURES))
def test_signature_matches_pin(name):
    found = parameters_of(CODE.resolve(name))
    assert found == pin.EXPECTED_SIGNATURES[name], f"{name} changed from vllm {pin.VLLM_VERSION}: {found}"


@needs_vllm
@pytest.mark.parametrize("name", pin.ENVIRONMENT_GLOBALS)
def test_environment_global_exists(name):
    assert hasattr(CODE.modules["base_worker"], name), f"base_worker.{name} is gone; the stand-in has nothing to replace"


@needs_vllm
def test_mismatch_error_names_each_difference():
    broken = loader.VllmCode("9.9.9", CODE.modules, ("a.b signature changed", "c.d is missing"))
    with pytest.raises(pin.VllmApiMismatch) as info:
        pin.require_matching_api(broken)
    message = str(info.value)
    assert "0.33.0" in message and "9.9.9" in message and "a.b signature changed" in message and "c.d is missing" in message
    assert not CODE.problems


# ===================================================================== head mapping and moves through vLLM
@pytest.fixture(scope="module")
def impl():
    if CODE is None:
        pytest.skip(f"vllm not importable: {UNAVAILABLE}")
    from adapters.vllm import make_pull_implementation

    return make_pull_implementation()


def test_vllm_declares_pull_push_permute_with_their_own_limits(impl):
    """``--impl vllm``: three configurations, one report column each; none has decode-side pipelining, pull's
    fan-in limit is pull's and permute's alone; all share the one environment installed into vLLM's worker
    module (a second install would redirect the first's)."""
    from harness.loading import load_configurations

    loaded = load_configurations("adapters.vllm:make_implementation")  # the entry point's target
    assert loaded.declared == ("pull", "push", "permute") and loaded.name == "vllm 0.33.0"
    by_name = {c.configuration: c.implementation for c in loaded.selected}
    assert {name: set(i.limits) for name, i in by_name.items()} == {
        "pull": {"no_decode_pipeline", "no_pipeline_fan_in"}, "push": {"no_decode_pipeline"},
        "permute": {"no_decode_pipeline", "no_pipeline_fan_in"}}
    assert (by_name["push"].mode, by_name["permute"].decode_layout) == ("push", "LBNHC")
    assert by_name["pull"]._env is by_name["push"]._env is impl._env


# Topologies vLLM's pull supports: nested TP, no prefill replication when P > D.
_SUPPORTED = [(4, 2, 1), (4, 1, 2), (4, 2, 4), (2, 1, 4), (8, 4, 2), (8, 2, 8), (1, 1, 2), (4, 4, 4)]


@pytest.mark.parametrize("heads,prefill_tp,decode_tp", _SUPPORTED)
def test_head_mapping_matches_domain(impl, heads, prefill_tp, decode_tp):
    for tp in (prefill_tp, decode_tp):
        for rank in range(tp):
            assert impl.heads_of_rank(heads, tp, rank) == oracles.owned_heads(heads, tp, rank)
    for d in range(decode_tp):
        writers = impl.writers_of_decode_rank(heads, prefill_tp, decode_tp, d)
        assert writers == oracles.source_ranks(heads, prefill_tp, decode_tp, d)
        for p in writers:
            e = oracles.expected_slice(heads, prefill_tp, decode_tp, p, d)
            assert impl.head_slice(heads, prefill_tp, decode_tp, p, d) == (e.source_start, e.count, e.destination_start)


def test_prefill_replication_reads_each_head_once(impl):
    """vLLM dedups replicated prefill ranks (P > D, P > H): one reader per head, not the domain's every rank."""
    assert impl.writers_of_decode_rank(2, 4, 1, 0) == [0, 2]


@pytest.mark.parametrize("topology,prefix", [(TpTopology(4, 2, 1), 0), (TpTopology(4, 1, 2), 3), (TpTopology(4, 2, 4), 2),
                                             (TpTopology(2, 1, 4), 4), (TpTopology(4, 4, 4), 7)])
def test_pull_moves_request_bit_exact(impl, topology, prefix):
    _check_move_bit_exact(impl, topology, prefix)


def _check_move_bit_exact(impl, topology, prefix):
    """One request (NaN payloads included) lands bit-exact on every decode rank; prefill is left untouched."""
    case = TransferCase(topology, KvSpec(2, 4, torch.bfloat16, 2), RequestSpec(7, prefix, 1, (2, 0, 5, 1), 6, (1, 3, 0, 4), 5),
                        seed=7, nan_payloads=True)
    world = World.build(case, "cpu")
    prefill_before, _ = world.snapshot()
    move_end_to_end(impl, world)
    world.check_decode(part="all")
    check_untouched("prefill", prefill_before, world.prefill)


def _two_block_sizes_world(topology, prefill_block, decode_block, tokens, prefix):
    """One request on prefill blocks of ``prefill_block`` and decode blocks of ``decode_block`` tokens (fragmented
    tables, a spare block each side), NaN payloads included."""
    prefill_pages, decode_pages = -(-tokens // prefill_block), -(-tokens // decode_block)
    case = TransferCase(topology, KvSpec(2, 4, torch.bfloat16, prefill_block, decode_block),
                        RequestSpec(tokens, prefix, 1, tuple(reversed(range(prefill_pages))), prefill_pages + 2,
                                    tuple(range(1, decode_pages + 1)), decode_pages + 2), seed=7, nan_payloads=True)
    return World.build(case, "cpu")


@pytest.mark.parametrize("topology", [TpTopology(4, 2, 2), TpTopology(4, 1, 2)])
@pytest.mark.parametrize("prefix", [0, 4, 5])
def test_pull_moves_into_larger_decode_blocks_bit_exact(impl, topology, prefix):
    """vLLM's block_size_ratio path (decode block = 2 prefill blocks: local descriptors at the remote
    granularity, sub-blocks permuted after the READ), with whole-block prefix hits (4) and a partial block
    re-read (5): prefix-hit blocks keep the decode's own KV, the rest lands bit-exact."""
    world = _two_block_sizes_world(topology, 2, 4, 11, prefix)
    prefill_before, _ = world.snapshot()
    move_end_to_end(impl, world)
    world.check_decode(part="all")
    check_untouched("prefill", prefill_before, world.prefill)


def test_pull_larger_decode_blocks_are_permuted_by_vllm(impl, monkeypatch):
    """Without vLLM's post-receive sub-block permutation the decode KV is wrong: the test above can fail."""
    monkeypatch.setattr(CODE.modules["base_worker"], "kv_postprocess_blksize_on_receive",
                        lambda cache, indices, ratio: None)
    world = _two_block_sizes_world(TpTopology(4, 2, 2), 2, 4, 11, 0)
    move_end_to_end(impl, world)
    with pytest.raises(InvariantViolation, match="differs at pool slot"):
        world.check_decode(part="all")


def test_pull_prefix_hit_into_a_partial_last_decode_block_misplaces_tokens(impl):
    """Finding (READING.md): decode blocks of 4 prefill blocks, one cached, the last decode block partly filled:
    the local sub-blocks are clipped to the whole prefill list, then _apply_prefix_caching keeps the prefill
    list's tail of that length, so decode token 4 receives prefill token 1."""
    world = _two_block_sizes_world(TpTopology(4, 1, 2), 1, 4, 9, 4)
    move_end_to_end(impl, world)
    with pytest.raises(InvariantViolation, match=r"token 4 \(suffix\).*= ground truth token 1,"):
        world.check_decode(part="all")


def test_pull_refuses_larger_prefill_blocks(impl):
    """By design: pull reads into decode blocks a whole multiple of the prefill's; the reverse fails the handshake."""
    from adapters.vllm.implementation import VllmTransferFailed

    with pytest.raises(VllmTransferFailed, match="handshake_setup_failed"):
        move_end_to_end(impl, _two_block_sizes_world(TpTopology(4, 2, 2), 4, 2, 11, 0))


def test_limits_declare_no_decode_pipeline_and_for_pull_no_fan_in(impl):
    assert impl.limits == frozenset({"no_decode_pipeline", "no_pipeline_fan_in"})


def test_pull_refuses_decode_pipeline_parallelism(impl):
    case = TransferCase(TpTopology(2, 1, 1, 2, 2), KvSpec(2, 2, torch.float32, 2), RequestSpec(4, 0, 1, (0, 1), 3, (1, 0), 3),
                        seed=1, nan_payloads=False)
    world = World.build(case, "cpu")
    with pytest.raises(NotImplementedError, match="pipeline_parallel_size"):
        move_end_to_end(impl, world)



@pytest.mark.parametrize("field", ["prefill_tp", "decode_pp"])
def test_engine_sizes_below_one_refused_by_vllm_parallel_config(impl, field):
    k = [torch.zeros(4, 1, 1)]
    sizes = {"prefill_tp": 1, "decode_tp": 1, "prefill_pp": 1, "decode_pp": 1, field: 0}
    with pytest.raises(ValueError, match="parallel_size"):
        impl.move_request(total_kv_heads=1, **sizes, prefill_page_size=1, decode_page_size=1, prefill_pools=[(k, k)], prefill_page_tables=[torch.arange(4)],
                          decode_pools=[(k, k)], decode_page_tables=[torch.arange(4)], prefix_len=0, num_tokens=4,
                          chunk_pages=1, staged=True)
    assert int(k[0].abs().sum()) == 0


@pytest.fixture(scope="module")
def push_impl():
    if CODE is None:
        pytest.skip(f"vllm not importable: {UNAVAILABLE}")
    from adapters.vllm import make_push_implementation

    return make_push_implementation()


@pytest.mark.parametrize("topology,prefix", [(TpTopology(4, 2, 1), 0), (TpTopology(4, 1, 2), 3), (TpTopology(4, 2, 4), 2),
                                             (TpTopology(4, 2, 2, 2, 1), 2), (TpTopology(4, 4, 4), 7)])
def test_push_moves_request_bit_exact(push_impl, topology, prefix):
    """Push WRITEs, including PP fan-in (prefill PP 2 into decode PP 1), which pull cannot do."""
    _check_move_bit_exact(push_impl, topology, prefix)
    assert push_impl.limits == frozenset({"no_decode_pipeline"})


def test_push_refuses_decode_replication(push_impl):
    """Finding: push's prefill-side handshake asserts the pull-side rule and fails for D > H replication (READING.md)."""
    case = TransferCase(TpTopology(2, 1, 4), KvSpec(1, 2, torch.float32, 2), RequestSpec(4, 0, 1, (0, 1), 3, (1, 0), 3),
                        seed=1, nan_payloads=False)
    world = World.build(case, "cpu")
    from adapters.vllm.implementation import VllmTransferFailed

    with pytest.raises(VllmTransferFailed, match=r"\[AssertionError: \]") as info:
        move_end_to_end(push_impl, world)
    assert "push_handshake_failed" in str(info.value) and "did not receive" in str(info.value)


@pytest.fixture(scope="module")
def permute_impl():
    if CODE is None:
        pytest.skip(f"vllm not importable: {UNAVAILABLE}")
    from adapters.vllm import make_permute_implementation

    return make_permute_implementation()


_PERMUTE_CASES = [(TpTopology(4, 2, 1), 0), (TpTopology(4, 1, 2), 3), (TpTopology(2, 1, 4), 4)]


def _permute_world(topology, prefix):
    case = TransferCase(topology, KvSpec(2, 4, torch.float16, 2), RequestSpec(7, prefix, 1, (2, 0, 5, 1), 6, (1, 3, 0, 4), 5),
                        seed=5, nan_payloads=True)
    return World.build(case, "cpu")


@pytest.mark.parametrize("topology,prefix", _PERMUTE_CASES)
def test_permute_on_receive_moves_request_bit_exact(permute_impl, topology, prefix):
    """Head-major prefill blocks into a token-major decode cache, rearranged by vLLM after the READ."""
    world = _permute_world(topology, prefix)
    move_end_to_end(permute_impl, world)
    world.check_decode(part="all")


def test_permute_on_receive_is_what_makes_it_right(permute_impl, monkeypatch):
    """Without vLLM's post-receive rearrangement the decode KV is wrong: the test above can fail."""
    monkeypatch.setattr(CODE.modules["base_worker"], "kv_postprocess_blksize_and_layout_on_receive",
                        lambda cache, indices, ratio: None)
    world = _permute_world(TpTopology(4, 2, 1), 0)
    move_end_to_end(permute_impl, world)
    with pytest.raises(InvariantViolation, match="differs at pool slot"):
        world.check_decode(part="all")


def test_token_major_conversion_round_trips():
    bits = torch.randint(-128, 128, (8, 3, 4), dtype=torch.int8)
    cache = to_vllm_cache(bits, bits.flip(0), page_size=4, layout="LBNHC")
    assert cache.shape == (2, 3, 4, 8) and not cache.is_contiguous()
    assert cache.transpose(1, 2).is_contiguous()
    k, v = torch.empty_like(bits), torch.empty_like(bits)
    from_vllm_cache(cache, k, v)
    assert torch.equal(k, bits) and torch.equal(v, bits.flip(0))


def test_permute_on_receive_fails_for_fp8_on_cpu(permute_impl):
    """Finding (READING.md 8): the rearrangement copies in the KV dtype; CPU torch has no fp8 ``index_copy_``."""
    case = TransferCase(TpTopology(2, 1, 1), KvSpec(1, 2, torch.float8_e4m3fn, 2), RequestSpec(4, 0, 1, (0, 1), 3, (1, 0), 3),
                        seed=1, nan_payloads=False)
    world = World.build(case, "cpu")
    with pytest.raises(NotImplementedError, match="index_copy"):
        move_end_to_end(permute_impl, world)
