"""``kvconform matrix``: merge report JSON files into one table across implementations, versions and devices.

One row per invariant, one column per report and configuration: implementation@version ×
configuration × device (from the report's run info, ``harness.runinfo``).  A report of an
implementation that declares configurations (``harness.loading``: vLLM's pull, push,
permute) gives one column per configuration it ran, each with that configuration's
declared limits and cells.
Each cell is the row's status in that report (``pass``, ``fail``, ``xfail``,
``not-implemented``, ``not-run``, ``interrupted``; ``absent`` when the report
has no row for the invariant, e.g. made with an older catalogue), with the
failure statuses (``timeout``, ``crash``, ``out-of-bounds``; see
``harness.report.FAILURE_STATUSES``) of a failing row.  A failing cell links
to the upstream bug when the report carries one (a failure's ``link``), else
to the reading of the failures: a ``READING.md`` in the report's directory or
the one above it (``reports/<impl>-<version>/<device>/`` puts it in
``reports/<impl>-<version>/``), else to the report itself (its Markdown).  Reports made before run info existed still
merge: what they lack reads ``unknown``.

Links in the written files are relative to the file they are written to, so
``docs/matrix.md`` (generated from the committed reports, kept in sync by
``tests/test_matrix.py``) links ``../reports/...``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.catalogue import INVARIANTS
from harness.report import FAILURE_STATUSES, ROW_STATUSES
from harness.runinfo import split_name

MATRIX_VERSION = 1
UNKNOWN = "unknown"
ABSENT = "absent"
READING = "READING.md"
EXIT_USAGE = 4  # as the run command's usage errors (harness.cli.EXIT_USAGE)

DESCRIPTION = """\
Merge kvconform report JSON files (kvconform-report.json) into one matrix: one row per
invariant, one column per report and configuration (implementation@version, configuration,
device; a report of several configurations gives one column each), each cell
the invariant's status in that report (""" + ", ".join(ROW_STATUSES) + """, or absent
when the report has no such row) plus the failure statuses of a failing row (""" + ", ".join(
    s for s in FAILURE_STATUSES if s != "fail") + """).
A failing cell links to the report's upstream bug link, else to a READING.md in the
report's directory or the one above it, else to the report.  Reports without run info (older kvconform) merge,
their missing fields reading "unknown".  Writes Markdown (--markdown) and JSON (--json),
links relative to the file written; with neither, prints the Markdown.  A missing or
invalid report file is a usage error (exit status 4)."""


class MatrixError(ValueError):
    """A report file that cannot be merged; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Column:
    """One report: which implementation, configuration and device it covers, and where it lives."""

    implementation: str  #: project name, e.g. ``sglang``
    version: str
    configuration: str  #: ``--impl SPEC``, profile, xfails, limits and behaviour variables in words
    device: str
    report: Path  #: the report JSON (absolute)
    document: Path  #: the report's Markdown next to it when present, else the JSON (absolute)
    reading: Path | None  #: READING.md next to it or one directory up (absolute)
    run: dict[str, Any]  #: suite, catalogue and versions, for the list of reports
    statuses: dict[str, dict[str, Any]]  #: invariant -> {"status", "failure_statuses", "failures", "link"}
    order: int = 0  #: position of its configuration in the report (columns of one report keep the declared order)

    @property
    def title(self) -> str:
        return f"{self.implementation}@{self.version}"

    @property
    def sort_key(self) -> tuple[str | int, ...]:
        return (self.implementation, self.version, self.device, str(self.report), self.order, self.configuration)


def read_report(path: Path | str) -> dict[str, Any]:
    """The parsed report at ``path``; :class:`MatrixError` when it is missing or not a kvconform report."""
    path = Path(path)
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MatrixError(f"report {path}: no such file; pass kvconform-report.json files") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MatrixError(f"report {path}: cannot be read ({exc}); pass a readable kvconform-report.json") from None
    except json.JSONDecodeError as exc:
        raise MatrixError(f"report {path}: not JSON ({exc.msg} at line {exc.lineno}); "
                          "pass a kvconform-report.json, not the Markdown report") from None
    if not (isinstance(report, dict) and isinstance(report.get("rows"), list) and "schema_version" in report
            and all(isinstance(row, dict) and "invariant" in row and "status" in row for row in report["rows"])):
        raise MatrixError(f"report {path}: not a kvconform report (needs schema_version and rows with "
                          "invariant and status); pass a kvconform-report.json")
    return report


def columns(path: Path | str) -> list[Column]:
    """The matrix columns of the report at ``path``: one per configuration it ran, or one."""
    path = Path(path).resolve()
    report = read_report(path)
    run = report.get("run") or {}
    impl = report.get("impl") or {}
    identity = run.get("implementation") or _identity_from_name(str(impl.get("name") or impl.get("spec") or UNKNOWN))
    configurations: list[dict[str, Any] | None] = [
        c for c in report.get("configurations") or () if isinstance(c, dict) and c.get("name")]
    return [Column(
        implementation=str(identity.get("project") or UNKNOWN),
        version=str(identity.get("version") or UNKNOWN),
        configuration=_configuration(report, run, config),
        device=_device(report, run),
        report=path,
        document=next((p for p in (path.with_suffix(".md"),) if p.is_file()), path),
        reading=next((d / READING for d in (path.parent, path.parent.parent) if (d / READING).is_file()), None),
        run=_run_summary(report, run),
        statuses=_cells(report, config["name"] if config else None),
        order=order,
    ) for order, config in enumerate(configurations or [None])]


