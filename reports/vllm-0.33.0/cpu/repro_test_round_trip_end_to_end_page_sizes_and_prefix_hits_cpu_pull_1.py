#!/usr/bin/env python3
"""kvconform standalone repro: harness/conformance/test_round_trip.py::test_round_trip_end_to_end_page_sizes_and_prefix_hits[cpu-pull], failure 1 of 1.

Implementation: adapters.vllm:make_implementation#pull
The judge said:
    [round_trip] decode rank 0: K layer 0 differs at pool slot 0, local head 0, dim 0; it is token 8 (cached but in partial decode page 1: re-read, the prefill's KV), global head 0; expected [0xbf49, 0x486d, 0xbe08], got [0x4083, 0x4883, 0x477a] = ground truth token 4, global head 0, layer 0

What it does: rebuilds the 14 tensor storages the implementation was handed (their
bytes at first use, embedded below), replays the 1 calls of the failing example in order with
the bytes the harness wrote between them, and checks that the tensors the oracle checked hold the bytes it derived from ground truth.
Bytes the harness wrote between calls (prefill writers filling the staging ring, cached prefix rows) are
replayed as recorded: a script replaying a fixed gather still writes the bytes the failing gather produced,
so it reports NOT REPRODUCED at the gather instead.

Run:  python repro_test_round_trip_end_to_end_page_sizes_and_prefix_hits_cpu_pull_1.py [module:factory]
Needs only torch and the implementation (not kvconform).  The implementation is loaded as SPEC (or the
module:factory given), its package 'adapters' found on sys.path after IMPL_PATH (the directory it was
loaded from when recorded) or $REPRO_IMPL_PATH (directories separated by ':').  For an adapter
of the kvconform repository, put a directory that holds only that package there:
    mkdir only && ln -s /work/vclone/adapters only/adapters && REPRO_IMPL_PATH=only python repro_test_round_trip_end_to_end_page_sizes_and_prefix_hits_cpu_pull_1.py
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
MESSAGE = "[round_trip] decode rank 0: K layer 0 differs at pool slot 0, local head 0, dim 0; it is token 8 (cached but in partial decode page 1: re-read, the prefill's KV), global head 0; expected [0xbf49, 0x486d, 0xbe08], got [0x4083, 0x4883, 0x477a] = ground truth token 4, global head 0, layer 0"
STORAGES = {
    0: ('cpu', 392, 'eNpbupQy0OzQ7FHlfuLIH+dI+/sem3fM279hz6S9U2w99+d6cOybuUPfcfkJYddPu1c5axydcWyRk5SD6NraI5f3Cx0MPKR/uPf4H8uzO29ufXjQz7nLaobDSjt9m2JnuQOzj+m76DqE7zxl9HH/hQNL9p/Y42UX6ay1p93IYW+t2wOnmY6CR8VdfxwRPSy9j9sB2T2f3M/a9h+V3OlsG2h73ebm4SyX6lXVBz/v2W8QuuWu3adD4Xs6LFQtShxXHxY3cXXsc9p8yPZAtmuz64Utx/btt5PfE3psmqvikT6XF1sO2TodmmIS5Dh9T7Vb8rG5m57u+WItv3spjQAAGm7c8g=='),
    1: ('cpu', 392, 'eNpbupQykGW/xl7a6sKGSVtmH4k4ZOGi5SpvudNl48ltR88cjbdbuEXz2KHtebphzodWzDtkZ+az0+9Y6UFRx9Z1oXvfuyfaznWotfJ3m+Uy42D8ofeW3Dt+27z3CD+y0O38YYkDCw/yHTl8pGxfs/UOd7a9zw/Pdtl/LNllsyvjqRyr07tW7z997MGRpSfmOTi6ILvnl72i+zuHliN/j/odPLHvtAvDQR6PuOPCB+z3fT7St69+g8OBHyZLjrzck7gvydN//6tD+QeYj9gd/H3M6Ii1bZeHxtEdHv9dF+49dniVQ/PaOo9Xe2YddDzZuX+XvrRlml2PznaPpTQCAEAL4kM='),
    2: ('cpu', 392, 'eNpbupQy8GX70wOPjix2O+2Uqv3aWcNp2o5FNi+PrHQ8vWfVntfHT+3v2L302NnDm13O2Je4nHOJdJSxur5P4uDOYxEH39u/t9nj+HFv8yGNI3wHDPf8PmBwUsy96mCCqcPhvUf1HXftTtkm5XLbfur+j0de7KxUlrFWdRQ9OsX2zP4Mmy2OW13uOKocmLDjrv1Re2T3zNrtb7PA2dtB3+PGzu8Hth1tcnm2VWT/vyNbHaZYhB42219+8K5+na32wTd7Q46KO2rsW7Vtn+s9Fw23/YdS7eyOLHT44vrjyAe7XCdb52NuPUcvu3E5+zlvt49yfHmEw6nV+IvjUhoBAJOP4gE='),
    3: ('cpu', 392, 'eNpbupQysFJbxfW9nYXT0dPPnabtj9jz3G3OIb2jyw+/2ndu30VLU4crR9cdnu9cdrjeKfDAg93MdsmOfEc2u/yxbD1i5fLLodhU6Fjl/hUOMxy3O6Yd2bRvpusfxznuBXvf2k0/sml/u+sRu19Hwh3DHc/v6zny08ra0PBYgaPTiZMunTYqB4T22B9M2b3/6HdLZPd8clJ0Vtx1yen9wUfWswz83U2P7N2/w6reUeOE1xEnh8kOcu5azn37Zh8+caRvmfmJOc6LHUo9r9vmu9+1VXM/bWu5l1N/4rY6Z72jflbJu7btvu4sYKtz5OOhOueEfTetX9pN3raURgAAlPTdKA=='),
    4: ('cpu', 80, 'eNrjZIAAZgZUwA6lGaE0B5RmgtJsUJoFSrNCaQAIKAAu'),
    5: ('cpu', 320, 'eNpbupQy4LE/x4Nzn5Dr592rnTcdsjmQ5bqUquDllsO2zoeq3JKOzdnk79xtNdNB/sCsY3ouTQ5NHtXu9zw27Zi/f59ByJY7dioWpY6rDi+lMwAAfLTDzw=='),
    6: ('cpu', 320, 'eNpbupQysP3o2aNxdvm64c6HV+QdYDpif3ApVcFqh6a19R4d+3frS1nGHXpnybVjgdu5w5IHsu3X2ktZRR6ydNF2tdv36Uj/vqVHXuxJ2LeUzgAALiDE0A=='),
    7: ('cpu', 320, 'eNpbupQycGrP6j2vjp85vMnlrP3qbftd77sspSqwcT7u1nt0m32044sjBnt+HTA86Xh4z1E9x6/bnxx4fOSVs6bT9B1bHKZahByut9U6+HbvUjoDADSUyiQ='),
    8: ('cpu', 320, 'eNpbupQy8Hrf+X0XLOc5lx+uc1rkUOJ5zXYpVYG/VdKu7bs/HKp3Tty3zTH9yOZ9hXvf2E07skJb1fWd3fT9kXueuWme8D7i7NC/b9bhk0eW0hkAAFatyCw='),
    9: ('cpu', 320, 'eNpbupQyMGOHnuOyE5pHZx5b7NTkenHL8X1LqQqmmgQ7TtvzZM9Xa7ndK+z0bIqcdRzCdp42Onnkr3OE/cY9k/dOtf18KGxPp4WYiYtjv9NSOgMAvHfE1w=='),
    10: ('cpu', 320, 'eNpbupQysGCLxrHD2+cfsjfz3fnrmPERK9ulVAWv98w+6HAy3a5XZ5vHL5t3HmFHFhzkP3LoyMUNk7fMOiJnucNlw8m6DY4Hfpoke/rtf31oKZ0BALEEyNk='),
    11: ('cpu', 320, 'eNpbupQycHp/5+4lx0pdzrtEOGq67TuUYreUquCSG7ezvzOnU4vxV0dx9+qDiaa7d6duk3ZZ5HbKKUV7sc2LIysczfeXHbyjH3pUzFFz31I6AwCJZsG8'),
    12: ('cpu', 320, 'eNpbupQyYOJw9ej6wwEHHu5msstzv2Or7r6UquCas6Ct7pEb1i/sJm2b4frXca775v1trkftLJ2OnH7mNPeQ/tFlhyc5yLtrO/cvMzsx13kpnQEAuMfEHg=='),
    13: ('cpu', 24, 'eNpjYkAFzFAaAABgAAY='),
}


def main(impl):
    r = Replay(STORAGES, MESSAGE)
    t0 = r.view(0, 'float16', (22, 2, 3), (6, 3, 1), 32)
    t1 = r.view(1, 'float16', (22, 2, 3), (6, 3, 1), 32)
    t2 = r.view(2, 'float16', (22, 2, 3), (6, 3, 1), 32)
    t3 = r.view(3, 'float16', (22, 2, 3), (6, 3, 1), 32)
    t4 = r.view(4, 'int64', (10,), (1,), 0)
    t5 = r.view(5, 'float16', (32, 1, 3), (3, 3, 1), 32)
    t6 = r.view(6, 'float16', (32, 1, 3), (3, 3, 1), 32)
    t7 = r.view(7, 'float16', (32, 1, 3), (3, 3, 1), 32)
    t8 = r.view(8, 'float16', (32, 1, 3), (3, 3, 1), 32)
    t9 = r.view(9, 'float16', (32, 1, 3), (3, 3, 1), 32)
    t10 = r.view(10, 'float16', (32, 1, 3), (3, 3, 1), 32)
    t11 = r.view(11, 'float16', (32, 1, 3), (3, 3, 1), 32)
    t12 = r.view(12, 'float16', (32, 1, 3), (3, 3, 1), 32)
    t13 = r.view(13, 'int64', (3,), (1,), 0)
    # step 1
    r.step(1, 'impl.move_request(total_kv_heads=2, prefill_tp=1, decode_tp=2, prefill_pp=1, decode_pp=1, prefill_page_size=2, decode_page_size=8, prefill_pools=[([t0, t1], ...', lambda: impl.move_request(total_kv_heads=2, prefill_tp=1, decode_tp=2, prefill_pp=1, decode_pp=1, prefill_page_size=2, decode_page_size=8, prefill_pools=[([t0, t1], [t2, t3])], prefill_page_tables=[t4], decode_pools=[([t5, t6], [t7, t8]), ([t9, t10], [t11, t12])], decode_page_tables=[t13, t13], prefix_len=11, num_tokens=19, chunk_pages=1, staged=True), returns=None, after={0: '201d3e0b3b7b02c0', 1: '9d7f28cf85b89747', 2: 'b350d0d8b1fe73d6', 3: 'c79a5da675348e16', 4: 'aef2a0983c08a90d', 5: 'f187538bfbaeef0f', 6: 'f6aa8f2eb8d849c1', 7: '19b5f0493241f9b6', 8: '7047f9aa69c21e22', 9: '20a9c5f7ad7020aa', 10: '48643a0552f6d25c', 11: 'd0e6d0bb3faeea2a', 12: '32d9e65bf7a33661', 13: '15880efbdc90e46f'})
    # the verdict
    r.judge_bytes([
        r.expect_bytes('tensor of storage 5 (32, 1, 3):float16', t5, 'eNrz3J/rwbFP2PXT7lXOmw/ZHsh23W8nvyf0mJSD6NraI/qHe4//sfzkfta2/+h1m5uHs1yWkghebjls63yoyi3p2JxN/s7dVjMd5A/MOqbn0uTQ5FHtfs9j0475+/cZhGy5Y6diUeq46vDH/RcOLNmvtafdyGGv4FFx1x9H8JsPAPHibE4=', [0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26]),
        r.expect_bytes('tensor of storage 6 (32, 1, 3):float16', t6, 'eNrbdvTM0Xi7PN0w50Mr8g8wH7E72OWhcXSHh9+x0oOijom2cx1qrX7ZK7q/czix77QLw8GlJILVDk1r6z069u/Wl7KMO/TOkmvHArdzhyUPZNuvtZeyijxk6aLtarfv05H+fUuPvNiTsK9sX7P1Dvf9x5JdNruu3n/62IMj+M0HACcva8c=', [0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26]),
        r.expect_bytes('tensor of storage 7 (32, 1, 3):float16', t7, 'eNo7vWfVntfHzx7e7HLGftW2fa73XOyOLHT44ipjdX2fxMH3NnscP+6dtdvfZoHz9wPbjja5LCUR2Dgfd+s9us0+2vHFEYM9vw4YnnQ8vOeonuPX7U8OPD7yylnTafqOLQ5TLUIO19tqHXy797b91P0fj6g6ih6dYrvV5Y6jygH85gMAW5FyUg==', [0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26]),
        r.expect_bytes('tensor of storage 8 (32, 1, 3):float16', t8, 'eNp7te/cvouW853LDtc7LXYo9bxue9rWci+nfrIj35HNLr8cik2Fjn1yUnRW3DXLwN/d9MhSEoG/VdKu7bs/HKp3Tty3zTH9yOZ9hXvf2E07skJb1fWd3fT9kXueuWme8D7i7NC/b9bhk0d+HQl3DHe0NjQ8VuCockBoj/1B/OYDAB7xapw=', [0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26]),
    ])
    return r


if __name__ == "__main__":
    run(main, SPEC, IMPL_PATH)
