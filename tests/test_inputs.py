"""Bad inputs are refused before the first test: one line naming the input, exit status 4, before pytest collects a test
(no timing assertions: how fast that is belongs in a benchmark, not a unit test).

Each case runs the real CLI (``python -m harness``, or a console-script-like
launcher) as a subprocess against a tiny fake implementation with ``-k``
selecting one cheap test, so a case costs seconds.  "Before the first test"
is checked by the absence of pytest's session header and of a report file;
"one line" by stderr holding exactly one ``error:`` line and no traceback.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from harness import cli, settings
from harness.report import fallback_directory

REPO_ROOT = Path(__file__).resolve().parent.parent
FAKE = "tests.fakes.fake_impl:make_implementation"  # its head mapping has a planted bug: the cheap test fails
HOSTILE = "tests.fakes.hostile_impls"
#: The reference's head mapping (what the cheap test calls): the cheap test passes.
CORRECT = f"{HOSTILE}:HangsInLayout"
CHEAP_TEST = "test_head_coverage_mapping"


@dataclass(frozen=True)
class Run:
    status: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if "error:" in line or line.startswith("ERROR:")]

    def assert_one_line_usage_error(self, *fragments: str) -> str:
        """Exit 4, one error line naming the input, no traceback, no test session started."""
        assert self.status == cli.EXIT_USAGE, (self.status, self.stdout[-2000:], self.stderr[-2000:])
        assert len(self.error_lines) == 1, self.stderr
        line = self.error_lines[0]
        assert all(fragment in line for fragment in fragments), line
        assert "Traceback" not in self.stdout + self.stderr
        assert "test session starts" not in self.stdout, self.stdout  # refused before pytest collected anything
        return line


def clean_environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVCONFORM_") and k != "CI"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    env.update(extra)
    return env


def kvconform(cwd: Path, *args: str, env: dict[str, str] | None = None, launcher: list[str] | None = None) -> Run:
    """Run the CLI in ``cwd``; the example database stays in ``cwd``."""
    command = [*(launcher or [sys.executable, "-m", "harness"]), *args]
    environment = env or clean_environment()
    environment.setdefault(settings.HYPOTHESIS_DB, str(cwd / "db"))
    started = time.monotonic()
    done = subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=300)
    return Run(done.returncode, done.stdout, done.stderr, time.monotonic() - started)


def cheap(*args: str) -> tuple[str, ...]:
    return ("--impl", CORRECT, "--device", "cpu", "-k", CHEAP_TEST, *args)


# -- the report directory ------------------------------------------------------------------------
def test_unwritable_report_directory_is_a_usage_error(tmp_path):
    line = kvconform(tmp_path, *cheap("--report-dir", "/proc/forbidden")).assert_one_line_usage_error(
        "--report-dir=/proc/forbidden", "pass a writable directory")
    print(line)


def test_report_directory_that_is_a_file_is_a_usage_error(tmp_path):
    (tmp_path / "taken").write_text("a file\n")
    run = kvconform(tmp_path, *cheap("--report-dir", "taken"))
    print(run.assert_one_line_usage_error("--report-dir=taken", "is a file, not a directory"))
    assert (tmp_path / "taken").read_text() == "a file\n"


def test_missing_report_directory_is_created(tmp_path):
    run = kvconform(tmp_path, *cheap("--report-dir", "new/nested"))
    assert run.status == cli.EXIT_OK, run.stdout[-2000:]
    assert json.loads((tmp_path / "new" / "nested" / "kvconform-report.json").read_text())["completion"]["state"] \
        == "complete"


def test_report_directory_broken_mid_run_falls_back_and_loses_nothing(tmp_path):
    """The implementation replaces the report directory with a file: the report still reaches a file and the
    terminal, and the line saying where is printed."""
    env = clean_environment(HOSTILE_REPORT_DIR=str(tmp_path / "rep"))
    run = kvconform(tmp_path, "--impl", f"{HOSTILE}:BreaksTheReportDirectory", "--device", "cpu", "-k", CHEAP_TEST,
                    "--report-dir", "rep", env=env)
    assert run.status == cli.EXIT_OK, run.stdout[-3000:]
    assert "kvconform conformance report" in run.stdout and "head_coverage     pass" in run.stdout
    problem = [line for line in run.stdout.splitlines() if line.startswith("kvconform: cannot write the report")]
    assert len(problem) == 1 and "instead" in problem[0], run.stdout[-3000:]
    printed = [line.removeprefix("kvconform report: ") for line in run.stdout.splitlines()
               if line.startswith("kvconform report: ")]
    fallback = Path(printed[0]).parent
    assert len(printed) == 2 and fallback.parent == Path(tempfile.gettempdir()), printed
    assert re.fullmatch(r"kvconform-report-\d+", fallback.name) and Path(printed[1]).parent == fallback
    report = json.loads(Path(printed[1]).read_text())
    assert report["completion"]["state"] == "complete"
    assert {r["invariant"]: r["status"] for r in report["rows"]}["head_coverage"] == "pass"
    Path(printed[0]).unlink()
    Path(printed[1]).unlink()
    Path(printed[0]).parent.rmdir()


def test_fallback_directory_is_per_process_under_the_temporary_directory():
    assert fallback_directory().name == f"kvconform-report-{os.getpid()}"


# -- the environment -----------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "value", "expected"), [
    ("KVCONFORM_CALL_TIMEOUT_S", "abc", "KVCONFORM_CALL_TIMEOUT_S='abc': expected a positive number of seconds"),
    ("KVCONFORM_CALL_TIMEOUT_S", "0", "KVCONFORM_CALL_TIMEOUT_S='0': expected a positive number of seconds"),
    ("KVCONFORM_CALL_TIMEOUT_AFTER_HANG_S", "-1", "KVCONFORM_CALL_TIMEOUT_AFTER_HANG_S='-1': expected a positive"),
    ("KVCONFORM_PROFILE", "fast", "KVCONFORM_PROFILE='fast': expected one of default, ci, thorough, gate"),
    ("KVCONFORM_CONFORMANCE_DIR", "/nonexistent", "KVCONFORM_CONFORMANCE_DIR='/nonexistent': expected an existing"),
    ("KVCONFORM_DIST_BACKEND", "mpi", "KVCONFORM_DIST_BACKEND='mpi': expected gloo, nccl or off"),
    ("KVCONFORM_DIST_DEVICE", "tpu", "KVCONFORM_DIST_DEVICE='tpu': expected cpu or cuda"),
    ("KVCONFORM_DIST_RANKS", "four", "KVCONFORM_DIST_RANKS='four': expected an integer >= 2"),
    ("KVCONFORM_DIST_TIMEOUT", "soon", "KVCONFORM_DIST_TIMEOUT='soon': expected a positive number of seconds"),
])
def test_bad_environment_variable_is_a_usage_error(tmp_path, name, value, expected):
    run = kvconform(tmp_path, *cheap(), env=clean_environment(**{name: value}))
    print(run.assert_one_line_usage_error(expected))


def test_hypothesis_db_that_is_a_file_is_a_usage_error(tmp_path):
    (tmp_path / "db-file").write_text("")
    run = kvconform(tmp_path, *cheap(), env=clean_environment(KVCONFORM_HYPOTHESIS_DB=str(tmp_path / "db-file")))
    run.assert_one_line_usage_error("KVCONFORM_HYPOTHESIS_DB=", "expected a directory")


def test_nccl_on_cpu_is_refused_by_distributed_modes_rules(tmp_path):
    run = kvconform(tmp_path, *cheap(), env=clean_environment(KVCONFORM_DIST_BACKEND="nccl", KVCONFORM_DIST_DEVICE="cpu"))
    run.assert_one_line_usage_error("KVCONFORM_DIST_BACKEND='nccl'", "KVCONFORM_DIST_DEVICE='cpu'", "CUDA tensors only")


def test_bad_environment_is_refused_by_plain_pytest_too(tmp_path):
    """The plugin checks the same settings at configure time, for runs that do not go through the CLI."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "harness.pytest_plugin", "-p", "no:cacheprovider",
         str(REPO_ROOT / "harness" / "conformance" / "test_head_coverage.py"), "-k", CHEAP_TEST, "--impl", FAKE],
        cwd=tmp_path, env=clean_environment(KVCONFORM_CALL_TIMEOUT_S="abc"), capture_output=True, text=True,
        timeout=300)
    assert done.returncode == 4, done.stdout[-2000:]
    assert "ERROR: KVCONFORM_CALL_TIMEOUT_S='abc': expected a positive number of seconds" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_unknown_kvconform_variable_is_named_with_the_likely_one(tmp_path):
    run = kvconform(tmp_path, *cheap(), env=clean_environment(KVCONFORM_CALL_TIMEOUT="5"))
    assert run.status == cli.EXIT_OK
    assert "warning: ignoring unknown environment variable(s) KVCONFORM_CALL_TIMEOUT " \
           "(did you mean KVCONFORM_CALL_TIMEOUT_S?)" in run.stderr


