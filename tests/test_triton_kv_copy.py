"""Triton gather / scatter (reference/triton_kv_copy.py): bit-exact and isolated.

Expectations are computed here with plain torch indexing over integer views,
independently of the kernels (and, when present, also compared with the torch
path in reference/kv_copy.py).  On a CPU-only machine the kernels run through
the Triton interpreter; with CUDA the same properties also run on the GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # Before Triton is imported: the interpreter is the only way to run it here.
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton", reason="triton is not installed: the Triton KV copy path is optional")

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from harness.engine.buffers import CanaryFence  # noqa: E402
from reference import triton_kv_copy  # noqa: E402
from strategies.pool_layout import PoolLayout, pool_layouts  # noqa: E402

try:
    from reference import kv_copy as torch_kv_copy
except ImportError:  # the torch path is another module's job; compare when present
    torch_kv_copy = None

REPO = Path(__file__).resolve().parents[1]
INT_OF_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
DTYPES = [torch.float8_e4m3fn, torch.float8_e5m2, torch.bfloat16, torch.float16, torch.float32]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# Small tiles force several token blocks per layer, so block edges are exercised.
TILES = [triton_kv_copy.TileConfig(tile_bytes=16), triton_kv_copy.TileConfig(tile_bytes=64), triton_kv_copy.DEFAULT_TILE]
FEW = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def random_bits(shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator, device: str) -> torch.Tensor:
    """Random bit patterns (NaN payloads included) with some all-ones elements,
    a NaN in every float dtype here, written through the integer view."""
    int_dtype = INT_OF_SIZE[torch.empty(0, dtype=dtype).element_size()]
    info = torch.iinfo(int_dtype)
    bits = torch.randint(info.min, info.max, shape, generator=gen, dtype=int_dtype)
    flat = bits.view(-1)
    flat[:: max(1, flat.numel() // 5)] = -1
    return bits.to(device).view(dtype)


def ints(t: torch.Tensor) -> torch.Tensor:
    return t.view(INT_OF_SIZE[t.element_size()])


def expected_slots(page_table: list[int], page_size: int, num_tokens: int) -> list[int]:
    return [page_table[i // page_size] * page_size + i % page_size for i in range(num_tokens)]


@st.composite
def pools(draw, device: str):
    """A K/V pool with a fragmented page table and a (maybe partial) chunk, laid out in any pool layout."""
    dtype = draw(st.sampled_from(DTYPES))
    page_size = draw(st.sampled_from([1, 3, 4]))
    layers = draw(st.integers(1, 3))
    head_dim = draw(st.sampled_from([1, 3, 8]))
    num_tokens = draw(st.integers(0, 11))
    pages_needed = -(-num_tokens // page_size)
    pool_pages = pages_needed + draw(st.integers(0, 3))
    page_table = draw(st.permutations(range(pool_pages)))[:pages_needed] if pool_pages else []
    page_table += draw(st.lists(st.integers(0, max(0, pool_pages - 1)), max_size=2)) if pool_pages else []
    seed = draw(st.integers(0, 2**31 - 1))
    return dict(dtype=dtype, page_size=page_size, layers=layers, head_dim=head_dim, num_tokens=num_tokens,
                pool_tokens=max(1, pool_pages * page_size), page_table=page_table, seed=seed, device=device,
                tile=draw(st.sampled_from(TILES)), layout=draw(pool_layouts()))


def make_layers(case: dict, heads: int, gen: torch.Generator) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Random-bit layers carved as ``case["layout"]`` says; ``case["fence"]`` then guards their gaps."""
    shape = (case["pool_tokens"], heads, case["head_dim"])
    case["fence"] = fence = CanaryFence(torch.device(case["device"]))
    k, v = fence.pool(case["layout"], range(case["layers"]), *shape, case["dtype"], "pool")
    for layer in (*k, *v):
        ints(layer).copy_(ints(random_bits(shape, case["dtype"], gen, case["device"])))
    return k, v


