"""The consumer: assign or subscribe (alone or in a group), ``poll`` records, commit offsets.

Theory of operation
-------------------
``Consumer`` is the shell around these parts:

* ``SubscriptionState`` — topics or partitions, and each partition's position;
* ``Fetcher`` — a background thread that keeps fetched batches buffered ahead of ``poll``
  and decodes them when ``poll`` asks;
* a ``NetworkClient`` — connections and cluster metadata;
* with a ``group_id``: a ``CoordinatorClient`` (OffsetCommit, OffsetFetch) and, once
  subscribed, a ``MembershipManager`` whose heartbeat thread keeps this consumer a member
  of its group (``cluster.client.group``).

Who assigns partitions. ``assign()`` is the application's choice (no membership; commits
go out as a non-member, member epoch -1). A subscription without a group means every
partition of the subscribed topics. A subscription with a group means what the group's
coordinator assigns to this member.

``poll`` does, in the application's thread: async-commit callbacks; the auto commit when
``auto_commit_interval_ms`` has passed; with a group, reconciliation of the coordinator's
assignment (below); positions for partitions without one (committed offset, else
``auto_offset_reset``); any error the fetcher stored; then it returns what the fetcher
buffered (a ``PartitionRecords`` per partition: decoded columns from which each
``ConsumerRecord`` is built when read), waiting up to ``timeout_ms``. Positions move only
past records ``poll`` returned, and ``_consumed`` remembers those positions: it is what
``commit()`` and the auto commit send, so an offset is never committed for a record the
application did not get.

Reconciliation (as Kafka's consumer of KIP-848). Partitions that left the assignment: the
auto commit commits their positions, ``on_partitions_revoked`` runs (a ``commit()`` in it
works), they are dropped from the subscription and the fetcher, and the heartbeat reports
the smaller owned set at once. Partitions that came: OffsetFetch of their committed
offsets, positions set, then ``on_partitions_assigned``. Partitions that stay are never
stopped. A member that was fenced, or left after ``max_poll_interval_ms`` without a poll,
gives up everything (``on_partitions_lost``, no commit: another member may own them) and
joins again.

Offset lookups (``beginning_offsets``, ``end_offsets``, ``offsets_for_times``, resets)
send ListOffsets to each partition's leader from the caller's thread.
"""

from __future__ import annotations

import collections
import itertools
import logging
import re
import time
from typing import Any, Callable, Iterable, Iterator, Mapping

from cluster.client import errors
from cluster.client.connection import ResponseFuture, check_body_error
from cluster.client.fetcher import Fetcher
from cluster.client.group import (
    FATAL,
    UNSUBSCRIBED,
    CoordinatorClient,
    MembershipManager,
    MembershipState,
)
from cluster.client.network import NetworkClient
from cluster.client.structs import (
    ConsumerRecord,
    OffsetAndMetadata,
    OffsetAndTimestamp,
    PartitionRecords,
    TopicPartition,
)
from cluster.client.subscription import RESET_EARLIEST, RESET_LATEST, RESET_NONE, SubscriptionState
from cluster.protocol.api import (
    CONSUMER_REPLICA_ID,
    EARLIEST_TIMESTAMP,
    LATEST_TIMESTAMP,
    NO_COMMITTED_OFFSET,
    NO_MEMBER_EPOCH,
    ApiKey,
)

log = logging.getLogger(__name__)

MISSING_TOPIC_REFRESH_MS = 1000  # how often to look again for a subscribed topic that does not exist
PATTERN_REFRESH_MS = 3000  # how often a pattern subscription without a group looks for new topics
CLOSE_TIMEOUT_MS = 30000
_RESET_TIMESTAMPS = {RESET_EARLIEST: EARLIEST_TIMESTAMP, RESET_LATEST: LATEST_TIMESTAMP}
_FENCED_COMMIT_CODES = (errors.STALE_MEMBER_EPOCH, errors.UNKNOWN_MEMBER_ID)

CommitCallback = Callable[[dict[TopicPartition, OffsetAndMetadata], "BaseException | None"], None]


