"""Process isolation's fast paths keep their guarantees: a storage crosses once per lane, a worker goes on to the
next test only when nothing abnormal happened (the CLI-level attacks are tests/test_hostile.py)."""

from __future__ import annotations

import pickle
import threading
import time

import pytest
import torch

from harness import isolation
from harness.guard import guard
from harness.isolation import crossing


def _worker_side(message: bytes) -> tuple:
    """What the worker does with a message from the judge (storages dropped by the judge are forgotten)."""
    kind, payload, released = crossing.worker_loads(message)
    crossing.drop_storages([r for r in released if r < 0])
    return payload


def test_a_storage_crosses_once_then_as_a_token_and_views_read_the_same():
    crossing.share_by_name()
    table = crossing.StorageTable(kept=2)
    pool = torch.arange(24, dtype=torch.float32).view(2, 3, 4)
    first = table.dumps(("call", (pool, pool[1, :, 1:3]), []))
    again = table.dumps(("call", (pool.transpose(0, 2), pool[0]), []))
    assert len(again) < len(first) and len(table) == 1  # the second message carries a token, no storage
    for sent, got in zip((pool, pool[1, :, 1:3], pool.transpose(0, 2), pool[0]), _worker_side(first) + _worker_side(again)):
        assert torch.equal(sent, got) and sent.stride() == got.stride()
    back = _worker_side(table.dumps(("call", (pool,), [])))[0]
    back[0, 0, 0] = -1.0  # the worker writes the judge's own bytes
    assert pool[0, 0, 0] == -1.0


def test_storages_past_the_bound_are_dropped_on_both_sides_and_cross_again():
    crossing.share_by_name()
    table = crossing.StorageTable(kept=2)
    tensors = [torch.full((4,), float(i)) for i in range(4)]
    for t in tensors:
        _worker_side(table.dumps(("call", (t,), [])))
    assert len(table) == 3  # the oldest goes when the next message is pickled
    got = _worker_side(table.dumps(("call", (tensors[0],), [])))[0]
    assert torch.equal(got, tensors[0]) and len(table) == 3
    held = crossing.storages_held()
    table.clear()
    crossing.drop_storages(list(crossing._STORAGES))
    assert held >= 3 and crossing.storages_held() == 0


def test_a_message_that_cannot_be_pickled_leaves_the_table_as_it_was():
    crossing.share_by_name()
    table = crossing.StorageTable()
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        table.dumps(("call", (torch.ones(3), lambda: None), []))
    assert len(table) == 0


@pytest.fixture
def supervisor():
    started = isolation.start("reference", timeout=60)
    yield started
    started.retire()


def _call(supervisor) -> None:
    assert list(guard(supervisor.root).heads_of_rank(8, 2, 1)) == [4, 5, 6, 7]


def test_a_clean_test_keeps_its_worker_and_an_abnormal_one_retires_it(supervisor):
    _call(supervisor)
    worker = supervisor._worker
    assert supervisor.end_test(abnormal=False) is None and supervisor._worker is worker
    _call(supervisor)
    assert supervisor.end_test(abnormal=True) == "the test did not end cleanly" and supervisor._worker is None
    _call(supervisor)
    assert supervisor._worker is not worker and supervisor.starts == 2


class LeavesAThread:
    """Answers right, but its first call leaves a thread running in the worker."""

    name = "leaves-a-thread"
    capabilities = {"head_mapping"}

    def __init__(self) -> None:
        from reference.plugin import make_implementation

        self._reference = make_implementation()

    def heads_of_rank(self, total_kv_heads, tp_size, rank):
        threading.Thread(target=time.sleep, args=(60,), daemon=True, name="left-behind").start()
        return self._reference.heads_of_rank(total_kv_heads, tp_size, rank)

    def writers_of_decode_rank(self, *args):
        return self._reference.writers_of_decode_rank(*args)

    def head_slice(self, *args):
        return self._reference.head_slice(*args)


def test_a_thread_left_running_retires_the_worker_even_after_a_pass():
    supervisor = isolation.start(f"{__name__}:LeavesAThread", timeout=60)
    try:
        _call(supervisor)
        why = supervisor.end_test(abnormal=False)
        assert why is not None and "left-behind" in why and supervisor._worker is None
    finally:
        supervisor.retire()