@pytest.mark.parametrize("device", DEVICES)
@FEW
@given(data=st.data())
def test_gather_is_bit_exact_and_writes_only_its_bytes(device, data):
    case = data.draw(pools(device))
    heads = data.draw(st.integers(1, 4))
    head_start = data.draw(st.integers(0, heads - 1))
    head_count = data.draw(st.integers(1, heads - head_start))
    gen = torch.Generator().manual_seed(case["seed"])
    k_layers, v_layers = make_layers(case, heads, gen)
    before = [ints(t).clone() for t in (*k_layers, *v_layers)]
    page_table = torch.tensor(case["page_table"], dtype=torch.int64, device=device)
    esize = k_layers[0].element_size()
    nbytes = 2 * case["layers"] * case["num_tokens"] * head_count * case["head_dim"] * esize
    tail = 24  # canary bytes after the writer's part
    out = torch.randint(0, 256, (nbytes + tail,), generator=gen, dtype=torch.uint8).to(device)
    canary = out[nbytes:].clone()

    triton_kv_copy.gather_tiled(case["tile"], k_layers, v_layers, page_table, case["page_size"], case["num_tokens"],
                                head_start, head_count, out)

    slots = torch.tensor(expected_slots(case["page_table"], case["page_size"], case["num_tokens"]), dtype=torch.int64)
    rows = [ints(t).cpu()[slots][:, head_start:head_start + head_count] for t in (*k_layers, *v_layers)]
    expected = torch.cat([r.reshape(-1) for r in rows]).view(torch.uint8) if nbytes else out[:0].cpu()
    assert torch.equal(out[:nbytes].cpu(), expected)
    assert torch.equal(out[nbytes:], canary), "gather wrote past the writer's bytes"
    assert all(torch.equal(ints(t), b) for t, b in zip((*k_layers, *v_layers), before)), "gather modified the pool"
    case["fence"].check()
    if torch_kv_copy is not None:
        ref = out.clone()
        torch_kv_copy.gather(k_layers, v_layers, page_table, case["page_size"], case["num_tokens"], head_start, head_count, ref)
        assert torch.equal(out, ref)


@st.composite
def writer_plans(draw):
    """Writers on disjoint (head block, layer block) targets, maybe leaving
    heads and layers of the pool untargeted."""
    heads_per_writer = draw(st.integers(1, 2))
    head_blocks = draw(st.integers(1, 3))
    layers_per_writer = draw(st.integers(1, 2))
    layer_blocks = draw(st.integers(1, 2))
    targets = [(h, layer) for h in range(head_blocks) for layer in range(layer_blocks)]
    chosen = draw(st.permutations(targets))[: draw(st.integers(1, len(targets)))]
    extra_heads = draw(st.integers(0, 1))
    return dict(
        heads_per_writer=heads_per_writer,
        layers_per_writer=layers_per_writer,
        pool_heads=heads_per_writer * head_blocks + extra_heads,
        pool_layers=layers_per_writer * layer_blocks + draw(st.integers(0, 1)),
        destinations=[(h * heads_per_writer + extra_heads * (h == head_blocks - 1 and draw(st.booleans())), layer * layers_per_writer)
                      for h, layer in chosen],
    )


