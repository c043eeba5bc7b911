"""Bandwidth of the Triton KV gather / scatter against a plain device copy.

For each shape (prefill TP -> decode TP, page size) and op (gather on a
prefill rank, scatter on a decode rank) it reports the payload bytes, the
median time, GB/s counting bytes read plus bytes written, the GB/s of a plain
``dst.copy_(src)`` of the same number of bytes measured in the same run, and
their ratio.  Optionally it also times SGLang's own staging kernels and the
portable torch path (``reference.kv_copy``), and checks every result
bit-exactly against the Triton one (SGLang's kernels are launched directly,
with their wrappers' launch shapes and prebuilt pointer tables, so its
wrappers' per-call table upload and stream synchronisation are not timed).

    PYTHONPATH=. python bench/kv_copy_bandwidth.py [--out bench/results] [--sweep]
    PYTHONPATH=. python bench/kv_copy_bandwidth.py --small      # CPU smoke test (interpreter)
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import json
import os
import re
import statistics
import sys
import time
import types
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

if "--small" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton is imported

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reference import triton_kv_copy  # noqa: E402

try:
    from reference import kv_copy as torch_kv_copy
except ImportError:
    torch_kv_copy = None

INT_OF_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
SWEEP_TILES = [
    triton_kv_copy.TileConfig(tile_bytes, warps)
    for tile_bytes, warps in ((8192, 4), (16384, 4), (32768, 4), (16384, 8), (32768, 8), (65536, 8))
]


@dataclass(frozen=True)
class Shape:
    """One deployment: model dims, TP pair, page size and chunk length."""

    prefill_tp: int
    decode_tp: int
    page_size: int
    total_heads: int = 8
    head_dim: int = 128
    layers: int = 80
    tokens: int = 8192
    dtype: str = "bfloat16"

    @property
    def name(self) -> str:
        return f"tp{self.prefill_tp}to{self.decode_tp}_page{self.page_size}"


def heads_per_rank(total: int, tp: int) -> int:
    return max(1, total // tp)


def gather_slice(shape: Shape) -> tuple[int, int, int]:
    """(heads on the prefill rank, head_start, head_count) of the writer that
    feeds decode rank 1 (rank 1 so that P <= D gives a non-zero start)."""
    H, P, D = shape.total_heads, shape.prefill_tp, shape.decode_tp
    held = heads_per_rank(H, P)
    if P > D:
        return held, 0, held
    count = heads_per_rank(H, D)
    decode_rank = min(1, D - 1)
    return held, ((decode_rank // max(1, D // H)) * count) % held, count


def scatter_plan(shape: Shape) -> tuple[int, int, list[tuple[int, int]]]:
    """(heads on decode rank 0, heads per writer, writer destinations)."""
    H, P, D = shape.total_heads, shape.prefill_tp, shape.decode_tp
    held = heads_per_rank(H, D)
    if P <= D:
        return held, held, [(0, 0)]
    per_writer = heads_per_rank(H, P)
    writers = range(0, P // D)  # prefill ranks writing to decode rank 0
    return held, per_writer, [(((p // max(1, P // H)) * per_writer) % held, 0) for p in writers]


def random_pool(shape: Shape, heads: int, pool_tokens: int, device: str, gen: torch.Generator):
    dtype = getattr(torch, shape.dtype)
    int_dtype = INT_OF_SIZE[torch.empty(0, dtype=dtype).element_size()]
    info = torch.iinfo(int_dtype)

    def layer():
        return torch.randint(info.min, info.max, (pool_tokens, heads, shape.head_dim), dtype=int_dtype,
                             device=device, generator=gen).view(dtype)

    return [layer() for _ in range(shape.layers)], [layer() for _ in range(shape.layers)]


def random_page_table(shape: Shape, device: str, gen: torch.Generator) -> tuple[torch.Tensor, int]:
    """A fragmented page table over a pool 25% larger than the chunk."""
    pages = -(-shape.tokens // shape.page_size)
    pool_pages = pages + max(1, pages // 4)
    table = torch.randperm(pool_pages, generator=gen, device=device)[:pages].to(torch.int64)
    return table, pool_pages * shape.page_size


# --------------------------------------------------------------------------- timing


def time_ms(fn: Callable[[], None], device: str, batches: int, calls_per_batch: int = 8) -> float:
    """Median milliseconds per call of ``fn``.  On CUDA each sample is a batch
    of back-to-back calls between two CUDA events, started behind one priming
    call, so the host's validation and launch overlap the previous call and the
    number is steady-state device throughput (host cost per call is reported
    separately); on CPU it is the wall clock."""
    for _ in range(3):
        fn()
    if device != "cuda":
        samples = []
        for _ in range(max(1, batches)):
            start = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - start) * 1e3)
        return statistics.median(samples)
    torch.cuda.synchronize()
    samples = []
    for _ in range(max(1, batches)):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        fn()  # keeps the device busy while the host prepares the first timed call
        start.record()
        for _ in range(calls_per_batch):
            fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / calls_per_batch)
    return statistics.median(samples)


def host_us(fn: Callable[[], None], device: str, calls: int = 20) -> float:
    """Host microseconds per call to enqueue ``fn`` (validation + launch), the
    device drained first so the queue never blocks."""
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    if device == "cuda":
        torch.cuda.synchronize()
    return elapsed / calls * 1e6


def rate(payload: int, ms: float) -> dict:
    return {"ms": ms, "gb_per_s": 2 * payload / (ms * 1e-3) / 1e9}


# --------------------------------------------------------------------------- SGLang (optional)


def load_sglang_staging(path: Optional[str]) -> Optional[types.ModuleType]:
    """SGLang's staging_buffer module, for its two Triton kernels only: the
    normal import when it works; otherwise the file at ``path`` (or inside the
    installed sglang package) loaded without running the package's __init__,
    with its three sglang imports stubbed."""
    try:
        return importlib.import_module("sglang.srt.disaggregation.common.staging_buffer")
    except Exception:
        pass
    if not path:
        spec = importlib.util.find_spec("sglang")  # locates the package without importing it
        if spec is None or not spec.submodule_search_locations:
            return None
        path = str(Path(list(spec.submodule_search_locations)[0]) / "srt" / "disaggregation" / "common" / "staging_buffer.py")
    if not Path(path).is_file():
        return None
    stubs = {
        "sglang.kernels.ops.memory.ptr_table": {"make_ptr_table": lambda ptrs, device: torch.tensor(ptrs, dtype=torch.int64, device=device)},
        "sglang.srt.environ": {"envs": types.SimpleNamespace(SGLANG_STAGING_USE_TORCH=types.SimpleNamespace(get=lambda: False))},
        "sglang.srt.utils": {"create_device_stream": lambda *a, **k: None, "device_stream_context": lambda *a, **k: None},
    }
    saved = {name: sys.modules.get(name) for name in _with_parents(stubs)}
    try:
        for name in _with_parents(stubs):
            module = types.ModuleType(name)
            module.__dict__.update(stubs.get(name, {}))
            module.__path__ = []
            sys.modules[name] = module
        spec = importlib.util.spec_from_file_location("kvconform_bench_sglang_staging", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


def _with_parents(names) -> list[str]:
    out = []
    for name in names:
        parts = name.split(".")
        out += [".".join(parts[: i + 1]) for i in range(len(parts)) if ".".join(parts[: i + 1]) not in out]
    return out


def sglang_gather(module, k_layers, v_layers, page_table, page_size, num_tokens, head_start, head_count):
    """SGLang 0.5.23's fused gather kernel with its wrapper's launch shape; the
    pointer table is built once here, so only the kernel is timed."""
    import triton

    head_dim, total_heads, esize = k_layers[0].shape[-1], k_layers[0].shape[1], k_layers[0].element_size()
    per_layer = num_tokens * head_count * head_dim
    ptrs = torch.tensor([t.data_ptr() for t in (*k_layers, *v_layers)], dtype=torch.int64, device=page_table.device)
    grid = (2 * len(k_layers), triton.cdiv(per_layer, 1024))

    def run(out: torch.Tensor) -> None:
        staging = out[: per_layer * esize * 2 * len(k_layers)].view(INT_OF_SIZE[esize])
        module._fused_gather_to_staging_kernel[grid](
            ptrs, page_table, staging, num_tokens, total_heads * head_dim, head_start * head_dim, per_layer,
            head_count * head_dim, page_size, 1024,
        )

    return run


def sglang_scatter(module, staging, destinations, heads_per_writer, page_table, page_size, num_tokens, layers, head_dim, esize):
    """SGLang 0.5.23's fused scatter kernel with its wrapper's launch shape
    (every writer covers all layers, as SGLang assumes); tables built per pool
    once, so only the kernel is timed."""
    import triton

    per_layer = num_tokens * heads_per_writer * head_dim
    heads = torch.tensor([h * head_dim for h, _ in destinations], dtype=torch.int64, device=staging.device)
    typed = staging[: per_layer * esize * 2 * layers * len(destinations)].view(INT_OF_SIZE[esize])
    grid = (len(destinations) * 2 * layers, triton.cdiv(per_layer, 1024))
    tables: dict[tuple[int, ...], torch.Tensor] = {}

    def run(pool: list[torch.Tensor]) -> None:
        key = tuple(t.data_ptr() for t in pool)
        if key not in tables:
            tables[key] = torch.tensor(key, dtype=torch.int64, device=staging.device)
        module._fused_scatter_from_staging_kernel[grid](
            tables[key], page_table, typed, heads, num_tokens, pool[0].shape[1] * head_dim, per_layer,
            heads_per_writer * head_dim, page_size, 2 * layers, 1024,
        )

    return run


# --------------------------------------------------------------------------- one shape


def bench_shape(shape: Shape, device: str, reps: int, sweep: bool, sglang, gen: torch.Generator) -> list[dict]:
    rows = []
    esize = torch.empty(0, dtype=getattr(torch, shape.dtype)).element_size()
    page_table, pool_tokens = random_page_table(shape, device, gen)
    copy_cache: dict[int, dict] = {}

    def copy_rate(payload: int) -> dict:
        if payload not in copy_cache:
            src = torch.randint(0, 256, (payload,), dtype=torch.uint8, device=device, generator=gen)
            dst = torch.empty_like(src)
            copy_cache[payload] = rate(payload, time_ms(lambda: dst.copy_(src), device, reps))
            del src, dst
        return copy_cache[payload]

    # Gather on a prefill rank.
    held, head_start, head_count = gather_slice(shape)
    k, v = random_pool(shape, held, pool_tokens, device, gen)
    payload = 2 * shape.layers * shape.tokens * head_count * shape.head_dim * esize
    out = torch.empty(payload, dtype=torch.uint8, device=device)
    args = (k, v, page_table, shape.page_size, shape.tokens, head_start, head_count)
    row = {"shape": shape.name, "op": "gather", **asdict(shape), "heads_on_rank": held, "head_start": head_start,
           "head_count": head_count, "payload_bytes": payload, "bytes_moved": 2 * payload}
    row["triton"] = rate(payload, time_ms(lambda: triton_kv_copy.gather(*args, out), device, reps))
    row["triton"]["host_us_per_call"] = host_us(lambda: triton_kv_copy.gather(*args, out), device) if device == "cuda" else None
    slots = token_slots(page_table, shape.page_size, shape.tokens)
    expected = torch.cat([ints(t)[slots, head_start:head_start + head_count].reshape(-1) for t in (*k, *v)]).view(torch.uint8)
    row["bit_exact"] = torch.equal(out, expected)
    row.update(_compare(shape, device, reps, payload, row, sweep, copy_rate,
                        sweep_fn=lambda tile: (lambda: triton_kv_copy.gather_tiled(tile, *args, out)),
                        torch_fn=(lambda dst: torch_kv_copy.gather(*args, dst)) if torch_kv_copy else None,
                        sglang_fn=sglang_gather(sglang, *args) if sglang else None,
                        fresh=lambda: torch.empty_like(out), result=lambda dst: dst, expected=expected))
    rows.append(row)
    k = v = out = expected = None  # free the pools before the scatter shapes (the lambdas above are done)

    # Scatter on a decode rank.
    held, per_writer, destinations = scatter_plan(shape)
    k, v = random_pool(shape, held, pool_tokens, device, gen)
    pristine = [t.clone() for t in (*k, *v)]
    payload = len(destinations) * 2 * shape.layers * shape.tokens * per_writer * shape.head_dim * esize
    staging = torch.randint(0, 256, (payload,), dtype=torch.uint8, device=device, generator=gen)
    sargs = (staging, destinations, per_writer, shape.layers)
    row = {"shape": shape.name, "op": "scatter", **asdict(shape), "heads_on_rank": held, "heads_per_writer": per_writer,
           "writers": len(destinations), "payload_bytes": payload, "bytes_moved": 2 * payload}
    row["triton"] = rate(payload, time_ms(lambda: triton_kv_copy.scatter(*sargs, k, v, page_table, shape.page_size, shape.tokens),
                                          device, reps))
    row["triton"]["host_us_per_call"] = (host_us(lambda: triton_kv_copy.scatter(*sargs, k, v, page_table, shape.page_size, shape.tokens),
                                                 device) if device == "cuda" else None)
    expected = [ints(t).clone() for t in pristine]
    for part, (dst_head, dst_layer) in enumerate(destinations):
        blocks = staging.view(len(destinations), -1)[part].view(INT_OF_SIZE[esize]).view(2, shape.layers, shape.tokens, per_writer, shape.head_dim)
        for kv in range(2):
            for layer in range(shape.layers):
                expected[kv * shape.layers + dst_layer + layer][slots, dst_head:dst_head + per_writer] = blocks[kv, layer]
    row["bit_exact"] = all(torch.equal(ints(t), e) for t, e in zip((*k, *v), expected))

    def fresh_pool():
        return [t.clone() for t in pristine]

    row.update(_compare(shape, device, reps, payload, row, sweep, copy_rate,
                        sweep_fn=lambda tile: (lambda: triton_kv_copy.scatter_tiled(tile, *sargs, k, v, page_table, shape.page_size, shape.tokens)),
                        torch_fn=(lambda pool: torch_kv_copy.scatter(*sargs, pool[: shape.layers], pool[shape.layers:], page_table,
                                                                   shape.page_size, shape.tokens)) if torch_kv_copy else None,
                        sglang_fn=sglang_scatter(sglang, staging, destinations, per_writer, page_table, shape.page_size, shape.tokens,
                                                 shape.layers, shape.head_dim, esize) if sglang else None,
                        fresh=fresh_pool, result=lambda pool: [ints(t) for t in pool], expected=expected))
    rows.append(row)
    return rows


def ints(t: torch.Tensor) -> torch.Tensor:
    return t.view(INT_OF_SIZE[t.element_size()])


def token_slots(page_table: torch.Tensor, page_size: int, num_tokens: int) -> torch.Tensor:
    """Pool slot of each chunk token, by plain indexing (the independent expectation)."""
    token = torch.arange(num_tokens, device=page_table.device)
    return page_table[token // page_size] * page_size + token % page_size


def _same(a, b) -> bool:
    if isinstance(a, list):
        return all(torch.equal(x, y) for x, y in zip(a, b))
    return torch.equal(a, b)


def _compare(shape, device, reps, payload, row, sweep, copy_rate, *, sweep_fn, torch_fn, sglang_fn, fresh, result, expected) -> dict:
    """Copy baseline, ratio, optional sweep and other implementations, each
    checked bit-exactly against the (already verified) Triton result."""
    extra = {"copy": copy_rate(payload)}
    extra["ratio_to_copy"] = row["triton"]["gb_per_s"] / extra["copy"]["gb_per_s"]
    checks = {}
    for label, fn in (("torch_reference", torch_fn), ("sglang_0_5_23_triton", sglang_fn)):
        if fn is None:
            extra[label] = None
            continue
        target = fresh()
        fn(target)
        checks[label] = _same(result(target), expected)
        slow = label == "torch_reference" and device == "cuda"
        extra[label] = rate(payload, time_ms(lambda: fn(target), device, max(1, reps // 4) if slow else reps,
                                             calls_per_batch=2 if slow else 8))
        extra[label]["ratio_to_copy"] = extra[label]["gb_per_s"] / extra["copy"]["gb_per_s"]
        extra[label]["bit_exact_vs_triton"] = checks[label]
    if sweep:
        extra["sweep"] = [
            {**asdict(tile), **rate(payload, time_ms(sweep_fn(tile), device, reps))} for tile in SWEEP_TILES
        ]
        for entry in extra["sweep"]:
            entry["ratio_to_copy"] = entry["gb_per_s"] / extra["copy"]["gb_per_s"]
    return extra


# --------------------------------------------------------------------------- main


def full_shapes() -> list[Shape]:
    return [Shape(p, d, page) for p, d in ((8, 2), (2, 8), (4, 1)) for page in (1, 64)]


def small_shapes() -> list[Shape]:
    return [Shape(p, d, page, head_dim=8, layers=2, tokens=13) for p, d in ((8, 2), (2, 8)) for page in (1, 4)]


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="tiny shapes on the CPU through the Triton interpreter")
    parser.add_argument("--out", help="folder to write <device-name>-<date>.json into")
    parser.add_argument("--sweep", action="store_true", help="also time several tile shapes per case")
    parser.add_argument("--reps", type=int, default=None, help="timed samples (CUDA: batches of 8 calls; CPU: single calls)")
    parser.add_argument("--sglang-file", default=os.environ.get("KVCONFORM_SGLANG_STAGING"),
                        help="path to SGLang 0.5.23's staging_buffer.py when sglang is not importable")
    opts = parser.parse_args(argv)

    device = "cpu" if opts.small or not torch.cuda.is_available() else "cuda"
    if device == "cpu" and not opts.small:
        parser.error("no CUDA device: use --small for the CPU smoke test")
    reps = opts.reps or (2 if device == "cpu" else 25)
    sglang = load_sglang_staging(opts.sglang_file) if device == "cuda" else None
    gen = torch.Generator(device=device).manual_seed(0)
    device_name = torch.cuda.get_device_name() if device == "cuda" else "cpu-interpreter"
    results = []
    for shape in small_shapes() if opts.small else full_shapes():
        results += bench_shape(shape, device, reps, opts.sweep, sglang, gen)
        if device == "cuda":
            torch.cuda.empty_cache()
    import triton

    report = {
        "device": device_name,
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "default_tile": asdict(triton_kv_copy.DEFAULT_TILE),
        "rate_definition": "GB/s = 2 * payload_bytes (read + write) / median time per call; ratio_to_copy = GB/s / copy GB/s",
        "timing": f"median over {reps} samples; a CUDA sample is 8 back-to-back calls between CUDA events (2 for the torch path)",
        "sglang": None if sglang is None else getattr(sglang, "__file__", "sglang"),
        "results": results,
    }
    text = json.dumps(report, indent=1)
    print(text)
    if opts.out:
        folder = Path(opts.out)
        folder.mkdir(parents=True, exist_ok=True)
        slug = re.sub(r"[^A-Za-z0-9]+", "-", device_name).strip("-").lower()
        (folder / f"{slug}-{report['date']}.json").write_text(text + "\n")
    if device == "cuda":
        print(summary(results), file=sys.stderr)
    return report


def summary(results: list[dict]) -> str:
    lines = [f"{'shape':22} {'op':8} {'MB':>8} {'host us':>8} {'triton GB/s':>12} {'copy GB/s':>10} {'ratio':>6} {'sglang':>7} {'torch':>6} {'best sweep':>24}"]
    for r in results:
        if not r["bit_exact"]:
            lines.append(f"!! {r['shape']} {r['op']}: Triton result is NOT bit-exact")
        sg = r.get("sglang_0_5_23_triton")
        tr = r.get("torch_reference")
        best = max(r.get("sweep") or [{}], key=lambda e: e.get("ratio_to_copy", 0))
        lines.append(
            f"{r['shape']:22} {r['op']:8} {r['payload_bytes'] / 1e6:8.1f} {r['triton']['host_us_per_call'] or 0:8.0f} {r['triton']['gb_per_s']:12.0f} "
            f"{r['copy']['gb_per_s']:10.0f} {r['ratio_to_copy']:6.3f} "
            f"{(sg['ratio_to_copy'] if sg else float('nan')):7.3f} {(tr['ratio_to_copy'] if tr else float('nan')):6.3f} "
            f"{(str(best.get('tile_bytes')) + '/' + str(best.get('num_warps')) + ' ' + format(best.get('ratio_to_copy', float('nan')), '.3f')) if best else '':>24}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
