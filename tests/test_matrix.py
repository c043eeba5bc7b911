"""``kvconform matrix``: merging reports, its error paths, and docs/matrix.md kept in sync with reports/."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness import cli, matrix
from harness.catalogue import CATALOGUE_VERSION, INVARIANTS

REPO_ROOT = Path(__file__).resolve().parent.parent
#: The committed reports docs/matrix.md is generated from: reports/<impl>-<version>/<device>/.
REPORTS_GLOB = "reports/*/*/kvconform-report.json"
REGENERATE = f"python -m harness matrix {REPORTS_GLOB} --markdown docs/matrix.md"


def committed_reports() -> list[Path]:
    return sorted(REPO_ROOT.glob(REPORTS_GLOB))


def synthetic_report(name: str, statuses: dict[str, str], *, run: dict | None = None,
                     failures: list[dict] | None = None, device: str = "cpu") -> dict:
    """A report as kvconform writes it; without ``run`` it looks like one made before run info existed."""
    report = {
        "schema_version": 1,
        "impl": {"spec": name.split()[0], "name": name, "target": None, "capabilities": [], "limits": [], "error": None},
        "versions": {"python": "3.11.7", "torch": "2.13.0", "hypothesis": "6.170.17", "pytest": "9.2.0",
                     "kvconform": "0.1.0"},
        "profile": "default",
        "devices": {"requested": device, "selected": [device], "note": None},
        "xfails_file": None,
        "summary": {},
        "rows": [{"invariant": inv_id, "title": inv_id.title(), "status": status}
                 for inv_id, status in statuses.items()],
        "failures": failures or [],
    }
    if run is not None:
        report["run"] = run
        report["completion"] = {"state": "complete", "exit_status": 1, "note": None}
    return report


def write(path: Path, report: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report))
    return path


@pytest.fixture
def two_synthetic(tmp_path) -> tuple[Path, Path]:
    """An SGLang CUDA report with run info, a timeout and a READING.md one level up; an old vLLM report."""
    sglang_run = {
        "suite": {"name": "kvconform", "version": "0.1.0", "commit": "abc123"},
        "catalogue_version": CATALOGUE_VERSION,
        "implementation": {"name": "sglang 0.5.23", "project": "sglang", "version": "0.5.23", "version_from": "name"},
        "configuration": {"impl_spec": "sglang", "profile": "ci", "device_option": "cuda", "devices": ["cuda"],
                          "xfails": [], "limits": ["whole_pages"],
                          "environment": {"KVCONFORM_CALL_TIMEOUT_S": "60"}},
        "device_names": ["NVIDIA H100 80GB HBM3"], "driver": "550.54", "platform": "Linux",
    }
    sglang = write(tmp_path / "reports" / "sglang-0.5.23" / "cuda-h100" / "kvconform-report.json", synthetic_report(
        "sglang 0.5.23", {"layout": "pass", "lifecycle": "fail", "round_trip": "fail"}, run=sglang_run, device="cuda",
        failures=[{"invariant": "lifecycle", "test": "t1", "status": "timeout"},
                  {"invariant": "lifecycle", "test": "t1", "status": "fail"},
                  {"invariant": "round_trip", "test": "t2", "status": "fail", "link": "https://example.org/bug/1"}]))
    (tmp_path / "reports" / "sglang-0.5.23" / "READING.md").write_text("# reading\n")
    vllm = write(tmp_path / "old" / "kvconform-report.json", synthetic_report(
        "vllm 0.33.0 (NIXL pull)", {"layout": "not-implemented", "head_coverage": "fail", "future_check": "pass"},
        failures=[{"invariant": "head_coverage", "test": "t3"}]))
    return sglang, vllm


def test_merges_two_synthetic_reports_and_a_real_one(two_synthetic, tmp_path):
    real = next(p for p in committed_reports() if p.parent.parent.name.startswith("reference-"))
    sglang, vllm = two_synthetic
    out_md, out_json = tmp_path / "docs" / "m.md", tmp_path / "docs" / "m.json"
    assert cli.main(["matrix", str(vllm), str(real), str(sglang), "--markdown", str(out_md), "--json", str(out_json)]) == 0
    data = json.loads(out_json.read_text())
    columns = data["columns"]
    assert [(c["implementation"], c["version"]) for c in columns] == [
        ("reference", json.loads(real.read_text())["run"]["implementation"]["version"]),
        ("sglang", "0.5.23"), ("vllm", "0.33.0")]
    ref, sg, old = columns
    assert (ref["device"], ref["run"]["catalogue_version"]) == ("cpu", CATALOGUE_VERSION)
    assert sg["device"] == "NVIDIA H100 80GB HBM3"
    assert sg["configuration"] == "--impl sglang; profile ci; limits whole_pages; KVCONFORM_CALL_TIMEOUT_S=60"
    assert sg["reading"] == "../reports/sglang-0.5.23/READING.md" and sg["run"]["driver"] == "550.54"
    assert old["run"] == {"suite_version": "0.1.0", "commit": "unknown", "catalogue_version": "unknown",
                          "completion": "unknown", "driver": "unknown",
                          "versions": {"torch": "2.13.0", "triton": "unknown", "hypothesis": "6.170.17",
                                       "python": "3.11.7"}}
    cells = {row["invariant"]: row["cells"] for row in data["rows"]}
    assert [row["invariant"] for row in data["rows"]] == [inv.id for inv in INVARIANTS] + ["future_check"]
    assert cells["lifecycle"][1] == {"status": "fail", "failure_statuses": ["timeout", "fail"], "failures": 2,
                                     "link": "../reports/sglang-0.5.23/READING.md"}
    assert cells["round_trip"][1]["link"] == "https://example.org/bug/1"  # the upstream link wins
    assert cells["head_coverage"][2] == {"status": "fail", "failure_statuses": ["fail"], "failures": 1,
                                         "link": "../old/kvconform-report.json"}  # no reading: the report itself
    assert cells["concurrency"][2]["status"] == "absent" and cells["future_check"][0]["status"] == "absent"
    assert all(cell["status"] == "pass" for cell in cells["layout"][:1])
    md = out_md.read_text()
    assert "| `lifecycle` Request lifecycle | pass | [fail: timeout, fail](../reports/sglang-0.5.23/READING.md) | absent |" in md
    assert "reference@" in md and "sglang@0.5.23<br>--impl sglang; profile ci; limits whole_pages; " \
        "KVCONFORM_CALL_TIMEOUT_S=60<br>NVIDIA H100" in md
    assert "| `head_coverage` Head coverage | pass | absent | [fail](../old/kvconform-report.json) |" in md


def test_prints_markdown_without_outputs(two_synthetic, capsys):
    assert matrix.main([str(p) for p in two_synthetic]) == 0
    assert capsys.readouterr().out.startswith("# kvconform conformance matrix")


@pytest.mark.parametrize("content, expected", [
    (None, "no such file"),
    ("{not json", "not JSON"),
    ('{"rows": 3}', "not a kvconform report"),
    ('[1, 2]', "not a kvconform report"),
])
def test_a_missing_or_invalid_report_is_one_line_usage_error(tmp_path, capsys, content, expected):
    path = tmp_path / "r.json"
    if content is not None:
        path.write_text(content)
    assert cli.main(["matrix", str(path)], prog="kvconform") == 4
    err = capsys.readouterr().err
    assert err.startswith(f"kvconform matrix: error: report {path}: {expected}") and err.count("\n") == 1


def test_no_report_and_unwritable_output_are_usage_errors(two_synthetic, tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        matrix.main([])
    assert exited.value.code == 4 and "REPORT.json" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert matrix.main([str(two_synthetic[0]), "--markdown", str(blocker / "m.md")]) == 4
    assert capsys.readouterr().err.startswith(f"kvconform matrix: error: output {blocker / 'm.md'}: cannot be written")


def test_python_m_harness_matrix_runs(two_synthetic, tmp_path):
    done = subprocess.run([sys.executable, "-m", "harness", "matrix", str(tmp_path / "nope.json")],
                          capture_output=True, text=True, cwd=REPO_ROOT)
    assert done.returncode == 4 and done.stderr.startswith("python -m harness matrix: error: report ")


def test_docs_matrix_md_is_generated_from_the_committed_reports():
    reports = committed_reports()
    assert any(p.parent.parent.name.startswith("reference-triton-") for p in reports), "reference-triton report missing"
    expected = matrix.markdown(matrix.build(reports), REPO_ROOT / "docs")
    actual = (REPO_ROOT / "docs" / "matrix.md").read_text()
    assert actual == expected, f"docs/matrix.md is out of date with reports/; regenerate it: {REGENERATE}"
