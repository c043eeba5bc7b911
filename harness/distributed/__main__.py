"""``python -m harness.distributed``: run the distributed suite once and print a summary.

Starts one process group (gloo on CPU by default; ``--backend nccl`` one GPU
per rank), then runs on it: a sweep of fixed topologies that use every rank
(fan-in, fan-out, equal TP, head replication, pipeline stages), Hypothesis-
drawn round-trip cases and out-of-order arrival cases, and a larger case
timed for transfer bandwidth.  Exit status: 0 all passed, 1 a finding or a
broken group, 3 the backend is not available here (the line says why).

Example (8 GPUs): ``PYTHONPATH=. python -m harness.distributed --backend nccl --ranks 8``
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

import strategies as kst
from harness import scope
from harness.distributed.config import (
    DEFAULT_CPU_RANKS,
    BackendUnavailable,
    DistributedConfig,
)
from harness.distributed.group import WorkerGroup
from harness.distributed.job import CaseJob
from harness.distributed.results import CaseReport, DistributedFailure
from harness.distributed.roles import ranks_needed
from harness.distributed.schedule import writer_slot_counts
from harness.loading import load_implementation
from strategies.cases import KvSpec, RequestSpec, TpTopology, TransferCase

EXIT_PASS, EXIT_FAIL, EXIT_UNAVAILABLE = 0, 1, 3


class _Abort(BaseException):
    """Stops Hypothesis at once: a broken process group is not something to shrink."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m harness.distributed", description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("gloo", "nccl"), default="gloo")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda for nccl, cpu for gloo")
    parser.add_argument("--ranks", type=int, default=None,
                        help=f"processes in the group (default: one per GPU for nccl, {DEFAULT_CPU_RANKS} for gloo)")
    parser.add_argument("--share-gpus", action="store_true", help="let NCCL ranks share GPUs (if NCCL permits it)")
    parser.add_argument("--impl", default="reference", help="implementation spec (as for kvconform --impl)")
    parser.add_argument("--examples", type=int, default=20, help="Hypothesis examples per property (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="Hypothesis seed (default 0)")
    parser.add_argument("--bandwidth-tokens", type=int, default=None,
                        help="tokens of the timed bandwidth case, 0 to skip (default 4096 on cuda, 256 on cpu)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds for every process-group operation")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = args.device or ("cuda" if args.backend == "nccl" else "cpu")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    ranks = args.ranks or (max(2, gpus) if args.backend == "nccl" else DEFAULT_CPU_RANKS)
    config = DistributedConfig(args.backend, device, ranks, args.share_gpus, op_timeout_s=args.timeout,
                               job_timeout_s=max(300.0, 4 * args.timeout))
    impl = load_implementation(args.impl)
    began = time.perf_counter()
    try:
        group = WorkerGroup(config, gpus)
        group.start()
    except BackendUnavailable as exc:
        print(f"SKIPPED: {args.backend} on {device} with {ranks} ranks is not available here: {exc}")
        return EXIT_UNAVAILABLE
    except DistributedFailure as exc:
        print(f"FAIL: {exc}")
        return EXIT_FAIL
    print(f"kvconform distributed: backend {args.backend}, {ranks} ranks on {_devices(group.devices)}, "
          f"impl {impl.name} ({args.impl}), torch {torch.__version__}")
    print(f"group started in {group.start_seconds:.1f}s")
    tally = _Tally()
    try:
        with group:
            _sweep(group, args.impl, tally)
            _hypothesis_round_trip(group, impl.implementation, args.impl, args.examples, args.seed, tally)
            _hypothesis_arrival_orders(group, impl.implementation, args.impl, args.examples, args.seed, tally)
            tokens = args.bandwidth_tokens if args.bandwidth_tokens is not None else (4096 if device == "cuda" else 256)
            if tokens > 0:
                _bandwidth(group, args.impl, tokens, tally)
    except _Abort:
        pass
    return tally.finish(time.perf_counter() - began, group.starts)


class _Tally:
    """Counts cases and keeps the first failure."""

    def __init__(self) -> None:
        self.cases = self.passed = 0
        self.topologies: set[tuple] = set()
        self.largest = 0
        self.payload = 0
        self.failure: str | None = None

    def record(self, case: TransferCase, report: CaseReport) -> None:
        t = case.topology
        self.cases += 1
        self.passed += report.passed
        self.topologies.add((t.total_kv_heads, t.prefill_tp, t.prefill_pp, t.decode_tp, t.decode_pp))
        self.largest = max(self.largest, ranks_needed(t))
        self.payload += report.payload_bytes

    def fail(self, text: str) -> None:
        if self.failure is None:
            self.failure = text

    def finish(self, seconds: float, starts: int) -> int:
        print(f"cases: {self.cases} run, {self.passed} passed; {len(self.topologies)} topologies, up to "
              f"{self.largest} ranks; {self.payload / 1e6:.2f} MB of KV moved between ranks; group started {starts}x")
        if self.failure:
            print(f"RESULT: FAIL after {seconds:.1f}s\n{self.failure}")
            return EXIT_FAIL
        print(f"RESULT: PASS in {seconds:.1f}s")
        return EXIT_PASS


def _run(group: WorkerGroup, job: CaseJob, tally: _Tally, label: str) -> CaseReport:
    """One case; a finding raises (for Hypothesis to shrink), a broken group aborts everything."""
    try:
        report = group.run(job)
    except DistributedFailure as exc:
        tally.fail(f"{label}: process group failure: {exc}")
        raise _Abort() from exc
    tally.record(job.case, report)
    report.raise_if_failed()
    return report


def _sweep(group: WorkerGroup, spec: str, tally: _Tally) -> None:
    size = group.config.world_size
    for topology in full_topologies(size):
        case = fixed_case(topology, tokens=37, page_size=4, prefix=8, chunk_pages=2, head_dim=8, seed=size)
        label = f"sweep {_name(topology)}"
        try:
            report = _run(group, CaseJob(case, spec, slack=1), tally, label)
            print(f"{label}: pass ({report.summary()}, {report.payload_bytes} bytes, {report.wall_s:.2f}s)")
        except AssertionError as exc:
            print(f"{label}: FAIL: {_first_line(exc)}")
            tally.fail(f"{label}: {exc}")


def _hypothesis(name: str, examples: int, seed: int, tally: _Tally, test: Callable) -> None:
    before = tally.cases
    try:
        hypothesis_seed(seed)(settings(max_examples=examples, deadline=None, database=None, print_blob=True,
                                       suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])(test))()
        print(f"{name}: {tally.cases - before} cases, pass")
    except AssertionError as exc:
        notes = "\n".join(getattr(exc, "__notes__", []))
        print(f"{name}: FAIL: {_first_line(exc)}")
        tally.fail(f"{name}: {exc}\n{notes}")


