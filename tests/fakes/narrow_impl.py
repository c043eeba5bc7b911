"""The reference, declaring both scope limits, and raising on any input outside them.

A conformance run against it passes only if every input the suite generates (cases, rank shapes,
requests; in-process, stress and distributed) stays inside the declared limits.
"""

from __future__ import annotations

from typing import Any

from reference import handler
from reference.plugin import ReferenceImplementation


class OutOfScope(RuntimeError):
    """The suite generated an input outside the declared limits."""


def _inside(ok: bool, what: str) -> None:
    if not ok:
        raise OutOfScope(f"out of declared scope: {what}")


class _WholePagesHandler(handler.DecodeStagingHandler):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._page = kwargs["page_size"]

    def register(self, request_id, receiver, page_table, prefix_len, num_tokens):
        _inside(num_tokens % self._page == 0, f"num_tokens={num_tokens} on pages of {self._page} (whole_pages)")
        return super().register(request_id, receiver, page_table, prefix_len, num_tokens)


class NarrowReference(ReferenceImplementation):
    name = "narrow-reference"
    limits = frozenset({"whole_pages", "no_pipeline_fan_in"})

    def gather(self, k_layers, v_layers, page_table, page_size, num_tokens, head_start, head_count, out) -> None:
        _inside(num_tokens % page_size == 0, f"gather of {num_tokens} tokens on pages of {page_size} (whole_pages)")
        super().gather(k_layers, v_layers, page_table, page_size, num_tokens, head_start, head_count, out)

    def scatter(self, staging, writer_destinations, heads_per_writer, layers_per_writer, k_layers, v_layers,
                page_table, page_size, num_tokens) -> None:
        _inside(all(layer == 0 for _, layer in writer_destinations),
                f"writer layer offsets {writer_destinations} (no_pipeline_fan_in)")
        _inside(num_tokens % page_size == 0, f"scatter of {num_tokens} tokens on pages of {page_size} (whole_pages)")
        super().scatter(staging, writer_destinations, heads_per_writer, layers_per_writer, k_layers, v_layers,
                        page_table, page_size, num_tokens)

    def make_decode_handler(self, **kwargs: Any) -> handler.DecodeStagingHandler:
        _inside(kwargs["layers_per_writer"] == len(kwargs["k_layers"]),
                f"{len(kwargs['k_layers'])} layers fed {kwargs['layers_per_writer']} per writer (no_pipeline_fan_in)")
        return _WholePagesHandler(scatter=self.scatter, **kwargs)

    def move_request(self, **kwargs: Any) -> None:
        _inside(kwargs["prefill_pp"] == kwargs["decode_pp"],
                f"prefill_pp={kwargs['prefill_pp']} decode_pp={kwargs['decode_pp']} (no_pipeline_fan_in)")
        _inside(kwargs["num_tokens"] % kwargs["decode_page_size"] == 0,
                f"num_tokens={kwargs['num_tokens']} on decode pages of {kwargs['decode_page_size']} (whole_pages)")
        super().move_request(**kwargs)


def make_implementation() -> NarrowReference:
    return NarrowReference()
