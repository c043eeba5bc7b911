"""A decode rank's paged KV pool, each request's ground truth, and the pool oracles.

Checked at any step: every row of a request is either untouched (canary) or that token's ground truth; a
request's cached prefix never changes; a request reported done holds its whole ground truth; a chunk stays
unscattered until every writer slot arrived; rows of no request keep their canary.  A wrong row is
explained: canary, the scribble of a freed region, a partial write's garbage, or whose ground truth it is.
"""

from __future__ import annotations

import random
from typing import Optional

import torch

from harness.engine.buffers import GARBAGE_BYTE, MARKERS, PROBE_BYTE, SCRIBBLE_BYTE, CanaryFence
from harness.engine.model import Tracked
from harness.engine.shapes import RankShape, RequestPlan
from harness.interface import DONE
from harness.oracles import ExpectedBytes, InvariantViolation
from harness.world import CANARY_BYTE, World, int_view

SPARE_PAGES = 2


class DecodePool:
    """K and V layers ``[pool rows, heads, head_dim]`` of one decode rank and its free pages.

    Its own fenced layers (``pages`` of them, shuffled so page tables fragment; laid out as ``shape.layout``),
    or a :class:`World`'s decode pool of that rank (then the pages outside the world's request are free, and
    the world's fence guards its allocations).
    """

    def __init__(self, shape: RankShape, device: torch.device, fence: CanaryFence, pages: int,
                 world: Optional[World] = None) -> None:
        self.shape, self.device = shape, device
        self.world_fence = world.fence if world is not None else None
        if world is not None:
            pool = world.decode[shape.decode_index]
            self.k, self.v = pool.k, pool.v
            self.pages = world.case.request.decode_pool_pages
            taken = set(world.case.request.decode_page_table)
            self.free_pages = [p for p in range(self.pages) if p not in taken][::-1]
        else:
            self.pages = pages
            self.free_pages = list(range(pages))
            random.Random(pages).shuffle(self.free_pages)
            self.k, self.v = fence.pool(shape.layout, shape.layers, pages * shape.page_size, len(shape.heads),
                                        shape.kv.head_dim, shape.kv.dtype, "decode pool")

    def page_table(self, plan: RequestPlan) -> torch.Tensor:
        """The plan's page table, or fresh pages from the free list."""
        if plan.page_table is not None:
            return torch.tensor(plan.page_table, dtype=torch.int64, device=self.device)
        pages = -(-plan.num_tokens // self.shape.page_size)
        if pages > len(self.free_pages):
            raise ValueError(f"the pool has {len(self.free_pages)} free pages left, request {plan} needs {pages}: "
                             f"size the rank with a larger max_requests or max_tokens")
        return torch.tensor([self.free_pages.pop() for _ in range(pages)], dtype=torch.int64, device=self.device)

    def fill(self, t: Tracked, first: int, last: int) -> None:
        """Ground truth of tokens ``[first, last)`` into the request's rows (as the plain backend would)."""
        if last <= first:
            return
        slots = t.slots[first:last]
        for layer in range(len(self.k)):
            int_view(self.k[layer])[slots] = t.truth[0, layer, first:last]
            int_view(self.v[layer])[slots] = t.truth[1, layer, first:last]

    def stack(self) -> torch.Tensor:
        return torch.stack([torch.stack([int_view(x) for x in self.k]), torch.stack([int_view(x) for x in self.v])])

    # -- oracles ---------------------------------------------------------------------------
    def check(self, requests: list[Tracked], everyone: list[Tracked], num_writers: int, outside: bool) -> None:
        """The world's fence (a pool of its own is on the rank's), rows of ``requests``, then (``outside``) rows
        of no request among ``everyone``."""
        if self.world_fence is not None:
            self.world_fence.check()
        pool = self.stack()
        for t in requests:
            self._check_rows(t, pool, num_writers, everyone)
        if outside:
            mask = torch.zeros(pool.shape[2], dtype=torch.bool, device=self.device)
            for t in everyone:
                mask[t.slots] = True
            stray = pool.view(torch.uint8)[:, :, ~mask] != CANARY_BYTE
            if bool(stray.any()):
                kv, layer, row = (int(x) for x in stray.nonzero()[0][:3])
                slot = int((~mask).nonzero()[row])
                raise InvariantViolation(f"pool slot {slot} (page {slot // self.shape.page_size}) belongs to no "
                                         f"request but {'KV'[kv]} layer {self.shape.layers[layer]} was written"
                                         ).expecting(*self.expected_canary(~mask))

    def check_chunk_untouched(self, t: Tracked, chunk: int, num_writers: int) -> None:
        """Before the last distinct writer arrives, the chunk's rows hold no suffix data (K layers suffice)."""
        page_start, _, tokens = t.grid[chunk]
        first = t.plan.prefix_len + page_start * self.shape.page_size
        slots = t.slots[first:first + tokens]
        for layer in self.k:
            if bool((layer[slots].view(torch.uint8) != CANARY_BYTE).any()):
                raise InvariantViolation(f"request {t.rid} chunk {chunk} was scattered after only writer slots "
                                         f"{sorted(t.arrived[chunk])} of {num_writers} arrived"
                                         ).expecting(*self.expected_canary(self._rows(slots)))

    def _check_rows(self, t: Tracked, pool: torch.Tensor, num_writers: int, everyone: list[Tracked]) -> None:
        got = pool.index_select(2, t.slots)
        is_truth = (got == t.truth).movedim(2, 0).flatten(1).all(1)
        is_canary = (got.view(torch.uint8) == CANARY_BYTE).movedim(2, 0).flatten(1).all(1)
        for token in (~is_truth).nonzero().flatten().tolist():
            if token < t.plan.prefix_len:
                problem = "its cached prefix changed"
            elif t.observed == DONE:
                problem = "the request was reported done"
            elif not bool(is_canary[token]):
                problem = "a pool row is either untouched or ground truth"
            else:
                continue  # untouched suffix row of a request not done
            raise InvariantViolation(f"request {t.rid} token {token}: {self._explain(t, got, token, everyone)}; "
                                     f"expected ground truth: {problem}").expecting(*self.expected_truth(t, token))
        for chunk, (page_start, _, tokens) in enumerate(t.grid if t.staged else ()):
            if len(t.arrived[chunk]) < num_writers and t.observed != DONE:
                first = t.plan.prefix_len + page_start * self.shape.page_size
                touched = (~is_canary[first:first + tokens]).nonzero().flatten().tolist()
                if touched:
                    raise InvariantViolation(
                        f"request {t.rid} chunk {chunk} was scattered although only writer slots "
                        f"{sorted(t.arrived[chunk])} of {num_writers} arrived (token {first + touched[0]})"
                    ).expecting(*self.expected_canary(self._rows(t.slots[first:first + tokens])))

    # -- expected values (carried by a violation, for the standalone repro) -----------------
    def expected_canary(self, rows: torch.Tensor) -> list[ExpectedBytes]:
        """Every layer must hold the canary at ``rows`` (a bool mask over pool rows)."""
        return [ExpectedBytes(x, torch.full_like(x.view(torch.uint8), CANARY_BYTE).view(x.dtype), rows)
                for x in (*self.k, *self.v)]

    def expected_truth(self, t: Tracked, token: int) -> list[ExpectedBytes]:
        """Every layer must hold request ``t``'s ground truth at the pool row of ``token``."""
        slot = t.slots[token:token + 1]
        expected = []
        for kv, layers in enumerate((self.k, self.v)):
            for layer, x in enumerate(layers):
                want = x.clone()
                int_view(want)[slot] = t.truth[kv, layer, token:token + 1]
                expected.append(ExpectedBytes(x, want, self._rows(slot)))
        return expected

    def _rows(self, slots: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros(self.k[0].shape[0], dtype=torch.bool, device=self.device)
        mask[slots] = True
        return mask

    def _explain(self, t: Tracked, got: torch.Tensor, token: int, everyone: list[Tracked]) -> str:
        """Where the wrong row came from: canary, scribble of a freed region, garbage, or whose ground truth."""
        kv, layer, head = (got[:, :, token] != t.truth[:, :, token]).nonzero()[0].tolist()[:3]
        row = got[kv, layer, token, head]
        as_bytes = row.view(torch.uint8)
        where = (f"{'KV'[kv]} layer {self.shape.layers[layer]} head {self.shape.heads[head]} holds "
                 f"{as_bytes[:8].tolist()}")
        for byte, meaning in ((CANARY_BYTE, "never written (canary)"),
                              (SCRIBBLE_BYTE, "the scribble of a freed staging region: scattered after its region was freed"),
                              (GARBAGE_BYTE, "a partial write's garbage: a region scattered before its writers finished"),
                              (PROBE_BYTE, "the next user's bytes in memory freed while a side-stream kernel still read it")):
            if bool((as_bytes == byte).all()):
                return f"{where} = {meaning}"
        for other in everyone:
            match = (other.truth[kv, layer, :, head] == row).all(-1).nonzero()
            if match.numel():
                return f"{where} = ground truth of request {other.rid} token {int(match[0])}"
        return where


def seeded_truth(shape: RankShape, plan: RequestPlan, device: torch.device) -> torch.Tensor:
    """``[K/V, layer, token, head, dim]`` random bits of the rank's heads and layers; no byte is a marker."""
    gen = torch.Generator().manual_seed(plan.seed)
    bits = 8 * shape.element_size
    values = torch.randint(-(2 ** (bits - 1)), 2 ** (bits - 1),
                           (2, len(shape.layers), plan.num_tokens, len(shape.heads), shape.kv.head_dim),
                           generator=gen, dtype=torch.int64)
    values = values.to(int_view(torch.empty(0, dtype=shape.kv.dtype)).dtype)
    as_bytes = values.view(torch.uint8)
    for marker in MARKERS:
        as_bytes[as_bytes == marker] = 0x11
    return values.to(device)


def world_truth(world: World, shape: RankShape) -> torch.Tensor:
    """What the world's decode rank must hold (``World.decode_truth``: its own cached prefix, then the moved KV),
    restricted to the rank's heads and layers, as ``seeded_truth`` lays it out."""
    layers, heads = shape.layers, torch.tensor(shape.heads, device=world.device)
    parts = [int_view(t[layers.start:layers.stop].index_select(2, heads)) for t in world.decode_truth()]
    return torch.stack(parts)
