"""The interface an implementation provides to kvconform, defined once.

An implementation is any object (usually returned by a zero-argument factory
named on ``--impl package.module:factory``) with a ``capabilities`` attribute
and the methods of each capability it claims.  Everything is passed as plain
Python values and ``torch.Tensor``\\ s, so implementations never import
kvconform.  Invariants whose capability is missing are reported as
"not implemented" rows instead of failing.

Two levels:

* **primitives** (``head_mapping``, ``layout``, ``allocator``, ``kv_copy``,
  ``direct_copy``, ``decode_handler``): the harness orchestrates a transfer
  from these pieces (``harness.engine``), pushing head slices from prefill to
  decode like SGLang / Mooncake do.
* **end to end** (``end_to_end``): the implementation moves a whole request's
  KV from the prefill pools into the decode pools its own way (e.g. decode
  ranks pulling head slices, as vLLM's NIXL connector does).

Conventions shared by every method:

* A rank's KV pool is two lists (K, V), one tensor per layer, each shaped
  ``[pool_tokens, heads_on_rank, head_dim]``; pool token ``t`` lives in page
  ``t // page_size``.  Layers may be strided views of shared, padded
  allocations (docs/domain.md#pool-layouts): address them through their strides.
  Prefill and decode page sizes may differ in ``move_request`` only
  (``prefill_page_size`` / ``decode_page_size``).
* A *page table* is a 1-D int64 tensor of page indices; token ``i`` of the
  list lives in pool slot ``page_table[i // page_size] * page_size + i % page_size``.
* A staging region is a 1-D ``torch.uint8`` tensor.  A writer's part of it is
  laid out ``[K then V][layer][token][head][dim]`` in the KV dtype, and writer
  parts follow each other in writer-slot order.
* Invalid topologies raise ``ValueError`` (with a message saying what to fix)
  before any byte moves.
* The harness passes positional-or-keyword parameters by position (an
  implementation may name them as it likes) and keyword-only parameters
  (``make_decode_handler``, ``move_request``) by keyword.

This module is the single source: :data:`CAPABILITY_TABLE` pairs each
capability with its Protocol, and everything else derives from the Protocols
-- the method lists (:data:`CAPABILITIES`, ...), the load-time signature check
(``harness/signatures.py``), the guard's return checks (``harness/returns.py``
reads the return annotations) and README's capability table
(``harness/docs.py``).
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Collection, Literal, Optional, Protocol, Sequence

import torch


@dataclass(frozen=True)
class Named:
    """``Annotated`` metadata: the names of a fixed-length integer tuple's items (for messages)."""

    names: tuple[str, ...]


#: The answers methods return.  The guard checks every return value against its method's annotation
#: (``harness/returns.py``), so these aliases are the one description of what comes back.
Span = Annotated[tuple[int, int], Named(("offset", "nbytes"))]
HeadSlice = Annotated[tuple[int, int, int], Named(("source_head_start", "head_count", "destination_head_start"))]
Placement = Annotated[tuple[int, int, int], Named(("alloc_id", "offset", "round"))]
WatermarkPosition = Annotated[tuple[int, int], Named(("round", "tail"))]
ChunkRegion = Annotated[tuple[int, int, int], Named(("offset", "round", "end"))]
#: Request states returned by ``DecodeHandler.poll``.
PollState = Literal["pending", "done", "failed"]
PENDING: PollState = "pending"
DONE: PollState = "done"
FAILED: PollState = "failed"
#: A rank's pool: per-layer K tensors and per-layer V tensors.
Pool = tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]]


class HeadMapping(Protocol):
    """Which heads each rank holds, and which prefill ranks write which heads to each decode rank."""

    def heads_of_rank(self, total_kv_heads: int, tp_size: int, rank: int) -> Sequence[int]:
        """Global KV heads held by ``rank`` of a TP group of ``tp_size``, in local order."""

    def writers_of_decode_rank(
        self, total_kv_heads: int, prefill_tp: int, decode_tp: int, decode_rank: int
    ) -> Sequence[int]:
        """Prefill TP ranks writing to ``decode_rank``, indexed by writer slot."""

    def head_slice(
        self, total_kv_heads: int, prefill_tp: int, decode_tp: int, prefill_rank: int, decode_rank: int
    ) -> HeadSlice:
        """``(source_head_start, head_count, destination_head_start)``, local head
        indices on the prefill and decode rank, for the pair's transfer."""