def test_settings_parse_defaults_and_values(tmp_path):
    assert settings.parse({}) == settings.Settings()
    parsed = settings.parse({"KVCONFORM_IMPL": " mypkg.mod ", "KVCONFORM_CALL_TIMEOUT_S": "2.5",
                             "KVCONFORM_CALL_TIMEOUT_AFTER_HANG_S": "9", "KVCONFORM_HYPOTHESIS_DB": str(tmp_path),
                             "KVCONFORM_PROFILE": "ci", "KVCONFORM_TYPO": "1"})
    assert (parsed.impl, parsed.call_timeout_s, parsed.profile, parsed.hypothesis_db) == ("mypkg.mod", 2.5, "ci", tmp_path)
    assert parsed.call_timeout_after_hang_s == 2.5  # never longer than the first deadline
    assert parsed.unknown == ("KVCONFORM_TYPO",)
    for value in ("nan", "inf", "-0", ""):
        if value:
            with pytest.raises(settings.SettingsError, match="expected a positive number of seconds"):
                settings.parse({"KVCONFORM_CALL_TIMEOUT_S": value})


def test_settings_follow_the_environment_the_guard_reads(monkeypatch):
    from harness import guard

    monkeypatch.setenv(settings.CALL_TIMEOUT, "0.25")
    assert guard.call_timeout_s(after_hang=False) == 0.25
    monkeypatch.setenv(settings.CALL_TIMEOUT, "abc")
    with pytest.raises(settings.SettingsError, match="KVCONFORM_CALL_TIMEOUT_S='abc'"):
        guard.call_timeout_s(after_hang=False)


