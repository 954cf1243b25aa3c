"""The load of a fault run: producers, consumer group members, a committed-offsets prober
and high-watermark probers, each writing its operations to the ``History``.

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

``GroupMemberWorker`` (a thread; the runner starts ``GROUP_MEMBERS`` of them) is one member
of the consumer group ``GROUP_ID`` subscribed to the topic, with manual commits. Its
rebalance listener writes an ``assign`` op per assignment change (the partitions it gained
and the position each starts at, which is the group's committed offset, plus ``since``:
the index of the last history event before the ``poll`` that fetched those offsets) and a
``revoke`` op per loss (``reason`` "revoked" by a rebalance, "close", or "lost": fenced or
out of the group without a rebalance). Before a revoke (not a loss) it commits where it
is for the revoked partitions, even when nothing changed: the answer shows whether the
coordinator still took it for the owner. After every ``poll`` with records it writes one
``poll`` op and commits the positions after those records (``commit`` invoke, then ``ok``;
``fail`` when the client raised a non-retriable error, e.g. COMMIT_FAILED when fenced —
its last attempt was refused, an earlier one that timed out may still have been applied,
so no checker relies on a failed commit's offsets; ``info`` for the rest). Every
``restart_s`` (staggered between members) it closes its consumer and starts a new one,
so rebalances happen without faults too; ``assignment`` counts those consumer lifetimes.
With ``auto_offset_reset="none"``, OFFSET_OUT_OF_RANGE is recorded (``info`` poll) and
the member seeks back to its own position; a partition assigned without a committed
offset starts at 0 and is recorded with position null.

``CommittedOffsetsProber`` (a thread) asks the group's committed offsets (OffsetFetch as
a non-member) every ``COMMITTED_PROBE_INTERVAL_S``: ``committed`` invoke, then ``ok`` with
the offsets (null: none committed) or ``info``. ``commit_initial_offsets`` commits 0 for
every partition before the members start (as a non-member, while the group is empty), so
a committed offset is never legitimately missing afterwards; ``probe_committed`` is one
probe (the runner's last one, after the heal).

``ConsumerWorker`` (a thread, off by default) is a plain consumer that reads every
partition with ``assign``. Each consumer lifetime is one *assignment*: it seeks each
partition to where the previous assignment stopped, writes an ``assign`` op
(``mode`` "assign") with those positions, then one ``poll`` op per poll with the records
read. With ``auto_offset_reset="none"`` a position the log no longer covers raises
instead of silently jumping; the worker records it (``info`` poll) and seeks back to its
own position, so any offset it does not read next is a skip the checker sees. A new
assignment starts every ``reassign_s``.

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

from cluster.client import Consumer, ConsumerRebalanceListener, Producer, TopicPartition
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
GROUP_ID = "faults"
GROUP_MEMBERS = 2
# A member silent for 4 s is removed, so a member cut off by a fault is fenced within one
# fault's hold time; one that does not poll for 10 s leaves (a commit waits at most 5 s).
GROUP_CONSUMER_CONFIG: dict[str, Any] = {
    **CONSUMER_CONFIG,
    "enable_auto_commit": False,
    "session_timeout_ms": 4000,
    "max_poll_interval_ms": 10000,
}
COMMIT_TIMEOUT_MS = 5000
MEMBER_RESTART_S = 20.0
COMMITTED_PROBE_INTERVAL_S = 0.5
COMMITTED_PROBE_TIMEOUT_MS = 3000
INITIAL_COMMIT_TIMEOUT_S = 30.0
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


class _Worker:
    """A background thread of the run (its ``_run``), stopped by ``stop`` and ``join``; an
    exception that ends it is kept in ``error``."""

    def __init__(self, process: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"faults-{process}", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout_s: float) -> bool:
        self._thread.join(timeout_s)
        return not self._thread.is_alive()


class ProducerWorker(_Worker):
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
        super().__init__(process)

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


class ConsumerWorker(_Worker):
    """A plain consumer (``assign``, no group) that reads every partition."""

    def __init__(self, process: str, bootstrap: str, topic: str, partitions: int, history: History,
                 reassign_s: float = REASSIGN_S) -> None:
        self.process = process
        self.bootstrap = bootstrap
        self.topic = topic
        self.partitions = partitions
        self.history = history
        self.reassign_s = reassign_s
        self.positions = {p: 0 for p in range(partitions)}
        self.assignment = 0
        super().__init__(process)

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
            consumer = Consumer(bootstrap_servers=self.bootstrap, client_id=f"faults-{self.process}",
                                **CONSUMER_CONFIG)
        except client_errors.KraftError as exc:
            self.history.info(self.process, "assign", None, assignment=self.assignment, error=error_name(exc))
            self._stop.wait(POLL_ERROR_BACKOFF_S)
            return
        try:
            consumer.assign(tps)
            for tp in tps:
                consumer.seek(tp, self.positions[tp.partition])
            self.history.ok(self.process, "assign", {"mode": "assign", "positions": sorted(self.positions.items())},
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
            for tp in tps:  # back to where this consumer is, never elsewhere
                consumer.seek(tp, self.positions[tp.partition])
            return
        except client_errors.KraftError as exc:
            self.history.info(self.process, "poll", None, assignment=self.assignment, error=error_name(exc))
            self._stop.wait(POLL_ERROR_BACKOFF_S)
            return
        reads = []
        for tp, records in batches.items():
            for record in records:
                reads.append([tp.partition, record.offset, decode_value(record.value)])
            if records:
                self.positions[tp.partition] = records[-1].offset + 1
        if reads:
            self.history.ok(self.process, "poll", reads, assignment=self.assignment)


class _MemberListener(ConsumerRebalanceListener):
    """Hands the consumer's rebalance callbacks to its ``GroupMemberWorker``."""

    def __init__(self, worker: "GroupMemberWorker") -> None:
        self.worker = worker

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.worker.on_assigned(assigned)

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.worker.on_revoked(revoked, lost=False)

    def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        self.worker.on_revoked(lost, lost=True)


