"""Run info: what produced a report (suite, catalogue, implementation, configuration, machine).

Every report carries it under ``"run"`` so a verdict can be compared across
implementations, versions and devices (``kvconform matrix``) and traced back to
the exact code that produced it.  Collected once per run, on the pytest
controller; every probe is cheap and never fails the run: what cannot be
found reads ``"unknown"`` (or ``"n/a"`` for a driver on CPU).

The implementation's version, first that applies: its ``version`` attribute;
a version in its ``name`` (``"sglang 0.5.23"``); the installed distribution
named like its name's first word (``sglang``); the distribution owning the
factory's top-level module (the reference belongs to kvconform).
``implementation.version_from`` says which one gave it.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

from harness import settings
from harness.catalogue import CATALOGUE_VERSION

UNKNOWN = "unknown"
#: The checkout or installation root holding the ``harness`` package.
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
_NAME_WITH_VERSION = re.compile(r"^(?P<project>[A-Za-z][\w.+-]*?)[ @-]v?(?P<version>\d+(?:\.\d+)+[\w.+-]*)\b")
_PROBE_TIMEOUT_S = 5
#: Variables that change what runs (interpreted kernels, visible GPUs, deadlines, distributed mode); the
#: example database path and the settings the configuration already names are left out.
_OTHER_BEHAVIOUR_VARIABLES = ("TRITON_INTERPRET", "CUDA_VISIBLE_DEVICES")
_NOT_BEHAVIOUR = (settings.IMPL, settings.PROFILE, settings.HYPOTHESIS_DB)


def suite_version() -> str:
    """kvconform's version: the installed distribution's, else ``pyproject.toml``'s in a checkout."""
    try:
        return importlib.metadata.version("kvconform")
    except importlib.metadata.PackageNotFoundError:
        match = re.search(r'(?m)^version\s*=\s*"([^"]+)"', _read(PACKAGE_ROOT / "pyproject.toml"))
        return match.group(1) if match else UNKNOWN


def suite_commit() -> str:
    """``git describe --always`` of the kvconform checkout, ``-dirty`` when tracked code differs from it.

    Changes under ``reports/`` do not count: regenerating a committed report
    rewrites tracked files but changes no code.  ``unknown`` when kvconform
    is not a git checkout (installed from a wheel).
    """
    git = ["git", "-C", str(PACKAGE_ROOT)]
    top = _run([*git, "rev-parse", "--show-toplevel"])
    if top is None or Path(top).resolve() != PACKAGE_ROOT:  # a git repo around site-packages is not ours
        return UNKNOWN
    described = _run([*git, "describe", "--always", "--abbrev=12"])
    if described is None:
        return UNKNOWN
    changed = _run([*git, "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)reports"])
    return described + ("-dirty" if changed else "")


def implementation_identity(implementation: Any, display_name: str, target: str | None) -> dict[str, str]:
    """``{"name", "project", "version", "version_from"}`` of an implementation (see the module docstring)."""
    name = str(getattr(implementation, "name", None) or display_name)
    project, named_version = split_name(name)
    declared = getattr(implementation, "version", None)
    if isinstance(declared, str) and declared:
        return {"name": name, "project": project, "version": declared, "version_from": "attribute"}
    if named_version:
        return {"name": name, "project": project, "version": named_version, "version_from": "name"}
    version = _distribution_version(project)
    if version is not None:
        return {"name": name, "project": project, "version": version, "version_from": f"distribution {project}"}
    module = (target or "").partition(":")[0].split(".")[0]
    for dist in importlib.metadata.packages_distributions().get(module, []) if module else []:
        version = _distribution_version(dist)
        if version is not None:
            return {"name": name, "project": project, "version": version, "version_from": f"distribution {dist}"}
    if module and _packaged_by_checkout(module):  # part of kvconform, run from an uninstalled checkout
        return {"name": name, "project": project, "version": suite_version(), "version_from": "distribution kvconform"}
    return {"name": name, "project": project, "version": UNKNOWN, "version_from": UNKNOWN}


def split_name(name: str) -> tuple[str, str | None]:
    """``(project, version or None)`` of a display name: ``"sglang 0.5.23 (torch kernels)"`` -> sglang, 0.5.23."""
    match = _NAME_WITH_VERSION.match(name)
    if match:
        return match.group("project"), match.group("version")
    return (name.split()[0] if name.split() else UNKNOWN), None


def machine(devices: tuple[str, ...]) -> dict[str, Any]:
    """Device names (CUDA device names when CUDA is used, else the CPU model), driver and platform."""
    names = [_cpu_model()] if "cpu" in devices or not devices else []
    driver = "n/a"
    if "cuda" in devices:
        import torch

        names += [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        driver = _nvidia_driver() or f"CUDA driver API {_cuda_driver_api()}"
    return {"device_names": names, "driver": driver, "platform": platform.platform()}


def versions() -> dict[str, str]:
    """torch, Triton, Hypothesis, pytest and Python versions (``not installed`` when absent)."""
    result = {"python": platform.python_version()}
    for dist in ("torch", "triton", "hypothesis", "pytest"):
        result[dist] = _distribution_version(dist) or "not installed"
    return result


def collect(implementation: Any, display_name: str, target: str | None, configuration: dict[str, Any],
            devices: tuple[str, ...]) -> dict[str, Any]:
    """The report's ``"run"`` object (schema in ``harness.report``); tool versions are the report's ``"versions"``."""
    return {
        "suite": {"name": "kvconform", "version": suite_version(), "commit": suite_commit()},
        "catalogue_version": CATALOGUE_VERSION,
        "implementation": implementation_identity(implementation, display_name, target),
        "configuration": configuration,
        **machine(devices),
    }


def environment() -> dict[str, str]:
    """The set environment variables that change what a run does (``TRITON_INTERPRET``, ``KVCONFORM_*``)."""
    names = [*_OTHER_BEHAVIOUR_VARIABLES, *(n for n in settings.VARIABLES if n not in _NOT_BEHAVIOUR)]
    return {name: os.environ[name] for name in names if name in os.environ}


def _distribution_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None


def _packaged_by_checkout(module: str) -> bool:
    """Whether top-level ``module`` is one of the packages this checkout's ``pyproject.toml`` ships."""
    included = re.search(r"(?m)^include\s*=\s*\[([^\]]*)\]", _read(PACKAGE_ROOT / "pyproject.toml"))
    patterns = re.findall(r'"([^"]+)"', included.group(1)) if included else []
    return (PACKAGE_ROOT / module).is_dir() and any(fnmatch.fnmatchcase(module, p) for p in patterns)


def _cpu_model() -> str:
    for line in _read(Path("/proc/cpuinfo")).splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or platform.machine() or UNKNOWN


def _nvidia_driver() -> str | None:
    out = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    return out.splitlines()[0].strip() if out else None


def _cuda_driver_api() -> str:
    import torch

    try:
        code = int(getattr(torch._C, "_cuda_getDriverVersion")())  # e.g. 12040 -> 12.4
        return f"{code // 1000}.{code % 1000 // 10}"
    except Exception:  # a private API: absent or failing on some builds
        return UNKNOWN


def _run(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=_PROBE_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""

