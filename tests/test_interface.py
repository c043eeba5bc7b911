"""The interface is the single source: tables, load-time signature checks and the guard's return checks
all derive from the Protocols in ``harness/interface.py``."""

from __future__ import annotations

import inspect

import pytest

from harness import guard, interface, loading
from harness.loading import ImplementationError, validate_implementation
from reference.plugin import ReferenceImplementation


# -- the tables derive from the Protocols -----------------------------------------------------------
def test_capability_methods_are_the_protocol_methods():
    for cap in interface.CAPABILITY_TABLE:
        declared = tuple(n for n, v in vars(cap.protocol).items() if inspect.isfunction(v) and not n.startswith("_"))
        assert interface.CAPABILITIES[cap.name] == declared and declared, cap
    assert interface.ALLOCATOR_METHODS == ("assign", "free", "watermark")
    assert "poll" in interface.DECODE_HANDLER_METHODS and "failure_reason" not in interface.DECODE_HANDLER_METHODS


def test_every_method_has_one_owner():
    owners = interface.method_owners()
    assert owners["assign"][0].name == "allocator" and owners["assign"][1] is interface.Allocator
    assert owners["failure_reason"][1] is interface.ExplainsFailures and owners["poll"][0].invariant == "lifecycle"
    assert interface.documented_arguments("register", (1, "r", "t", 0, 4)).arguments["receiver"] == "r"


def test_factories_name_what_they_make():
    products = {factory: made for cap in interface.CAPABILITY_TABLE for factory, made in cap.products.items()}
    assert products == {"make_allocator": interface.Allocator, "make_decode_handler": interface.DecodeHandler}


def test_the_full_implementation_protocol_has_every_capability_method():
    everything = {m for methods in interface.CAPABILITIES.values() for m in methods}
    assert everything <= set(dir(interface.Implementation))


def test_documented_arguments_bind_by_the_protocol_names():
    call = interface.documented_arguments("gather", tuple(range(8)))
    assert call.arguments["page_table"] == 2 and call.arguments["out"] == 7
    call.arguments["page_table"] = "shifted"
    assert call.args == (0, 1, "shifted", 3, 4, 5, 6, 7)


# -- load time: a signature that cannot take the documented call is one clear error ------------------
class _KvCopy:
    capabilities = frozenset({"kv_copy"})

    def gather(self, k_layers, v_layers, page_table, page_size, num_tokens, head_start, head_count, out):
        pass

    def scatter(self, staging, writer_destinations, heads_per_writer, layers_per_writer, k_layers, v_layers,
                page_table, page_size, num_tokens):
        pass


class TooFewPositional(_KvCopy):
    def gather(self, k_layers, v_layers, page_table, page_size, num_tokens, head_start, head_count):
        pass


class ExtraRequiredPositional(_KvCopy):
    def scatter(self, staging, writer_destinations, heads_per_writer, layers_per_writer, k_layers, v_layers,
                page_table, page_size, num_tokens, device):
        pass


class ExtraRequiredKeywordOnly(_KvCopy):
    def gather(self, *args, stream):
        pass


class RenamedButPositional(_KvCopy):
    """Names may differ for parameters the harness passes by position: this one is fine."""

    def gather(self, k, v, table, page, tokens, start, count, buffer):
        pass


class _Handler:
    capabilities = frozenset({"decode_handler"})


class HandlerMissingKeyword(_Handler):
    def make_decode_handler(self, *, staging, allocator, k_layers, v_layers, page_size, num_writers,
                            writer_destinations, heads_per_writer, layers_per_writer, timeout_s):
        pass


class HandlerPositionalOnly(_Handler):
    def make_decode_handler(self, staging, /, **rest):
        pass


class HandlerExtraKeyword(_Handler):
    def make_decode_handler(self, *, device, **rest):
        pass