def test_every_kvconform_variable_in_the_code_is_known_to_settings():
    """A new ``KVCONFORM_*`` knob must be parsed (and documented) by harness/settings.py."""
    found = set()
    for root in ("harness", "reference", "strategies", "bench"):
        for path in (REPO_ROOT / root).rglob("*.py"):
            found.update(re.findall(r"\bKVCONFORM_[A-Z0-9_]*[A-Z0-9]\b", path.read_text(encoding="utf-8")))
    assert found - set(settings.VARIABLES) == set()


# -- devices ---------------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_requested_without_cuda_is_a_usage_error_never_a_pass(tmp_path):
    run = kvconform(tmp_path, *cheap()[:2], "--device", "cuda", "-k", CHEAP_TEST)
    print(run.assert_one_line_usage_error("--device=cuda", "torch.cuda.is_available() is False", "--device cpu"))
    assert not (tmp_path / "kvconform-report.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the header on a machine without CUDA")
def test_all_devices_without_cuda_runs_on_cpu_and_says_cuda_is_absent(tmp_path):
    run = kvconform(tmp_path, "--impl", CORRECT, "--device", "all", "-k", CHEAP_TEST)
    assert run.status == cli.EXIT_OK, run.stdout[-2000:]
    devices = json.loads((tmp_path / "kvconform-report.json").read_text())["devices"]
    assert devices == {"requested": "all", "selected": ["cpu"], "note": "CUDA not available"}


# -- Hypothesis profiles -----------------------------------------------------------------------------
def test_unknown_profile_is_a_usage_error_listing_the_valid_ones(tmp_path):
    kvconform(tmp_path, *cheap("--profile", "fast")).assert_one_line_usage_error(
        "--profile/--hypothesis-profile", "'fast'", "'default', 'ci', 'thorough'")