def _member_id(consumer: Consumer) -> str | None:
    """The member id the coordinator gave this consumer (for reading the history only)."""
    membership = getattr(consumer, "_membership", None)
    return getattr(getattr(membership, "state", None), "member_id", None) or None


class GroupMemberWorker(_Worker):
    """One member of the consumer group: subscribe, poll, commit after each poll."""

    def __init__(self, process: str, bootstrap: str, topic: str, history: History, *,
                 group_id: str = GROUP_ID, restart_s: float = MEMBER_RESTART_S,
                 first_restart_s: float | None = None) -> None:
        self.process = process
        self.bootstrap = bootstrap
        self.topic = topic
        self.history = history
        self.group_id = group_id
        self.restart_s = restart_s
        self.first_restart_s = restart_s if first_restart_s is None else first_restart_s
        self.assignment = 0  # consumer lifetimes so far
        self.owned: dict[int, int] = {}  # partition -> the next offset this member reads
        self._consumer: Consumer | None = None
        self._closing = False
        self._poll_since = -1  # index of the last history event before the current poll
        super().__init__(process)

    def _run(self) -> None:
        try:
            lifetime_s = self.first_restart_s
            while not self._stop.is_set():
                self._one_lifetime(lifetime_s)
                self.assignment += 1
                lifetime_s = self.restart_s
        except BaseException as exc:
            logger.exception("%s failed", self.process)
            self.error = exc

    def _one_lifetime(self, lifetime_s: float) -> None:
        try:
            consumer = Consumer(bootstrap_servers=self.bootstrap, group_id=self.group_id,
                                client_id=f"faults-{self.process}", **GROUP_CONSUMER_CONFIG)
        except client_errors.KraftError as exc:
            self.history.info(self.process, "join", {"group": self.group_id}, assignment=self.assignment,
                              error=error_name(exc))
            self._stop.wait(POLL_ERROR_BACKOFF_S)
            return
        self._consumer = consumer
        self._closing = False
        try:
            consumer.subscribe([self.topic], listener=_MemberListener(self))
            self.history.ok(self.process, "join", {"group": self.group_id}, assignment=self.assignment)
            deadline = time.monotonic() + lifetime_s
            while not self._stop.is_set() and time.monotonic() < deadline:
                self._poll_once(consumer)
        finally:
            self._closing = True
            try:
                consumer.close()  # revokes what it owns (the listener commits first), leaves the group
            finally:
                if self.owned:  # close() did not get to the listener
                    self._record_revoke(sorted(self.owned), "close")
                self._consumer = None

    def _poll_once(self, consumer: Consumer) -> None:
        self._poll_since = self.history.last_index()
        try:
            batches = consumer.poll(timeout_ms=POLL_TIMEOUT_MS)
        except client_errors.OffsetOutOfRangeError as exc:
            self.history.info(self.process, "poll", None, assignment=self.assignment, error=str(exc)[:300])
            for partition, position in sorted(self.owned.items()):  # back to where this member is
                consumer.seek(TopicPartition(self.topic, partition), position)
            return
        except client_errors.KraftError as exc:
            self.history.info(self.process, "poll", None, assignment=self.assignment, error=str(exc)[:300])
            self._stop.wait(POLL_ERROR_BACKOFF_S)
            return
        reads = []
        for tp, records in batches.items():
            for record in records:
                reads.append([tp.partition, record.offset, decode_value(record.value)])
            if records and tp.partition in self.owned:
                self.owned[tp.partition] = records[-1].offset + 1
        if not reads:
            return
        self.history.ok(self.process, "poll", reads, assignment=self.assignment)
        read = {tp.partition for tp, records in batches.items() if records}
        self._commit(consumer, {p: self.owned[p] for p in sorted(read) if p in self.owned}, "poll")

    def _commit(self, consumer: Consumer, offsets: dict[int, int], reason: str) -> None:
        if not offsets:
            return
        value = {"group": self.group_id, "offsets": sorted(offsets.items())}
        self.history.invoke(self.process, "commit", value, assignment=self.assignment, reason=reason)
        try:
            consumer.commit({TopicPartition(self.topic, p): o for p, o in offsets.items()},
                            timeout_ms=COMMIT_TIMEOUT_MS)
        except client_errors.KraftError as exc:
            kind = "info" if exc.retriable else "fail"
            getattr(self.history, kind)(self.process, "commit", value, assignment=self.assignment,
                                        reason=reason, error=error_name(exc))
        else:
            self.history.ok(self.process, "commit", value, assignment=self.assignment, reason=reason)

    # -- the rebalance listener's side (called inside poll / close, in this worker's thread) --

    def on_assigned(self, assigned: set[TopicPartition]) -> None:
        consumer = self._consumer
        assert consumer is not None
        starts: list[list[Any]] = []
        for tp in sorted(assigned):
            position: int | None
            try:
                position = consumer.position(tp)
            except client_errors.NoOffsetForPartitionError:
                position = None  # no committed offset: the checkers report it; read from 0
                consumer.seek(tp, 0)
            starts.append([tp.partition, position])
            self.owned[tp.partition] = position if position is not None else 0
        self.history.ok(self.process, "assign", {
            "mode": "group", "group": self.group_id, "member": _member_id(consumer),
            "partitions": starts, "since": self._poll_since}, assignment=self.assignment)

    def on_revoked(self, revoked: set[TopicPartition], lost: bool) -> None:
        partitions = sorted(tp.partition for tp in revoked)
        consumer = self._consumer
        if not lost and consumer is not None:
            self._commit(consumer, {p: self.owned[p] for p in partitions if p in self.owned}, "revoke")
        self._record_revoke(partitions, "lost" if lost else ("close" if self._closing else "revoked"))

    def _record_revoke(self, partitions: list[int], reason: str) -> None:
        self.history.ok(self.process, "revoke", {"mode": "group", "group": self.group_id,
                                                 "partitions": partitions, "reason": reason},
                        assignment=self.assignment)
        for p in partitions:
            self.owned.pop(p, None)


