"""An in-process NIXL agent: vLLM's connector talks to it as to ``nixl_agent``; it only moves bytes.

Descriptor semantics are implemented strictly, as NIXL defines them:

* memory must be registered (``get_reg_descs`` + ``register_memory``) before a
  descriptor may name it, and every byte a descriptor names must lie inside
  one registered range of the agent that owns the list;
* ``prep_xfer_dlist`` takes vLLM's strided ``Nx5`` rows ``(addr, len, dev,
  stride, count)``: row ``r`` expands to ``count`` descriptors of ``len`` bytes
  at ``addr + i * stride``, numbered in row order;
* ``make_prepped_xfer`` pairs ``local[local_ids[i]]`` with
  ``remote[remote_ids[i]]``; both id lists must have the same length, every id
  must exist, paired descriptors must have the same length;
* ``READ`` copies remote -> local, ``WRITE`` local -> remote; the notification
  is delivered to the remote agent when the transfer completes.

Any violation raises :class:`NixlAccessError` (NIXL returns an error status
there; nothing is copied).  Transfers complete synchronously on ``transfer``.
Bytes are reached through :class:`HostMemory`, which knows the tensors the
adapter allocated; an address outside them also raises.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch

LOCAL_AGENT = "NIXL_INIT_AGENT"  #: the name vLLM passes to prepare local descriptor lists


class NixlAccessError(RuntimeError):
    """A descriptor or transfer names memory NIXL would refuse (unregistered, out of range, bad ids)."""


class HostMemory:
    """The process's KV allocations, addressable by raw address (what NIXL sees)."""

    def __init__(self) -> None:
        self._spans: list[tuple[int, int, torch.Tensor]] = []  # (start, end, flat uint8 view)
        self._lock = threading.Lock()

    def add(self, tensor: torch.Tensor) -> None:
        """Make ``tensor``'s whole storage addressable."""
        storage = tensor.untyped_storage()
        start = storage.data_ptr()
        flat = torch.empty(0, dtype=torch.uint8, device=tensor.device).set_(storage, 0, (storage.nbytes(),), (1,))
        with self._lock:
            self._spans.append((start, start + storage.nbytes(), flat))

    def remove(self, tensor: torch.Tensor) -> None:
        start = tensor.untyped_storage().data_ptr()
        with self._lock:
            self._spans = [s for s in self._spans if s[0] != start]

    def view(self, addr: int, nbytes: int) -> torch.Tensor:
        """The ``nbytes`` bytes at ``addr`` as a uint8 tensor view."""
        for start, end, flat in self._spans:
            if start <= addr and addr + nbytes <= end:
                return flat[addr - start: addr - start + nbytes]
        raise NixlAccessError(f"address range [{addr:#x}, {addr + nbytes:#x}) is not inside any KV allocation")


@dataclass(frozen=True)
class RegisteredRange:
    start: int
    end: int
    mem_type: str


@dataclass
class RegDescs:
    """What ``get_reg_descs`` returns: ranges waiting for ``register_memory``."""

    ranges: list[RegisteredRange]


@dataclass
class PreparedList:
    owner: str  #: agent whose memory the descriptors name
    addrs: np.ndarray
    lens: np.ndarray


@dataclass
class Transfer:
    op: str
    local: PreparedList
    local_ids: np.ndarray
    remote: PreparedList
    remote_ids: np.ndarray
    notif: bytes
    state: str = "INIT"
    nbytes: int = 0


@dataclass
class Telemetry:
    """``nixlXferTelemetry`` fields vLLM's stats read."""

    xferDuration: float = 0.0
    postDuration: float = 0.0
    totalBytes: int = 0
    descCount: int = 0


class Fabric:
    """The agents of one simulated cluster and the memory they can reach."""

    def __init__(self) -> None:
        self.memory = HostMemory()
        self.agents: dict[str, "InProcessNixlAgent"] = {}
        self.errors: list[str] = []  #: every refused descriptor or transfer, for reports
        self.lock = threading.RLock()


