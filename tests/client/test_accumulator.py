"""The producer's accumulator driven with a fake clock: batching by size and linger,
draining with one batch per partition in flight, retries in order, expiry, memory."""

from __future__ import annotations

import random
import threading

import pytest

from cluster.client import errors
from cluster.client.accumulator import RecordAccumulator
from cluster.client.partitioner import StickyPartitions, partition_for_key

RECORD = 100  # estimated bytes per record in these tests


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def make(batch_size: int = 10 * RECORD, linger_ms: float = 5, buffer_memory: int = 1 << 30,
         delivery_timeout_ms: float = 1000, retry_backoff_ms: float = 100) -> tuple[RecordAccumulator, FakeClock]:
    clock = FakeClock()
    acc = RecordAccumulator(batch_size=batch_size, linger_ms=linger_ms, buffer_memory=buffer_memory,
                            delivery_timeout_ms=delivery_timeout_ms, retry_backoff_ms=retry_backoff_ms,
                            clock=clock, sticky=StickyPartitions(random.Random(3)))
    acc.set_partition_count("t", 3)
    return acc, clock


def append(acc: RecordAccumulator, value: bytes = b"v", key: bytes | None = None, partition: int | None = None):
    return acc.append("t", partition, key, (0, key, value, None), RECORD, 0.1)


def drain(acc: RecordAccumulator, now_s: float, leader: int = 1, room: bool = True):
    with acc.lock:
        acc.close_due(now_s)
        return acc.drain(now_s, lambda topic, partition: leader, lambda node: room)


def test_a_batch_closes_when_the_next_record_does_not_fit() -> None:
    acc, clock = make(batch_size=10 * RECORD)
    futures = [append(acc, partition=0) for _ in range(25)]
    ready, _ = drain(acc, clock.now_s)  # linger not reached: only the two full batches are ready
    batches = ready[1]
    assert len(batches) == 1, "one batch per partition per drain"
    assert [len(b.records) for b in acc.ready[("t", 0)]] == [10]
    assert len(batches[0].records) == 10
    assert futures[0][0] is batches[0] and futures[9][1] == 9
    assert futures[10][0] is not batches[0]


def test_linger_closes_a_partial_batch() -> None:
    acc, clock = make(linger_ms=5)
    append(acc, partition=1)
    assert drain(acc, clock.now_s)[0] == {}
    with acc.lock:
        assert acc.next_wake_s(clock.now_s) == pytest.approx(0.005)
    clock.now_s += 0.004
    assert drain(acc, clock.now_s)[0] == {}
    clock.now_s += 0.002
    ready, _ = drain(acc, clock.now_s)
    assert [len(b.records) for b in ready[1]] == [1]


def test_flush_closes_batches_without_waiting_for_linger() -> None:
    acc, clock = make(linger_ms=10_000)
    append(acc, partition=2)
    with acc.lock:
        acc.flushing += 1
    ready, _ = drain(acc, clock.now_s)
    assert len(ready[1]) == 1


def test_one_batch_per_partition_in_flight_and_retries_keep_order() -> None:
    acc, clock = make(batch_size=2 * RECORD, linger_ms=0)
    for _ in range(6):
        append(acc, partition=0)
    (first,), = drain(acc, clock.now_s)[0].values()
    assert drain(acc, clock.now_s)[0] == {}, "the partition is muted while its batch is in flight"
    with acc.lock:
        acc.requeue(first, clock.now_s)  # a retriable error
    assert drain(acc, clock.now_s)[0] == {}, "the retry waits for the backoff"
    clock.now_s += 0.2
    (again,), = drain(acc, clock.now_s)[0].values()
    assert again is first, "the retried batch goes before the later ones"
    with acc.lock:
        acc.release(first)
    (second,), = drain(acc, clock.now_s)[0].values()
    assert second is not first and second.created_s >= first.created_s


def test_partitions_with_the_same_leader_share_a_drain() -> None:
    acc, clock = make(linger_ms=0)
    for p in range(3):
        append(acc, partition=p)
    ready, _ = drain(acc, clock.now_s)
    assert sorted(b.partition for b in ready[1]) == [0, 1, 2]


