"""The version and signature pin: what an adapter relies on, checked before it runs.

An adapter names the engine release it was written against, the parameter
lists of every engine callable it calls, and the module attributes its shims
touch.  At load time every difference is collected (never just the first);
:meth:`ApiPin.require` then refuses to run on a mismatch, naming the pinned
version, the installed one and each difference, and only warns on another
version whose API matches.

Invariant upheld: the adapter never drives engine code whose API moved under
it; results are reported for the installed version.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import inspect
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

# An enum default's repr, ``<Enum.MEMBER: 'value'>``, is written ``Enum.MEMBER`` in a pin.
_ENUM_REPR = re.compile(r"<(\w+(?:\.\w+)+): [^<>]*>")


class EngineUnavailable(ImportError):
    """The engine an adapter plugs in is not installed."""


class ApiMismatch(ImportError):
    """The installed engine differs from the pinned release in something the adapter relies on."""


def installed_version(distribution: str) -> Optional[str]:
    """The installed distribution's version, or ``None`` when absent."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def package_directory(package: str, install: str, error: type[ImportError] = EngineUnavailable) -> Path:
    """An installed top-level package's directory, found without running its ``__init__``.

    Raises ``error`` naming ``install`` (the command that installs it) when absent.
    """
    loaded = sys.modules.get(package)
    if loaded is not None and getattr(loaded, "__path__", None):
        return Path(list(loaded.__path__)[0])
    spec = importlib.util.find_spec(package)  # a top-level find_spec runs no __init__
    if spec is None or not spec.submodule_search_locations:
        raise error(f"{package} is not installed; the {package} adapter needs it: {install}")
    return Path(list(spec.submodule_search_locations)[0])


def parameters_of(obj: Any) -> str:
    """``obj``'s parameter list without annotations, e.g. ``(self, room, *, x=Enum.MEMBER)``."""
    signature = inspect.signature(obj)
    bare = [p.replace(annotation=inspect.Parameter.empty) for p in signature.parameters.values()]
    text = str(signature.replace(parameters=bare, return_annotation=inspect.Signature.empty))
    return _ENUM_REPR.sub(r"\1", text)


def attribute_at(root: Any, path: str) -> Any:
    """The object a dotted ``path`` names below ``root`` (``"Class.method"``); ``AttributeError`` when missing."""
    value = root
    for part in path.split("."):
        value = getattr(value, part)
    return value


def api_differences(signatures: Mapping[str, str], attributes: Iterable[str],
                    resolve: Callable[[str], Any]) -> list[str]:
    """Every pinned signature that changed or vanished and every pinned attribute that vanished.

    ``resolve`` turns a pin key into the object; it raises ``AttributeError``
    or ``KeyError`` for a missing one.
    """
    problems = []
    for name, expected in signatures.items():
        try:
            found = parameters_of(resolve(name))
        except (AttributeError, KeyError):
            problems.append(f"{name} is missing")
            continue
        if found != expected:
            problems.append(f"{name} signature changed: expected {expected}, found {found}")
    for name in attributes:
        try:
            resolve(name)
        except (AttributeError, KeyError):
            problems.append(f"{name} is missing")
    return problems


@dataclass(frozen=True)
class ApiPin:
    """The engine release an adapter targets, and where to look when its API moved."""

    distribution: str  #: e.g. ``"sglang"``
    version: str  #: the release the adapter was written and checked against
    install: str  #: the command installing that release
    sources: str  #: what to update for a new release, e.g. ``"adapters/sglang/ and docs/sglang.md"``

    def require(self, installed: Optional[str], problems: Sequence[str],
                error: type[ApiMismatch] = ApiMismatch, stacklevel: int = 3) -> None:
        """Raise ``error`` naming every difference; warn when another version matches."""
        adapter = f"kvconform's {self.distribution} adapter targets {self.distribution} {self.version}"
        if problems:
            bullets = "".join(f"\n  - {p}" for p in problems)
            raise error(
                f"{adapter}; the installed {self.distribution} {installed} differs:{bullets}\n"
                f"Install {self.distribution}=={self.version} ({self.install}) or update {self.sources}."
            )
        if installed != self.version:
            warnings.warn(f"{adapter}, found {installed}; its API matches, results are reported for the "
                          "installed version", stacklevel=stacklevel + 1)