@pytest.mark.parametrize("device", DEVICES)
@FEW
@given(data=st.data())
def test_scatter_is_bit_exact_and_touches_only_target_heads(device, data):
    case = data.draw(pools(device))
    plan = data.draw(writer_plans())
    case["layers"] = plan["pool_layers"]
    gen = torch.Generator().manual_seed(case["seed"])
    k_layers, v_layers = make_layers(case, plan["pool_heads"], gen)  # random bits double as canaries
    expected = [ints(t).cpu().clone() for t in (*k_layers, *v_layers)]
    page_table = torch.tensor(case["page_table"], dtype=torch.int64, device=device)
    hpw, lpw, dests = plan["heads_per_writer"], plan["layers_per_writer"], plan["destinations"]
    num_tokens, head_dim = case["num_tokens"], case["head_dim"]
    part_shape = (2, lpw, num_tokens, hpw, head_dim)
    parts = [random_bits(part_shape, case["dtype"], gen, "cpu") for _ in dests]
    staging = torch.cat([ints(p).reshape(-1).view(torch.uint8) for p in parts]) if num_tokens else torch.zeros(0, dtype=torch.uint8)
    staging = torch.cat([staging, torch.randint(0, 256, (8,), generator=gen, dtype=torch.uint8)]).to(device)
    torch_pool = [t.clone() for t in (*k_layers, *v_layers)]

    triton_kv_copy.scatter_tiled(case["tile"], staging, dests, hpw, lpw, k_layers, v_layers, page_table,
                                 case["page_size"], num_tokens)

    slots = torch.tensor(expected_slots(case["page_table"], case["page_size"], num_tokens), dtype=torch.int64)
    for part, (dst_head, dst_layer) in zip(parts, dests):
        for kv in range(2):
            for layer in range(lpw):
                target = expected[kv * plan["pool_layers"] + dst_layer + layer]
                target[slots, dst_head:dst_head + hpw] = ints(part)[kv, layer]
    got = [ints(t).cpu() for t in (*k_layers, *v_layers)]
    assert all(torch.equal(g, e) for g, e in zip(got, expected)), "scatter result differs from the expectation"
    case["fence"].check()  # nothing landed between or around the layer views
    if torch_kv_copy is not None:
        ref_k, ref_v = torch_pool[: plan["pool_layers"]], torch_pool[plan["pool_layers"]:]
        torch_kv_copy.scatter(staging, dests, hpw, lpw, ref_k, ref_v, page_table, case["page_size"], num_tokens)
        assert all(torch.equal(ints(g), ints(r)) for g, r in zip((*k_layers, *v_layers), torch_pool))


def small_pool(layers: int = 2, dtype: torch.dtype = torch.bfloat16, device: str = "cpu"):
    return ([torch.zeros(8, 2, 4, dtype=dtype, device=device) for _ in range(layers)],
            [torch.zeros(8, 2, 4, dtype=dtype, device=device) for _ in range(layers)])


GATHER_BYTES = 2 * 2 * 4 * 1 * 4 * 2  # layers, 4 tokens, 1 head, head_dim 4, bf16


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda a: a.update(k=[a["k"][0], a["k"][1].to(torch.float16)]), "dtype"),
        (lambda a: a.update(out=torch.zeros(GATHER_BYTES - 1, dtype=torch.uint8)), "bytes but"),
        (lambda a: a.update(out=torch.zeros(GATHER_BYTES, dtype=torch.int8)), "uint8"),
        (lambda a: a.update(page_table=torch.zeros(2, dtype=torch.int64, device="meta")), "device"),
        (lambda a: a.update(page_table=torch.zeros(2, dtype=torch.int32)), "int64"),
        (lambda a: a.update(page_table=torch.zeros(1, dtype=torch.int64)), "pages"),
        (lambda a: a.update(v=a["v"][:1]), "number of K and V layers"),
        (lambda a: a.update(head_start=2), "head range"),
        (lambda a: a.update(out=torch.zeros(GATHER_BYTES + 1, dtype=torch.uint8)[1:]), "aligned"),
    ],
)
def test_gather_rejects_bad_inputs_before_copying(mutate, message):
    k, v = small_pool()
    args = dict(k=k, v=v, page_table=torch.tensor([1, 0], dtype=torch.int64), out=torch.zeros(GATHER_BYTES, dtype=torch.uint8), head_start=1)
    mutate(args)
    with pytest.raises(ValueError, match=message):
        triton_kv_copy.gather(args["k"], args["v"], args["page_table"], 2, 4, args["head_start"], 1, args["out"])


