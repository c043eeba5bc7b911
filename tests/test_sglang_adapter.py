"""The SGLang adapter: the SGLang 0.5.23 API it relies on, and a smoke test of each capability.

Skipped (with the reason shown) when sglang is not installed.  A change in
SGLang's API fails here with the expected 0.5.23 signature and what was found.
Runs on CPU; CUDA tensors are used too when a GPU is present.
"""

from __future__ import annotations

import importlib.util
import itertools
import types

import pytest
import torch

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("sglang") is None,
    reason="sglang is not installed (pip install --no-deps sglang==0.5.23; tox -e sglang)",
)

from adapters import sglang as adapter  # noqa: E402  (after the skip marker on purpose)
from adapters.toolkit import parameters_of  # noqa: E402
from harness.engine.rank import FakeClock  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module")
def code():
    return adapter.load_sglang()


@pytest.fixture(scope="module")
def impl():
    return adapter.make_default_implementation()


# ---------------------------------------------------------------- the API pin
def test_installed_version_is_the_pinned_one(code):
    assert code.version == adapter.SGLANG_VERSION, (
        f"the sglang adapter was written against sglang {adapter.SGLANG_VERSION}; installed: {code.version}. "
        "Install that version or re-check adapters/sglang/ and docs/sglang.md against the new one.")


@pytest.mark.parametrize("name", sorted(adapter.EXPECTED_SIGNATURES))
def test_sglang_signature_unchanged(code, name):
    expected = adapter.EXPECTED_SIGNATURES[name]
    try:
        found = parameters_of(code.resolve(name))
    except (AttributeError, KeyError):
        pytest.fail(f"sglang {code.version}: {name} no longer exists (sglang {adapter.SGLANG_VERSION} has {name}{expected})")
    assert found == expected, (
        f"sglang {code.version}: {name} changed: sglang {adapter.SGLANG_VERSION} has {expected}, found {found}")


@pytest.mark.parametrize("name", adapter.EXPECTED_ATTRIBUTES)
def test_sglang_attribute_present(code, name):
    try:
        code.resolve(name)
    except AttributeError:
        pytest.fail(f"sglang {code.version}: {name} is gone (sglang {adapter.SGLANG_VERSION} has it; a shim needs it)")


def test_loaded_code_matches_0_5_23(code):
    """Everything the loader checks: definitions found, borrowed code's globals provided, signatures."""
    assert code.problems == (), f"sglang {code.version} differs from {adapter.SGLANG_VERSION}: {list(code.problems)}"


def test_mismatch_refuses_to_load_and_names_the_version(code):
    changed = adapter.SglangCode(**{**code.__dict__, "problems": ("staging_buffer.x signature changed",)})
    with pytest.raises(adapter.SglangApiMismatch, match=r"0\.5\.23.*\n.*staging_buffer\.x signature changed"):
        adapter.require_matching_api(changed)


def test_package_initialisers_were_skipped(code):
    import sys

    assert getattr(sys.modules["sglang"], "__kvconform_placeholder__", False), "sglang/__init__.py ran"
    assert code.staging_buffer.__file__.endswith("sglang/srt/disaggregation/common/staging_buffer.py")


def test_entry_points_name_the_adapters_factories():
    """``--impl sglang`` (and the forced kernel paths) resolve through the entry points, not the harness."""
    from harness.loading import available_implementations

    names = available_implementations()
    if "sglang" not in names:
        pytest.fail("no 'sglang' entry point in kvconform.implementations: install kvconform (pip install -e .)")
    assert names["sglang"] == "adapters.sglang:make_implementation"


def test_sglang_declares_its_kernel_paths_as_configurations():
    """``--impl sglang`` runs the triton and torch kernel paths, each its own implementation (one report column)."""
    from harness.loading import load_configurations

    loaded = load_configurations("adapters.sglang:make_implementation")  # the entry point's target
    assert loaded.declared == ("triton", "torch") and loaded.name == "sglang 0.5.23"
    assert [(c.spec, c.implementation.kernel_path) for c in loaded.selected] == [
        ("adapters.sglang:make_implementation#triton", "triton"), ("adapters.sglang:make_implementation#torch", "torch")]
    assert all(c.implementation.limits == {"whole_pages", "no_pipeline_fan_in", "contiguous_layers"} for c in loaded.selected)


