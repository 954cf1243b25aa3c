"""The accumulator's lock-free append under real threads: several application threads
append while a drainer closes batches at once (linger 0) and sends them, so seals race
appends. Every record must travel exactly once, in each thread's order per partition, and
each future must point at its own record.

The GIL switch interval is set to a microsecond while the threads run, so threads are
preempted between an append and its check of ``sealed`` far more often than in use.
"""

from __future__ import annotations

import collections
import contextlib
import sys
import threading
import time
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from cluster.client import accumulator
from cluster.client.accumulator import RecordAccumulator
from cluster.client.futures import ProducerBatch, RecordFuture
from cluster.client.partitioner import partition_for_key

pytestmark = pytest.mark.timeout(120)

RECORD = 10  # estimated bytes per record
PARTITIONS = 3
JOIN_TIMEOUT_S = 60.0
SWITCH_INTERVAL_S = 1e-6


@contextlib.contextmanager
def fast_switches() -> Iterator[None]:
    previous = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


class PreemptedList(list):
    """An open batch's record list whose appends let other threads run just before and just
    after them: where a preempted appender would be when a seal comes."""

    def append(self, record: Any) -> None:
        time.sleep(0)  # gives up the GIL: a preemption point, not a wait for a condition
        super().append(record)
        time.sleep(0)


class PreemptedBatch(ProducerBatch):
    __slots__ = ()

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.open_records = self.records = PreemptedList()


class CountingAccumulator(RecordAccumulator):
    """Counts the appends that found their batch sealed or their index taken (the race)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.moved = 0  # appends that landed after their batch's seal and went again

    def place_late(self, batch: ProducerBatch, *args: Any) -> tuple[ProducerBatch, int]:
        placed = super().place_late(batch, *args)
        self.moved += placed[0] is not batch
        return placed


class Drainer(threading.Thread):
    """The sender's part with linger 0 and an always-known leader: close what is open,
    take what is sendable, "send" it (keep its records in order per partition) and complete
    it at once, which unmutes the partition."""

    def __init__(self, acc: RecordAccumulator) -> None:
        super().__init__(name="test-drainer", daemon=True)
        self.acc = acc
        self.stop = threading.Event()
        self.sent: dict[int, list[tuple]] = collections.defaultdict(list)

    def run(self) -> None:
        acc = self.acc
        while True:
            stopping = self.stop.is_set()
            with acc.lock:
                now_s = acc.clock()
                acc.close_due(now_s)
                ready, _ = acc.drain(now_s, lambda topic, partition: 1, lambda node: True)
                taken = [batch for batches in ready.values() for batch in batches]
                if not taken and stopping and not acc.has_unsent():
                    return
            for batch in taken:
                assert batch.sealed
                self.sent[batch.partition].extend(batch.records)
                batch.complete(0)
            with acc.lock:
                for batch in taken:
                    acc.release(batch)


def run_appenders(acc: RecordAccumulator, threads: int, per_thread: int, mode: str) -> list[list[tuple]]:
    """Each thread appends ``per_thread`` records ``(seq, key, thread id, None)``; ``mode``
    chooses unkeyed (sticky), keyed by thread, explicit partition, or a mix. Returns each
    thread's (future, record, partition asked for) in append order."""
    placed: list[list[tuple]] = [[] for _ in range(threads)]
    start = threading.Barrier(threads)

    def append(thread_id: int) -> None:
        start.wait()
        out = placed[thread_id]
        key = b"k%d" % thread_id
        for seq in range(per_thread):
            kind = mode if mode != "mixed" else ("sticky", "keyed", "explicit")[(seq + thread_id) % 3]
            record: tuple
            if kind == "sticky":
                record, partition = (seq, None, thread_id, None), None
            elif kind == "keyed":
                record, partition = (seq, key, thread_id, None), None
            else:
                record, partition = (seq, None, thread_id, None), seq % PARTITIONS
            future = acc.append("t", partition, record[1], record, RECORD, 5.0)
            out.append((future, record, partition))

    workers = [threading.Thread(target=append, args=(t,), name=f"test-appender-{t}") for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(JOIN_TIMEOUT_S)
        assert not worker.is_alive(), "an appender is stuck"
    return placed


@pytest.fixture
def preempted_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accumulator, "ProducerBatch", PreemptedBatch)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(threads=st.integers(2, 4), per_thread=st.integers(200, 1500), batch_records=st.integers(1, 40),
       mode=st.sampled_from(["sticky", "keyed", "explicit", "mixed"]))
def test_concurrent_appends_travel_exactly_once_in_order(preempted_batches: None, threads: int, per_thread: int,
                                                         batch_records: int, mode: str) -> None:
    run_and_check(threads, per_thread, batch_records, mode)


