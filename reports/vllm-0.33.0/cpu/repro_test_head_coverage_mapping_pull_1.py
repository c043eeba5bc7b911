#!/usr/bin/env python3
"""kvconform standalone repro: harness/conformance/test_head_coverage.py::test_head_coverage_mapping[pull], failure 1 of 1.

Implementation: adapters.vllm:make_implementation#pull
The judge said:
    [head_coverage] decode rank 0 (H=1, P=2, D=1): writers [0], expected [0, 1] in slot order

What it does: rebuilds the 0 tensor storages the implementation was handed (their
bytes at first use, embedded below), replays the 4 calls of the failing example in order with
the bytes the harness wrote between them, and checks that the implementation behaves exactly as in the failing run (the judge's verdict then stands).
Bytes the harness wrote between calls (prefill writers filling the staging ring, cached prefix rows) are
replayed as recorded: a script replaying a fixed gather still writes the bytes the failing gather produced,
so it reports NOT REPRODUCED at the gather instead.

Run:  python repro_test_head_coverage_mapping_pull_1.py [module:factory]
Needs only torch and the implementation (not kvconform).  The implementation is loaded as SPEC (or the
module:factory given), its package 'adapters' found on sys.path after IMPL_PATH (the directory it was
loaded from when recorded) or $REPRO_IMPL_PATH (directories separated by ':').  For an adapter
of the kvconform repository, put a directory that holds only that package there:
    mkdir only && ln -s /work/vclone/adapters only/adapters && REPRO_IMPL_PATH=only python repro_test_head_coverage_mapping_pull_1.py
Exit status: 1, AssertionError with the judge's message, while the failure recurs; 0 with "NOT
REPRODUCED" once the implementation behaves differently (a fix) or every check passes.
"""

# The replay runtime of a standalone repro script (harness/repro/runtime.py, copied verbatim into every
# generated repro_*.py).  It imports only the standard library and torch: a repro runs without kvconform.

import base64
import hashlib
import importlib
import os
import sys
import zlib

import torch

#: Environment variable listing directories (os.pathsep-separated) to put on sys.path instead of IMPL_PATH.
PATH_ENV_VAR = "REPRO_IMPL_PATH"


class NotReproduced(Exception):
    """The implementation behaved differently from the failing run: the recorded failure did not recur."""


def plain(value):
    """A returned value as plain Python (what a return is compared as): tensors and numpy scalars unwrapped,
    sequences as lists; anything else as ``<TypeName>``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "item") and callable(value.item) and type(value).__module__ == "numpy":
        return value.item()
    if isinstance(value, (list, tuple, range)):
        return [plain(v) for v in value]
    return f"<{type(value).__name__}>"


def unpack(text):
    return zlib.decompress(base64.b64decode(text))


def storage_bytes(raw):
    """The bytes of a flat uint8 tensor (without numpy, which torch does not need)."""
    return bytes(raw.cpu().tolist())


def digest(data):
    return hashlib.sha256(data).hexdigest()[:16]


def load_implementation(spec, paths):
    """``module:factory`` called with no arguments, its package found on ``paths`` (put first on sys.path);
    ``module:factory#NAME``: then the configuration NAME it declares (its ``configurations`` mapping holds a
    zero-argument factory or the implementation itself), as kvconform built it for the failing column."""
    for path in reversed(paths):
        if path not in sys.path:
            sys.path.insert(0, path)
    target, _, configuration = spec.partition("#")
    module_name, _, factory = target.partition(":")
    built = getattr(importlib.import_module(module_name), factory)()
    if not configuration:
        return built
    chosen = built.configurations[configuration]
    return chosen() if callable(chosen) else chosen


class Clock:
    """The clock handed to the implementation: it reads what the harness's clock read at each call."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class FlagValue:
    """A ``require_staging`` value that is not plain Python (a Mock, numpy.bool_): its truth and repr."""

    def __init__(self, truth, text):
        self._truth, self._text = truth, text

    def __bool__(self):
        return self._truth

    def __repr__(self):
        return self._text


def receiver(type_name, text, require_staging=None, raises=None):
    """A receiver like the harness's: same type name and repr; ``require_staging`` reads as recorded
    (a value, or raising ``raises = (exception type name, message)``)."""
    def read(self):
        if raises is not None:
            raise getattr(__import__("builtins"), raises[0], RuntimeError)(raises[1])
        return require_staging

    return type(type_name, (), {"require_staging": property(read), "__repr__": lambda self: text})()