class Layout(Protocol):
    """Where each writer's part of a chunk's staging region goes, in bytes."""

    def staging_layout(
        self,
        num_writers: int,
        num_tokens: int,
        heads_per_writer: int,
        layers_per_writer: int,
        head_dim: int,
        element_size: int,
    ) -> Sequence[Span]:
        """``(offset, nbytes)`` of each writer's part of one chunk's staging region."""


class Allocator(Protocol):
    """A ring staging allocator over ``capacity`` bytes."""

    def assign(self, nbytes: int) -> Optional[Placement]:
        """Place ``nbytes``; return ``(alloc_id, offset, round)``, or ``None`` to
        refuse explicitly when ``nbytes`` exceeds the capacity.  Never waits."""

    def free(self, alloc_id: int) -> None:
        """Release an allocation; unknown or already-freed ids are ignored."""

    def watermark(self) -> WatermarkPosition:
        """``(round, tail)``: position of the oldest live allocation, or the
        current head when nothing is live."""


class AllocatorFactory(Protocol):
    """Ring staging allocators, and the rule a writer follows to honour the watermark."""

    def make_allocator(self, capacity: int) -> Allocator:
        """A fresh, empty ring allocator of ``capacity`` bytes."""

    def writer_may_write(self, alloc_round: int, alloc_end: int, watermark: WatermarkPosition) -> bool:
        """Whether a writer may write allocation ``(round, end)`` given the last
        watermark it received.  A function of its arguments: the suite asks each
        distinct question once."""


class KvCopy(Protocol):
    """Gather a head slice from a paged pool into staging; scatter a whole chunk from staging into a paged pool."""

    def gather(
        self,
        k_layers: Sequence[torch.Tensor],
        v_layers: Sequence[torch.Tensor],
        page_table: torch.Tensor,
        page_size: int,
        num_tokens: int,
        head_start: int,
        head_count: int,
        out: torch.Tensor,
    ) -> None:
        """Prefill side: copy heads ``[head_start, head_start+head_count)`` of the
        first ``num_tokens`` tokens of ``page_table``, every layer, K then V, into
        the uint8 tensor ``out`` (exactly one writer's bytes).  Bit-exact."""

    def scatter(
        self,
        staging: torch.Tensor,
        writer_destinations: Sequence[tuple[int, int]],
        heads_per_writer: int,
        layers_per_writer: int,
        k_layers: Sequence[torch.Tensor],
        v_layers: Sequence[torch.Tensor],
        page_table: torch.Tensor,
        page_size: int,
        num_tokens: int,
    ) -> None:
        """Decode side: copy a whole chunk's staging region (all writers) into the
        pool.  Writer ``w`` carries ``heads_per_writer`` heads for
        ``layers_per_writer`` layers; ``writer_destinations[w]`` is its
        ``(destination_head_start, destination_layer_start)`` on this rank.
        Bit-exact; touches nothing but those heads of those tokens."""


class DirectCopy(Protocol):
    """The non-staged path: copy a head slice straight from a prefill pool into a decode pool."""

    def direct_copy(
        self,
        src_k_layers: Sequence[torch.Tensor],
        src_v_layers: Sequence[torch.Tensor],
        src_page_table: torch.Tensor,
        src_head_start: int,
        dst_k_layers: Sequence[torch.Tensor],
        dst_v_layers: Sequence[torch.Tensor],
        dst_page_table: torch.Tensor,
        dst_head_start: int,
        head_count: int,
        page_size: int,
        num_tokens: int,
    ) -> None:
        """Copy a head slice of ``num_tokens`` tokens straight from a prefill pool
        to a decode pool (same layer count), for receivers without staging."""


