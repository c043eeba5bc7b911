"""Meta-tests of the stress suites: each deliberately broken implementation is caught, on the right invariant.

The conformance functions are called directly with ``impl=<broken>`` (state
machines through ``run_state_machine_as_test``), derandomized so that a run
is reproducible, and the raised error must carry the invariant's tag.  The
shrunk counterexample (for state machines: the step sequence) is printed;
see it with ``pytest -s``.  Correct implementations (the reference, and a
correct handler with an asynchronous CPU scatter) must pass the same runs.

Bugs visible only with real CUDA streams (``FreesRightAfterLaunch``,
``ReleaseSkipsScatterWait``) are checked by the ``cuda``-marked tests, which
skip without a GPU.
"""

from __future__ import annotations

import functools
import inspect
import json
import threading
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.stateful import run_state_machine_as_test

from harness import guard
from harness.conformance import test_concurrency, test_faults, test_stateful
from harness.oracles import InvariantViolation
from reference.plugin import ReferenceImplementation
from tests.broken_stress import allocator, lifecycle, misbehaving, threading_bugs
from tests.meta_support import attributed

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Runs of the concurrency test per implementation (the interleaving differs on every run).
CONCURRENT_RUNS = 12


def meta_settings(examples: int, steps: int = 8) -> settings:
    """Reproducible (derandomized), no example database, short machines; no explain phase (it reruns under a
    tracer and would triple the time)."""
    return settings(max_examples=examples, stateful_step_count=steps, database=None, deadline=None, derandomize=True,
                    report_multiple_bugs=False, suppress_health_check=list(HealthCheck),
                    phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink))


def caught(test, run, tag: str, *fragments: str) -> str:
    """Run ``run`` (a run of conformance test ``test``); it must fail with an InvariantViolation, attributed to
    ``test``'s invariant as in a suite run, whose message starts with ``tag`` and mentions ``fragments``.
    Returns (and prints) the message with Hypothesis's counterexample."""
    with pytest.raises(InvariantViolation) as info:
        attributed(test, run)()
    message = str(info.value)
    report = "\n".join([message, *getattr(info.value, "__notes__", [])])
    print(report)
    assert message.startswith(tag), report
    for fragment in fragments:
        assert fragment in message, report
    return report


HANDLER_MACHINE = test_stateful.test_lifecycle_handler_state_machine
OUTLIVE = test_faults.test_lifecycle_faults_regions_outlive_their_scatters
CONCURRENT = test_concurrency.test_concurrency_transfer_and_scheduler_threads


def handler_machine_run(impl, examples: int = 200):
    return lambda: run_state_machine_as_test(test_stateful.handler_machine(impl, "cpu"), settings=meta_settings(examples))


def given_run(test, impl, examples: int = 50):
    """Run a conformance ``@given`` test with ``impl`` under :func:`meta_settings`.

    A fresh ``@given`` over the test's own function and strategies: applying
    ``settings`` to the conformance test itself would change it for the rest of
    the process (and a second application is an error).
    """
    inner = test.hypothesis.inner_test

    @functools.wraps(inner)
    def run(**drawn):
        inner(impl=impl, device="cpu", **drawn)

    del run.__wrapped__  # Hypothesis must see only the drawn arguments
    run.__signature__ = inspect.Signature([inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY)
                                           for name in test.hypothesis._given_kwargs])
    return lambda: meta_settings(examples)(given(**test.hypothesis._given_kwargs)(run))()


def steps_of(report: str) -> list[str]:
    """The state machine steps of a failure report (invariant checks left out)."""
    return [line for line in report.splitlines()
            if line.startswith(("state.", "requests_")) and "bytes_and_allocations" not in line and "check_ledger" not in line]


# -- the five lifecycle bugs, each with its shrunk step sequence -----------------------------
def test_watermark_past_a_live_allocation_is_caught():
    report = caught(test_stateful.test_allocator_state_machine, lambda: run_state_machine_as_test(
        test_stateful.allocator_machine(allocator.WatermarkPastLiveAllocation()), settings=meta_settings(200)),
        "[allocator]", "ahead of")
    assert any(step.startswith(("state.free", "state.drain")) for step in steps_of(report)), report  # after a free


def test_free_before_scatter_completes_is_caught():
    report = caught(HANDLER_MACHINE, handler_machine_run(lifecycle.FreesBeforeScatterCompletes()), "[lifecycle] request")
    assert len(steps_of(report)) <= 6, report


