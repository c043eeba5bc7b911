"""A failing example's trace as a standalone script, ``repro_<test>_<n>.py``, that needs only torch and the
implementation under test.

The script is the runtime (``harness/repro/runtime.py``, verbatim), the recorded data (storages as
zlib+base64 bytes, the judge's message) and one ``main`` listing the calls in order, readable as the
sequence of calls an implementer would make.  :func:`repro_scripts` is what the plugin calls for a failed
test: one entry per distinct failure, a script or the reason there is none.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import textwrap
from pathlib import Path
from typing import Any, Optional

from harness.hypothesis_records import distinct_failures
from harness.repro.recorder import (
    TRACE_ATTRIBUTE,
    ClockArg,
    MadeArg,
    ReceiverArg,
    Step,
    TensorArg,
    Trace,
    attach,
    pack,
)

#: ``user_properties`` key: JSON list, per distinct failure, {"name", "source"} or {"note"} (why no script).
PROP_REPRO_SCRIPTS = "kvconform.repro_scripts"
_RUNTIME = Path(__file__).with_name("runtime.py")
_LABEL_WIDTH = 160

_CHECKS = {
    "raised": "the call that raised in the failing run raises the same exception (type and message) again",
    "bytes": "the tensors the oracle checked hold the bytes it derived from ground truth",
    "behaviour": "the implementation behaves exactly as in the failing run (the judge's verdict then stands)",
}


def script_name(nodeid: str, index: int) -> str:
    """``repro_<test>_<n>.py`` for failure ``index`` (1-based) of test ``nodeid``."""
    test = nodeid.rpartition("::")[2] or nodeid
    return f"repro_{re.sub(r'[^0-9A-Za-z]+', '_', test).strip('_')}_{index}.py"


def repro_scripts(exc: BaseException, plain_trace: Optional[Trace], nodeid: str, spec: Optional[str],
                  message_of=str) -> list[tuple[str, Any]]:
    """The ``user_properties`` entry for a failed test: a script (or why none) per distinct failure."""
    failures = distinct_failures(exc)
    if plain_trace is not None and len(failures) == 1:
        attach(plain_trace, failures[0])
    entries = []
    for index, failure in enumerate(failures, 1):
        trace = getattr(failure, TRACE_ATTRIBUTE, None)
        note = _unavailable(trace, spec) or _in_a_rank(failure)
        if note:
            entries.append({"note": note})
            continue
        assert trace is not None and spec is not None
        try:
            source = script_source(trace, nodeid=nodeid, index=index, count=len(failures), spec=spec,
                                   message=message_of(failure))
        except Exception as error:  # never lose the report over a script
            entries.append({"note": f"the repro script could not be written: {type(error).__name__}: {error}"})
            continue
        entries.append({"name": script_name(nodeid, index), "source": source})
    return [(PROP_REPRO_SCRIPTS, json.dumps(entries))]


def _in_a_rank(failure: BaseException) -> str:
    """Why there is no script for a failure raised in a rank process (distributed mode): the calls that failed
    ran there, out of the recorder's sight; a script of the judge's own calls would "reproduce" anything."""
    from harness.distributed.results import RankError  # here: the distributed package is not needed otherwise

    if isinstance(failure, RankError):
        return ("no repro script: the failing calls ran in a rank process (distributed mode), which the recorder "
                "does not see; rerun with the repro line")
    return ""


def _unavailable(trace: Optional[Trace], spec: Optional[str]) -> str:
    if spec is None:
        return "no repro script: the implementation's module:factory is unknown"
    if trace is None or trace.verdict is None:
        return "no repro script: no call into the implementation was recorded for this failure"
    if trace.problem:
        return f"no repro script: {trace.problem}"
    return ""


def implementation_path(spec: str) -> str:
    """The directory to put on ``sys.path`` so that the spec's top-level package imports (as it did here)."""
    top = importlib.import_module(spec.partition(":")[0].split(".")[0])
    locations = list(getattr(top, "__path__", ()))  # a package (namespace packages have no __file__)
    if locations:
        return str(Path(locations[0]).resolve().parent)
    return str(Path(top.__file__ or ".").resolve().parent)