@pytest.mark.parametrize(
    "destinations, heads_per_writer, layers_per_writer, staging_bytes, message",
    [
        ([(1, 0), (0, 0)], 2, 1, 10_000, "heads"),
        ([(0, 1)], 1, 2, 10_000, "layers"),
        ([], 1, 1, 10_000, "empty"),
        ([(0, 0), (1, 0)], 1, 2, 2 * GATHER_BYTES - 1, "bytes but"),
    ],
)
def test_scatter_rejects_bad_topologies_before_copying(destinations, heads_per_writer, layers_per_writer, staging_bytes, message):
    k, v = small_pool()
    staging = torch.ones(staging_bytes, dtype=torch.uint8)
    with pytest.raises(ValueError, match=message):
        triton_kv_copy.scatter(staging, destinations, heads_per_writer, layers_per_writer, k, v,
                               torch.tensor([1, 0], dtype=torch.int64), 2, 4)
    assert all(not t.any() for t in (*k, *v)), "a rejected scatter moved bytes"


def test_kernels_take_strided_layers_and_leave_the_rest_to_the_torch_path(monkeypatch):
    """The control for the layout draws above: a head-major, padded, K/V-interleaved pool runs through the
    kernels (stride-aware), one whose head elements are not adjacent through the torch path, with the reason."""
    fence = CanaryFence(torch.device("cpu"))
    through_kernels = PoolLayout(("layer", "head", "token", "kv", "dim"), (1, 3, 1, 2, 0), lead=1)
    strided_dim = PoolLayout(("token", "head", "dim", "kv"), (0, 0, 0, 0))
    torch_calls: list[str] = []
    monkeypatch.setattr(triton_kv_copy.kv_copy, "gather", lambda *a: torch_calls.append("gather"))
    for layout, expect_torch in ((through_kernels, False), (strided_dim, True)):
        k, v = fence.pool(layout, range(2), 8, 2, 4, torch.bfloat16, "pool")
        pool = triton_kv_copy._check_pool(k, v, "gather")
        assert bool(pool.torch_path_because) == expect_torch, (layout, pool)
        torch_calls.clear()
        triton_kv_copy.gather(k, v, torch.tensor([1, 0], dtype=torch.int64), 2, 4, 1, 1,
                              torch.zeros(GATHER_BYTES, dtype=torch.uint8))
        assert bool(torch_calls) == expect_torch
    assert "apart" in triton_kv_copy._check_pool(k, v, "gather").torch_path_because


def test_pool_cache_sees_a_new_pool_at_reused_ids():
    """A validated-pool cache hit must require the same live tensors: a fresh
    pool of another shape is validated (and copied) correctly."""
    for heads in (2, 3):
        k, v = ([torch.arange(8 * heads * 4, dtype=torch.int16).view(8, heads, 4).view(torch.bfloat16) for _ in range(2)] for _ in "kv")
        out = torch.zeros(2 * 2 * 2 * 1 * 4 * 2, dtype=torch.uint8)
        triton_kv_copy.gather(k, v, torch.tensor([3], dtype=torch.int64), 2, 2, heads - 1, 1, out)
        expected = torch.cat([ints(t)[6:8, heads - 1].reshape(-1) for t in (*k, *v)]).view(torch.uint8)
        assert torch.equal(out, expected)


def test_is_available_reports_the_fast_path():
    assert triton_kv_copy.is_available("cuda") == torch.cuda.is_available()
    assert triton_kv_copy.is_available("cpu") == (os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"))


def test_bandwidth_benchmark_small_mode_runs():
    """The benchmark's CPU smoke mode prints one JSON document with a result
    row per (shape, op), each checked bit-exact."""
    env = dict(os.environ, PYTHONPATH=str(REPO), TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "kv_copy_bandwidth.py"), "--small"],
                          capture_output=True, text=True, env=env, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    ops = {(row["shape"], row["op"]) for row in report["results"]}
    assert len(ops) == len(report["results"]) >= 4
    assert all(row["bit_exact"] for row in report["results"])
