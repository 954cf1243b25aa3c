"""The load of a fault run: producers, a consumer and high-watermark probers, each writing
its operations to the ``History``.

Theory of operation
-------------------
``ValueSource`` hands out unique integers (the record values), shared by every producer.

``ProducerWorker`` (a thread) sends values at a bounded rate with a bounded number in
flight, each to partition ``value % partitions`` (one in ``OVERSIZED_EVERY`` padded past the
topic's ``max.message.bytes``, so some sends fail for certain), through one ``Producer`` with acks=all and
``retries=0``: every outcome comes from exactly one attempt, so an error that the broker
gives before appending is a definite failure. Per value: ``invoke`` when sent, then from
the future ``ok`` (partition, offset), ``fail`` (``DEFINITE_ERRORS``, or ``send`` raised so
nothing was queued) or ``info`` (anything that may come after an append: timeouts,
disconnects, NOT_LEADER_OR_FOLLOWER — which the node also answers when leadership moves
while an acks=all append waits — NOT_ENOUGH_REPLICAS_AFTER_APPEND, a closed producer).

``ConsumerWorker`` (a thread) reads every partition. Each consumer lifetime is one
*assignment*: it ``assign``s the partitions, seeks each to where the previous assignment
stopped, writes an ``assign`` op with those positions, then one ``poll`` op per poll with
the records read. With ``auto_offset_reset="none"`` a position the log no longer covers
raises instead of silently jumping; the worker records it (``info`` poll) and seeks back to
its own position, so any offset it does not read next is a skip the checker sees. A new
assignment starts every ``reassign_s``. ``group_id`` switches on group mode (subscribe,
commit after each poll, ``commit`` ops) for when consumer groups exist.

``HighWatermarkProber`` (a thread per node) asks its node ListOffsets(latest) for every
partition every ``HW_PROBE_INTERVAL_S``; a leader's answer is an ``hw`` op with the node,
its incarnation, the leader epoch and the high watermark.

``drain`` takes the end offsets (high watermarks) once two answers in a row agree, reads
every partition from offset 0 to them as one assignment of the process "drain", and writes
``drain-end`` with the ends and whether it got there.
"""

from __future__ import annotations

import itertools
import logging
import socket
import threading
import time
from typing import Any, Callable

from cluster.client import Consumer, Producer, TopicPartition
from cluster.client import errors as client_errors
from cluster.launcher import recv_exactly
from cluster.protocol import errors, framing
from cluster.protocol.api import ApiKey
from tests.faults.history import History, decode_value, encode_value
from tests.faults.nodes import FaultNode

logger = logging.getLogger(__name__)

# Broker errors given before anything is appended: the write definitely did not happen.
DEFINITE_ERRORS = frozenset({
    errors.NOT_ENOUGH_REPLICAS, errors.MESSAGE_TOO_LARGE, errors.UNKNOWN_TOPIC_OR_PARTITION,
    errors.LEADER_NOT_AVAILABLE, errors.CORRUPT_MESSAGE, errors.INVALID_REQUIRED_ACKS,
    errors.RECORD_LIST_TOO_LARGE, errors.UNSUPPORTED_COMPRESSION_TYPE, errors.INVALID_REQUEST,
})

# One value in OVERSIZED_EVERY is padded past the topic's max.message.bytes, so the broker
# refuses its batch with MESSAGE_TOO_LARGE before appending: definite failures to check.
TOPIC_MAX_MESSAGE_BYTES = 65536
OVERSIZED_EVERY = 500
OVERSIZED_PADDING_BYTES = 2 * TOPIC_MAX_MESSAGE_BYTES
PRODUCER_CONFIG: dict[str, Any] = {
    "acks": "all",
    "retries": 0,
    "linger_ms": 2,
    "batch_size": TOPIC_MAX_MESSAGE_BYTES // 4,  # a batch of ordinary values stays far below the limit
    "request_timeout_ms": 5000,
    "delivery_timeout_ms": 10000,
    "max_block_ms": 5000,
    # A batch that failed without a retry does not make the producer look for the new
    # leader; a short metadata age bounds how long it keeps asking the old one.
    "metadata_max_age_ms": 1000,
    "connect_timeout_ms": 2000,
}
CONSUMER_CONFIG: dict[str, Any] = {
    "auto_offset_reset": "none",
    "fetch_max_wait_ms": 200,
    "request_timeout_ms": 5000,
    "metadata_max_age_ms": 1000,
    "connect_timeout_ms": 2000,
    "max_poll_records": 1000,
}
SEND_TICK_S = 0.01
PENDING_MAX = 2000  # values in flight per producer
PRODUCER_CLOSE_TIMEOUT_S = 20.0
POLL_TIMEOUT_MS = 200
POLL_ERROR_BACKOFF_S = 0.2
REASSIGN_S = 20.0
HW_PROBE_INTERVAL_S = 0.2
HW_PROBE_SOCKET_TIMEOUT_S = 1.0
HW_RESPONSE_BYTES_MAX = 1 << 20
DRAIN_TIMEOUT_S = 60.0
ENDS_STABLE_S = 0.5


