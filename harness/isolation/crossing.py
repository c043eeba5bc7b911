"""How values cross between the judge and the worker: pickling rules, in both directions.

* Tensors cross through torch.multiprocessing's reductions (registered with
  ``ForkingPickler``): a CPU tensor's storage is moved into shared memory in
  place (views and strides survive), a CUDA tensor travels as an IPC handle,
  so the worker writes the judge's own bytes.  From the judge, a storage
  crosses once per lane (:class:`StorageTable`): later tensors on it travel
  as a token and their view (offset, sizes, strides), and the worker keeps
  token -> storage, so the same pool sent on every call is neither shared
  again nor looked up in torch's cache.
* Objects the judge sends by value that plain pickle refuses are rebuilt in
  the worker: ``unittest.mock`` objects (each instance has a class of its own)
  and instances of classes made at run time (``type(name, bases, dict)``), as
  the receiver strategies draw them.  A class made at run time is rebuilt with
  the same name and the class attributes that pickle (a ``__repr__`` that does
  not is replaced by one answering the judge's text).
* What the worker sends back is read with :class:`JudgeUnpickler`, which only
  builds plain data, builtin exceptions, tensors and this package's message
  types: a pickle from the implementation's process cannot import or run
  anything in the judge.
"""

from __future__ import annotations

import builtins
import io
import itertools
import pickle
import sys
import threading
from collections import OrderedDict
from typing import Any, Optional
from unittest import mock

import torch
from multiprocessing.reduction import ForkingPickler

from strategies.receiver_protocol import rebuild_receiver, receiver_recipe

import torch.multiprocessing  # noqa: F401  (registers the tensor reductions with ForkingPickler)

#: Modules whose named classes and functions the judge may rebuild from a worker's pickle.
_TORCH_REBUILDERS = ("torch.multiprocessing.reductions", "torch._utils")
_TORCH_NAMES = frozenset({"Tensor", "Size", "device", "UntypedStorage", "TypedStorage", "dtype"})
_NUMPY_NAMES = frozenset({"scalar", "dtype", "_reconstruct", "ndarray"})
_MESSAGES = frozenset({("harness.isolation.channel", "Call"), ("harness.isolation.channel", "Raised"),
                       ("harness.isolation.proxy", "Handle"), ("harness.isolation.proxy", "Unpicklable")})
_INSPECT_NAMES = frozenset({"Signature", "Parameter", "_empty", "_ParameterKind"})
_BUILTIN_DATA = frozenset({"int", "float", "complex", "bool", "str", "bytes", "bytearray", "tuple", "list", "dict",
                           "set", "frozenset", "slice", "range", "NoneType", "object"})


def share_by_name() -> None:
    """Share CPU tensors by shm file name rather than by passing a file descriptor per tensor per call: a name
    is a few bytes, and the other side finds a storage it has seen in torch's cache.  Set on both sides."""
    torch.multiprocessing.set_sharing_strategy("file_system")


#: Classes whose instances pickle as themselves (never a receiver, a mock or a class made at run time): the
#: common arguments skip every other question.
_PLAIN_CLASSES: frozenset[type] = frozenset({torch.Size, torch.dtype, torch.device, type(None), bool, int, float,
                                             str, bytes, tuple, list, dict})


class CrossingPickler(ForkingPickler):
    """Pickles with torch's tensor reductions, and rebuilds mocks and run-time classes by value."""

    def reducer_override(self, obj: Any) -> Any:
        cls = type(obj)
        if cls in _PLAIN_CLASSES or cls is torch.Tensor:
            return NotImplemented
        recipe = receiver_recipe(obj)
        if recipe is not None:  # a generated receiver: rebuilt there by the code that drew it, closures included
            return rebuild_receiver, recipe
        if isinstance(obj, mock.NonCallableMock):
            return _reduce_mock(obj)
        if not isinstance(obj, type) and cls.__module__ != "builtins" and not _importable(cls):
            return _rebuild_instance, (_class_by_value(cls), _instance_state(obj))
        return NotImplemented


