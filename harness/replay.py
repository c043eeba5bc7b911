"""Stored cases in a Hypothesis test: replayed first, recognised when they fail, new failures kept.

The plugin gives each ``@given`` conformance test a :class:`CaseLog` (on the
wrapper ``harness.markers.fit_to_declared_scope`` installs around its inner
test) and, with :func:`install_cases`, the stored cases to replay: the
corpus cases of the test and, first of all, the witness of an xfails entry.
They become Hypothesis *explicit examples*, which Hypothesis runs before it
generates anything and which stop the test at the first failure (``gate``
reports one bug per test): a failing stored case is a failure like any other,
and no generation or shrinking follows it.

Every call of the inner test goes through :meth:`CaseLog.around`, which

* recognises a stored case (Hypothesis runs the explicit examples first, in
  the order they were installed; the values are compared too) and, when it
  fails, notes the case file and its JSON on the failure (``CASE_NOTE``),
  which the report shows with a repro line replaying just that case;
* records whether the witness passed or failed, and how;
* under Hypothesis's final replay of a *generated* failure (the shrunk
  counterexample), keeps its arguments encoded, for ``--corpus-out``;
* in the ``explore`` profile, ends generation once the test's time budget
  is spent and no failure has been seen (:class:`BudgetSpent`, which the
  plugin turns into a pass).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from harness.cases import CaseFormatError, RecordingData, StoredCase, encode

#: Prefix of the note a failing stored case adds to its failure: ``CASE_NOTE <file>: <one-line JSON>``.
CASE_NOTE = "kvconform stored case"
_OWN_EXAMPLES = "_kvconform_own_examples"


class BudgetSpent(BaseException):
    """The explore profile's time budget for this test ran out (a BaseException: Hypothesis must not catch it)."""


@dataclass
class WitnessOutcome:
    """What the witness of an xfails entry did on this run: ``None`` while it has not run."""

    error: BaseException | None = None
    ran: bool = False


@dataclass(eq=False)
class CaseLog:
    """Per test function: its stored cases and what happened to them in the current item's run."""

    stored: list[StoredCase] = field(default_factory=list)
    #: Witnesses of the xfails entries matching the test (run before everything else).
    witnesses: list[StoredCase] = field(default_factory=list)
    #: Seconds of generation per test (explore), else ``None``.
    budget_s: float | None = None
    #: The test's ``@given`` argument names (what a stored case holds).
    argument_names: tuple[str, ...] = ()
    # -- per item, reset by start() --
    started: float = 0.0
    calls: int = 0
    #: Stored cases (corpus, witnesses) run in this item.
    replayed: int = 0
    saw_failure: bool = False
    #: ``id(witness)`` -> what it did in this item's run.
    witness_outcomes: dict[int, WitnessOutcome] = field(default_factory=dict)
    #: Encoded kwargs of generated failures replayed as final (shrunk) counterexamples.
    new_failures: list[dict[str, Any]] = field(default_factory=list)

    def start(self) -> None:
        self.started, self.calls, self.replayed, self.saw_failure = time.monotonic(), 0, 0, False
        self.witness_outcomes, self.new_failures = {}, []

    def witness_outcome(self, witness: StoredCase) -> WitnessOutcome:
        return self.witness_outcomes.get(id(witness), WitnessOutcome())

    def _stored_case(self, kwargs: dict[str, Any]) -> StoredCase | None:
        """The stored case this call runs: Hypothesis runs the explicit examples first, in the order
        :func:`install_cases` gave them, so call ``i`` of the item is case ``i`` if its values are that case's."""
        run_order = self.witnesses + self.stored
        if self.calls >= len(run_order):
            return None
        case = run_order[self.calls]
        try:
            same = all(encode(kwargs.get(name)) == encode(value) for name, value in case.kwargs.items())
        except CaseFormatError:
            same = False
        return case if same else None

    def around(self, call: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        """Run ``call(**kwargs)`` (the fitted inner test) with the bookkeeping in this module's docstring."""
        from hypothesis import note
        from hypothesis.control import current_build_context

        stored = self._stored_case(kwargs)
        final = current_build_context().is_final
        if stored is None and not final and self.budget_s is not None and self.calls and not self.saw_failure \
                and time.monotonic() - self.started > self.budget_s:
            raise BudgetSpent(f"{self.calls} examples in {self.budget_s:g} s")
        self.calls += 1
        self.replayed += stored is not None
        recorded = {name: RecordingData(v) if _is_data_object(v) else v for name, v in kwargs.items()}
        try:
            result = call(**recorded)
        except Exception as exc:
            self.saw_failure = True
            if stored is not None:
                if any(stored is w for w in self.witnesses):
                    self.witness_outcomes[id(stored)] = WitnessOutcome(exc, True)
                where = stored.path or "(xfails entry witness)"
                note(f"{CASE_NOTE} {where}: {json.dumps(stored.to_json())}")
            elif final:
                self._keep_new_failure(recorded)
            raise
        if stored is not None and any(stored is w for w in self.witnesses):
            self.witness_outcomes[id(stored)] = WitnessOutcome(None, True)
        return result

    def _keep_new_failure(self, kwargs: dict[str, Any]) -> None:
        try:
            encoded = {name: encode(value) for name, value in kwargs.items() if name in self.argument_names}
        except CaseFormatError as exc:  # a value the codec does not know: say so, keep the run going
            from hypothesis import note

            note(f"kvconform: this failure cannot be stored as a case ({exc})")
            return
        if encoded not in self.new_failures:
            self.new_failures.append(encoded)


def _is_data_object(value: Any) -> bool:
    return type(value).__name__ == "DataObject" and type(value).__module__.startswith("hypothesis")


def given_names(test: Any) -> tuple[str, ...]:
    """The names of a Hypothesis test's ``@given`` arguments."""
    return tuple(sorted(getattr(getattr(test, "hypothesis", None), "_given_kwargs", {}) or ()))


def install_cases(test: Any, log: CaseLog, stored: list[StoredCase], witnesses: list[StoredCase],
                  only: StoredCase | None = None) -> None:
    """Make ``stored`` (and ``witnesses``, run first) explicit examples of ``test``; ``only``: that case alone.

    Idempotent per collection: the test's own ``@example`` list is kept aside and the replayed cases are
    appended to a copy (Hypothesis runs explicit examples last-added first).  A case whose arguments are
    not exactly the test's ``@given`` arguments raises ``CaseFormatError`` naming its file.
    """
    from hypothesis import example

    own = getattr(test, _OWN_EXAMPLES, None)
    if own is None:
        own = list(getattr(test, "hypothesis_explicit_examples", ()))
        setattr(test, _OWN_EXAMPLES, own)
    names = given_names(test)
    replayed = [only] if only is not None else [*witnesses, *stored]  # the order they run in
    for case in replayed:
        if tuple(sorted(case.kwargs)) != names:
            raise CaseFormatError(f"{case.path or case.test}: arguments {sorted(case.kwargs)} are not the @given "
                                  f"arguments of {case.test} ({list(names)})")
    test.hypothesis_explicit_examples = [] if only is not None else list(own)
    for case in reversed(replayed):  # Hypothesis runs the last added first
        example(**case.kwargs)(test)
    log.stored, log.witnesses, log.argument_names = list(stored), list(witnesses), names
    if only is not None:  # --replay-case: that case and nothing else (no generation)
        from hypothesis import Phase, settings

        log.stored, log.witnesses = [only], []
        current = getattr(test, "_hypothesis_internal_use_settings", None) or settings()
        test._hypothesis_internal_use_settings = settings(current, phases=(Phase.explicit,))