class ConsumerRebalanceListener:
    """Told about assignment changes of a group member, in the thread that calls ``poll``.

    ``on_partitions_revoked`` runs before the partitions are dropped, so their positions
    are still known and ``consumer.commit()`` commits them. ``on_partitions_lost`` runs when
    the member lost them without a rebalance (fenced, or too long without ``poll``): they
    may already belong to another member, so nothing is committed; by default it calls
    ``on_partitions_revoked``.
    """

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        pass

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        pass

    def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        self.on_partitions_revoked(lost)


def list_offsets(client: NetworkClient, timestamps: Mapping[TopicPartition, int], *, timeout_ms: int,
                 retry_backoff_ms: int) -> dict[TopicPartition, tuple[int, int]]:
    """ListOffsets to each leader: ``{tp: (offset, timestamp)}``; retries until ``timeout_ms``."""
    pending = {TopicPartition(*tp): ts for tp, ts in timestamps.items()}
    found: dict[TopicPartition, tuple[int, int]] = {}
    deadline = time.monotonic() + timeout_ms / 1000
    backoff_s = retry_backoff_ms / 1000
    metadata = client.metadata
    while pending:
        by_leader: dict[int, list[TopicPartition]] = {}
        retry_error: BaseException | None = None
        node_error = False  # a node answered with a retriable error (not just an unknown leader)
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
                response = client.request_node(leader, ApiKey.LIST_OFFSETS, body)
                check_body_error(response, "ListOffsets")
            except errors.KraftError as exc:
                if not exc.retriable:
                    raise
                retry_error = exc
                node_error = True
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
                        node_error = True
                        continue
                    found[tp] = (p.get("offset", -1), p.get("timestamp", -1))
                    del pending[tp]
        if pending:
            if time.monotonic() + backoff_s > deadline:
                raise retry_error or errors.KafkaTimeoutError("ListOffsets did not complete")
            metadata.request_update()
            try:
                client.refresh_metadata({tp.topic for tp in pending})
            except errors.KraftError as exc:
                if not exc.retriable:
                    raise
            # A leader unknown only because no metadata was loaded yet (a consumer's first
            # poll) is asked at once after the refresh; a node's error backs off.
            if node_error or any(metadata.leader_for(tp.topic, tp.partition) < 0 for tp in pending):
                time.sleep(backoff_s)
    return found


def offset_commit_body(group_id: str, member_id: str, member_epoch: int,
                       offsets: Mapping[TopicPartition, OffsetAndMetadata], *, admin_reset: bool = False) -> dict[str, Any]:
    topics: dict[str, list[dict[str, Any]]] = {}
    for tp, om in sorted(offsets.items()):
        topics.setdefault(tp.topic, []).append({
            "index": tp.partition, "committed_offset": om.offset,
            "committed_leader_epoch": om.leader_epoch, "committed_metadata": om.metadata})
    body: dict[str, Any] = {"group_id": group_id, "member_id": member_id, "member_epoch": member_epoch,
                            "topics": [{"name": name, "partitions": ps} for name, ps in topics.items()]}
    if admin_reset:
        body["admin_reset"] = True
    return body


def offset_commit_errors(response: dict[str, Any]) -> dict[TopicPartition, int]:
    """``{tp: error_code}`` for every partition an OffsetCommit response refused."""
    return {TopicPartition(t["name"], p["index"]): p["error_code"]
            for t in response.get("topics", ()) for p in t.get("partitions", ()) if p.get("error_code", 0)}


def parse_offset_fetch(response: dict[str, Any], what: str) -> dict[TopicPartition, OffsetAndMetadata | None]:
    """``{tp: OffsetAndMetadata | None}`` of an OffsetFetch response; raise its errors."""
    code = response.get("error_code", 0)
    if code:
        raise errors.error_for_code(code, response.get("error_message") or what)
    found: dict[TopicPartition, OffsetAndMetadata | None] = {}
    for t in response.get("topics", ()):
        for p in t.get("partitions", ()):
            tp = TopicPartition(t["name"], p["index"])
            if p.get("error_code", 0):
                raise errors.error_for_code(p["error_code"], f"{what}: {tp.topic}-{tp.partition}")
            offset = p.get("committed_offset", NO_COMMITTED_OFFSET)
            found[tp] = (OffsetAndMetadata(offset, p.get("committed_metadata"), p.get("committed_leader_epoch", -1))
                         if offset >= 0 else None)
    return found