def test_unknown_profile_passed_through_to_pytest_is_a_usage_error(tmp_path):
    kvconform(tmp_path, *cheap("--", "--hypothesis-profile", "fast")).assert_one_line_usage_error(
        "--hypothesis-profile='fast' is not a registered Hypothesis profile", "ci, default, explore, gate, thorough")


def test_hypothesis_profile_option_is_passed_through(tmp_path):
    run = kvconform(tmp_path, *cheap("--hypothesis-profile", "ci"))
    assert run.status == cli.EXIT_OK, run.stderr[-2000:]
    assert json.loads((tmp_path / "kvconform-report.json").read_text())["profile"] == "ci"


# -- command line ----------------------------------------------------------------------------------
def test_unknown_option_is_the_same_usage_error_code(tmp_path):
    kvconform(tmp_path, *cheap("--frobnicate")).assert_one_line_usage_error("unrecognized arguments: --frobnicate")
    kvconform(tmp_path, *cheap("--device", "tpu")).assert_one_line_usage_error("--device", "'tpu'")


def test_unloadable_implementation_is_a_usage_error(tmp_path):
    run = kvconform(tmp_path, "--impl", "no_such_module_xyz", "-k", CHEAP_TEST)
    assert run.status == cli.EXIT_USAGE and "Traceback" not in run.stdout + run.stderr
    assert "cannot import module 'no_such_module_xyz'" in run.stderr


def _script_launcher(tmp_path: Path) -> list[str]:
    """What a ``kvconform`` console script does: a file in a bin directory (sys.path[0]) calling ``main``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "kvconform"
    script.write_text("import sys\nfrom harness.cli import main\nsys.exit(main())\n")
    return [sys.executable, str(script)]


def test_console_script_and_python_m_both_find_an_adapter_in_the_current_directory(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "my_adapter.py").write_text((REPO_ROOT / "tests" / "fakes" / "fake_impl.py").read_text())
    for launcher in (_script_launcher(tmp_path), None):
        run = kvconform(work, "--impl", "my_adapter", "--device", "cpu", "-k", CHEAP_TEST, launcher=launcher)
        assert run.status == cli.EXIT_FAILED, run.stderr[-2000:]  # the fake's planted head-mapping bug
        assert json.loads((work / "kvconform-report.json").read_text())["impl"]["target"] == \
            "my_adapter:make_implementation"


def test_console_script_and_python_m_give_the_same_true_message_for_a_missing_module(tmp_path):
    messages = []
    for launcher in (_script_launcher(tmp_path), None):
        run = kvconform(tmp_path, "--impl", "absent_adapter", "-k", CHEAP_TEST, launcher=launcher)
        assert run.status == cli.EXIT_USAGE
        messages.append([line for line in run.stderr.splitlines() if "absent_adapter" in line])
    assert messages[0] == messages[1] and f"the current directory {tmp_path}" in messages[0][0]


# -- exit statuses ----------------------------------------------------------------------------------
def test_exit_status_zero_only_when_an_invariant_ran_and_none_failed(tmp_path):
    passing = kvconform(tmp_path, *cheap())
    assert passing.status == cli.EXIT_OK, passing.stdout[-2000:]
    failing = kvconform(tmp_path, "--impl", FAKE, "--device", "cpu", "-k", CHEAP_TEST)
    assert failing.status == cli.EXIT_FAILED
    nothing = kvconform(tmp_path, "--impl", CORRECT, "--device", "cpu", "-k", "no_test_has_this_name")
    assert nothing.status == cli.EXIT_NOTHING_CHECKED
    report = json.loads((tmp_path / "kvconform-report.json").read_text())
    assert report["completion"] == {"state": "complete", "exit_status": 5,
                                    "note": "no invariant was checked: every selected test was deselected or skipped"}


def test_help_documents_every_exit_status_and_variable(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    for code, meaning in ((0, "at least one invariant test ran and none failed"), (1, "some test failed"),
                          (2, "interrupted"), (3, "internal error"), (4, "usage error"), (5, "no invariant test ran")):
        assert f"  {code}  {meaning}" in text
    assert all(name in text for name in settings.VARIABLES)
    readme = (REPO_ROOT / "README.md").read_text()
    for code in range(6):
        assert f"| {code} |" in readme