def dumps(value: Any) -> bytes:
    buffer = io.BytesIO()
    CrossingPickler(buffer, pickle.HIGHEST_PROTOCOL).dump(value)
    return buffer.getvalue()


# -- storages that crossed once (judge -> worker) ----------------------------------------------
#: Storages one lane's table keeps (oldest dropped first, the worker told to drop them too).
KEPT_STORAGES = 512

_tokens = itertools.count(-1, -1)  #: storage tokens are negative: the worker's own handles are positive
_tokens_lock = threading.Lock()


class StorageTable:
    """The storages the judge sent to one worker over one lane: a storage crosses once, by torch's reduction
    (shared memory in place on CPU, an IPC handle on CUDA), then as its token.

    The table holds each storage strongly, so its address (the key) cannot be reused by another storage while
    the entry lives; entries past :data:`KEPT_STORAGES` are dropped oldest first and their tokens sent to the
    worker with the next message (``drained``).  One table per lane: a lane's messages arrive in order, so the
    worker has always read a storage before any token of it.  A table lives as long as its worker."""

    def __init__(self, kept: int = KEPT_STORAGES) -> None:
        self._kept = kept
        self._storages: OrderedDict[int, tuple[int, Any]] = OrderedDict()  # storage address -> (token, storage)
        self._dropped: list[int] = []
        self._added: list[int] = []  #: keys added by the message being pickled

    def __len__(self) -> int:
        return len(self._storages)

    def clear(self) -> None:
        """Forget every storage (the worker forgot them too: ``Worker._end_test``)."""
        self._storages.clear()
        self._dropped.clear()

    def dumps(self, message: tuple) -> bytes:
        """Pickle a lane message ``(kind, payload, released)``, adding the tokens this table dropped."""
        self._evict()
        if self._dropped:
            kind, payload, released = message
            message, self._dropped = (kind, payload, list(released) + self._dropped), []
        buffer = io.BytesIO()
        self._added = []
        try:
            _JudgePickler(buffer, pickle.HIGHEST_PROTOCOL, self).dump(message)
        except BaseException:  # nothing was sent: the worker must not be thought to hold what this message had
            for key in self._added:
                self._storages.pop(key, None)
            raise
        return buffer.getvalue()

    def reduce(self, tensor: torch.Tensor) -> Any:
        if tensor.layout is not torch.strided or tensor.is_nested or tensor.device.type not in ("cpu", "cuda") or (
                tensor.requires_grad and not tensor.is_leaf):
            return NotImplemented  # torch's own reduction (or its refusal)
        storage = tensor.untyped_storage()
        key = storage._cdata
        view = (tensor.dtype, tensor.storage_offset(), tuple(tensor.size()), tuple(tensor.stride()),
                tensor.requires_grad)
        known = self._storages.get(key)
        if known is not None:
            self._storages.move_to_end(key)
            return _known_storage_tensor, (known[0], view)
        with _tokens_lock:
            token = next(_tokens)
        self._storages[key] = (token, storage)
        self._added.append(key)
        whole = torch.empty(0, dtype=torch.uint8, device=storage.device).set_(storage, 0, (storage.nbytes(),), (1,))
        return _new_storage_tensor, (token, whole, view)

    def _evict(self) -> None:
        while len(self._storages) > self._kept:
            _, (token, _storage) = self._storages.popitem(last=False)
            self._dropped.append(token)


class _JudgePickler(CrossingPickler):
    """The judge's pickler: tensors on a storage its lane already sent cross as a token and a view."""

    def __init__(self, file: Any, protocol: int, table: StorageTable) -> None:
        super().__init__(file, protocol)
        self._table = table
        self._whole: Optional[torch.Tensor] = None

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is torch.Tensor and obj is not self._whole:
            reduced = self._table.reduce(obj)
            if reduced is not NotImplemented:
                self._whole = reduced[1][1] if reduced[0] is _new_storage_tensor else None
                return reduced
            return NotImplemented
        return super().reducer_override(obj)


