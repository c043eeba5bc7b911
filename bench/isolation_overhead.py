"""What process isolation costs: per-call round trips and the gate suite's wall time, in-process vs isolated.

Side by side in one run, on CPU, the reference implementation behind
``harness.guard`` (as conformance tests call it):

* ``tiny_call``: ``heads_of_rank(8, 2, 1)``, nothing but the round trip;
* ``pool_call``: ``gather`` of one writer's part from a paged pool (``LAYERS``
  K and V tensors, a page table, the output buffer: every tensor crosses by
  shared memory, the storage cached after the first call);
* ``worker_start``: a fresh worker after a retirement (fork from the
  forkserver, load the implementation, first call), as between tests and
  after a crash;
* ``suite_gate`` (``--suite``): ``python -m harness --profile gate --device
  cpu`` with and without ``--in-process``, wall seconds and exit status.

Medians of ``--repeats`` timings of ``--calls`` calls each; the load average
when it started is in ``machine`` (the numbers mean little on a loaded machine)::

    PYTHONPATH=. python bench/isolation_overhead.py [--suite] [--out bench/results]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from harness import isolation  # noqa: E402
from harness.guard import guard  # noqa: E402
from harness.loading import load_implementation  # noqa: E402
from harness.runinfo import suite_commit  # noqa: E402

LAYERS, PAGES, PAGE_SIZE, HEADS, HEAD_DIM, TOKENS = 4, 64, 16, 8, 64, 256


def per_call_seconds(call: Callable[[], Any], calls: int, repeats: int) -> float:
    call()  # warm: the first call shares the tensors and starts lazily built state
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            call()
        timings.append((time.perf_counter() - started) / calls)
    return statistics.median(timings)


def calls_of(impl: Any) -> dict[str, Callable[[], Any]]:
    k = [torch.randn(PAGES * PAGE_SIZE, HEADS, HEAD_DIM) for _ in range(LAYERS)]
    v = [torch.randn(PAGES * PAGE_SIZE, HEADS, HEAD_DIM) for _ in range(LAYERS)]
    table = torch.randperm(PAGES)[:TOKENS // PAGE_SIZE]
    heads = HEADS // 2
    out = torch.empty(2 * LAYERS * TOKENS * heads * HEAD_DIM * 4, dtype=torch.uint8)
    return {"tiny_call": lambda: impl.heads_of_rank(8, 2, 1),
            "pool_call": lambda: impl.gather(k, v, table, PAGE_SIZE, TOKENS, 0, heads, out)}


def measure_calls(calls: int, repeats: int) -> dict[str, Any]:
    modes = {"in-process": guard(load_implementation("reference").implementation),
             "process": load_implementation("reference", isolated=True).implementation}
    result: dict[str, Any] = {}
    for mode, impl in modes.items():
        for name, call in calls_of(impl).items():
            result.setdefault(name, {})[f"{mode}_us"] = round(per_call_seconds(call, calls, repeats) * 1e6, 1)
    for name, row in result.items():
        row["overhead_us"] = round(row["process_us"] - row["in-process_us"], 1)
        row["ratio"] = round(row["process_us"] / row["in-process_us"], 2)
    isolated = modes["process"]
    starts = []
    for _ in range(repeats):
        isolation.retire_workers()
        started = time.perf_counter()
        isolated.heads_of_rank(8, 2, 1)
        starts.append(time.perf_counter() - started)
    result["worker_start"] = {"process_s": round(statistics.median(starts), 3)}
    return result


def measure_suite() -> dict[str, Any]:
    result = {}
    for mode, extra in (("in-process", ["--in-process"]), ("process", [])):
        with tempfile.TemporaryDirectory() as directory:
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "harness", "--impl", "reference", "--profile", "gate",
                                   "--device", "cpu", "--report-dir", directory, *extra], cwd=directory,
                                  env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True)
            result[f"{mode}_s"] = round(time.perf_counter() - started, 1)
            result[f"{mode}_exit_status"] = done.returncode
    result["ratio"] = round(result["process_s"] / result["in-process_s"], 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--suite", action="store_true", help="also time the whole gate suite in both modes")
    parser.add_argument("--out", type=Path, help="directory to write isolation-overhead-cpu-DATE.json into")
    args = parser.parse_args()
    load = os.getloadavg()
    result = {
        "benchmark": "isolation_overhead",
        "commit": suite_commit(),
        "date": datetime.date.today().isoformat(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average": [round(x, 2) for x in load],
                    "torch": torch.__version__},
        "calls": measure_calls(args.calls, args.repeats),
        "pool_call_shape": {"layers": LAYERS, "pool_tokens": PAGES * PAGE_SIZE, "heads": HEADS, "head_dim": HEAD_DIM,
                            "tokens": TOKENS},
    }
    if args.suite:
        result["suite_gate"] = measure_suite()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"isolation-overhead-cpu-{result['date']}.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
