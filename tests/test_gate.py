"""The ``gate`` lane: a deterministic profile, fail-fast runs, and the nondeterminism sources it closes.

What is proven here: the gate profile's settings and every way to select it;
two gate runs of a suite in fresh processes with different string-hash seeds
give the same verdict (per-test outcome and example count, rows, failures);
draws no longer depend on which local modules a process imported before;
meta-tests really run under ``META_SETTINGS``; ``--exitfirst`` stops at the
first failure and still writes the report with that failure and its repro,
in one process and under pytest-xdist.  Timing is measured by
bench/gate_determinism.py and bench/detection.py, not here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import Phase, given, settings, strategies as st

from harness import cli, profiles
from harness import settings as kvconform_settings
from tests.meta_support import failure_of

REPO_ROOT = Path(__file__).resolve().parent.parent
FAKE = "tests.fakes.fake_impl:make_implementation"
CASES = REPO_ROOT / "tests" / "fakes" / "conformance_cases.py"


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO_ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def kvconform(cwd: Path, *args: str, hash_seed: str = "0", conformance_dir: Path | None = None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVCONFORM_") and k != "CI"}
    env.update(PYTHONPATH=str(REPO_ROOT), PYTHONHASHSEED=hash_seed)
    if conformance_dir is not None:
        env[kvconform_settings.CONFORMANCE_DIR] = str(conformance_dir)
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture
def fake_suite(tmp_path: Path) -> Path:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "test_fake_conformance.py").write_text(CASES.read_text())
    return tmp_path / "conf"


# -- the profile ---------------------------------------------------------------------------------
def test_gate_profile_is_derandomized_budgeted_databaseless_and_prints_blobs():
    gate = settings.get_profile(profiles.GATE)
    assert gate.derandomize and gate.database is None and gate.print_blob
    assert gate.max_examples == profiles.GATE_EXAMPLES == profiles.PROFILE_EXAMPLES["gate"]
    assert not gate.report_multiple_bugs, "a time-boxed hunt for more bugs makes example counts machine-dependent"
    assert Phase.explain not in gate.phases and Phase.generate in gate.phases and Phase.shrink in gate.phases
    assert gate.deadline is None
    default = settings.get_profile("default")
    assert not default.derandomize and default.database is not None, "the other lanes keep their database"


def test_gate_is_selectable_from_the_environment_and_both_cli_spellings(tmp_path):
    assert kvconform_settings.parse({kvconform_settings.PROFILE: "gate"}).profile == "gate"
    with pytest.raises(kvconform_settings.SettingsError, match="gate"):  # the error lists it as valid
        kvconform_settings.parse({kvconform_settings.PROFILE: "gtae"})
    for spelling in ("--profile", "--hypothesis-profile"):
        args = cli.build_parser("kvconform").parse_args([spelling, "gate", "--exitfirst"])
        pytest_args = cli._pytest_arguments(args, [], "kvconform", cli.conformance_directory())
        assert pytest_args[pytest_args.index("--hypothesis-profile") + 1] == "gate"
        assert "--exitfirst" in pytest_args


# -- determinism ---------------------------------------------------------------------------------
def test_two_gate_runs_in_fresh_processes_give_identical_verdicts(tmp_path, fake_suite):
    """Different PYTHONHASHSEED per run; the fake suite has a Hypothesis failure (layout) and passes."""
    determinism = _bench("gate_determinism")
    verdicts = []
    for seed in ("1", "2"):
        out = tmp_path / f"run{seed}"
        run = kvconform(tmp_path, "--impl", FAKE, "--profile", "gate", "--report-dir", str(out),
                        "--junitxml", str(out / "junit.xml"), hash_seed=seed, conformance_dir=fake_suite)
        assert run.returncode == cli.EXIT_FAILED, run.stdout[-3000:] + run.stderr[-2000:]
        verdicts.append(determinism.verdict(out))
    assert determinism.differences(*verdicts) == []
    layout = next(t for name, t in verdicts[0]["tests"].items() if name.endswith("test_layout_offsets"))
    assert layout["outcome"] == "failure" and int(layout["examples"]) > 0, verdicts[0]


def test_verdict_comparison_reports_a_difference():
    """The comparison can fail: a changed outcome or example count is named."""
    determinism = _bench("gate_determinism")
    base = {"tests": {"t": {"outcome": "passed", "examples": "20"}}, "rows": {}, "failures": [], "exit_status": 0}
    other = {**base, "tests": {"t": {"outcome": "passed", "examples": "19"}}}
    assert determinism.differences(base, other) == ["tests t: {'outcome': 'passed', 'examples': '20'} != "
                                                    "{'outcome': 'passed', 'examples': '19'}"]


_DRAWN: list[tuple[int, ...]] = []


@settings(max_examples=300, derandomize=True, database=None)
@given(st.tuples(*[st.integers(-10**9, 10**9)] * 8))
def _draw(values):
    _DRAWN.append(values)


def _draws() -> list[tuple[int, ...]]:
    _DRAWN.clear()
    _draw()
    return list(_DRAWN)


def test_draws_do_not_depend_on_local_modules_imported_since(tmp_path, monkeypatch):
    """Hypothesis mixes constants of imported local modules into draws; kvconform pins that pool empty."""
    before = _draws()
    (tmp_path / "kvconform_constants_probe.py").write_text(
        "CONSTANTS = (" + ", ".join(str(7919 * k + 13) for k in range(400)) + ")\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("kvconform_constants_probe")
    assert _draws() == before


def test_unpinned_pool_would_change_the_draws(tmp_path, monkeypatch):
    """The control for the test above: with Hypothesis's own pool, the same import changes the draws."""
    from hypothesis.internal.conjecture import providers

    pinned = providers._get_local_constants
    original = getattr(providers, "_kvconform_original_get_local_constants", None)
    if original is None:
        pytest.fail("profiles.pin_local_constants must keep Hypothesis's function as "
                    "providers._kvconform_original_get_local_constants for this control")
    monkeypatch.setattr(providers, "_get_local_constants", original)
    providers.CONSTANTS_CACHE.cache.clear()
    try:
        before = _draws()
        (tmp_path / "kvconform_constants_probe2.py").write_text(
            "CONSTANTS = (" + ", ".join(str(7919 * k + 17) for k in range(400)) + ")\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        importlib.import_module("kvconform_constants_probe2")
        assert _draws() != before
    finally:
        providers.CONSTANTS_CACHE.cache.clear()
        monkeypatch.setattr(providers, "_get_local_constants", pinned)


_CALLS: list[int] = []


@given(st.integers())
def _conformance_like(impl, x):
    _CALLS.append(x)


def test_meta_settings_reach_a_given_test_bound_at_import():
    """``@given`` binds the session profile at import; meta-tests must still run their own settings."""
    before = _conformance_like._hypothesis_internal_use_settings
    _CALLS.clear()
    assert failure_of(_conformance_like, object(), max_examples=7) == ""
    assert len(_CALLS) == 7, "META_SETTINGS did not reach the test: it ran with the session profile"
    first = list(_CALLS)
    _CALLS.clear()
    failure_of(_conformance_like, object(), max_examples=7)
    assert _CALLS == first, "derandomized meta runs must draw the same examples"
    assert _conformance_like._hypothesis_internal_use_settings is before


# -- fail fast -----------------------------------------------------------------------------------
BROKEN = "tests.broken.mapping:SwappedWriterSlots"
SELECTION = ("test_layout.py", "test_bad_topology.py")  # layout fails first; bad_topology never runs


@pytest.mark.parametrize("workers", [(), ("-n", "2")], ids=["one-process", "xdist"])
def test_exitfirst_stops_at_the_first_failure_and_reports_it_with_its_repro(tmp_path, workers):
    run = kvconform(tmp_path, "--impl", BROKEN, "--profile", "gate", "-x", "--device", "cpu", *workers, *SELECTION)
    assert run.returncode == cli.EXIT_FAILED, run.stdout[-3000:] + run.stderr[-2000:]
    report = json.loads((tmp_path / "kvconform-report.json").read_text())
    assert report["completion"]["state"] == "complete"
    assert "--exitfirst" in report["completion"]["note"]
    failures = report["failures"]
    assert [f["invariant"] for f in failures] == ["layout"], failures
    # The corpus holds this broken implementation's shrunk case (corpus/test_layout_spans/): it fails first, so
    # the repro replays that case instead of a Hypothesis blob.
    assert failures[0]["counterexample"] and (failures[0]["reproduce_failure"] or failures[0]["case_file"])
    assert failures[0]["repro"].startswith(f"python -m harness --impl {BROKEN} --profile gate ")
    if failures[0]["case_file"]:
        assert f"--replay-case {failures[0]['case_file']}" in failures[0]["repro"]
    rows = {r["invariant"]: r["status"] for r in report["rows"]}
    assert rows["layout"] == "fail", rows
    if not workers:  # under xdist the other worker may already have run bad_topology
        assert rows["bad_topology"] == "not-run", rows
    assert "stopped at the first failure" in (tmp_path / "kvconform-report.md").read_text()


def test_exitfirst_help_is_documented(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "--exitfirst" in capsys.readouterr().out


def test_detection_benchmark_discovers_every_broken_implementation():
    detection = _bench("detection")
    found = {c.spec: c for c in detection.discover()}
    assert "tests.broken.mapping:SwappedWriterSlots" in found
    assert found["tests.broken_stress.lifecycle:AsyncScatterReference"].role == "control"
    assert found["tests.broken.device:SyncsInHotPath"].needs_cuda
    assert not any(spec.endswith(("LazyStream", "LazyEvent", "HeadRoundRing")) for spec in found), found
    assert textwrap.dedent(detection.__doc__).count("--exitfirst") >= 1


def test_exitfirst_order_runs_process_spawning_tests_last_and_keeps_the_rest():
    from types import SimpleNamespace

    from harness.markers import fail_fast_order

    spawning = SimpleNamespace(name="distributed", fixturenames=["impl", "worker_group"])
    first, second = SimpleNamespace(name="a", fixturenames=["impl"]), SimpleNamespace(name="b", fixturenames=[])
    ordered = fail_fast_order([spawning, first, second])  # type: ignore[arg-type]
    assert [item.name for item in ordered] == ["a", "b", "distributed"]


def test_exitfirst_order_runs_the_cheap_broad_tests_first_in_their_listed_order():
    from types import SimpleNamespace

    from harness.markers import FAIL_FAST_FIRST, fail_fast_order

    def item(name, *fixtures):
        return SimpleNamespace(name=f"{name}[cpu]", originalname=name, fixturenames=["impl", *fixtures])

    late, cheap, cheaper = item("test_path_equivalence"), item(FAIL_FAST_FIRST[1]), item(FAIL_FAST_FIRST[0])
    spawning = item("test_distributed_round_trip", "worker_group")
    ordered = fail_fast_order([spawning, late, cheap, cheaper])  # type: ignore[list-item]
    assert [i.originalname for i in ordered] == [FAIL_FAST_FIRST[0], FAIL_FAST_FIRST[1], "test_path_equivalence",
                                                 "test_distributed_round_trip"]


def test_exitfirst_order_names_only_tests_of_the_suite():
    import re

    from harness.markers import FAIL_FAST_FIRST

    suite = Path(__file__).resolve().parents[1] / "harness" / "conformance"
    defined = {m for path in suite.glob("test_*.py") for m in re.findall(r"^def (test_\w+)", path.read_text(), re.M)}
    assert set(FAIL_FAST_FIRST) <= defined, set(FAIL_FAST_FIRST) - defined
    assert len(set(FAIL_FAST_FIRST)) == len(FAIL_FAST_FIRST)
