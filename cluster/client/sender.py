"""The producer's sender thread: closed batches in, Produce requests out, futures completed.

Theory of operation
-------------------
One thread loops: refresh metadata when due; under the accumulator's lock close batches
that lingered, expire batches past ``delivery_timeout_ms`` and ``drain`` the sendable ones
grouped by leader; then, outside the lock, encode each batch once
(``storage.batch.encode_batch``: a closed batch is sealed, so its ``records`` no longer
change while application threads append to open batches without the lock) and send one
Produce request per leader, pipelined up to ``max_in_flight_requests_per_connection`` per
broker. Then it sleeps on the accumulator's
condition until a batch closes, a response frees a partition, or the next deadline.

Responses arrive on connection reader threads (``_on_response``). The reader whose
response frees a partition (or a request slot of its broker) drains and sends what became
sendable itself, under the same lock hold, instead of waking this thread: a thread that
wakes must win the GIL back from an application thread busy in ``send``, which costs up
to the interpreter's switch interval (5 ms), and at one batch in flight per partition that
wait would be paid on every round trip. This thread keeps everything else: batches that
fill or linger while their partition is free, retries after their backoff, failures,
expiry, metadata.

A request carries, per partition, the batches ``drain`` took for it, encoded once each and
concatenated in queue order into the partition's record set; the node appends them in that
order at consecutive offsets and answers with the first one's base offset, so batch k
starts at that offset plus the records of the batches before it. Two refusals are answered
by sending again, not counted as retries: a non-retriable refusal of a record set several
batches shared says nothing about which one was bad, so each goes again by itself
(``alone``); and a batch refused as MESSAGE_TOO_LARGE (e.g. a topic whose
max.message.bytes is below ``batch_size``) is encoded again as twice as many wire batches
of its records, until each wire batch is one record. If the node still refuses that
record set, the batch is sent record by record (``piece``), each record in a request of
its own, so only a record too large by itself fails and the others get their offsets.
Per partition:
success completes its batches (record offset = batch base offset + index); a retriable
error puts them back, in order, at the head of their partition after ``retry_backoff_ms``
(and asks for fresh metadata when the error says the leader moved) unless ``retries`` or
the delivery timeout are used up; any other error fails them. A lost connection fails the
request with NETWORK_EXCEPTION, which is retriable: the batch is sent again, so a batch
the node had written before the connection broke can be written twice (at-least-once; the
idempotent producer will remove this). Order within a partition holds because the
accumulator keeps at most one request per partition in flight.

With acks=0 there is no response: a batch is complete (offset -1) once its request is
written to the socket.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Any, Callable

from cluster.client import errors
from cluster.client.accumulator import RecordAccumulator
from cluster.client.futures import ProducerBatch
from cluster.client.network import NetworkClient
from cluster.protocol.api import ApiKey
from storage.batch import encode_batch

log = logging.getLogger(__name__)

IDLE_WAIT_S_MAX = 1.0  # the sender re-checks metadata age at least this often


def _encode(records: list, parts: int) -> bytes:
    """The records as ``parts`` consecutive wire batches of about equal counts (one record
    set: the node appends them in order at consecutive offsets, so record i of the batch
    still lands at base offset + i)."""
    if parts == 1:
        return encode_batch(records)
    count = len(records)
    bounds = [count * i // parts for i in range(parts + 1)]
    return b"".join(encode_batch(records[start:end]) for start, end in zip(bounds, bounds[1:]))


class _InlineSend(threading.local):
    active = False  # this thread is sending batches it drained after a response


_inline = _InlineSend()


class Sender:
    def __init__(
        self,
        client: NetworkClient,
        accumulator: RecordAccumulator,
        *,
        acks: int,
        retries: int,
        request_timeout_ms: int,
        max_in_flight: int,
        topics: Callable[[], set[str]],
        on_metadata: Callable[[], None] | None = None,
    ) -> None:
        self.client = client
        self.acc = accumulator
        self.acks = acks
        self.retries = retries
        self.request_timeout_ms = request_timeout_ms
        self.max_in_flight = max_in_flight
        self.topics = topics  # the producer's current topics (a fresh set after each change)
        self.on_metadata = on_metadata
        self._in_flight_by_node: dict[int, int] = {}
        self.failed_records = 0  # records whose batch failed for good (read by Producer.metrics)
        self._wake_at_s = 0.0  # when the sleeping sender wakes by itself (0: it is awake)
        self._running = True
        self._force_close = False
        self._thread = threading.Thread(target=self._run, name="kraft-producer-sender", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout_s: float | None) -> bool:
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def initiate_close(self) -> None:
        with self.acc.lock:
            self.acc.closing = True
            self.acc.sender_wakeup.notify_all()
            self.acc.space_freed.notify_all()

    def force_close(self) -> None:
        """Stop now: every incomplete batch fails."""
        with self.acc.lock:
            self.acc.closing = True
            self._force_close = True
            self.acc.sender_wakeup.notify_all()
            self.acc.space_freed.notify_all()

    # -- the loop -----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._run_once():
                pass
        except Exception:
            log.exception("producer sender thread failed")
        finally:
            self.abort_incomplete()

    def _run_once(self) -> bool:
        acc = self.acc
        topics = self.topics()
        try:
            if topics and self.client.maybe_refresh_metadata(topics) and self.on_metadata is not None:
                self.on_metadata()
        except errors.KraftError as exc:  # e.g. a node that refuses the request: keep sending
            log.warning("metadata refresh failed: %s", exc)
        metadata = self.client.metadata
        with acc.lock:
            if self._force_close:
                return False
            now_s = acc.clock()
            acc.close_due(now_s)
            expired = acc.expire(now_s)
            ready, leader_unknown = self._drain_locked(now_s)
            if not ready and not expired:
                if acc.closing and not acc.incomplete:
                    return False
                wait_s = acc.next_wake_s(now_s)
                if leader_unknown:
                    metadata.request_update()
                    due_s = metadata.refresh_due_in_ms(now_s * 1000) / 1000
                    wait_s = due_s if wait_s is None else min(wait_s, due_s)
                wait_s = IDLE_WAIT_S_MAX if wait_s is None else min(wait_s, IDLE_WAIT_S_MAX)
                if wait_s > 0:
                    self._wake_at_s = now_s + wait_s
                    acc.sender_wakeup.wait(wait_s)
                    self._wake_at_s = 0.0
                return True
        if leader_unknown:
            metadata.request_update()
        for batch in expired:
            self._fail(batch, errors.KafkaTimeoutError(
                f"expiring {len(batch.records)} record(s) for {batch.topic}-{batch.partition}: "
                f"{(now_s - batch.created_s) * 1000:.0f} ms passed since the batch was created"
                + (f" (last error: {batch.last_error})" if batch.last_error else "")))
        for node, batches in ready.items():
            self._send_produce(node, batches)
        return True

    def _drain_locked(self, now_s: float) -> tuple[dict[int, list[ProducerBatch]], bool]:
        """Take the sendable batches and count their requests in flight (lock held)."""
        ready, leader_unknown = self.acc.drain(now_s, self.client.metadata.leader_for, self._node_has_room)
        for node in ready:
            self._in_flight_by_node[node] = self._in_flight_by_node.get(node, 0) + 1
        return ready, leader_unknown

    def _node_has_room(self, node: int) -> bool:
        return self._in_flight_by_node.get(node, 0) < self.max_in_flight

    def _send_drained(self, ready: dict[int, list[ProducerBatch]]) -> None:
        """Send what a reader thread drained; a batch that cannot even be encoded fails
        instead of staying in flight for ever."""
        for node, batches in ready.items():
            try:
                self._send_produce(node, batches)
            except Exception as exc:
                log.exception("sending %d batch(es) to node %d failed", len(batches), node)
                with self.acc.lock:
                    self._in_flight_by_node[node] -= 1
                for batch in batches:
                    self._fail(batch, errors.KafkaError(f"the batch could not be sent: {exc}"))

    # -- requests -----------------------------------------------------------------------

    def _send_produce(self, node: int, batches: list[ProducerBatch]) -> None:
        record_sets: dict[tuple[str, int], list[bytes]] = {}
        for batch in batches:
            if batch.encoded is None:
                batch.encoded = encode_batch([batch.records[batch.piece]]) if batch.piece >= 0 \
                    else _encode(batch.records, batch.parts)
            batch.attempts += 1
            record_sets.setdefault((batch.topic, batch.partition), []).append(batch.encoded)
        topics: dict[str, list[dict[str, Any]]] = {}
        for (topic, partition), encoded in record_sets.items():  # join returns a lone batch as is
            topics.setdefault(topic, []).append({"index": partition, "records": b"".join(encoded)})
        body = {
            "acks": self.acks,
            "timeout_ms": self.request_timeout_ms,
            "topics": [{"name": name, "partitions": parts} for name, parts in topics.items()],
        }
        expect_response = self.acks != 0
        future = self.client.send(node, ApiKey.PRODUCE, body, expect_response=expect_response)
        future.add_callback(lambda f: self._on_response(node, batches, f))

    def _on_response(self, node: int, batches: list[ProducerBatch], future: Any) -> None:
        done: list[tuple[ProducerBatch, int, int]] = []
        failed: list[tuple[ProducerBatch, BaseException]] = []
        retry: list[ProducerBatch] = []
        advanced: list[ProducerBatch] = []  # sent record by record: the next record goes now
        now_s = self.acc.clock()
        if future.error is not None:
            # No answer at all (timeout, lost connection): the broker may be stopped or no
            # longer the leader, and nothing else would tell us, so look again.
            self.client.metadata.request_update()
            for batch in batches:
                self._classify(batch, future.error, now_s, retry, failed)
        elif self.acks == 0:
            done = [(batch, -1, -1) for batch in batches]
        else:
            body = future.value
            results: dict[tuple[str, int], dict] = {}
            for topic in body.get("topics", ()):
                for p in topic.get("partitions", ()):
                    results[(topic["name"], p["index"])] = p
            whole_error = body.get("error_code", 0)
            next_base: dict[tuple[str, int], int] = {}  # a partition's batches are in request order
            shared = Counter((b.topic, b.partition) for b in batches)
            for batch in batches:
                key = (batch.topic, batch.partition)
                p = results.get(key)
                error: BaseException
                if p is None:
                    code = whole_error or errors.UNKNOWN_SERVER_ERROR
                    error = errors.error_for_code(code, body.get("error_message") or "no result for the partition")
                    self._classify(batch, error, now_s, retry, failed)
                elif p.get("error_code", 0):
                    error = errors.error_for_code(p["error_code"], p.get("error_message"))
                    retriable = getattr(error, "retriable", False)
                    if batch.piece >= 0 and not retriable:
                        self._next_piece(batch, (-1, -1), error, advanced, done)
                    elif shared[key] > 1 and not retriable:
                        batch.alone = True  # which batch of the set was refused is unknown
                        self._send_again(batch, error, retry)
                    elif p["error_code"] == errors.MESSAGE_TOO_LARGE and batch.parts < len(batch.records):
                        batch.parts = min(len(batch.records), batch.parts * 2)
                        batch.encoded = None
                        self._send_again(batch, error, retry)
                    elif p["error_code"] == errors.MESSAGE_TOO_LARGE and len(batch.records) > 1:
                        batch.piece = 0  # one record at a time: which one is too large is unknown
                        batch.offsets = [(-1, -1)] * len(batch.records)
                        batch.record_errors = {}
                        batch.alone = True
                        batch.encoded = None
                        self._send_again(batch, error, retry)
                    else:
                        self._classify(batch, error, now_s, retry, failed)
                elif batch.piece >= 0:
                    self._next_piece(batch, (p["base_offset"], p.get("log_append_time_ms", -1)), None, advanced, done)
                else:
                    base_offset = next_base.get(key, p["base_offset"])
                    if base_offset >= 0:
                        next_base[key] = base_offset + len(batch.records)
                    done.append((batch, base_offset, p.get("log_append_time_ms", -1)))
        # Stale leadership is worth a metadata refresh whether the batch is retried or has
        # failed for good (no retries left): the next batches go to the right leader.
        if any(getattr(e, "invalid_metadata", False)
               for e in [b.last_error for b in retry] + [error for _, error in failed]):
            self.client.metadata.request_update()
        for batch, base_offset, append_time in done:
            batch.complete(base_offset, append_time)
        for batch, error in failed:
            self._complete_failed(batch, error)
        # Only a response sends inline: a failure may be reported by a thread that holds a
        # connection lock (a write that failed), and a retry waits for its backoff anyway.
        inline = future.error is None and not _inline.active and threading.current_thread() is not self._thread
        ready: dict[int, list[ProducerBatch]] = {}
        acc = self.acc
        with acc.lock:
            self._in_flight_by_node[node] -= 1
            for batch in reversed(retry):  # each goes to the head: the last first keeps the order
                acc.requeue(batch, now_s)
            for batch in advanced:  # its next record is no retry: no backoff
                acc.requeue(batch, now_s)
                batch.retry_at_s = now_s
            for batch, _, _ in done:
                acc.release(batch)
            for batch, _ in failed:
                acc.release(batch)
            if inline and not self._force_close and not acc.closing:
                now_s = acc.clock()
                acc.close_due(now_s)
                ready, leader_unknown = self._drain_locked(now_s)
                wake_s = acc.next_wake_s(now_s)  # e.g. a young batch of a partition freed just now
                if leader_unknown or retry or (wake_s is not None and now_s + wake_s < self._wake_at_s):
                    acc.sender_wakeup.notify()
            else:
                acc.sender_wakeup.notify()
        if ready:
            _inline.active = True  # a send that fails at once completes here: no recursion
            try:
                self._send_drained(ready)
            finally:
                _inline.active = False

    def _next_piece(self, batch: ProducerBatch, placed: tuple[int, int], error: BaseException | None,
                    advanced: list[ProducerBatch], done: list[tuple[ProducerBatch, int, int]]) -> None:
        """Record the outcome of the record a batch sent by itself (its offset and log-append
        time, or its error); queue the next one, or complete the batch when it was the last."""
        assert batch.offsets is not None and batch.record_errors is not None
        if error is None:
            batch.offsets[batch.piece] = placed
        else:
            batch.record_errors[batch.piece] = error
            with self.acc.lock:
                self.failed_records += 1
            log.warning("a record for %s-%d failed: %s", batch.topic, batch.partition, error)
        batch.piece += 1
        batch.encoded = None
        batch.attempts = 0  # each record has the batch's retries
        if batch.piece < len(batch.records):
            advanced.append(batch)
        else:
            done.append((batch, -1, -1))

    @staticmethod
    def _send_again(batch: ProducerBatch, error: BaseException, retry: list[ProducerBatch]) -> None:
        """Queue ``batch`` again, changed to meet a refusal (``alone`` or more ``parts``):
        not counted as a retry."""
        log.debug("sending %r again (alone=%s, parts=%d) after %s", batch, batch.alone, batch.parts, error)
        batch.attempts -= 1
        batch.last_error = error
        retry.append(batch)

    def _classify(self, batch: ProducerBatch, error: BaseException, now_s: float,
                  retry: list[ProducerBatch], failed: list[tuple[ProducerBatch, BaseException]]) -> None:
        batch.last_error = error
        retriable = getattr(error, "retriable", False)
        in_time = now_s - batch.created_s < self.acc.delivery_timeout_s
        if retriable and batch.attempts <= self.retries and in_time and not self._force_close:
            log.debug("retrying %r after %s", batch, error)
            retry.append(batch)
        else:
            failed.append((batch, error))

    def _fail(self, batch: ProducerBatch, error: BaseException) -> None:
        self._complete_failed(batch, error)
        with self.acc.lock:
            self.acc.release(batch)

    def _complete_failed(self, batch: ProducerBatch, error: BaseException) -> None:
        """Fail a batch's records: their futures and callbacks get ``error``; the count and a
        warning are what a ``produce()`` caller without a callback has."""
        if batch.is_done():
            return
        if batch.piece >= 0:  # sent record by record: the records before this one have their outcome
            assert batch.record_errors is not None
            for index in range(batch.piece, len(batch.records)):
                batch.record_errors[index] = error
            count = len(batch.records) - batch.piece
            error_for_rest: BaseException | None = None
        else:
            count = len(batch.records)
            error_for_rest = error
        with self.acc.lock:  # called without it, from the sender and the readers
            self.failed_records += count
        log.warning("%d record(s) for %s-%d failed: %s", count, batch.topic, batch.partition, error)
        batch.complete(-1, -1, error_for_rest)

    def abort_incomplete(self) -> None:
        """Fail every record not yet acknowledged (the producer is closing)."""
        error = errors.IllegalStateError("the producer was closed before the record was acknowledged")
        with self.acc.lock:
            self.acc.closing = True
            self.acc.take_all_unsent()
            batches = list(self.acc.incomplete)
        for batch in batches:
            self._fail(batch, error)
        with self.acc.lock:
            self.acc.space_freed.notify_all()
            self.acc.sender_wakeup.notify_all()
