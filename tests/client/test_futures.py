"""Record futures: the batch's outcome, offsets by index, callbacks and errbacks."""

from __future__ import annotations

import threading

import pytest

from cluster.client import errors
from cluster.client.futures import ProducerBatch, new_record_future
from cluster.client.structs import RecordMetadata


def batch_of(n: int) -> ProducerBatch:
    batch = ProducerBatch("t", 2, 0.0, 1000)
    batch.records.extend((1000 + i, None, b"v", None) for i in range(n))
    return batch


def test_offsets_are_base_plus_index() -> None:
    batch = batch_of(3)
    futures = [new_record_future(batch, i) for i in range(3)]
    assert not futures[0].done() and futures[0].exception() is None
    batch.complete(40)
    assert [f.get() for f in futures] == [RecordMetadata("t", 2, 40 + i, 1000 + i) for i in range(3)]
    assert all(f.done() and f.succeeded() and not f.failed() for f in futures)


def test_log_append_time_replaces_the_create_time() -> None:
    batch = batch_of(1)
    batch.complete(7, log_append_time_ms=555)
    assert new_record_future(batch, 0).get().timestamp == 555


def test_callbacks_run_on_completion_or_at_once_when_done() -> None:
    batch = batch_of(2)
    seen: list = []
    new_record_future(batch, 1).add_callback(seen.append).add_errback(lambda e: seen.append(("err", e)))
    new_record_future(batch, 0).add_callback(lambda tag, md: seen.append((tag, md.offset)), "tagged")
    assert seen == []
    batch.complete(10)
    assert seen == [RecordMetadata("t", 2, 11, 1001), ("tagged", 10)]
    new_record_future(batch, 0).add_callback(lambda md: seen.append(md.offset))
    assert seen[-1] == 10


def test_errors_reach_errbacks_get_and_exception() -> None:
    batch = batch_of(1)
    future = new_record_future(batch, 0)
    got: list = []
    future.add_errback(got.append)
    future.add_callback(lambda md: got.append("should not run"))
    error = errors.NotEnoughReplicasError("isr too small")
    batch.complete(-1, -1, error)
    assert got == [error]
    assert future.failed() and future.exception() is error
    with pytest.raises(errors.NotEnoughReplicasError):
        future.get()


def test_get_times_out_while_pending() -> None:
    future = new_record_future(batch_of(1), 0)
    with pytest.raises(errors.KafkaTimeoutError):
        future.get(timeout=0.01)


def test_only_the_first_completion_counts_and_a_bad_callback_is_contained() -> None:
    batch = batch_of(1)
    future = new_record_future(batch, 0)
    future.add_callback(lambda md: 1 / 0)
    batch.complete(5)
    batch.complete(-1, -1, errors.NetworkExceptionError("late"))
    assert future.get().offset == 5


def test_get_from_another_thread_wakes_on_completion() -> None:
    batch = batch_of(1)
    future = new_record_future(batch, 0)
    out: list = []
    thread = threading.Thread(target=lambda: out.append(future.get(timeout=30)))
    thread.start()
    batch.complete(3)
    thread.join(timeout=30)
    assert out and out[0].offset == 3