class ValueSource:
    """Unique integers for record values, shared by every producer."""

    def __init__(self) -> None:
        self._counter = itertools.count()
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            return next(self._counter)


def classify_send_error(error: BaseException) -> str:
    """"fail" when the error proves the record was not appended, else "info"."""
    code = getattr(error, "code", None)
    if isinstance(error, client_errors.KafkaError) and code in DEFINITE_ERRORS:
        return "fail"
    return "info"


def error_name(error: BaseException) -> str:
    return getattr(error, "name", None) or type(error).__name__


class ProducerWorker:
    def __init__(self, process: str, bootstrap: str, topic: str, partitions: int, values: ValueSource,
                 history: History, rate_per_s: float, pending_max: int = PENDING_MAX) -> None:
        self.process = process
        self.bootstrap = bootstrap
        self.topic = topic
        self.partitions = partitions
        self.values = values
        self.history = history
        self.rate_per_s = rate_per_s
        self.pending_max = pending_max
        self._pending: set[int] = set()
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"faults-{process}", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout_s: float) -> bool:
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _complete(self, value: int, partition: int, kind: str, **fields: Any) -> None:
        with self._lock:
            if value not in self._pending:
                return  # already completed (a late callback after the worker gave up)
            self._pending.discard(value)
            getattr(self.history, kind)(self.process, "send", value, partition=partition, **fields)
            self._lock.notify_all()

    def _run(self) -> None:
        try:
            with Producer(bootstrap_servers=self.bootstrap, client_id=f"faults-{self.process}",
                          **PRODUCER_CONFIG) as producer:
                self._send_loop(producer)
                try:
                    producer.flush(timeout=PRODUCER_CONFIG["delivery_timeout_ms"] / 1000 + 5)
                except client_errors.KraftError as exc:
                    logger.info("%s: flush: %s", self.process, exc)
                producer.close(timeout=PRODUCER_CLOSE_TIMEOUT_S)
        except BaseException as exc:  # recorded for the runner; the history stays consistent
            logger.exception("%s failed", self.process)
            self.error = exc
        finally:
            with self._lock:
                left = sorted(self._pending)
            for value in left:
                self._complete(value, value % self.partitions, "info", error="NO_OUTCOME")

    def _send_loop(self, producer: Producer) -> None:
        started = time.monotonic()
        sent = 0
        while not self._stop.is_set():
            due = int((time.monotonic() - started) * self.rate_per_s) - sent
            for _ in range(max(due, 0)):
                with self._lock:
                    if len(self._pending) >= self.pending_max:
                        break
                self._send_one(producer)
                sent += 1
            self._stop.wait(SEND_TICK_S)

    def _send_one(self, producer: Producer) -> None:
        value = self.values.next()
        partition = value % self.partitions
        with self._lock:
            self._pending.add(value)
            self.history.invoke(self.process, "send", value, partition=partition)
        try:
            padding = OVERSIZED_PADDING_BYTES if value % OVERSIZED_EVERY == OVERSIZED_EVERY - 1 else 0
            future = producer.send(self.topic, value=encode_value(value, padding), partition=partition)
        except client_errors.KraftError as exc:  # not queued: definitely not written
            self._complete(value, partition, "fail", error=error_name(exc))
            return
        future.add_callback(self._on_ok, value)
        future.add_errback(self._on_error, value, partition)

    def _on_ok(self, value: int, metadata: Any) -> None:
        self._complete(value, metadata.partition, "ok", offset=metadata.offset)

    def _on_error(self, value: int, partition: int, error: BaseException) -> None:
        self._complete(value, partition, classify_send_error(error), error=error_name(error))


