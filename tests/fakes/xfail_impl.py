"""Fake layout implementations for tests/test_xfails.py: one known bug, fixed, failing otherwise, a new bug.

The known bug: ``staging_layout`` refuses more than three writers with ``ValueError("more than 3 writers")``.
Standard library only, so in-process pytester runs stay fast.
"""

from __future__ import annotations


class LayoutImplementation:
    name = "xfail-fake"
    version = "1.0"
    capabilities = frozenset({"layout"})

    def __init__(self, refuse_with: type[Exception] | None = None, off_at_tokens: int | None = None) -> None:
        self.refuse_with = refuse_with
        self.off_at_tokens = off_at_tokens

    def staging_layout(self, num_writers, num_tokens, heads_per_writer, layers_per_writer, head_dim, element_size):
        if self.refuse_with is not None and num_writers > 3:
            raise self.refuse_with("more than 3 writers")
        size = 2 * layers_per_writer * num_tokens * heads_per_writer * head_dim * element_size
        shift = 1 if num_tokens == self.off_at_tokens else 0  # a different bug, elsewhere
        return [(w * size + shift * w, size) for w in range(num_writers)]


def known_bug() -> LayoutImplementation:
    """Still has the listed bug."""
    return LayoutImplementation(refuse_with=ValueError)


def fixed() -> LayoutImplementation:
    """The listed bug is fixed and nothing else is wrong."""
    return LayoutImplementation()


def other_error() -> LayoutImplementation:
    """The witness still fails, but with another error than the listed one."""
    return LayoutImplementation(refuse_with=KeyError)


def fixed_with_new_bug() -> LayoutImplementation:
    """The listed bug is fixed; a new one (wrong offsets at 9 tokens) is there instead."""
    return LayoutImplementation(off_at_tokens=9)


class StagingRefused(ValueError):
    """An implementation's own exception class: under process isolation it does not cross as itself."""


def own_exception() -> LayoutImplementation:
    """The listed bug, raised as the implementation's own ``ValueError`` subclass."""
    return LayoutImplementation(refuse_with=StagingRefused)