def test_a_full_node_or_unknown_leader_holds_batches_back() -> None:
    acc, clock = make(linger_ms=0)
    append(acc, partition=0)
    ready, unknown = drain(acc, clock.now_s, leader=-1)
    assert ready == {} and unknown
    ready, unknown = drain(acc, clock.now_s, room=False)
    assert ready == {} and not unknown
    ready, _ = drain(acc, clock.now_s)
    assert len(ready[1]) == 1


def test_batches_waiting_past_the_delivery_timeout_expire() -> None:
    acc, clock = make(linger_ms=0, delivery_timeout_ms=1000)
    append(acc, partition=0)
    drain(acc, clock.now_s, leader=-1)
    with acc.lock:
        assert acc.expire(clock.now_s + 0.5) == []
        expired = acc.expire(clock.now_s + 1.0)
    assert len(expired) == 1 and len(expired[0].records) == 1


def test_keyed_records_follow_murmur2_and_unkeyed_stick() -> None:
    acc, clock = make(batch_size=1000 * RECORD)
    for i in range(20):
        key = f"k{i}".encode()
        future = append(acc, key=key)
        assert future[0].partition == partition_for_key(key, 3)
    unkeyed = {append(acc)[0].partition for _ in range(50)}
    assert len(unkeyed) == 1, "unkeyed records stick to one partition until its batch closes"


def test_the_sticky_partition_moves_when_its_batch_fills() -> None:
    acc, clock = make(batch_size=5 * RECORD)
    partitions = [append(acc)[0].partition for _ in range(30)]
    runs = [partitions[i:i + 5] for i in range(0, 30, 5)]
    for run in runs:
        assert len(set(run)) == 1, "a batch's records share a partition"
    for a, b in zip(runs, runs[1:]):
        assert a[0] != b[0], "a full sticky batch moves the topic to another partition"


def test_a_record_bigger_than_batch_size_gets_its_own_batch() -> None:
    acc, clock = make(batch_size=2 * RECORD)
    append(acc, partition=0)
    big = acc.append("t", 0, None, (0, None, b"x", None), 5 * RECORD, 0.1)
    assert len(big[0].records) == 1 and big[0].capacity_bytes == 5 * RECORD


def test_append_blocks_when_buffer_memory_is_full_and_times_out() -> None:
    acc, clock = make(batch_size=2 * RECORD, buffer_memory=4 * RECORD, linger_ms=0)
    for _ in range(4):
        append(acc, partition=0)
    with pytest.raises(errors.KafkaTimeoutError):
        append(acc, partition=0)


def test_memory_freed_by_a_completed_batch_unblocks_append() -> None:
    acc, clock = make(batch_size=2 * RECORD, buffer_memory=4 * RECORD, linger_ms=0)
    for _ in range(4):
        append(acc, partition=0)
    (batch,), = drain(acc, clock.now_s)[0].values()
    result: list = []

    def blocked() -> None:
        result.append(acc.append("t", 0, None, (0, None, b"v", None), RECORD, 30.0))

    thread = threading.Thread(target=blocked)
    thread.start()
    batch.complete(0)
    with acc.lock:
        acc.release(batch)
    thread.join(timeout=30)
    assert not thread.is_alive() and len(result) == 1


def test_append_after_close_is_refused() -> None:
    acc, clock = make()
    with acc.lock:
        acc.closing = True
    with pytest.raises(errors.IllegalStateError):
        append(acc, partition=0)


def _check_sticky_slot(acc: RecordAccumulator) -> None:
    for topic, slot in acc.sticky_slots.items():
        assert slot[0] is acc.open[topic][acc.sticky.current[topic]], "the sticky slot lags the accumulator"


def test_a_lingered_batch_keeps_filling_while_its_partition_has_a_batch_in_flight() -> None:
    acc, clock = make(batch_size=100 * RECORD, linger_ms=5)
    append(acc, partition=0)
    clock.now_s += 0.01
    (first,), = drain(acc, clock.now_s)[0].values()
    for _ in range(3):
        append(acc, partition=0)
    clock.now_s += 0.01  # lingered, but partition 0 is muted: the batch stays open
    assert drain(acc, clock.now_s)[0] == {}
    assert acc.open["t"][0] is not None and not acc.ready.get(("t", 0))
    with acc.lock:
        assert acc.next_wake_s(clock.now_s) is None, "only the response may wake the sender for it"
    for _ in range(4):
        append(acc, partition=0)
    first.complete(0)
    with acc.lock:
        acc.release(first)
    (second,), = drain(acc, clock.now_s)[0].values()
    assert len(second.records) == 7, "records that came while the first batch was in flight share one batch"


