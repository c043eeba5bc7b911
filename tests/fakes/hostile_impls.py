"""Hostile implementations for ``tests/test_hostile.py`` (and cheap runs in ``tests/test_inputs.py``).

Each is the reference restricted to ``head_mapping`` and ``layout`` with one
method turned hostile, so a run selecting ``test_head_coverage_mapping``
(calls the head-mapping methods) and ``test_layout_spans`` (calls
``staging_layout``), which run in that order, takes seconds.
"""

from __future__ import annotations

import os
import shutil
import threading
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