def _committed_value(group_id: str, found: dict[TopicPartition, Any]) -> dict[str, Any]:
    return {"group": group_id, "offsets": sorted(
        [tp.partition, om.offset if om is not None else None] for tp, om in found.items())}


def probe_committed(consumer: Consumer, topic: str, partitions: int, history: History, process: str,
                    group_id: str = GROUP_ID, timeout_ms: int = COMMITTED_PROBE_TIMEOUT_MS) -> bool:
    """One OffsetFetch of the group's committed offsets as a ``committed`` op; True when answered."""
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    history.invoke(process, "committed", {"group": group_id})
    try:
        found = consumer.committed(tps, timeout_ms=timeout_ms)
    except client_errors.KraftError as exc:
        history.info(process, "committed", {"group": group_id}, error=error_name(exc))
        return False
    history.ok(process, "committed", _committed_value(group_id, found))
    return True


def offsets_client(bootstrap: str, process: str, group_id: str = GROUP_ID) -> Consumer:
    """A consumer that only commits and fetches the group's offsets (never a member)."""
    return Consumer(bootstrap_servers=bootstrap, group_id=group_id, client_id=f"faults-{process}",
                    **{**CONSUMER_CONFIG, "enable_auto_commit": False})


def commit_initial_offsets(bootstrap: str, topic: str, partitions: int, history: History,
                           group_id: str = GROUP_ID, timeout_s: float = INITIAL_COMMIT_TIMEOUT_S) -> None:
    """Commit offset 0 for every partition while the group has no members (a ``commit`` op
    of process "setup"); raises when the cluster does not take it within ``timeout_s``."""
    offsets = {p: 0 for p in range(partitions)}
    value = {"group": group_id, "offsets": sorted(offsets.items())}
    deadline = time.monotonic() + timeout_s
    with offsets_client(bootstrap, "setup", group_id) as consumer:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        while True:
            history.invoke("setup", "commit", value, reason="initial")
            try:
                consumer.commit({TopicPartition(topic, p): o for p, o in offsets.items()},
                                timeout_ms=COMMIT_TIMEOUT_MS)
            except client_errors.KraftError as exc:
                history.info("setup", "commit", value, reason="initial", error=error_name(exc))
                if not exc.retriable or time.monotonic() >= deadline:
                    raise
                continue
            history.ok("setup", "commit", value, reason="initial")
            return