def test_a_full_batch_still_queues_behind_the_one_in_flight() -> None:
    acc, clock = make(batch_size=2 * RECORD, linger_ms=0)
    for _ in range(2):
        append(acc, partition=0)
    (first,), = drain(acc, clock.now_s)[0].values()
    futures = [append(acc, partition=0) for _ in range(5)]
    assert [len(b.records) for b in acc.ready[("t", 0)]] == [2, 2]
    assert drain(acc, clock.now_s)[0] == {}
    with acc.lock:
        acc.release(first)
    (second,), = drain(acc, clock.now_s)[0].values()
    assert second is futures[0][0], "batches leave in the order they were filled"


def test_unkeyed_records_leave_a_sticky_partition_that_cannot_send() -> None:
    acc, clock = make(batch_size=100 * RECORD, linger_ms=5)
    append(acc, partition=0)
    clock.now_s += 0.01
    drain(acc, clock.now_s)  # partition 0 has a batch in flight
    with acc.lock:
        acc.sticky.current["t"] = 0  # unkeyed records stick to the busy partition
        acc._sync_sticky("t")
    waiting = append(acc)[0]
    assert waiting.partition == 0
    clock.now_s += 0.01
    assert drain(acc, clock.now_s)[0] == {}
    assert acc.open["t"][0] is waiting, "the lingered batch is kept for when the partition frees up"
    moved = append(acc)[0]
    assert moved.partition != 0, "unkeyed records move to a partition that can send"
    _check_sticky_slot(acc)
    ready, _ = drain(acc, clock.now_s + 0.01)
    assert [b.partition for b in ready[1]] == [moved.partition]


def test_flush_closes_lingered_batches_of_busy_partitions_too() -> None:
    acc, clock = make(linger_ms=5)
    append(acc, partition=0)
    clock.now_s += 0.01
    drain(acc, clock.now_s)
    append(acc, partition=0)
    with acc.lock:
        acc.flushing += 1
        acc.close_due(clock.now_s)
    assert acc.open["t"][0] is None and len(acc.ready[("t", 0)]) == 1


def test_the_sticky_slot_follows_every_change() -> None:
    acc, clock = make(batch_size=3 * RECORD, linger_ms=2)
    rng = random.Random(11)
    in_flight = []
    for _ in range(400):
        action = rng.randrange(5)
        if action <= 1:
            append(acc)
        elif action == 2:
            append(acc, partition=rng.randrange(3))
        elif action == 3:
            clock.now_s += 0.001 * rng.randrange(4)
            ready, _ = drain(acc, clock.now_s)
            in_flight.extend(b for bs in ready.values() for b in bs)
        elif in_flight:
            batch = in_flight.pop(rng.randrange(len(in_flight)))
            batch.complete(0)
            with acc.lock:
                acc.release(batch)
        _check_sticky_slot(acc)
    with acc.lock:
        acc.take_all_unsent()
    _check_sticky_slot(acc)


def test_a_drain_takes_the_batches_queued_behind_the_head_up_to_the_request_limit() -> None:
    acc, clock = make(batch_size=2 * RECORD, linger_ms=0)
    acc.request_bytes_max = 5 * RECORD
    for _ in range(10):
        append(acc, partition=0)
    (first, second), = drain(acc, clock.now_s)[0].values()
    assert [len(b.records) for b in (first, second)] == [2, 2]
    assert first.created_s <= second.created_s and len(acc.ready[("t", 0)]) == 3, "a third would pass the limit"
    assert drain(acc, clock.now_s)[0] == {}, "the partition is muted while its request is in flight"
    with acc.lock:
        acc.requeue(second, clock.now_s)
        acc.requeue(first, clock.now_s)
    clock.now_s += 0.2
    (again_first, again_second), = drain(acc, clock.now_s)[0].values()
    assert (again_first, again_second) == (first, second), "retried batches go first, together, in order"
