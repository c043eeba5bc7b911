"""Factories that each break the plug-in contract in one way, for the loading error messages."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from tests.fakes.fake_impl import FakeImplementation


def no_capabilities():
    return object()


def unknown_capability():
    impl = FakeImplementation()
    impl.capabilities = frozenset({"layout", "kv_cpy"})
    return impl


def missing_method():
    impl = SimpleNamespace(capabilities={"kv_copy"}, gather=lambda *a: None)
    return impl


def not_callable_method():
    return SimpleNamespace(capabilities=["layout"], staging_layout=5)


def string_capabilities():
    return SimpleNamespace(capabilities="layout", staging_layout=lambda *a: [])


def raising_factory():
    raise RuntimeError("staging pool exhausted while building the fake")


def needs_arguments(device, page_size):
    return FakeImplementation()


def returns_none():
    return None


#: A ready-made (non-callable) implementation object: used as is.
READY_MADE = SimpleNamespace(name="ready-made", capabilities=("layout",), staging_layout=lambda *a: [])


def hanging_factory():
    threading.Event().wait()  # never set: the factory never returns


def exiting_factory():
    raise KeyboardInterrupt  # a factory must not end the judge's session either
