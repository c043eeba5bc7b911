"""Device-generic instantiation: a test taking ``device`` runs once per selected device.

Like PyTorch's device-generic tests: one test body, one instance per device
chosen with ``--device cpu|cuda|all``.  ``--device cuda`` without CUDA is a usage
error before collection (``harness.devices``); with ``all`` the report header says CUDA is absent.
"""

from __future__ import annotations

import pytest

from harness.devices import select_devices


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "device" not in metafunc.fixturenames:
        return
    requested = metafunc.config.getoption("kvconform_device")
    devices, _ = select_devices(requested)  # an absent requested device was refused at configure time
    metafunc.parametrize("device", [pytest.param(device, id=device) for device in devices])
