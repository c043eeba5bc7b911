"""The ``invariant`` marker: parsing it, attributing a failure to it, fitting drawn values into declared scope.

One place turns a conformance test's ``@pytest.mark.invariant`` into what the run needs: the invariant id
and required capabilities, the catalogue version that added the test (``since=``), the id prefixed to the test's violations (``oracles.attribute``), the declared
scope limits applied to every value Hypothesis draws for it, and the order ``--exitfirst`` runs tests in.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest

from harness import case_classes, scope
from harness.catalogue import BY_ID, FIRST_CATALOGUE_VERSION, parse_catalogue_version
from harness.interface import CAPABILITIES
from harness.oracles import attribute

#: Fixtures that start processes (distributed mode): run last under --exitfirst.
_PROCESS_FIXTURES = frozenset({"worker_group"})

#: ``--exitfirst`` runs these tests first, in this order: cheapest first among those that caught the most broken
#: implementations in bench/detection.py (on 0b7b1c6: layout 2, bad topology 2, the threaded concurrency
#: workload 15, registration 2, allocator 4, kv_copy round trip 4, misaligned prefix 2, end-to-end 2 of 34; a
#: whole gate run of each test below takes 0.2-5 s against the reference, isolated, on 2 CPU cores).
#: The tests not listed follow in collection order; those that start processes come last.
FAIL_FAST_FIRST = (
    "test_layout_spans",
    "test_bad_topology_head_mapping",
    "test_concurrency_transfer_and_scheduler_threads",
    "test_receivers_registration",
    "test_allocator_program",
    "test_round_trip_kv_copy",
    "test_lifecycle_faults_misaligned_prefix",
    "test_round_trip_end_to_end",
    "test_isolation_end_to_end_page_sizes_and_prefix_hits",
    "test_receivers_lifecycle",
    "test_head_coverage_mapping",
    "test_head_coverage_data",
)


def fail_fast_order(items: list[pytest.Item]) -> list[pytest.Item]:
    """``--exitfirst``: :data:`FAIL_FAST_FIRST` first, then the rest in collection order, tests that must start
    processes last (a stable sort, the same on every xdist worker).  Only *when* a failure is found changes;
    every test's examples do not."""
    first = {name: rank for rank, name in enumerate(FAIL_FAST_FIRST)}

    def key(item: pytest.Item) -> tuple[bool, int]:
        name = getattr(item, "originalname", None) or item.name
        return bool(_PROCESS_FIXTURES & set(getattr(item, "fixturenames", ()))), first.get(name, len(first))

    return sorted(items, key=key)


def parse_invariant_marker(marker: pytest.Mark) -> tuple[str, tuple[str, ...]]:
    """``(invariant id, required capabilities)`` of an ``invariant`` marker, validated."""
    args = list(marker.args)
    invariant = marker.kwargs.get("id", args.pop(0) if args else None)
    requires = marker.kwargs.get("requires", args.pop(0) if args else ())
    if invariant not in BY_ID:
        raise ValueError(f"unknown invariant id {invariant!r}; valid ids: {', '.join(BY_ID)}")
    if isinstance(requires, str):
        requires = (requires,)
    unknown = [cap for cap in requires if cap not in CAPABILITIES]
    if unknown:
        raise ValueError(f"unknown capability {unknown[0]!r} in requires; valid: {', '.join(CAPABILITIES)}")
    since_of(marker)
    return invariant, tuple(requires)


def since_of(marker: pytest.Mark) -> str:
    """The catalogue version that added the marked test (``since=``; the first version when absent, which
    ``tests/test_spec_version.py`` forbids in harness/conformance); ``ValueError`` for an unknown version."""
    since = marker.kwargs.get("since", FIRST_CATALOGUE_VERSION)
    try:
        parse_catalogue_version(since)
    except ValueError as exc:
        raise ValueError(f"since={since!r}: {exc}") from None
    return since


def attribute_to_marker(item: pytest.Item, exc: BaseException) -> None:
    """Tag a failure's violations with the invariant of the test's marker (see ``oracles.attribute``)."""
    marker = item.get_closest_marker("invariant")
    if marker is not None:
        attribute(exc, parse_invariant_marker(marker)[0])


_FITS_SCOPE = "_kvconform_fits_scope"
_CASE_LOG = "_kvconform_case_log"


def fit_to_declared_scope(test: Any) -> None:
    """Make Hypothesis test ``test`` run every drawn value inside the implementation's declared limits.

    Wraps its ``inner_test`` (the function Hypothesis calls with fixtures and drawn arguments; idempotent):
    with the implementation taken from the ``impl`` or ``loaded_impl`` argument, every argument is passed
    through ``scope.fit`` (``TransferCase`` and ``RankShape`` values, inside tuples and lists too).  The
    only place limits reach ``@given`` tests; the engine fits what state machines draw.  Every call goes
    through the test's :class:`harness.replay.CaseLog` (:func:`case_log`): stored cases replayed first are
    recognised there, and generated failures kept for ``--corpus-out``.  The arguments as run then label the
    test case with their case classes (``harness.case_classes``).
    """
    from hypothesis import note

    from harness.replay import CaseLog

    handle = getattr(test, "hypothesis", None)
    inner = getattr(handle, "inner_test", None)
    if handle is None or inner is None or getattr(inner, _FITS_SCOPE, False):
        return
    log = CaseLog()

    def fit_and_call(*args: Any, **kwargs: Any) -> Any:
        impl = kwargs.get("impl", getattr(kwargs.get("loaded_impl"), "implementation", None))
        if impl is not None and scope.declared_limits(impl):
            fitted_kwargs = {name: scope.fit(impl, value) for name, value in kwargs.items()}
            for name, value in fitted_kwargs.items():
                if value != kwargs[name]:  # the printed counterexample shows the drawn value: say what ran
                    note(f"{name} as run within the declared limits: {value!r}")
            kwargs = fitted_kwargs
        case_classes.label_arguments(kwargs)
        return inner(*args, **kwargs)

    @functools.wraps(inner)
    def fitted(*args: Any, **kwargs: Any) -> Any:
        return log.around(functools.partial(fit_and_call, *args), kwargs)

    setattr(fitted, _FITS_SCOPE, True)
    setattr(test, _CASE_LOG, log)
    handle.inner_test = fitted


def case_log(test: Any) -> Any:
    """The :class:`harness.replay.CaseLog` of a test :func:`fit_to_declared_scope` wrapped, else ``None``."""
    return getattr(test, _CASE_LOG, None)
