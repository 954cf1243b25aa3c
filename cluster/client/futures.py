"""What ``Producer.send`` returns: a per-record future that is two slots, not an object graph.

Theory of operation
-------------------
A record's fate is its batch's fate, so the batch (``ProducerBatch``) holds the outcome
(base offset, log-append time or error) and one ``threading.Event``; ``RecordFuture`` is
just the tuple ``(batch, index)`` and computes ``offset = base_offset + index`` when asked. Completing
a batch is one event set plus the callbacks someone registered, never a loop over records.

The one exception: a batch the node refused as too large even with one record per wire
batch is sent record by record (``piece``), so each record gets its own outcome. Such a
batch completes with ``offsets`` and ``record_errors`` per record, which ``error_at`` and
``metadata_for`` read instead of the batch-wide fields.

Callbacks registered on a record run once, in the thread that completes its batch (the
producer's network threads), or at once in the caller's thread if the batch is already
complete. A callback must not block on the producer (e.g. ``flush``) or it stalls delivery.
"""

from __future__ import annotations

import logging
import threading
from functools import partial
from typing import Any, Callable

from cluster.client import errors
from cluster.client.structs import RecordMetadata

log = logging.getLogger(__name__)

# One lock for every batch's callback list: taken only to register a callback or to
# complete a batch, never on the send path.
_CALLBACK_LOCK = threading.Lock()


class ProducerBatch:
    """Records bound for one partition, sent and acknowledged together.

    ``records`` holds ``(timestamp_ms, key, value, headers)`` tuples, the shape
    ``storage.batch.encode_batch`` takes. ``size_bytes`` is the producer's estimate of the
    encoded size. Times are ``time.monotonic()`` seconds.

    While the batch is open, appenders add to ``open_records`` without a lock (and
    ``records`` is that same list). Closing *seals* it: ``sealed`` becomes True, then
    ``records`` becomes a copy of ``open_records``, which no appender ever holds, so the
    records that travel cannot change after the seal. An appender checks ``sealed`` after
    its append; see the accumulator for what it does when it finds the batch sealed.
    """

    __slots__ = (
        "topic", "partition", "records", "size_bytes", "created_s", "attempts", "retry_at_s",
        "encoded", "base_offset", "log_append_time_ms", "error", "done_event", "callbacks",
        "last_error", "room_bytes", "capacity_bytes", "parts", "alone", "open_records", "sealed",
        "piece", "offsets", "record_errors",
    )

    def __init__(self, topic: str, partition: int, created_s: float, room_bytes: int = 0) -> None:
        self.topic = topic
        self.partition = partition
        self.open_records: list[tuple[int, bytes | None, bytes | None, Any]] = []  # never rebound
        self.records = self.open_records  # a private copy once sealed
        self.sealed = False
        self.size_bytes = 0  # known when the batch closes: room given minus room left
        self.room_bytes = room_bytes  # estimated bytes the batch still accepts
        self.capacity_bytes = room_bytes
        self.created_s = created_s
        self.attempts = 0
        self.retry_at_s = 0.0
        self.encoded: bytes | None = None
        self.base_offset = -1
        self.log_append_time_ms = -1
        self.error: BaseException | None = None
        self.last_error: BaseException | None = None
        self.done_event = threading.Event()
        self.callbacks: list[tuple[int, Callable[[Any], Any], bool]] | None = None
        self.parts = 1  # wire batches the records are cut into (more after MESSAGE_TOO_LARGE)
        self.alone = False  # sent in a record set of its own (after a refusal of a shared one)
        self.piece = -1  # sent record by record: the index of the record in flight or next
        self.offsets: list[tuple[int, int]] | None = None  # when sent record by record: (offset, log-append time)
        self.record_errors: dict[int, BaseException] | None = None  # likewise: the records that failed

    def __repr__(self) -> str:
        return f"ProducerBatch({self.topic}-{self.partition}, {len(self.records)} records, attempts={self.attempts})"

    def is_done(self) -> bool:
        return self.done_event.is_set()

    def error_at(self, index: int) -> BaseException | None:
        """The error of record ``index`` (None: it succeeded, or the batch is pending)."""
        record_errors = self.record_errors
        return self.error if record_errors is None else record_errors.get(index, self.error)

    def metadata_for(self, index: int) -> RecordMetadata:
        if self.offsets is not None:
            offset, append_time_ms = self.offsets[index]
        else:
            offset = self.base_offset + index if self.base_offset >= 0 else -1
            append_time_ms = self.log_append_time_ms
        timestamp = append_time_ms if append_time_ms >= 0 else self.records[index][0]
        return RecordMetadata(self.topic, self.partition, offset, timestamp)

    def complete(self, base_offset: int, log_append_time_ms: int = -1, error: BaseException | None = None) -> None:
        """Record the outcome, wake waiters, run callbacks. Only the first call counts."""
        with _CALLBACK_LOCK:
            if self.done_event.is_set():
                return
            self.base_offset = base_offset
            self.log_append_time_ms = log_append_time_ms if log_append_time_ms is not None else -1
            self.error = error
            self.encoded = None
            callbacks, self.callbacks = self.callbacks, None
            self.done_event.set()
        if callbacks:
            for index, callback, is_errback in callbacks:
                self._run(index, callback, is_errback)

    def add_callback(self, index: int, callback: Callable[[Any], Any], is_errback: bool) -> None:
        with _CALLBACK_LOCK:
            if not self.done_event.is_set():
                if self.callbacks is None:
                    self.callbacks = []
                self.callbacks.append((index, callback, is_errback))
                return
        self._run(index, callback, is_errback)

    def _run(self, index: int, callback: Callable[[Any], Any], is_errback: bool) -> None:
        try:
            error = self.error_at(index)
            if error is None:
                if not is_errback:
                    callback(self.metadata_for(index))
            elif is_errback:
                callback(error)
        except Exception:  # an application callback's bug must not stop delivery
            log.exception("producer callback failed for %s-%d", self.topic, self.partition)


