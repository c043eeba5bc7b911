"""One ``TransferCase`` moved into its decode pools: through the rank (handler), or through the pieces.

:func:`stage_case` drives decode pool ``index`` of a ``World`` through a :class:`~harness.engine.rank.Rank`
(the same driver the multi-request suites use, with one request).  The other movers use no handler:
gather/transport/scatter (``kv_copy``), the non-staged ``direct_copy``, and ``move_request``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from harness import case_classes, oracles
from harness.engine.buffers import Guarded
from harness.engine.rank import Rank
from harness.engine.shapes import RankShape, RequestPlan
from harness.engine.writers import chunk_layout, gather, has, writer_plans
from harness.interface import DONE
from harness.oracles import InvariantViolation
from harness.world import World


class StagedReceiver:
    """A receiver whose backend stages KV (``require_staging = True``)."""

    require_staging = True

    def __repr__(self) -> str:
        return "StagedReceiver()"


def one_page_size(case) -> int:
    """The page size of a case moved by the primitives, which take one page size for both sides."""
    kv = case.kv
    if kv.decode_page_size != kv.page_size:
        raise ValueError(f"prefill pages of {kv.page_size} and decode pages of {kv.decode_page_size} tokens: only "
                         "end_to_end moves take two page sizes (draw such cases with page_size_pairs for them only)")
    return kv.page_size


def case_shape(world: World, index: int) -> RankShape:
    one_page_size(world.case)
    return RankShape.of_case(world.case, index)


def chunk_count(case) -> int:
    req, kv = case.request, case.kv
    return len(oracles.chunk_grid(req.prefix_len, req.num_tokens, kv.page_size, req.chunk_pages))


def chunk_bytes_for(impl: Any, world: World, tokens: int, index: int = 0) -> int:
    """Staging bytes of a chunk of ``tokens`` tokens for decode pool ``index``."""
    shape = case_shape(world, index)
    return sum(n for _, n in chunk_layout(impl, shape, writer_plans(impl, shape, world), tokens, world))


def ring_bytes_for(impl: Any, world: World, slack: int, index: int = 0) -> int:
    """A ring that holds the world's largest chunk ``slack`` times (1 forces a wrap every chunk)."""
    req, kv = world.case.request, world.case.kv
    grid = oracles.chunk_grid(req.prefix_len, req.num_tokens, kv.page_size, req.chunk_pages)
    return max(chunk_bytes_for(impl, world, tokens, index) for _, _, tokens in grid) * slack


def case_rank(impl: Any, world: World, index: int, ring_bytes: int, **kwargs: Any) -> Rank:
    """The rank of decode pool ``index`` of ``world``."""
    return Rank(impl, case_shape(world, index), world.device, world=world, ring_bytes=ring_bytes, **kwargs)


def stage_case(rank: Rank, receiver: Any = None, order: Optional[Sequence[tuple[int, int]]] = None,
               between: Callable[[int], None] = lambda step: None) -> int:
    """Move the world's request into the rank's pool through the handler; returns its request id.

    ``order`` lists ``(chunk, writer slot)`` arrivals (duplicates allowed); by default chunks go one after
    another, slots in order.  ``between(step)`` runs after each arrival (fault injection).  Checked on the
    way: each chunk stays unscattered until its last distinct writer arrived; the request ends done; late
    duplicates change nothing; release leaves nothing held; every pool row is right.
    """
    world = rank.require_world()
    receiver = StagedReceiver() if receiver is None else receiver
    rid = rank.register(RequestPlan.of_spec(world.case.request, world.case.seed), receiver, from_world=True)
    t = rank.requests[rid]
    if t.staged:
        slots = range(rank.num_writers)
        order = list(order) if order is not None else [(c, s) for c in range(len(t.grid)) for s in slots]
        for step, (chunk, slot) in enumerate(order):
            if chunk not in t.placed and rank.allocate(rid, chunk) is None:
                raise InvariantViolation(f"chunk {chunk} of request {rid} refused by a {rank.capacity}-byte ring")
            if slot not in t.written[chunk]:
                rank.wait_writable(t.placed[chunk])
                rank.write(rid, chunk, slot)
            rank.arrive(rid, chunk, slot)
            if len(t.arrived[chunk]) < rank.num_writers:
                rank.check_not_scattered(rid, chunk)
            between(step)
    rank.prefill_done(rid)
    rank.expect(rid, DONE)
    if t.staged:  # late duplicates after completion, and after release, must change nothing
        case_classes.record("messages", "late")
        rank.handler.chunk_arrived(rid, 0, 0, *t.grid[0])
    rank.release(rid)
    if t.staged:
        rank.handler.chunk_arrived(rid, 0, 0, *t.grid[0])
        rank.handler.poll(rid)
    rank.check_all()
    return rid


