"""End-to-end moves across two page sizes and decode-side prefix hits (interface 1.1).

Both reuse the reference's mover, handing it what the buggy implementation would compute: a decode slot
list (a page table of one-token pages) or a prefix.
"""

from __future__ import annotations

from typing import Any

import torch

from reference.plugin import ReferenceImplementation


class IgnoresPageSizeRatio(ReferenceImplementation):
    """Places token ``t`` at offset ``t % prefill_page_size`` of its decode page: the block mapping without the
    page-size ratio, so the sub-blocks of a larger decode page all land at its start (and a larger prefill
    page spills past its decode page) -- what skipping vLLM's sub-block permutation amounts to."""

    def move_request(self, **kwargs: Any) -> None:
        pps, dps, tokens = kwargs["prefill_page_size"], kwargs["decode_page_size"], kwargs["num_tokens"]
        token = torch.arange(tokens)
        tables = []
        for table, (k_layers, _) in zip(kwargs["decode_page_tables"], kwargs["decode_pools"]):
            slots = table.cpu()[token // dps] * dps + token % pps
            tables.append((slots % k_layers[0].shape[0]).to(table.device))  # stays inside the pool: wrong, no crash
        super().move_request(**{**kwargs, "decode_page_size": 1, "decode_page_tables": tables})


class WritesPrefixHits(ReferenceImplementation):
    """Moves the whole request, cached prefix included: rewrites the decode's prefix-hit pages (shared with
    other requests) with the prefill's KV instead of leaving them alone."""

    def move_request(self, **kwargs: Any) -> None:
        super().move_request(**{**kwargs, "prefix_len": 0})