class DecodeHandler(Protocol):
    """One decode rank's staging handler and request lifecycle."""

    def register(
        self, request_id: int, receiver: Any, page_table: torch.Tensor, prefix_len: int, num_tokens: int
    ) -> bool:
        """Register a request before telling prefill where to write.  Returns
        whether it takes the staged path (``receiver.require_staging`` present
        and truthy).  Must accept *any* receiver object.  ``page_table`` covers
        all ``num_tokens`` tokens; the first ``prefix_len`` are already cached."""

    def allocate_chunk(self, request_id: int, chunk_index: int, nbytes: int) -> Optional[ChunkRegion]:
        """Staging allocation for one chunk: ``(offset, round, end)``; the same
        answer for repeated asks; ``None`` when refused (the request fails)."""

    def chunk_arrived(
        self, request_id: int, chunk_index: int, writer_slot: int, page_start: int, num_pages: int, num_tokens: int
    ) -> None:
        """A writer finished writing its part of a chunk.  ``page_start`` counts
        pages of the suffix after the prefix.  Duplicate, late or unknown
        messages are ignored safely."""

    def prefill_done(self, request_id: int) -> None:
        """The prefill side reported that every chunk was sent."""

    def poll(self, request_id: int) -> PollState:
        """``"pending"``, ``"done"`` or ``"failed"``; runs pending scatters and
        timeout checks."""

    def fail(self, request_id: int, reason: str) -> None:
        """Mark a request failed (abort)."""

    def release(self, request_id: int) -> None:
        """Forget a request, freeing every allocation it holds."""


class ExplainsFailures(Protocol):
    """Optional extra of a decode handler: called, when present, to check that a failure says why."""

    def failure_reason(self, request_id: int) -> str:
        """Why request ``request_id`` failed, in words (``""`` when it did not)."""


class DecodeHandlerFactory(Protocol):
    """One decode rank's staging handler, which drives each request's lifecycle."""

    def make_decode_handler(
        self,
        *,
        staging: torch.Tensor,
        allocator: Allocator,
        k_layers: Sequence[torch.Tensor],
        v_layers: Sequence[torch.Tensor],
        page_size: int,
        num_writers: int,
        writer_destinations: Sequence[tuple[int, int]],
        heads_per_writer: int,
        layers_per_writer: int,
        timeout_s: float,
        clock: Callable[[], float],
    ) -> DecodeHandler:
        """A handler for one decode rank whose staging ring is ``staging`` (uint8)
        managed by ``allocator``."""


class EndToEnd(Protocol):
    """Move a request's KV from prefill to decode pools your own way (e.g. decode ranks pulling head slices)."""

    def move_request(
        self,
        *,
        total_kv_heads: int,
        prefill_tp: int,
        decode_tp: int,
        prefill_pp: int,
        decode_pp: int,
        prefill_page_size: int,
        decode_page_size: int,
        prefill_pools: Sequence[Pool],
        prefill_page_tables: Sequence[torch.Tensor],
        decode_pools: Sequence[Pool],
        decode_page_tables: Sequence[torch.Tensor],
        prefix_len: int,
        num_tokens: int,
        chunk_pages: int,
        staged: bool,
    ) -> None:
        """Move tokens ``[prefix_len, num_tokens)`` of one request.  Pools are
        indexed ``pp_stage * tp + tp_rank``; a rank's pool holds its PP stage's
        layers.  Page tables cover the whole request on each rank, each side in
        its own page size (one may be a whole multiple of the other).  The
        decode side already holds its own KV of the first ``prefix_len`` tokens:
        the whole decode pages among them are prefix hits and must not be
        written; a partially cached last page is moved again (it ends holding
        the prefill's KV).  ``chunk_pages`` counts decode pages.  (Interface
        1.1: 1.0 had one ``page_size`` and refused a prefix that was not whole
        pages.)"""


class Implementation(HeadMapping, Layout, AllocatorFactory, KvCopy, DirectCopy, DecodeHandlerFactory, EndToEnd,
                     Protocol):
    """An implementation as conformance tests see it.

    A real one provides only the methods of the capabilities it names in
    ``capabilities``; a test calls only methods of the capabilities in its
    marker's ``requires`` (the others are reported "not implemented").
    """

    @property
    def capabilities(self) -> Collection[str]:
        """Capability names, each the name of a :class:`Capability` in :data:`CAPABILITY_TABLE`."""


