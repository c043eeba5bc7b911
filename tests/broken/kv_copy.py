"""Gather / scatter / direct-copy bugs."""

from __future__ import annotations

import torch

from reference import kv_copy
from reference.plugin import ReferenceImplementation


class OnePageOff(ReferenceImplementation):
    """Scatter starts one page too late in the decode page table."""

    def scatter(self, staging, dests, heads, layers, k, v, page_table, page_size, num_tokens):
        shifted = torch.cat([page_table[1:], page_table[:1]])
        super().scatter(staging, dests, heads, layers, k, v, shifted, page_size, num_tokens)


class VIntoK(ReferenceImplementation):
    """Scatter writes the V half of the staging region into the K pool."""

    def scatter(self, staging, dests, heads, layers, k, v, page_table, page_size, num_tokens):
        super().scatter(staging, dests, heads, layers, v, k, page_table, page_size, num_tokens)


class FloatCopy(ReferenceImplementation):
    """Gathers through float32 arithmetic: NaN payloads and -0.0 / fp8 bits get normalised."""

    def gather(self, k, v, page_table, page_size, num_tokens, head_start, head_count, out):
        super().gather(k, v, page_table, page_size, num_tokens, head_start, head_count, out)
        typed = out.view(k[0].dtype)
        typed.copy_(typed.float().mul(1.0).to(k[0].dtype))


class ScatterWholePages(ReferenceImplementation):
    """Scatter copies whole pages, so a partial last page overwrites the slots after the request."""

    def scatter(self, staging, dests, heads, layers, k, v, page_table, page_size, num_tokens):
        super().scatter(staging, dests, heads, layers, k, v, page_table, page_size, num_tokens)
        tail = -num_tokens % page_size
        if tail:
            slots = kv_copy.token_slots(page_table, page_size, num_tokens + tail)[num_tokens:]
            for layer in (*k, *v):
                layer[slots, dests[0][0]:dests[0][0] + heads] = 0


class GatherOverrun(ReferenceImplementation):
    """Gather writes 8 bytes past the end of its output buffer."""

    def gather(self, k, v, page_table, page_size, num_tokens, head_start, head_count, out):
        super().gather(k, v, page_table, page_size, num_tokens, head_start, head_count, out)
        wider = torch.empty(0, dtype=torch.uint8, device=out.device)
        wider.set_(out.untyped_storage(), out.storage_offset(), (out.numel() + 8,))
        wider[-8:] = 0


class GatherConsumesSource(ReferenceImplementation):
    """Gather zeroes the prefill pages it read (as if it moved instead of copied)."""

    def gather(self, k, v, page_table, page_size, num_tokens, head_start, head_count, out):
        super().gather(k, v, page_table, page_size, num_tokens, head_start, head_count, out)
        slots = kv_copy.token_slots(page_table, page_size, num_tokens)
        for layer in (*k, *v):
            layer[slots] = 0


class DirectCopyIgnoresDestinationHead(ReferenceImplementation):
    """Non-staged path always writes at destination head 0."""

    def direct_copy(self, sk, sv, st, src_head, dk, dv, dt, dst_head, count, page_size, num_tokens):
        kv_copy.direct_copy(sk, sv, st, src_head, dk, dv, dt, 0, count, page_size, num_tokens)
