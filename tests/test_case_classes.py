"""Case classes (``harness.case_classes``): labelling, counting, the report's table, the thorough profile's check.

The unit tests label cases inside short derandomized Hypothesis runs and read the labels back from
Hypothesis's statistics, as the plugin does.  The plugin runs (pytester) use a small conformance module of
their own whose strategies reach some classes and not others.
"""

from __future__ import annotations

import importlib.util
import json
import threading
from pathlib import Path
from types import SimpleNamespace

import hypothesis.core
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from harness import case_classes
from harness.catalogue import INVARIANTS
from harness.engine.ledger import Ledger
from harness.engine.shapes import RankShape
from harness.hypothesis_records import PROP_CLASSES, class_properties, collecting_statistics
from harness.loading import load_implementation
from harness.report import Completion, RunContext, TestRecord, build_report, enforced_class_gaps, markdown, terminal_lines
from strategies import receiver as receivers, receiver_protocol
from strategies.bad_topology import InvalidTopology
from strategies.cases import KvSpec, RequestSpec, TpTopology, TransferCase

REPO_ROOT = Path(__file__).resolve().parent.parent
#: 4 KV heads, prefill TP 8 (replicated) into decode TP 2, two prefill stages into one: 4 writers per decode rank.
CASE = TransferCase(TpTopology(4, 8, 2, prefill_pp=2, decode_pp=1), KvSpec(2, 64, torch.bfloat16, 4),
                    RequestSpec(6, 4, 1, (0, 1), 3, (2, 0), 3), seed=0, nan_payloads=False)
CASE_CLASSES = {
    "tp direction": "prefill larger", "tp ratio": "3-4", "replication": "prefill", "pp fan-in": "2",
    "writers": "5-8", "kv heads": "4-15", "head dim": "64+", "dtype": "bfloat16", "page size": "power of two",
    "partial tail": "yes", "prefix": "aligned",
}


