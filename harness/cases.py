"""Portable test cases: the values a conformance test draws, as plain JSON, independent of Hypothesis.

How to use it (``harness/replay.py`` replays cases; a repro script can too)::

    from harness import cases
    blob = cases.encode(value)            # JSON-ready: dicts, lists, str, int, float, bool, None
    value == cases.decode(blob)           # True for every value a conformance test draws (receivers: by repr)
    case = cases.read_case(path)          # a case file: StoredCase(test, kwargs, ...), kwargs already decoded
    cases.write_case(path, StoredCase(...))
    cases.corpus_cases(directory, "test_round_trip_kv_copy")   # the stored cases of one test, sorted by name

Encoding: ``int``, ``str``, ``bool``, ``None``, finite ``float`` and lists
are themselves; everything else is an object with a ``"$type"`` tag:
``{"$type": "tuple", "items": [...]}``, ``{"$type": "float", "value":
"nan"}`` (non-finite floats), ``{"$type": "dtype", "name": "bfloat16"}``
(``torch.dtype``), ``{"$type": "numpy.bool_", "value": true}``, a dataclass
of :data:`DATACLASSES` as ``{"$type": "TransferCase", <field>: <encoded>,
...}``, a receiver (``strategies.receiver``) as ``{"$type": "receiver",
"kind": <one of RECEIVER_KINDS>, "require_staging": <encoded flag>}``
(kinds without a value omit it; a ``generated`` receiver carries its
``"recipe": [access, value]`` of ``strategies.receiver_protocol`` instead), and the interactive draws of
``st.data()`` as ``{"$type": "data", "draws": [<encoded value>, ...]}``
(decoded to :class:`ReplayData`, which hands the recorded values back in
order).  A dict with a ``"$type"`` key is never a plain value here.

Case file (``FORMAT``; one JSON object per file)::

    {"format": "kvconform-case/1",
     "test": "harness/conformance/test_round_trip.py::test_round_trip_kv_copy",   # no [parameters]
     "kwargs": {"case": <encoded>, ...},     # exactly the test's @given arguments
     "origin": "where it came from",         # a report, a broken implementation, "boundary"
     "note": "why it is kept"}

The rule-based state machines (``test_stateful.py``) have no case in this
format: their steps reference values earlier steps put in bundles, and a
replay would have to re-implement Hypothesis's stateful runner; their
regressions are kept by the example database and by the plain tests that
exercise the same handler (docs/corpus.md).
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from unittest import mock

import torch

from harness.engine.shapes import RankShape, RequestPlan
from strategies import receiver as receivers
from strategies.bad_topology import InvalidTopology
from strategies.cases import KvSpec, RequestSpec, TpTopology, TransferCase
from strategies.pool_layout import PoolLayout
from strategies.receiver_protocol import rebuild_receiver, receiver_recipe

FORMAT = "kvconform-case/1"
TYPE = "$type"

#: Frozen dataclasses conformance tests draw, by tag (the class name).
DATACLASSES: dict[str, type] = {cls.__name__: cls for cls in (
    TpTopology, KvSpec, RequestSpec, TransferCase, InvalidTopology, RankShape, RequestPlan, PoolLayout)}

#: Receiver kind -> (maker, takes a require_staging value); the fixed kinds of ``strategies.receiver.RECEIVER_KINDS``
#: (``generated`` receivers are encoded by their recipe, see ``GENERATED``).
RECEIVER_MAKERS: dict[str, tuple[Callable[..., object], bool]] = {
    "attribute": (receivers.Receiver, True),
    "namespace": (receivers.namespace_receiver, True),
    "class_attribute": (receivers.class_attribute_receiver, True),
    "frozen_dataclass": (receivers.FrozenReceiver, True),
    "property": (receivers.PropertyReceiver, True),
    "getattr": (receivers.GetattrReceiver, True),
    "mock_configured": (receivers.configured_mock, True),
    "object": (object, False),
    "bare_class": (receivers.BareReceiver, False),
    "namespace_without": (receivers.namespace_without_flag, False),
    "slots_unset": (receivers.SlotsReceiver, False),
    "raising_property": (receivers.RaisingPropertyReceiver, False),
    "mock_spec_empty": (receivers.SpecEmptyMock, False),
    "mock": (receivers.AutoMock, False),
    "magic_mock": (receivers.AutoMagicMock, False),
}


#: The receiver kind rebuilt from a ``strategies.receiver_protocol`` recipe rather than a maker.
GENERATED = receivers.GENERATED


class CaseFormatError(ValueError):
    """A value that cannot be encoded, or JSON that is not a case; the message says which and where."""


class ReplayData:
    """Stands in for Hypothesis's ``st.data()`` object: ``draw`` returns the recorded values in order.

    Replaying more draws than were recorded is an error naming the test's extra draw (the test changed).
    """

    def __init__(self, draws: list[Any]) -> None:
        self.draws = list(draws)
        self._next = 0

    def draw(self, strategy: Any, label: Any = None) -> Any:
        if self._next >= len(self.draws):
            raise CaseFormatError(f"the stored case recorded {len(self.draws)} draws from st.data(); the test asks for "
                                  f"another ({label or strategy!r}): the test changed since the case was stored")
        value = self.draws[self._next]
        self._next += 1
        return value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ReplayData) and encode(self.draws) == encode(other.draws)

    def __repr__(self) -> str:
        return f"ReplayData(draws={self.draws!r})"


class RecordingData:
    """Wraps Hypothesis's ``st.data()`` object, keeping every drawn value so the example can be stored."""

    def __init__(self, data: Any) -> None:
        self.data = data
        self.draws: list[Any] = []

    def draw(self, strategy: Any, label: Any = None) -> Any:
        value = self.data.draw(strategy, label=label)
        self.draws.append(value)
        return value

    def __repr__(self) -> str:
        return repr(self.data)