def test_double_scatter_on_duplicate_arrival_is_caught():
    report = caught(HANDLER_MACHINE, handler_machine_run(lifecycle.DoubleScatterOnDuplicate()), "[lifecycle] request")
    assert steps_of(report), report
    test = test_faults.test_lifecycle_faults_duplicate_completion
    caught(test, given_run(test, lifecycle.DoubleScatterOnDuplicate()), "[lifecycle] request",
           "scattered after its region was freed")


def test_leak_on_abort_is_caught():
    report = caught(HANDLER_MACHINE, handler_machine_run(lifecycle.LeakOnAbort()), "[lifecycle]")
    assert any("abort" in step for step in steps_of(report)), report
    test = test_faults.test_lifecycle_faults_partial_write_never_lands
    caught(test, given_run(test, lifecycle.LeakOnAbort()), "[lifecycle]", "held")


def test_one_failed_request_corrupting_another_is_caught():
    report = caught(HANDLER_MACHINE, handler_machine_run(lifecycle.FailureFreesNeighbours()), "[lifecycle]")
    assert steps_of(report), report
    test = test_faults.test_lifecycle_faults_oversized_chunk
    caught(test, given_run(test, lifecycle.FailureFreesNeighbours()), "[lifecycle]",
           "freed while the request is pending")


# -- correct implementations pass the same runs ------------------------------------------------
@pytest.mark.parametrize("impl", [ReferenceImplementation(), lifecycle.AsyncScatterReference()],
                         ids=["reference", "async-scatter-reference"])
def test_correct_handlers_pass(impl):
    run_state_machine_as_test(test_stateful.handler_machine(impl, "cpu"), settings=meta_settings(60, steps=25))
    run_state_machine_as_test(test_stateful.allocator_machine(impl), settings=meta_settings(60, steps=25))
    for name in ("writer_never_arrives", "partial_write_never_lands", "duplicate_completion",
                 "release_mid_scatter", "oversized_chunk", "misaligned_prefix"):
        given_run(getattr(test_faults, f"test_lifecycle_faults_{name}"), impl, examples=15)()
    OUTLIVE(impl=impl, device="cpu")


# -- concurrency ---------------------------------------------------------------------------------
def test_thread_unsafe_handler_fails_every_run_and_reference_passes_every_run():
    for run in range(CONCURRENT_RUNS):
        seed = test_concurrency.SEEDS[run % len(test_concurrency.SEEDS)]
        test_concurrency.run_concurrently(ReferenceImplementation(), "cpu", seed)
        caught(CONCURRENT, lambda: test_concurrency.run_concurrently(threading_bugs.ThreadUnsafeHandler(), "cpu", seed),
               "[concurrency]")


# -- the harness survives misbehaving implementations --------------------------------------------
def test_raising_implementation_is_reported_on_the_method_invariant():
    caught(HANDLER_MACHINE, handler_machine_run(misbehaving.RaisesOnDuplicate()), "[lifecycle] handler.chunk_arrived(",
           "raised KeyError")


def test_garbage_answers_are_reported():
    caught(OUTLIVE, lambda: OUTLIVE(impl=misbehaving.PollReturnsCodes(), device="cpu"),
           "[lifecycle] handler.poll(", "returned garbage", "not one of 'pending', 'done', 'failed'")


def test_out_of_bounds_write_hits_the_canaries():
    caught(OUTLIVE, lambda: OUTLIVE(impl=misbehaving.ClearsPastRegionEnd(), device="cpu"),
           "[lifecycle] staging ring wrote outside its buffer")


def test_hang_is_reported_and_the_call_abandoned(monkeypatch):
    monkeypatch.setenv(guard.TIMEOUT_ENV_VAR, "0.5")
    guard.forget_hangs()
    started = time.monotonic()
    caught(OUTLIVE, lambda: OUTLIVE(impl=misbehaving.HangsInPoll(), device="cpu"),
           "[lifecycle] handler.poll(", "hung: no return within 0.5s")
    assert time.monotonic() - started < 5