class CommittedOffsetsProber(_Worker):
    """Fetches the group's committed offsets every ``COMMITTED_PROBE_INTERVAL_S``."""

    def __init__(self, process: str, bootstrap: str, topic: str, partitions: int, history: History,
                 group_id: str = GROUP_ID) -> None:
        self.process = process
        self.bootstrap = bootstrap
        self.topic = topic
        self.partitions = partitions
        self.history = history
        self.group_id = group_id
        super().__init__(process)

    def _run(self) -> None:
        try:
            with offsets_client(self.bootstrap, self.process, self.group_id) as consumer:
                while not self._stop.wait(COMMITTED_PROBE_INTERVAL_S):
                    probe_committed(consumer, self.topic, self.partitions, self.history, self.process,
                                    self.group_id)
        except BaseException as exc:
            logger.exception("%s failed", self.process)
            self.error = exc


class HighWatermarkProber(_Worker):
    """Asks one node, over raw frames, for the high watermark of every partition it leads."""

    def __init__(self, node: FaultNode, topic: str, partitions: int, history: History) -> None:
        self.node = node
        self.topic = topic
        self.partitions = partitions
        self.history = history
        self.process = f"hw-{node.node_id}"
        self._sock: socket.socket | None = None
        self._correlation_id = 0
        super().__init__(self.process)

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
