"""Meta-tests: the suite catches each deliberately broken implementation, on the right invariant."""

from __future__ import annotations

import pytest
import torch

from harness.conformance import (
    test_allocator, test_bad_topology, test_device, test_head_coverage, test_isolation, test_layout, test_lifecycle,
    test_path_equivalence, test_receivers, test_round_trip,
)
from reference.plugin import ReferenceImplementation
from tests.broken import device as broken_device
from tests.broken import end_to_end as broken_e2e
from tests.broken import kv_copy as broken_copy
from tests.broken import lifecycle as broken_life
from tests.broken import mapping as broken_map
from tests.meta_support import failure_of

CPU = {"device": "cpu"}

#: (broken implementation, conformance test that must fail, extra args, invariant tag in the failure)
CASES = [
    (broken_map.ModuloReplication, test_head_coverage.test_head_coverage_mapping, {}, "[head_coverage]"),
    (broken_map.ModuloReplication, test_head_coverage.test_head_coverage_data, CPU, "[head_coverage]"),
    (broken_map.SwappedWriterSlots, test_layout.test_layout_spans, {}, "[layout]"),
    (broken_map.LayoutIgnoresElementSize, test_layout.test_layout_spans, {}, "[layout]"),
    (broken_copy.OnePageOff, test_round_trip.test_round_trip_kv_copy, CPU, "[round_trip]"),
    (broken_copy.VIntoK, test_round_trip.test_round_trip_kv_copy, CPU, "[round_trip]"),
    (broken_copy.FloatCopy, test_round_trip.test_round_trip_kv_copy, CPU, "[round_trip]"),
    (broken_copy.OnePageOff, test_round_trip.test_round_trip_decode_handler, CPU, "[round_trip]"),
    (broken_copy.ScatterWholePages, test_isolation.test_isolation_kv_copy, CPU, "[isolation]"),
    (broken_copy.GatherOverrun, test_isolation.test_isolation_kv_copy, CPU, "[isolation]"),
    (broken_copy.GatherConsumesSource, test_isolation.test_isolation_kv_copy, CPU, "[isolation]"),
    (broken_copy.AssumesContiguousLayers, test_isolation.test_isolation_kv_copy, CPU, "[isolation]"),
    (broken_copy.DirectCopyIgnoresDestinationHead, test_path_equivalence.test_path_equivalence, CPU, "[path_equivalence]"),
    (broken_life.UnguardedRequireStaging, test_receivers.test_receivers_registration, {}, "[receivers]"),
    (broken_life.UnguardedRequireStaging, test_receivers.test_receivers_lifecycle, CPU, "[receivers]"),
    (broken_life.StagingOnlyIfTrue, test_receivers.test_receivers_registration, {}, "[receivers]"),
    (broken_life.OutOfOrderFree, test_allocator.test_allocator_program, {}, "[allocator]"),
    (broken_life.AcceptsOversized, test_allocator.test_allocator_program, {}, "[allocator]"),
    (broken_life.RoundZeroForever, test_allocator.test_allocator_program, {}, "[allocator]"),
    (broken_life.CountsDuplicateArrivals, test_lifecycle.test_lifecycle_arrival_orders, CPU, "[lifecycle]"),
    (broken_life.ReleaseLeaks, test_lifecycle.test_lifecycle_failure_is_contained, CPU, "[lifecycle]"),
    (broken_life.IgnoresPrefix, test_round_trip.test_round_trip_decode_handler, CPU, "[round_trip]"),
    (broken_life.TimeoutFailsEveryone, test_lifecycle.test_lifecycle_failure_is_contained, CPU, "[lifecycle]"),
    (broken_life.NoMisalignedPrefixCheck, test_lifecycle.test_lifecycle_failure_is_contained, CPU, "[lifecycle]"),
    (broken_map.AcceptsAnyTopology, test_bad_topology.test_bad_topology_head_mapping, {}, "[bad_topology]"),
    (broken_map.AcceptsAnyTopology, test_bad_topology.test_bad_topology_end_to_end, {}, "[bad_topology]"),
    # interface 1.1: two page sizes, decode prefix hits
    (broken_e2e.IgnoresPageSizeRatio, test_round_trip.test_round_trip_end_to_end_page_sizes_and_prefix_hits, CPU, "[round_trip]"),
    (broken_e2e.WritesPrefixHits, test_round_trip.test_round_trip_end_to_end, CPU, "[round_trip]"),
]


@pytest.mark.parametrize("broken, conformance_test, kwargs, tag", CASES,
                         ids=[f"{c[0].__name__}-{c[1].__name__}" for c in CASES])
def test_suite_catches_broken_implementation(broken, conformance_test, kwargs, tag):
    message = failure_of(conformance_test, broken(), **kwargs)
    assert message, f"{conformance_test.__name__} passed on {broken.__name__}: {broken.__doc__}"
    assert tag in message, f"{broken.__name__} failed, but not on {tag}:\n{message}"


@pytest.mark.parametrize("conformance_test, kwargs", sorted({(c[1], tuple(c[2].items())) for c in CASES},
                                                             key=lambda c: c[0].__name__),
                         ids=lambda v: getattr(v, "__name__", ""))
def test_same_tests_pass_on_the_reference(conformance_test, kwargs):
    """The control: each meta-tested conformance test passes on the reference under the same settings."""
    assert failure_of(conformance_test, ReferenceImplementation(), **dict(kwargs)) == ""


CUDA_CASES = [
    (broken_device.SyncsInHotPath, test_device.test_device_no_host_sync_in_hot_path, "[device]"),
    (broken_device.ScattersOnCallerStream, test_device.test_device_scatter_on_its_own_stream, "[device]"),
    (broken_device.ScratchFreedUnderSideStream, test_device.test_device_buffers_outlive_their_side_stream_work, "[device]"),
]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: these bugs only exist on accelerators")
@pytest.mark.parametrize("broken, conformance_test, tag", CUDA_CASES, ids=[c[0].__name__ for c in CUDA_CASES])
def test_suite_catches_broken_accelerator_implementation(broken, conformance_test, tag):
    message = failure_of(conformance_test, broken(), max_examples=20)
    assert message and tag in message, f"{broken.__name__} not caught on {tag}: {message!r}"
    assert failure_of(conformance_test, ReferenceImplementation(), max_examples=20) == ""
