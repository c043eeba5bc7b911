"""A simulated cluster's memory: ground-truth KV, per-rank paged pools, canaries.

``World.build(case, device)`` materialises one request as it stands when
prefill finished: the full KV of the request (all heads, all layers), each
prefill rank's pool holding its heads and layers of it at the request's
pages, and each decode rank's pool holding only the cached prefix.  Every
other pool slot carries a canary pattern, so a stray write shows.  Pools are
laid out as the case's ``layout`` says (views of shared, padded allocations:
``strategies.pool_layout``); the gaps between views and the margins around each
allocation are canary too, checked by the world's ``fence``.
``expected_decode`` gives what each decode pool must hold afterwards,
computed from the ground truth alone, token by token (each side addresses
its pool in its own page size).

The decode's cached prefix is its *own* KV of those tokens (computed there by
an earlier request), whose bits need not equal the prefill's: the world holds
it as the ground truth with the lowest bit of every element flipped.  Its
whole decode pages are prefix hits (shared with the requests that hit them):
they must keep the decode's copy, so a move that rewrites one shows even when
it writes the prefill's right values.  A partially cached last page is no hit:
it is re-read, and ends holding the prefill's KV (``decode_truth``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from harness.engine.buffers import CANARY_BYTE, CanaryFence
from harness.oracles import ExpectedBytes, InvariantViolation, owned_heads
from strategies.cases import TransferCase

_INT = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def int_view(t: torch.Tensor) -> torch.Tensor:
    return t.view(_INT[t.element_size()])


def canary_like(t: torch.Tensor) -> torch.Tensor:
    """A tensor of ``t``'s shape and dtype whose every byte is the canary."""
    return torch.full(t.shape[:-1] + (t.shape[-1] * t.element_size(),), CANARY_BYTE, dtype=torch.uint8,
                      device=t.device).view(t.dtype)


def decode_view(truth: torch.Tensor, own_tokens: int) -> torch.Tensor:
    """``[layers, tokens, heads, dim]`` KV with the decode's own copy of tokens ``[0, own_tokens)`` (the ground
    truth with bit 0 of every element flipped) and the prefill's after."""
    own = truth.clone()
    int_view(own)[:, :own_tokens] ^= 1
    return own