class HandlerAsPlainParameters(_Handler):
    """Keyword-only documented parameters may be ordinary parameters with the same names: fine."""

    def make_decode_handler(self, staging, allocator, k_layers, v_layers, page_size, num_writers,
                            writer_destinations, heads_per_writer, layers_per_writer, timeout_s, clock):
        pass


class MoveRequestRenamed:
    capabilities = frozenset({"end_to_end"})

    def move_request(self, *, total_heads, **rest):
        pass


class MoveRequestOfInterface10:
    """``move_request`` as interface 1.0 had it (one ``page_size``): refused at load, naming the new parameter."""

    capabilities = frozenset({"end_to_end"})

    def move_request(self, *, total_kv_heads, prefill_tp, decode_tp, prefill_pp, decode_pp, page_size, prefill_pools,
                     prefill_page_tables, decode_pools, decode_page_tables, prefix_len, num_tokens, chunk_pages, staged):
        pass


@pytest.mark.parametrize("impl, fragments", [
    (TooFewPositional, ["'kv_copy'", "gather(k_layers, v_layers, page_table, page_size, num_tokens, head_start, "
                        "head_count) cannot accept", "takes 7 positional argument(s) but the harness passes 8",
                        "add parameter(s) out", "KvCopy.gather"]),
    (ExtraRequiredPositional, ["scatter(", "requires parameter(s) device, which the harness never passes",
                               "give each a default or remove it"]),
    (ExtraRequiredKeywordOnly, ["gather(*args, stream)", "requires parameter(s) stream"]),
    (HandlerMissingKeyword, ["'decode_handler'", "no parameter 'clock', which the harness passes by keyword",
                             "add clock (or **kwargs)"]),
    (HandlerPositionalOnly, ["'staging' is positional-only but the harness passes it by keyword", "remove the '/'"]),
    (HandlerExtraKeyword, ["requires parameter(s) device"]),
    (MoveRequestRenamed, ["'end_to_end'", "requires parameter(s) total_heads"]),
    (MoveRequestOfInterface10, ["'end_to_end'", "no parameter 'prefill_page_size', which the harness passes by keyword",
                                "add prefill_page_size"]),
], ids=lambda v: v.__name__ if inspect.isclass(v) else "")
def test_wrong_signature_is_one_error_naming_method_parameter_and_fix(impl, fragments):
    with pytest.raises(ImplementationError) as caught:
        validate_implementation(impl(), impl.__name__)
    message = str(caught.value)
    assert message.count("cannot accept") == 1, message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize("impl", [_KvCopy, RenamedButPositional, HandlerAsPlainParameters, ReferenceImplementation])
def test_compatible_signatures_load(impl):
    assert validate_implementation(impl(), impl.__name__)


