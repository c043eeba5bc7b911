"""Which devices a run tests on, from ``--device cpu|cuda|all``, and refusing a device that is absent.

Imports torch only when asked, so the CLI can check ``--device`` before
pytest (and Hypothesis) start.
"""

from __future__ import annotations


def select_devices(requested: str) -> tuple[tuple[str, ...], str | None]:
    """``(devices, note)`` for ``--device``; the note says why CUDA is absent."""
    import torch

    has_cuda = torch.cuda.is_available()
    if requested == "cpu":
        return ("cpu",), None
    if requested == "cuda":
        return (("cuda",), None) if has_cuda else ((), "CUDA requested but torch.cuda.is_available() is False")
    return (("cpu", "cuda"), None) if has_cuda else (("cpu",), "CUDA not available")


def require_devices(requested: str) -> None:
    """Raise ``ValueError`` when ``--device`` names only devices this machine lacks.

    A run that asked for CUDA and silently tested nothing on it would go
    green on a GPU runner whose CUDA is broken; ``all`` stays fine without
    CUDA (the report header says it is absent).
    """
    if requested == "all":
        return
    selected, note = select_devices(requested)
    if not selected:
        raise ValueError(f"--device={requested}: {note}; run on a machine where torch sees CUDA "
                         "(check the driver and CUDA_VISIBLE_DEVICES), or pass --device cpu or --device all")
