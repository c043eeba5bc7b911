"""Case classes: the kinds of case that matter, labelled on every generated case and counted per invariant.

A passing run says little if whole kinds of case never ran (no ring ever wrapped, no odd page size, no
fault).  Every Hypothesis test case is labelled with ``hypothesis.event()`` along the classes of
:data:`CLASSES`; the plugin reads the labels back from Hypothesis's statistics
(``harness.hypothesis_records``), the report shows per invariant how many cases each class value got, and
the ``thorough`` profile fails when a value that :data:`EXPECTED` lists for an invariant got none.

Two kinds of label, one vocabulary:

* classes of *drawn values* (topology, KV shape, request, receiver) are derived here from the values a test
  runs with, after declared scope limits were applied (what ran, not what was drawn): from every argument
  of a ``@given`` test (:func:`label_arguments`, called by the plugin's wrapper in ``harness.markers``) and
  from what the engine's ``Rank`` is built from and registers (state machines and stress suites draw
  inside rules);
* *runtime facts* (ring wrapped, allocations live at once, duplicate and late messages, faults) are recorded
  by the engine where it sees them, with :func:`record`.

A case counts once per value of a class it exercised (a case with two requests, one with a partial last
page and one without, counts for both), except for ``highest`` classes (counts and yes/no facts), where it
counts once, at the highest value it reached.  Adding a class is one :class:`CaseClass` line (with a
``classify`` function when it is derived from a drawn value) plus, for a runtime fact, its ``record``
call; listing values in :data:`EXPECTED` makes ``thorough`` insist on them.  For instance a pool layout kind
drawn into the case would be ``CaseClass("pool layout", LAYOUT_KINDS, "how the KV pools are laid out", "case",
lambda case: case.pool_layout)``, and a ratio of prefill to decode page size one more such line.

Outside a Hypothesis test case (plain tests) labelling does nothing; from a helper thread (the guard's) it
labels the case its caller runs.  Nothing here imports
torch or the strategies at import time: the report imports this module.
"""

from __future__ import annotations

import functools
import inspect
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional

from harness.oracles import source_ranks

#: Separator between class and value in a Hypothesis event (``"tp ratio: 2"``); class names never contain it.
SEPARATOR = ": "


@dataclass(frozen=True)
class CaseClass:
    """One class of cases: its ``values`` in display order (others that occur are shown after them).

    ``source`` says what it is derived from: ``"topology"`` (a ``TpTopology``), ``"kv"`` (a ``KvSpec``),
    ``"request"`` (``(num_tokens, prefix_len, page_size)``), ``"case"`` (a whole ``TransferCase``),
    ``"receiver"`` (its :func:`receiver_facts`), ``"invalid topology"`` (an ``InvalidTopology``), each with ``classify`` mapping that value
    to a class value; or ``"runtime"``: the engine records it.  ``highest``: a case counts once, at the
    highest value (in ``values`` order) it reached.
    """

    name: str
    values: tuple[str, ...]
    meaning: str
    source: str = "runtime"
    classify: Optional[Callable[[Any], str]] = None
    highest: bool = False


def bucket(*lower_bounds: int) -> tuple[tuple[str, ...], Callable[[int], str]]:
    """Value names and classifier of integer buckets starting at ``lower_bounds``: ``bucket(1, 2, 3, 5)``
    names ``1, 2, 3-4, 5+``."""
    names = []
    for low, high in zip(lower_bounds, (*lower_bounds[1:], None)):
        names.append(f"{low}+" if high is None else str(low) if high == low + 1 else f"{low}-{high - 1}")

    def classify(n: int) -> str:
        index = max((i for i, low in enumerate(lower_bounds) if n >= low), default=0)
        return names[index]

    return tuple(names), classify


_RATIOS = bucket(1, 2, 3, 5, 9)
_FAN_IN = bucket(1, 2, 3)
_WRITERS = bucket(1, 2, 3, 5, 9)
_HEADS = bucket(1, 2, 4, 16)
_HEAD_DIMS = bucket(1, 2, 16, 64)
_LIVE = bucket(1, 2, 3, 5)
#: The ``live allocations`` value of a count of allocations live at once.
LIVE_ALLOCATIONS = _LIVE[1]
_DTYPES = ("float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2")
_FAULTS = ("aborted", "timed out", "oversized chunk", "misaligned prefix", "partial write")
_RECEIVER_KINDS = ("instance attribute", "class attribute", "property", "__getattr__", "mock", "unset slot",
                   "absent")
