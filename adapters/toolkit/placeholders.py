"""Stand-in modules: skip an engine's package initialisers, name globals that are never reached.

An engine's ``__init__.py`` files typically import most of the engine.  An
adapter that needs a few leaf modules registers empty placeholder packages
(with the real ``__path__``) for the parents, then imports the leaves
normally; the leaves are the engine's real code.

Invariant upheld: a placeholder never hides a module that was already
imported, and it is marked (``__kvconform_placeholder__``) so a test can tell
the engine's initialiser did not run.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

#: Attribute set on every placeholder module.
PLACEHOLDER_MARK = "__kvconform_placeholder__"


def placeholder_module(name: str, directory: Optional[Path], doc: str) -> types.ModuleType:
    """An empty module registered as ``name`` (a package searching ``directory`` when given)."""
    module = types.ModuleType(name, f"kvconform placeholder: {doc}")
    spec = importlib.machinery.ModuleSpec(name, None, is_package=directory is not None)
    if directory is not None:
        spec.submodule_search_locations = [str(directory)]
        module.__path__ = [str(directory)]
    module.__spec__ = spec
    setattr(module, PLACEHOLDER_MARK, True)
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent in sys.modules:
        setattr(sys.modules[parent], child, module)
    return module


def skip_package_initialisers(root: Path, packages: Iterable[str], doc: str) -> dict[str, types.ModuleType]:
    """Placeholders for ``packages`` (parent first) not yet imported; ``root`` is the top package's directory.

    Returns the placeholders created (already-imported packages are left alone).
    """
    created = {}
    for name in packages:
        if name not in sys.modules:
            directory = root.joinpath(*name.split(".")[1:])
            created[name] = placeholder_module(name, directory, f"{name}/__init__.py {doc}")
    return created


def never_reached(name: str, adapter: str, because: str = "this branch was not expected to run") -> Callable[..., Any]:
    """A global the engine's code names on a branch the adapter never takes; raises if called.

    The error names ``name``, ``adapter`` and ``because`` (why the branch is not taken).
    """

    def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"{adapter} does not provide {name}(); {because}")

    unavailable.__name__ = name
    return unavailable
