"""Expected-failure lists: known bugs of an implementation, each pinned by a witness case.

One JSON file per implementation (``harness/xfails/<name>.json``, or any path)::

    {"format": "kvconform-xfails/1",
     "entries": [
       {"test": "harness/conformance/test_receivers.py::test_receivers_registration",
                                        # an exact node id; without "[...]" it covers every parametrization
        "invariant": "receivers",       # optional: with it, "test" may be the bare function name
        "error": "ImplementationFault", # the expected exception class (its name, as the report's error line)
        "match": "require_staging",     # a fragment of the expected error message
        "witness": {<a case, harness/cases.py format>} | null,
        "reason": "why it fails",
        "upstream": "https://... (issue, PR or source line)",
        "versions": "<=0.5.23",         # optional: a version specifier the implementation's version must meet
        "confirm": "..."}               # optional: what is not yet confirmed (e.g. needs a GPU run)
     ]}

On a run, an entry applies to the tests it matches (its version condition
holding for the implementation's version, ``harness.runinfo``).  Its
witness is replayed before anything else (``harness.replay``):

* the witness fails with ``error`` and ``match``: the test is reported
  ``xfail`` at once (``gate`` stops at the first failure: no generation,
  no shrinking);
* the witness passes and the test passes: ``fixed`` ("remove the entry");
  ``--strict-xfails`` makes that a failure;
* any other failure (the witness failing another way, the witness passing
  but generation finding a failure, a failure of another stored case) is a
  failure.

Without a witness (tests with no ``@given`` arguments: seeded threads, the
state machines), a test whose every failure matches ``error`` and
``match`` is ``xfail``.  An entry that matches no collected test is a
warning naming it (:func:`stale_entries`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.cases import CaseFormatError, StoredCase, parse_case
from harness.catalogue import BY_ID

BUNDLED_DIR = Path(__file__).resolve().parent
FORMAT = "kvconform-xfails/1"
_FIELDS = {"test", "invariant", "error", "match", "witness", "reason", "upstream", "versions", "confirm"}


@dataclass(frozen=True)
class XfailEntry:
    """One entry of an xfails file."""

    test: str
    error: str
    match: str
    reason: str
    upstream: str
    source: str  #: ``file#index`` it came from
    witness: StoredCase | None = None
    invariant: str | None = None
    versions: str | None = None
    confirm: str | None = None

    def matches(self, nodeid: str, invariant: str | None) -> bool:
        """Exact node id; ``path::name`` covers its parametrizations; with ``invariant``, a bare name does."""
        if self.invariant is not None and self.invariant != invariant:
            return False
        base = nodeid.partition("[")[0]
        if "::" not in self.test:
            return base.rpartition("::")[2] == self.test
        return nodeid == self.test or base == self.test

    def expects(self, exc: BaseException) -> bool:
        """Whether ``exc`` is the failure this entry expects: its class name (or a base class's) and message
        fragment, on ``exc`` or on what caused it -- the guard reports an implementation's ``ValueError`` as an
        ``ImplementationFault`` (an ``InvariantViolation``) raised from it."""
        seen: set[int] = set()
        current: BaseException | None = exc
        while current is not None and id(current) not in seen:
            seen.add(id(current))
            names = {cls.__name__ for cls in type(current).__mro__}
            if self.error in names and self.match in str(current):
                return True
            current = current.__cause__
        return False

    def applies_to_version(self, version: str) -> bool:
        """Whether the version condition holds (no condition, or an unknown version: it holds)."""
        if not self.versions or version in ("", "unknown"):
            return True
        from packaging.specifiers import SpecifierSet
        from packaging.version import InvalidVersion

        try:
            return SpecifierSet(self.versions).contains(version, prereleases=True)
        except InvalidVersion:
            return True

    @property
    def label(self) -> str:
        return f"{self.source} ({self.test})"


def resolve_xfails_path(value: str) -> Path:
    """The file ``--xfails value`` names: an existing path, else a bundled list's name.

    Raises ``ValueError`` saying which paths were tried and which lists exist.
    """
    path = Path(value).expanduser()
    if path.is_file():
        return path.resolve()
    bundled = BUNDLED_DIR / f"{value}.json"
    if "/" not in value and bundled.is_file():
        return bundled
    names = ", ".join(sorted(p.stem for p in BUNDLED_DIR.glob("*.json"))) or "(none)"
    raise ValueError(
        f"--xfails {value!r}: no such file ({path.resolve()}) and no bundled list {bundled.name!r}; "
        f"bundled lists: {names}."
    )


def read_xfails(path: Path) -> tuple[XfailEntry, ...]:
    """Parse an xfails file (format in this module's docstring); ``ValueError`` naming the entry and field."""
    try:
        blob = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"--xfails {path}: cannot read it as JSON ({exc}); see harness/xfails/__init__.py") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT or not isinstance(blob.get("entries"), list):
        raise ValueError(f"--xfails {path}: expected {{\"format\": \"{FORMAT}\", \"entries\": [...]}}; "
                         "see harness/xfails/__init__.py")
    return tuple(_entry(raw, f"{path.name}#{index}") for index, raw in enumerate(blob["entries"], start=1))


def _entry(raw: Any, source: str) -> XfailEntry:
    def problem(what: str) -> ValueError:
        return ValueError(f"--xfails entry {source}: {what}; see harness/xfails/__init__.py for the format")

    if not isinstance(raw, dict):
        raise problem("not an object")
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise problem(f"unknown field {unknown[0]!r} (fields: {', '.join(sorted(_FIELDS))})")
    for name in ("test", "error", "match", "reason", "upstream"):
        if not isinstance(raw.get(name), str) or not raw[name]:
            raise problem(f"{name!r} must be a non-empty string")
    invariant = raw.get("invariant")
    if invariant is not None and invariant not in BY_ID:
        raise problem(f"unknown invariant {invariant!r}; valid: {', '.join(BY_ID)}")
    if "::" not in raw["test"] and invariant is None:
        raise problem(f"test {raw['test']!r} is not a node id (path::name); give one, or an 'invariant' with it")
    versions = raw.get("versions")
    if versions is not None:
        from packaging.specifiers import InvalidSpecifier, SpecifierSet

        try:
            SpecifierSet(versions)
        except InvalidSpecifier:
            raise problem(f"versions {versions!r} is not a version specifier such as '<=0.5.23'") from None
    witness = None
    if raw.get("witness") is not None:
        try:
            witness = parse_case(raw["witness"], f"--xfails entry {source} witness")
        except CaseFormatError as exc:
            raise ValueError(str(exc)) from None
        if witness.function != raw["test"].partition("[")[0].rpartition("::")[2]:
            raise problem(f"its witness is a case of {witness.test}, not of {raw['test']}")
    return XfailEntry(raw["test"], raw["error"], raw["match"], raw["reason"], raw["upstream"], source, witness,
                      invariant, versions, raw.get("confirm"))


def first_match(entries: tuple[XfailEntry, ...], nodeid: str, invariant: str | None) -> XfailEntry | None:
    """The first entry matching the test, if any."""
    return next((e for e in entries if e.matches(nodeid, invariant)), None)


def stale_entries(entries: tuple[XfailEntry, ...], tests: list[tuple[str, str | None]]) -> list[XfailEntry]:
    """Entries naming a test that does not exist, judged from ``tests`` (``(node id, invariant)`` of the collected
    tests): an entry is stale when its test file (for a bare name: a test of its invariant) was collected but no
    collected test has its function.  Parameters are not judged: ``[cuda]`` is not collected on a machine without
    CUDA, and a run of one file must not call the entries of the others stale."""
    def function(nodeid: str) -> str:
        return nodeid.partition("[")[0]

    stale = []
    for entry in entries:
        if "::" in entry.test:
            wanted = function(entry.test)
            if any(n.partition("::")[0] == wanted.partition("::")[0] for n, _ in tests) and \
                    not any(function(n) == wanted for n, _ in tests):
                stale.append(entry)
        elif any(i == entry.invariant for _, i in tests) and \
                not any(i == entry.invariant and function(n).rpartition("::")[2] == entry.test for n, i in tests):
            stale.append(entry)
    return stale
