"""What one Hypothesis test call leaves for the report: examples run, case classes, each distinct failure, the
reproducing seed.

The plugin collects Hypothesis's statistics around each conformance test call and turns them, and a
failure's exception and notes, into ``user_properties`` (which pytest-xdist carries to the controller),
read back by the plugin's report folding.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from harness import case_classes, runinfo

PROP_EXAMPLES = "kvconform.examples"
PROP_SHRINKS = "kvconform.shrinks"
#: JSON ``{class: {value: cases}}`` of the call's test cases (``harness.case_classes``); absent for plain tests.
PROP_CLASSES = "kvconform.classes"
#: JSON list of the call's distinct failures: {"error", "counterexample", "reproduce_failure", "seed", "explanation"}.
PROP_FAILURES = "kvconform.failures"

_COUNTEREXAMPLE_PREFIXES = ("Falsifying", "Failing test case", "Failing example", "Failing explicit example")
#: The note ``harness.replay`` adds to a failing stored case: ``PREFIX <file>: <one-line JSON>``.
_STORED_CASE = re.compile(r"^kvconform stored case (.*?): (\{.*\})$", re.S)
_BLOB = re.compile(r"@reproduce_failure\([^)]*\)")
_PRINTED_SEED = re.compile(r"@seed\((\d+)\)|--hypothesis-seed=(\d+)")


@contextlib.contextmanager
def collecting_statistics(sink: list[dict]) -> Iterator[None]:
    """Chain a callback into Hypothesis's statistics collector for the duration of a test call.

    Hypothesis calls the collector once per ``@given`` run with its engine
    statistics; the previous callback (Hypothesis's pytest plugin) still runs.
    """
    try:
        from hypothesis.statistics import collector
    except ImportError:
        yield
        return
    previous = collector.value

    def note(stats: dict) -> None:
        sink.append(stats)
        if previous is not None:
            previous(stats)

    # Hypothesis declares the collector as DynamicVariable(None), so mypy types its value as None only.
    with collector.with_value(note):  # type: ignore[arg-type]
        yield


def _phase_cases(stats: dict, phase: str) -> list[dict]:
    return stats.get(f"{phase}-phase", {}).get("test-cases", [])


#: Phases whose test cases count as examples run (shrinking only retries variations of a failure).
_RUN_PHASES = ("explicit", "reuse", "generate", "target")


def class_properties(statistics: list[dict]) -> list[tuple[str, Any]]:
    """Cases per case-class value over the test cases that ran to the end (passed or failed; rejected and
    overrun ones did not run the classes they started to label), shrinking excluded."""
    if not statistics:
        return []
    counts = case_classes.count_events(
        case.get("events", ()) for s in statistics for p in _RUN_PHASES for case in _phase_cases(s, p)
        if case.get("status") in ("valid", "interesting"))
    return [(PROP_CLASSES, json.dumps(counts, sort_keys=True))]


def example_properties(item: pytest.Item, statistics: list[dict]) -> list[tuple[str, Any]]:
    """Test cases Hypothesis ran (all phases but shrinking) and shrink attempts; nothing for plain tests."""
    if statistics:
        examples = sum(len(_phase_cases(s, p)) for s in statistics for p in _RUN_PHASES)
        shrinks = sum(len(_phase_cases(s, "shrink")) for s in statistics)
        return [(PROP_EXAMPLES, examples), (PROP_SHRINKS, shrinks)]
    described = getattr(item, "hypothesis_statistics", None)  # if our collector was bypassed
    if described:
        counts = re.findall(r"during (\w+) phase.*?- (\d+) passing, (\d+) failing, and (\d+) invalid", described, re.S)
        examples = sum(int(a) + int(b) + int(c) for phase, a, b, c in counts if phase != "shrink")
        shrinks = sum(int(a) + int(b) + int(c) for phase, a, b, c in counts if phase == "shrink")
        return [(PROP_EXAMPLES, examples), (PROP_SHRINKS, shrinks)]
    return []


def failure_properties(exc: BaseException, item: pytest.Item, statistics: list[dict]) -> list[tuple[str, Any]]:
    """Each distinct failure's error line, counterexample, ``@reproduce_failure`` blob, explanation and seed.

    Hypothesis raises an ``ExceptionGroup`` when a test fails in several
    distinct ways; each member carries its own notes, and each becomes one
    failure of the report.
    """
    seed = _reproducing_seed(item, statistics)
    found = []
    for failure in distinct_failures(exc):
        message = str(failure).strip().splitlines()
        notes = _notes(failure)
        examples = [n for n in notes if n.startswith(_COUNTEREXAMPLE_PREFIXES)]
        blobs = [m.group(0) for n in notes for m in _BLOB.finditer(n)]
        stored = next((m for m in map(_STORED_CASE.match, notes) if m), None)
        found.append({
            "case_file": stored.group(1) if stored else None,
            "case": stored.group(2) if stored else None,
            "error": f"{type(failure).__name__}: {message[0]}" if message else type(failure).__name__,
            "counterexample": "\n".join(examples) or None,
            "reproduce_failure": blobs[0] if blobs else None,
            "seed": seed or _printed_seed_in("\n".join(notes)),
            "explanation": _explanation(notes),
        })
    return [(PROP_FAILURES, json.dumps(found))]


def distinct_failures(exc: BaseException) -> list[BaseException]:
    """The members of Hypothesis's "distinct failures" group (nested groups flattened), else ``[exc]``.

    Only plain ``ExceptionGroup``/``BaseExceptionGroup`` are split: subclasses
    such as Hypothesis's ``FlakyFailure`` are one failure.
    """
    if type(exc).__name__ not in ("ExceptionGroup", "BaseExceptionGroup"):
        return [exc]
    members = [m for m in getattr(exc, "exceptions", ()) if isinstance(m, BaseException)]
    return [leaf for member in members for leaf in distinct_failures(member)] or [exc]


def _explanation(notes: list[str]) -> list[str]:
    """Hypothesis's explain-phase note: the ``Explanation:`` line and the indented notes after it."""
    for start, note in enumerate(notes):
        if note.startswith("Explanation:"):
            end = start + 1
            while end < len(notes) and notes[end].startswith((" ", "\t")):
                end += 1
            return notes[start:end]
    return []


def _notes(exc: BaseException) -> list[str]:
    """PEP 678 notes of an exception and, for exception groups, of its members."""
    notes = [str(n) for n in getattr(exc, "__notes__", ()) or ()]
    for member in getattr(exc, "exceptions", ()) or ():
        if isinstance(member, BaseException):
            notes.extend(_notes(member))
    return notes


def _reproducing_seed(item: pytest.Item, statistics: list[dict]) -> str | None:
    """A ``--hypothesis-seed`` that regenerates the failure, when the failure came from generation.

    Failures replayed from the example database need no seed (a rerun replays
    them again); a seed would even disable the database.
    """
    try:
        from hypothesis import core
    except ImportError:
        return None
    if core.global_force_seed is not None:
        return str(core.global_force_seed)
    seed = getattr(getattr(item, "obj", None), "_hypothesis_internal_use_generated_seed", None)
    found_by_generation = any(
        case.get("status") == "interesting"
        for stats in statistics
        for phase in ("generate", "target")
        for case in _phase_cases(stats, phase)
    )
    return str(seed) if seed is not None and found_by_generation else None


def _printed_seed_in(text: str) -> str | None:
    match = _PRINTED_SEED.search(text)
    return (match.group(1) or match.group(2)) if match else None


def printed_seed(report: pytest.TestReport) -> str | None:
    """A seed Hypothesis printed for this failure (flaky or slow-shrinking failures), from the report sections."""
    return _printed_seed_in("\n".join(content for _, content in report.sections))


def first_error_line(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    message = getattr(crash, "message", None)
    if message:
        return message.strip().splitlines()[0]
    text = report.longreprtext.strip().splitlines()
    return text[-1] if text else f"failed in {report.when}"


def versions() -> dict[str, str]:
    return {**runinfo.versions(), "kvconform": runinfo.suite_version()}