class ConsumerWorker:
    def __init__(self, process: str, bootstrap: str, topic: str, partitions: int, history: History,
                 reassign_s: float = REASSIGN_S, group_id: str | None = None) -> None:
        self.process = process
        self.bootstrap = bootstrap
        self.topic = topic
        self.partitions = partitions
        self.history = history
        self.reassign_s = reassign_s
        self.group_id = group_id
        self.positions = {p: 0 for p in range(partitions)}
        self.assignment = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"faults-{process}", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout_s: float) -> bool:
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._one_assignment()
                self.assignment += 1
        except BaseException as exc:
            logger.exception("%s failed", self.process)
            self.error = exc

    def _one_assignment(self) -> None:
        tps = [TopicPartition(self.topic, p) for p in range(self.partitions)]
        try:
            consumer = Consumer(bootstrap_servers=self.bootstrap, group_id=self.group_id,
                                client_id=f"faults-{self.process}", **CONSUMER_CONFIG)
        except client_errors.KraftError as exc:
            self.history.info(self.process, "assign", None, assignment=self.assignment, error=error_name(exc))
            self._stop.wait(POLL_ERROR_BACKOFF_S)
            return
        try:
            if self.group_id is None:
                consumer.assign(tps)
                for tp in tps:
                    consumer.seek(tp, self.positions[tp.partition])
                self.history.ok(self.process, "assign", {"mode": "assign",
                                                         "positions": sorted(self.positions.items())},
                                assignment=self.assignment)
            else:
                consumer.subscribe([self.topic])
                self.history.ok(self.process, "assign", {"mode": "group", "group": self.group_id},
                                assignment=self.assignment)
            deadline = time.monotonic() + self.reassign_s
            while not self._stop.is_set() and time.monotonic() < deadline:
                self._poll_once(consumer, tps)
        finally:
            consumer.close()

    def _poll_once(self, consumer: Consumer, tps: list[TopicPartition]) -> None:
        try:
            batches = consumer.poll(timeout_ms=POLL_TIMEOUT_MS)
        except client_errors.OffsetOutOfRangeError as exc:
            self.history.info(self.process, "poll", None, assignment=self.assignment, error=str(exc)[:300])
            if self.group_id is None:
                for tp in tps:  # back to where this consumer is, never elsewhere
                    consumer.seek(tp, self.positions[tp.partition])
            return
        except client_errors.KraftError as exc:
            self.history.info(self.process, "poll", None, assignment=self.assignment, error=error_name(exc))
            self._stop.wait(POLL_ERROR_BACKOFF_S)
            return
        if not batches:
            return
        reads = []
        for tp, records in batches.items():
            for record in records:
                reads.append([tp.partition, record.offset, decode_value(record.value)])
            if records:
                self.positions[tp.partition] = records[-1].offset + 1
        self.history.ok(self.process, "poll", reads, assignment=self.assignment)
        if self.group_id is not None:
            self._commit(consumer, {tp.partition: self.positions[tp.partition] for tp in batches})

    def _commit(self, consumer: Consumer, offsets: dict[int, int]) -> None:
        value = {"group": self.group_id, "offsets": sorted(offsets.items())}
        self.history.invoke(self.process, "commit", value, assignment=self.assignment)
        try:
            consumer.commit({TopicPartition(self.topic, p): o for p, o in offsets.items()})
        except NotImplementedError as exc:
            self.history.fail(self.process, "commit", value, assignment=self.assignment, error=str(exc)[:200])
        except client_errors.KraftError as exc:
            kind = "info" if exc.retriable else "fail"
            getattr(self.history, kind)(self.process, "commit", value, assignment=self.assignment,
                                        error=error_name(exc))
        else:
            self.history.ok(self.process, "commit", value, assignment=self.assignment)