def _topologies(size: int):
    return kst.topologies(max_tp=size - 1, max_ranks=size - 1).filter(lambda t: ranks_needed(t) <= size)


def _hypothesis_round_trip(group: WorkerGroup, impl, spec: str, examples: int, seed: int, tally: _Tally) -> None:
    @given(case=kst.transfer_cases(topologies=_topologies(group.config.world_size), max_tokens=32), slack=st.integers(1, 3))
    def round_trip(case, slack):
        _run(group, CaseJob(scope.fit(impl, case), spec, slack=slack), tally, "round trip")

    _hypothesis("hypothesis round trip", examples, seed, tally, round_trip)


def _hypothesis_arrival_orders(group: WorkerGroup, impl, spec: str, examples: int, seed: int, tally: _Tally) -> None:
    @given(case=kst.transfer_cases(topologies=_topologies(group.config.world_size), max_tokens=24), data=st.data())
    def arrival_orders(case, data):
        case = scope.fit(impl, case)  # the implementation's declared limits, as the pytest plugin applies them
        slots, chunks = writer_slot_counts(impl, case)
        orders = tuple(tuple(data.draw(kst.arrival_orders([(c, s) for c in range(chunks) for s in range(n)]),
                                       label=f"arrivals at decode {j}")) for j, n in enumerate(slots))
        _run(group, CaseJob(case, spec, slack=chunks, arrival_orders=orders), tally, "arrival orders")

    _hypothesis("hypothesis arrival orders", examples, seed, tally, arrival_orders)