def build(paths: list[Path | str]) -> list[Column]:
    """Columns of every report, in a stable order (implementation, version, device, report, then the
    report's configurations in their declared order)."""
    return sorted((c for path in paths for c in columns(path)), key=lambda c: c.sort_key)


def invariant_rows(columns: list[Column]) -> list[tuple[str, str]]:
    """``(id, title)`` of the catalogue's invariants, then any other invariant a report has."""
    rows = [(inv.id, inv.title) for inv in INVARIANTS]
    known = {inv_id for inv_id, _ in rows}
    for col in columns:
        for inv_id, cell in col.statuses.items():
            if inv_id not in known:
                rows.append((inv_id, cell.get("title") or inv_id))
                known.add(inv_id)
    return rows


def as_json(columns: list[Column], base: Path) -> dict[str, Any]:
    """The matrix as a JSON-ready dict; paths relative to ``base`` (the JSON file's directory)."""
    return {
        "matrix_version": MATRIX_VERSION,
        "columns": [{
            "implementation": c.implementation, "version": c.version, "configuration": c.configuration,
            "device": c.device, "report": _relative(c.report, base), "document": _relative(c.document, base),
            "reading": _relative(c.reading, base) if c.reading else None, "run": c.run,
        } for c in columns],
        "rows": [{
            "invariant": inv_id, "title": title,
            "cells": [_cell(c, inv_id, base) for c in columns],
        } for inv_id, title in invariant_rows(columns)],
    }