def labelled(body, examples: int = 5, **strategies) -> dict[str, dict[str, int]]:
    """Counts of a derandomized Hypothesis run of ``body`` (drawing ``strategies``), read as the plugin reads them."""
    statistics: list[dict] = []

    @settings(max_examples=examples, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(**(strategies or {"_": st.integers(0, 2**30)}))  # distinct examples: none is skipped as a repeat
    def run(**drawn):
        body(**drawn)

    with collecting_statistics(statistics):
        run()
    properties = dict(class_properties(statistics))
    return json.loads(properties[PROP_CLASSES])


# -- labelling ------------------------------------------------------------------------------------
def test_a_transfer_case_gets_every_class_of_its_values():
    counts = labelled(lambda _: case_classes.label_arguments({"case": CASE, "impl": object(), "device": "cpu"}))
    assert counts == {name: {value: 5} for name, value in CASE_CLASSES.items()}


def test_values_inside_tuples_rank_shapes_topologies_and_invalid_topologies_are_labelled():
    shape = RankShape.of(page_size=3, tp_writers=2, pp_writers=1, heads_per_writer=1, layers_per_writer=1,
                         head_dim=1, dtype=torch.float32, max_chunk_pages=1, ring_chunks=1)
    bad = InvalidTopology(TpTopology(6, 2, 3), "tp_not_nested", "decode_tp")
    counts = labelled(lambda _: case_classes.label_arguments({"scenario": (shape, 3), "topo": TpTopology(1, 1, 4),
                                                              "bad": bad}))
    assert counts["page size"] == {"other": 5} and counts["head dim"] == {"1": 5}
    assert counts["tp direction"] == {"prefill larger": 5, "decode larger": 5}  # a case counts once per value
    assert counts["replication"] == {"none": 5, "decode": 5} and counts["bad topology"] == {"tp_not_nested": 5}


def test_a_class_counts_each_case_once_per_value_it_reached():
    def body(tokens):
        case_classes.label_request(tokens, 0, 4)
        case_classes.label_request(8, 4, 4)  # a second request of the case: whole pages, aligned prefix
    counts = labelled(body, examples=20, tokens=st.integers(1, 64))
    assert counts["partial tail"]["no"] == 20 and 0 < counts["partial tail"]["yes"] < 20
    assert counts["prefix"] == {"none": 20, "aligned": 20}


def test_highest_classes_count_a_case_once_at_the_highest_value_reached():
    def body(_):
        for value in ("no", "yes", "no"):
            case_classes.record("ring wrap", value)
        for value in ("2", "5+", "1"):
            case_classes.record("live allocations", value)
    assert labelled(body) == {"ring wrap": {"yes": 5}, "live allocations": {"5+": 5}}


def test_a_record_from_another_thread_lands_in_the_running_case():
    """The guard runs implementation calls (and the ledger they call) on a helper thread."""
    def body(_):
        case_classes.record("fault", "aborted")  # labels from the case's own thread first
        helper = threading.Thread(target=case_classes.record, args=("fault", "timed out"))
        helper.start()
        helper.join()
    assert labelled(body) == {"fault": {"aborted": 5, "timed out": 5}}


def test_outside_a_test_case_labelling_does_nothing_and_unknown_classes_are_refused():
    case_classes.record("fault", "aborted")
    case_classes.label_arguments({"case": CASE})
    with pytest.raises(ValueError, match="unknown case class 'ring wraps'; known: tp direction, "):
        case_classes.record("ring wraps", "yes")


RECEIVER_KINDS = {
    "attribute": ("instance attribute", "True"), "namespace": ("instance attribute", "True"),
    "class_attribute": ("class attribute", "True"), "frozen_dataclass": ("instance attribute", "True"),
    "property": ("property", "computed"), "getattr": ("__getattr__", "computed"),
    "mock_configured": ("mock", "computed"), "object": ("absent", "absent"), "bare_class": ("absent", "absent"),
    "namespace_without": ("absent", "absent"), "slots_unset": ("unset slot", "absent"),
    "raising_property": ("property", "computed"), "mock_spec_empty": ("mock", "computed"),
    "mock": ("mock", "computed"), "magic_mock": ("mock", "computed"),
}


def test_every_receiver_kind_of_the_strategies_has_a_kind_and_flag():
    assert set(RECEIVER_KINDS) | {receivers.GENERATED} == set(receivers.RECEIVER_KINDS)
    made = {**{k: make(True) for k, make in receivers._VALUED.items()},
            **{k: make() for k, make in {**receivers._ABSENT, **receivers._AUTO_TRUTHY}.items()}}
    got = {kind: case_classes.receiver_facts(r) for kind, r in made.items()}
    assert got == RECEIVER_KINDS


def test_every_generated_receiver_is_classified_within_the_classes_values():
    kinds, flags = case_classes.BY_NAME["receiver kind"].values, case_classes.BY_NAME["receiver flag"].values
    for access in range(len(receiver_protocol._ACCESSES)):
        for value in range(len(receiver_protocol._VALUES)):
            kind, flag = case_classes.receiver_facts(receiver_protocol.rebuild_receiver(access, value))
            assert kind in kinds and flag in flags, (access, value, kind, flag)


@pytest.mark.parametrize(("value", "flag"), [(False, "False"), (1, "truthy non-bool"), ("", "falsy non-bool"),
                                             ([], "falsy non-bool"), (None, "falsy non-bool")])
def test_receiver_flags_by_value(value, flag):
    assert case_classes.receiver_facts(receivers.Receiver(value)) == ("instance attribute", flag)


def test_labelling_a_receiver_runs_none_of_its_code():
    reads = []

    class Counting:
        @property
        def require_staging(self):
            reads.append(1)
            return True

        def __getattr__(self, name):
            reads.append(name)
            raise AttributeError(name)

        @property  # type: ignore[misc]
        def __class__(self):  # what isinstance() would ask
            reads.append("__class__")
            return Counting

    class Flag:
        def __bool__(self):
            reads.append("bool")
            return True

    counts = labelled(lambda _: [case_classes.label_receiver(Counting()),
                                 case_classes.label_receiver(SimpleNamespace(require_staging=Flag()))])
    assert reads == []
    assert counts == {"receiver kind": {"property": 5, "instance attribute": 5}, "receiver flag": {"computed": 5}}


def test_the_ledger_records_ring_wraps_live_allocations_and_refusals():
    impl = load_implementation("reference").implementation

    def body(_):
        ledger = Ledger(impl.make_allocator(8), 8)
        first = ledger.assign(4)
        ledger.assign(4)
        ledger.free(int(first[0]))
        ledger.assign(4)  # back at offset 0: the next round
        assert ledger.assign(9) is None
    assert labelled(body) == {"ring wrap": {"yes": 5}, "live allocations": {"2": 5}, "fault": {"oversized chunk": 5}}


def test_bucket_names_and_bounds():
    names, classify = case_classes.bucket(1, 2, 3, 5, 9)
    assert names == ("1", "2", "3-4", "5-8", "9+")
    assert [classify(n) for n in (1, 2, 3, 4, 5, 8, 9, 64)] == ["1", "2", "3-4", "3-4", "5-8", "5-8", "9+", "9+"]


# -- expectations and gaps ------------------------------------------------------------------------
def test_expectations_name_known_invariants_classes_and_values():
    ids = {inv.id for inv in INVARIANTS}
    for invariant, classes in case_classes.EXPECTED.items():
        assert invariant in ids
        for name, values in classes.items():
            assert set(values) <= set(case_classes.BY_NAME[name].values), (invariant, name)
    assert "ring wrap" not in case_classes.EXPECTED["head_coverage"]  # no ring there


def test_gaps_are_expected_values_with_no_case_in_an_exercised_class():
    counts = {"page size": {"power of two": 3}, "partial tail": {"no": 3}}
    gaps = {(g.case_class, g.value): g for g in case_classes.gaps("isolation", counts)}
    assert set(gaps) == {("page size", "1"), ("page size", "other"), ("partial tail", "yes")}  # dtype: not exercised
    assert "[isolation] case class 'page size: 1' ran in 0 cases; the thorough profile needs" in gaps["page size", "1"].message()
    limited = {(g.case_class, g.value): g for g in case_classes.gaps("isolation", counts, limits=("whole_pages",))}
    assert limited["partial tail", "yes"].limit == "whole_pages" and limited["page size", "1"].limit is None
    assert "declared limit whole_pages excludes it (not a failure)" in limited["partial tail", "yes"].message()


def _context(profile: str, limits: tuple[str, ...] = ()) -> RunContext:
    return RunContext("reference", "reference", None, ("kv_copy",), limits, None, profile, "cpu", ("cpu",), None, {})


def _records() -> list[TestRecord]:
    """Two tests of one invariant, as two xdist workers report them."""
    first = TestRecord("t.py::a", "isolation", status="pass", examples=3,
                       classes={"page size": {"power of two": 2, "1": 1}, "partial tail": {"no": 3}})
    second = TestRecord("t.py::b", "isolation", status="pass", examples=2,
                        classes={"page size": {"power of two": 2}, "partial tail": {"no": 2}})
    return [first, second]


def test_the_report_adds_up_each_tests_counts_and_lists_zeros():
    report = build_report(_context("ci"), _records(), Completion("complete", 0))
    row = next(r for r in report["rows"] if r["invariant"] == "isolation")
    assert row["classes"]["page size"] == {"1": 1, "power of two": 4, "other": 0}
    assert row["classes"]["partial tail"] == {"no": 5, "yes": 0}
    assert row["classes"]["dtype"] == {v: 0 for v in case_classes.BY_NAME["dtype"].values}  # expected, none ran
    assert next(r for r in report["rows"] if r["invariant"] == "layout")["classes"] == {}
    assert report["class_coverage"]["enforced"] is False
    assert {(g["class"], g["value"]) for g in report["class_coverage"]["gaps"]} == {("page size", "other"),
                                                                                   ("partial tail", "yes")}
    md = markdown(report)
    assert "## Case classes" in md and "| `isolation` | page size | 1 1, power of two 4, other **0** |" in md
    assert "*page size*: tokens per page" in md
    lines = terminal_lines(report)
    assert "  isolation: " in "\n".join(lines) and any("page size 2/3 >=1" in line for line in lines)
    assert any(line.startswith("  zero cases: [isolation] case class 'page size: other'") for line in lines)
    assert enforced_class_gaps(_context("ci"), _records()) == []


def test_thorough_enforces_gaps_that_no_declared_limit_explains():
    gaps = enforced_class_gaps(_context("thorough", ("whole_pages",)), _records())
    assert [(g.invariant, g.case_class, g.value) for g in gaps] == [("isolation", "page size", "other")]
    report = build_report(_context("thorough", ("whole_pages",)), _records(), Completion("complete", 1))
    assert any(line.startswith("FAIL class coverage [isolation] case class 'page size: other'")
               for line in terminal_lines(report))


# -- through the plugin ---------------------------------------------------------------------------
CONFORMANCE = """
import pytest
from hypothesis import given, settings, strategies as st

import strategies as kst

PAGES = {pages}


@pytest.mark.invariant("isolation", requires=("kv_copy",))
@settings(max_examples=30, derandomize=True)
@given(case=kst.transfer_cases(page_sizes=PAGES, max_tokens=8))
def test_isolation_cases(impl, case):
    assert case.kv.page_size >= 1


@pytest.mark.invariant("isolation", requires=("kv_copy",))
@settings(max_examples=20, derandomize=True)
@given(case=kst.transfer_cases(page_sizes=PAGES, max_tokens=8))
def test_isolation_more_cases(impl, case):
    assert case.kv.page_size >= 1
"""


@pytest.fixture
def suite(pytester, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    for name in ("KVCONFORM_IMPL", "KVCONFORM_PROFILE", "KVCONFORM_HYPOTHESIS_DB", "CI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hypothesis.core, "global_force_seed", None)
    return pytester


def run_suite(pytester, pages: str, *args: str, inprocess: bool = True):
    (pytester.path / "test_classes_conformance.py").write_text(CONFORMANCE.format(pages=pages))
    argv = ["-p", "harness.pytest_plugin", "--impl", "reference", "--kvconform-report", "out", "-p",
            "no:cacheprovider", "test_classes_conformance.py", *args]
    result = pytester.runpytest(*argv) if inprocess else pytester.runpytest_subprocess(*argv)
    report = json.loads((pytester.path / "out" / "kvconform-report.json").read_text())
    return result, report


def test_thorough_fails_a_run_whose_strategies_never_reach_an_expected_class(suite):
    """Pages of 4 tokens only: page sizes 1 and odd got no case, so the thorough profile fails the passing run."""
    result, report = run_suite(suite, "st.just(4)", "--hypothesis-profile", "thorough")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert next(r for r in report["rows"] if r["invariant"] == "isolation")["status"] == "pass"
    assert report["class_coverage"]["enforced"] is True
    assert {(g["class"], g["value"]) for g in report["class_coverage"]["gaps"]} >= {("page size", "1"),
                                                                                   ("page size", "other")}
    assert "'page size: 1'" in report["completion"]["note"]
    result.stdout.fnmatch_lines(["FAIL class coverage [[]isolation[]] case class 'page size: 1' ran in 0 cases; "
                                 "the thorough profile needs at least one*"])


def test_other_profiles_only_show_the_gap_and_the_table_is_in_the_report(suite):
    result, report = run_suite(suite, "st.just(4)", "--hypothesis-profile", "ci")
    assert result.ret == pytest.ExitCode.OK
    assert report["class_coverage"]["enforced"] is False
    row = next(r for r in report["rows"] if r["invariant"] == "isolation")
    # Every case that ran to the end (max_examples counts those: 30 + 20) has its page size class.
    assert row["classes"]["page size"] == {"1": 0, "power of two": 50, "other": 0}
    result.stdout.fnmatch_lines(["case classes (*", "  isolation: tp direction */3*, page size 1/3 >=*",
                                 "  zero cases: [[]isolation[]] case class 'page size: 1' ran in 0 cases*"])
    md = (suite.path / "out" / "kvconform-report.md").read_text()
    assert "## Case classes" in md and "| `isolation` | page size | 1 **0**, power of two " in md


@pytest.mark.skipif(importlib.util.find_spec("xdist") is None, reason="needs pytest-xdist")
def test_xdist_workers_counts_are_merged(suite):
    """Two tests on two workers: every case that ran to the end (30 and 20: ``max_examples`` counts those)
    counts once in each drawn class, so each class adds up to both tests' cases."""
    result, report = run_suite(suite, "None", "-n", "2", inprocess=False)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["created: 2/2 workers"])
    row = next(r for r in report["rows"] if r["invariant"] == "isolation")
    assert row["tests"] == 2
    for name in ("tp direction", "dtype", "page size", "partial tail"):
        assert sum(row["classes"][name].values()) == 50, name


def test_a_rank_labels_its_shape_requests_receivers_and_what_happened():
    """Two chunks through a ring of one chunk, a writer reporting twice, the late duplicates stage_case sends."""
    from harness.engine.moves import case_rank, ring_bytes_for, stage_case
    from harness.world import World

    impl = load_implementation("reference").implementation
    case = TransferCase(TpTopology(2, 2, 1), KvSpec(1, 2, torch.float32, 2), RequestSpec(4, 0, 1, (0, 1), 3, (2, 0), 3),
                        seed=0, nan_payloads=False)

    def body(_):
        world = World.build(case, "cpu")
        stage_case(case_rank(impl, world, 0, ring_bytes_for(impl, world, 1)), order=[(0, 0), (0, 0), (0, 1), (1, 1), (1, 0)])
    counts = labelled(body, examples=2)
    assert counts["ring wrap"] == {"yes": 2} and counts["live allocations"] == {"2": 2}  # the ring overcommits
    assert counts["messages"] == {"duplicate": 2, "late": 2}
    assert counts["writers"] == {"2": 2} and counts["partial tail"] == {"no": 2} and counts["prefix"] == {"none": 2}
    assert counts["receiver kind"] == {"class attribute": 2} and counts["receiver flag"] == {"True": 2}


def test_adding_a_class_derived_from_a_case_is_one_line(monkeypatch):
    layout = case_classes.CaseClass("pool layout", ("contiguous",), "how the pools are laid out", "case",
                                    lambda case: "contiguous")
    monkeypatch.setattr(case_classes, "CLASSES", (*case_classes.CLASSES, layout))
    monkeypatch.setitem(case_classes.BY_NAME, layout.name, layout)
    counts = labelled(lambda _: case_classes.label_arguments({"case": CASE}))
    assert counts["pool layout"] == {"contiguous": 5}


def test_a_receiver_that_defeats_classification_is_labelled_not_failed(monkeypatch):
    def defeated(receiver):
        raise RuntimeError("metaclass magic")
    monkeypatch.setattr(case_classes, "_receiver_kind", defeated)
    assert case_classes.receiver_facts(object()) == ("unclassified (RuntimeError)",) * 2