def slots_of(page_table: torch.Tensor, page_size: int, num_tokens: int) -> torch.Tensor:
    """Pool slots of tokens ``0..num_tokens-1`` of a page table."""
    token = torch.arange(num_tokens, device=page_table.device)
    return page_table[token // page_size] * page_size + token % page_size


@dataclass
class RankPool:
    """One rank's paged KV pool (its heads, its PP stage's layers)."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    heads: list[int]
    layers: range
    page_table: torch.Tensor
    page_size: int  #: tokens per page of ``page_table`` (each side has its own)

    def clone(self) -> "RankPool":
        return RankPool([t.clone() for t in self.k], [t.clone() for t in self.v], self.heads, self.layers,
                        self.page_table, self.page_size)


def _truth(case, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``[layers, tokens, heads, dim]`` K and V; random bits (NaN payloads and all) or finite values."""
    kv, req, topo = case.kv, case.request, case.topology
    shape = (kv.num_layers, req.num_tokens, topo.total_kv_heads, kv.head_dim)
    gen = torch.Generator().manual_seed(case.seed)
    esize = torch.empty((), dtype=kv.dtype).element_size()
    out = []
    for _ in range(2):
        if case.nan_payloads:
            bits = torch.randint(-(2 ** (8 * esize - 1)), 2 ** (8 * esize - 1), shape, generator=gen, dtype=torch.int64)
            out.append(bits.to(_INT[esize]).view(kv.dtype).to(device))
        else:
            out.append((torch.randn(shape, generator=gen) * 4).to(kv.dtype).to(device))
    return out[0], out[1]


@dataclass
class World:
    case: TransferCase
    device: torch.device
    truth_k: torch.Tensor  # what prefill computed: the KV that moves
    truth_v: torch.Tensor
    prefill: list[RankPool]  # index pp_stage * prefill_tp + tp_rank
    decode: list[RankPool]   # index pp_stage * decode_tp + tp_rank
    fence: CanaryFence       # every pool's allocations: margins and the gaps of its layout
    #: What each implementation answered about this case (head mapping, staging layout), asked once:
    #: ``id(impl) -> (impl, {question: answer})`` (harness.engine.writers)
    answers: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def build(cls, case, device: str | torch.device = "cpu") -> "World":
        device = torch.device(device)
        truth_k, truth_v = _truth(case, device)
        topo, req, kv = case.topology, case.request, case.kv
        fence = CanaryFence(device)
        prefill = _pools(case, fence, "prefill", topo.prefill_tp, topo.prefill_pp, req.prefill_page_table,
                         req.prefill_pool_pages, kv.prefill_page_size)
        decode = _pools(case, fence, "decode", topo.decode_tp, topo.decode_pp, req.decode_page_table,
                        req.decode_pool_pages, kv.decode_page_size)
        world = cls(case, device, truth_k, truth_v, prefill, decode, fence)
        for pool in prefill:
            world._fill(pool, 0, req.num_tokens, (truth_k, truth_v))
        own_prefix = (decode_view(truth_k, req.prefix_len), decode_view(truth_v, req.prefix_len))
        for pool in decode:
            world._fill(pool, 0, req.prefix_len, own_prefix)
        return world

    def decode_truth(self) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V as every decode rank must end up holding them: its own copy on its prefix-hit pages (whole
        decode pages of the cached prefix), the prefill's KV on every other token (a partial page re-read)."""
        hits = self.cached_pages() * self.case.kv.decode_page_size
        return decode_view(self.truth_k, hits), decode_view(self.truth_v, hits)

    def _fill(self, pool: RankPool, first: int, last: int, truth: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Write tokens ``[first, last)`` of ``truth`` (K, V) into a pool's pages."""
        slots = slots_of(pool.page_table, pool.page_size, last)[first:]
        heads = torch.tensor(pool.heads, device=self.device)
        for local, layer in enumerate(pool.layers):
            for dst, values in zip((pool.k, pool.v), truth):
                int_view(dst[local])[slots] = int_view(values[layer, first:last][:, heads])

    def expected_decode(self, index: int) -> RankPool:
        """What decode pool ``index`` must hold once the request has moved, token by token in its own pages:
        its own copy of the cached prefix (untouched) and the prefill's ground truth after it."""
        pool = self.decode[index]
        expected = RankPool([canary_like(t) for t in pool.k], [canary_like(t) for t in pool.v],
                            pool.heads, pool.layers, pool.page_table, pool.page_size)
        self._fill(expected, 0, self.case.request.num_tokens, self.decode_truth())
        return expected

    def cached_pages(self) -> int:
        """Decode pages wholly inside the cached prefix: prefix hits a move must leave untouched."""
        return self.case.request.prefix_len // self.case.kv.decode_page_size

    def snapshot(self) -> tuple[list[RankPool], list[RankPool]]:
        return [p.clone() for p in self.prefill], [p.clone() for p in self.decode]

    def restore(self, snapshot: tuple[list[RankPool], list[RankPool]]) -> None:
        """Put every pool layer back as ``snapshot`` (from :meth:`snapshot`) holds it, in place: the same tensors
        move again (under process isolation they crossed once already, a fresh world would cross anew)."""
        for saved, pools in zip(snapshot, (self.prefill, self.decode)):
            for before, pool in zip(saved, pools):
                for src, dst in zip((*before.k, *before.v), (*pool.k, *pool.v)):
                    dst.copy_(src)

    # -- comparisons with readable diagnostics -----------------------------------------
    def check_decode(self, part: str = "all", indices: Optional[list[int]] = None) -> None:
        """Decode pools equal their expectation bit for bit, or an InvariantViolation explains the first difference.

        ``part``: ``"request"`` (the request's token slots), ``"outside"``
        (every other slot, which must keep its canary) or ``"all"``.  First, every
        pool's margins and layout gaps must hold their canary (:attr:`fence`).
        """
        self.fence.check()
        for index in indices if indices is not None else range(len(self.decode)):
            self.check_pool_equal(f"decode rank {self._rank_name(index, self.case.topology.decode_tp)}",
                                  self.decode[index], self.expected_decode(index), part)

    def request_mask(self, pool: RankPool) -> torch.Tensor:
        """True at the pool slots holding the request's tokens."""
        mask = torch.zeros(pool.k[0].shape[0], dtype=torch.bool, device=self.device)
        mask[slots_of(pool.page_table, pool.page_size, self.case.request.num_tokens)] = True
        return mask

    def check_pool_equal(self, where: str, actual: RankPool, expected: RankPool, part: str = "all") -> None:
        rows = {"all": None, "request": self.request_mask(actual), "outside": ~self.request_mask(actual)}[part]
        for name, got_layers, want_layers in (("K", actual.k, expected.k), ("V", actual.v, expected.v)):
            for local, (got, want) in enumerate(zip(got_layers, want_layers)):
                diff = int_view(got) != int_view(want)
                if rows is not None:
                    diff &= rows[:, None, None]
                if bool(diff.any()):
                    slot, head, dim = (int(x) for x in diff.nonzero()[0])
                    raise InvariantViolation(
                        f"{where}: {name} layer {actual.layers[local]} differs at pool slot {slot}, "
                        f"local head {head}, dim {dim}; {self._explain(actual, slot, head, got, want, name, local)}"
                    ).expecting(*(ExpectedBytes(g, w, rows) for g, w in zip([*actual.k, *actual.v], [*expected.k, *expected.v])))

    def _explain(self, pool: RankPool, slot: int, head: int, got, want, name: str, local: int) -> str:
        """Say which token/head the wrong value belongs to, and whose data landed there instead."""
        req = self.case.request
        token_slots = slots_of(pool.page_table, pool.page_size, req.num_tokens).tolist()
        global_head = pool.heads[head]
        row_got = int_view(got)[slot, head].contiguous()  # a strided layout's row cannot be viewed as bytes
        if slot not in token_slots:
            return f"slot is outside the request (token pages), canary was overwritten with {_fmt(row_got)}"
        token = token_slots.index(slot)
        hits = self.cached_pages() * self.case.kv.decode_page_size
        if token < hits:
            region = f"prefix hit, decode page {token // pool.page_size}: must keep the decode's own copy"
        elif token < req.prefix_len:
            region = f"cached but in partial decode page {token // pool.page_size}: re-read, the prefill's KV"
        else:
            region = "suffix"
        truth = self.truth_k if name == "K" else self.truth_v
        layer = pool.layers[local]
        culprit = _whose(truth, self.truth_v if name == "K" else self.truth_k, row_got, layer)
        return (f"it is token {token} ({region}), global head {global_head}; expected {_fmt(int_view(want)[slot, head])}, "
                f"got {_fmt(row_got)}{culprit}")

    @staticmethod
    def _rank_name(index: int, tp: int) -> str:
        stage, rank = divmod(index, tp)
        return f"{rank}" + (f" (pp stage {stage})" if stage else "")


def _fmt(row: torch.Tensor) -> str:
    values = row.flatten()[:4].tolist()
    return "[" + ", ".join(f"{v & ((1 << (8 * row.element_size())) - 1):#x}" for v in values) + (", ...]" if row.numel() > 4 else "]")


def _whose(same: torch.Tensor, other: torch.Tensor, row: torch.Tensor, layer: int) -> str:
    """Find ground truth matching ``row``: which token/head (and K or V) it was."""
    for label, truth in (("", same), (" of the other tensor (K/V swapped?)", other)):
        for lay in (layer, *range(truth.shape[0])):
            match = (int_view(truth[lay]) == row).all(dim=-1).nonzero()
            if match.numel():
                token, head = (int(x) for x in match[0])
                return f" = ground truth token {token}, global head {head}, layer {lay}{label}"
    if bool((row.view(torch.uint8) == CANARY_BYTE).all()):
        return " (canary: never written)"
    return ""


def _pools(case, fence: CanaryFence, side: str, tp: int, pp: int, page_table, pool_pages: int,
           page_size: int) -> list[RankPool]:
    """Each rank's pool, all canary, laid out as ``case.layout`` says, addressed in ``page_size`` pages."""
    kv, topo = case.kv, case.topology
    layers_per_stage = kv.num_layers // pp
    table = torch.tensor(page_table, dtype=torch.int64, device=fence.device)
    pools = []
    for stage in range(pp):
        for rank in range(tp):
            heads = owned_heads(topo.total_kv_heads, tp, rank)
            layers = range(stage * layers_per_stage, (stage + 1) * layers_per_stage)
            k, v = fence.pool(case.layout, layers, pool_pages * page_size, len(heads), kv.head_dim, kv.dtype,
                              f"{side} pool {stage * tp + rank}")
            pools.append(RankPool(k, v, heads, layers, table, page_size))
    return pools


def check_untouched(what: str, before: list[RankPool], after: list[RankPool]) -> None:
    """Pools that must only be read are bit-identical to their snapshot."""
    for index, (b, a) in enumerate(zip(before, after)):
        for name, bl, al in (("K", b.k, a.k), ("V", b.v, a.v)):
            for local, (x, y) in enumerate(zip(bl, al)):
                if not torch.equal(int_view(x), int_view(y)):
                    raise InvariantViolation(f"{what} pool {index} {name} layer {b.layers[local]} was modified"
                                             ).expecting(ExpectedBytes(y, x))
