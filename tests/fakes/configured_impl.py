"""Fake implementations declaring configurations (``harness.loading``), for tests/test_configurations.py and
tests/test_spec_version.py.

``make_implementation`` declares two: ``whole`` is correct and declares the ``whole_pages`` limit; ``broken``
has ``fake_impl``'s planted layout bug and declares no limit.  Both handle only whole pages
(:meth:`_Correct.move`), so a partial-page case reaches ``broken`` (no limit: it fails) and never ``whole``
(its own limit fits every drawn case).  ``make_old_target`` targets catalogue version 1.0.
Standard library only, like ``fake_impl``.
"""

from __future__ import annotations

from tests.fakes.fake_impl import FakeImplementation


class _Correct(FakeImplementation):
    def staging_layout(self, num_writers, num_tokens, heads_per_writer, layers_per_writer, head_dim, element_size):
        size = 2 * layers_per_writer * num_tokens * heads_per_writer * head_dim * element_size
        return [(w * size, size) for w in range(num_writers)]

    def move(self, num_tokens: int, page_size: int) -> None:
        """Stands for a transfer that moves whole pages only."""
        if num_tokens % page_size:
            raise NotImplementedError(f"{self.name}: {num_tokens} tokens are not whole pages of {page_size}")


class WholePages(_Correct):
    name = "fake whole pages"
    limits = frozenset({"whole_pages"})


class Broken(_Correct):
    name = "fake broken"
    staging_layout = FakeImplementation.staging_layout  # the planted bug from writer slot 2


class TwoConfigurations:
    name = "fake-configured 2.0"
    configurations = {"whole": WholePages, "broken": Broken}


def make_implementation() -> TwoConfigurations:
    return TwoConfigurations()


class OldTarget(WholePages):
    """Correct within its limit, and targets catalogue 1.0: a failing test added later is "new since your version"."""

    name = "fake old target"
    catalogue_version = "1.0"


def make_old_target() -> OldTarget:
    return OldTarget()


class OldTargetConfigurations:
    """Targets 1.0 once, for both configurations (read from the declaring object)."""

    name = "fake-configured-old 1.0"
    catalogue_version = "1.0"
    configurations = {"whole": WholePages, "broken": Broken}


def make_bad_target():
    return type("BadTarget", (WholePages,), {"name": "bad target", "catalogue_version": "9.9"})()


def make_bad_names():
    return type("BadNames", (), {"configurations": {"a,b": WholePages}})()