# -- no handler: the pieces, or move_request --------------------------------------------------
def move_with_kv_copy(impl: Any, world: World) -> None:
    """Gather every writer, write its bytes into a guarded region, scatter the region."""
    req = world.case.request
    page_size = one_page_size(world.case)
    first_page = req.prefix_len // page_size
    for index, pool in enumerate(world.decode):
        shape = case_shape(world, index)
        plans = writer_plans(impl, shape, world)
        for geometry in oracles.chunk_grid(req.prefix_len, req.num_tokens, page_size, req.chunk_pages):
            page_start, _, tokens = geometry
            layout = chunk_layout(impl, shape, plans, tokens, world)
            region = Guarded(sum(n for _, n in layout), world.device)
            for plan, (offset, nbytes) in zip(plans, layout):
                buf = gather(impl, world.prefill[plan.prefill_index], plan, page_size, req.prefix_len, geometry,
                             nbytes, world.device, reuse=True)
                region.inner[offset:offset + nbytes].copy_(buf.inner)
            impl.scatter(region.inner, [(p.destination_start, p.layer_start) for p in plans], plans[0].count,
                         shape.layers_per_writer, pool.k, pool.v, pool.page_table[first_page + page_start:],
                         page_size, tokens)
            region.check_margins("scatter")


def move_with_direct_copy(impl: Any, world: World) -> None:
    """Non-staged path: every writer's head slice copied straight into the decode pool."""
    req = world.case.request
    page_size = one_page_size(world.case)
    first_page = req.prefix_len // page_size
    for index, pool in enumerate(world.decode):
        shape = case_shape(world, index)
        layers = shape.layers_per_writer
        for plan in writer_plans(impl, shape, world):
            src = world.prefill[plan.prefill_index]
            span = slice(plan.layer_start, plan.layer_start + layers)
            impl.direct_copy(src.k, src.v, src.page_table[first_page:], plan.source_start,
                             pool.k[span], pool.v[span], pool.page_table[first_page:], plan.destination_start,
                             plan.count, page_size, req.num_tokens - req.prefix_len)


def move_end_to_end(impl: Any, world: World, staged: bool = True) -> None:
    """``move_request`` with each side's page tables in its own page size."""
    topo, req, kv = world.case.topology, world.case.request, world.case.kv
    impl.move_request(
        total_kv_heads=topo.total_kv_heads, prefill_tp=topo.prefill_tp, decode_tp=topo.decode_tp,
        prefill_pp=topo.prefill_pp, decode_pp=topo.decode_pp, prefill_page_size=kv.prefill_page_size,
        decode_page_size=kv.decode_page_size,
        prefill_pools=[(p.k, p.v) for p in world.prefill], prefill_page_tables=[p.page_table for p in world.prefill],
        decode_pools=[(p.k, p.v) for p in world.decode], decode_page_tables=[p.page_table for p in world.decode],
        prefix_len=req.prefix_len, num_tokens=req.num_tokens, chunk_pages=req.chunk_pages, staged=staged,
    )


__all__ = ["StagedReceiver", "case_rank", "chunk_bytes_for", "chunk_count", "has", "move_end_to_end", "move_with_direct_copy",
           "move_with_kv_copy", "one_page_size", "ring_bytes_for", "stage_case"]
