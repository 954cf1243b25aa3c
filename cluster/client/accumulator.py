"""The producer's record accumulator: per-partition batches between ``send`` and the sender.

Theory of operation
-------------------
Each partition has at most one *open* batch (``open[topic][partition]``) that ``append``
adds records to, and a FIFO of *ready* batches (``ready[(topic, partition)]``) that are
closed and wait for the sender. ``append`` is the producer's hot path (``Producer.send``
and ``produce`` inline the same steps) and takes no lock: it reads the open batch,
subtracts the record's estimated size from the batch's room, appends a ``(timestamp_ms,
key, value, headers)`` tuple to the batch's ``open_records`` list (one ``list.append``,
atomic under the GIL) and returns a ``RecordFuture`` tuple; it neither encodes nor
allocates per record beyond those two tuples. Everything else (a full batch, a new batch,
waiting for memory) is ``append_locked``, the slow path, under ``lock``.
``sticky_slots[topic]`` is a one-element list holding the open batch of the topic's sticky
partition (or None), kept in step with ``open`` and the sticky choice by every method that
changes either, so the unkeyed fast path finds its batch with one dict lookup.

Closing without losing a concurrent append. The sender (linger, flush), a reader thread
(after a response) and an appender (a full batch) close batches, always under the lock,
while other appenders may be between reading a batch and appending to it. Closing *seals*
the batch (``_seal``): it sets ``sealed``, then copies ``open_records`` into ``records``,
the list that travels and that no appender holds. An appender checks ``sealed`` after its
append. Reading False means its append came before the flag was set, hence before the
copy: the record is in the batch. Reading True (rare), it takes the lock (so the copy is
done) and looks for its own tuple, by identity, in the copy (``place_late``): found, it
stays; missing (the append came after the copy), it is appended again through the slow
path, to the partition's current open batch (the topic's sticky one for an unkeyed
record), before ``append`` returns. So a record travels exactly once, and each thread's
records keep their order per partition. A future's index is ``len(open_records) - 1``
after the append, checked by identity because another thread may have appended in between.
``room_bytes`` is decremented without the lock too: two appenders at once may lose one
decrement, letting a batch take a record more than its estimate; the estimate's
per-record margin covers that, and a batch the node still refuses as too large is split
(see ``sender``).

A batch closes when the next record would push its estimated size past ``batch_size``
(``append`` starts a new one; a record larger than ``batch_size`` gets a batch of its own),
when it is ``linger_ms`` old and its partition is not *busy* (no request of the
partition in flight), or at once while a flush or close is in progress (``close_due``). A
lingered batch whose partition is busy stays open and keeps filling until the response
frees the partition, so a partition's records ride in few large batches however long its
round trips take. (Without ``request_bytes_max`` a partition with batches queued is busy
too: each request then carries one batch, and closing a lingered batch behind a queue
would cap the partition at one small batch per round trip.) Closing the sticky
partition's batch, or finding it lingered on a busy partition, moves the topic's unkeyed
records to another partition (one that can send, if any).

The sender (``drain``) takes the head batch of each ready partition whose leader is known
and whose leader has room for another request in flight, together with the batches queued
behind it as long as they fit in ``request_bytes_max`` (the producer's
``max_request_size``), and *mutes* the partition until the response arrives (``requeue``
or ``release``); a batch marked ``alone`` (its shared record set was refused) goes by
itself. One request at a time per partition, so a retried batch can never be
overtaken by a later one of the same partition: per-partition order holds across retries,
with several requests in flight to one broker as long as they carry different partitions.
Sending the queued batches of a partition together (the node appends them in order, at
consecutive offsets) is what keeps a busy partition moving more than one batch per round
trip without giving up that order. (acks=0 batches are not muted: they get no response
and are never retried.)

Memory: ``buffered_bytes`` counts the estimated bytes of every closed, incomplete batch
(open batches add at most ``batch_size`` per partition); when opening a batch would pass
``buffer_memory``, ``append`` waits (up to ``max_block_s``) for batches to complete. No
per-record accounting: a batch tracks only the room it has left, and its size is known
when it is sealed. Batches waiting in ``ready`` longer than ``delivery_timeout_ms`` since
creation are expired by ``expire``.

Decision methods (``close_due``, ``drain``, ``expire``, ``next_wake_s``) take ``now_s`` and
do no I/O; they are called with ``lock`` held. ``clock`` (``time.monotonic`` by default)
is read only when a batch is created. The lock guards everything but the open batches'
``open_records`` and ``room_bytes``: ``open``, ``ready``, ``muted``, memory, the sticky
choice, and the sealing of a batch.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Callable

from cluster.client import errors
from cluster.client.futures import ProducerBatch, RecordFuture
from cluster.client.partitioner import StickyPartitions, positive_murmur2

# Estimated msgpack bytes per record beyond key and value: array header, timestamp,
# two bin headers, nil headers. Generous, so a batch never outgrows
# the estimate.
RECORD_OVERHEAD_BYTES = 24
HEADER_OVERHEAD_BYTES = 8

TopicPartitionKey = tuple[str, int]


def _seal(batch: ProducerBatch) -> None:
    """Freeze an open batch's records (lock held). ``sealed`` goes first: an appender that
    reads it False after its append appended before the copy, so its record is in it."""
    batch.sealed = True
    batch.records = list(batch.open_records)
    # After the copy: every copied record's size was taken from the room before its append.
    batch.size_bytes = batch.capacity_bytes - batch.room_bytes


def _index_of(records: list, record: tuple) -> int:
    """The position of this very tuple (equal ones may be elsewhere), -1 if absent."""
    for index in range(len(records) - 1, -1, -1):
        if records[index] is record:
            return index
    return -1


class RecordAccumulator:
    def __init__(
        self,
        *,
        batch_size: int,
        linger_ms: float,
        buffer_memory: int,
        delivery_timeout_ms: float,
        retry_backoff_ms: float,
        mute_in_flight: bool = True,
        request_bytes_max: int = 0,
        clock: Callable[[], float] = time.monotonic,
        sticky: StickyPartitions | None = None,
    ) -> None:
        self.batch_size = batch_size
        self.request_bytes_max = request_bytes_max  # 0: one batch per partition per request
        self.linger_s = linger_ms / 1000
        self.buffer_memory = buffer_memory
        self.delivery_timeout_s = delivery_timeout_ms / 1000
        self.retry_backoff_s = retry_backoff_ms / 1000
        self.mute_in_flight = mute_in_flight
        self.clock = clock
        self.lock = threading.Lock()
        self.sender_wakeup = threading.Condition(self.lock)
        self.space_freed = threading.Condition(self.lock)
        self.open: dict[str, list[ProducerBatch | None]] = {}
        self.ready: dict[TopicPartitionKey, collections.deque[ProducerBatch]] = {}
        self.muted: set[TopicPartitionKey] = set()
        self.incomplete: set[ProducerBatch] = set()
        self.buffered_bytes = 0
        self.flushing = 0
        self.closing = False
        self.sticky = sticky or StickyPartitions()
        self._sticky_current = self.sticky.current
        self.sticky_slots: dict[str, list[ProducerBatch | None]] = {}

    # -- topics -------------------------------------------------------------------------

    def set_partition_count(self, topic: str, num_partitions: int) -> None:
        """Start accepting records for ``topic`` or grow its partitions. Takes the lock."""
        with self.lock:
            batches = self.open.get(topic)
            if batches is None:
                self.open[topic] = [None] * num_partitions
                self.sticky.choose(topic, num_partitions)
                self.sticky_slots[topic] = [None]
            elif num_partitions > len(batches):
                batches.extend([None] * (num_partitions - len(batches)))

    def _sync_sticky(self, topic: str) -> None:
        """Point the topic's sticky slot at its sticky partition's open batch (lock held)."""
        self.sticky_slots[topic][0] = self.open[topic][self._sticky_current[topic]]

    # -- the hot path ---------------------------------------------------------------------

    def append(self, topic: str, partition: int | None, key: bytes | None, record: tuple, size: int,
               max_block_s: float) -> RecordFuture:
        """Add one record (``partition`` None: keyed hash or sticky choice) without the lock
        unless its batch is full or missing, or was sealed under it (see the module docs).

        The producer's ``send`` and ``produce`` inline these steps for unkeyed records.
        """
        batches = self.open[topic]
        sticky = partition is None and key is None
        if sticky:
            partition = -1  # chosen under the lock if the slow path runs
            batch = self.sticky_slots[topic][0]
        else:
            if partition is None:
                partition = positive_murmur2(key) % len(batches)
            batch = batches[partition]
        if batch is None or batch.room_bytes < size:
            return RecordFuture(self.append_locked(topic, partition, sticky, record, size, max_block_s))
        batch.room_bytes -= size
        records = batch.open_records
        records.append(record)
        index = len(records) - 1
        if batch.sealed or records[index] is not record:
            return RecordFuture(self.place_late(batch, topic, partition, sticky, record, size, max_block_s))
        return RecordFuture((batch, index))

    def append_locked(self, topic: str, partition: int, sticky: bool, record: tuple, size: int,
                      max_block_s: float) -> tuple[ProducerBatch, int]:
        """The slow path of ``append``: under the lock, into a batch with room (opened if need
        be); a ``sticky`` record goes to the topic's sticky partition. Returns its place."""
        with self.lock:
            if sticky:
                partition = self._sticky_current[topic]
            batch = self.open[topic][partition]
            if batch is None or batch.room_bytes < size:
                batch = self.batch_with_room(topic, partition, sticky, size, max_block_s)
            assert not batch.sealed, "an open batch is sealed only when it leaves open[]"
            batch.room_bytes -= size
            records = batch.open_records
            records.append(record)
            index = len(records) - 1
            if records[index] is not record:  # a lock-free append came in between
                index = _index_of(records, record)
            return batch, index

    def place_late(self, batch: ProducerBatch, topic: str, partition: int, sticky: bool, record: tuple,
                   size: int, max_block_s: float) -> tuple[ProducerBatch, int]:
        """Find where a lock-free append landed: in ``batch`` if the seal's copy holds it,
        else (it came after the copy) appended again under the lock, to the partition's
        open batch (the topic's sticky one for a ``sticky`` record)."""
        with self.lock:
            # Sealing happens under the lock: holding it, ``records`` is the final copy.
            index = _index_of(batch.records, record)
        if index >= 0:
            return batch, index
        return self.append_locked(topic, partition, sticky, record, size, max_block_s)

    def batch_with_room(self, topic: str, partition: int, sticky: bool, size: int,
                        max_block_s: float) -> ProducerBatch:
        """The slow path of ``append`` (lock held): close a full batch, wait for memory, open one.

        A ``sticky`` record (unkeyed, not placed explicitly) whose batch just closed follows
        the topic to its new sticky partition; a keyed or explicitly placed one stays put.
        """
        if self.closing:
            raise errors.IllegalStateError("send() after the producer was closed")
        batches = self.open[topic]
        batch = batches[partition]
        if batch is not None:
            was_sticky = sticky and self._sticky_current.get(topic) == partition
            self._close(batch)
            if was_sticky:
                partition = self._sticky_current[topic]
                batch = batches[partition]
                if batch is not None and batch.room_bytes >= size:
                    return batch
                if batch is not None:
                    self._close(batch)
        capacity = max(self.batch_size, size)
        if self.buffered_bytes + capacity > self.buffer_memory and self.buffered_bytes:
            self._wait_for_space(capacity, max_block_s)
            batch = batches[partition]
            if batch is not None and batch.room_bytes >= size:
                return batch
            if batch is not None:
                self._close(batch)
        batch = ProducerBatch(topic, partition, self.clock(), capacity)
        batches[partition] = batch
        self.incomplete.add(batch)
        self._sync_sticky(topic)
        self.sender_wakeup.notify()
        return batch

    def _close(self, batch: ProducerBatch) -> None:
        """Move an open batch to its partition's ready queue; switch the sticky partition."""
        topic, partition = batch.topic, batch.partition
        batches = self.open[topic]
        batches[partition] = None
        _seal(batch)
        self.buffered_bytes += batch.size_bytes
        key = (topic, partition)
        queue = self.ready.get(key)
        if queue is None:
            queue = self.ready[key] = collections.deque()
        queue.append(batch)
        self.sticky.next_partition(topic, partition, len(batches))
        self._sync_sticky(topic)
        self.sender_wakeup.notify()

    def _wait_for_space(self, size: int, max_block_s: float) -> None:
        deadline = time.monotonic() + max_block_s
        while self.buffered_bytes + size > self.buffer_memory and self.buffered_bytes and not self.closing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise errors.KafkaTimeoutError(
                    f"buffer_memory of {self.buffer_memory} bytes full for {max_block_s * 1000:.0f} ms")
            self.flushing += 1  # sending what is buffered is the only way to free space
            self.sender_wakeup.notify()
            try:
                self.space_freed.wait(remaining)
            finally:
                self.flushing -= 1
        if self.closing:
            raise errors.IllegalStateError("send() after the producer was closed")

    # -- the sender's side (lock held) ------------------------------------------------------

    def close_due(self, now_s: float) -> None:
        """Close open batches that lingered long enough and can be sent now (all of them
        while flushing/closing).

        A lingered batch whose partition is busy (``_busy``) stays open and keeps filling
        until it is full or the partition frees up. If it is the sticky partition, unkeyed
        records move to another one meanwhile.
        """
        force = self.flushing > 0 or self.closing
        deadline = now_s - self.linger_s
        for topic, batches in self.open.items():
            for batch in batches:
                if batch is None or not (force or batch.created_s <= deadline):
                    continue
                if not force and self._busy((topic, batch.partition)):
                    if self._sticky_current.get(topic) == batch.partition:
                        self._move_sticky(topic, batch.partition, len(batches))
                    continue
                self._close(batch)

    def _busy(self, key: TopicPartitionKey) -> bool:
        """The partition cannot take a lingered batch in its next request: it has one in
        flight, or (one batch per request) batches queued before it."""
        return key in self.muted or (not self.request_bytes_max and bool(self.ready.get(key)))

    def _move_sticky(self, topic: str, busy_partition: int, num_partitions: int) -> None:
        """Move the topic's unkeyed records off ``busy_partition``, to a partition that can
        send at once when there is one."""
        muted = self.muted
        ready = self.ready
        for step in range(1, num_partitions):  # the next free one after it, round robin
            partition = (busy_partition + step) % num_partitions
            if (topic, partition) not in muted and not ready.get((topic, partition)):
                self._sticky_current[topic] = partition
                self._sync_sticky(topic)
                return
        self.sticky.next_partition(topic, busy_partition, num_partitions)
        self._sync_sticky(topic)

    def drain(self, now_s: float, leader_for: Callable[[str, int], int],
              node_has_room: Callable[[int], bool]) -> tuple[dict[int, list[ProducerBatch]], bool]:
        """Take the sendable batches, grouped by leader (a partition's in queue order, the
        head and what fits behind it in ``request_bytes_max``); also say if a leader was
        unknown."""
        out: dict[int, list[ProducerBatch]] = {}
        leader_unknown = False
        full_nodes: set[int] = set()
        for key, queue in self.ready.items():
            if not queue or key in self.muted:
                continue
            head = queue[0]
            if head.retry_at_s > now_s:
                continue
            leader = leader_for(key[0], key[1])
            if leader < 0:
                leader_unknown = True
                continue
            if leader in full_nodes:
                continue
            if leader not in out and not node_has_room(leader):
                full_nodes.add(leader)
                continue
            queue.popleft()
            if self.mute_in_flight:
                self.muted.add(key)
            taken = out.setdefault(leader, [])
            taken.append(head)
            room = 0 if head.alone else self.request_bytes_max - head.size_bytes
            while queue and queue[0].size_bytes <= room and queue[0].retry_at_s <= now_s and not queue[0].alone:
                room -= queue[0].size_bytes
                taken.append(queue.popleft())
        return out, leader_unknown

    def expire(self, now_s: float) -> list[ProducerBatch]:
        """Remove and return ready batches older than the delivery timeout (none in flight)."""
        expired: list[ProducerBatch] = []
        deadline = now_s - self.delivery_timeout_s
        for queue in self.ready.values():
            while queue and queue[0].created_s <= deadline:
                expired.append(queue.popleft())
        return expired

    def next_wake_s(self, now_s: float) -> float | None:
        """Seconds until some batch needs the sender again (None: only an event will)."""
        wake: float | None = None
        if not (self.flushing or self.closing):
            for topic, batches in self.open.items():
                for batch in batches:
                    if batch is not None:
                        if self._busy((topic, batch.partition)):
                            continue  # its partition's response or queue wakes the sender
                        t = batch.created_s + self.linger_s
                        wake = t if wake is None or t < wake else wake
        for key, queue in self.ready.items():
            if queue:
                t = queue[0].created_s + self.delivery_timeout_s
                if key not in self.muted:
                    t = min(t, queue[0].retry_at_s)
                wake = t if wake is None or t < wake else wake
        return None if wake is None else max(0.0, wake - now_s)

    def requeue(self, batch: ProducerBatch, now_s: float) -> None:
        """Put a failed batch back at the head of its partition for a retry after the backoff."""
        key = (batch.topic, batch.partition)
        batch.retry_at_s = now_s + self.retry_backoff_s
        queue = self.ready.get(key)
        if queue is None:
            queue = self.ready[key] = collections.deque()
        queue.appendleft(batch)
        self.muted.discard(key)
        self.sender_wakeup.notify()

    def unmute(self, batch: ProducerBatch) -> None:
        self.muted.discard((batch.topic, batch.partition))

    def release(self, batch: ProducerBatch) -> None:
        """Forget a batch that completed (either way): free its buffer space."""
        if batch in self.incomplete:
            self.incomplete.discard(batch)
            self.buffered_bytes -= batch.size_bytes
            self.space_freed.notify_all()
        self.muted.discard((batch.topic, batch.partition))
        if not self.incomplete:
            self.sender_wakeup.notify_all()

    def has_unsent(self) -> bool:
        return any(self.ready.values()) or any(b is not None for bs in self.open.values() for b in bs)

    def take_all_unsent(self) -> list[ProducerBatch]:
        """Remove and return every open and ready batch (for an aborting close)."""
        out: list[ProducerBatch] = []
        for batches in self.open.values():
            for i, batch in enumerate(batches):
                if batch is not None:
                    _seal(batch)
                    self.buffered_bytes += batch.size_bytes  # release() takes it off again
                    out.append(batch)
                    batches[i] = None
        for slot in self.sticky_slots.values():
            slot[0] = None
        for queue in self.ready.values():
            out.extend(queue)
            queue.clear()
        return out