def test_wrong_signature_stops_the_run_before_any_test(pytester, monkeypatch):
    monkeypatch.syspath_prepend(str(pytester.path))
    pytester.makepyfile(bad_sig="class Impl:\n    capabilities = {'layout'}\n"
                                "    def staging_layout(self, num_writers):\n        return []\n")
    pytester.makepyfile(test_any="def test_touch():\n    pass\n")
    result = pytester.runpytest("-p", "harness.pytest_plugin", "--impl", "bad_sig:Impl", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*staging_layout(num_writers) cannot accept*passes 6*"])
    assert "test session starts" not in result.stdout.str()


def test_every_signature_error_is_listed_in_the_one_message():
    class TwoWrong(TooFewPositional, ExtraRequiredPositional):
        pass

    with pytest.raises(loading.ImplementationError) as caught:
        validate_implementation(TwoWrong(), "two")
    assert str(caught.value).count("cannot accept") == 2


# -- the guard checks returns without consuming them ---------------------------------------------------
class GeneratorLayout(ReferenceImplementation):
    """A correct layout, returned as a generator."""

    def staging_layout(self, *args):
        return (span for span in super().staging_layout(*args))


def test_generator_returned_by_staging_layout_is_checked_and_passed_on_unconsumed():
    spans = list(ReferenceImplementation().staging_layout(3, 4, 2, 2, 8, 2))
    got = guard.guard(GeneratorLayout()).staging_layout(3, 4, 2, 2, 8, 2)
    assert list(got) == spans and list(got) == spans  # materialized once: reading it twice gives the spans twice


def test_generator_of_garbage_is_reported_where_it_appears():
    class Garbage(ReferenceImplementation):
        def staging_layout(self, *args):
            return (span for span in [(0, 4), (4,)])

    with pytest.raises(guard.ImplementationFault,
                       match=r"^impl.staging_layout\(.*returned garbage: \[\(0, 4\), \(4,\)\] is not a "
                             r"sequence of \(offset, nbytes\) integers: item 1 \(4,\)"):
        guard.guard(Garbage()).staging_layout(2, 1, 1, 1, 1, 1)


@pytest.mark.parametrize("method, args, returned, fragment", [
    ("head_slice", (2, 1, 1, 0, 0), (0, 1), "is not (source_head_start, head_count, destination_head_start) integers"),
    ("heads_of_rank", (2, 1, 0), ["0"], "is not a sequence of integers"),
    ("writer_may_write", (0, 1, (0, 0)), "yes", "is not a bool"),
    ("make_allocator", (8,), object(), "is not a Allocator: it lacks assign, free, watermark"),
])
def test_returns_are_checked_against_the_protocol_annotation(method, args, returned, fragment):
    """The message names the call; the invariant comes from the test it happens in (the plugin's marker)."""
    impl = ReferenceImplementation()
    setattr(impl, method, lambda *a: returned)
    with pytest.raises(guard.ImplementationFault) as caught:
        getattr(guard.guard(impl), method)(*args)
    assert str(caught.value).startswith(f"impl.{method}(") and fragment in str(caught.value), caught.value


def test_made_objects_with_wrong_signatures_are_refused_where_they_are_made():
    class Handler:
        def __getattr__(self, name):
            return lambda *args: None

        def chunk_arrived(self, request_id, chunk_index):
            pass

    impl = ReferenceImplementation()
    impl.make_decode_handler = lambda **kwargs: Handler()  # type: ignore[method-assign]
    with pytest.raises(guard.ImplementationFault) as caught:
        guard.guard(impl).make_decode_handler(staging=None)
    message = str(caught.value)
    assert message.startswith("impl.make_decode_handler(staging=None) returned garbage:"), message
    assert "is not a DecodeHandler: it has chunk_arrived(request_id, chunk_index) cannot accept" in message
    assert "add parameter(s) writer_slot, page_start, num_pages, num_tokens" in message


def test_made_objects_are_checked_against_their_protocol():
    class Allocator:
        def __init__(self, inner):
            self.inner = inner

        def assign(self, nbytes):
            return (1, 2)

        def free(self, alloc_id):
            pass

        def watermark(self):
            return iter((0, 0))

    impl = ReferenceImplementation()
    impl.make_allocator = lambda capacity: Allocator(capacity)  # type: ignore[method-assign]
    allocator = guard.guard(impl).make_allocator(8)
    assert list(allocator.watermark()) == [0, 0]
    with pytest.raises(guard.ImplementationFault, match=r"^allocator.assign\(4\) returned garbage: \(1, 2\) "
                                                        r"is neither None nor \(alloc_id, offset, round\) integers"):
        allocator.assign(4)


def test_readme_adapter_example_fits_the_interface(monkeypatch):
    """README's minimal adapter is an example, not a second definition: it must load against the Protocols."""
    import re
    import sys
    import types
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (example,) = [block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "kvconform_adapter" in block]
    monkeypatch.setitem(sys.modules, "mykv", types.ModuleType("mykv"))
    namespace: dict = {}
    exec(compile(example, "README.md example", "exec"), namespace)
    assert validate_implementation(namespace["make_implementation"](), "README example") == {"kv_copy"}
