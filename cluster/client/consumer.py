"""The consumer: assign or subscribe, then ``poll`` records; seek, pause, look up offsets.

Theory of operation
-------------------
``Consumer`` is the shell around three parts:

* ``SubscriptionState`` — topics or partitions, and each partition's position;
* ``Fetcher`` — a background thread that keeps fetched batches buffered ahead of ``poll``
  and decodes them when ``poll`` asks;
* a ``NetworkClient`` — connections and cluster metadata.

``poll`` first brings the assignment up to date (without a group, a subscription means
every partition of the subscribed topics; a group coordinator will take this job),
resolves partitions that have no position with ListOffsets (``auto_offset_reset``, or the
strategy a ``seek_to_beginning``/``seek_to_end`` asked for), raises any error the fetcher
stored, and returns what the fetcher has buffered, waiting up to ``timeout_ms`` for data.
Positions move only past records ``poll`` returned.

Offset lookups (``beginning_offsets``, ``end_offsets``, ``offsets_for_times``, resets)
send ListOffsets to each partition's leader from the caller's thread.

Committed offsets and consumer groups do not exist yet: ``group_id`` is kept,
``commit``/``committed`` raise ``NotImplementedError``.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Iterable, Iterator

from cluster.client import errors
from cluster.client.connection import check_body_error
from cluster.client.fetcher import Fetcher
from cluster.client.network import NetworkClient
from cluster.client.structs import ConsumerRecord, OffsetAndTimestamp, TopicPartition
from cluster.client.subscription import RESET_EARLIEST, RESET_LATEST, RESET_NONE, SubscriptionState
from cluster.protocol.api import CONSUMER_REPLICA_ID, EARLIEST_TIMESTAMP, LATEST_TIMESTAMP, ApiKey

log = logging.getLogger(__name__)

MISSING_TOPIC_REFRESH_MS = 1000  # how often to look again for a subscribed topic that does not exist
_RESET_TIMESTAMPS = {RESET_EARLIEST: EARLIEST_TIMESTAMP, RESET_LATEST: LATEST_TIMESTAMP}


class Consumer:
    """Not thread-safe (as in Kafka): use one consumer from one thread at a time."""

    def __init__(
        self,
        *topics: str,
        bootstrap_servers: str | list[str] = "127.0.0.1:9092",
        group_id: str | None = None,
        auto_offset_reset: str = RESET_EARLIEST,
        fetch_min_bytes: int = 1,
        fetch_max_wait_ms: int = 500,
        fetch_max_bytes: int = 52428800,
        max_partition_fetch_bytes: int = 1048576,
        max_poll_records: int = 500,
        request_timeout_ms: int = 30000,
        retry_backoff_ms: int = 100,
        metadata_max_age_ms: int = 300000,
        connect_timeout_ms: int = 10000,
        consumer_timeout_ms: float = float("inf"),
        client_id: str = "kraft-consumer",
    ) -> None:
        for name, value in (("fetch_max_bytes", fetch_max_bytes), ("max_partition_fetch_bytes", max_partition_fetch_bytes),
                            ("max_poll_records", max_poll_records), ("request_timeout_ms", request_timeout_ms)):
            if not isinstance(value, int) or value <= 0:
                raise errors.ConfigError(f"{name} must be a positive integer, got {value!r}")
        if fetch_min_bytes < 0 or fetch_max_wait_ms < 0:
            raise errors.ConfigError("fetch_min_bytes and fetch_max_wait_ms must not be negative")
        if fetch_max_wait_ms >= request_timeout_ms:
            raise errors.ConfigError("request_timeout_ms must be larger than fetch_max_wait_ms (a long poll would time out)")
        self.group_id = group_id
        self.max_poll_records = max_poll_records
        self.request_timeout_ms = request_timeout_ms
        self.consumer_timeout_ms = consumer_timeout_ms
        self._retry_backoff_s = retry_backoff_ms / 1000
        self._client = NetworkClient(
            bootstrap_servers, client_id=client_id, request_timeout_ms=request_timeout_ms,
            connect_timeout_ms=connect_timeout_ms, retry_backoff_ms=retry_backoff_ms,
            metadata_max_age_ms=metadata_max_age_ms)
        self._subscriptions = SubscriptionState(auto_offset_reset)
        self._fetcher = Fetcher(
            self._client, self._subscriptions, fetch_min_bytes=fetch_min_bytes,
            fetch_max_wait_ms=fetch_max_wait_ms, fetch_max_bytes=fetch_max_bytes,
            max_partition_fetch_bytes=max_partition_fetch_bytes, retry_backoff_ms=retry_backoff_ms)
        self._metadata_version_assigned = -1
        self._iterator: Iterator[ConsumerRecord] | None = None
        self._closed = False
        self._fetcher.start()
        if topics:
            self.subscribe(list(topics))

    # -- subscription -------------------------------------------------------------------

    def subscribe(self, topics: Iterable[str]) -> None:
        """Read every partition of ``topics`` (without a group: all of them, also new ones)."""
        self._check_open()
        self._subscriptions.subscribe(topics)
        self._metadata_version_assigned = -1
        self._client.metadata.request_update()

    def subscription(self) -> set[str] | None:
        subscribed = self._subscriptions.subscribed
        return set(subscribed) if subscribed is not None else None

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        self._check_open()
        self._subscriptions.assign(partitions)
        self._client.metadata.request_update()

    def assignment(self) -> set[TopicPartition]:
        return self._subscriptions.assigned()

    def unsubscribe(self) -> None:
        self._subscriptions.unsubscribe()

    def _update_assignment(self, wait: bool) -> None:
        """Without a group, a subscription is all partitions of its topics."""
        subs = self._subscriptions
        if subs.subscribed is None:
            return
        metadata = self._client.metadata
        missing = [t for t in subs.subscribed if metadata.topic(t) is None]
        if missing and wait:
            if metadata.age_ms(time.monotonic() * 1000) >= MISSING_TOPIC_REFRESH_MS:
                metadata.request_update()  # a subscribed topic may have been created since
            try:
                self._client.maybe_refresh_metadata(set(subs.subscribed))
            except errors.KraftError as exc:
                log.debug("metadata refresh for %s failed: %s", missing, exc)
        if metadata.version == self._metadata_version_assigned:
            return
        self._metadata_version_assigned = metadata.version
        tps: list[TopicPartition] = []
        for topic in subs.subscribed:
            description = metadata.topic(topic)
            if description is not None:
                tps.extend(TopicPartition(topic, p.partition) for p in description.partitions)
        if subs.assign_from_subscribed(tps):
            log.debug("assigned %d partitions of %s", len(tps), sorted(subs.subscribed))

    # -- positions ----------------------------------------------------------------------

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self._subscriptions.seek(TopicPartition(*partition), offset)

    def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        tps = [TopicPartition(*tp) for tp in partitions] or list(self.assignment())
        self._subscriptions.request_reset(tps, RESET_EARLIEST)

    def seek_to_end(self, *partitions: TopicPartition) -> None:
        tps = [TopicPartition(*tp) for tp in partitions] or list(self.assignment())
        self._subscriptions.request_reset(tps, RESET_LATEST)

    def position(self, partition: TopicPartition) -> int:
        """The offset of the next record ``poll`` returns for ``partition`` (looked up if unknown)."""
        tp = TopicPartition(*partition)
        position = self._subscriptions.position(tp)
        if position is None:
            self._reset_positions()
            position = self._subscriptions.position(tp)
            if position is None:
                raise errors.KafkaTimeoutError(f"no position for {tp.topic}-{tp.partition}")
        return position

    def _reset_positions(self) -> None:
        """Look up positions of partitions without one; raise for ``auto_offset_reset='none'``."""
        needing = self._subscriptions.needing_reset()
        if not needing:
            return
        no_reset = [tp for tp, strategy in needing.items() if strategy == RESET_NONE]
        if no_reset:
            raise errors.NoOffsetForPartitionError(
                f"no position for {', '.join(f'{tp.topic}-{tp.partition}' for tp in sorted(no_reset))} "
                "and auto_offset_reset is 'none'")
        generations = self._subscriptions.generations(needing)
        offsets = self._list_offsets({tp: _RESET_TIMESTAMPS[s] for tp, s in needing.items()})
        for tp, (offset, _) in offsets.items():
            if tp in generations and offset >= 0:
                self._subscriptions.reset_to(tp, offset, generations[tp])

    # -- offset lookups -----------------------------------------------------------------

    def _list_offsets(self, timestamps: dict[TopicPartition, int]) -> dict[TopicPartition, tuple[int, int]]:
        """ListOffsets to each leader: ``{tp: (offset, timestamp)}``; retries until the request timeout."""
        pending = {TopicPartition(*tp): ts for tp, ts in timestamps.items()}
        found: dict[TopicPartition, tuple[int, int]] = {}
        deadline = time.monotonic() + self.request_timeout_ms / 1000
        metadata = self._client.metadata
        while pending:
            by_leader: dict[int, list[TopicPartition]] = {}
            retry_error: BaseException | None = None
            for tp in pending:
                leader = metadata.leader_for(tp.topic, tp.partition)
                if leader < 0:
                    retry_error = errors.LeaderNotAvailableError(f"no known leader for {tp.topic}-{tp.partition}")
                    continue
                by_leader.setdefault(leader, []).append(tp)
            for leader, tps in by_leader.items():
                topics: dict[str, list[dict[str, int]]] = {}
                for tp in tps:
                    topics.setdefault(tp.topic, []).append({"index": tp.partition, "timestamp": pending[tp]})
                body = {"replica_id": CONSUMER_REPLICA_ID,
                        "topics": [{"name": name, "partitions": ps} for name, ps in topics.items()]}
                try:
                    response = self._client.request_node(leader, ApiKey.LIST_OFFSETS, body)
                    check_body_error(response, "ListOffsets")
                except errors.KraftError as exc:
                    if not exc.retriable:
                        raise
                    retry_error = exc
                    continue
                for topic in response.get("topics", ()):
                    for p in topic.get("partitions", ()):
                        tp = TopicPartition(topic["name"], p["index"])
                        if tp not in pending:
                            continue
                        code = p.get("error_code", 0)
                        if code:
                            error = errors.error_for_code(code, f"ListOffsets for {tp.topic}-{tp.partition}")
                            if not error.retriable:
                                raise error
                            retry_error = error
                            continue
                        found[tp] = (p.get("offset", -1), p.get("timestamp", -1))
                        del pending[tp]
            if pending:
                if time.monotonic() + self._retry_backoff_s > deadline:
                    raise retry_error or errors.KafkaTimeoutError("ListOffsets did not complete")
                metadata.request_update()
                try:
                    self._client.refresh_metadata({tp.topic for tp in pending})
                except errors.KraftError as exc:
                    if not exc.retriable:
                        raise
                if any(metadata.leader_for(tp.topic, tp.partition) < 0 for tp in pending) or retry_error:
                    time.sleep(self._retry_backoff_s)  # backoff before asking again
        return found

    def beginning_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        offsets = self._list_offsets({tp: EARLIEST_TIMESTAMP for tp in partitions})
        return {tp: offset for tp, (offset, _) in offsets.items()}

    def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The high watermark of each partition: the offset the next record will get."""
        offsets = self._list_offsets({tp: LATEST_TIMESTAMP for tp in partitions})
        return {tp: offset for tp, (offset, _) in offsets.items()}

    def offsets_for_times(self, timestamps: dict[TopicPartition, int]) -> dict[TopicPartition, OffsetAndTimestamp | None]:
        """The earliest offset whose batch has a timestamp >= the given one (None: no such record)."""
        for tp, ts in timestamps.items():
            if not isinstance(ts, int) or ts < 0:
                raise ValueError(f"timestamp for {tp} must be a non-negative int (ms), got {ts!r}")
        offsets = self._list_offsets(timestamps)
        return {tp: (OffsetAndTimestamp(offset, ts) if offset >= 0 else None)
                for tp, (offset, ts) in offsets.items()}

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        self._client.refresh_metadata({topic} | self._subscriptions.topics_of_interest())
        description = self._client.metadata.topic(topic)
        return {p.partition for p in description.partitions} if description else None

    def topics(self) -> set[str]:
        self._client.refresh_metadata(None)
        return set(self._client.metadata.topics())

    # -- poll -------------------------------------------------------------------------

    def poll(self, timeout_ms: float = 0, max_records: int | None = None) -> dict[TopicPartition, list[ConsumerRecord]]:
        """Records fetched for the assigned partitions, at most ``max_records`` (default
        ``max_poll_records``), waiting up to ``timeout_ms`` when none are buffered."""
        self._check_open()
        limit = self.max_poll_records if max_records is None else max_records
        if limit <= 0:
            raise ValueError("max_records must be positive")
        deadline = time.monotonic() + timeout_ms / 1000
        subs = self._subscriptions
        while True:
            self._update_assignment(wait=True)
            self._reset_positions()
            stored = subs.take_errors()
            if stored:
                raise stored[0]
            records = self._fetcher.collect(limit)
            if records:
                return records
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return {}
            with subs.lock:
                subs.data_ready.wait(min(remaining, self._retry_backoff_s * 5))

    def __iter__(self) -> "Consumer":
        return self

    def __next__(self) -> ConsumerRecord:
        """The next record; blocks, or stops after ``consumer_timeout_ms`` without records."""
        while True:
            if self._iterator is not None:
                record = next(self._iterator, None)
                if record is not None:
                    return record
                self._iterator = None
            timeout_ms = self.consumer_timeout_ms
            deadline = time.monotonic() + timeout_ms / 1000 if timeout_ms != float("inf") else None
            while True:
                wait_ms = 1000.0 if deadline is None else max(0.0, min(1000.0, (deadline - time.monotonic()) * 1000))
                batches = self.poll(timeout_ms=wait_ms)
                if batches:
                    self._iterator = (r for records in batches.values() for r in records)
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    raise StopIteration

    # -- flow control -----------------------------------------------------------------

    def pause(self, *partitions: TopicPartition) -> None:
        self._subscriptions.pause(TopicPartition(*tp) for tp in partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self._subscriptions.resume(TopicPartition(*tp) for tp in partitions)

    def paused(self) -> set[TopicPartition]:
        return self._subscriptions.paused()

    def highwater(self, partition: TopicPartition) -> int | None:
        """The high watermark seen in the last fetch of ``partition`` (None before one)."""
        with self._subscriptions.lock:
            state = self._subscriptions.assignment.get(TopicPartition(*partition))
            return state.high_watermark if state is not None and state.high_watermark >= 0 else None

    # -- groups (not yet) -------------------------------------------------------------

    def commit(self, offsets: Any = None) -> None:
        raise NotImplementedError("committed offsets need consumer groups, which kraft does not have yet")

    def commit_async(self, offsets: Any = None, callback: Any = None) -> None:
        raise NotImplementedError("committed offsets need consumer groups, which kraft does not have yet")

    def committed(self, partition: TopicPartition) -> int | None:
        raise NotImplementedError("committed offsets need consumer groups, which kraft does not have yet")

    # -- lifecycle ----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise errors.IllegalStateError("the consumer is closed")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._fetcher.close()
        self._client.close()

    def __enter__(self) -> "Consumer":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
