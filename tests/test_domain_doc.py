"""docs/domain.md is the domain spec the code cites: every citation resolves, none points elsewhere.

Code, tests and docs cite sections as ``docs/domain.md#<anchor>`` (or
``domain.md#<anchor>`` inside docs/); an anchor is a heading of docs/domain.md
written the way GitHub renders it (lower case, spaces to hyphens, punctuation
dropped).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOMAIN = ROOT / "docs" / "domain.md"
SEARCHED = ("reference", "strategies", "harness", "adapters", "tests", "bench", "docs", "reports")
CITATION = re.compile(r"domain\.md#([A-Za-z0-9_-]+)")
OLD_NAME = re.compile(r"\bDOMAIN(\.md|'s)")


def anchor_of(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors() -> set[str]:
    return {anchor_of(line.lstrip("#")) for line in DOMAIN.read_text().splitlines() if line.startswith("#")}


def _texts():
    yield ROOT / "README.md"
    for folder in SEARCHED:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix in {".py", ".md", ".txt"} and "__pycache__" not in path.parts and path != Path(__file__).resolve():
                yield path


def test_anchor_rendering_matches_github():
    assert anchor_of(" Who writes to whom") == "who-writes-to-whom"
    assert anchor_of("Safety and liveness") == "safety-and-liveness"
    assert anchor_of("The staging ring (and `watermark`)") == "the-staging-ring-and-watermark"


def test_every_cited_section_exists():
    known = anchors()
    assert {"who-holds-which-head", "valid-topologies", "who-writes-to-whom", "the-watermark"} <= known
    cited = {(path, anchor) for path in _texts() for anchor in CITATION.findall(path.read_text(errors="replace"))}
    assert {"valid-topologies", "receivers"} <= {anchor for _, anchor in cited}  # the scan sees the citations
    cited |= {(DOMAIN, anchor) for anchor in re.findall(r"\]\(#([A-Za-z0-9_-]+)\)", DOMAIN.read_text())}  # its own links
    dangling = sorted(f"{path.relative_to(ROOT)}: #{anchor}" for path, anchor in cited if anchor not in known)
    assert not dangling, f"citations of docs/domain.md sections that do not exist: {dangling}; headings give {sorted(known)}"


def test_nothing_cites_the_spec_outside_the_repository():
    stale = [f"{path.relative_to(ROOT)}:{n}" for path in _texts()
             for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1) if OLD_NAME.search(line)]
    assert not stale, f"cite docs/domain.md#<section> instead of DOMAIN.md: {stale}"
