"""A miniature conformance module for implementations with configurations, copied into pytester directories.

Against ``tests/fakes/configured_impl.py:make_implementation``: layout -> ``whole`` passes, ``broken``
fails (planted bug); round_trip -> ``whole`` passes (its whole_pages limit fits every case), ``broken``
fails (no limit declared: a partial page reaches it); receivers (uses no implementation) -> pass once.
"""

import pytest
from hypothesis import given, strategies as st

from strategies.transfer import transfer_cases


def pytest_generate_tests(metafunc):  # the conformance conftest's device instantiation, CPU only
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", [pytest.param("cpu", id="cpu")])


@pytest.mark.invariant("layout", requires=("layout",), since="1.0")
@given(writers=st.integers(1, 6), tokens=st.integers(0, 64))
def test_layout_offsets(impl, writers, tokens):
    size = 2 * tokens * 2 * 1 * 4 * 2
    spans = [tuple(s) for s in impl.staging_layout(writers, tokens, 2, 1, 4, 2)]
    assert spans == [(w * size, size) for w in range(writers)]


@pytest.mark.invariant("round_trip", since="1.0")
@given(case=transfer_cases())  # an argument: the plugin fits it into the configuration's declared limits
def test_whole_pages(impl, device, case):
    impl.move(case.request.num_tokens, case.kv.page_size)


@pytest.mark.invariant("receivers", since="1.0")
def test_without_implementation(devices):
    assert "cpu" in devices

