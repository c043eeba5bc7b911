"""A simulated bulk transport: a memcpy standing in for the RDMA write.

Upholds: exactly ``len(payload)`` bytes land at ``offset`` of the remote
region; nothing else of the region changes.
"""

from __future__ import annotations

import torch


def write(remote: torch.Tensor, offset: int, payload: torch.Tensor) -> None:
    """One-sided write of ``payload`` (uint8) into ``remote`` at byte ``offset``."""
    if payload.dtype != torch.uint8 or remote.dtype != torch.uint8:
        raise ValueError(f"transport moves uint8 bytes, got {payload.dtype} into {remote.dtype}")
    end = offset + payload.numel()
    if offset < 0 or end > remote.numel():
        raise ValueError(f"write of {payload.numel()} bytes at {offset} overruns a {remote.numel()}-byte region")
    remote[offset:end].copy_(payload)