# ---------------------------------------------------------------- head_mapping (docs/domain.md#who-writes-to-whom)
def _valid_topologies():
    for H, P, D in itertools.product((1, 2, 4, 8), (1, 2, 4, 8, 16), (1, 2, 4, 8, 16)):
        if all(a % b == 0 or b % a == 0 for a, b in ((H, P), (H, D), (P, D))):
            yield H, P, D


def test_head_mapping_matches_the_domain_formulas(impl):
    for H, P, D in _valid_topologies():
        for r in range(P):
            expected = list(range(r * H // P, (r + 1) * H // P)) if P <= H else [r // (P // H)]
            assert impl.heads_of_rank(H, P, r) == expected, (H, P, r)
        for d in range(D):
            writers = impl.writers_of_decode_rank(H, P, D, d)
            assert writers == (list(range(d * P // D, (d + 1) * P // D)) if P > D else [d // (D // P)])
            for p in writers:
                if P > D:
                    want = (0, max(1, H // P), (p // max(1, P // H)) * max(1, H // P) % max(1, H // D))
                else:
                    want = ((d // max(1, D // H)) * max(1, H // D) % max(1, H // P), max(1, H // D), 0)
                assert impl.head_slice(H, P, D, p, d) == want, (H, P, D, p, d)


def test_decode_rank_view_reproduces_sglangs_real_placement(code):
    """The adapter's (num_writers, 1, 0, heads on rank) view gives the writer placement SGLang computes
    from the real TP sizes, for every valid topology."""
    params = code.staging_buffer.compute_head_slice_params
    for H, P, D in _valid_topologies():
        writers = P // D if P > D else 1
        for d in range(D):
            real = [params(P, D, w, d, H)[1:3] for w in range(writers)]
            viewed = [params(writers, 1, w, 0, max(1, H // D))[1:3] for w in range(writers)]
            assert real == viewed, (H, P, D, d)


def test_invalid_topologies_are_not_refused_by_sglangs_staging_code(impl):
    """SGLang's staging functions do not validate (its model layer asserts divisibility instead)."""
    assert impl.heads_of_rank(6, 4, 3) == [3]
    assert impl.writers_of_decode_rank(6, 2, 3, 2) == [2]  # a prefill rank a TP-2 group does not have


# ---------------------------------------------------------------- layout
def test_layout_is_sglangs_per_writer_bytes_back_to_back(impl):
    spans = impl.staging_layout(num_writers=4, num_tokens=8, heads_per_writer=1, layers_per_writer=3,
                                head_dim=16, element_size=2)
    size = 8 * 1 * 16 * 2 * 3 * 2
    assert spans == [(i * size, size) for i in range(4)]


# ---------------------------------------------------------------- allocator
def test_allocator_is_sglangs_ring(impl):
    ring = impl.make_allocator(100)
    assert isinstance(ring.staging_allocator, impl.code.staging_buffer.StagingAllocator)
    a = ring.assign(40)
    b = ring.assign(40)
    assert (a, b) == ((0, 0, 0), (1, 40, 0))
    assert ring.assign(101) is None  # oversized: refused explicitly
    c = ring.assign(30)  # does not fit before the end: wraps into round 1
    assert c == (2, 0, 1)
    ring.free(1)  # out of order: the oldest live allocation still pins the watermark
    assert ring.watermark() == (0, 0)
    assert not impl.writer_may_write(1, 30, ring.watermark())
    ring.free(0)
    assert ring.watermark() == (1, 0) and impl.writer_may_write(1, 30, ring.watermark())
    ring.free(2)
    ring.free(2)  # unknown / double frees are ignored
    assert ring.watermark() == (2, 0)  # empty ring: SGLang starts a fresh round at offset 0
    assert ring.assign(10) == (3, 0, 2)


def test_writer_may_write_follows_the_watermark_rule(impl):
    assert impl.writer_may_write(0, 10**9, (0, 0))
    assert impl.writer_may_write(3, 50, (3, 0))
    assert impl.writer_may_write(3, 50, (2, 50)) and not impl.writer_may_write(3, 51, (2, 50))
    assert not impl.writer_may_write(3, 1, (1, 99))


# ---------------------------------------------------------------- kv_copy
def _pools(tokens, heads, dim, layers, dtype, device, seed):
    gen = torch.Generator().manual_seed(seed)
    bits = torch.randint(-(2**15), 2**15, (2, layers, tokens, heads, dim), generator=gen, dtype=torch.int16)
    bits[..., 0] = 0x7C01  # a signalling-NaN payload in every row (fp16)
    truth = bits.view(dtype).to(device)
    return [list(truth[0]), list(truth[1])]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("factory", ["make_default_implementation", "make_torch_implementation"])
def test_kv_copy_round_trip_is_bit_exact(device, factory):
    impl = getattr(adapter, factory)()
    H, P, D, L, dim, page = 4, 4, 2, 2, 3, 2
    prefill = []
    k_truth, v_truth = _pools(8 * page, H, dim, L, torch.float16, device, seed=1)
    for p in range(P):
        heads = impl.heads_of_rank(H, P, p)
        prefill.append(([k[:, heads].clone() for k in k_truth], [v[:, heads].clone() for v in v_truth]))
    src_pages, dst_pages = torch.tensor([5, 2, 7], device=device), torch.tensor([1, 6, 3], device=device)
    tokens = 3 * page
    for d in range(D):
        k = [torch.zeros(8 * page, H // D, dim, dtype=torch.float16, device=device) for _ in range(L)]
        v = [torch.zeros_like(x) for x in k]
        writers = impl.writers_of_decode_rank(H, P, D, d)
        slices = [impl.head_slice(H, P, D, p, d) for p in writers]
        spans = impl.staging_layout(len(writers), tokens, slices[0][1], L, dim, 2)
        region = torch.zeros(sum(n for _, n in spans), dtype=torch.uint8, device=device)
        for p, (src, count, _), (offset, nbytes) in zip(writers, slices, spans):
            impl.gather(*prefill[p], src_pages, page, tokens, src, count, region[offset:offset + nbytes])
        impl.scatter(region, [(dst, 0) for _, _, dst in slices], slices[0][1], L, k, v, dst_pages, page, tokens)
        src_slots = (src_pages[:, None] * page + torch.arange(page, device=device)).flatten()
        dst_slots = (dst_pages[:, None] * page + torch.arange(page, device=device)).flatten()
        heads = impl.heads_of_rank(H, D, d)
        for got, truth in zip(k + v, k_truth + v_truth):
            want = truth[src_slots][:, heads]
            if factory == "make_torch_implementation" and device == "cpu":
                # CPU torch.gather from a strided head slice quiets signalling NaNs (docs/sglang.md, Findings)
                want, got = want.nan_to_num(), got.nan_to_num()
            assert torch.equal(got[dst_slots].view(torch.int16), want.view(torch.int16))


def test_kv_copy_limits_are_reported_as_not_implemented(impl):
    k = [torch.zeros(8, 2, 2)]
    with pytest.raises(NotImplementedError, match="sglang 0.5.23 cannot gather a partial last page"):
        impl.gather(k, k, torch.arange(4), 2, 3, 0, 1, torch.zeros(24, dtype=torch.uint8))
    region = torch.zeros(1024, dtype=torch.uint8)
    with pytest.raises(NotImplementedError, match="subset of the layers"):
        impl.scatter(region, [(0, 0), (0, 1)], 2, 1, k + k, k + k, torch.arange(4), 2, 4)
    with pytest.raises(NotImplementedError, match="cannot place writer 0 at destination head 1"):
        impl.scatter(region, [(1, 0), (0, 0)], 1, 1, k, k, torch.arange(4), 2, 4)


# ---------------------------------------------------------------- decode_handler
class _Rank:
    """One decode rank of H=2, P=2, D=1 (two writers of one head), page size 2, one layer."""

    def __init__(self, impl, device="cpu", capacity=256, timeout_s=10.0):
        self.impl, self.device, self.page = impl, device, 2
        self.k = [torch.zeros(16, 2, 2, dtype=torch.float16, device=device)]
        self.v = [torch.zeros_like(self.k[0])]
        self.ring = torch.full((capacity,), 0xA5, dtype=torch.uint8, device=device)
        self.allocator = impl.make_allocator(capacity)
        self.clock = FakeClock()
        self.handler = impl.make_decode_handler(
            staging=self.ring, allocator=self.allocator, k_layers=self.k, v_layers=self.v, page_size=2,
            num_writers=2, writer_destinations=[(0, 0), (1, 0)], heads_per_writer=1, layers_per_writer=1,
            timeout_s=timeout_s, clock=self.clock)
        self.chunk_bytes = 2 * (2 * 1 * 2 * 2 * 1 * 2)  # two writers of 2 tokens x 1 head x dim 2 x fp16 x 1 layer x K,V

    def write(self, answer, slot, value):
        offset, _, end = answer
        part = (end - offset) // 2
        self.ring[offset + slot * part: offset + (slot + 1) * part].view(torch.int16)[:] = value


class _Staged:
    require_staging = True


def test_decode_handler_runs_sglangs_lifecycle(impl):
    rank = _Rank(impl)
    h = rank.handler
    assert h.register(1, _Staged(), torch.tensor([3, 5, 6]), 2, 6) is True
    chunks = []
    for chunk, page_start in enumerate((0, 1)):
        answer = h.allocate_chunk(1, chunk, rank.chunk_bytes)
        assert answer == h.allocate_chunk(1, chunk, rank.chunk_bytes)  # repeated ask, same answer
        chunks.append(answer)
        for slot in (1, 0):
            rank.write(answer, slot, 100 * chunk + slot + 1)
            h.chunk_arrived(1, chunk, slot, page_start, 1, 2)
    assert h.poll(1) == "pending"  # prefill has not reported success yet
    h.prefill_done(1)
    assert h.poll(1) == "done"
    k = rank.k[0].view(torch.int16)
    assert k[10:12, 0].eq(1).all() and k[10:12, 1].eq(2).all()  # chunk 0 -> page 5 (after the 1-page prefix)
    assert k[12:14, 0].eq(101).all() and k[12:14, 1].eq(102).all()  # chunk 1 -> page 6
    assert k[6:8].eq(0).all()  # the cached prefix page is untouched
    h.release(1)
    assert rank.allocator.staging_allocator.allocations == {}
    h.chunk_arrived(1, 0, 0, 0, 1, 2)  # late message after release: ignored
    assert h.poll(1) == "failed"


@pytest.mark.parametrize("receiver", [types.SimpleNamespace(require_staging=False), types.SimpleNamespace(require_staging=0)])
def test_falsy_require_staging_takes_the_plain_path(impl, receiver):
    h = _Rank(impl).handler
    assert h.register(2, receiver, torch.arange(2), 0, 4) is False
    assert h.allocate_chunk(2, 0, 32) is None  # SGLang drops STAGING_REQ for a room it did not register
    h.prefill_done(2)
    assert h.poll(2) == "done"
    h.release(2)


def test_timeout_abort_misaligned_prefix_and_oversized_fail_only_their_request(impl):
    rank = _Rank(impl, timeout_s=5.0)
    h = rank.handler
    for room, prefix in ((1, 0), (2, 0), (3, 1), (4, 0)):
        h.register(room, _Staged(), torch.arange(3), prefix, 6)
    held = h.allocate_chunk(2, 0, rank.chunk_bytes)
    h.fail(2, "aborted by the test")
    assert h.poll(2) == "failed" and "aborted by the test" in h.failure_reason(2)
    assert h.poll(3) == "failed"  # prefix 1 is not page-aligned
    assert h.allocate_chunk(4, 0, 10**6) is None  # larger than the ring
    with pytest.raises(NotImplementedError, match="STAGING_REQ carries a page count"):
        h.allocate_chunk(4, 0, rank.chunk_bytes - 1)
    rank.clock.now = 4.0
    h.register(5, _Staged(), torch.arange(3), 0, 6)
    rank.clock.now = 6.0  # past the waiting timeout of rooms registered at 0, not of room 5
    assert h.poll(1) == "failed" and "timed out" in h.failure_reason(1)
    assert h.poll(5) == "pending"
    for room in (1, 2, 3, 4):
        h.release(room)
    assert held is not None and rank.allocator.staging_allocator.allocations == {}


def test_completion_timeout_after_success_uses_the_handler_clock(impl):
    rank = _Rank(impl, timeout_s=5.0)
    h = rank.handler
    h.register(1, _Staged(), torch.arange(2), 0, 4)
    h.allocate_chunk(1, 0, rank.chunk_bytes)  # never arrives
    h.prefill_done(1)
    assert h.poll(1) == "pending"
    rank.clock.now = 5.5
    assert h.poll(1) == "failed"


# SGLang 0.5.23 behaviour the conformance suite reports (see docs/sglang.md, "Findings").
def test_sglang_poll_reads_require_staging_without_a_guard(impl):
    h = _Rank(impl).handler
    assert h.register(1, object(), torch.arange(2), 0, 4) is False  # decode.py guards with hasattr
    with pytest.raises(AttributeError, match="require_staging"):
        h.poll(1)  # utils.py poll_and_all_reduce_with_staging does not


def test_sglang_counts_a_duplicate_arrival_towards_the_fan_in(impl):
    rank = _Rank(impl)
    h = rank.handler
    h.register(1, _Staged(), torch.tensor([4]), 0, 2)
    answer = h.allocate_chunk(1, 0, rank.chunk_bytes)
    rank.write(answer, 0, 7)
    h.chunk_arrived(1, 0, 0, 0, 1, 2)
    h.chunk_arrived(1, 0, 0, 0, 1, 2)  # the same writer again
    k = rank.k[0].view(torch.int16)
    assert k[8:10, 0].eq(7).all() and k[8:10, 1].eq(-23131).all()  # writer 1's unwritten part (0xA5A5) scattered


def test_sglang_allocates_again_for_a_chunk_already_scattered(impl):
    rank = _Rank(impl)
    h = rank.handler
    h.register(1, _Staged(), torch.tensor([4]), 0, 2)
    first = h.allocate_chunk(1, 0, rank.chunk_bytes)
    for slot in (0, 1):
        h.chunk_arrived(1, 0, slot, 0, 1, 2)
    assert h.allocate_chunk(1, 0, rank.chunk_bytes) != first  # a fresh allocation nobody will scatter
    h.prefill_done(1)
    assert h.poll(1) == "pending"  # ...which keeps the request open until the completion timeout
    rank.clock.now = 11.0
    assert h.poll(1) == "failed"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: SGLang's own streams and events")
def test_decode_handler_on_cuda(impl):
    rank = _Rank(impl, device="cuda")
    h = rank.handler
    h.register(1, _Staged(), torch.tensor([4], device="cuda"), 0, 2)
    answer = h.allocate_chunk(1, 0, rank.chunk_bytes)
    for slot in (0, 1):
        rank.write(answer, slot, slot + 1)
        h.chunk_arrived(1, 0, slot, 0, 1, 2)
    h.prefill_done(1)
    for _ in range(100):
        torch.cuda.synchronize()
        if h.poll(1) != "pending":
            break
    assert h.poll(1) == "done"
    assert rank.k[0].view(torch.int16)[8:10].cpu().tolist() == [[[1, 1], [2, 2]]] * 2
    h.release(1)
