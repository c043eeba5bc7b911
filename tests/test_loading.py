"""Plug-in loading: spec forms, resolution order, and one actionable error per way of getting it wrong."""

from __future__ import annotations

import importlib.metadata
import time
from pathlib import Path

import pytest

from harness import loading
from harness.loading import ImplementationError, available_implementations, load_implementation, resolve_spec

REPO_ROOT = Path(__file__).resolve().parent.parent
FAKE = "tests.fakes.fake_impl:make_implementation"
BROKEN = "tests.fakes.broken_impls"


@pytest.fixture(autouse=True)
def _importable_fakes(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    monkeypatch.delenv(loading.IMPL_ENV_VAR, raising=False)


def _fake_entry_points(monkeypatch, **targets: str) -> None:
    """Make importlib.metadata report ``targets`` as kvconform.implementations entry points."""
    points = [importlib.metadata.EntryPoint(name, value, loading.ENTRY_POINT_GROUP) for name, value in targets.items()]

    def entry_points(**selection):
        assert selection == {"group": loading.ENTRY_POINT_GROUP}
        return points

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)


def test_module_colon_factory_is_called_and_validated():
    loaded = load_implementation(FAKE)
    assert (loaded.spec, loaded.name, loaded.target) == (FAKE, "fake", FAKE)
    assert loaded.capabilities == {"head_mapping", "layout"}
    assert loaded.implementation.staging_layout(1, 1, 1, 1, 1, 1) == [(0, 2)]


def test_module_form_uses_make_implementation():
    loaded = load_implementation("tests.fakes.fake_impl")
    assert loaded.target == FAKE and loaded.name == "fake"


def test_non_callable_object_is_used_as_is():
    loaded = load_implementation(f"{BROKEN}:READY_MADE")
    assert loaded.name == "ready-made" and loaded.capabilities == {"layout"}


def test_resolution_order_explicit_then_env_then_reference(monkeypatch):
    assert resolve_spec(None) == "reference"
    monkeypatch.setenv(loading.IMPL_ENV_VAR, "tests.fakes.fake_impl")
    assert resolve_spec(None) == "tests.fakes.fake_impl"
    assert resolve_spec("other.mod:f") == "other.mod:f"
    assert load_implementation(None).name == "fake"


def test_entry_point_names_resolve_and_are_listed(monkeypatch):
    _fake_entry_points(monkeypatch, fakeimpl=FAKE)
    loaded = load_implementation("fakeimpl")
    assert (loaded.spec, loaded.name, loaded.target) == ("fakeimpl", "fake", FAKE)  # the object's own name wins
    assert available_implementations() == {
        "fakeimpl": FAKE,
        "reference": "reference.plugin:make_implementation",
        "reference-triton": "reference.plugin:make_triton_implementation",
    }


def test_entry_point_overrides_builtin_of_same_name(monkeypatch):
    _fake_entry_points(monkeypatch, reference=FAKE)
    assert load_implementation("reference").name == "fake"


def test_builtin_names_work_without_entry_points(monkeypatch):
    _fake_entry_points(monkeypatch)
    monkeypatch.setitem(loading.BUILTIN_IMPLEMENTATIONS, "fakebuiltin", FAKE)
    assert load_implementation("fakebuiltin").target == FAKE
    assert loading.BUILTIN_IMPLEMENTATIONS["reference"] == "reference.plugin:make_implementation"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("tests.fakes.no_such_module:make", ["cannot import module 'tests.fakes.no_such_module'", "PYTHONPATH"]),
        ("no_such_top_level_pkg_xyz", ["cannot import module 'no_such_top_level_pkg_xyz'", "Registered names: reference"]),
        ("tests.fakes.import_error_impl", ["was found but importing it failed", "kvconform_missing_dependency_xyz"]),
        ("tests.fakes.fake_impl:make_implementaton",
         ["has no attribute 'make_implementaton'", "Did you mean 'make_implementation'"]),
        (BROKEN, ["has no attribute 'make_implementation'", "Name the factory explicitly", "raising_factory"]),
        (f"{BROKEN}:no_capabilities", ["has no 'capabilities' attribute", "Valid names: head_mapping"]),
        (f"{BROKEN}:unknown_capability", ["unknown capability name(s) 'kv_cpy'", "did you mean 'kv_copy'"]),
        (f"{BROKEN}:missing_method", ["capability 'kv_copy' needs method scatter() but it is missing"]),
        (f"{BROKEN}:not_callable_method", ["needs method staging_layout() but it is a int, not callable"]),
        (f"{BROKEN}:string_capabilities", ["must be an iterable of capability names", "not str 'layout'"]),
        (f"{BROKEN}:raising_factory",
         ["raising_factory() raised RuntimeError: staging pool exhausted", "broken_impls.py"]),
        (f"{BROKEN}:needs_arguments", ["must be callable with no arguments", "(device, page_size)"]),
        (f"{BROKEN}:returns_none", ["is None: the factory must return the implementation object"]),
        ("not a spec!", ["not a valid implementation spec", "'package.module:factory'"]),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_errors_name_the_problem(spec, expected):
    with pytest.raises(ImplementationError) as caught:
        load_implementation(spec)
    for fragment in expected:
        assert fragment in str(caught.value)


def test_a_hanging_factory_is_an_error_within_the_call_deadline(monkeypatch):
    """In the judge's own process (--in-process) too: the factory runs under $KVCONFORM_CALL_TIMEOUT_S."""
    monkeypatch.setenv("KVCONFORM_CALL_TIMEOUT_S", "0.5")
    started = time.monotonic()
    with pytest.raises(ImplementationError, match=r"hanging_factory\(\) did not return within 0.5s "
                                                  r"\(\$KVCONFORM_CALL_TIMEOUT_S\)"):
        load_implementation(f"{BROKEN}:hanging_factory")
    assert time.monotonic() - started < 10


def test_a_factory_raising_keyboard_interrupt_is_an_error_not_an_ended_session():
    with pytest.raises(ImplementationError, match=r"exiting_factory\(\) raised KeyboardInterrupt"):
        load_implementation(f"{BROKEN}:exiting_factory")


def test_bad_impl_on_command_line_is_one_usage_error_and_runs_nothing(pytester):
    ran = pytester.path / "ran"
    pytester.makepyfile(test_any=f"def test_touch():\n    open({str(ran)!r}, 'w').close()\n")
    result = pytester.runpytest("-p", "harness.pytest_plugin", "--impl", "bad.path", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([
        "ERROR: kvconform could not load the implementation:",
        "*cannot import module 'bad.path' (no module named 'bad')*PYTHONPATH*",
    ])
    assert "test session starts" not in result.stdout.str()
    assert not ran.exists()


def test_unknown_scope_limit_is_named(tmp_path, monkeypatch):
    class Narrow:
        capabilities = frozenset({"layout"})
        limits = frozenset({"whole_pages", "no_fp8"})

        def staging_layout(self, *args):
            return []

    with pytest.raises(loading.ImplementationError, match=r"'limits' names \['no_fp8'\].*valid: \['contiguous_layers', 'no_decode_pipeline', 'no_pipeline_fan_in', 'whole_pages'\]"):
        loading.validate_implementation(Narrow(), "narrow")
