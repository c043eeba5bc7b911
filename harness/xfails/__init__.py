"""Expected-failure lists: known bugs of an implementation, reported as ``xfail`` rows.

File format (UTF-8 text, one entry per line)::

    # full-line comments and blank lines are ignored
    round_trip                                   # an invariant id: every test of that invariant
    test_lifecycle.py::test_duplicate_arrivals   # else: a substring of the pytest node id
    test_layout.py::test_offsets[tp8             # the text after '#' becomes the xfail reason

An entry that equals an invariant id of ``harness.catalogue`` matches exactly
the tests of that invariant; any other entry matches every test whose node id
contains it.  Matching tests are marked ``xfail(strict=False)``: a failure is
reported as xfail, an unexpected pass as xpass (a hint to drop the entry).

``--xfails`` takes a path, or the bare name of a list shipped in this
directory (``--xfails sglang`` reads ``harness/xfails/sglang.txt``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.catalogue import BY_ID

BUNDLED_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class XfailEntry:
    """One line of an xfails file."""

    pattern: str
    reason: str
    source: str  #: ``file:line`` it came from

    def matches(self, nodeid: str, invariant: str | None) -> bool:
        """Invariant ids match by invariant; anything else is a node-id substring."""
        if self.pattern in BY_ID:
            return self.pattern == invariant
        return self.pattern in nodeid


def resolve_xfails_path(value: str) -> Path:
    """The file ``--xfails value`` names: an existing path, else a bundled list's name.

    Raises ``ValueError`` saying which paths were tried and which lists exist.
    """
    path = Path(value).expanduser()
    if path.is_file():
        return path.resolve()
    bundled = BUNDLED_DIR / f"{value}.txt"
    if "/" not in value and bundled.is_file():
        return bundled
    names = ", ".join(sorted(p.stem for p in BUNDLED_DIR.glob("*.txt"))) or "(none)"
    raise ValueError(
        f"--xfails {value!r}: no such file ({path.resolve()}) and no bundled list {bundled.name!r}; "
        f"bundled lists: {names}."
    )


def read_xfails(path: Path) -> tuple[XfailEntry, ...]:
    """Parse an xfails file (format in this module's docstring)."""
    entries = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        pattern, _, comment = raw.partition("#")
        pattern = pattern.strip()
        if not pattern:
            continue
        source = f"{path}:{number}"
        reason = comment.strip() or f"listed in {path.name}:{number}"
        entries.append(XfailEntry(pattern, reason, source))
    return tuple(entries)


def first_match(entries: tuple[XfailEntry, ...], nodeid: str, invariant: str | None) -> XfailEntry | None:
    """The first entry matching the test, if any."""
    return next((e for e in entries if e.matches(nodeid, invariant)), None)