_RECEIVER_FLAGS = ("True", "False", "truthy non-bool", "falsy non-bool", "computed", "absent")
_BAD_TOPOLOGY = ("heads_not_positive", "tp_not_positive", "pp_not_positive", "heads_tp_not_divisible",
                 "pp_not_divisible", "tp_not_nested")


def _direction(topo: Any) -> str:
    if topo.prefill_tp == topo.decode_tp:
        return "equal"
    return "prefill larger" if topo.prefill_tp > topo.decode_tp else "decode larger"


def _ratio(topo: Any) -> str:
    return _RATIOS[1](max(topo.prefill_tp, topo.decode_tp) // max(1, min(topo.prefill_tp, topo.decode_tp)))


def _replication(topo: Any) -> str:
    heads = topo.total_kv_heads
    return ("none", "prefill", "decode", "both")[(topo.prefill_tp > heads) + 2 * (topo.decode_tp > heads)]


def _fan_in(topo: Any) -> str:
    return _FAN_IN[1](topo.prefill_pp // max(1, topo.decode_pp))


def _writers(topo: Any) -> str:
    """Writer slots of decode rank 0 (every decode rank has as many): the oracle's source ranks times the fan-in."""
    sources = source_ranks(topo.total_kv_heads, topo.prefill_tp, topo.decode_tp, 0)
    return _WRITERS[1](len(sources) * max(1, topo.prefill_pp // max(1, topo.decode_pp)))


def _page_kind(page_size: int) -> str:
    if page_size == 1:
        return "1"
    return "power of two" if page_size & (page_size - 1) == 0 else "other"


def _partial_tail(request: tuple[int, int, int]) -> str:
    tokens, _, page_size = request
    return "yes" if tokens % page_size else "no"


def _prefix(request: tuple[int, int, int]) -> str:
    _, prefix, page_size = request
    if prefix == 0:
        return "none"
    return "misaligned" if prefix % page_size else "aligned"


_MISSING = object()


def _receiver_kind(receiver: Any) -> str:
    """How ``require_staging`` is reached, read without running any of the receiver's code (no descriptor,
    ``__getattr__``, ``__class__`` or ``__bool__`` is called, so labelling cannot change what the
    implementation sees)."""
    from unittest import mock

    kind = type(receiver)
    if issubclass(kind, mock.NonCallableMock):
        return "mock"
    static = inspect.getattr_static(receiver, "require_staging", _MISSING)
    if static is _MISSING:
        return "__getattr__" if inspect.getattr_static(kind, "__getattr__", _MISSING) is not _MISSING else "absent"
    if isinstance(static, property):
        return "property"
    if type(static).__name__ == "member_descriptor":
        return "unset slot" if _slot_unset(static, receiver) else "instance attribute"
    return "class attribute" if inspect.getattr_static(kind, "require_staging", _MISSING) is static else "instance attribute"


def _slot_unset(descriptor: Any, receiver: Any) -> bool:
    try:
        descriptor.__get__(receiver, type(receiver))  # a slot's own getter runs no user code
    except AttributeError:
        return True
    return False


#: Flag values whose truth can be read without running user code.
_PLAIN_FLAG_TYPES = (bool, int, float, str, bytes, list, tuple, dict, set, type(None))


def _receiver_flag(receiver: Any, kind: str) -> str:
    """What ``require_staging`` holds, when it is a plain value (else ``computed``: property, mock,
    ``__getattr__``, or a value of another type)."""
    if kind in ("absent", "unset slot"):
        return "absent"
    if kind not in ("instance attribute", "class attribute"):
        return "computed"
    value = inspect.getattr_static(receiver, "require_staging")
    if type(value) is bool:
        return str(value)
    # numpy scalars (0-d) truth-test plainly; an array of several elements raises, its truth is computed
    plain = isinstance(value, _PLAIN_FLAG_TYPES) or (type(value).__module__ == "numpy"
                                                     and getattr(value, "ndim", None) == 0)
    if not plain:
        return "computed"
    return "truthy non-bool" if bool(value) else "falsy non-bool"


def receiver_facts(receiver: Any) -> tuple[str, str]:
    """``(receiver kind, receiver flag)`` of any object; a receiver that defeats classification is labelled
    ``unclassified (...)``, never what fails a test."""
    try:
        kind = _receiver_kind(receiver)
        return kind, _receiver_flag(receiver, kind)
    except Exception as exc:
        return (f"unclassified ({type(exc).__name__})",) * 2


def _dtype(kv: Any) -> str:
    return str(kv.dtype).removeprefix("torch.")


#: Every class, in report order.
CLASSES: tuple[CaseClass, ...] = (
    CaseClass("tp direction", ("equal", "prefill larger", "decode larger"), "prefill TP vs decode TP",
              "topology", _direction),
    CaseClass("tp ratio", _RATIOS[0], "larger TP size / smaller TP size", "topology", _ratio),
    CaseClass("replication", ("none", "prefill", "decode", "both"), "side(s) whose TP exceeds the KV heads",
              "topology", _replication),
    CaseClass("pp fan-in", _FAN_IN[0], "prefill PP stages feeding one decode stage", "topology", _fan_in),
    CaseClass("writers", _WRITERS[0], "writer slots per decode rank (TP sources x PP fan-in)", "topology",
              _writers),
    CaseClass("kv heads", _HEADS[0], "total KV heads", "topology", lambda topo: _HEADS[1](topo.total_kv_heads)),
    CaseClass("head dim", _HEAD_DIMS[0], "elements per head", "kv", lambda kv: _HEAD_DIMS[1](kv.head_dim)),
    CaseClass("dtype", _DTYPES, "KV element type", "kv", _dtype),
    CaseClass("page size", ("1", "power of two", "other"), "tokens per page", "kv",
              lambda kv: _page_kind(kv.page_size)),
    CaseClass("partial tail", ("no", "yes"), "the request's last page is partly filled", "request", _partial_tail),
    CaseClass("prefix", ("none", "aligned", "misaligned"), "decode-side cached prefix vs page boundary",
              "request", _prefix),
    CaseClass("receiver kind", _RECEIVER_KINDS, "how the receiver's require_staging is reached", "receiver",
              lambda facts: facts[0]),
    CaseClass("receiver flag", _RECEIVER_FLAGS, "what require_staging holds", "receiver", lambda facts: facts[1]),
    CaseClass("bad topology", _BAD_TOPOLOGY, "the rule an invalid topology breaks", "invalid topology",
              lambda bad: str(bad.reason)),
    CaseClass("ring wrap", ("no", "yes"), "the allocator handed out a region in a later round of the ring",
              highest=True),
    CaseClass("live allocations", _LIVE[0], "most ring allocations live at once", highest=True),
    CaseClass("messages", ("duplicate", "late"), "a writer's arrival reported again, or after its chunk or "
              "request was finished"),
    CaseClass("fault", _FAULTS, "what made a request fail (or a writer die mid-write)"),
)
BY_NAME: dict[str, CaseClass] = {c.name: c for c in CLASSES}

_TOPOLOGY = ("tp direction", "tp ratio", "replication", "pp fan-in", "writers", "kv heads")
#: What every ``transfer_cases()`` test reaches: all values but misaligned prefixes (staged only on purpose).
_TRANSFER_EXPECTED = {**{name: BY_NAME[name].values
                         for name in (*_TOPOLOGY, "head dim", "dtype", "page size", "partial tail")},
                      "prefix": ("none", "aligned")}
_RING = {"ring wrap": ("no", "yes"), "live allocations": ("1", "2")}

#: Invariant -> class -> values a run of the ``thorough`` profile must give at least one case.  A class is
#: enforced only once some case of the invariant exercised it (running a subset of an invariant's tests, or
#: an implementation lacking the capabilities of the tests that exercise it, leaves it unchecked); values a
#: declared scope limit removes (:data:`REMOVED_BY_LIMIT`) are reported, not enforced.  Classes that do not
#: apply to an invariant (no ring in head coverage) are absent; ``layout`` and ``concurrency`` draw no cases
#: of these kinds (plain geometry tuples, seeded threads).
EXPECTED: dict[str, dict[str, tuple[str, ...]]] = {
    "head_coverage": {name: BY_NAME[name].values for name in (*_TOPOLOGY, "dtype", "page size")},
    "round_trip": {**_TRANSFER_EXPECTED, **_RING},
    "isolation": _TRANSFER_EXPECTED,
    "path_equivalence": _TRANSFER_EXPECTED,
    "receivers": {name: BY_NAME[name].values for name in ("receiver kind", "receiver flag")},
    "allocator": {"ring wrap": ("no", "yes"), "live allocations": BY_NAME["live allocations"].values},
    "lifecycle": {**{name: BY_NAME[name].values for name in (*_TOPOLOGY[:4], "dtype", "page size", "partial tail",
                                                           "prefix", "messages", "fault", "ring wrap",
                                                           "live allocations")}},
    "device": {name: BY_NAME[name].values for name in ("tp direction", "dtype", "page size")},
    "bad_topology": {"bad topology": _BAD_TOPOLOGY},
}

#: (class, value) -> the declared scope limit (``harness.scope.LIMITS``) that stops the suite generating it.
REMOVED_BY_LIMIT: dict[tuple[str, str], str] = {
    ("partial tail", "yes"): "whole_pages",
    **{("pp fan-in", value): "no_pipeline_fan_in" for value in _FAN_IN[0][1:]},
}


# -- labelling ------------------------------------------------------------------------------------
_reached: "weakref.WeakKeyDictionary[Any, dict[str, int]]" = weakref.WeakKeyDictionary()
#: The build context of the test case last labelled from its own thread (see :func:`_case_context`).
_active: Optional["weakref.ref[Any]"] = None


def _case_context() -> Any:
    """The Hypothesis build context of the running test case, or ``None``.

    The guard (``harness.guard``) runs implementation calls on a helper thread, and an allocator the
    implementation calls from there is the ledger: its facts belong to the case the calling thread runs.
    Hypothesis keeps the context per thread, so a thread without one takes the case last labelled from its
    own thread, while that case is still running (a finished case's data is frozen: ignored).
    """
    global _active
    context = _hypothesis().context.value
    if context is None:
        last = _active() if _active is not None else None
        return None if last is None or getattr(last.data, "frozen", True) else last
    if _active is None or _active() is not context:
        _active = weakref.ref(context)
    return context


def record(name: str, value: str) -> None:
    """Label the running Hypothesis test case with ``value`` of class ``name`` (nothing outside a test case)."""
    case_class = BY_NAME.get(name)
    if case_class is None:
        raise ValueError(f"unknown case class {name!r}; known: {', '.join(BY_NAME)}")
    context = _case_context()
    if context is not None:
        _put(context, case_class, value)


def _put(context: Any, case_class: CaseClass, value: str) -> None:
    if not case_class.highest:
        _event(context, f"{case_class.name}{SEPARATOR}{value}", "")
        return
    rank = case_class.values.index(value) if value in case_class.values else len(case_class.values)
    reached = _reached.setdefault(context, {})
    if rank > reached.get(case_class.name, -1):
        reached[case_class.name] = rank
        _event(context, case_class.name, value)  # keyed by the class: a later, higher value replaces it


def _event(context: Any, label: str, payload: str) -> None:
    """``hypothesis.event`` for ``context``'s test case, from whichever thread."""
    hypothesis = _hypothesis()
    if hypothesis.context.value is context:
        hypothesis.event(label, payload)
        return
    with hypothesis.context.with_value(context):
        hypothesis.event(label, payload)


@dataclass(frozen=True)
class _Hypothesis:
    event: Callable[..., None]
    context: Any  # the dynamic variable holding each thread's build context


@functools.cache
def _hypothesis() -> _Hypothesis:
    """Hypothesis's ``event`` and its per-thread build context, imported once, on first use (the report
    imports this module without needing Hypothesis)."""
    from hypothesis import event
    from hypothesis.control import _current_build_context

    return _Hypothesis(event, _current_build_context)


def _record_source(source: str, value: Any) -> None:
    context = _case_context()
    if context is None:
        return
    for case_class in CLASSES:
        if case_class.source == source and case_class.classify is not None:
            _put(context, case_class, case_class.classify(value))


def label_topology(topology: Any) -> None:
    _record_source("topology", topology)


def label_kv(kv: Any) -> None:
    _record_source("kv", kv)


def label_request(num_tokens: int, prefix_len: int, page_size: int) -> None:
    _record_source("request", (num_tokens, prefix_len, page_size))


def label_receiver(receiver: Any) -> None:
    if _case_context() is not None:
        _record_source("receiver", receiver_facts(receiver))


def label_shape(shape: Any) -> None:
    """A decode rank's ``RankShape``: its topology and KV classes."""
    label_topology(shape.topology)
    label_kv(shape.kv)


#: Argument names whose value is a receiver (any object: recognised by name, not type).
RECEIVER_ARGUMENTS = frozenset({"receiver"})


def label_arguments(arguments: Mapping[str, Any]) -> None:
    """Label a test case by the arguments its test runs with (``TransferCase``, ``RankShape``,
    ``TpTopology``, ``InvalidTopology``, receivers; inside tuples and lists too)."""
    for name, value in arguments.items():
        if name in RECEIVER_ARGUMENTS:
            label_receiver(value)
        else:
            _label_value(value)


def _label_value(value: Any) -> None:
    from harness.engine.shapes import RankShape
    from strategies.bad_topology import InvalidTopology
    from strategies.cases import TpTopology, TransferCase

    if isinstance(value, TransferCase):
        _record_source("case", value)
        label_topology(value.topology)
        label_kv(value.kv)
        label_request(value.request.num_tokens, value.request.prefix_len, value.kv.page_size)
    elif isinstance(value, RankShape):
        label_shape(value)
    elif isinstance(value, TpTopology):
        label_topology(value)
    elif isinstance(value, InvalidTopology):
        _record_source("invalid topology", value)
    elif type(value) in (tuple, list):
        for item in value:
            _label_value(item)


# -- counting -------------------------------------------------------------------------------------
Counts = dict[str, dict[str, int]]


def count_events(case_events: Iterable[Iterable[str]]) -> Counts:
    """``{class: {value: cases}}`` from the event strings of each test case (other events are ignored)."""
    counts: Counts = {}
    for events in case_events:
        for text in set(events):
            name, sep, value = str(text).partition(SEPARATOR)
            if sep and name in BY_NAME:
                per_value = counts.setdefault(name, {})
                per_value[value] = per_value.get(value, 0) + 1
    return counts


def merge(into: Counts, more: Mapping[str, Mapping[str, int]]) -> Counts:
    """Add ``more``'s counts to ``into`` (per test, per xdist worker: counts add up)."""
    for name, values in more.items():
        per_value = into.setdefault(name, {})
        for value, n in values.items():
            per_value[value] = per_value.get(value, 0) + int(n)
    return into


def ordered(counts: Mapping[str, Mapping[str, int]], invariant: str | None = None) -> list[tuple[str, list[tuple[str, int]]]]:
    """Classes in :data:`CLASSES` order with their values in display order, zeros included for the values
    expected for ``invariant``; unknown values after the known ones."""
    expected = EXPECTED.get(invariant or "", {})
    rows = []
    for case_class in CLASSES:
        seen = counts.get(case_class.name, {})
        if not seen and case_class.name not in expected:
            continue
        wanted = set(seen) | set(expected.get(case_class.name, ()))
        values = [v for v in case_class.values if v in wanted] + sorted(v for v in seen if v not in case_class.values)
        rows.append((case_class.name, [(v, int(seen.get(v, 0))) for v in values]))
    return rows


@dataclass(frozen=True)
class Gap:
    """An expected class value that got no case in an invariant's tests."""

    invariant: str
    case_class: str
    value: str
    #: The declared scope limit that stops the suite generating it (then it is reported, not enforced).
    limit: Optional[str] = None

    def message(self) -> str:
        what = f"[{self.invariant}] case class '{self.case_class}: {self.value}' ran in 0 cases"
        if self.limit:
            return f"{what}: the implementation's declared limit {self.limit} excludes it (not a failure)"
        return (f"{what}; the thorough profile needs at least one: make the strategies of the invariant's tests "
                f"reach it (see harness/case_classes.py EXPECTED), or run the invariant's whole test set")


def gaps(invariant: str, counts: Mapping[str, Mapping[str, int]], limits: Iterable[str] = ()) -> list[Gap]:
    """Expected values of ``invariant`` with zero cases, in classes some case of it exercised."""
    declared = set(limits)
    found = []
    for name, values in EXPECTED.get(invariant, {}).items():
        seen = counts.get(name, {})
        if not seen:
            continue  # no test of it that exercises the class ran
        for value in values:
            if not seen.get(value):
                limit = REMOVED_BY_LIMIT.get((name, value))
                found.append(Gap(invariant, name, value, limit if limit in declared else None))
    return found
