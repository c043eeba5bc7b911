#!/usr/bin/env python3
"""kvconform standalone repro: harness/conformance/test_isolation.py::test_isolation_end_to_end[cpu-push], failure 1 of 1.

Implementation: adapters.vllm:make_implementation#push
The judge said:
    [isolation] impl.move_request(total_kv_heads=1, prefill_tp=1, decode_tp=2, prefill_pp=1, decode_pp=1, prefill_page_size=1, decode_page_size=1, prefill_pools=[([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32])], prefill_page_tables=[tensor([0])], decode_pools=[([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32]), ([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32])], decode_page_tables=[tensor([0]), tensor([0])], prefix_len=0, num_tokens=1, chunk_pages=1, staged=True) raised VllmTransferFailed: vllm 0.33.0: decode ranks (PP, TP) [(0, 0), (0, 1)] did not receive the request in 3.0s: NIXL transfer failure: handshake_setup_failed | Context: {'failure_type': 'handshake_setup_failed', 'request_id': None, 'engine_id': 'kvconform-prefill', 'remote_engine_id': 'kvconform-decode'} [AssertionError: ]; NIXL transfer failure: push_handshake_failed | Context: {'failure_type': 'push_handshake_failed', 'request_id': 'kvconform-request', 'engine_id': 'kvconform-prefill'} (raised at /work/vclone/adapters/vllm/implementation.py:395 in _step_until_received); calls so far: impl.move_request(total_kv_heads=1, prefill_tp=1, decode_tp=1, prefill_pp=2, decode_pp=1, prefill_page_size=1, decode_page_size=1, prefill_pools=[([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32]), ([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32])], prefill_page_tables=[tensor([0]), tensor([0])], decode_pools=[([tensor(2, 1, 1):float32, tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32, tensor(2, 1, 1):float32])], decode_page_tables=[tensor([0])], prefix_len=0, num_tokens=1, chunk_pages=1, staged=True); impl.move_request(total_kv_heads=1, prefill_tp=1, decode_tp=1, prefill_pp=1, decode_pp=1, prefill_page_size=1, decode_page_size=1, prefill_pools=[([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32])], prefill_page_tables=[tensor([0])], decode_pools=[([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32])], decode_page_tables=[tensor([0])], prefix_len=0, num_tokens=1, chunk_pages=1, staged=True); impl.move_request(total_kv_heads=1, prefill_tp=1, decode_tp=2, prefill_pp=1, decode_pp=1, prefill_page_size=1, decode_page_size=1, prefill_pools=[([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32])], prefill_page_tables=[tensor([0])], decode_pools=[([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32]), ([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32])], decode_page_tables=[tensor([0]), tensor([0])], prefix_len=0, num_tokens=1, chunk_pages=1, staged=True); impl.move_request(total_kv_heads=1, prefill_tp=1, decode_tp=2, prefill_pp=1, decode_pp=1, prefill_page_size=1, decode_page_size=1, prefill_pools=[([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32])], prefill_page_tables=[tensor([0])], decode_pools=[([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32]), ([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32])], decode_page_tables=[tensor([0]), tensor([0])], prefix_len=0, num_tokens=1, chunk_pages=1, staged=True); impl.move_request(total_kv_heads=1, prefill_tp=2, decode_tp=1, prefill_pp=1, decode_pp=1, prefill_page_size=1, decode_page_size=1, prefill_pools=[([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32]), ([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32])], prefill_page_tables=[tensor([0]), tensor([0])], decode_pools=[([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32])], decode_page_tables=[tensor([0])], prefix_len=0, num_tokens=1, chunk_pages=1, staged=True); impl.move_request(total_kv_heads=1, prefill_tp=2, decode_tp=1, prefill_pp=1, decode_pp=1, prefill_page_size=1, decode_page_size=1, prefill_pools=[([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32]), ([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32])], prefill_page_tables=[tensor([0]), tensor([0])], decode_pools=[([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32])], decode_page_tables=[tensor([0])], prefix_len=0, num_tokens=1, chunk_pages=1, staged=True); impl.move_request(total_kv_heads=1, prefill_tp=2, decode_tp=1, prefill_pp=1, decode_pp=1, prefill_page_size=1, decode_page_size=1, prefill_pools=[([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32]), ([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32])], prefill_page_tables=[tensor([0]), tensor([0])], decode_pools=[([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32])], decode_page_tables=[tensor([0])], prefix_len=0, num_tokens=1, chunk_pages=1, staged=True); impl.move_request(total_kv_heads=2, prefill_tp=4, decode_tp=2, prefill_pp=1, decode_pp=1, prefill_page_size=1, decode_page_size=1, prefill_pools=[([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32]), ([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32]), ([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32]), ([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32])], prefill_page_tables=[tensor([0]), tensor([0]), tensor([0]), tensor([0])], decode_pools=[([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32]), ([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32])], decode_page_tables=[tensor([0]), tensor([0])], prefix_len=0, num_tokens=1, chunk_pages=1, staged=True); impl.move_request(total_kv_heads=1, prefill_tp=2, decode_tp=1, prefill_pp=1, decode_pp=1, prefill_page_size=1, decode_page_size=1, prefill_pools=[([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32]), ([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32])], prefill_page_tables=[tensor([0]), tensor([0])], decode_pools=[([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32])], decode_page_tables=[tensor([0])], prefix_len=0, num_tokens=1, chunk_pages=1, staged=True); impl.move_request(total_kv_heads=1, prefill_tp=1, decode_tp=1, prefill_pp=1, decode_pp=1, prefill_page_size=2, decode_page_size=2, prefill_pools=[([tensor(4, 1, 16):float32], [tensor(4, 1, 16):float32])], prefill_page_tables=[tensor([0])], decode_pools=[([tensor(4, 1, 16):float32], [tensor(4, 1, 16):float32])], decode_page_tables=[tensor([0])], prefix_len=0, num_tokens=2, chunk_pages=1, staged=True); impl.move_request(total_kv_heads=2, prefill_tp=2, decode_tp=1, prefill_pp=2, decode_pp=1, prefill_page_size=32, decode_page_size=32, prefill_pools=[([tensor(128, 1, 5):float32, tensor(128, 1, 5):float32, tensor(128, 1, 5):float32], [tensor(128, 1, 5):float32, tensor(128, 1, 5):float32, tensor(128, 1, 5):float32]), ([tensor(128, 1, 5):float32, tensor(128, 1, 5):float32, tensor(128, 1, 5):float32], [tensor(128, 1, 5):float32, tensor(128, 1, 5):float32, tensor(128, 1, 5):float32]), ([tensor(128, 1, 5):float32, tensor(128, 1, 5):float32, tensor(128, 1, 5):float32], [tensor(128, 1, 5):float32, tensor(128, 1, 5):float32, tensor(128, 1, 5):float32]), ([tensor(128, 1, 5):float32, tensor(128, 1, 5):float32, tensor(128, 1, 5):float32], [tensor(128, 1, 5):float32, tensor(128, 1, 5):float32, tensor(128, 1, 5):float32])], prefill_page_tables=[tensor([0]), tensor([0]), tensor([0]), tensor([0])], decode_pools=[([tensor(160, 2, 5):float32, tensor(160, 2, 5):float32, tensor(160, 2, 5):float32, tensor(160, 2, 5):float32, ... 6 items], [tensor(160, 2, 5):float32, tensor(160, 2, 5):float32, tensor(160, 2, 5):float32, tensor(160, 2, 5):float32, ... 6 items])], decode_page_tables=[tensor([2])], prefix_len=0, num_tokens=8, chunk_pages=3, staged=True); impl.move_request(total_kv_heads=1, prefill_tp=1, decode_tp=2, prefill_pp=1, decode_pp=1, prefill_page_size=1, decode_page_size=1, prefill_pools=[([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32])], prefill_page_tables=[tensor([0])], decode_pools=[([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32]), ([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32])], decode_page_tables=[tensor([0]), tensor([0])], prefix_len=0, num_tokens=1, chunk_pages=1, staged=True)

What it does: rebuilds the 8 tensor storages the implementation was handed (their
bytes at first use, embedded below), replays the 1 calls of the failing example in order with
the bytes the harness wrote between them, and checks that the call that raised in the failing run raises the same exception (type and message) again.
Bytes the harness wrote between calls (prefill writers filling the staging ring, cached prefix rows) are
replayed as recorded: a script replaying a fixed gather still writes the bytes the failing gather produced,
so it reports NOT REPRODUCED at the gather instead.

Run:  python repro_test_isolation_end_to_end_cpu_push_1.py [module:factory]
Needs only torch and the implementation (not kvconform).  The implementation is loaded as SPEC (or the
module:factory given), its package 'adapters' found on sys.path after IMPL_PATH (the directory it was
loaded from when recorded) or $REPRO_IMPL_PATH (directories separated by ':').  For an adapter
of the kvconform repository, put a directory that holds only that package there:
    mkdir only && ln -s /work/vclone/adapters only/adapters && REPRO_IMPL_PATH=only python repro_test_isolation_end_to_end_cpu_push_1.py
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


SPEC = 'adapters.vllm:make_implementation#push'
IMPL_PATH = ['/work/vclone']
MESSAGE = "[isolation] impl.move_request(total_kv_heads=1, prefill_tp=1, decode_tp=2, prefill_pp=1, decode_pp=1, prefill_page_size=1, decode_page_size=1, prefill_pools=[([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32])], prefill_page_tables=[tensor([0])], decode_pools=[([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32]), ([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32])], decode_page_tables=[tensor([0]), tensor([0])], prefix_len=0, num_tokens=1, chunk_pages=1, staged=True) raised VllmTransferFailed: vllm 0.33.0: decode ranks (PP, TP) [(0, 0), (0, 1)] did not receive the request in 3.0s: NIXL transfer failure: handshake_setup_failed | Context: {'failure_type': 'handshake_setup_failed', 'request_id': None, 'engine_id': 'kvconform-prefill', 'remote_engine_id': 'kvconform-decode'} [AssertionError: ]; NIXL transfer failure: push_handshake_failed | Context: {'failure_type': 'push_handshake_failed', 'request_id': 'kvconform-request', 'engine_id': 'kvconform-prefill'} (raised at /work/vclone/adapters/vllm/implementation.py:395 in _step_until_received); calls so far: impl.move_request(total_kv_heads=1, prefill_tp=1, decode_tp=1, prefill_pp=2, decode_pp=1, prefill_page_size=1, decode_page_size=1, prefill_pools=[([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32]), ([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32])], prefill_page_tables=[tensor([0]), tensor([0])], decode_pools=[([tensor(2, 1, 1):float32, tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32, tensor(2, 1, 1):float32])], decode_page_tables=[tensor([0])], prefix_len=0, num_tokens=1, chunk_pages=1, staged=True); impl.move_request(total_kv_heads=1, prefill_tp=1, decode_tp=1, prefill_pp=1, decode_pp=1, prefill_page_size=1, decode_page_size=1, prefill_pools=[([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32])], prefill_page_tables=[tensor([0])], decode_pools=[([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32])], decode_page_tables=[tensor([0])], prefix_len=0, num_tokens=1, chunk_pages=1, staged=True); impl.move_request(total_kv_heads=1, prefill_tp=1, decode_tp=2, prefill_pp=1, decode_pp=1, prefill_page_size=1, decode_page_size=1, prefill_pools=[([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32])], prefill_page_tables=[tensor([0])], decode_pools=[([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32]), ([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32])], decode_page_tables=[tensor([0]), tensor([0])], prefix_len=0, num_tokens=1, chunk_pages=1, staged=True); impl.move_request(total_kv_heads=1, prefill_tp=1, decode_tp=2, prefill_pp=1, decode_pp=1, prefill_page_size=1, decode_page_size=1, prefill_pools=[([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32])], prefill_page_tables=[tensor([0])], decode_pools=[([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32]), ([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32])], decode_page_tables=[tensor([0]), tensor([0])], prefix_len=0, num_tokens=1, chunk_pages=1, staged=True); impl.move_request(total_kv_heads=1, prefill_tp=2, decode_tp=1, prefill_pp=1, decode_pp=1, prefill_page_size=1, decode_page_size=1, prefill_pools=[([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32]), ([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32])], prefill_page_tables=[tensor([0]), tensor([0])], decode_pools=[([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32])], decode_page_tables=[tensor([0])], prefix_len=0, num_tokens=1, chunk_pages=1, staged=True); impl.move_request(total_kv_heads=1, prefill_tp=2, decode_tp=1, prefill_pp=1, decode_pp=1, prefill_page_size=1, decode_page_size=1, prefill_pools=[([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32]), ([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32])], prefill_page_tables=[tensor([0]), tensor([0])], decode_pools=[([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32])], decode_page_tables=[tensor([0])], prefix_len=0, num_tokens=1, chunk_pages=1, staged=True); impl.move_request(total_kv_heads=1, prefill_tp=2, decode_tp=1, prefill_pp=1, decode_pp=1, prefill_page_size=1, decode_page_size=1, prefill_pools=[([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32]), ([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32])], prefill_page_tables=[tensor([0]), tensor([0])], decode_pools=[([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32])], decode_page_tables=[tensor([0])], prefix_len=0, num_tokens=1, chunk_pages=1, staged=True); impl.move_request(total_kv_heads=2, prefill_tp=4, decode_tp=2, prefill_pp=1, decode_pp=1, prefill_page_size=1, decode_page_size=1, prefill_pools=[([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32]), ([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32]), ([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32]), ([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32])], prefill_page_tables=[tensor([0]), tensor([0]), tensor([0]), tensor([0])], decode_pools=[([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32]), ([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32])], decode_page_tables=[tensor([0]), tensor([0])], prefix_len=0, num_tokens=1, chunk_pages=1, staged=True); impl.move_request(total_kv_heads=1, prefill_tp=2, decode_tp=1, prefill_pp=1, decode_pp=1, prefill_page_size=1, decode_page_size=1, prefill_pools=[([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32]), ([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32])], prefill_page_tables=[tensor([0]), tensor([0])], decode_pools=[([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32])], decode_page_tables=[tensor([0])], prefix_len=0, num_tokens=1, chunk_pages=1, staged=True); impl.move_request(total_kv_heads=1, prefill_tp=1, decode_tp=1, prefill_pp=1, decode_pp=1, prefill_page_size=2, decode_page_size=2, prefill_pools=[([tensor(4, 1, 16):float32], [tensor(4, 1, 16):float32])], prefill_page_tables=[tensor([0])], decode_pools=[([tensor(4, 1, 16):float32], [tensor(4, 1, 16):float32])], decode_page_tables=[tensor([0])], prefix_len=0, num_tokens=2, chunk_pages=1, staged=True); impl.move_request(total_kv_heads=2, prefill_tp=2, decode_tp=1, prefill_pp=2, decode_pp=1, prefill_page_size=32, decode_page_size=32, prefill_pools=[([tensor(128, 1, 5):float32, tensor(128, 1, 5):float32, tensor(128, 1, 5):float32], [tensor(128, 1, 5):float32, tensor(128, 1, 5):float32, tensor(128, 1, 5):float32]), ([tensor(128, 1, 5):float32, tensor(128, 1, 5):float32, tensor(128, 1, 5):float32], [tensor(128, 1, 5):float32, tensor(128, 1, 5):float32, tensor(128, 1, 5):float32]), ([tensor(128, 1, 5):float32, tensor(128, 1, 5):float32, tensor(128, 1, 5):float32], [tensor(128, 1, 5):float32, tensor(128, 1, 5):float32, tensor(128, 1, 5):float32]), ([tensor(128, 1, 5):float32, tensor(128, 1, 5):float32, tensor(128, 1, 5):float32], [tensor(128, 1, 5):float32, tensor(128, 1, 5):float32, tensor(128, 1, 5):float32])], prefill_page_tables=[tensor([0]), tensor([0]), tensor([0]), tensor([0])], decode_pools=[([tensor(160, 2, 5):float32, tensor(160, 2, 5):float32, tensor(160, 2, 5):float32, tensor(160, 2, 5):float32, ... 6 items], [tensor(160, 2, 5):float32, tensor(160, 2, 5):float32, tensor(160, 2, 5):float32, tensor(160, 2, 5):float32, ... 6 items])], decode_page_tables=[tensor([2])], prefix_len=0, num_tokens=8, chunk_pages=3, staged=True); impl.move_request(total_kv_heads=1, prefill_tp=1, decode_tp=2, prefill_pp=1, decode_pp=1, prefill_page_size=1, decode_page_size=1, prefill_pools=[([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32])], prefill_page_tables=[tensor([0])], decode_pools=[([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32]), ([tensor(2, 1, 1):float32], [tensor(2, 1, 1):float32])], decode_page_tables=[tensor([0]), tensor([0])], prefix_len=0, num_tokens=1, chunk_pages=1, staged=True)"
STORAGES = {
    0: ('cpu', 136, 'eNpbupQyEGN/1GEpFQAAMwpWtQ=='),
    1: ('cpu', 136, 'eNpbupQyEGAzbf9SKgAARDZW9g=='),
    2: ('cpu', 8, 'eNpjYIAAAAAIAAE='),
    3: ('cpu', 136, 'eNpbunRwAAB2VVep'),
    4: ('cpu', 136, 'eNpbunRwAAB2VVep'),
    5: ('cpu', 136, 'eNpbunRwAAB2VVep'),
    6: ('cpu', 136, 'eNpbunRwAAB2VVep'),
    7: ('cpu', 8, 'eNpjYIAAAAAIAAE='),
}


def main(impl):
    r = Replay(STORAGES, MESSAGE)
    t0 = r.view(0, 'float32', (2, 1, 1), (1, 1, 1), 16)
    t1 = r.view(1, 'float32', (2, 1, 1), (1, 1, 1), 16)
    t2 = r.view(2, 'int64', (1,), (1,), 0)
    t3 = r.view(3, 'float32', (2, 1, 1), (1, 1, 1), 16)
    t4 = r.view(4, 'float32', (2, 1, 1), (1, 1, 1), 16)
    t5 = r.view(5, 'float32', (2, 1, 1), (1, 1, 1), 16)
    t6 = r.view(6, 'float32', (2, 1, 1), (1, 1, 1), 16)
    t7 = r.view(7, 'int64', (1,), (1,), 0)
    # step 1
    r.step(1, 'impl.move_request(total_kv_heads=1, prefill_tp=1, decode_tp=2, prefill_pp=1, decode_pp=1, prefill_page_size=1, decode_page_size=1, prefill_pools=[([t0], [t1]...', lambda: impl.move_request(total_kv_heads=1, prefill_tp=1, decode_tp=2, prefill_pp=1, decode_pp=1, prefill_page_size=1, decode_page_size=1, prefill_pools=[([t0], [t1])], prefill_page_tables=[t2], decode_pools=[([t3], [t4]), ([t5], [t6])], decode_page_tables=[t7, t7], prefix_len=0, num_tokens=1, chunk_pages=1, staged=True), raises=('VllmTransferFailed', "vllm 0.33.0: decode ranks (PP, TP) [(0, 0), (0, 1)] did not receive the request in 3.0s: NIXL transfer failure: handshake_setup_failed | Context: {'failure_type': 'handshake_setup_failed', 'request_id': None, 'engine_id': 'kvconform-prefill', 'remote_engine_id': 'kvconform-decode'} [AssertionError: ]; NIXL transfer failure: push_handshake_failed | Context: {'failure_type': 'push_handshake_failed', 'request_id': 'kvconform-request', 'engine_id': 'kvconform-prefill'}"), verdict=True, after={0: 'a2b7e4da605c104a', 1: 'f777857afd3238e1', 2: 'af5570f5a1810b7a', 3: 'c15b86cb81b07e4f', 4: 'c15b86cb81b07e4f', 5: 'c15b86cb81b07e4f', 6: 'c15b86cb81b07e4f', 7: 'af5570f5a1810b7a'})
    # the verdict
    # (checked at the step that raised: the same exception there is the failure)
    raise NotReproduced('the call that failed did not raise as in the failing run')
    return r


if __name__ == "__main__":
    run(main, SPEC, IMPL_PATH)