def test_suite_keeps_running_past_a_hanging_implementation(pytester, monkeypatch):
    """A whole conformance run against a hanging handler finishes: the handler tests fail on lifecycle with
    the hang and a repro, the allocator test still runs and passes."""
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    monkeypatch.delenv("KVCONFORM_PROFILE", raising=False)
    monkeypatch.setenv(guard.TIMEOUT_ENV_VAR, "0.5")
    monkeypatch.setenv(guard.AFTER_HANG_ENV_VAR, "0.01")
    monkeypatch.setenv("KVCONFORM_HYPOTHESIS_DB", str(pytester.path / "db"))
    started = time.monotonic()
    result = pytester.runpytest_subprocess(
        "-p", "harness.pytest_plugin", "--pyargs", "harness.conformance.test_stateful",
        "harness.conformance.test_faults", "-k", "allocator_state_machine or oversized or regions_outlive",
        "--impl", "tests.broken_stress.misbehaving:HangsInPoll", "--device", "cpu",
        "--kvconform-report", str(pytester.path), "-p", "no:cacheprovider", timeout=300)
    report = json.loads((pytester.path / "kvconform-report.json").read_text())
    rows = {row["invariant"]: row for row in report["rows"]}
    assert rows["allocator"]["status"] == "pass", rows
    assert rows["lifecycle"]["status"] == "fail", rows
    failures = [f for f in report["failures"] if f["invariant"] == "lifecycle"]
    assert len(failures) == 2 and all("hung" in f["error"] for f in failures), failures
    assert any(f.get("counterexample") or f.get("reproduce_failure") for f in failures), failures
    result.assert_outcomes(passed=1, failed=2)
    print(f"suite finished in {time.monotonic() - started:.1f}s:", *(f["error"][:160] for f in failures), sep="\n")


# -- CUDA: a region freed before its side-stream scatter completed ----------------------------------
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA streams")


@cuda
@pytest.mark.parametrize("broken", [lifecycle.FreesRightAfterLaunch, lifecycle.ReleaseSkipsScatterWait])
def test_early_free_with_real_streams_is_caught(broken):
    caught(OUTLIVE, lambda: OUTLIVE(impl=broken(), device="cuda"), "[lifecycle]")


@cuda
def test_reference_passes_with_real_streams():
    OUTLIVE(impl=ReferenceImplementation(), device="cuda")
    for seed in test_concurrency.SEEDS:
        test_concurrency.run_concurrently(ReferenceImplementation(), "cuda", seed)


# -- the guard itself ----------------------------------------------------------------------------
class _Spinner:
    """An allocator factory whose allocators spin forever in Python, or block forever in C."""

    capabilities = frozenset({"allocator"})

    def __init__(self, how: str) -> None:
        self.how = how
        self.ready = False  # never set

    def make_allocator(self, capacity):
        return self

    def writer_may_write(self, alloc_round, alloc_end, watermark):
        if self.how == "spin":
            while not self.ready:
                pass
        threading.Event().wait()

    def assign(self, nbytes):
        return None

    def free(self, alloc_id):
        pass

    def watermark(self):
        return (0, 0)


@pytest.mark.parametrize("how", ["spin", "block"])
def test_guard_reports_a_hang_and_stops_a_spinning_call(monkeypatch, how):
    monkeypatch.setenv(guard.TIMEOUT_ENV_VAR, "0.3")
    guarded, earlier = guard.guard(_Spinner(how)), set(threading.enumerate())
    with pytest.raises(guard.ImplementationFault, match=r"^impl.writer_may_write\(0, 1, \(0, 0\)\) hung"):
        guarded.writer_may_write(0, 1, (0, 0))
    with pytest.raises(guard.ImplementationFault, match="already hung before, short deadline"):
        guarded.writer_may_write(0, 1, (0, 0))
    if how == "spin":  # a call spinning in Python is interrupted; one blocked in C is left behind, harmlessly
        deadline = time.monotonic() + 5
        while (spinning := [t for t in threading.enumerate() if t.name == "kvconform-call" and t not in earlier]) \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not spinning, spinning
    assert guarded.watermark() == (0, 0)  # the guard still serves the implementation


def test_guard_lets_expected_errors_through_when_asked():
    class Strict:
        capabilities = frozenset({"layout"})

        def staging_layout(self, *args):
            raise ValueError("prefill TP 3 does not divide 8 heads: use 1, 2, 4 or 8")

    with pytest.raises(guard.ImplementationFault, match=r"^impl.staging_layout\(.*raised ValueError"):
        guard.guard(Strict()).staging_layout(1, 1, 1, 1, 1, 4)
    with pytest.raises(ValueError, match="does not divide"):
        guard.guard(Strict(), convert_errors=False).staging_layout(1, 1, 1, 1, 1, 4)


def test_guard_keeps_calls_from_two_threads_concurrent():
    """Each calling thread has its own helper: two calls that wait for each other both finish."""
    both = threading.Barrier(2, timeout=5)

    class Meeting:
        capabilities = frozenset({"allocator"})

        def writer_may_write(self, *args):
            both.wait()
            return True

    guarded, results = guard.guard(Meeting()), []
    threads = [threading.Thread(target=lambda: results.append(guarded.writer_may_write(0, 1, (0, 0)))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == [True, True]
