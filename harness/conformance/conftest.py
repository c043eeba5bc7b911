"""Device-generic instantiation: a test taking ``device`` runs once per selected device."""

from __future__ import annotations

import pytest
import torch


def selected_devices(config: pytest.Config) -> list[str]:
    choice = config.getoption("--device", default=None) or "all"
    if choice == "all":
        return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [choice]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "device" in metafunc.fixturenames:
        params = []
        for device in selected_devices(metafunc.config):
            marks = []
            if device == "cuda" and not torch.cuda.is_available():
                marks.append(pytest.mark.skip(reason="--device cuda asked for, but torch sees no CUDA device"))
            params.append(pytest.param(device, id=device, marks=marks))
        metafunc.parametrize("device", params)