def encode(value: Any) -> Any:
    """``value`` as JSON-ready data (tags in the module docstring); ``CaseFormatError`` for anything else."""
    recipe = receiver_recipe(value)
    if recipe is not None:  # first: a generated receiver may be a tuple, a dataclass, ... of its own
        return {TYPE: "receiver", "kind": GENERATED, "recipe": list(recipe)}
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {TYPE: "float", "value": repr(value)}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, tuple):
        return {TYPE: "tuple", "items": [encode(v) for v in value]}
    if isinstance(value, torch.dtype):
        return {TYPE: "dtype", "name": str(value).removeprefix("torch.")}
    if type(value).__module__ == "numpy" and type(value).__name__ in ("bool_", "bool"):  # numpy 1 and 2 names
        return {TYPE: "numpy.bool_", "value": bool(value)}
    if isinstance(value, (ReplayData, RecordingData)):
        return {TYPE: "data", "draws": [encode(v) for v in value.draws]}
    if dataclasses.is_dataclass(value) and type(value).__name__ in DATACLASSES:
        return {TYPE: type(value).__name__,
                **{f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    kind = receiver_kind(value)
    if kind is not None:
        blob: dict[str, Any] = {TYPE: "receiver", "kind": kind}
        if RECEIVER_MAKERS[kind][1]:
            blob["require_staging"] = encode(_receiver_flag(value))
        return blob
    raise CaseFormatError(f"cannot encode {type(value).__module__}.{type(value).__qualname__} value {value!r}; "
                          "harness/cases.py encodes what conformance tests draw")


def decode(blob: Any) -> Any:
    """The value ``encode`` turned into ``blob``; ``CaseFormatError`` for an unknown tag or bad field."""
    if blob is None or isinstance(blob, (bool, int, str, float)):
        return blob
    if isinstance(blob, list):
        return [decode(v) for v in blob]
    if not isinstance(blob, dict) or TYPE not in blob:
        raise CaseFormatError(f"not an encoded value: {blob!r} (objects carry a {TYPE!r} tag)")
    tag = blob[TYPE]
    try:
        if tag == "tuple":
            return tuple(decode(v) for v in blob["items"])
        if tag == "float":
            return float(blob["value"])
        if tag == "dtype":
            dtype = getattr(torch, blob["name"])
            if not isinstance(dtype, torch.dtype):
                raise CaseFormatError(f"{blob['name']!r} is not a torch dtype")
            return dtype
        if tag == "numpy.bool_":
            import numpy

            return numpy.bool_(blob["value"])
        if tag == "data":
            return ReplayData([decode(v) for v in blob["draws"]])
        if tag == "receiver" and blob["kind"] == GENERATED:
            access, value = blob["recipe"]
            return rebuild_receiver(access, value)
        if tag == "receiver":
            make, takes_value = RECEIVER_MAKERS[blob["kind"]]
            return make(decode(blob["require_staging"])) if takes_value else make()
        cls = DATACLASSES[tag]
        return cls(**{k: decode(v) for k, v in blob.items() if k != TYPE})  # absent fields (older files): defaults
    except CaseFormatError:
        raise
    except (KeyError, TypeError, IndexError, ValueError) as exc:
        raise CaseFormatError(f"bad {tag!r} value {blob!r}: {type(exc).__name__}: {exc}") from None


def receiver_kind(value: Any) -> str | None:
    """The ``RECEIVER_KINDS`` name of a receiver built by ``strategies.receiver``, else ``None``."""
    if receiver_recipe(value) is not None:  # first: a generated receiver may raise on any attribute read
        return GENERATED
    kind = type(value)
    if kind is types.SimpleNamespace:
        return "namespace" if "require_staging" in vars(value) else "namespace_without"
    if kind is object:
        return "object"
    if kind.__name__ == "ClassAttributeReceiver" and "require_staging" in kind.__dict__:
        return "class_attribute"
    if isinstance(value, mock.Mock):  # mock makes a class per instance: match the kinds' classes by isinstance
        mocks = {"mock_configured": receivers.ConfiguredMock, "mock_spec_empty": receivers.SpecEmptyMock,
                 "mock": receivers.AutoMock, "magic_mock": receivers.AutoMagicMock}
        return next((name for name, cls in mocks.items() if isinstance(value, cls)), None)
    return next((name for name, (make, _) in RECEIVER_MAKERS.items() if make is kind), None)


def _receiver_flag(value: Any) -> Any:
    """The ``require_staging`` value a valued receiver was built with (read without calling properties twice)."""
    if isinstance(value, (receivers.PropertyReceiver, receivers.GetattrReceiver)):
        return value._value
    if isinstance(value, mock.Mock):
        return value.require_staging
    if isinstance(value, types.SimpleNamespace) or isinstance(value, (receivers.Receiver, receivers.FrozenReceiver)):
        return value.require_staging
    return type(value).__dict__["require_staging"]  # class_attribute


@dataclass(frozen=True)
class StoredCase:
    """One case file: the test it belongs to and the values of its ``@given`` arguments (decoded)."""

    test: str  #: ``path/to/test_x.py::test_name``, no parameters
    kwargs: dict[str, Any]
    origin: str = ""
    note: str = ""
    path: Path | None = None  #: the file it was read from

    @property
    def function(self) -> str:
        return self.test.rpartition("::")[2]

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "test": self.test, "kwargs": {k: encode(v) for k, v in self.kwargs.items()},
                "origin": self.origin, "note": self.note}

    def text(self) -> str:
        return json.dumps(self.to_json(), indent=1, sort_keys=False) + "\n"


def parse_case(blob: Any, where: str) -> StoredCase:
    """A case from its JSON object; ``CaseFormatError`` naming ``where`` (a file, an xfails entry) when malformed."""
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CaseFormatError(f"{where}: not a kvconform case (expected an object with \"format\": {FORMAT!r})")
    test, kwargs = blob.get("test"), blob.get("kwargs")
    if not isinstance(test, str) or "::" not in test or "[" in test or not isinstance(kwargs, dict):
        raise CaseFormatError(f"{where}: needs \"test\": \"path.py::test_name\" (no parameters) and a \"kwargs\" object")
    try:
        decoded = {name: decode(value) for name, value in kwargs.items()}
    except CaseFormatError as exc:
        raise CaseFormatError(f"{where}: {exc}") from None
    return StoredCase(test, decoded, str(blob.get("origin", "")), str(blob.get("note", "")))


def read_case(path: Path) -> StoredCase:
    """The case stored in ``path``."""
    try:
        blob = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CaseFormatError(f"{path}: cannot read a JSON case: {exc}") from None
    return dataclasses.replace(parse_case(blob, str(path)), path=path)


def write_case(path: Path, case: StoredCase) -> Path:
    """Write ``case`` to ``path`` (parents created); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(case.text(), encoding="utf-8")
    return path


def corpus_cases(directory: Path, function: str) -> list[StoredCase]:
    """The cases of test ``function`` in a corpus directory (``<directory>/<function>/*.json``), by file name."""
    return [read_case(path) for path in sorted((directory / function).glob("*.json"))]


def case_file_name(case: StoredCase) -> str:
    """A stable file name for a new case: its content's hash, so the same failure saved twice is one file."""
    import hashlib

    digest = hashlib.sha256(json.dumps(case.to_json()["kwargs"], sort_keys=True).encode()).hexdigest()
    return f"{digest[:12]}.json"
