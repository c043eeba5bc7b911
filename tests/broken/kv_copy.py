"""Gather / scatter / direct-copy bugs.

Each overrides one reference method taking ``*args`` and reads the arguments it
changes by their documented names (``harness.interface.documented_arguments``),
so the signatures stay written once, in ``harness/interface.py``.
"""

from __future__ import annotations

import torch

from harness.interface import documented_arguments
from reference import kv_copy
from reference.plugin import ReferenceImplementation


class OnePageOff(ReferenceImplementation):
    """Scatter starts one page too late in the decode page table."""

    def scatter(self, *args):
        call = documented_arguments("scatter", args)
        table = call.arguments["page_table"]
        call.arguments["page_table"] = torch.cat([table[1:], table[:1]])
        super().scatter(*call.args)


class VIntoK(ReferenceImplementation):
    """Scatter writes the V half of the staging region into the K pool."""

    def scatter(self, *args):
        call = documented_arguments("scatter", args)
        call.arguments["k_layers"] = call.arguments["v_layers"]
        super().scatter(*call.args)


class FloatCopy(ReferenceImplementation):
    """Gathers through float32 arithmetic: NaN payloads and -0.0 / fp8 bits get normalised."""

    def gather(self, *args):
        super().gather(*args)
        call = documented_arguments("gather", args).arguments
        dtype = call["k_layers"][0].dtype
        typed = call["out"].view(dtype)
        typed.copy_(typed.float().mul(1.0).to(dtype))


class ScatterWholePages(ReferenceImplementation):
    """Scatter copies whole pages, so a partial last page overwrites the slots after the request."""

    def scatter(self, *args):
        super().scatter(*args)
        call = documented_arguments("scatter", args).arguments
        page_size, num_tokens = call["page_size"], call["num_tokens"]
        tail = -num_tokens % page_size
        if tail:
            slots = kv_copy.token_slots(call["page_table"], page_size, num_tokens + tail)[num_tokens:]
            first_head = call["writer_destinations"][0][0]
            for layer in (*call["k_layers"], *call["v_layers"]):
                layer[slots, first_head:first_head + call["heads_per_writer"]] = 0


class GatherOverrun(ReferenceImplementation):
    """Gather writes 8 bytes past the end of its output buffer."""

    def gather(self, *args):
        super().gather(*args)
        out = documented_arguments("gather", args).arguments["out"]
        wider = torch.empty(0, dtype=torch.uint8, device=out.device)
        wider.set_(out.untyped_storage(), out.storage_offset(), (out.numel() + 8,))
        wider[-8:] = 0


class GatherConsumesSource(ReferenceImplementation):
    """Gather zeroes the prefill pages it read (as if it moved instead of copied)."""

    def gather(self, *args):
        super().gather(*args)
        call = documented_arguments("gather", args).arguments
        slots = kv_copy.token_slots(call["page_table"], call["page_size"], call["num_tokens"])
        for layer in (*call["k_layers"], *call["v_layers"]):
            layer[slots] = 0


class DirectCopyIgnoresDestinationHead(ReferenceImplementation):
    """Non-staged path always writes at destination head 0."""

    def direct_copy(self, *args):
        call = documented_arguments("direct_copy", args)
        call.arguments["dst_head_start"] = 0
        super().direct_copy(*call.args)


class AssumesContiguousLayers(ReferenceImplementation):
    """Scatter addresses each pool layer as if it were contiguous: offsets ``(slot * heads + head) * head_dim + d``
    from the layer's first element (``data_ptr`` arithmetic that ignores the strides).  Right on today's layout
    (each layer its own contiguous tensor); on views of a shared or padded allocation it writes into other
    layers, K into V, or the padding between them."""

    def scatter(self, *args):
        call = documented_arguments("scatter", args)
        for name in ("k_layers", "v_layers"):
            call.arguments[name] = [torch.as_strided(layer, layer.shape, _packed_strides(layer.shape))
                                    for layer in call.arguments[name]]
        super().scatter(*call.args)


def _packed_strides(shape: torch.Size) -> tuple[int, ...]:
    rows, heads, head_dim = shape
    return (heads * head_dim, head_dim, 1)
