"""The node's replicas: which partitions it leads or follows, the leaders' replication
state, acks=all waiters, and the fetchers that copy followed partitions.

Theory of operation
-------------------
``ReplicaManager`` reconciles against the metadata image, like ``PartitionManager`` does for
the logs (that one opens the logs; this one gives each open log its role):

    image change --on_image(image, logs, now_ms)--> per partition held here:
        leader here, new leader epoch  -> a fresh ``replication.LeaderState`` (followers'
                                          positions unknown, each ISR follower gets a grace
                                          period), parked fetches of it dropped
        leader here, same epoch        -> ``on_isr_committed`` (the ISR or partition epoch moved)
        follower, leader L, epoch E    -> ``SourceFetcher`` of broker L follows it at E
                                          (it truncates by leader epoch first)
        no leader / not a replica      -> neither

Leader events, all on the event loop:

    local append committed --on_leader_append(key, log)--> HW moves? publish it to the log,
        complete acks=all waiters whose offset is now below it
    replica Fetch --on_replica_fetch(key, follower, fetch_offset, leader_epoch, log, now_ms)
        --> error code (stale epoch, not the leader, offset past our log end) or NONE; HW as above
    acks=all produce --check_acks_all(key, min isr) before the append (NOT_ENOUGH_REPLICAS),
        then ``await wait_for_acks_all(key, required_offset, min isr, timeout_ms)``: the
        produce task awaits its waiter's future directly (a timer resolves it on timeout),
        so the Fetch that moves the high watermark resumes it in the next loop iteration
    ISR check (every ``ISR_CHECK_INTERVAL_MS``) --isr_changes(now_ms)--> AlterPartition
        requests; ``isr_change_failed(key)`` when one is refused, the image confirms the rest

The decisions are ``cluster.replication``'s; this module only keeps the objects, the
futures and the fetcher tasks. Fetchers are grouped by source broker: one per leader broker,
carrying every partition this node follows there.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Callable, Mapping

from cluster.protocol import errors
from cluster.replica_fetcher import FollowedPartition, ReplicaLog, ReplicaTransport, SourceFetcher, resolve
from cluster.replication import NONE, LeaderState
from kraft.image import MetadataImage
from kraft.records import NO_LEADER

logger = logging.getLogger(__name__)

ISR_CHECK_INTERVAL_MS = 500
ACKS_WAITERS_PER_PARTITION_MAX = 100_000  # beyond this, acks=all produces are refused

PartitionKey = tuple[str, int]


@dataclass(frozen=True)
class IsrChange:
    """An AlterPartition request this leader should send."""

    topic_id: str
    partition: int
    leader_id: int
    leader_epoch: int
    partition_epoch: int
    new_isr: tuple[int, ...]


class _AcksWaiter:
    __slots__ = ("required_offset", "min_insync_replicas", "future")

    def __init__(self, required_offset: int, min_insync_replicas: int,
                 future: asyncio.Future[str]) -> None:
        self.required_offset = required_offset
        self.min_insync_replicas = min_insync_replicas
        self.future = future


class ReplicaManager:
    """Roles and replication state of the partitions held by one node."""

    def __init__(self, node_id: int, transport: ReplicaTransport, *,
                 replica_lag_time_max_ms: int,
                 fetcher_factory: Callable[[int], SourceFetcher] | None = None) -> None:
        self.node_id = node_id
        self.replica_lag_time_max_ms = replica_lag_time_max_ms
        self.leaders: dict[PartitionKey, LeaderState] = {}
        self.fetchers: dict[int, SourceFetcher] = {}
        self._fetcher_tasks: dict[int, asyncio.Task[None]] = {}
        self._stopping = asyncio.Event()
        self._waiters: dict[PartitionKey, list[_AcksWaiter]] = {}
        self._logs: dict[PartitionKey, ReplicaLog] = {}
        self._make_fetcher = fetcher_factory or (
            lambda source_id: SourceFetcher(node_id, source_id, transport))

    # -- roles ----------------------------------------------------------------------------

    def on_image(self, image: MetadataImage, logs: Mapping[PartitionKey, ReplicaLog], now_ms: int) -> None:
        """Give every partition held here its role in ``image``."""
        followed: dict[int, set[PartitionKey]] = {}
        still_leading: set[PartitionKey] = set()
        for topic in image.topics_by_id.values():
            for index, partition in topic.partitions.items():
                key = (topic.topic_id, index)
                log = logs.get(key)
                if log is None or self.node_id not in partition.replicas:
                    continue
                self._logs[key] = log
                if partition.leader == self.node_id:
                    still_leading.add(key)
                    self._lead(key, partition.replicas, partition.isr, partition.leader_epoch,
                               partition.partition_epoch, log, now_ms, topic.name)
                elif partition.leader != NO_LEADER:
                    followed.setdefault(partition.leader, set()).add(key)
                    self._follow(partition.leader, FollowedPartition(
                        topic.topic_id, topic.name, index, partition.leader_epoch, log))
        for key in list(self.leaders):
            if key not in still_leading:
                self._resign(key, errors.NOT_LEADER_OR_FOLLOWER)
        for source_id, fetcher in self.fetchers.items():
            for key in list(fetcher.partitions):
                if key not in followed.get(source_id, ()):
                    fetcher.remove(key)
        for key in list(self._logs):
            if key not in logs:
                del self._logs[key]

    def _lead(self, key: PartitionKey, replicas: tuple[int, ...], isr: tuple[int, ...],
              leader_epoch: int, partition_epoch: int, log: ReplicaLog, now_ms: int,
              name: str) -> None:
        state = self.leaders.get(key)
        if state is not None and state.leader_epoch == leader_epoch:
            if partition_epoch > state.partition_epoch:
                if state.on_isr_committed(isr, partition_epoch):
                    self._publish(key, state)
            return
        if state is not None:
            self._resign(key, errors.NOT_LEADER_OR_FOLLOWER)
        for fetcher in self.fetchers.values():
            fetcher.remove(key)
        leo = log.log_end_offset
        self.leaders[key] = LeaderState(
            leader_id=self.node_id, replicas=replicas, isr=isr, leader_epoch=leader_epoch,
            partition_epoch=partition_epoch, log_end_offset=leo,
            high_watermark=min(log.high_watermark, leo), now_ms=now_ms)
        logger.info("node %d became leader of %s-%d at epoch %d (isr %s, log end %d)",
                    self.node_id, name, key[1], leader_epoch, list(isr), leo)

    def _follow(self, source_id: int, partition: FollowedPartition) -> None:
        if partition.key in self.leaders:
            self._resign(partition.key, errors.NOT_LEADER_OR_FOLLOWER)
        for other_id, fetcher in self.fetchers.items():
            if other_id != source_id:
                fetcher.remove(partition.key)
        existing = self.fetchers.get(source_id)
        if existing is not None:
            fetcher = existing
        else:
            fetcher = self.fetchers[source_id] = self._make_fetcher(source_id)
            if not self._stopping.is_set():
                try:
                    self._fetcher_tasks[source_id] = asyncio.get_running_loop().create_task(
                        fetcher.run(self._stopping))
                except RuntimeError:
                    pass  # no loop (pure tests): the caller drives run_once itself
        known = fetcher.partitions.get(partition.key)
        if known is None or known.leader_epoch != partition.leader_epoch:
            logger.info("node %d follows %s-%d from broker %d at epoch %d", self.node_id,
                        partition.topic, partition.index, source_id, partition.leader_epoch)
        fetcher.assign(partition)

    def _resign(self, key: PartitionKey, code_name: int) -> None:
        self.leaders.pop(key, None)
        for waiter in self._waiters.pop(key, []):
            if not waiter.future.done():
                waiter.future.set_result(errors.error_name(code_name))

    # -- leader events --------------------------------------------------------------------

    def high_watermark(self, key: PartitionKey, log: ReplicaLog) -> int:
        """The high watermark to serve: the leader's, or the log's own (a follower's)."""
        state = self.leaders.get(key)
        return state.high_watermark if state is not None else log.high_watermark

    def on_leader_append(self, key: PartitionKey, log: ReplicaLog) -> None:
        state = self.leaders.get(key)
        if state is not None and state.on_leader_append(log.log_end_offset):
            self._publish(key, state)

    def on_replica_fetch(self, key: PartitionKey, follower_id: int, fetch_offset: int,
                         leader_epoch: int, log: ReplicaLog, now_ms: int) -> int:
        """Account a follower's Fetch; an error code to answer with, or NONE."""
        state = self.leaders.get(key)
        if state is None:
            return errors.NOT_LEADER_OR_FOLLOWER
        if leader_epoch != state.leader_epoch:
            return (errors.FENCED_LEADER_EPOCH if leader_epoch < state.leader_epoch
                    else errors.UNKNOWN_LEADER_EPOCH)
        if follower_id not in state.followers:
            return errors.NOT_LEADER_OR_FOLLOWER
        leo = log.log_end_offset
        if not 0 <= fetch_offset <= leo:
            return errors.OFFSET_OUT_OF_RANGE
        if state.on_follower_fetch(follower_id, fetch_offset, now_ms, leo):
            self._publish(key, state)
        return errors.NONE

    def _publish(self, key: PartitionKey, state: LeaderState) -> None:
        log = self._logs.get(key)
        if log is not None:
            log.set_high_watermark(min(state.high_watermark, log.log_end_offset))
        waiters = self._waiters.get(key)
        if not waiters:
            return
        remaining = []
        for waiter in waiters:
            outcome = state.acks_all_outcome(waiter.required_offset, waiter.min_insync_replicas)
            if outcome is None:
                remaining.append(waiter)
            elif not waiter.future.done():
                waiter.future.set_result(outcome)
        if remaining:
            self._waiters[key] = remaining
        else:
            del self._waiters[key]

    # -- acks=all -------------------------------------------------------------------------

    def check_acks_all(self, key: PartitionKey, min_insync_replicas: int) -> int:
        """Before the append: NONE, NOT_ENOUGH_REPLICAS or NOT_LEADER_OR_FOLLOWER."""
        state = self.leaders.get(key)
        if state is None:
            return errors.NOT_LEADER_OR_FOLLOWER
        if not state.can_append_acks_all(min_insync_replicas):
            return errors.NOT_ENOUGH_REPLICAS
        if len(self._waiters.get(key, ())) >= ACKS_WAITERS_PER_PARTITION_MAX:
            return errors.REQUEST_TIMED_OUT
        return errors.NONE

    async def wait_for_acks_all(self, key: PartitionKey, required_offset: int,
                                min_insync_replicas: int, timeout_ms: int) -> int:
        """After the append of offsets below ``required_offset``: NONE once the high
        watermark passes them; NOT_ENOUGH_REPLICAS_AFTER_APPEND if the ISR shrank below the
        minimum meanwhile; REQUEST_TIMED_OUT after ``timeout_ms``; NOT_LEADER_OR_FOLLOWER
        if leadership moved (all of them ambiguous but NONE)."""
        state = self.leaders.get(key)
        if state is None:
            return errors.NOT_LEADER_OR_FOLLOWER
        outcome = state.acks_all_outcome(required_offset, min_insync_replicas)
        if outcome is None:
            # The produce task awaits the waiter's future itself: ``_publish`` resolving it
            # resumes the task in the next loop iteration (a wait_for/shield chain would add
            # two iterations and a task per request). The timeout is a timer that resolves
            # the same future.
            loop = asyncio.get_running_loop()
            future: asyncio.Future[str] = loop.create_future()
            waiter = _AcksWaiter(required_offset, min_insync_replicas, future)
            self._waiters.setdefault(key, []).append(waiter)
            timer = loop.call_later(max(timeout_ms, 0) / 1000, resolve, future,
                                    errors.error_name(errors.REQUEST_TIMED_OUT))
            try:
                outcome = await future
            finally:
                timer.cancel()
                waiting = self._waiters.get(key)
                if waiting is not None and waiter in waiting:
                    waiting.remove(waiter)
                    if not waiting:
                        del self._waiters[key]
        return errors.NONE if outcome == NONE else errors.error_class(outcome).code

    # -- ISR ------------------------------------------------------------------------------

    def isr_changes(self, now_ms: int) -> list[IsrChange]:
        """The AlterPartition requests to send now; each is marked in flight."""
        changes = []
        for (topic_id, index), state in sorted(self.leaders.items()):
            proposed = state.proposed_isr(now_ms, self.replica_lag_time_max_ms)
            if proposed is None:
                continue
            state.begin_isr_change(proposed)
            changes.append(IsrChange(topic_id, index, self.node_id, state.leader_epoch,
                                     state.partition_epoch, proposed))
        return changes

    def isr_change_failed(self, change: IsrChange) -> None:
        state = self.leaders.get((change.topic_id, change.partition))
        if state is not None and state.leader_epoch == change.leader_epoch \
                and state.pending_isr == change.new_isr:
            state.on_isr_change_failed()

    # -- shutdown -------------------------------------------------------------------------

    async def stop(self) -> None:
        self._stopping.set()
        for key in list(self._waiters):
            for waiter in self._waiters.pop(key):
                if not waiter.future.done():
                    waiter.future.set_result(errors.error_name(errors.REQUEST_TIMED_OUT))
        tasks = list(self._fetcher_tasks.values())
        self._fetcher_tasks.clear()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
            for task in tasks:
                task.cancel()

