"""Standalone repro scripts (``harness.repro``): written next to the report for each failure, they replay the
failing example's calls with torch and the implementation only and fail with the judge's own message.

* a broken scatter (``tests/broken``) run through the CLI: the report links ``repro_<test>_<n>.py``; the script
  fails with the report's message, and passes when pointed at the reference (the fix);
* SGLang (skipped, with the install command, when it is absent): the script of a real SGLang failure runs
  in a process where ``import harness`` fails (site-packages without kvconform, ``python -S``) and fails with
  the same message;
* the verdict kinds on small in-process traces: an exception at the same call, a behaviour the judge
  rejected, a fix that changes a return; a trace with an argument no script can rebuild gets a reason.
"""

from __future__ import annotations

import importlib.util
import json
import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

from harness.distributed.results import RankError
from harness.guard import guard
from harness.oracles import InvariantViolation
from harness.repro import recorder
from harness.repro.script import implementation_path, repro_scripts, script_name, script_source

ROOT = Path(__file__).resolve().parents[1]
KVCONFORM_TOP_LEVEL = {"harness", "reference", "strategies", "adapters", "tests"}
SGLANG_INSTALL = "pip install --no-deps sglang==0.5.23 triton numpy (or: tox -e sglang)"


def _run_suite(impl: str, test: str, report_dir: Path, python: str = sys.executable, *options: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([python, "-m", "harness", "--impl", impl, "--profile", "gate", "--device", "cpu",
                           "--report-dir", str(report_dir), *options, test, "--", "-p", "no:cacheprovider"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((report_dir / "kvconform-report.json").read_text())


def _judge_message(failure: dict) -> str:
    """The judge's message as the report's error line has it (``Type: message``, first line)."""
    return failure["error"].partition(": ")[2]


def _assert_script_fails_like(script: Path, failure: dict, cwd: Path) -> None:
    """The script, run with plain ``python`` (it puts its IMPL_PATH on sys.path itself), ends like the report."""
    done = subprocess.run([sys.executable, str(script)], cwd=cwd, env={**os.environ, "PYTHONPATH": ""},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert _last_line(done.stderr) == f"AssertionError: {_judge_message(failure)}"


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def test_a_broken_scatter_repro_fails_with_the_judges_message_and_passes_on_the_fix(tmp_path):
    report = _run_suite("tests.broken.kv_copy:OnePageOff", "test_round_trip.py::test_round_trip_kv_copy", tmp_path)
    (failure,) = report["failures"]
    name = failure["repro_script"]
    assert name == "repro_test_round_trip_kv_copy_cpu_1.py", failure
    assert f"[{name}]({name})" in (tmp_path / "kvconform-report.md").read_text()
    script = tmp_path / name
    env = {**os.environ, "PYTHONPATH": ""}  # the script puts its IMPL_PATH (this checkout) on sys.path itself

    broken = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert _last_line(broken.stderr) == f"AssertionError: {_judge_message(failure)}"
    assert "row" in broken.stderr and "expected bytes" in broken.stderr  # what the oracle's bytes check found

    fixed = subprocess.run([sys.executable, str(script), "reference.plugin:make_implementation"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=300)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "NOT REPRODUCED" in fixed.stdout and "every check passed" in fixed.stdout


def test_a_repro_builds_the_configuration_that_failed_not_the_declaring_object(tmp_path):
    """``configured_impl``'s factory returns an object that only declares configurations; the failing column
    is ``broken``, so the script must build ``configurations["broken"]`` (spec ``...:make_implementation#broken``)."""
    report = _run_suite("tests.fakes.configured_impl:make_implementation", "test_layout.py::test_layout_spans",
                        tmp_path, sys.executable, "--config", "broken")
    (failure,) = report["failures"]
    script = tmp_path / failure["repro_script"]
    assert "make_implementation#broken" in script.read_text()
    _assert_script_fails_like(script, failure, tmp_path)


def test_an_implementations_own_exception_raised_in_its_worker_is_replayed_as_itself(tmp_path):
    """Under process isolation (the CLI's default) an exception class of the implementation reaches the judge
    as its name and message; the script must expect that class by name, as a one-process replay raises it."""
    report = _run_suite("tests.fakes.xfail_impl:own_exception", "test_layout.py::test_layout_spans", tmp_path)
    (failure,) = report["failures"]
    assert "raised StagingRefused: more than 3 writers" in failure["error"]
    script = tmp_path / failure["repro_script"]
    assert "raises=('StagingRefused', 'more than 3 writers')" in script.read_text()
    _assert_script_fails_like(script, failure, tmp_path)


def _site_packages_without_kvconform(tmp_path: Path) -> list[str]:
    """This interpreter's site-packages as directories of links, without kvconform (its packages, its editable
    finder, its .pth files): with ``python -S`` and these on PYTHONPATH, ``import harness`` fails."""
    views = []
    for index, directory in enumerate(p for p in site.getsitepackages() if Path(p).is_dir()):
        view = tmp_path / f"site{index}"
        view.mkdir()
        for entry in Path(directory).iterdir():
            name = entry.name
            if (name in KVCONFORM_TOP_LEVEL or name.endswith(".pth") or "kvconform" in name
                    or name.startswith("__editable__")):
                continue
            (view / name).symlink_to(entry)
        views.append(str(view))
    return views


_NO_KVCONFORM_RUNNER = """
import runpy, sys
for name in ("harness", "strategies", "reference"):
    try:
        __import__(name)
    except ImportError:
        continue
    sys.exit(f"{name} is importable: this process is not free of kvconform")
sys.argv = [sys.argv[1]]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    assert "harness" not in sys.modules, "the repro imported kvconform's harness"
"""


@pytest.mark.skipif(importlib.util.find_spec("sglang") is None, reason=f"sglang is not installed ({SGLANG_INSTALL})")
def test_an_sglang_repro_runs_without_kvconform_and_fails_with_the_same_message(tmp_path):
    """SGLang counts a duplicate CHUNK_READY toward the fan-in (harness/xfails/sglang.json): the script of that
    failure (its ``torch`` configuration, the second one) runs with torch and SGLang only, in a process where
    kvconform cannot be imported."""
    report = _run_suite("sglang", "test_lifecycle.py::test_lifecycle_arrival_orders", tmp_path / "report",
                        sys.executable, "--config", "torch")
    (failure,) = report["failures"]
    assert failure["repro_script"], failure
    script = tmp_path / "report" / failure["repro_script"]
    only_adapters = tmp_path / "only"
    only_adapters.mkdir()
    (only_adapters / "adapters").symlink_to(ROOT / "adapters")  # the implementation's package, and nothing else
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    env["PYTHONPATH"] = os.pathsep.join(_site_packages_without_kvconform(tmp_path))
    env["REPRO_IMPL_PATH"] = str(only_adapters)
    done = subprocess.run([sys.executable, "-S", "-c", _NO_KVCONFORM_RUNNER, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stdout + done.stderr
    assert _last_line(done.stderr) == f"AssertionError: {_judge_message(failure)}", done.stderr[-3000:]


# -- verdict kinds on small traces ---------------------------------------------------------------
class RaisingLayout:
    """``staging_layout`` raises for two writers."""

    capabilities = ("layout",)

    def staging_layout(self, num_writers, num_tokens, heads, layers, head_dim, element_size):
        if num_writers == 2:
            raise IndexError("writer 1 has no span")
        return [(0, 2 * layers * num_tokens * heads * head_dim * element_size)]


class RaisingLayoutOtherMessage(RaisingLayout):
    """The same exception class at the same call, another message (messages may carry ids, timings, state)."""

    def staging_layout(self, num_writers, num_tokens, heads, layers, head_dim, element_size):
        if num_writers == 2:
            raise IndexError(f"writer 1 has no span (request {id(self)})")
        return super().staging_layout(num_writers, num_tokens, heads, layers, head_dim, element_size)


class RaisingLayoutOtherClass(RaisingLayout):
    def staging_layout(self, num_writers, num_tokens, heads, layers, head_dim, element_size):
        if num_writers == 2:
            raise KeyError("writer 1 has no span")
        return super().staging_layout(num_writers, num_tokens, heads, layers, head_dim, element_size)


class WrongHeads:
    """Rank 1 of 2 holds the heads of rank 0."""

    capabilities = ("head_mapping",)

    def heads_of_rank(self, total_kv_heads, tp_size, rank):
        block = total_kv_heads // tp_size
        return list(range(block))


class RightHeads(WrongHeads):
    def heads_of_rank(self, total_kv_heads, tp_size, rank):
        block = total_kv_heads // tp_size
        return list(range(rank * block, rank * block + block))


def _script_of(tmp_path: Path, spec: str, calls, exc: BaseException) -> Path:
    impl_class = globals()[spec.rpartition(":")[2]]
    with recorder.enabled(plain=True) as trace:
        impl = guard(impl_class(), checked=False)
        try:
            calls(impl)
        except Exception as raised:
            exc = raised if exc is None else exc
    assert trace is not None
    recorder.attach(trace, exc)
    path = tmp_path / script_name("tests/test_repro.py::case", 1)
    path.write_text(script_source(trace, nodeid="tests/test_repro.py::case", index=1, count=1, spec=spec,
                                  message=str(exc)))
    return path


def _run_script(path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(path), *args], env={**os.environ, "PYTHONPATH": ""},
                          capture_output=True, text=True, timeout=300)


def test_an_exception_recurs_at_the_same_call(tmp_path):
    path = _script_of(tmp_path, "tests.test_repro:RaisingLayout",
                      lambda impl: [impl.staging_layout(1, 2, 1, 1, 2, 2), impl.staging_layout(2, 2, 1, 1, 2, 2)], None)
    done = _run_script(path)
    assert done.returncode == 1
    assert _last_line(done.stderr) == "AssertionError: writer 1 has no span"
    assert "raises=('IndexError', 'writer 1 has no span'), verdict=True" in path.read_text()


def test_the_same_exception_class_with_another_message_recurs_and_another_class_does_not(tmp_path):
    path = _script_of(tmp_path, "tests.test_repro:RaisingLayout",
                      lambda impl: [impl.staging_layout(1, 2, 1, 1, 2, 2), impl.staging_layout(2, 2, 1, 1, 2, 2)], None)
    same_class = _run_script(path, "tests.test_repro:RaisingLayoutOtherMessage")
    assert same_class.returncode == 1 and _last_line(same_class.stderr) == "AssertionError: writer 1 has no span"
    assert "raised IndexError as in the failing run, with another message" in same_class.stderr
    other_class = _run_script(path, "tests.test_repro:RaisingLayoutOtherClass")
    assert other_class.returncode == 0 and "NOT REPRODUCED" in other_class.stdout
    assert "raised KeyError" in other_class.stdout


def test_a_rejected_behaviour_recurs_and_a_fix_is_not_reproduced(tmp_path):
    message = "rank 1 of 2 holds [0, 1], expected [2, 3]"
    path = _script_of(tmp_path, "tests.test_repro:WrongHeads",
                      lambda impl: [impl.heads_of_rank(4, 2, 0), impl.heads_of_rank(4, 2, 1)],
                      InvariantViolation(message))
    done = _run_script(path)
    assert done.returncode == 1 and _last_line(done.stderr) == f"AssertionError: {message}"
    fixed = _run_script(path, "tests.test_repro:RightHeads")
    assert fixed.returncode == 0, fixed.stderr
    assert "NOT REPRODUCED" in fixed.stdout and "returned [2, 3]; the failing run: [0, 1]" in fixed.stdout


def test_an_argument_no_script_can_rebuild_is_reported_instead_of_a_script():
    with recorder.enabled(plain=True) as trace:
        guard(WrongHeads(), checked=False).heads_of_rank(4, 2, object())
    exc = InvariantViolation("bad")
    ((key, value),) = repro_scripts(exc, trace, "tests/test_repro.py::case", "tests.test_repro:WrongHeads")
    (entry,) = json.loads(value)
    assert entry == {"note": "no repro script: argument rank (object) cannot be rebuilt outside kvconform"}


def test_a_failure_in_a_rank_process_gets_no_script_but_says_why():
    """Distributed mode: the failing calls ran in rank processes; the judge's own planning calls are all the
    recorder saw, and a script of those would "reproduce" the failure whatever the implementation does."""
    with recorder.enabled(plain=True) as trace:
        impl = guard(RightHeads(), checked=False)
        impl.heads_of_rank(4, 2, 0)
    failure = RankError("rank 0 (prefill 0, cpu): RuntimeError: boom")
    [(_, entries)] = repro_scripts(failure, trace, "harness/conformance/t.py::test_distributed_x",
                                   "tests.test_repro:RightHeads")
    [entry] = json.loads(entries)
    assert entry == {"note": "no repro script: the failing calls ran in a rank process (distributed mode), which "
                             "the recorder does not see; rerun with the repro line"}


def test_nothing_is_recorded_outside_a_failing_example():
    assert recorder.active() is None
    guard(WrongHeads(), checked=False).heads_of_rank(4, 2, 0)
    assert recorder.active() is None


def test_the_script_finds_the_implementation_where_it_was_loaded_from():
    assert implementation_path("reference.plugin:make_implementation") == str(ROOT)
    assert implementation_path("tests.broken.kv_copy:OnePageOff") == str(ROOT)  # a namespace package


def test_calls_from_several_threads_are_replayed_sequentially_and_the_script_says_so(tmp_path):
    import threading

    def two_threads(impl):
        worker = threading.Thread(target=impl.heads_of_rank, args=(4, 2, 0))
        worker.start()
        worker.join()
        impl.heads_of_rank(4, 2, 1)

    path = _script_of(tmp_path, "tests.test_repro:WrongHeads", two_threads, InvariantViolation("wrong heads"))
    source = path.read_text()
    assert "from 2 threads; this script" in source and "replays the calls sequentially" in source
    assert _last_line(_run_script(path).stderr) == "AssertionError: wrong heads"


def test_a_recording_that_breaks_never_changes_what_the_test_sees(monkeypatch):
    def broken(self, value, name):
        raise RuntimeError("cannot encode")

    monkeypatch.setattr(recorder.Trace, "_encode", broken)
    with recorder.enabled(plain=True) as trace:
        assert guard(RightHeads(), checked=False).heads_of_rank(4, 2, 1) == [2, 3]
    assert trace is not None and trace.problem == "recording failed: RuntimeError: cannot encode"


def test_a_storage_moved_into_shared_memory_mid_case_stays_one_storage():
    """Process isolation shares a CPU storage in place when it first crosses: its address changes, not the storage."""
    import torch

    trace = recorder.Trace()
    pool = torch.zeros(8)
    before = trace._tensor(pool)
    pool.share_memory_()
    after = trace._tensor(pool[2:])
    assert (after.storage, len(trace.storages)) == (before.storage, 1)
