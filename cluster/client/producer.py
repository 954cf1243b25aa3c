"""The producer: ``send`` records to topics, get futures that complete when they are acknowledged.

Theory of operation
-------------------
``Producer`` is the shell that wires three parts together and owns their lifetimes:

* a ``NetworkClient`` (connections, cluster metadata),
* a ``RecordAccumulator`` (per-partition batches; ``send`` appends to it),
* a ``Sender`` thread (drains the accumulator into Produce requests, completes batches).

``send`` returns a future per record; ``produce`` is the same without one (an optional
``on_delivery`` callback instead), for callers that need no per-record outcome: the
future's allocation and release are a fifth of the per-record cost.

``send`` checks the record's estimated size against ``max_request_size`` at once, stamps it
with the wall-clock time (Kafka's CreateTime, per record) and appends a ``(timestamp_ms,
key, value, headers)`` tuple to its partition's open batch without a lock: the steps of
``RecordAccumulator.append``, inlined for unkeyed records, because this is the per-record
cost of producing. The accumulator's lock is taken only to open or close a batch, or when
an append finds that its batch was sealed under it (see the accumulator for why no record
is lost or doubled then). Unkeyed records with a bytes value take a straight-line fast
path (``send``'s and ``produce``'s, the same lines) that finds the open batch of the
topic's sticky partition with one lookup (the accumulator's sticky slot); keys (murmur2
partitioning), headers, explicit partitions and str values take ``_send_general``, which
calls ``RecordAccumulator.append``. The first send to a topic blocks (up to
``max_block_ms``) until its metadata is known. Nothing on this path encodes a record.

Delivery: see ``sender``. Per-partition order holds across retries (one request per
partition in flight); ``max_in_flight_requests_per_connection`` bounds the requests
pipelined to one broker, over different partitions. A retry after a lost connection may
write a batch twice.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any, Callable, Iterable

from cluster.client import errors
from cluster.client.accumulator import HEADER_OVERHEAD_BYTES, RECORD_OVERHEAD_BYTES, RecordAccumulator
from cluster.client.futures import RecordFuture
from cluster.client.network import NetworkClient
from cluster.client.sender import Sender
from cluster.client.structs import RecordMetadata
from cluster.protocol.api import ACKS_ALL, ACKS_LEADER, ACKS_NONE
from storage.batch import HEADER_BYTES

log = logging.getLogger(__name__)

# Measured with 100-byte records, acks=1, one local node, 4 partitions: 16 KiB ~130k
# records/s, 64 KiB ~210k, 256 KiB ~285k, 1 MB ~295k. 256 KiB is on the plateau and stays
# well under the node's default 1 MiB message limit.
DEFAULT_BATCH_SIZE_BYTES = 262144
DEFAULT_BUFFER_MEMORY_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_REQUEST_SIZE_BYTES = 1048576
BATCH_ENVELOPE_BYTES = HEADER_BYTES + 5  # the fixed header plus the msgpack array header
RETRIES_MAX = 2147483647
FORCE_CLOSE_JOIN_S = 1.0

_time_ns = time.time_ns


def _acks_value(acks: int | str) -> int:
    if acks == "all" or acks == ACKS_ALL:
        return ACKS_ALL
    if acks in (ACKS_NONE, ACKS_LEADER) and not isinstance(acks, bool):
        return int(acks)
    if isinstance(acks, str) and acks.lstrip("-").isdigit():
        return _acks_value(int(acks))
    raise errors.ConfigError(f"acks must be 0, 1, -1 or 'all', got {acks!r}")


def _to_bytes(data: Any, what: str) -> bytes:
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    if isinstance(data, bytes):
        return bytes(data)
    raise TypeError(f"record {what} must be bytes or str, got {type(data).__name__}")


def _as_delivery_error(on_delivery: Callable[[BaseException | None, Any], Any], error: BaseException) -> None:
    on_delivery(error, None)


def _normalize_headers(headers: Any) -> tuple[list[tuple[str, bytes | None]], int]:
    pairs = headers.items() if isinstance(headers, dict) else headers
    out: list[tuple[str, bytes | None]] = []
    size = 0
    for name, value in pairs:
        if not isinstance(name, str):
            raise TypeError(f"header name must be str, got {type(name).__name__}")
        if value is not None and type(value) is not bytes:
            value = _to_bytes(value, f"header {name!r} value")
        out.append((name, value))
        size += len(name) + (len(value) if value is not None else 0) + HEADER_OVERHEAD_BYTES
    return out, size


class Producer:
    """Thread-safe: any number of threads may call ``send`` at once."""

    DEFAULT_BATCH_SIZE = DEFAULT_BATCH_SIZE_BYTES  # bytes; read by tools that size their own batches

    def __init__(
        self,
        bootstrap_servers: str | list[str] = "127.0.0.1:9092",
        *,
        acks: int | str = "all",
        linger_ms: float = 5,
        batch_size: int = DEFAULT_BATCH_SIZE_BYTES,
        buffer_memory: int = DEFAULT_BUFFER_MEMORY_BYTES,
        max_block_ms: int = 60000,
        max_request_size: int = DEFAULT_MAX_REQUEST_SIZE_BYTES,
        retries: int = RETRIES_MAX,
        retry_backoff_ms: int = 100,
        request_timeout_ms: int = 30000,
        delivery_timeout_ms: int = 120000,
        max_in_flight_requests_per_connection: int = 5,
        metadata_max_age_ms: int = 300000,
        connect_timeout_ms: int = 10000,
        client_id: str = "kraft-producer",
    ) -> None:
        self.acks = _acks_value(acks)
        for name, value in (("batch_size", batch_size), ("buffer_memory", buffer_memory),
                            ("max_request_size", max_request_size),
                            ("max_in_flight_requests_per_connection", max_in_flight_requests_per_connection),
                            ("request_timeout_ms", request_timeout_ms), ("delivery_timeout_ms", delivery_timeout_ms)):
            if not isinstance(value, int) or value <= 0:
                raise errors.ConfigError(f"{name} must be a positive integer, got {value!r}")
        if linger_ms < 0 or retries < 0 or retry_backoff_ms < 0 or max_block_ms < 0:
            raise errors.ConfigError("linger_ms, retries, retry_backoff_ms and max_block_ms must not be negative")
        self.max_block_ms = max_block_ms
        self.max_request_size = max_request_size
        self._max_block_s = max_block_ms / 1000
        self._record_bytes_max = max_request_size - BATCH_ENVELOPE_BYTES
        self._client = NetworkClient(
            bootstrap_servers, client_id=client_id, request_timeout_ms=request_timeout_ms,
            connect_timeout_ms=connect_timeout_ms, retry_backoff_ms=retry_backoff_ms,
            metadata_max_age_ms=metadata_max_age_ms)
        self._retry_backoff_s = retry_backoff_ms / 1000
        self._accumulator = RecordAccumulator(
            batch_size=min(batch_size, self._record_bytes_max), linger_ms=linger_ms, buffer_memory=buffer_memory,
            delivery_timeout_ms=delivery_timeout_ms, retry_backoff_ms=retry_backoff_ms,
            mute_in_flight=self.acks != ACKS_NONE, request_bytes_max=self._record_bytes_max)
        self._topics: set[str] = set()
        # The accumulator's state that send() touches, bound once.
        self._open = self._accumulator.open
        self._sticky_slots = self._accumulator.sticky_slots
        self._append_locked = self._accumulator.append_locked
        self._place_late = self._accumulator.place_late
        self._sender = Sender(
            self._client, self._accumulator, acks=self.acks, retries=retries,
            request_timeout_ms=request_timeout_ms, max_in_flight=max_in_flight_requests_per_connection,
            topics=lambda: self._topics, on_metadata=self.refresh_partition_counts)
        self._closed = False
        self._sender.start()
        log.debug("producer %s started (acks=%s)", client_id, self.acks)

    # -- sending ------------------------------------------------------------------------

    def send(
        self,
        topic: str,
        value: bytes | str | None = None,
        key: bytes | str | None = None,
        headers: Iterable[tuple[str, bytes | str | None]] | dict | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> RecordFuture:
        """Queue one record; the future's ``get()`` gives its ``RecordMetadata``.

        Raises at once MESSAGE_TOO_LARGE for a record over ``max_request_size``, and a
        timeout when the topic's metadata or buffer space is not available within
        ``max_block_ms``.
        """
        if key is not None or headers is not None or partition is not None or type(value) is not bytes:
            return self._send_general(topic, value, key, headers, partition, timestamp_ms)
        # The common case (bytes value, no key, headers or partition) in straight-line code:
        # these lines are the producer's per-record cost. They are RecordAccumulator.append's
        # for a sticky record, inlined: no lock unless the batch is full, missing or sealed.
        # The sticky slot holds the open batch of the topic's sticky partition.
        size = len(value) + RECORD_OVERHEAD_BYTES
        if size > self._record_bytes_max:
            raise self._too_large(size)
        batch = (self._sticky_slots.get(topic) or self._sticky_slot(topic))[0]
        record = (_time_ns() // 1_000_000 if timestamp_ms is None else timestamp_ms, None, value, None)
        if batch is None or batch.room_bytes < size:
            return RecordFuture(self._append_locked(topic, -1, True, record, size, self._max_block_s))
        batch.room_bytes -= size
        records = batch.open_records
        records.append(record)
        index = len(records) - 1
        if batch.sealed or records[index] is not record:
            return RecordFuture(self._place_late(batch, topic, -1, True, record, size, self._max_block_s))
        return RecordFuture((batch, index))

    def produce(
        self,
        topic: str,
        value: bytes | str | None = None,
        key: bytes | str | None = None,
        headers: Iterable[tuple[str, bytes | str | None]] | dict | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        on_delivery: Callable[[BaseException | None, RecordMetadata | None], Any] | None = None,
    ) -> None:
        """Queue one record without a future (fire and forget, as confluent-kafka's
        ``produce``): ``on_delivery(error, metadata)`` is called once it is acknowledged
        (error None) or has failed (metadata None), in a producer thread.

        Without ``on_delivery`` a failure is only counted (``metrics()["failed_records"]``)
        and logged. Raises at once as ``send`` does. A future costs ~0.5 us of the producer's
        ~2.2 us of CPU per record with ``send`` (its allocation and release): this is the
        fast path for callers that need no per-record outcome.
        """
        if (on_delivery is not None or key is not None or headers is not None or partition is not None
                or type(value) is not bytes):
            future = self.send(topic, value, key, headers, partition, timestamp_ms)
            if on_delivery is not None:
                future.add_callback(partial(on_delivery, None))
                future.add_errback(_as_delivery_error, on_delivery)
            return
        # send()'s fast path without the future: keep the two in step.
        size = len(value) + RECORD_OVERHEAD_BYTES
        if size > self._record_bytes_max:
            raise self._too_large(size)
        batch = (self._sticky_slots.get(topic) or self._sticky_slot(topic))[0]
        record = (_time_ns() // 1_000_000 if timestamp_ms is None else timestamp_ms, None, value, None)
        if batch is None or batch.room_bytes < size:
            self._append_locked(topic, -1, True, record, size, self._max_block_s)
            return
        batch.room_bytes -= size
        batch.open_records.append(record)
        if batch.sealed:
            self._place_late(batch, topic, -1, True, record, size, self._max_block_s)

    def _send_general(self, topic: str, value: Any, key: Any, headers: Any, partition: int | None,
                      timestamp_ms: int | None) -> RecordFuture:
        """``send`` for records with a key, headers, an explicit partition or a str value."""
        size = RECORD_OVERHEAD_BYTES
        if value is not None:
            if type(value) is not bytes:
                value = _to_bytes(value, "value")
            size += len(value)
        if key is not None:
            if type(key) is not bytes:
                key = _to_bytes(key, "key")
            size += len(key)
        if headers:
            headers, headers_size = _normalize_headers(headers)
            size += headers_size
        else:
            headers = None
        if size > self._record_bytes_max:
            raise self._too_large(size)
        batches = self._open.get(topic) or self._wait_on_metadata(topic)
        if partition is not None and not 0 <= partition < len(batches):
            raise errors.UnknownTopicOrPartitionError(
                f"partition {partition} of topic {topic!r} does not exist ({len(batches)} partitions)")
        record = (_time_ns() // 1_000_000 if timestamp_ms is None else timestamp_ms, key, value, headers)
        return self._accumulator.append(topic, partition, key, record, size, self._max_block_s)

    def _too_large(self, size: int) -> errors.MessageTooLargeError:
        return errors.MessageTooLargeError(
            f"the record is {size} bytes with its overhead, more than max_request_size "
            f"({self.max_request_size} bytes)")

    def _sticky_slot(self, topic: str) -> list:
        """Block until ``topic`` has partitions in the metadata; return its sticky slot."""
        self._wait_on_metadata(topic)
        return self._sticky_slots[topic]

    def _wait_on_metadata(self, topic: str) -> list:
        """Block until ``topic`` has partitions in the metadata; return its open-batch list."""
        if self._closed:
            raise errors.IllegalStateError("send() after the producer was closed")
        if not isinstance(topic, str) or not topic:
            raise errors.InvalidTopicExceptionError(f"topic must be a non-empty str, got {topic!r}")
        metadata = self._client.metadata
        deadline = time.monotonic() + self._max_block_s
        last_error: BaseException | None = None
        while True:
            count = metadata.partition_count(topic)
            if count:
                self._accumulator.set_partition_count(topic, count)
                self._topics = self._topics | {topic}  # a new set: the sender iterates the old one
                return self._open[topic]
            try:
                topic_errors = self._client.refresh_metadata(self._topics | {topic})
                if topic in topic_errors:
                    last_error = errors.error_for_code(topic_errors[topic], f"topic {topic!r}")
                    if not last_error.retriable:
                        raise last_error
            except errors.KraftError as exc:
                if not exc.retriable:
                    raise
                last_error = exc
            if metadata.partition_count(topic):
                continue
            if time.monotonic() + self._retry_backoff_s > deadline:
                raise errors.KafkaTimeoutError(
                    f"topic {topic!r} not present in metadata after {self.max_block_ms} ms"
                    + (f" (last error: {last_error})" if last_error else ""))
            time.sleep(self._retry_backoff_s)  # a backoff between refreshes, not a wait for a condition

    def refresh_partition_counts(self) -> None:
        """Pick up partitions added to known topics (the sender's metadata refresh finds them)."""
        for topic in list(self._topics):
            count = self._client.metadata.partition_count(topic)
            if count:
                self._accumulator.set_partition_count(topic, count)

    def partitions_for(self, topic: str) -> set[int]:
        self._wait_on_metadata(topic)
        description = self._client.metadata.topic(topic)
        return {p.partition for p in description.partitions} if description else set()

    # -- completion ---------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> None:
        """Send everything buffered now (ignoring linger) and wait until it completes.

        Raises KafkaTimeoutError when ``timeout`` seconds pass first. Failed records do not
        raise here; their futures hold the errors.
        """
        acc = self._accumulator
        with acc.lock:
            batches = list(acc.incomplete)
            acc.flushing += 1
            acc.sender_wakeup.notify_all()
        try:
            deadline = None if timeout is None else time.monotonic() + timeout
            for batch in batches:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not batch.done_event.wait(remaining):
                    raise errors.KafkaTimeoutError(f"flush did not complete within {timeout} s")
        finally:
            with acc.lock:
                acc.flushing -= 1

    def close(self, timeout: float | None = None) -> None:
        """Deliver what is buffered (waiting up to ``timeout`` seconds), then stop.

        Records still incomplete when the timeout passes fail. Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        self._sender.initiate_close()
        if not self._sender.join(timeout):
            log.warning("producer close timed out after %s s; failing incomplete records", timeout)
            self._sender.force_close()
            if not self._sender.join(FORCE_CLOSE_JOIN_S):
                # The sender is blocked in a request; fail the records from here, and closing
                # the connections below ends that request and the thread.
                self._sender.abort_incomplete()
        self._client.close()
        self._sender.join(FORCE_CLOSE_JOIN_S)

    def __enter__(self) -> "Producer":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def metrics(self) -> dict[str, int]:
        acc = self._accumulator
        with acc.lock:
            return {"buffered_bytes": acc.buffered_bytes, "incomplete_batches": len(acc.incomplete),
                    "failed_records": self._sender.failed_records}