def markdown(columns: list[Column], base: Path) -> str:
    """The matrix as Markdown; links relative to ``base`` (the Markdown file's directory)."""
    reports = len({c.report for c in columns})
    out = ["# kvconform conformance matrix", "",
           f"Generated by `kvconform matrix` from {reports} report{'s' * (reports != 1)}"
           + (f" ({len(columns)} columns: a report of several configurations gives one each)"
              if len(columns) != reports else "")
           + "; do not edit by hand.  Columns: implementation@version, configuration, device "
           "(listed under [Reports](#reports)).", ""]
    out.append("| invariant | " + " | ".join(f"{c.title}<br>{c.configuration}<br>{c.device}" for c in columns) + " |")
    out.append("|---|" + "---|" * len(columns))
    for inv_id, title in invariant_rows(columns):
        cells = []
        for c in columns:
            cell = _cell(c, inv_id, base)
            text = cell["status"] + (": " + ", ".join(cell["failure_statuses"]) if cell["failure_statuses"] and
                                     cell["failure_statuses"] != ["fail"] else "")
            cells.append(f"[{text}]({cell['link']})" if cell["link"] else text)
        out.append(f"| `{inv_id}` {title} | " + " | ".join(cells) + " |")
    out += ["", "Cell statuses: " + ", ".join(ROW_STATUSES) + f", {ABSENT} (the report has no row for it).  A failing "
            "cell lists its failures' statuses (unless all are plain fail) and links to the upstream bug, else the "
            "reading, else the report:", ""]
    out += [f"- **{status}**: {meaning}" for status, meaning in FAILURE_STATUSES.items()]
    out += ["", "## Reports", "", "| column | report | reading | completion | suite | catalogue | versions |",
            "|---|---|---|---|---|---|---|"]
    for c in columns:
        reading = f"[{READING}]({_relative(c.reading, base)})" if c.reading else "—"
        versions = ", ".join(f"{k} {v}" for k, v in c.run["versions"].items())
        out.append(f"| {c.title}, {c.configuration}, {c.device} | [{_relative(c.report.parent, base)}]"
                   f"({_relative(c.document, base)}) | {reading} | {c.run['completion']} | "
                   f"kvconform {c.run['suite_version']} ({c.run['commit']}) | {c.run['catalogue_version']} | "
                   f"{versions}; driver {c.run['driver']} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None, prog: str = "kvconform matrix") -> int:
    """Run ``kvconform matrix``; 0 on success, 4 (one ``PROG: error:`` line) for a bad report file or option."""
    parser = _ArgumentParser(prog=prog, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
                             usage=f"{prog} REPORT.json [REPORT.json ...] [--markdown OUT.md] [--json OUT.json]")
    parser.add_argument("reports", nargs="+", metavar="REPORT.json", help="kvconform-report.json files to merge")
    parser.add_argument("--markdown", metavar="OUT.md", help="write the matrix as Markdown to OUT.md")
    parser.add_argument("--json", metavar="OUT.json", help="write the matrix as JSON to OUT.json")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        columns = build(args.reports)
        outputs = [(Path(args.markdown), lambda base: markdown(columns, base))] if args.markdown else []
        if args.json:
            outputs.append((Path(args.json), lambda base: json.dumps(as_json(columns, base), indent=2) + "\n"))
        for path, render in outputs:
            _write(path, render(path.resolve().parent))
    except MatrixError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not outputs:
        sys.stdout.write(markdown(columns, Path.cwd()))
    for path, _ in outputs:
        print(f"kvconform matrix: {path}")
    return 0


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):  # usage errors are exit status 4 everywhere in kvconform
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _write(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise MatrixError(f"output {path}: cannot be written ({exc.strerror or exc}); pass a writable path") from None


def _identity_from_name(name: str) -> dict[str, str]:
    """Project and version from a display name such as ``sglang 0.5.23`` (reports without run info)."""
    project, version = split_name(name)
    return {"project": project, "version": version or UNKNOWN}


def _configuration(report: dict[str, Any], run: dict[str, Any], configuration: dict[str, Any] | None = None) -> str:
    """``--impl SPEC`` (with ``--config NAME`` for one of several configurations), the profile, and xfails,
    declared limits and behaviour variables when there are any."""
    config = run.get("configuration") or {}
    impl = report.get("impl") or {}
    words = [f"--impl {config.get('impl_spec') or impl.get('spec') or UNKNOWN}"
             + (f" --config {configuration['name']}" if configuration else ""),
             f"profile {config.get('profile') or report.get('profile') or UNKNOWN}"]
    xfails = config.get("xfails", [] if report.get("xfails_file") is None else None)
    if xfails is None:
        words.append(f"xfails {Path(report['xfails_file']).name}")
    elif xfails:
        words.append(f"{len(xfails)} xfails")
    limits = configuration.get("limits") or [] if configuration else config.get("limits", impl.get("limits") or [])
    if limits:
        words.append("limits " + ", ".join(limits))
    words += [f"{name}={value}" for name, value in sorted((config.get("environment") or {}).items())]
    return "; ".join(words)


def _device(report: dict[str, Any], run: dict[str, Any]) -> str:
    """``cpu``, the CUDA device names, or both joined by `` + ``."""
    selected = (report.get("devices") or {}).get("selected") or []
    names = list(run.get("device_names") or [])
    parts = []
    if "cpu" in selected:
        parts.append("cpu")
        names = names[1:]  # the CPU model comes first (harness.runinfo.machine)
    if "cuda" in selected:
        parts.append(", ".join(dict.fromkeys(names)) or "cuda")
    return " + ".join(parts) or UNKNOWN


def _run_summary(report: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    suite = run.get("suite") or {}
    versions = report.get("versions") or {}
    return {
        "suite_version": suite.get("version") or versions.get("kvconform") or UNKNOWN,
        "commit": suite.get("commit") or UNKNOWN,
        "catalogue_version": run.get("catalogue_version") or UNKNOWN,
        "completion": (report.get("completion") or {}).get("state") or UNKNOWN,
        "driver": run.get("driver") or UNKNOWN,
        "versions": {name: versions.get(name) or UNKNOWN for name in ("torch", "triton", "hypothesis", "python")},
    }


def _cells(report: dict[str, Any], configuration: str | None = None) -> dict[str, dict[str, Any]]:
    """Per invariant: status, title, failure statuses, failure count and an upstream link if one is carried
    (of one ``configuration``'s column when given)."""
    failures: dict[str, list[dict[str, Any]]] = {}
    for failure in report.get("failures") or []:
        if isinstance(failure, dict) and failure.get("configuration") == configuration:
            failures.setdefault(str(failure.get("invariant")), []).append(failure)
    cells = {}
    for whole_row in report["rows"]:
        row = {**whole_row, **(whole_row.get("configurations") or {}).get(configuration, {})} if configuration else whole_row
        found = failures.get(row["invariant"], [])
        found_statuses = {f.get("status", "fail") for f in found}
        statuses = row.get("failure_statuses") or [s for s in FAILURE_STATUSES if s in found_statuses]
        links = [f["link"] for f in found if f.get("link")]
        cells[row["invariant"]] = {
            "status": row["status"], "title": row.get("title"), "failures": len(found),
            "failure_statuses": statuses if row["status"] == "fail" else [],
            "upstream": links[0] if links else None,
        }
    return cells


def _cell(c: Column, invariant: str, base: Path) -> dict[str, Any]:
    """One cell for output: status, failure statuses and count, and the link of a failing cell."""
    cell = c.statuses.get(invariant)
    if cell is None:
        return {"status": ABSENT, "failure_statuses": [], "failures": 0, "link": None}
    link = None
    if cell["status"] == "fail":
        link = cell["upstream"] or _relative(c.reading or c.document, base)
    return {"status": cell["status"], "failure_statuses": cell["failure_statuses"], "failures": cell["failures"],
            "link": link}


def _relative(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path, base)).as_posix()