@dataclass
class InProcessNixlAgent:
    """Stands in for ``nixl._api.nixl_agent`` (vLLM's ``NixlWrapper``)."""

    name: str
    fabric: Fabric
    registered: list[RegisteredRange] = field(default_factory=list)
    remotes: set[str] = field(default_factory=set)
    inbox: dict[str, list[bytes]] = field(default_factory=dict)
    _dlists: dict[int, PreparedList] = field(default_factory=dict)
    _xfers: dict[int, Transfer] = field(default_factory=dict)
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        with self.fabric.lock:
            self.fabric.agents[self.name] = self

    def _refuse(self, message: str) -> None:
        self.fabric.errors.append(f"agent {self.name}: {message}")
        raise NixlAccessError(message)

    # -- registration ---------------------------------------------------------------
    def get_reg_descs(self, ranges: Sequence[tuple[int, int, int, str]], mem_type: str) -> RegDescs:
        return RegDescs([RegisteredRange(int(a), int(a) + int(n), mem_type) for a, n, _dev, _tag in ranges])

    def register_memory(self, descs: RegDescs, backends: Any = None) -> RegDescs:
        for r in descs.ranges:
            self.fabric.memory.view(r.start, r.end - r.start)  # the memory must exist
        self.registered.extend(descs.ranges)
        return descs

    def deregister_memory(self, descs: RegDescs, backends: Any = None) -> None:
        for r in descs.ranges:
            if r in self.registered:
                self.registered.remove(r)

    def create_backend(self, name: str, params: Any = None) -> None:
        pass

    # -- peers and metadata -----------------------------------------------------------
    def get_agent_metadata(self) -> bytes:
        return self.name.encode()

    def add_remote_agent(self, metadata: bytes) -> str:
        name = bytes(metadata).decode()
        if name not in self.fabric.agents:
            self._refuse(f"remote agent metadata names unknown agent {name!r}")
        self.remotes.add(name)
        return name

    def remove_remote_agent(self, name: str) -> None:
        self.remotes.discard(name)

    def check_remote_metadata(self, name: str, descs: Any = None) -> bool:
        return name in self.remotes

    # -- descriptor lists -------------------------------------------------------------
    def prep_xfer_dlist(self, agent_name: str, descs: Any, mem_type: Optional[str] = None, *args: Any, **kwargs: Any) -> int:
        """Expand strided ``Nx5`` rows and check every descriptor against the owner's registered memory."""
        owner = self.name if agent_name == LOCAL_AGENT else agent_name
        if owner != self.name and owner not in self.remotes:
            self._refuse(f"prep_xfer_dlist for agent {owner!r}, which was never added as a remote agent")
        rows = np.asarray(descs, dtype=np.uint64)
        if rows.ndim != 2 or rows.shape[1] != 5:
            self._refuse(f"descriptor rows must be Nx5 (addr, len, dev, stride, count), got shape {rows.shape}")
        addrs, lens = [], []
        for addr, length, _dev, stride, count in rows.tolist():
            addrs.append(addr + stride * np.arange(count, dtype=np.int64))
            lens.append(np.full(count, length, dtype=np.int64))
        dlist = PreparedList(owner, np.concatenate(addrs) if addrs else np.zeros(0, np.int64),
                             np.concatenate(lens) if lens else np.zeros(0, np.int64))
        self._check_registered(dlist, mem_type)
        handle = next(self._ids)
        self._dlists[handle] = dlist
        return handle

    def _check_registered(self, dlist: PreparedList, mem_type: Optional[str]) -> None:
        ranges = self.fabric.agents[dlist.owner].registered
        if mem_type is not None:
            ranges = [r for r in ranges if r.mem_type == mem_type]
        if not ranges and len(dlist.addrs):
            self._refuse(f"agent {dlist.owner!r} has no registered {mem_type} memory")
        starts = np.array([r.start for r in ranges], dtype=np.int64)
        ends = np.array([r.end for r in ranges], dtype=np.int64)
        inside = (dlist.addrs[:, None] >= starts[None, :]) & (dlist.addrs[:, None] + dlist.lens[:, None] <= ends[None, :])
        outside = np.flatnonzero(~inside.any(axis=1))
        if outside.size:
            i = int(outside[0])
            self._refuse(f"descriptor {i} [{int(dlist.addrs[i]):#x}, +{int(dlist.lens[i])}) of agent {dlist.owner!r} "
                         f"lies outside its registered {mem_type} memory ({outside.size} such descriptors)")

    def release_dlist_handle(self, handle: int) -> None:
        self._dlists.pop(handle, None)

    # -- transfers --------------------------------------------------------------------
    def make_prepped_xfer(self, op: str, local_handle: int, local_ids: Any, remote_handle: int, remote_ids: Any,
                          notif_msg: bytes = b"", *args: Any, **kwargs: Any) -> int:
        if op not in ("READ", "WRITE"):
            self._refuse(f"unknown transfer op {op!r}")
        local, remote = self._dlists.get(local_handle), self._dlists.get(remote_handle)
        if local is None or remote is None:
            self._refuse(f"unknown prepared descriptor list handle (local {local_handle}, remote {remote_handle})")
        if local.owner != self.name or remote.owner == self.name:
            self._refuse("a transfer pairs a local list with a remote agent's list")
        lids, rids = np.asarray(local_ids, dtype=np.int64).ravel(), np.asarray(remote_ids, dtype=np.int64).ravel()
        if lids.size != rids.size:
            self._refuse(f"{lids.size} local descriptors paired with {rids.size} remote descriptors")
        for ids, dlist, side in ((lids, local, "local"), (rids, remote, "remote")):
            bad = ids[(ids < 0) | (ids >= dlist.addrs.size)]
            if bad.size:
                self._refuse(f"{side} descriptor id {int(bad[0])} outside a prepared list of {dlist.addrs.size}")
        mismatch = np.flatnonzero(local.lens[lids] != remote.lens[rids])
        if mismatch.size:
            i = int(mismatch[0])
            self._refuse(f"pair {i}: local descriptor {int(lids[i])} has {int(local.lens[lids[i]])} bytes, remote "
                         f"descriptor {int(rids[i])} has {int(remote.lens[rids[i]])}")
        handle = next(self._ids)
        self._xfers[handle] = Transfer(op, local, lids, remote, rids, bytes(notif_msg or b""))
        return handle

    def transfer(self, handle: int, notif_msg: Optional[bytes] = None) -> str:
        xfer = self._xfers.get(handle)
        if xfer is None:
            self._refuse(f"unknown transfer handle {handle}")
        self._check_registered(xfer.local, None)  # memory may have been deregistered since prep
        self._check_registered(xfer.remote, None)
        memory = self.fabric.memory
        pairs = zip(xfer.local.addrs[xfer.local_ids].tolist(), xfer.remote.addrs[xfer.remote_ids].tolist(),
                    xfer.local.lens[xfer.local_ids].tolist())
        for local_addr, remote_addr, length in pairs:
            src, dst = (remote_addr, local_addr) if xfer.op == "READ" else (local_addr, remote_addr)
            memory.view(dst, length).copy_(memory.view(src, length))
            xfer.nbytes += length
        xfer.state = "DONE"
        message = xfer.notif if notif_msg is None else bytes(notif_msg)
        if message:
            self.fabric.agents[xfer.remote.owner].deliver(self.name, message)
        return "DONE"

    def check_xfer_state(self, handle: int) -> str:
        xfer = self._xfers.get(handle)
        return "ERR" if xfer is None else xfer.state

    def get_xfer_telemetry(self, handle: int) -> Telemetry:
        xfer = self._xfers[handle]
        return Telemetry(totalBytes=xfer.nbytes, descCount=int(xfer.local_ids.size))

    def release_xfer_handle(self, handle: int) -> None:
        self._xfers.pop(handle, None)

    # -- notifications ----------------------------------------------------------------
    def deliver(self, sender: str, message: bytes) -> None:
        with self.fabric.lock:
            self.inbox.setdefault(sender, []).append(message)

    def send_notif(self, agent_name: str, notif_msg: bytes) -> None:
        if agent_name not in self.remotes:
            self._refuse(f"send_notif to {agent_name!r}, which was never added as a remote agent")
        self.fabric.agents[agent_name].deliver(self.name, bytes(notif_msg))

    def get_new_notifs(self) -> dict[str, list[bytes]]:
        with self.fabric.lock:
            notifs, self.inbox = self.inbox, {}
        return notifs