def script_source(trace: Trace, *, nodeid: str, index: int, count: int, spec: str, message: str) -> str:
    """The repro script of a finished trace."""
    verdict = trace.verdict
    assert verdict is not None
    writer = _Writer(trace)
    body = writer.steps()
    package = spec.partition(":")[0].split(".")[0]
    path = implementation_path(spec)
    top_level = sum(not s.nested for s in trace.steps)
    notes = []
    if len(trace.threads) > 1:
        notes.append(f"The failing run called the implementation from {len(trace.threads)} threads; this script "
                     f"replays the calls sequentially, in the order they started.")
    if writer.through:
        notes.append("Harness objects the implementation was handed are replaced: "
                     + "; ".join(sorted(writer.through)) + ".  Their checks and side effects (the ledger "
                     "scribbling freed staging regions) are not replayed.")
    notes.append("Bytes the harness wrote between calls (prefill writers filling the staging ring, cached "
                 "prefix rows) are replayed as recorded: a script replaying a fixed gather still writes the "
                 "bytes the failing gather produced, so it reports NOT REPRODUCED at the gather instead.")
    header = f'''#!/usr/bin/env python3
"""kvconform standalone repro: {nodeid}, failure {index} of {count}.

Implementation: {spec}
The judge said:
{textwrap.indent(message, "    ")}

What it does: rebuilds the {len(trace.storages)} tensor storages the implementation was handed (their
bytes at first use, embedded below), replays the {top_level} calls of the failing example in order with
the bytes the harness wrote between them, and checks that {_CHECKS[verdict.kind]}.
{chr(10).join(textwrap.fill(n, 108) for n in notes)}

Run:  python {script_name(nodeid, index)} [module:factory]
Needs only torch and the implementation (not kvconform).  The implementation is loaded as SPEC (or the
module:factory given), its package {package!r} found on sys.path after IMPL_PATH (the directory it was
loaded from when recorded) or $REPRO_IMPL_PATH (directories separated by {os.pathsep!r}).  For an adapter
of the kvconform repository, put a directory that holds only that package there:
    mkdir only && ln -s {path}/{package} only/{package} && REPRO_IMPL_PATH=only python {script_name(nodeid, index)}
Exit status: 1, AssertionError with the judge's message, while the failure recurs; 0 with "NOT
REPRODUCED" once the implementation behaves differently (a fix) or every check passes.
"""
'''
    data = [
        f"SPEC = {spec!r}",
        f"IMPL_PATH = [{path!r}]",
        f"MESSAGE = {message!r}",
        "STORAGES = {",
        *(f"    {s.sid}: ({s.device!r}, {s.raw.numel()}, {pack(s.initial)!r})," for s in trace.storages.values()),
        "}",
    ]
    main = ["def main(impl):", "    r = Replay(STORAGES, MESSAGE)", *writer.views(), *body, *writer.verdict()]
    return "\n".join([header, _RUNTIME.read_text(), "", *data, "", "", *main, "", "",
                      'if __name__ == "__main__":', "    run(main, SPEC, IMPL_PATH)", ""])