class HighWatermarkProber:
    """Asks one node, over raw frames, for the high watermark of every partition it leads."""

    def __init__(self, node: FaultNode, topic: str, partitions: int, history: History) -> None:
        self.node = node
        self.topic = topic
        self.partitions = partitions
        self.history = history
        self.process = f"hw-{node.node_id}"
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._correlation_id = 0
        self._thread = threading.Thread(target=self._run, name=f"faults-{self.process}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout_s: float) -> bool:
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.wait(HW_PROBE_INTERVAL_S):
            if self.node.paused or not self.node.running:
                self._close()
                continue
            incarnation = self.node.incarnation
            answer = self._ask()
            if answer is None or incarnation != self.node.incarnation:
                continue
            for topic in answer.get("topics", ()):
                for p in topic.get("partitions", ()):
                    if p.get("error_code") == errors.NONE:
                        self.history.ok(self.process, "hw", {
                            "node": self.node.node_id, "incarnation": incarnation,
                            "leader_epoch": p["leader_epoch"], "high_watermark": p["offset"]},
                            partition=p["index"])
        self._close()

    def _ask(self) -> dict[str, Any] | None:
        body = {"replica_id": -1, "topics": [{"name": self.topic, "partitions": [
            {"index": p, "timestamp": -1} for p in range(self.partitions)]}]}
        try:
            if self._sock is None:
                self._sock = socket.create_connection((self.node.host, self.node.port),
                                                      timeout=HW_PROBE_SOCKET_TIMEOUT_S)
            self._correlation_id += 1
            self._sock.sendall(framing.encode_request(ApiKey.LIST_OFFSETS, 0, self._correlation_id,
                                                      "faults-hw", body))
            size = framing.check_frame_size(recv_exactly(self._sock, 4), HW_RESPONSE_BYTES_MAX)
            correlation_id, response = framing.decode_response(recv_exactly(self._sock, size))
            if correlation_id != self._correlation_id:
                self._close()
                return None
            return response
        except (OSError, framing.FrameError):
            self._close()
            return None

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def drain(bootstrap: str, topic: str, partitions: int, history: History,
          timeout_s: float = DRAIN_TIMEOUT_S) -> dict[int, int]:
    """Read every partition from 0 to its end offset; the end offsets (``drain-end`` says
    whether every partition was read to its end before the deadline)."""
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    deadline = time.monotonic() + timeout_s
    ends: dict[int, int] = {}
    positions = {p: 0 for p in range(partitions)}
    with Consumer(bootstrap_servers=bootstrap, client_id="faults-drain", **CONSUMER_CONFIG) as consumer:
        # Nothing is written any more, so the high watermarks only rise until each reaches its
        # log end (a new leader starts from its checkpoint and moves up as followers fetch):
        # take the ends once two answers ENDS_STABLE_S apart agree.
        previous: dict[int, int] = {}
        while not ends and time.monotonic() < deadline:
            try:
                answer = {tp.partition: end for tp, end in consumer.end_offsets(tps).items()}
            except client_errors.KraftError as exc:
                history.info("drain", "end-offsets", None, error=error_name(exc))
                answer = {}
            if answer and answer == previous:
                ends = answer
            else:
                previous = answer
                time.sleep(ENDS_STABLE_S if answer else POLL_ERROR_BACKOFF_S)  # paced, bounded by the deadline
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        history.ok("drain", "assign", {"mode": "assign", "positions": sorted(positions.items())}, assignment=0)
        done: Callable[[], bool] = lambda: bool(ends) and all(positions[p] >= ends[p] for p in ends)
        while not done() and time.monotonic() < deadline:
            try:
                batches = consumer.poll(timeout_ms=POLL_TIMEOUT_MS)
            except client_errors.KraftError as exc:
                history.info("drain", "poll", None, assignment=0, error=str(exc)[:300])
                for tp in tps:
                    consumer.seek(tp, positions[tp.partition])
                time.sleep(POLL_ERROR_BACKOFF_S)  # backoff between attempts, bounded by the deadline
                continue
            reads = []
            for tp, records in batches.items():
                for record in records:
                    if record.offset < ends.get(tp.partition, 0):
                        reads.append([tp.partition, record.offset, decode_value(record.value)])
                        positions[tp.partition] = record.offset + 1
            if reads:
                history.ok("drain", "poll", reads, assignment=0)
    complete = done()
    history.ok("drain", "drain-end", {"ends": sorted(ends.items()), "complete": complete,
                                      "positions": sorted(positions.items())})
    return ends
