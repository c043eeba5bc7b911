"""Declared limits reach every generator: an implementation that raises on any input outside its declared
scope passes the stress suites, lifecycle, round trip, isolation and distributed mode.

``tests.fakes.narrow_impl.NarrowReference`` declares ``whole_pages`` and ``no_pipeline_fan_in`` and raises
``OutOfScope`` on a partial last page or a pipeline fan-in anywhere it can see one.  The controls show it
does raise when a test runs without the plugin's scope hook.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.stateful import run_state_machine_as_test

from harness.conformance import (
    test_concurrency, test_faults, test_isolation, test_lifecycle, test_receivers, test_round_trip, test_stateful,
)
from harness.guard import ImplementationFault
from harness.markers import fit_to_declared_scope
from strategies.cases import KvSpec, RequestSpec, TpTopology, TransferCase
from tests.fakes.narrow_impl import NarrowReference, OutOfScope

REPO_ROOT = Path(__file__).resolve().parent.parent
NARROW = "tests.fakes.narrow_impl:NarrowReference"
#: A partial last page (5 tokens on pages of 4) and two prefill stages feeding one decode stage.
OUTSIDE = TransferCase(TpTopology(2, 2, 1, prefill_pp=2, decode_pp=1), KvSpec(2, 2, torch.float32, 4),
                       RequestSpec(5, 0, 1, (0, 1), 3, (1, 2), 3), seed=0, nan_payloads=False)
GIVEN_TESTS = [
    test_lifecycle.test_lifecycle_arrival_orders, test_lifecycle.test_lifecycle_failure_is_contained,
    test_round_trip.test_round_trip_kv_copy, test_round_trip.test_round_trip_decode_handler,
    test_round_trip.test_round_trip_end_to_end, test_isolation.test_isolation_kv_copy,
    test_isolation.test_isolation_end_to_end, test_receivers.test_receivers_lifecycle,
    *(getattr(test_faults, f"test_lifecycle_faults_{name}") for name in (
        "writer_never_arrives", "partial_write_never_lands", "duplicate_completion", "release_mid_scatter",
        "oversized_chunk", "misaligned_prefix")),
]


def fitted_run(test, impl, examples: int = 15) -> None:
    """Run conformance ``@given`` test ``test`` on ``impl`` with the plugin's scope hook, as a suite run does."""
    fit_to_declared_scope(test)
    inner = test.hypothesis.inner_test
    strategies = test.hypothesis._given_kwargs

    def run(**drawn):
        inner(impl=impl, device="cpu", **drawn)

    run.__signature__ = inspect.Signature([inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY) for name in strategies])
    settings(max_examples=examples, database=None, deadline=None, derandomize=True,
             suppress_health_check=list(HealthCheck), phases=(Phase.explicit, Phase.generate))(given(**strategies)(run))()


def test_the_narrow_implementation_raises_outside_its_scope():
    """The control: without the hook, an out-of-scope case reaches it and it raises."""
    inner = test_round_trip.test_round_trip_kv_copy.hypothesis.inner_test
    unhooked = getattr(inner, "__wrapped__", inner)  # the test body without the plugin's scope hook
    with pytest.raises(OutOfScope, match="out of declared scope"):
        unhooked(impl=NarrowReference(), device="cpu", case=OUTSIDE)
    with pytest.raises(OutOfScope, match="whole_pages"):
        NarrowReference().move_request(prefill_pp=1, decode_pp=1, num_tokens=5, decode_page_size=4)
    with pytest.raises(OutOfScope, match="no_pipeline_fan_in"):
        NarrowReference().move_request(prefill_pp=2, decode_pp=1, num_tokens=4, decode_page_size=4)


@pytest.mark.parametrize("test", GIVEN_TESTS, ids=lambda t: t.__name__)
def test_given_tests_generate_inside_declared_limits(test):
    fitted_run(test, NarrowReference())


def test_state_machines_generate_inside_declared_limits():
    machine = settings(max_examples=40, stateful_step_count=20, database=None, deadline=None, derandomize=True,
                       suppress_health_check=list(HealthCheck), phases=(Phase.explicit, Phase.generate))
    run_state_machine_as_test(test_stateful.handler_machine(NarrowReference(), "cpu"), settings=machine)
    run_state_machine_as_test(test_stateful.allocator_machine(NarrowReference()), settings=machine)
    with pytest.raises(ImplementationFault, match="out of declared scope"):  # the control: unfitted, it raises
        run_state_machine_as_test(test_stateful.handler_machine(_unlimited(NarrowReference()), "cpu"), settings=machine)


def test_concurrency_and_fixed_scenarios_generate_inside_declared_limits():
    test_concurrency.run_concurrently(NarrowReference(), "cpu", seed=1, requests=12)
    test_faults.test_lifecycle_faults_regions_outlive_their_scatters(impl=NarrowReference(), device="cpu")


def _unlimited(impl):
    """``impl`` still raising outside its scope, but declaring no limits (so nothing is fitted)."""
    impl.limits = frozenset()
    return impl


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="this torch build has no gloo backend")
def test_distributed_mode_and_the_plugin_generate_inside_declared_limits(pytester, monkeypatch):
    """Through the pytest plugin, in a subprocess: distributed mode (cases drawn in the parent, run by rank
    processes that load the implementation by name) and a lifecycle test all pass."""
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    monkeypatch.setenv("KVCONFORM_HYPOTHESIS_DB", str(pytester.path / "db"))
    monkeypatch.setenv("KVCONFORM_DIST_RANKS", "4")
    result = pytester.runpytest_subprocess(
        "-p", "harness.pytest_plugin", "--pyargs", "harness.conformance.test_distributed",
        "harness.conformance.test_lifecycle", "-k", "distributed or arrival_orders", "--impl", NARROW,
        "--device", "cpu", "--kvconform-report", str(pytester.path), "-p", "no:cacheprovider", timeout=300)
    report = json.loads((pytester.path / "kvconform-report.json").read_text())
    assert report["impl"]["limits"] == ["no_pipeline_fan_in", "whole_pages"]
    assert {row["invariant"]: row["status"] for row in report["rows"] if row["status"] != "not-run"} == {
        "round_trip": "pass", "lifecycle": "pass"}, report["rows"]
    result.assert_outcomes(passed=3)