def test_the_stress_run_does_race_seals(preempted_batches: None) -> None:
    """Without appends that land after a seal the test above would prove nothing."""
    acc = run_and_check(threads=4, per_thread=2000, batch_records=5, mode="mixed")
    assert acc.moved > 0


def run_and_check(threads: int, per_thread: int, batch_records: int, mode: str) -> CountingAccumulator:
    acc = CountingAccumulator(batch_size=batch_records * RECORD, linger_ms=0, buffer_memory=1 << 30,
                            delivery_timeout_ms=60_000, retry_backoff_ms=0, request_bytes_max=4 * batch_records * RECORD)
    acc.set_partition_count("t", PARTITIONS)
    drainer = Drainer(acc)
    drainer.start()
    try:
        with fast_switches():
            placed = run_appenders(acc, threads, per_thread, mode)
    finally:
        drainer.stop.set()
        with acc.lock:
            acc.flushing += 1  # what is still open closes now
            acc.sender_wakeup.notify_all()
        drainer.join(JOIN_TIMEOUT_S)
    assert not drainer.is_alive(), "the drainer is stuck"

    sent = [record for records in drainer.sent.values() for record in records]
    sent_ids = {id(r) for r in sent}
    assert len(sent_ids) == len(sent), f"{len(sent) - len(sent_ids)} record(s) sent twice"
    appended = {id(record) for out in placed for _, record, _ in out}
    assert not appended - sent_ids, f"{len(appended - sent_ids)} of {len(appended)} record(s) lost"
    assert sent_ids <= appended, "a record nobody appended was sent"

    for partition, records in drainer.sent.items():
        last_seq: dict[int, int] = {}
        for seq, _, thread_id, _ in records:
            assert seq > last_seq.get(thread_id, -1), f"thread {thread_id}'s records reordered in partition {partition}"
            last_seq[thread_id] = seq

    partition_of = {id(r): p for p, records in drainer.sent.items() for r in records}
    for out in placed:
        for future, record, asked in out:
            batch, index = future
            assert isinstance(future, RecordFuture)
            assert batch.records[index] is record, "the future points at another record"
            if asked is not None:
                assert partition_of[id(record)] == asked
            elif record[1] is not None:
                assert partition_of[id(record)] == partition_for_key(record[1], PARTITIONS)
    with acc.lock:
        assert acc.buffered_bytes == 0 and not acc.incomplete
    return acc


def test_a_record_appended_after_the_seal_moves_to_the_next_batch() -> None:
    """The race, step by step: an appender holds a batch, the batch is sealed, then the
    append lands in the old list. The appender finds it missing from the sealed copy and
    appends it again, so it travels once."""
    clock_s = [100.0]
    acc = RecordAccumulator(batch_size=10 * RECORD, linger_ms=0, buffer_memory=1 << 30, delivery_timeout_ms=60_000,
                            retry_backoff_ms=0, clock=lambda: clock_s[0])
    acc.set_partition_count("t", 1)
    first = (0, None, b"first", None)
    acc.append("t", 0, None, first, RECORD, 1.0)
    batch = acc.open["t"][0]
    assert batch is not None
    with acc.lock:
        acc.close_due(clock_s[0])  # linger 0: sealed and queued
    assert batch.sealed and batch.records == [first]
    late = (1, None, b"late", None)
    batch.open_records.append(late)  # what a preempted appender does after the seal
    moved_to, index = acc.place_late(batch, "t", 0, False, late, RECORD, 1.0)
    assert moved_to is not batch and moved_to.records[index] is late
    assert batch.records == [first], "the sealed copy does not change"
    kept_in, kept_index = acc.place_late(batch, "t", 0, False, first, RECORD, 1.0)
    assert kept_in is batch and kept_index == 0, "a record the copy holds stays where it is"


def test_equal_records_keep_their_own_places() -> None:
    """Identical timestamps and values are common (a value pool, one ms): a future must
    point at its own tuple, not an equal one."""
    acc = RecordAccumulator(batch_size=100 * RECORD, linger_ms=0, buffer_memory=1 << 30, delivery_timeout_ms=60_000,
                            retry_backoff_ms=0)
    acc.set_partition_count("t", 1)
    records = [tuple([5, None, b"same", None]) for _ in range(4)]  # equal, not the same object
    futures = [acc.append("t", 0, None, record, RECORD, 1.0) for record in records]
    batch = acc.open["t"][0]
    assert batch is not None
    with acc.lock:
        acc.close_due(time.monotonic())
    late = acc.place_late(batch, "t", 0, False, records[2], RECORD, 1.0)
    assert late == (batch, 2)
    assert [index for _, index in futures] == [0, 1, 2, 3]

