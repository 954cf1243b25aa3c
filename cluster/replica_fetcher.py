"""Follower side of replication: one fetcher per source broker, copying many partitions.

Theory of operation
-------------------
A node that follows partitions led by broker B runs ONE ``SourceFetcher`` for B, whatever
the number of partitions (Kafka's one fetch session per source broker). The replica
manager tells it what to follow (``assign`` with the leader epoch from the metadata image,
``remove`` when this node stops following there); the fetcher owns, per partition, whether
the log still has to be truncated for the current leader epoch.

One round (``run_once``):

    partitions not truncated yet --OffsetsForLeaderEpoch(latest local epoch)--> leader
        answer (epoch, end offset) --replication.truncation_offset--> truncate_to(...)
        (repeated while the answer says another round is needed; bounded)
    truncated partitions --Fetch(replica_id = this node, fetch_offset = log end offset,
        current_leader_epoch)--> leader, which long-polls up to ``max_wait_ms``
        response batches --append(batch, assign_offsets=False)--> local log (the leader's
        offsets and epochs are kept), then the high watermark = min(leader's, log end)

The fetch offset a follower sends is its log end offset, i.e. the offset after the last
batch it has durably appended: that is what the leader counts toward the high watermark.
So the next Fetch goes out as soon as the appends of the previous answer are durable, and
that wait is short: the batches of every partition in the answer are handed to the log
before any is awaited, as views into the response (no copy), so they share one group
commit, and that commit reaches the event loop in one hop for the whole answer
(``_all_done``), not one per batch plus a gather. An acks=all produce at the leader waits
for exactly this Fetch from every in-sync follower.
A partition whose leader answers FENCED_LEADER_EPOCH (our epoch is stale) is parked until
the metadata names a new leader epoch (``assign`` again). UNKNOWN_LEADER_EPOCH,
NOT_LEADER_OR_FOLLOWER and UNKNOWN_TOPIC_OR_PARTITION mean the leader's metadata may be
behind ours: the partition rests for ``FETCH_BACKOFF_MS`` and is tried again. A failed
call to the source broker parks nothing: the fetcher backs off (``FETCH_BACKOFF_MS``) and
retries.

OFFSET_OUT_OF_RANGE with a ``log_start_offset`` above the fetch offset means the leader
has deleted (retention) the prefix we would copy next: nothing below its log start can
ever be fetched, so the follower empties its log and restarts it there
(``truncate_fully_and_start_at``), as Kafka does, and fetches on from that offset. Any
other OFFSET_OUT_OF_RANGE means our log ends past the leader's: the partition goes back to
the truncation phase, as does one whose log end moved while its fetch was in flight.

Before a partition's truncation point is chosen, the fetcher waits for every write queued
to the store before it (``barrier``): appends this node accepted while it still led the
partition then land first, and are truncated away if the new leader does not hold them.

I/O goes through two small ports so that the logic is tested without sockets:
``ReplicaTransport.call(broker_id, api_key, body, timeout_ms)`` and the ``ReplicaLog`` part
of ``storage.log.PartitionLog`` that a follower uses.

Wire shapes (requests are msgpack maps like every other API):

    OffsetsForLeaderEpoch (23)
        request  {"replica_id", "topics": [{"name", "partitions": [{"index",
                  "current_leader_epoch", "leader_epoch"}]}]}
        response {"topics": [{"name", "partitions": [{"index", "error_code",
                  "leader_epoch", "end_offset"}]}]}
    Fetch (1) with "replica_id" = the follower's broker id, as in ``cluster.protocol.api``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from dataclasses import dataclass
from typing import Any, Awaitable, Protocol

from cluster.peer import PeerError
from cluster.protocol import errors
from cluster.protocol.api import ApiKey
from cluster.replication import follower_high_watermark, latest_epoch, truncation_offset
from storage import batch as batch_codec

logger = logging.getLogger(__name__)

OFFSETS_FOR_LEADER_EPOCH_API_KEY = int(ApiKey.OFFSET_FOR_LEADER_EPOCH)
FETCH_MAX_WAIT_MS = 500
FETCH_MIN_BYTES = 1
FETCH_MAX_BYTES = 16 << 20
PARTITION_FETCH_MAX_BYTES = 1 << 20
FETCH_BACKOFF_MS = 100
TRUNCATION_ROUNDS_MAX = 16  # each round lowers the latest local epoch; far more than needed
CALL_TIMEOUT_MARGIN_MS = 5000  # a call may take the long poll plus this

NO_OFFSET = -1  # a Fetch answer without a log start offset

PartitionKey = tuple[str, int]  # (topic_id, partition index), as in cluster.partitions

# Errors after which the partition waits for the metadata to name a new leader epoch.
PARKING_ERRORS = frozenset({errors.FENCED_LEADER_EPOCH})
# Errors of a leader whose metadata may lag ours: rest, then try again.
RESTING_ERRORS = frozenset({
    errors.UNKNOWN_LEADER_EPOCH, errors.NOT_LEADER_OR_FOLLOWER, errors.UNKNOWN_TOPIC_OR_PARTITION,
    errors.LEADER_NOT_AVAILABLE,
})


class ReplicaTransport(Protocol):
    def call(self, broker_id: int, api_key: int, body: dict[str, Any],
             timeout_ms: int) -> Awaitable[dict[str, Any]]: ...


class ReplicaLog(Protocol):
    @property
    def log_end_offset(self) -> int: ...

    @property
    def high_watermark(self) -> int: ...

    def set_high_watermark(self, offset: int) -> None: ...

    def leader_epoch_entries(self) -> list[tuple[int, int]]: ...

    def append(self, batch: bytes | memoryview, leader_epoch: int, *,
               assign_offsets: bool = True) -> concurrent.futures.Future[Any]: ...

    def truncate_to(self, offset: int) -> concurrent.futures.Future[None]: ...

    def barrier(self) -> concurrent.futures.Future[None]: ...

    def truncate_fully_and_start_at(self, offset: int) -> concurrent.futures.Future[None]: ...


@dataclass
class FollowedPartition:
    topic_id: str
    topic: str  # the name, as the wire speaks it
    index: int
    leader_epoch: int
    log: ReplicaLog
    truncated: bool = False  # truncation for ``leader_epoch`` done
    parked: bool = False  # the leader refused us: wait for new metadata

    @property
    def key(self) -> PartitionKey:
        return (self.topic_id, self.index)


class SourceFetcher:
    """Copies every partition this node follows from one source broker."""

    def __init__(self, node_id: int, source_id: int, transport: ReplicaTransport, *,
                 max_wait_ms: int = FETCH_MAX_WAIT_MS,
                 partition_max_bytes: int = PARTITION_FETCH_MAX_BYTES) -> None:
        self.node_id = node_id
        self.source_id = source_id
        self._transport = transport
        self._max_wait_ms = max_wait_ms
        self._partition_max_bytes = partition_max_bytes
        self.partitions: dict[PartitionKey, FollowedPartition] = {}
        self._changed = asyncio.Event()

    # -- what to follow -------------------------------------------------------------------

    def assign(self, partition: FollowedPartition) -> None:
        """Follow ``partition`` (again): a new leader epoch means truncating first."""
        current = self.partitions.get(partition.key)
        if current is not None and current.leader_epoch == partition.leader_epoch \
                and current.log is partition.log:
            return
        self.partitions[partition.key] = partition
        self._changed.set()

    def remove(self, key: PartitionKey) -> None:
        self.partitions.pop(key, None)

    # -- one round ------------------------------------------------------------------------

    async def run_once(self) -> bool:
        """Truncate what needs it, then fetch once. False when the source could not be
        reached (the caller backs off)."""
        try:
            await self._truncate_pending()
            active = [p for p in self.partitions.values() if p.truncated and not p.parked]
            if not active:
                return True
            await self._fetch(active)
            return True
        except (PeerError, OSError, asyncio.TimeoutError, errors.KafkaError,
                batch_codec.CorruptBatchError) as exc:
            logger.warning("node %d fetch from broker %d failed: %s", self.node_id, self.source_id, exc)
            return False

    async def run(self, stopping: asyncio.Event) -> None:
        """Fetch until ``stopping`` is set."""
        while not stopping.is_set():
            if not any(not p.parked for p in self.partitions.values()):
                self._changed.clear()
                await _wait_any(stopping, self._changed, FETCH_BACKOFF_MS)
                continue
            if not await self.run_once():
                await _wait_any(stopping, None, FETCH_BACKOFF_MS)

    async def _truncate_pending(self) -> None:
        for _ in range(TRUNCATION_ROUNDS_MAX):
            pending = [p for p in self.partitions.values() if not p.truncated and not p.parked]
            if not pending:
                return
            # Appends this node accepted while it led (queued, not yet committed) must be in
            # the log before its epochs and end are read: landing after the truncation point
            # was chosen, they would sit below the new leader's data unnoticed.
            await asyncio.gather(*(asyncio.wrap_future(p.log.barrier()) for p in pending),
                                 return_exceptions=True)
            by_topic: dict[str, list[dict[str, Any]]] = {}
            for p in pending:
                by_topic.setdefault(p.topic, []).append({
                    "index": p.index, "current_leader_epoch": p.leader_epoch,
                    "leader_epoch": latest_epoch(p.log.leader_epoch_entries()),
                })
            response = await self._transport.call(
                self.source_id, OFFSETS_FOR_LEADER_EPOCH_API_KEY,
                {"replica_id": self.node_id,
                 "topics": [{"name": n, "partitions": parts} for n, parts in by_topic.items()]},
                CALL_TIMEOUT_MARGIN_MS)
            answers = _by_partition(response)
            for p in pending:
                answer = answers.get((p.topic, p.index))
                if answer is None:
                    continue
                code = answer.get("error_code", errors.UNKNOWN_SERVER_ERROR)
                if code != errors.NONE:
                    self._refused(p, code)
                    continue
                entries = p.log.leader_epoch_entries()
                leo = p.log.log_end_offset
                decision = truncation_offset(entries, leo, (answer["leader_epoch"], answer["end_offset"]))
                if decision.offset < leo:
                    await asyncio.wrap_future(p.log.truncate_to(decision.offset))
                    logger.info("node %d truncated %s-%d from %d to %d following broker %d at epoch %d",
                                self.node_id, p.topic, p.index, leo, decision.offset,
                                self.source_id, p.leader_epoch)
                    p.log.set_high_watermark(min(p.log.high_watermark, p.log.log_end_offset))
                p.truncated = decision.complete
        raise AssertionError(f"truncation did not converge in {TRUNCATION_ROUNDS_MAX} rounds")

    async def _fetch(self, active: list[FollowedPartition]) -> None:
        by_topic: dict[str, list[dict[str, Any]]] = {}
        fetch_offsets: dict[PartitionKey, int] = {}
        for p in active:
            fetch_offsets[p.key] = p.log.log_end_offset
            by_topic.setdefault(p.topic, []).append({
                "index": p.index, "fetch_offset": fetch_offsets[p.key],
                "partition_max_bytes": self._partition_max_bytes,
                "current_leader_epoch": p.leader_epoch,
            })
        response = await self._transport.call(
            self.source_id, ApiKey.FETCH,
            {"replica_id": self.node_id, "max_wait_ms": self._max_wait_ms,
             "min_bytes": FETCH_MIN_BYTES, "max_bytes": FETCH_MAX_BYTES,
             "topics": [{"name": n, "partitions": parts} for n, parts in by_topic.items()]},
            self._max_wait_ms + CALL_TIMEOUT_MARGIN_MS)
        answers = _by_partition(response)
        appends: list[tuple[FollowedPartition, int, list[concurrent.futures.Future[Any]]]] = []
        for p in active:
            answer = answers.get((p.topic, p.index))
            if answer is None or self.partitions.get(p.key) is not p:
                continue  # not answered, or reassigned while the fetch was in flight
            code = answer.get("error_code", errors.UNKNOWN_SERVER_ERROR)
            leader_log_start = answer.get("log_start_offset", NO_OFFSET)
            if code == errors.OFFSET_OUT_OF_RANGE and leader_log_start > fetch_offsets[p.key]:
                await self._restart_at(p, fetch_offsets[p.key], leader_log_start)
                continue
            if code == errors.OFFSET_OUT_OF_RANGE:
                # Our log ends past the leader's: it holds records the leader does not have.
                self._truncate_again(p, f"fetch offset {fetch_offsets[p.key]} is past its log end")
                continue
            if code != errors.NONE:
                self._refused(p, code)
                continue
            if p.log.log_end_offset != fetch_offsets[p.key]:
                # The log changed under the fetch (a late write of this node's own): the answer
                # no longer fits it, and where the logs agree must be settled again.
                self._truncate_again(p, f"our log end moved from {fetch_offsets[p.key]} to "
                                        f"{p.log.log_end_offset} during the fetch")
                continue
            appends.append((p, answer.get("high_watermark", 0), self._submit(p, answer.get("records") or b"")))
        # Every partition's batches were handed to the log before any is awaited: they share
        # one group commit instead of one commit (and its fsyncs) per partition in turn.
        submitted = [future for _, _, futures in appends for future in futures]
        if submitted:
            await _all_done(submitted)
        for p, leader_high_watermark, futures in appends:
            for future in futures:
                future.result()  # the first failure, in offset order, ends the round
            p.log.set_high_watermark(follower_high_watermark(
                p.log.high_watermark, leader_high_watermark, p.log.log_end_offset))

    def _submit(self, p: FollowedPartition, records: bytes) -> list[concurrent.futures.Future[Any]]:
        """Hand the batches of one partition's answer that extend its log to the log, in
        offset order; the futures of their appends."""
        futures: list[concurrent.futures.Future[Any]] = []
        expected = p.log.log_end_offset
        for view in batch_codec.split_batches(records):
            header = batch_codec.validate(view)
            if header.base_offset + header.last_offset_delta < expected:
                continue  # already held
            if header.base_offset < expected:
                # A batch straddling our log end: our last batch is not the leader's.
                self._truncate_again(p, f"the leader's batch at {header.base_offset} straddles "
                                        f"our log end {expected}")
                break
            if header.base_offset != expected:
                raise errors.CorruptMessageError(
                    f"{p.topic}-{p.index}: leader sent offset {header.base_offset}, expected {expected}")
            # The view into the response is stored as is: nobody writes to those bytes.
            futures.append(p.log.append(view, header.partition_leader_epoch, assign_offsets=False))
            expected = header.base_offset + header.last_offset_delta + 1
        return futures

    async def _restart_at(self, p: FollowedPartition, fetch_offset: int, leader_log_start: int) -> None:
        """The leader no longer holds ``fetch_offset``: empty the log and restart it at the
        leader's log start offset (Kafka's truncateFullyAndStartAt)."""
        await asyncio.wrap_future(p.log.truncate_fully_and_start_at(leader_log_start))
        logger.info("node %d restarted %s-%d at offset %d: broker %d deleted up to there "
                    "(our fetch offset was %d)", self.node_id, p.topic, p.index, leader_log_start,
                    self.source_id, fetch_offset)

    def _truncate_again(self, p: FollowedPartition, why: str) -> None:
        """Go back to the truncation phase (OffsetsForLeaderEpoch) for this partition."""
        logger.warning("node %d truncates %s-%d again following broker %d at epoch %d: %s",
                       self.node_id, p.topic, p.index, self.source_id, p.leader_epoch, why)
        p.truncated = False

    def _unpark(self, p: FollowedPartition) -> None:
        if self.partitions.get(p.key) is p and p.parked:
            p.parked = False
            self._changed.set()

    def _refused(self, p: FollowedPartition, code: int) -> None:
        if code in PARKING_ERRORS:
            p.parked = True
            logger.info("node %d parks %s-%d: broker %d answered %s", self.node_id, p.topic,
                        p.index, self.source_id, errors.error_name(code))
        elif code in RESTING_ERRORS:
            p.parked = True
            logger.debug("node %d rests %s-%d: broker %d answered %s", self.node_id, p.topic,
                         p.index, self.source_id, errors.error_name(code))
            try:
                asyncio.get_running_loop().call_later(FETCH_BACKOFF_MS / 1000, self._unpark, p)
            except RuntimeError:
                p.parked = False  # no loop: the caller's next round tries again
        else:
            logger.warning("node %d fetch of %s-%d from broker %d: error %d", self.node_id,
                           p.topic, p.index, self.source_id, code)


def _by_partition(response: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    if "topics" not in response:
        code = response.get("error_code", errors.UNKNOWN_SERVER_ERROR)
        raise errors.error_for_code(code, response.get("error_message") or "request failed")
    return {
        (topic["name"], part["index"]): part
        for topic in response["topics"] for part in topic.get("partitions", ())
    }


def _all_done(futures: list[concurrent.futures.Future[Any]]) -> asyncio.Future[None]:
    """A loop future done once every one of ``futures`` (completed by the log's writer
    thread) is done: one hop to the loop for the lot, instead of one per batch plus a gather."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    remaining = [len(futures)]
    lock = threading.Lock()  # callbacks run on the writer thread, or here if already done

    def one_done(_: concurrent.futures.Future[Any]) -> None:
        with lock:
            remaining[0] -= 1
            if remaining[0]:
                return
        try:
            loop.call_soon_threadsafe(resolve, done)
        except RuntimeError:
            pass  # the loop closed meanwhile: the node is stopping

    for future in futures:
        future.add_done_callback(one_done)
    return done


def resolve(future: asyncio.Future[Any], outcome: Any = None) -> None:
    """Complete ``future`` with ``outcome`` unless something completed it first (a wake and
    a timer may race)."""
    if not future.done():
        future.set_result(outcome)


async def _wait_any(stopping: asyncio.Event, other: asyncio.Event | None, timeout_ms: int) -> None:
    waits = [asyncio.ensure_future(stopping.wait())]
    if other is not None:
        waits.append(asyncio.ensure_future(other.wait()))
    try:
        await asyncio.wait(waits, timeout=timeout_ms / 1000, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