class Replay:
    """Storages rebuilt from the recording; each step calls the implementation and compares with the failing run."""

    def __init__(self, storages, message):
        self.message = message
        self.storages = {}
        for sid, (device, nbytes, data) in storages.items():
            raw = torch.frombuffer(bytearray(unpack(data)), dtype=torch.uint8) if nbytes else torch.empty(0, dtype=torch.uint8)
            self.storages[sid] = raw.to(device)
        self.clocks = {}
        self.departed = ""  # the first step after which the bytes differ from the failing run's

    def view(self, sid, dtype, shape, stride, offset):
        """The tensor the implementation was given: a view of rebuilt storage ``sid``, same layout."""
        whole = self.storages[sid]
        dtype = getattr(torch, dtype)
        size = torch.empty((), dtype=dtype).element_size()
        typed = whole[: whole.numel() // size * size].view(dtype)
        return typed.as_strided(shape, stride, offset)

    def clock(self, cid, now):
        self.clocks.setdefault(cid, Clock()).now = now
        return self.clocks[cid]

    def write(self, sid, offset, data):
        """Bytes the harness wrote between calls (prefill writers filling the staging ring, prefix rows, ...)."""
        chunk = torch.frombuffer(bytearray(unpack(data)), dtype=torch.uint8)
        self.storages[sid][offset:offset + chunk.numel()] = chunk.to(self.storages[sid].device)

    def step(self, index, text, call, returns=None, compare=True, raises=None, verdict=False, after=None):
        """Call ``text`` (step ``index``); it must return ``returns`` (when ``compare``) or raise ``raises``
        like the failing run did (else the replay stops: what the harness did next depended on it).  Storages
        left with other bytes than the ``after`` digests are noted: the verdict says what that means."""
        try:
            result = call()
        except Exception as exc:
            got = (type(exc).__name__, str(exc))
            if raises is None:
                raise NotReproduced(f"step {index} {text} raised {got[0]}: {got[1]}; the failing run returned "
                                    f"{returns!r}") from exc
            if got[0] != raises[0]:
                raise NotReproduced(f"step {index} {text} raised {got[0]}: {got[1]}; the failing run raised "
                                    f"{raises[0]}: {raises[1]}") from exc
            if got[1] != raises[1]:  # the same exception class at the same call; a message may carry run state
                print(f"note: step {index} {text} raised {got[0]} as in the failing run, with another message: "
                      f"{got[1]!r}; the failing run's: {raises[1]!r}", file=sys.stderr)
            if verdict:
                raise AssertionError(self.message) from exc
            return None
        if raises is not None:
            raise NotReproduced(f"step {index} {text} returned {plain(result)!r}; the failing run raised "
                                f"{raises[0]}: {raises[1]}")
        if compare and plain(result) != returns:
            raise NotReproduced(f"step {index} {text} returned {plain(result)!r}; the failing run: {returns!r}")
        for sid, want in (after or {}).items():
            if not self.departed and digest(storage_bytes(self.storages[sid])) != want:
                self.departed = f"step {index} {text} left tensor storage {sid} with other bytes than the failing run"
        return result

    def judge_bytes(self, problems):
        """The verdict of an oracle's byte check (``problems``: what ``expect_bytes`` found)."""
        problems = [p for p in problems if p]
        if not problems:
            return
        if self.departed:
            raise NotReproduced(f"{self.departed}; the check fails afterwards ({problems[0]}), but the bytes the "
                                f"harness wrote next were recorded from the failing run and may not fit any more")
        print("\n".join(problems), file=sys.stderr)
        raise AssertionError(self.message)

    def judge_behaviour(self):
        """The verdict when the judge's check is not a byte comparison: the same behaviour, the same verdict."""
        if self.departed:
            raise NotReproduced(self.departed)
        print("The implementation behaved exactly as in the failing run, where the judge said:", file=sys.stderr)
        raise AssertionError(self.message)

    def expect_bytes(self, what, actual, expected, rows):
        """The oracle's check: ``actual`` holds ``expected`` (recorded bytes, derived from ground truth) at
        ``rows`` of dim 0 (``None``: all rows).  Returns a description of the first difference, or ``""``."""
        want = torch.frombuffer(bytearray(unpack(expected)), dtype=torch.uint8)
        got = actual.contiguous().view(torch.uint8).reshape(actual.shape[0] if actual.dim() else 1, -1).cpu()
        want = want.reshape(got.shape)
        selected = range(got.shape[0]) if rows is None else rows
        for row in selected:
            if not torch.equal(got[row], want[row]):
                return f"{what} row {row}: expected bytes {want[row][:16].tolist()}, got {got[row][:16].tolist()}"
        return ""


def run(main, spec, paths):
    """Run ``main(replay-ready implementation)``; exit 1 with the judge's message while the failure recurs."""
    spec = sys.argv[1] if len(sys.argv) > 1 else spec
    env_paths = os.environ.get(PATH_ENV_VAR)
    paths = env_paths.split(os.pathsep) if env_paths else paths
    impl = load_implementation(spec, paths)
    try:
        replay = main(impl)
    except NotReproduced as exc:
        print(f"NOT REPRODUCED with {spec}: {exc}")
        print("The recorded failure did not recur; rerun kvconform to judge the implementation's new behaviour.")
        sys.exit(0)
    print(f"NOT REPRODUCED with {spec}: every check passed"
          + (f" (the bytes differ from the failing run's from {replay.departed})" if replay.departed else ""))


SPEC = 'adapters.vllm:make_implementation#pull'
IMPL_PATH = ['/work/vclone']
MESSAGE = '[head_coverage] decode rank 0 (H=1, P=2, D=1): writers [0], expected [0, 1] in slot order'
STORAGES = {
}


def main(impl):
    r = Replay(STORAGES, MESSAGE)
    # step 1
    r.step(1, 'impl.heads_of_rank(1, 2, 0)', lambda: impl.heads_of_rank(1, 2, 0), returns=[0], after={})
    # step 2
    r.step(2, 'impl.heads_of_rank(1, 2, 1)', lambda: impl.heads_of_rank(1, 2, 1), returns=[0], after={})
    # step 3
    r.step(3, 'impl.heads_of_rank(1, 1, 0)', lambda: impl.heads_of_rank(1, 1, 0), returns=[0], after={})
    # step 4
    r.step(4, 'impl.writers_of_decode_rank(1, 2, 1, 0)', lambda: impl.writers_of_decode_rank(1, 2, 1, 0), returns=[0], after={})
    # the verdict
    r.judge_behaviour()
    return r


if __name__ == "__main__":
    run(main, SPEC, IMPL_PATH)
