"""Hostile implementations for ``tests/test_hostile.py`` (and cheap runs in ``tests/test_inputs.py``).

Each is the reference restricted to ``head_mapping`` and ``layout`` with one
method turned hostile, so a run selecting ``test_head_coverage_mapping``
(calls the head-mapping methods) and ``test_layout_spans`` (calls
``staging_layout``), which run in that order, takes seconds.  Those that
attack tensors also claim ``kv_copy`` and turn ``gather`` hostile, for a run
of ``test_isolation_kv_copy`` followed by ``test_layout_spans``.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import sys
import threading
import time
from pathlib import Path

from reference.plugin import ReferenceImplementation

#: The report directory :class:`BreaksTheReportDirectory` destroys.
REPORT_DIR_ENV_VAR = "HOSTILE_REPORT_DIR"


class _MappingAndLayout(ReferenceImplementation):
    """The reference's head mapping and staging layout, claiming nothing else."""

    capabilities = frozenset({"head_mapping", "layout"})


class RaisesKeyboardInterrupt(_MappingAndLayout):
    """``staging_layout`` raises ``KeyboardInterrupt`` (Ctrl-C inside the implementation)."""

    name = "raises-keyboard-interrupt"

    def staging_layout(self, *args):
        raise KeyboardInterrupt


class InterruptsAfterSomeCalls(_MappingAndLayout):
    """Correct for three ``staging_layout`` calls, then ``KeyboardInterrupt``: interrupted after passing examples.

    The test must read "interrupted", not "pass" nor "skipped".
    """

    name = "interrupts-after-some-calls"

    def __init__(self) -> None:
        self.calls = 0

    def staging_layout(self, *args):
        self.calls += 1
        if self.calls > 3:
            raise KeyboardInterrupt
        return super().staging_layout(*args)


class RaisesSystemExit(_MappingAndLayout):
    """``heads_of_rank`` calls ``sys.exit(0)``: the judge must not exit, let alone with status 0."""

    name = "raises-system-exit"

    def heads_of_rank(self, *args):
        raise SystemExit(0)


class NoCapabilities:
    """Claims nothing: every test is not-implemented, which must not be a passing run."""

    name = "no-capabilities"
    capabilities = frozenset()


def make_exiting_factory():
    """A factory that exits the process instead of returning an implementation."""
    raise SystemExit(0)


class HangsInLayout(_MappingAndLayout):
    """``staging_layout`` never returns (the run is then killed from outside)."""

    name = "hangs-in-layout"

    def staging_layout(self, *args):
        threading.Event().wait()


class BreaksTheReportDirectory(_MappingAndLayout):
    """Replaces the report directory (``$HOSTILE_REPORT_DIR``) with a file on its first call.

    Stands for a directory that vanishes or fills up mid-run: the report must
    still reach the terminal and a fallback file.
    """

    name = "breaks-the-report-directory"

    def heads_of_rank(self, total_kv_heads, tp_size, rank):
        directory = Path(os.environ[REPORT_DIR_ENV_VAR])
        if directory.is_dir():
            shutil.rmtree(directory)
            directory.write_text("not a directory any more\n")
        return super().heads_of_rank(total_kv_heads, tp_size, rank)


class ExitsInMethod(_MappingAndLayout):
    """``heads_of_rank`` ends its process with ``os._exit(0)`` (no exception, no cleanup, status 0) for more than
    two heads: the explicit example (two heads) passes and Hypothesis must find and shrink the exit."""

    name = "exits-in-method"

    def heads_of_rank(self, total_kv_heads, tp_size, rank):
        if total_kv_heads > 2:
            os._exit(0)
        return super().heads_of_rank(total_kv_heads, tp_size, rank)


class Segfaults(_MappingAndLayout):
    """``heads_of_rank`` dereferences NULL: the process dies of SIGSEGV."""

    name = "segfaults"

    def heads_of_rank(self, *args):
        ctypes.string_at(0)


class HangsInC(_MappingAndLayout):
    """``heads_of_rank`` blocks in libc ``pause()``: a hang no Python-level interrupt reaches."""

    name = "hangs-in-c"

    def heads_of_rank(self, *args):
        ctypes.CDLL(None).pause()


class ReturnsGarbage(_MappingAndLayout):
    """``heads_of_rank`` answers a lambda, which is no sequence of heads (and cannot even leave its process)."""

    name = "returns-garbage"

    def heads_of_rank(self, *args):
        return lambda: [0]


class _CopiesToo(_MappingAndLayout):
    capabilities = frozenset({"head_mapping", "layout", "kv_copy"})


class RunawayWriter(_CopiesToo):
    """``scatter`` is right, but its first call leaves a thread behind that keeps scribbling on the decode pool
    it was given (and on every later one) after it returned."""

    name = "runaway-writer"

    def __init__(self) -> None:
        self.targets: list = []

    def scatter(self, staging, writer_destinations, heads_per_writer, layers_per_writer, k_layers, v_layers,
                page_table, page_size, num_tokens):
        super().scatter(staging, writer_destinations, heads_per_writer, layers_per_writer, k_layers, v_layers,
                        page_table, page_size, num_tokens)
        self.targets.append(k_layers[0])
        if len(self.targets) == 1:
            threading.Thread(target=self._scribble, daemon=True).start()

    def _scribble(self) -> None:
        while True:
            for target in list(self.targets):
                target.fill_(0x5A)
            time.sleep(0.001)


class WritesFarOutOfBounds(_CopiesToo):
    """``gather`` writes 16 bytes 64 GiB past the start of ``out``: far beyond any canary margin."""

    name = "writes-far-out-of-bounds"

    def gather(self, k_layers, v_layers, page_table, page_size, num_tokens, head_start, head_count, out):
        ctypes.memset(out.data_ptr() + (1 << 36), 0x5A, 16)
        super().gather(k_layers, v_layers, page_table, page_size, num_tokens, head_start, head_count, out)


class PatchesTheHarness(_MappingAndLayout):
    """Answers a wrong staging layout and patches the harness it can reach so that the answer is judged right:
    the layout oracle answers whatever the implementation answers, and report records turn failures into passes.
    Under process isolation it patches only its own process's copy of the harness."""

    name = "patches-the-harness"

    def __init__(self) -> None:
        from harness import oracles, report

        implementation = self
        oracles.expected_spans = lambda *geometry: [tuple(s) for s in implementation.staging_layout(*geometry)]
        passing = report.TestRecord.add_phase

        def add_phase(record, when, outcome, xfailed, failures):
            return passing(record, when, "passed" if outcome == "failed" else outcome, xfailed, ())

        report.TestRecord.add_phase = add_phase
        self.patched = [module for module in ("harness.oracles", "harness.report") if module in sys.modules]

    def staging_layout(self, num_writers, num_tokens, heads_per_writer, layers_per_writer, head_dim, element_size):
        spans = super().staging_layout(num_writers, num_tokens, heads_per_writer, layers_per_writer, head_dim,
                                       element_size)
        return [(offset + 1, nbytes) for offset, nbytes in spans]  # every writer one byte off
