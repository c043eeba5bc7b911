"""How a distributed run is set up: backend, devices, group size, timeouts.

Two backends carry the KV bytes between rank processes:

* ``gloo``: CPU tensors, or CUDA tensors staged through host memory
  (``device="cuda"``), in which case any number of ranks may share GPUs;
* ``nccl``: CUDA tensors moved GPU to GPU, one GPU per rank.  With fewer GPUs
  than ranks it is refused unless ``share_gpus`` asks to try anyway (NCCL
  itself then decides, and a refusal becomes a skip naming the GPUs needed).

NCCL is only ever asked for point-to-point sends; NVLink multicast stays off
(``NCCL_NVLS_ENABLE=0`` is forced in every rank process).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

BACKENDS = ("gloo", "nccl")
DEVICES = ("cpu", "cuda")

#: Environment variables read by :func:`config_from_env` (the conformance test's knobs).
BACKEND_ENV_VAR = "KVCONFORM_DIST_BACKEND"      # gloo (default), nccl, or off
DEVICE_ENV_VAR = "KVCONFORM_DIST_DEVICE"        # cpu (default for gloo) or cuda
RANKS_ENV_VAR = "KVCONFORM_DIST_RANKS"          # processes in the group
SHARE_GPUS_ENV_VAR = "KVCONFORM_DIST_SHARE_GPUS"  # 1: let NCCL ranks share GPUs
TIMEOUT_ENV_VAR = "KVCONFORM_DIST_TIMEOUT"      # seconds for each process-group operation

#: Group size when nothing says otherwise on CPU: the largest topology the suite draws there.
DEFAULT_CPU_RANKS = 8


class BackendUnavailable(Exception):
    """This machine cannot run the requested backend; the message says what is missing (tests skip on it)."""


@dataclass(frozen=True)
class DistributedConfig:
    """One process group's setup.

    ``world_size`` processes are started once and reused for every case whose
    topology needs at most that many ranks.  ``op_timeout_s`` bounds every
    send, receive and gather (a hang becomes a failure naming the ranks);
    ``job_timeout_s`` bounds one whole case as seen from the parent;
    ``start_timeout_s`` bounds starting the processes and the group.
    """

    backend: str = "gloo"
    device: str = "cpu"
    world_size: int = DEFAULT_CPU_RANKS
    share_gpus: bool = False
    op_timeout_s: float = 60.0
    job_timeout_s: float = 300.0
    start_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.backend == "nccl" and self.device != "cuda":
            raise ValueError("the nccl backend moves CUDA tensors only: use device='cuda', or backend='gloo' for CPU")
        if self.world_size < 2:
            raise ValueError(f"world_size must be >= 2 (at least one prefill and one decode rank), got {self.world_size}")
        for name in ("op_timeout_s", "job_timeout_s", "start_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")

    @property
    def stages_through_host(self) -> bool:
        """CUDA payloads go through host memory: gloo sends CPU tensors only."""
        return self.backend == "gloo" and self.device == "cuda"


def rank_devices(config: DistributedConfig, gpu_count: int) -> tuple[str, ...]:
    """The device of every rank, or :class:`BackendUnavailable` saying how many GPUs are needed.

    NCCL gets one GPU per rank when there are enough; with fewer it needs
    ``share_gpus`` (ranks then go round robin over the GPUs).  gloo with
    CUDA tensors always goes round robin: it never hands GPU memory to NCCL.
    """
    ranks = config.world_size
    if config.device == "cpu":
        return ("cpu",) * ranks
    if gpu_count < 1:
        raise BackendUnavailable(f"{config.backend} on CUDA needs at least one GPU; torch sees none")
    if config.backend == "nccl" and gpu_count < ranks and not config.share_gpus:
        fewer = f"use fewer ranks ({RANKS_ENV_VAR}={gpu_count}), " if gpu_count >= 2 else ""
        raise BackendUnavailable(
            f"nccl with one GPU per rank needs {ranks} GPUs for {ranks} ranks, {gpu_count} visible; {fewer}"
            f"let ranks share GPUs ({SHARE_GPUS_ENV_VAR}=1, if NCCL permits it), or use backend gloo with "
            f"device cuda (ranks share GPUs, bytes staged through host memory)")
    return tuple(f"cuda:{rank % gpu_count}" for rank in range(ranks))


def config_from_env(environ: dict[str, str] | None = None, gpu_count: int | None = None) -> DistributedConfig | None:
    """The configuration the environment asks for; ``None`` when ``KVCONFORM_DIST_BACKEND=off``.

    Defaults: gloo on CPU with 8 ranks; nccl on CUDA with one rank per visible GPU.
    """
    env = os.environ if environ is None else environ
    backend = env.get(BACKEND_ENV_VAR, "gloo").strip().lower() or "gloo"
    if backend == "off":
        return None
    if backend not in BACKENDS:
        raise ValueError(f"{BACKEND_ENV_VAR}={backend!r}: use gloo, nccl or off")
    device = env.get(DEVICE_ENV_VAR, "").strip().lower() or ("cuda" if backend == "nccl" else "cpu")
    ranks_text = env.get(RANKS_ENV_VAR, "").strip()
    if ranks_text:
        ranks = _positive_int(RANKS_ENV_VAR, ranks_text)
    elif backend == "nccl":
        ranks = max(2, _gpu_count() if gpu_count is None else gpu_count)
    else:
        ranks = DEFAULT_CPU_RANKS
    share = env.get(SHARE_GPUS_ENV_VAR, "0").strip().lower() in ("1", "true", "yes")
    config = DistributedConfig(backend, device, ranks, share_gpus=share)
    timeout = env.get(TIMEOUT_ENV_VAR, "").strip()
    if timeout:
        seconds = float(timeout)
        config = replace(config, op_timeout_s=seconds, job_timeout_s=max(config.job_timeout_s, 5 * seconds))
    return config


def _positive_int(name: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not an integer") from None
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
