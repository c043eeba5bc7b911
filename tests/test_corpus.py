"""Portable cases (harness/cases.py), the regression corpus (corpus/) and its replay, the explore lane.

* every value a conformance test draws survives ``encode`` -> JSON -> ``decode`` (a property test over the
  tests' own ``@given`` strategies);
* every corpus file is well formed, sits under its test's name and holds exactly that test's arguments;
* a failing stored case is reported with its file, its JSON and a repro line that replays just it, before
  any generation; the repro replays it alone;
* ``explore`` writes a new failure as a case only into the directory ``--corpus-out`` names, and its
  inputs are validated before the first test.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import hypothesis.core
import pytest
import torch  # noqa: F401 - imported here so in-process pytester runs never re-import it
from hypothesis import HealthCheck, given, settings, strategies as st

from harness import cases
from harness.conformance import (
    test_allocator, test_bad_topology, test_device, test_faults, test_head_coverage, test_isolation, test_layout,
    test_lifecycle, test_path_equivalence, test_receivers, test_round_trip,
)
from harness.replay import given_names
from strategies import RECEIVER_KINDS, arrival_orders, receiver_protocol

REPO_ROOT = Path(__file__).resolve().parent.parent
CORPUS = REPO_ROOT / "corpus"
CONFORMANCE = REPO_ROOT / "harness" / "conformance"
_MODULES = (test_allocator, test_bad_topology, test_device, test_faults, test_head_coverage, test_isolation,
            test_layout, test_lifecycle, test_path_equivalence, test_receivers, test_round_trip)
#: Every @given conformance test of these modules whose arguments are plain values (st.data() is tested apart).
GIVEN_TESTS = sorted(
    (test for module in _MODULES for name, test in vars(module).items()
     if name.startswith("test_") and hasattr(test, "hypothesis")
     and "data" not in given_names(test)),
    key=lambda test: test.__name__)


def _same(a, b) -> bool:
    """Equal values; receivers (identity-hashed objects) by their encoding and repr."""
    if cases.receiver_kind(a) is not None:
        address = re.compile(r" at 0x[0-9a-f]+")
        return cases.encode(a) == cases.encode(b) and address.sub("", repr(a)) == address.sub("", repr(b))
    return a == b and type(a) is type(b)


@pytest.mark.parametrize("test", GIVEN_TESTS, ids=lambda t: t.__name__)
def test_every_drawn_value_round_trips_through_json(test):
    @settings(max_examples=30, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(st.fixed_dictionaries(test.hypothesis._given_kwargs))
    def round_trip(kwargs):
        text = json.dumps({name: cases.encode(value) for name, value in kwargs.items()})
        decoded = {name: cases.decode(value) for name, value in json.loads(text).items()}
        assert decoded.keys() == kwargs.keys()
        for name in kwargs:
            assert _same(decoded[name], kwargs[name]), name

    round_trip()


@settings(max_examples=30, derandomize=True, database=None, deadline=None)
@given(st.data())
def test_data_draws_round_trip_and_replay_in_order(data):
    pairs = [(c, s) for c in range(2) for s in range(2)]
    recording = cases.RecordingData(data)
    first = recording.draw(arrival_orders(pairs), label="arrival order")
    second = recording.draw(st.integers(0, 9))
    replay = cases.decode(json.loads(json.dumps(cases.encode(recording))))
    assert replay.draw(arrival_orders(pairs)) == first and replay.draw(st.integers()) == second
    with pytest.raises(cases.CaseFormatError, match="the test changed"):
        replay.draw(st.integers())


def test_every_receiver_kind_and_flag_value_is_encodable():
    assert set(cases.RECEIVER_MAKERS) | {cases.GENERATED} == set(RECEIVER_KINDS)
    for access in range(len(receiver_protocol._ACCESSES)):
        for value in range(len(receiver_protocol._VALUES)):
            made = receiver_protocol.rebuild_receiver(access, value)
            blob = json.loads(json.dumps(cases.encode(made)))
            assert blob == {"$type": "receiver", "kind": cases.GENERATED, "recipe": [access, value]}
            assert _same(cases.decode(blob), made)
    import numpy

    for kind, (make, takes_value) in cases.RECEIVER_MAKERS.items():
        for flag in ([True, 1, "yes", [1], numpy.bool_(True), False, 0, "", None, [], numpy.bool_(False)]
                     if takes_value else [None]):
            value = make(flag) if takes_value else make()
            blob = cases.encode(value)
            assert blob["kind"] == kind and _same(cases.decode(blob), value)


def test_unknown_values_and_tags_are_refused_with_what_they_are():
    with pytest.raises(cases.CaseFormatError, match="cannot encode .*set"):
        cases.encode({1, 2})
    with pytest.raises(cases.CaseFormatError, match="bad 'NoSuchType'"):
        cases.decode({"$type": "NoSuchType"})
    with pytest.raises(cases.CaseFormatError, match="not a kvconform case"):
        cases.parse_case({"test": "x.py::t"}, "here")
    assert cases.decode(cases.encode(float("nan"))) != cases.decode(cases.encode(float("nan")))  # NaN stays NaN
    assert cases.decode(cases.encode((float("inf"), -0.0))) == (float("inf"), -0.0)


def _all_tests() -> dict[str, object]:
    return {name: test for module in _MODULES for name, test in vars(module).items() if name.startswith("test_")}


def test_every_corpus_file_is_a_case_of_an_existing_test_with_its_arguments():
    files = sorted(CORPUS.glob("*/*.json"))
    assert len(files) >= 50
    tests = _all_tests()
    from harness.conformance import test_distributed

    tests.update({n: t for n, t in vars(test_distributed).items() if n.startswith("test_")})
    for path in files:
        case = cases.read_case(path)
        assert path.parent.name == case.function, path
        path_part = case.test.partition("::")[0]
        assert (REPO_ROOT / path_part).is_file() and case.function in tests, path
        assert sorted(case.kwargs) == sorted(given_names(tests[case.function])), path
        assert case.origin, path


MINI = '''
import pytest
from hypothesis import given, strategies as st


@pytest.mark.invariant("layout", requires=("layout",))
@given(writers=st.integers(1, 6), tokens=st.integers(0, 16))
def test_layout_offsets(impl, writers, tokens):
    size = 2 * tokens * 2 * 1 * 4 * 2
    spans = [tuple(s) for s in impl.staging_layout(writers, tokens, 2, 1, 4, 2)]
    assert spans == [(w * size, size) for w in range(writers)], "offsets"
'''


@pytest.fixture
def suite(pytester, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    for name in ("KVCONFORM_IMPL", "KVCONFORM_PROFILE", "KVCONFORM_HYPOTHESIS_DB", "CI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hypothesis.core, "global_force_seed", None)
    (pytester.path / "conf").mkdir()
    (pytester.path / "conf" / "test_mini.py").write_text(MINI)
    monkeypatch.chdir(pytester.path)
    return pytester


def _store(directory: Path, name: str, writers: int, tokens: int) -> Path:
    case = cases.StoredCase("conf/test_mini.py::test_layout_offsets", {"writers": writers, "tokens": tokens},
                            origin="test", note=name)
    return cases.write_case(directory / "test_layout_offsets" / f"{name}.json", case)


def _run(suite, factory: str, *args: str):
    result = suite.runpytest("conf", "-p", "harness.pytest_plugin", "--impl", f"tests.fakes.xfail_impl:{factory}",
                             "--kvconform-report", "out", "-p", "no:cacheprovider", *args)
    path = suite.path / "out" / "kvconform-report.json"
    return result, (json.loads(path.read_text()) if path.exists() else None)


def test_failing_stored_case_is_reported_with_its_json_and_a_repro_replaying_just_it(suite):
    corpus = suite.path / "my-corpus"
    _store(corpus, "a-passes", 2, 3)
    failing = _store(corpus, "b-fails", 5, 1)
    result, report = _run(suite, "known_bug", "--hypothesis-profile", "gate", "--corpus", str(corpus))
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    [failure] = report["failures"]
    shown = str(failing.relative_to(suite.path))  # below the run's directory: shown relative, no machine's paths
    assert failure["case_file"] == shown
    assert json.loads(failure["case"])["kwargs"] == {"writers": 5, "tokens": 1}
    # the guarded fixture reports the implementation's error as the call that raised it
    assert failure["error"].startswith(
        "ImplementationFault: [layout] impl.staging_layout(5, 1, 2, 1, 4, 2) raised ValueError: more than 3 writers")
    assert report["rows"][1]["examples"] == 2  # the two stored cases, then the failure stops the test: no generation
    assert "stored case: " in result.stdout.str()
    words = shlex.split(failure["repro"])
    assert f"--replay-case={shown}" in words
    rerun = suite.runpytest(*words[3:], "-p", "no:cacheprovider", "--kvconform-report", "out2")
    assert rerun.ret == pytest.ExitCode.TESTS_FAILED
    replayed = json.loads((suite.path / "out2" / "kvconform-report.json").read_text())
    assert replayed["rows"][1]["examples"] == 1 and replayed["failures"][0]["case_file"] == shown


def test_passing_corpus_cases_run_before_generation_and_count(suite):
    corpus = suite.path / "my-corpus"
    _store(corpus, "a", 2, 3)
    _store(corpus, "b", 1, 0)
    result, report = _run(suite, "fixed", "--hypothesis-profile", "gate", "--corpus", str(corpus))
    assert result.ret == pytest.ExitCode.OK
    assert report["rows"][1]["examples"] == 2 + 40  # corpus cases and the gate's budget


def test_malformed_corpus_case_is_a_usage_error_naming_the_file(suite):
    corpus = suite.path / "my-corpus"
    path = cases.write_case(corpus / "test_layout_offsets" / "wrong.json",
                            cases.StoredCase("conf/test_mini.py::test_layout_offsets", {"writers": 1}))
    result, _ = _run(suite, "fixed", "--corpus", str(corpus))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{path}: arguments * are not the @given arguments*"])
    result, _ = _run(suite, "fixed", "--corpus", str(suite.path / "nowhere"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--corpus=*nowhere: not a directory*"])


def test_explore_writes_new_failures_only_where_told_and_validates_its_budget(suite):
    out = suite.path / "found"
    result, report = _run(suite, "fixed_with_new_bug", "--hypothesis-profile", "explore", "--explore-seconds", "5",
                          "--corpus", "none", "--corpus-out", str(out))
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    [saved] = sorted(out.glob("test_layout_offsets/*.json"))
    case = cases.read_case(saved)
    assert case.kwargs["tokens"] == 9 and case.test == "conf/test_mini.py::test_layout_offsets"
    assert not (suite.path / "corpus").exists()  # nothing else written

    result, report = _run(suite, "fixed", "--hypothesis-profile", "explore", "--explore-seconds", "1",
                          "--corpus", "none")
    assert result.ret == pytest.ExitCode.OK and report["rows"][1]["status"] == "pass"  # the budget ends the test

    for bad in ("0", "soon", "inf"):
        result, _ = _run(suite, "fixed", "--explore-seconds", bad)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([f"*--explore-seconds={bad}: expected a positive number of seconds*"])