class RecordFuture(tuple):
    """The outcome of one ``send``: a ``RecordMetadata`` or the error that replaced it.

    A ``(batch, index)`` tuple: building one costs a C-level tuple allocation, which is
    what the producer's per-record budget allows.
    """

    __slots__ = ()

    def done(self) -> bool:
        return self[0].done_event.is_set()

    is_done = property(done)

    def get(self, timeout: float | None = None) -> RecordMetadata:
        """Wait up to ``timeout`` seconds (None: forever) for the record's metadata."""
        batch, index = self
        if not batch.done_event.wait(timeout):
            raise errors.KafkaTimeoutError(f"record not acknowledged within {timeout} s")
        error = batch.error_at(index)
        if error is not None:
            raise error
        return batch.metadata_for(index)

    def exception(self) -> BaseException | None:
        """The error if the record failed; None if it succeeded or is still pending."""
        batch, index = self
        return batch.error_at(index) if batch.done_event.is_set() else None

    def succeeded(self) -> bool:
        batch, index = self
        return batch.done_event.is_set() and batch.error_at(index) is None

    def failed(self) -> bool:
        batch, index = self
        return batch.done_event.is_set() and batch.error_at(index) is not None

    def add_callback(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> "RecordFuture":
        """Call ``fn(*args, metadata, **kwargs)`` when the record is acknowledged."""
        self[0].add_callback(self[1], partial(fn, *args, **kwargs) if args or kwargs else fn, False)
        return self

    def add_errback(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> "RecordFuture":
        """Call ``fn(*args, error, **kwargs)`` when the record fails."""
        self[0].add_callback(self[1], partial(fn, *args, **kwargs) if args or kwargs else fn, True)
        return self

    def add_both(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> "RecordFuture":
        self.add_callback(fn, *args, **kwargs)
        return self.add_errback(fn, *args, **kwargs)

    def __repr__(self) -> str:
        batch, index = self
        state = "pending" if not batch.done_event.is_set() else ("failed" if batch.error_at(index) else "done")
        return f"RecordFuture({batch.topic}-{batch.partition}[{index}], {state})"


def new_record_future(batch: ProducerBatch, index: int) -> RecordFuture:
    return tuple.__new__(RecordFuture, (batch, index))
