"""Running a conformance test against a deliberately broken implementation."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable

from hypothesis import HealthCheck, Phase, settings

from harness.oracles import attribute
from harness.markers import parse_invariant_marker

#: Deterministic and patient: a meta-test must not depend on luck.
META_SETTINGS = dict(max_examples=300, database=None, deadline=None, derandomize=True,
                     suppress_health_check=list(HealthCheck), print_blob=True, report_multiple_bugs=False)


@contextmanager
def hypothesis_settings(test: Callable[..., Any], **overrides: Any):
    """Run ``@given`` test ``test`` under its own settings with ``overrides``, then restore them.

    ``@given`` binds ``settings.default`` when the conformance module is imported
    (the session's profile), so loading a profile afterwards does not reach the
    test: meta-tests used to run with the session's random 25 examples and its
    example database instead of ``META_SETTINGS``, and flaked.  The settings
    are swapped on the test itself for the duration of the call.
    """
    saved = test._hypothesis_internal_use_settings  # type: ignore[attr-defined]
    test._hypothesis_internal_use_settings = settings(saved, **overrides)  # type: ignore[attr-defined]
    try:
        yield
    finally:
        test._hypothesis_internal_use_settings = saved  # type: ignore[attr-defined]


def invariant_of(test: Callable[..., Any]) -> str:
    """The invariant id of a conformance test's ``invariant`` marker."""
    marks = [m for m in getattr(test, "pytestmark", ()) if m.name == "invariant"]
    if not marks:
        raise ValueError(f"{test.__name__} has no @pytest.mark.invariant marker")
    return parse_invariant_marker(marks[0])[0]


def attributed(test: Callable[..., Any], run: Callable[[], None]) -> Callable[[], None]:
    """``run``, with a failure attributed to ``test``'s marker as the pytest plugin does in a suite run."""
    def call() -> None:
        try:
            run()
        except Exception as exc:
            attribute(exc, invariant_of(test))
            raise
    return call


def _messages(exc: BaseException) -> list[str]:
    subs = getattr(exc, "exceptions", None)
    if subs:
        return [m for sub in subs for m in _messages(sub)]
    return [str(exc)]


def failure_of(test: Callable[..., None], impl: Any, max_examples: int = META_SETTINGS["max_examples"],
               shrink: bool = False, **kwargs: Any) -> str:
    """Run a conformance test on ``impl``; return its failure message ('' if it passed).

    Without ``shrink`` the first failing example is reported as found: a meta-test
    asks whether the suite catches a bug, not for the smallest example of it.
    """
    phases = tuple(Phase) if shrink else (Phase.explicit, Phase.reuse, Phase.generate)
    with hypothesis_settings(test, **{**META_SETTINGS, "max_examples": max_examples, "phases": phases}):
        try:
            attributed(test, lambda: test(impl=impl, **kwargs))()
        except Exception as exc:  # noqa: BLE001 - the failure is the result
            return "\n".join(_messages(exc))
    return ""