#: In the worker: token -> storage, for the storages the judge sent (dropped when the judge says so).
_STORAGES: dict[int, Any] = {}


def _new_storage_tensor(token: int, whole: torch.Tensor, view: tuple) -> torch.Tensor:
    _STORAGES[token] = whole.untyped_storage()
    return _known_storage_tensor(token, view)


def _known_storage_tensor(token: int, view: tuple) -> torch.Tensor:
    storage = _STORAGES[token]
    dtype, offset, size, stride, requires_grad = view
    tensor = torch.empty(0, dtype=dtype, device=storage.device).set_(storage, offset, size, stride)
    if requires_grad:
        tensor.requires_grad_(True)
    return tensor


def drop_storages(tokens: list) -> None:
    """In the worker: forget the storages of ``tokens`` (negative ids in a message's released list)."""
    for token in tokens:
        _STORAGES.pop(token, None)


def storages_held() -> int:
    return len(_STORAGES)


class JudgeUnpickler(pickle.Unpickler):
    """Reads what the worker sent: plain data, builtin exceptions, tensors, messages; nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "builtins":
            found = getattr(builtins, name, None)
            if name in _BUILTIN_DATA or (isinstance(found, type) and issubclass(found, BaseException)):
                return found
        elif (module, name) in _MESSAGES or (module == "inspect" and name in _INSPECT_NAMES):
            return super().find_class(module, name)
        elif module in _TORCH_REBUILDERS and name.startswith(("rebuild_", "_rebuild_")):
            return super().find_class(module, name)
        elif module in ("torch", "torch.storage") and (name in _TORCH_NAMES or isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        elif module.split(".")[0] == "numpy" and name in _NUMPY_NAMES:
            return super().find_class(module, name)
        elif module == "collections" and name == "OrderedDict":
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"the judge does not rebuild {module}.{name} from the worker")


def judge_loads(data: bytes) -> Any:
    return JudgeUnpickler(io.BytesIO(data)).load()


def worker_loads(data: bytes) -> Any:
    return pickle.loads(data)


# -- mocks ------------------------------------------------------------------------------------
def _reduce_mock(obj: mock.NonCallableMock) -> tuple:
    base = next(c for c in type(obj).__mro__ if _importable(c))  # a mock's own subclass is made per instance
    plain = {k: v for k, v in vars(obj).items() if not k.startswith("_")}
    return _rebuild_mock, (base, plain)


def _rebuild_mock(base: type, plain: dict) -> Any:
    obj = base()
    for key, value in plain.items():
        setattr(obj, key, value)
    return obj


# -- classes made at run time -----------------------------------------------------------------
def _importable(cls: type) -> bool:
    module = sys.modules.get(cls.__module__)
    found: Any = module
    for part in cls.__qualname__.split("."):
        found = getattr(found, part, None)
    return found is cls


def _class_by_value(cls: type) -> tuple:
    attributes = {}
    for key, value in vars(cls).items():
        if key in ("__dict__", "__weakref__", "__module__", "__qualname__", "__doc__"):
            continue
        try:
            pickle.dumps(value)
        except Exception:
            continue
        attributes[key] = value
    if "__repr__" in vars(cls) and "__repr__" not in attributes:
        attributes["__repr__"] = None  # filled per instance from the judge's text
    bases = tuple(b for b in cls.__bases__ if _importable(b)) or (object,)
    return cls.__name__, bases, attributes


def _instance_state(obj: Any) -> tuple[dict, str]:
    return dict(getattr(obj, "__dict__", {})), repr(obj)


def _rebuild_instance(made: tuple, state: tuple[dict, str]) -> Any:
    name, bases, attributes = made
    attributes, text = dict(attributes), state[1]
    if "__repr__" in attributes and attributes["__repr__"] is None:
        attributes["__repr__"] = lambda self: text
    cls = type(name, bases, attributes)
    obj: Any = object.__new__(cls) if cls.__new__ is object.__new__ else cls.__new__(cls)  # type: ignore[call-overload]
    if hasattr(obj, "__dict__"):
        obj.__dict__.update(state[0])
    return obj