# -- what derives from the Protocols ----------------------------------------------------------------
@dataclass(frozen=True)
class Capability:
    """One capability: its Protocol (the methods and their signatures) and where its faults are reported."""

    name: str
    protocol: type  #: declares the methods; its docstring's first line says what the capability is
    level: str  #: "primitives" (the harness orchestrates) or "end to end"
    invariant: str  #: invariant a raising, hanging or garbage-returning call of its methods is reported on

    @property
    def summary(self) -> str:
        return (self.protocol.__doc__ or "").strip().splitlines()[0]

    @property
    def methods(self) -> tuple[str, ...]:
        return protocol_methods(self.protocol)

    @property
    def products(self) -> dict[str, type]:
        """Factory method -> Protocol of the object it returns (``make_allocator`` -> :class:`Allocator`)."""
        made = {}
        for method in self.methods:
            returned = inspect.signature(getattr(self.protocol, method), eval_str=True).return_annotation
            if getattr(returned, "_is_protocol", False):
                made[method] = returned
        return made


def protocol_methods(protocol: type) -> tuple[str, ...]:
    """The public methods ``protocol`` declares itself, in the order written."""
    return tuple(name for name, value in vars(protocol).items() if inspect.isfunction(value) and not name.startswith("_"))


@functools.cache
def documented_signature(protocol: type, method: str) -> inspect.Signature:
    """How the harness calls ``method``: its Protocol signature without ``self``, annotations resolved."""
    signature = inspect.signature(getattr(protocol, method), eval_str=True)
    return signature.replace(parameters=list(signature.parameters.values())[1:])


def documented_arguments(method: str, args: tuple, kwargs: Optional[dict] = None) -> inspect.BoundArguments:
    """``args``/``kwargs`` of a call of interface method ``method`` bound to its documented parameter names.

    For wrappers that read or change one argument without re-typing the signature:
    ``call = documented_arguments("scatter", args)``, read or edit
    ``call.arguments["page_table"]``, then call on with ``*call.args, **call.kwargs``.
    """
    _, protocol = method_owners()[method]
    return documented_signature(protocol, method).bind(*args, **(kwargs or {}))


@functools.cache
def method_owners() -> dict[str, tuple[Capability, type]]:
    """Every interface method -> the capability it belongs to and the Protocol declaring it.

    A capability owns its Protocol's methods and those of the objects its
    factories make (with their optional extras): ``assign`` belongs to
    ``allocator`` through :class:`Allocator`.  Names are unique across Protocols,
    so a method name alone says what is called.
    """
    owners: dict[str, tuple[Capability, type]] = {}
    for cap in CAPABILITY_TABLE:
        made = [p for product in cap.products.values() for p in (product, OPTIONAL_EXTRAS.get(product)) if p]
        for protocol in (cap.protocol, *made):
            for method in protocol_methods(protocol):
                if method in owners:
                    raise TypeError(f"interface method {method!r} is declared by {owners[method][1].__name__} "
                                    f"and {protocol.__name__}: method names must be unique across Protocols")
                owners[method] = (cap, protocol)
    return owners


CAPABILITY_TABLE: tuple[Capability, ...] = (
    Capability("head_mapping", HeadMapping, "primitives", "head_coverage"),
    Capability("layout", Layout, "primitives", "layout"),
    Capability("allocator", AllocatorFactory, "primitives", "allocator"),
    Capability("kv_copy", KvCopy, "primitives", "round_trip"),
    Capability("direct_copy", DirectCopy, "primitives", "path_equivalence"),
    Capability("decode_handler", DecodeHandlerFactory, "primitives", "lifecycle"),
    Capability("end_to_end", EndToEnd, "end to end", "round_trip"),
)
BY_NAME: dict[str, Capability] = {cap.name: cap for cap in CAPABILITY_TABLE}
#: Optional extras of a made object's Protocol: methods called only when present.
OPTIONAL_EXTRAS: dict[type, type] = {DecodeHandler: ExplainsFailures}

#: Capability name -> methods an implementation claiming it must provide.
CAPABILITIES: dict[str, tuple[str, ...]] = {cap.name: cap.methods for cap in CAPABILITY_TABLE}
#: Methods every allocator object must have.
ALLOCATOR_METHODS = protocol_methods(Allocator)
#: Methods every decode handler object must have.
DECODE_HANDLER_METHODS = protocol_methods(DecodeHandler)