def _offset_fetch_body(group_id: str, tps: Iterable[TopicPartition] | None) -> dict[str, Any]:
    if tps is None:
        return {"group_id": group_id, "topics": None}
    by_topic: dict[str, list[int]] = {}
    for tp in tps:
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    return {"group_id": group_id,
            "topics": [{"name": name, "partitions": sorted(ps)} for name, ps in sorted(by_topic.items())]}


def _names(tps: Iterable[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}-{tp.partition}" for tp in sorted(tps))


class Consumer:
    """Not thread-safe (as in Kafka): use one consumer from one thread at a time."""

    def __init__(
        self,
        *topics: str,
        bootstrap_servers: str | list[str] = "127.0.0.1:9092",
        group_id: str | None = None,
        group_instance_id: str | None = None,
        enable_auto_commit: bool = True,
        auto_commit_interval_ms: int = 5000,
        auto_offset_reset: str = RESET_EARLIEST,
        session_timeout_ms: int = 10000,
        max_poll_interval_ms: int = 300000,
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
                            ("max_poll_records", max_poll_records), ("request_timeout_ms", request_timeout_ms),
                            ("auto_commit_interval_ms", auto_commit_interval_ms),
                            ("session_timeout_ms", session_timeout_ms), ("max_poll_interval_ms", max_poll_interval_ms)):
            if not isinstance(value, int) or value <= 0:
                raise errors.ConfigError(f"{name} must be a positive integer, got {value!r}")
        if fetch_min_bytes < 0 or fetch_max_wait_ms < 0:
            raise errors.ConfigError("fetch_min_bytes and fetch_max_wait_ms must not be negative")
        if fetch_max_wait_ms >= request_timeout_ms:
            raise errors.ConfigError("request_timeout_ms must be larger than fetch_max_wait_ms (a long poll would time out)")
        if group_id is not None and (not isinstance(group_id, str) or not group_id):
            raise errors.ConfigError(f"group_id must be a non-empty str, got {group_id!r}")
        if group_instance_id is not None and group_id is None:
            raise errors.ConfigError("group_instance_id needs a group_id")
        self.group_id = group_id
        self.group_instance_id = group_instance_id
        self.enable_auto_commit = enable_auto_commit
        self.auto_commit_interval_ms = auto_commit_interval_ms
        self.session_timeout_ms = session_timeout_ms
        self.max_poll_interval_ms = max_poll_interval_ms
        self.max_poll_records = max_poll_records
        self.request_timeout_ms = request_timeout_ms
        self.consumer_timeout_ms = consumer_timeout_ms
        self.client_id = client_id
        self._retry_backoff_ms = retry_backoff_ms
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
        self._coordinator = (CoordinatorClient(self._client, group_id, retry_backoff_ms=retry_backoff_ms)
                             if group_id is not None else None)
        self._membership: MembershipManager | None = None
        self._listener = ConsumerRebalanceListener()
        self._consumed: dict[TopicPartition, int] = {}  # position after the records poll returned
        self._committed: dict[TopicPartition, int] = {}  # what this consumer last committed
        self._async_done: collections.deque[tuple[dict, ResponseFuture, CommitCallback | None]] = collections.deque()
        self._async_in_flight: list[ResponseFuture] = []
        self._auto_commit_future: ResponseFuture | None = None
        self._next_auto_commit_s = time.monotonic() + auto_commit_interval_ms / 1000
        self._metadata_version_assigned = -1
        self._iterator: Iterator[ConsumerRecord] | None = None
        self._closed = False
        self._fetcher.start()
        if topics:
            self.subscribe(list(topics))

    # -- subscription -------------------------------------------------------------------

    def subscribe(self, topics: Iterable[str] = (), pattern: str | re.Pattern[str] | None = None,
                  listener: ConsumerRebalanceListener | None = None) -> None:
        """Read ``topics`` (or every topic whose name matches ``pattern``).

        Without a group: every partition of them, also new ones. With a ``group_id``: the
        partitions the group's coordinator assigns to this consumer; ``listener`` hears of
        every change of that assignment.
        """
        self._check_open()
        names = [topics] if isinstance(topics, str) else list(topics)
        if (pattern is None) == (not names):
            raise errors.IllegalStateError("subscribe() takes topics or a pattern (one of them)")
        member = self.group_id is not None  # a member keeps its partitions until the group revokes them
        if pattern is not None:
            self._subscriptions.subscribe_pattern(pattern, keep_assignment=member)
        else:
            self._subscriptions.subscribe(names, keep_assignment=member)
        if listener is not None:
            self._listener = listener
        self._metadata_version_assigned = -1
        self._client.metadata.request_update()
        if self.group_id is None:
            return
        assert self._coordinator is not None
        if self._membership is None:
            state = MembershipState(
                self.group_id, client_id=self.client_id, session_timeout_ms=self.session_timeout_ms,
                rebalance_timeout_ms=self.max_poll_interval_ms, instance_id=self.group_instance_id,
                retry_backoff_ms=self._retry_backoff_ms, now_ms=_now_ms())
            self._membership = MembershipManager(state, self._coordinator, on_change=self._wake_poll)
        membership = self._membership
        regex = self._subscriptions.pattern.pattern if self._subscriptions.pattern is not None else None
        with membership.lock:
            membership.state.poll_called(_now_ms())
            if regex is not None:
                membership.state.subscribe(topic_regex=regex)
            else:
                membership.state.subscribe(topic_names=names)
        membership.notify()

    def subscription(self) -> set[str] | None:
        """The subscribed topics (for a pattern: the matching topics known so far)."""
        subs = self._subscriptions
        if subs.subscribed is None:
            return None
        if subs.pattern is not None and self._is_member():  # the coordinator resolves the pattern
            return {tp.topic for tp in subs.assigned()}
        return set(subs.subscribed)

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        """Read exactly these partitions; with a ``group_id`` commits still work, but this
        consumer is no group member."""
        self._check_open()
        tps = [TopicPartition(*tp) for tp in partitions]
        self._subscriptions.assign(tps)
        self._forget(set(self._consumed) - set(tps))
        self._client.metadata.request_update()

    def assignment(self) -> set[TopicPartition]:
        return self._subscriptions.assigned()

    def unsubscribe(self) -> None:
        """Stop reading; a group member gives its partitions up (commit, revoke) and leaves."""
        if self._is_member():
            owned = self._subscriptions.assigned()
            if owned:
                self._revoke(owned)
            membership = self._membership
            assert membership is not None
            with membership.lock:
                membership.state.leave(then=UNSUBSCRIBED)
            membership.notify()
        self._forget(set(self._consumed))
        self._subscriptions.unsubscribe()

    def _is_member(self) -> bool:
        """True when the assignment comes from the group (a group id and a subscription)."""
        return self._membership is not None and self._subscriptions.is_subscribed()

    def _update_assignment(self, wait: bool) -> None:
        """Without a group, a subscription is all partitions of its topics."""
        subs = self._subscriptions
        if subs.subscribed is None:
            return
        metadata = self._client.metadata
        if subs.pattern is not None and wait:
            if metadata.age_ms(_now_ms()) >= PATTERN_REFRESH_MS or metadata.version == 0:
                try:
                    self._client.refresh_metadata(None)
                except errors.KraftError as exc:
                    log.debug("metadata refresh for the pattern subscription failed: %s", exc)
            subs.set_pattern_topics(metadata.topics())
        missing = [t for t in subs.subscribed if metadata.topic(t) is None]
        if missing and wait:
            if metadata.age_ms(_now_ms()) >= MISSING_TOPIC_REFRESH_MS:
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

    # -- group membership: reconciliation in the application's thread ---------------------

    def _wake_poll(self) -> None:
        with self._subscriptions.lock:
            self._subscriptions.data_ready.notify_all()

    def _reconcile(self) -> None:
        """Bring the owned partitions to the coordinator's assignment (see the module doc)."""
        membership = self._membership
        assert membership is not None
        with membership.lock:
            membership.state.poll_called(_now_ms())
            if membership.state.state == FATAL and membership.state.fatal_error is not None:
                raise membership.state.fatal_error
            release = membership.state.needs_release()
        if release:
            lost = self._subscriptions.assigned()
            try:
                if lost:
                    log.info("group %s: partitions lost: %s", self.group_id, _names(lost))
                    self._listener.on_partitions_lost(set(lost))
            finally:
                self._subscriptions.assign_from_group([])
                self._forget(lost)
                with membership.lock:
                    membership.state.released()
                membership.notify()
        with membership.lock:
            target = membership.state.assignment_to_reconcile()
        if target is None:
            return
        owned = self._subscriptions.assigned()
        revoked = owned - target
        added = target - owned
        if revoked:
            self._revoke(revoked)
        if added:
            try:
                committed = self._fetch_committed(added)
            except errors.KraftError as exc:
                if not exc.retriable:
                    raise
                log.warning("group %s: committed offsets of %s not known yet (%s); trying again at the next poll",
                            self.group_id, _names(added), exc)
                return
            positions = {tp: om.offset for tp, om in committed.items() if om is not None}
            self._subscriptions.assign_from_group(target, positions)
        with membership.lock:
            membership.state.reconciled(target)
        membership.notify()
        if added:
            log.info("group %s: partitions assigned: %s", self.group_id, _names(added))
            self._listener.on_partitions_assigned(set(added))

    def _revoke(self, revoked: set[TopicPartition]) -> None:
        """Commit (auto commit), tell the listener, then stop reading ``revoked``."""
        membership = self._membership
        assert membership is not None
        log.info("group %s: partitions revoked: %s", self.group_id, _names(revoked))
        try:
            if self.enable_auto_commit:
                self._commit_quietly(revoked)
            self._listener.on_partitions_revoked(set(revoked))
        finally:
            keep = self._subscriptions.assigned() - revoked
            self._subscriptions.assign_from_group(keep)
            self._forget(revoked)
            with membership.lock:
                membership.state.reconciled(keep)
            membership.notify()

    def _forget(self, tps: Iterable[TopicPartition]) -> None:
        for tp in tps:
            self._consumed.pop(tp, None)
            self._committed.pop(tp, None)

    # -- positions ----------------------------------------------------------------------

    def seek(self, partition: TopicPartition, offset: int) -> None:
        tp = TopicPartition(*partition)
        self._subscriptions.seek(tp, offset)
        self._consumed.pop(tp, None)

    def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        tps = [TopicPartition(*tp) for tp in partitions] or list(self.assignment())
        self._subscriptions.request_reset(tps, RESET_EARLIEST)
        self._forget_consumed(tps)

    def seek_to_end(self, *partitions: TopicPartition) -> None:
        tps = [TopicPartition(*tp) for tp in partitions] or list(self.assignment())
        self._subscriptions.request_reset(tps, RESET_LATEST)
        self._forget_consumed(tps)

    def _forget_consumed(self, tps: Iterable[TopicPartition]) -> None:
        for tp in tps:
            self._consumed.pop(tp, None)

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
                f"no position for {_names(no_reset)} and auto_offset_reset is 'none'")
        generations = self._subscriptions.generations(needing)
        offsets = self._list_offsets({tp: _RESET_TIMESTAMPS[s] for tp, s in needing.items()})
        for tp, (offset, _) in offsets.items():
            if tp in generations and offset >= 0:
                self._subscriptions.reset_to(tp, offset, generations[tp])

    # -- offset lookups -----------------------------------------------------------------

    def _list_offsets(self, timestamps: dict[TopicPartition, int]) -> dict[TopicPartition, tuple[int, int]]:
        return list_offsets(self._client, timestamps, timeout_ms=self.request_timeout_ms,
                            retry_backoff_ms=self._retry_backoff_ms)

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

    def poll(self, timeout_ms: float = 0, max_records: int | None = None) -> dict[TopicPartition, PartitionRecords]:
        """Records fetched for the assigned partitions, at most ``max_records`` (default
        ``max_poll_records``), waiting up to ``timeout_ms`` when none are buffered.

        Returns ``{TopicPartition: PartitionRecords}`` with only the partitions that have
        records (``{}`` when none came). A ``PartitionRecords`` is a read-only sequence of
        ``ConsumerRecord`` in offset order that behaves as a list of them (``len``, repeated
        iteration, ``[i]``, ``[-1]``, slices, ``==`` with a list, ``list(records)``) and
        builds each record when it is read, so records the application drops are freed at
        once. The positions move past exactly the records returned, whether or not the
        application reads them.
        """
        self._check_open()
        limit = self.max_poll_records if max_records is None else max_records
        if limit <= 0:
            raise ValueError("max_records must be positive")
        deadline = time.monotonic() + timeout_ms / 1000
        subs = self._subscriptions
        while True:
            self._run_commit_callbacks()
            self._maybe_auto_commit()
            if self._is_member():
                self._reconcile()
            else:
                self._update_assignment(wait=True)
            self._reset_positions()
            stored = subs.take_errors()
            if stored:
                raise stored[0]
            records = self._fetcher.collect(limit)
            if records:
                if self.group_id is not None:
                    self._consumed.update(subs.positions(records))
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
                    self._iterator = itertools.chain.from_iterable(batches.values())
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

    # -- committed offsets --------------------------------------------------------------

    def _require_group(self, what: str) -> CoordinatorClient:
        if self._coordinator is None:
            raise errors.IllegalStateError(
                f"{what} needs a group: committed offsets belong to a consumer group, so create the "
                "Consumer with group_id=...")
        return self._coordinator

    def _offsets_to_commit(self, offsets: Mapping[TopicPartition, OffsetAndMetadata | int] | None,
                           ) -> dict[TopicPartition, OffsetAndMetadata]:
        if offsets is None:
            assigned = self._subscriptions.assigned()
            return {tp: OffsetAndMetadata(offset) for tp, offset in self._consumed.items() if tp in assigned}
        found: dict[TopicPartition, OffsetAndMetadata] = {}
        for tp, value in offsets.items():
            om = OffsetAndMetadata(value) if isinstance(value, int) else OffsetAndMetadata(*value)
            if not isinstance(om.offset, int) or om.offset < 0:
                raise ValueError(f"offset for {tp} must be a non-negative int, got {om.offset!r}")
            found[TopicPartition(*tp)] = om
        return found

    def _commit_identity(self) -> tuple[str, int]:
        """``(member_id, member_epoch)`` to commit with; raise when a member is not one now."""
        if not self._is_member():
            return "", NO_MEMBER_EPOCH
        membership = self._membership
        assert membership is not None
        with membership.lock:
            identity = membership.state.commit_identity()
            state = membership.state.state
        if identity is None:
            raise errors.CommitFailedError(
                f"this consumer is not a member of group {self.group_id!r} now (it was fenced, or it left after "
                f"max_poll_interval_ms without poll; state {state}): its partitions may belong to another member. "
                "The next poll() rejoins the group")
        return identity

    def commit(self, offsets: Mapping[TopicPartition, OffsetAndMetadata | int] | None = None,
               timeout_ms: int | None = None) -> None:
        """Commit ``offsets`` (default: the positions after everything ``poll`` returned) and
        wait for the answer. A member fenced by the group raises ``CommitFailedError``."""
        self._check_open()
        self._require_group("commit()")
        self._run_commit_callbacks()
        to_commit = self._offsets_to_commit(offsets)
        if to_commit:
            self._commit_sync(to_commit, self.request_timeout_ms if timeout_ms is None else timeout_ms)

    def _commit_sync(self, offsets: dict[TopicPartition, OffsetAndMetadata], timeout_ms: int) -> None:
        coordinator = self._require_group("commit()")
        assert self.group_id is not None
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            member_id, member_epoch = self._commit_identity()
            body = offset_commit_body(self.group_id, member_id, member_epoch, offsets)
            response = coordinator.request(ApiKey.OFFSET_COMMIT, body, "OffsetCommit", deadline)
            failed = offset_commit_errors(response)
            if not failed:
                self._committed.update((tp, om.offset) for tp, om in offsets.items())
                return
            tp, code = sorted(failed.items())[0]
            if code in _FENCED_COMMIT_CODES:
                if code == errors.STALE_MEMBER_EPOCH and self._await_new_epoch((member_id, member_epoch), deadline):
                    continue  # the coordinator had moved this member on: commit with the new epoch
                raise errors.CommitFailedError(
                    f"the group {self.group_id!r} refused the commit with {errors.error_name(code)}: this member "
                    f"was fenced (member {member_id or '-'}, epoch {member_epoch}); its partitions may belong to "
                    "another member. The next poll() rejoins the group")
            error = errors.error_for_code(code, f"OffsetCommit of {tp.topic}-{tp.partition} in group {self.group_id!r}")
            if not error.retriable or time.monotonic() + self._retry_backoff_s >= deadline:
                raise error
            time.sleep(self._retry_backoff_s)  # backoff before committing again

    def _await_new_epoch(self, refused: tuple[str, int], deadline: float) -> bool:
        """After STALE_MEMBER_EPOCH: True once this member has an identity other than
        ``refused`` to commit with; False when it is no member now or at the deadline.

        The coordinator moves a member to a new epoch only in answer to the member's own
        heartbeat, so a live member whose commit was refused as stale has that answer on its
        way (or lost, and the next heartbeat gets it again): the epoch comes within about a
        heartbeat interval, and the commit is not a fenced member's.
        """
        membership = self._membership
        if membership is None or not self._is_member():
            return False
        while True:
            with membership.lock:
                identity = membership.state.commit_identity()
            if identity is None:
                return False
            if identity != refused:
                return True
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                return False
            time.sleep(min(self._retry_backoff_s, remaining_s))  # backoff until the heartbeat's answer

    def _commit_quietly(self, tps: Iterable[TopicPartition] | None = None) -> None:
        """The auto commit before a revocation and at close: failures are logged, not raised."""
        offsets = self._offsets_to_commit(None)
        if tps is not None:
            wanted = set(tps)
            offsets = {tp: om for tp, om in offsets.items() if tp in wanted}
        offsets = {tp: om for tp, om in offsets.items() if self._committed.get(tp) != om.offset}
        if not offsets:
            return
        try:
            self._commit_sync(offsets, self.request_timeout_ms)
        except errors.KraftError as exc:
            log.warning("group %s: auto commit of %s failed: %s", self.group_id, _names(offsets), exc)

    def commit_async(self, offsets: Mapping[TopicPartition, OffsetAndMetadata | int] | None = None,
                     callback: CommitCallback | None = None) -> None:
        """Commit without waiting. ``callback(offsets, exception_or_None)`` runs in a later
        ``poll``, ``commit`` or ``close`` (in the application's thread)."""
        self._check_open()
        self._require_group("commit_async()")
        self._send_async_commit(self._offsets_to_commit(offsets), callback)

    def _send_async_commit(self, offsets: dict[TopicPartition, OffsetAndMetadata],
                           callback: CommitCallback | None) -> ResponseFuture:
        coordinator = self._require_group("commit_async()")
        assert self.group_id is not None
        future = ResponseFuture()
        if not offsets:
            future.success({"topics": []})
        else:
            try:
                member_id, member_epoch = self._commit_identity()
                future = coordinator.send(
                    ApiKey.OFFSET_COMMIT, offset_commit_body(self.group_id, member_id, member_epoch, offsets))
            except errors.KraftError as exc:
                future.failure(exc)
        self._async_in_flight.append(future)
        future.add_callback(lambda f: self._async_done.append((offsets, f, callback)))
        return future

    def _run_commit_callbacks(self) -> None:
        while self._async_done:
            offsets, future, callback = self._async_done.popleft()
            if future in self._async_in_flight:
                self._async_in_flight.remove(future)
            error: BaseException | None = future.error
            if error is None:
                body = future.value or {}
                try:
                    check_body_error(body, "OffsetCommit")
                    failed = offset_commit_errors(body)
                except errors.KraftError as exc:
                    failed, error = {}, exc
                if failed:
                    tp, code = sorted(failed.items())[0]
                    if code in _FENCED_COMMIT_CODES:
                        error = errors.CommitFailedError(
                            f"the group {self.group_id!r} refused the commit with {errors.error_name(code)}: "
                            "this member was fenced; its partitions may belong to another member")
                    else:
                        error = errors.error_for_code(code, f"OffsetCommit of {tp.topic}-{tp.partition}")
            if error is None:
                self._committed.update((tp, om.offset) for tp, om in offsets.items())
            if callback is not None:
                try:
                    callback(dict(offsets), error)
                except Exception:
                    log.exception("commit callback failed")

    def _maybe_auto_commit(self) -> None:
        if not self.enable_auto_commit or self.group_id is None:
            return
        now_s = time.monotonic()
        if now_s < self._next_auto_commit_s:
            return
        if self._auto_commit_future is not None and not self._auto_commit_future.done():
            return  # one auto commit at a time
        self._next_auto_commit_s = now_s + self.auto_commit_interval_ms / 1000
        offsets = {tp: om for tp, om in self._offsets_to_commit(None).items() if self._committed.get(tp) != om.offset}
        if not offsets:
            return
        if self._is_member():
            assert self._membership is not None
            with self._membership.lock:
                if self._membership.state.commit_identity() is None:
                    return  # not a member right now: the reconciliation decides what happens

        def done(committed: dict[TopicPartition, OffsetAndMetadata], error: BaseException | None) -> None:
            if error is not None:
                log.warning("group %s: auto commit of %s failed: %s", self.group_id, _names(committed), error)

        self._auto_commit_future = self._send_async_commit(offsets, done)

    def committed(self, partitions: TopicPartition | Iterable[TopicPartition], timeout_ms: int | None = None,
                  ) -> Any:
        """The group's committed offsets (OffsetFetch). For one ``TopicPartition``: the offset
        (an int) or None; for a collection: ``{tp: OffsetAndMetadata | None}``."""
        self._check_open()
        self._require_group("committed()")
        single = isinstance(partitions, tuple) and len(partitions) == 2 and isinstance(partitions[0], str)
        tps = [TopicPartition(*partitions)] if single else [TopicPartition(*tp) for tp in partitions]  # type: ignore[misc]
        found = self._fetch_committed(tps, timeout_ms)
        if single:
            om = found.get(tps[0])
            return om.offset if om is not None else None
        return {tp: found.get(tp) for tp in tps}

    def _fetch_committed(self, tps: Iterable[TopicPartition], timeout_ms: int | None = None,
                         ) -> dict[TopicPartition, OffsetAndMetadata | None]:
        coordinator = self._require_group("committed()")
        assert self.group_id is not None
        deadline = time.monotonic() + (self.request_timeout_ms if timeout_ms is None else timeout_ms) / 1000
        response = coordinator.request(ApiKey.OFFSET_FETCH, _offset_fetch_body(self.group_id, tps),
                                       "OffsetFetch", deadline)
        return parse_offset_fetch(response, f"OffsetFetch of group {self.group_id!r}")

    # -- lifecycle ----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise errors.IllegalStateError("the consumer is closed")

    def close(self, timeout_ms: int = CLOSE_TIMEOUT_MS) -> None:
        """Commit (auto commit), give the partitions up (revoke), leave the group at once,
        then stop the threads."""
        if self._closed:
            return
        try:
            if self._is_member():
                owned = self._subscriptions.assigned()
                try:
                    if self.enable_auto_commit:
                        self._commit_quietly()
                    if owned:
                        self._listener.on_partitions_revoked(set(owned))
                except Exception:
                    log.exception("group %s: revoking partitions at close failed", self.group_id)
            elif self.group_id is not None and self.enable_auto_commit:
                self._commit_quietly()
            if self._membership is not None:
                self._membership.close()
            deadline = time.monotonic() + timeout_ms / 1000
            for future in list(self._async_in_flight):
                if not future.done():
                    try:
                        future.result(max(0.0, deadline - time.monotonic()))
                    except errors.KraftError:
                        pass
            self._run_commit_callbacks()
        finally:
            self._closed = True
            self._fetcher.close()
            self._client.close()

    def __enter__(self) -> "Consumer":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _now_ms() -> float:
    return time.monotonic() * 1000
