#!/usr/bin/env python3
"""kvconform standalone repro: harness/conformance/test_faults.py::test_lifecycle_faults_partial_write_never_lands[cuda-triton], failure 1 of 1.

Implementation: adapters.sglang:make_implementation#triton
The judge said:
    [lifecycle] handler.chunk_arrived(2, 0, 0, 0, 1, 1) raised CompilationError: at 34:21:
        offsets = block_id * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        mask = offsets < per_layer_elems

        t_idx = offsets // ELEMS_PER_TOKEN
        e_idx = offsets % ELEMS_PER_TOKEN

        page_id = t_idx // PAGE_SIZE
        intra_page = t_idx % PAGE_SIZE
        page_val = tl.load(page_indices + page_id, mask=mask, other=0)
        pool_token = page_val * PAGE_SIZE + intra_page

        per_rank_elems = per_layer_elems.to(tl.int64) * NUM_LAYERS_X2
                         ^
    AttributeError("'int' object has no attribute 'to'") (raised at /opt/torch/.venv/lib/python3.12/site-packages/triton/compiler/compiler.py:80 in make_ir); calls so far: handler.register(1, StagedReceiver(), tensor([23]), 0, 1); handler.allocate_chunk(1, 0, 8); handler.allocate_chunk(1, 0, 8); handler.register(2, StagedReceiver(), tensor([6]), 0, 1); handler.allocate_chunk(2, 0, 8); handler.allocate_chunk(2, 0, 8); handler.chunk_arrived(2, 0, 0, 0, 1, 1)

What it does: rebuilds the 5 tensor storages the implementation was handed (their
bytes at first use, embedded below), replays the 18 calls of the failing example in order with
the bytes the harness wrote between them, and checks that the call that raised in the failing run raises the same exception (type and message) again.
Harness objects the implementation was handed are replaced: allocator1 is passed where the failing run
passed the allocator oracle (harness.engine.ledger) wrapping it.  Their checks and side effects (the ledger
scribbling freed staging regions) are not replayed.
Bytes the harness wrote between calls (prefill writers filling the staging ring, cached prefix rows) are
replayed as recorded: a script replaying a fixed gather still writes the bytes the failing gather produced,
so it reports NOT REPRODUCED at the gather instead.

Run:  python repro_test_lifecycle_faults_partial_write_never_lands_cuda_triton_1.py [module:factory]
Needs only torch and the implementation (not kvconform).  The implementation is loaded as SPEC (or the
module:factory given), its package 'adapters' found on sys.path after IMPL_PATH (the directory it was
loaded from when recorded) or $REPRO_IMPL_PATH (directories separated by ':').  For an adapter
of the kvconform repository, put a directory that holds only that package there:
    mkdir only && ln -s /work/main/adapters only/adapters && REPRO_IMPL_PATH=only python repro_test_lifecycle_faults_partial_write_never_lands_cuda_triton_1.py
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


SPEC = 'adapters.sglang:make_implementation#triton'
IMPL_PATH = ['/work/main']
MESSAGE = '[lifecycle] handler.chunk_arrived(2, 0, 0, 0, 1, 1) raised CompilationError: at 34:21:\n    offsets = block_id * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)\n    mask = offsets < per_layer_elems\n\n    t_idx = offsets // ELEMS_PER_TOKEN\n    e_idx = offsets % ELEMS_PER_TOKEN\n\n    page_id = t_idx // PAGE_SIZE\n    intra_page = t_idx % PAGE_SIZE\n    page_val = tl.load(page_indices + page_id, mask=mask, other=0)\n    pool_token = page_val * PAGE_SIZE + intra_page\n\n    per_rank_elems = per_layer_elems.to(tl.int64) * NUM_LAYERS_X2\n                     ^\nAttributeError("\'int\' object has no attribute \'to\'") (raised at /opt/torch/.venv/lib/python3.12/site-packages/triton/compiler/compiler.py:80 in make_ir); calls so far: handler.register(1, StagedReceiver(), tensor([23]), 0, 1); handler.allocate_chunk(1, 0, 8); handler.allocate_chunk(1, 0, 8); handler.register(2, StagedReceiver(), tensor([6]), 0, 1); handler.allocate_chunk(2, 0, 8); handler.allocate_chunk(2, 0, 8); handler.chunk_arrived(2, 0, 0, 0, 1, 1)'
STORAGES = {
    0: ('cuda:0', 144, 'eNpbunRwAQBK/lzR'),
    1: ('cuda:0', 232, 'eNpbunRkAAARSJWJ'),
    2: ('cuda:0', 232, 'eNpbunRkAAARSJWJ'),
    3: ('cuda:0', 8, 'eNoTZ4AAAADAABg='),
    4: ('cuda:0', 8, 'eNpjY4AAAAA4AAc='),
}


def main(impl):
    r = Replay(STORAGES, MESSAGE)
    t0 = r.view(0, 'uint8', (16,), (1,), 64)
    t1 = r.view(1, 'float32', (26, 1, 1), (1, 1, 1), 16)
    t2 = r.view(2, 'float32', (26, 1, 1), (1, 1, 1), 16)
    t3 = r.view(3, 'int64', (1,), (1,), 0)
    t4 = r.view(4, 'int64', (1,), (1,), 0)
    # step 1
    r.step(1, 'impl.writers_of_decode_rank(1, 1, 1, 0)', lambda: impl.writers_of_decode_rank(1, 1, 1, 0), returns=[0], after={})
    # step 2
    r.step(2, 'impl.head_slice(1, 1, 1, 0, 0)', lambda: impl.head_slice(1, 1, 1, 0, 0), returns=[0, 1, 0], after={})
    # step 3
    r.step(3, 'impl.staging_layout(1, 1, 1, 1, 1, 4)', lambda: impl.staging_layout(1, 1, 1, 1, 1, 4), returns=[[0, 8]], after={})
    # step 4
    r.step(4, 'impl.staging_layout(1, 1, 1, 1, 1, 4)', lambda: impl.staging_layout(1, 1, 1, 1, 1, 4), returns=[[0, 8]], after={})
    # step 5
    r.step(5, 'impl.writers_of_decode_rank(1, 1, 1, 0)', lambda: impl.writers_of_decode_rank(1, 1, 1, 0), returns=[0], after={})
    # step 6
    r.step(6, 'impl.head_slice(1, 1, 1, 0, 0)', lambda: impl.head_slice(1, 1, 1, 0, 0), returns=[0, 1, 0], after={})
    # step 7
    allocator1 = r.step(7, 'impl.make_allocator(16)', lambda: impl.make_allocator(16), compare=False, after={})
    # step 8
    clock0 = r.clock(0, 0.0)
    decode_handler1 = r.step(8, 'impl.make_decode_handler(staging=t0, allocator=allocator1, k_layers=[t1], v_layers=[t2], page_size=1, num_writers=1, writer_destinations=[(0, 0)], heads_per_...', lambda: impl.make_decode_handler(staging=t0, allocator=allocator1, k_layers=[t1], v_layers=[t2], page_size=1, num_writers=1, writer_destinations=[(0, 0)], heads_per_writer=1, layers_per_writer=1, timeout_s=10.0, clock=clock0), compare=False, after={0: '1e82a563eb0fb985', 1: 'b0c5254b3277b94c', 2: 'b0c5254b3277b94c'})
    # step 9
    r.step(9, "decode_handler1.register(1, receiver('StagedReceiver', 'StagedReceiver()', require_staging=True), t3, 0, 1)", lambda: decode_handler1.register(1, receiver('StagedReceiver', 'StagedReceiver()', require_staging=True), t3, 0, 1), returns=True, after={3: 'c69a9157638e69fb'})
    # step 10
    r.step(10, 'impl.staging_layout(1, 1, 1, 1, 1, 4)', lambda: impl.staging_layout(1, 1, 1, 1, 1, 4), returns=[[0, 8]], after={})
    # step 11
    r.step(11, 'decode_handler1.allocate_chunk(1, 0, 8)', lambda: decode_handler1.allocate_chunk(1, 0, 8), returns=[0, 0, 8], after={})
    #   inside it, the implementation called allocator1.assign(8) -> [0, 0, 0]
    #   inside it, the implementation called allocator1.watermark() -> [0, 0]
    # step 14
    r.step(14, 'decode_handler1.allocate_chunk(1, 0, 8)', lambda: decode_handler1.allocate_chunk(1, 0, 8), returns=[0, 0, 8], after={})
    # step 15
    # the harness wrote 8 bytes since the last call
    r.write(0, 64, 'eNrTX3VE3AYIAA2JAqU=')
    clock0 = r.clock(0, 9.0)
    r.step(15, "decode_handler1.register(2, receiver('StagedReceiver', 'StagedReceiver()', require_staging=True), t4, 0, 1)", lambda: decode_handler1.register(2, receiver('StagedReceiver', 'StagedReceiver()', require_staging=True), t4, 0, 1), returns=True, after={0: '322f4ab0784a2a60', 4: '23d7f42b1cdc1f0d'})
    # step 16
    r.step(16, 'decode_handler1.allocate_chunk(2, 0, 8)', lambda: decode_handler1.allocate_chunk(2, 0, 8), returns=[8, 0, 16], after={})
    #   inside it, the implementation called allocator1.assign(8) -> [1, 8, 0]
    # step 18
    r.step(18, 'decode_handler1.allocate_chunk(2, 0, 8)', lambda: decode_handler1.allocate_chunk(2, 0, 8), returns=[8, 0, 16], after={})
    # step 19
    r.step(19, 'allocator1.watermark()', lambda: allocator1.watermark(), returns=[0, 0], after={})
    # step 20
    r.step(20, 'impl.writer_may_write(0, 16, (0, 0))', lambda: impl.writer_may_write(0, 16, (0, 0)), returns=True, after={})
    # step 21
    # the harness wrote 8 bytes since the last call
    r.write(0, 72, 'eNrTX3VE/MAZxQgAES8Dug==')
    r.step(21, 'decode_handler1.chunk_arrived(2, 0, 0, 0, 1, 1)', lambda: decode_handler1.chunk_arrived(2, 0, 0, 0, 1, 1), raises=('CompilationError', 'at 34:21:\n    offsets = block_id * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)\n    mask = offsets < per_layer_elems\n\n    t_idx = offsets // ELEMS_PER_TOKEN\n    e_idx = offsets % ELEMS_PER_TOKEN\n\n    page_id = t_idx // PAGE_SIZE\n    intra_page = t_idx % PAGE_SIZE\n    page_val = tl.load(page_indices + page_id, mask=mask, other=0)\n    pool_token = page_val * PAGE_SIZE + intra_page\n\n    per_rank_elems = per_layer_elems.to(tl.int64) * NUM_LAYERS_X2\n                     ^\nAttributeError("\'int\' object has no attribute \'to\'")'), verdict=True, after={0: '32d6d25bc5c94021', 1: 'b0c5254b3277b94c', 2: 'b0c5254b3277b94c', 3: 'c69a9157638e69fb', 4: '23d7f42b1cdc1f0d'})
    # the verdict
    # (checked at the step that raised: the same exception there is the failure)
    raise NotReproduced('the call that failed did not raise as in the failing run')
    return r


if __name__ == "__main__":
    run(main, SPEC, IMPL_PATH)
