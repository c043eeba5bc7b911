"""Public Hypothesis strategies for decode-side KV staging scenarios.

Small composable strategies that shrink toward small, simple cases:

* topologies: ``kv_head_counts``, ``tp_sizes``, ``pipeline_sizes``,
  ``gqa_group_sizes``, ``gqa_configs``, ``topologies``, ``invalid_topologies``;
* KV shapes: ``dtypes``, ``page_sizes``, ``head_dims``, ``layer_counts``,
  ``kv_specs``;
* requests: ``token_counts``, ``prefix_lengths``, ``page_tables``,
  ``request_specs``, and whole scenarios with ``transfer_cases``;
* pool layouts: ``pool_layouts`` (``PoolLayout``, ``CONTIGUOUS``, ``LAYOUT_KINDS``);
* message orders: ``arrival_orders``;
* receivers: ``receivers``, ``staged_receivers``, ``plain_receivers``,
  ``require_staging_values``;
* allocator: ``capacities``, ``assign_sizes``, ``allocator_programs``;
* sizes that reach their boundaries: ``strategies.sizes`` (``boundary_values``,
  ``sizes``, ``steer``), used by the above (docs/mutation.md lists the boundaries).

Nothing here imports the code under test.
"""

from strategies.allocator_program import allocator_programs, assign_sizes, capacities
from strategies.arrival import arrival_orders
from strategies.bad_topology import INVALID_TOPOLOGY_REASONS, TP_NOT_NESTED, InvalidTopology, invalid_topologies
from strategies.cases import KvSpec, RequestSpec, TpTopology, TransferCase
from strategies.kv import LARGE_HEAD_DIMS, dtypes, head_dims, kv_specs, layer_counts, page_size_pairs, page_sizes
from strategies.pool_layout import CONTIGUOUS, LAYOUT_KINDS, PoolLayout, pool_layouts
from strategies.receiver import (
    RECEIVER_KINDS,
    plain_receivers,
    receivers,
    require_staging_values,
    staged_receivers,
)
from strategies.request import page_tables, prefix_lengths, request_specs, token_counts
from strategies.topology import (
    REPLICATION_REGIMES,
    gqa_configs,
    gqa_group_sizes,
    kv_head_counts,
    pipeline_sizes,
    topologies,
    tp_sizes,
)
from strategies.transfer import DEFAULT_MAX_RANKS, pool_elements, transfer_cases

__all__ = [
    "CONTIGUOUS",
    "DEFAULT_MAX_RANKS",
    "INVALID_TOPOLOGY_REASONS",
    "LARGE_HEAD_DIMS",
    "LAYOUT_KINDS",
    "RECEIVER_KINDS",
    "REPLICATION_REGIMES",
    "TP_NOT_NESTED",
    "InvalidTopology",
    "KvSpec",
    "PoolLayout",
    "RequestSpec",
    "TpTopology",
    "TransferCase",
    "allocator_programs",
    "arrival_orders",
    "assign_sizes",
    "capacities",
    "dtypes",
    "gqa_configs",
    "gqa_group_sizes",
    "head_dims",
    "invalid_topologies",
    "kv_head_counts",
    "kv_specs",
    "layer_counts",
    "page_size_pairs",
    "page_sizes",
    "page_tables",
    "pipeline_sizes",
    "plain_receivers",
    "pool_elements",
    "pool_layouts",
    "prefix_lengths",
    "receivers",
    "request_specs",
    "require_staging_values",
    "staged_receivers",
    "token_counts",
    "topologies",
    "tp_sizes",
    "transfer_cases",
]