def _bandwidth(group: WorkerGroup, spec: str, tokens: int, tally: _Tally) -> None:
    """A larger case, run twice (the first pays for connection set-up); reports the second's receive rate."""
    half = max(1, group.config.world_size // 2)
    topology = TpTopology(8 * half, half, half)
    case = fixed_case(topology, tokens=tokens, page_size=16, prefix=0, chunk_pages=64, head_dim=128, seed=1,
                      layers=4, dtype=torch.bfloat16, nan_payloads=False)
    label = f"bandwidth {_name(topology)} {tokens} tokens bf16"
    try:
        for _ in range(2):
            report = _run(group, CaseJob(case, spec, slack=2), tally, label)
    except AssertionError as exc:
        print(f"{label}: FAIL: {_first_line(exc)}")
        tally.fail(f"{label}: {exc}")
        return
    per_rank = report.payload_bytes / half
    print(f"{label}: pass; {report.payload_bytes / 1e6:.1f} MB moved ({per_rank / 1e6:.1f} MB per decode rank), "
          f"receive rate {report.bandwidth_gbps():.2f} GB/s per decode rank (mean), case wall {report.wall_s:.2f}s")


def full_topologies(size: int) -> list[TpTopology]:
    """Valid topologies using all ``size`` ranks: equal TP, fan-in, fan-out, replication, pipeline stages."""
    half = size // 2
    candidates = [
        TpTopology(half, half, half) if size % 2 == 0 else None,
        TpTopology(size - 1, size - 1, 1),
        TpTopology(size - 1, 1, size - 1),
        TpTopology(1, half, half) if size % 2 == 0 else None,
        TpTopology(half, size // 4, half, prefill_pp=2) if size % 4 == 0 and size >= 4 else None,
    ]
    return [t for t in candidates if t is not None and ranks_needed(t) == size and _valid(t)]


def _valid(t: TpTopology) -> bool:
    h = t.total_kv_heads
    sides_ok = all(h % tp == 0 or tp % h == 0 for tp in (t.prefill_tp, t.decode_tp))
    big, small = max(t.prefill_tp, t.decode_tp), min(t.prefill_tp, t.decode_tp)
    return sides_ok and big % small == 0


def fixed_case(topology: TpTopology, *, tokens: int, page_size: int, prefix: int, chunk_pages: int, head_dim: int,
               seed: int, layers: int = 2, dtype: torch.dtype = torch.float16, nan_payloads: bool = True) -> TransferCase:
    """A hand-made case: fragmented, out-of-order page tables with spare (canary) pages on both sides."""
    pages = -(-tokens // page_size)
    prefill_table = tuple(reversed(range(1, pages + 1)))
    decode_table = tuple(range(0, 2 * pages, 2))
    request = RequestSpec(tokens, prefix, chunk_pages, prefill_table, pages + 2, decode_table, 2 * pages + 1)
    kv = KvSpec(layers * topology.prefill_pp, head_dim, dtype, page_size)
    return TransferCase(topology, kv, request, seed, nan_payloads)


def _name(t: TpTopology) -> str:
    pp = f" pp {t.prefill_pp}->{t.decode_pp}" if (t.prefill_pp, t.decode_pp) != (1, 1) else ""
    return f"H={t.total_kv_heads} P={t.prefill_tp} D={t.decode_tp}{pp}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _devices(devices: tuple[str, ...]) -> str:
    distinct = sorted(set(devices))
    return ", ".join(distinct) if len(distinct) <= 4 else f"{distinct[0]} .. {distinct[-1]} ({len(distinct)} devices)"


if __name__ == "__main__":  # spawned rank processes import this module as __mp_main__: do nothing there
    sys.exit(main())