class _Writer:
    """Renders a trace's steps as lines of ``main``."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self.tensors: dict[TensorArg, str] = {}
        self.clocks: set[int] = set()
        self.through: set[str] = set()

    def views(self) -> list[str]:
        return [f"    {name} = r.view({t.storage}, {t.dtype!r}, {t.shape!r}, {t.stride!r}, {t.offset})"
                for t, name in self.tensors.items()]

    def steps(self) -> list[str]:
        lines: list[str] = []
        previous: dict[int, str] = {}
        last = max((s.index for s in self.trace.steps if not s.nested), default=0)
        for step in self.trace.steps:
            call = self._call(step)
            if step.nested:
                outcome = f"-> {step.made or step.result!r}" if step.outcome == "returned" else step.outcome
                lines.append(f"    #   inside it, the implementation called {call} {outcome}")
                continue
            lines.append(f"    # step {step.index}")
            lines += self._writes(step.writes)
            for cid, now in step.clocks.items():
                lines.append(f"    clock{cid} = r.clock({cid}, {now!r})")
                self.clocks.add(cid)
            options = self._outcome(step)
            after = {sid: d for sid, d in step.after.items()
                     if step.index == last or previous.get(sid) != d or self._touches(step, sid)}
            previous.update(step.after)
            label = call if len(call) <= _LABEL_WIDTH else call[:_LABEL_WIDTH - 3] + "..."
            assign = f"{step.made} = " if step.made else ""
            lines.append(f"    {assign}r.step({step.index}, {label!r}, lambda: {call}{options}, after={after!r})")
        return lines

    def verdict(self) -> list[str]:
        verdict = self.trace.verdict
        assert verdict is not None
        lines = ["    # the verdict"]
        lines += self._writes(verdict.writes)
        if verdict.kind == "raised":
            lines.append("    # (checked at the step that raised: the same exception there is the failure)")
            lines.append("    raise NotReproduced('the call that failed did not raise as in the failing run')")
        elif verdict.kind == "bytes":
            lines.append("    r.judge_bytes([")
            for e in verdict.expected:
                rows = "None" if e.rows is None else repr(e.rows)
                lines.append(f"        r.expect_bytes({e.what!r}, {self._value(e.tensor)}, {pack(e.data)!r}, {rows}),")
            lines.append("    ])")
        else:
            lines.append("    r.judge_behaviour()")
        return lines + ["    return r"]

    # -- rendering -----------------------------------------------------------------------------
    def _writes(self, writes: list[tuple[int, int, bytes]]) -> list[str]:
        if not writes:
            return []
        total = sum(len(data) for _, _, data in writes)
        return [f"    # the harness wrote {total} bytes since the last call",
                *(f"    r.write({sid}, {offset}, {pack(data)!r})" for sid, offset, data in writes)]

    def _outcome(self, step: Step) -> str:
        if step.outcome == "raised":
            assert step.error is not None
            verdict = self.trace.verdict
            final = verdict is not None and verdict.kind == "raised" and verdict.step == step.index
            return f", raises={step.error!r}" + (", verdict=True" if final else "")
        if step.outcome == "garbage" or step.made:
            return ", compare=False"
        return f", returns={step.result!r}"

    def _touches(self, step: Step, sid: int) -> bool:
        return any(isinstance(a, TensorArg) and a.storage == sid for a in _flat([*step.args, *step.kwargs.values()]))

    def _call(self, step: Step) -> str:
        args = [self._value(a) for a in step.args] + [f"{k}={self._value(v)}" for k, v in step.kwargs.items()]
        return f"{step.target}.{step.method}({', '.join(args)})"

    def _value(self, value: Any) -> str:
        if isinstance(value, TensorArg):
            return self.tensors.setdefault(value, f"t{len(self.tensors)}")
        if isinstance(value, MadeArg):
            if value.through:
                self.through.add(f"{value.name} is passed where the failing run passed {value.through} wrapping it")
            return value.name
        if isinstance(value, ClockArg):
            return f"clock{value.clock}"
        if isinstance(value, ReceiverArg):
            if value.raises is not None:
                return f"receiver({value.type_name!r}, {value.text!r}, raises={value.raises!r})"
            flag = f"FlagValue({value.value[0]!r}, {value.value[1]!r})" if not value.plain_value else repr(value.value)
            return f"receiver({value.type_name!r}, {value.text!r}, require_staging={flag})"
        if isinstance(value, list):
            return "[" + ", ".join(self._value(v) for v in value) + "]"
        if isinstance(value, tuple):
            return "(" + ", ".join(self._value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
        return repr(value)


def _flat(values: list) -> list:
    out = []
    for v in values:
        out.extend(_flat(list(v)) if isinstance(v, (list, tuple)) else [v])
    return out


__all__ = ["PROP_REPRO_SCRIPTS", "implementation_path", "repro_scripts", "script_name", "script_source"]
