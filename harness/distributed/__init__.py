"""Distributed mode: every prefill and decode rank of a topology is its own process.

The in-process engine (``harness.engine``) moves KV with a memcpy; here the
bytes cross a real ``torch.distributed`` process group: gloo on CPU (or CUDA
tensors staged through host memory), NCCL GPU to GPU.  Each rank process loads
the implementation from its spec string, rebuilds the case's world from its
seed, and checks the in-process invariants on its own pools; rank 0 gathers
every rank's result for the report.

Public API::

    from harness.distributed import CaseJob, DistributedConfig, WorkerGroup

    with WorkerGroup(DistributedConfig(backend="gloo", world_size=6)) as group:
        report = group.run(CaseJob(case, impl_spec="reference"))
        report.raise_if_failed()

Modules: ``config`` (backend, devices, timeouts), ``roles`` (process rank ->
prefill/decode pool), ``job`` (what a case sends to the ranks), ``schedule``
(the deadlock-free exchange order), ``transport`` (timed point-to-point and
gather), ``ranks`` (what a rank does for a case), ``results`` (per-rank
verdicts and the gathered report), ``worker`` (the rank process), ``group``
(the parent's pool of rank processes).  ``python -m harness.distributed``
runs Hypothesis-drawn cases and prints a summary (see docs/distributed.md).
"""

from harness.distributed.config import (
    BackendUnavailable,
    DistributedConfig,
    config_from_env,
    rank_devices,
)
from harness.distributed.group import WorkerGroup
from harness.distributed.job import CaseJob
from harness.distributed.results import (
    CaseReport,
    DistributedFailure,
    RankError,
    RankResult,
)
from harness.distributed.roles import RankRoles, ranks_needed

__all__ = [
    "BackendUnavailable",
    "CaseJob",
    "CaseReport",
    "DistributedConfig",
    "DistributedFailure",
    "RankError",
    "RankResult",
    "RankRoles",
    "WorkerGroup",
    "config_from_env",
    "rank_devices",
    "ranks_needed",
]
