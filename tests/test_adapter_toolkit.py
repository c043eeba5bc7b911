"""The engine-neutral adapter toolkit (adapters/toolkit): each piece does what an adapter relies on.

Runs without any engine installed: the borrowed sources, pins and packages
here are small files written by the tests.
"""

from __future__ import annotations

import enum
import sys
import threading
import warnings

import pytest
import torch

from adapters import toolkit


# ---------------------------------------------------------------- borrowing
def test_borrowing_reports_an_unprovided_global(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f(x: Ann) -> Ann:\n    return helper(x) + len([x])\n")
    found, problems = toolkit.borrow(tmp_path, "m.py", ("f",), {})
    assert "f" in found and problems == ["m.py: f now reads globals the adapter does not provide: helper"]
    assert toolkit.borrow(tmp_path, "m.py", ("g",), {})[1] == ["m.py: g no longer exists"]


def test_borrowed_methods_and_siblings_run_in_the_given_namespace(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text(
        "import os\n"
        "def twice(x):\n    return 2 * x\n"
        "def scaled(x):\n    return twice(x) * FACTOR\n"
        "class Box:\n    def get(self):\n        return scaled(self.v)\n"
        "    def boom(self):\n        raise ValueError('from the borrowed file')\n"
    )
    namespace = {"FACTOR": 10}
    found, problems = toolkit.borrow(tmp_path, "pkg/m.py", ("twice", "scaled", "Box.get", "Box.boom"), namespace)
    assert problems == []
    assert "get" not in namespace and "twice" in namespace  # methods do not become globals; functions do
    box = type("Box", (), {"get": found["Box.get"], "boom": found["Box.boom"], "v": 3})()
    assert box.get() == 60
    with pytest.raises(ValueError) as raised:
        box.boom()
    assert raised.traceback[-1].path == tmp_path / "pkg" / "m.py"  # tracebacks point into the source file


def test_free_globals_skip_annotations_locals_and_builtins(tmp_path):
    import ast

    node = ast.parse("def f(a: T) -> U:\n    b: V = len(a)\n    return g(b)\n").body[0]
    assert toolkit.free_globals(node) == {"g"}


# ---------------------------------------------------------------- placeholders
def test_placeholder_packages_skip_initialisers_but_import_leaves(tmp_path, monkeypatch):
    package = tmp_path / "kvcf_fake_engine"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('heavy initialiser ran')\n")
    (package / "sub" / "__init__.py").write_text("raise RuntimeError('heavy sub-initialiser ran')\n")
    (package / "sub" / "leaf.py").write_text("VALUE = 7\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    names = ("kvcf_fake_engine", "kvcf_fake_engine.sub")
    try:
        created = toolkit.skip_package_initialisers(package, names, "skipped by a test")
        assert sorted(created) == list(names)
        from kvcf_fake_engine.sub import leaf  # type: ignore[import-not-found]

        assert leaf.VALUE == 7
        assert getattr(sys.modules["kvcf_fake_engine"], toolkit.PLACEHOLDER_MARK)
        assert toolkit.skip_package_initialisers(package, names, "again") == {}  # already imported: left alone
    finally:
        for name in [*names, "kvcf_fake_engine.sub.leaf"]:
            sys.modules.pop(name, None)


def test_never_reached_names_itself_and_the_adapter():
    fn = toolkit.never_reached("get_thing", "kvconform's x adapter")
    assert fn.__name__ == "get_thing"
    with pytest.raises(RuntimeError, match=r"kvconform's x adapter does not provide get_thing\(\)"):
        fn(1, k=2)
    why = toolkit.never_reached("get_group", "kvconform's x adapter", "it runs on one rank")
    with pytest.raises(RuntimeError, match=r"^kvconform's x adapter does not provide get_group\(\); it runs on one rank$"):
        why()


# ---------------------------------------------------------------- loading once
def test_load_once_runs_one_load_for_concurrent_callers_and_retries_a_failure():
    calls = []
    gate = threading.Event()

    @toolkit.load_once
    def load():
        """Loads the engine."""
        calls.append(threading.get_ident())
        gate.wait(5)
        if len(calls) == 1:
            raise ImportError("first load fails")
        return object()

    with pytest.raises(ImportError, match="first load fails"):
        gate.set()
        load()
    gate.clear()
    results = []
    threads = [threading.Thread(target=lambda: results.append(load())) for _ in range(4)]
    for thread in threads:
        thread.start()
    gate.set()
    for thread in threads:
        thread.join()
    assert len(calls) == 2  # the failure was not cached; the success ran once for four callers
    assert len(results) == 4 and all(r is results[0] for r in results) and load() is results[0]
    assert load.__doc__ == "Loads the engine."


# ---------------------------------------------------------------- the API pin
class _Where(enum.Enum):
    DEVICE = "device"


def _pinned(self, room, *, where=_Where.DEVICE, n: int = 1) -> None:
    pass


def test_parameters_of_drops_annotations_and_writes_enum_defaults_by_name():
    assert toolkit.parameters_of(_pinned) == "(self, room, *, where=_Where.DEVICE, n=1)"


def test_api_differences_lists_every_changed_missing_and_vanished_name():
    objects = {"f": _pinned, "g": _pinned, "attr": 1}
    problems = toolkit.api_differences(
        {"f": "(self, room, *, where=_Where.DEVICE, n=1)", "g": "(self, room)", "gone": "()"},
        ("attr", "lost"), objects.__getitem__)
    assert problems == [
        "g signature changed: expected (self, room), found (self, room, *, where=_Where.DEVICE, n=1)",
        "gone is missing",
        "lost is missing",
    ]


def test_attribute_at_walks_a_dotted_path_and_reports_the_missing_part():
    root = type("Root", (), {"Box": type("Box", (), {"get": _pinned})})
    assert toolkit.attribute_at(root, "Box.get") is _pinned
    with pytest.raises(AttributeError, match="gone"):
        toolkit.attribute_at(root, "Box.gone")
    problems = toolkit.api_differences({}, ("Box.get", "Box.gone"), lambda key: toolkit.attribute_at(root, key))
    assert problems == ["Box.gone is missing"]


PIN = toolkit.ApiPin("engine", "1.2.3", "pip install engine==1.2.3", "adapters/engine/")


def test_pin_refuses_a_mismatch_naming_both_versions_and_each_difference():
    class EngineApiMismatch(toolkit.ApiMismatch):
        pass

    with pytest.raises(EngineApiMismatch, match=r"targets engine 1\.2\.3; the installed engine 1\.3 differs:\n  - a\n  - b\n"
                                                r"Install engine==1\.2\.3 \(pip install engine==1\.2\.3\) or update adapters/engine/"):
        PIN.require("1.3", ["a", "b"], EngineApiMismatch)


def test_pin_warns_on_another_version_whose_api_matches_and_is_silent_on_its_own():
    with pytest.warns(UserWarning, match=r"targets engine 1\.2\.3, found 1\.3; its API matches"):
        PIN.require("1.3", [])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PIN.require("1.2.3", [])


def test_package_directory_finds_without_importing_and_names_the_install_command(tmp_path, monkeypatch):
    package = tmp_path / "kvcf_unimported"
    package.mkdir()
    (package / "__init__.py").write_text("raise RuntimeError('imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert toolkit.package_directory("kvcf_unimported", "pip install it") == package
    assert "kvcf_unimported" not in sys.modules
    with pytest.raises(toolkit.EngineUnavailable, match="kvcf_absent_xyz is not installed; .*: pip install kvcf"):
        toolkit.package_directory("kvcf_absent_xyz", "pip install kvcf")
    assert toolkit.installed_version("kvcf_absent_xyz") is None
    assert toolkit.installed_version("torch") is not None


# ---------------------------------------------------------------- clock, devices, logging
def test_clock_router_reads_the_clock_of_this_thread_only():
    router = toolkit.ClockRouter()
    seen_elsewhere = []
    with router.using(lambda: 42.0):
        assert router.time() == router.monotonic() == 42.0
        with router.using(lambda: 7):
            assert router.monotonic() == 7.0
        assert router.monotonic() == 42.0
        other = threading.Thread(target=lambda: seen_elsewhere.append(router.monotonic()))
        other.start()
        other.join()
    assert seen_elsewhere[0] != 42.0 and router.time() != 42.0
    assert router.sleep is __import__("time").sleep  # the rest is the real time module


def test_thread_scoped_value_is_seen_on_its_thread_inside_its_block_only():
    scoped = toolkit.ThreadScoped()
    seen_elsewhere = []
    assert scoped.get() is None
    with pytest.raises(RuntimeError, match="^read outside$"):
        scoped.require("read outside")
    with scoped.using((1, 4)) as value:
        assert value == (1, 4) and scoped.require("read outside") == (1, 4)
        with pytest.raises(ValueError), scoped.using((2, 4)):
            assert scoped.get() == (2, 4)
            raise ValueError("engine call failed")
        assert scoped.get() == (1, 4)  # the enclosing value is back, even after an error
        other = threading.Thread(target=lambda: seen_elsewhere.append(scoped.get()))
        other.start()
        other.join()
    assert seen_elsewhere == [None] and scoped.get() is None


def test_cpu_stream_and_event_stand_ins_are_complete_and_ordered():
    stream = toolkit.SynchronousStream("cpu")
    assert stream.device == torch.device("cpu") and stream.query()
    event = stream.record_event()
    assert isinstance(event, toolkit.CompletedEvent) and event.query()
    given = toolkit.CompletedEvent()
    assert stream.record_event(given) is given
    assert toolkit.is_cpu("cpu") and toolkit.is_cpu(torch.device("cpu")) and not toolkit.is_cpu("meta")


def test_kernels_imported_under_the_triton_interpreter_are_interpreted(tmp_path, monkeypatch):
    triton = pytest.importorskip("triton", reason="triton is not installed (pip install triton)")
    if getattr(triton, "knobs", None) is None:
        pytest.skip(f"triton {triton.__version__} has no triton.knobs; only TRITON_INTERPRET=1 selects the interpreter")
    (tmp_path / "kvcf_kernels.py").write_text(
        "import triton\n\n@triton.jit\ndef kernel(x_ptr):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = triton.knobs.runtime.interpret
    try:
        with toolkit.triton_interpreter():
            import kvcf_kernels  # type: ignore[import-not-found]
        assert type(kvcf_kernels.kernel).__name__ == "InterpretedFunction"
        assert triton.knobs.runtime.interpret == before  # scoped to the import
    finally:
        sys.modules.pop("kvcf_kernels", None)


def test_cuda_sync_debug_pause_is_a_no_op_off_cuda():
    with toolkit.cuda_sync_debug_paused(torch.device("cpu")):
        pass


def test_single_rank_gloo_group_reduces_to_the_identity():
    group = toolkit.single_rank_gloo_group()
    flags = torch.tensor([3, 1])
    group.allreduce([flags]).wait()
    assert flags.tolist() == [3, 1] and group.size() == 1


def test_once_logger_emits_each_message_once_per_level(caplog):
    logger = toolkit.OnceLogger("kvconform.test.once")
    with caplog.at_level("DEBUG", logger="kvconform.test.once"):
        for _ in range(3):
            logger.warning_once("w %s", 1)
            logger.info_once("w %s", 1)
        logger.debug("plain")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "w 1"), ("INFO", "w 1"), ("DEBUG", "plain")]


def test_log_capture_keeps_warnings_and_exceptions_of_its_logger_while_attached():
    import logging

    logger = logging.getLogger("kvconform.test.capture")
    child = logging.getLogger("kvconform.test.capture.child")
    with toolkit.LogCapture().attached("kvconform.test.capture") as log:
        logger.info("below the level")
        child.warning("request %s failed", 7)
        try:
            raise ValueError("bad descriptor")
        except ValueError:
            logger.exception("transfer raised")
        logging.getLogger("kvconform.test.elsewhere").error("another logger")
    logger.warning("after the block")
    assert log.lines == ["request 7 failed", "transfer raised [ValueError: bad descriptor]"]
    assert log not in logger.handlers
