"""The replica manager: roles from the metadata image, the leader's high watermark published
to the log, acks=all waiters, ISR change requests, fetchers per source broker."""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

import pytest

from cluster.protocol import errors
from cluster.replica_fetcher import SourceFetcher
from cluster.replica_manager import IsrChange, ReplicaManager
from kraft.controller import CreateTopicRequest, create_topics, register_broker
from kraft.image import MetadataImage
from kraft.lifecycle import alter_partition, fence_brokers, unfence_broker

pytestmark = pytest.mark.timeout(30)

TOPIC_ID = "id-orders"
LAG_MS = 1000
KEY = (TOPIC_ID, 0)


class FakeLog:
    def __init__(self, log_end_offset: int = 0, high_watermark: int = 0) -> None:
        self.log_end_offset = log_end_offset
        self.high_watermark = high_watermark

    def set_high_watermark(self, offset: int) -> None:
        self.high_watermark = offset

    def leader_epoch_entries(self) -> list[tuple[int, int]]:
        return []

    def append(self, batch: Any, leader_epoch: int, *, assign_offsets: bool = True) -> concurrent.futures.Future[Any]:
        raise NotImplementedError

    def truncate_to(self, offset: int) -> concurrent.futures.Future[None]:
        raise NotImplementedError


class NoTransport:
    async def call(self, broker_id: int, api_key: int, body: dict[str, Any], timeout_ms: int) -> dict[str, Any]:
        raise AssertionError("no network in these tests")


def cluster_image() -> MetadataImage:
    image = MetadataImage.EMPTY
    for broker_id in (1, 2, 3):
        image = image.apply(register_broker(image, broker_id, "127.0.0.1", 9000 + broker_id, None))
        image = image.apply(unfence_broker(image, broker_id))
    records, results = create_topics(image, [CreateTopicRequest("orders", 1, 3)], new_topic_id=lambda: TOPIC_ID)
    assert results[0].error is None
    return image.apply(records)


def manager(node_id: int) -> ReplicaManager:
    return ReplicaManager(node_id, NoTransport(), replica_lag_time_max_ms=LAG_MS,
                          fetcher_factory=lambda source: SourceFetcher(node_id, source, NoTransport()))


def test_leader_and_follower_roles_follow_the_image() -> None:
    image = cluster_image()
    partition = image.topics_by_id[TOPIC_ID].partitions[0]
    leader_id = partition.leader
    follower_id = next(b for b in partition.replicas if b != leader_id)
    leader, follower = manager(leader_id), manager(follower_id)
    leader.on_image(image, {KEY: FakeLog()}, 0)
    follower.on_image(image, {KEY: FakeLog()}, 0)
    assert KEY in leader.leaders and not leader.fetchers
    assert KEY not in follower.leaders
    assert follower.fetchers[leader_id].partitions[KEY].leader_epoch == partition.leader_epoch

    # The leader is fenced: a follower takes over, the old leader follows it.
    moved = image.apply(fence_brokers(image, [leader_id]))
    new_leader_id = moved.topics_by_id[TOPIC_ID].partitions[0].leader
    assert new_leader_id != leader_id
    leader.on_image(moved, {KEY: FakeLog()}, 10)
    assert KEY not in leader.leaders
    assert leader.fetchers[new_leader_id].partitions[KEY].leader_epoch == partition.leader_epoch + 1


def test_high_watermark_published_after_followers_fetch() -> None:
    image = cluster_image()
    partition = image.topics_by_id[TOPIC_ID].partitions[0]
    node = manager(partition.leader)
    log = FakeLog()
    node.on_image(image, {KEY: log}, 0)
    log.log_end_offset = 5
    node.on_leader_append(KEY, log)
    assert log.high_watermark == 0 and node.high_watermark(KEY, log) == 0
    followers = [b for b in partition.replicas if b != partition.leader]
    epoch = partition.leader_epoch
    assert node.on_replica_fetch(KEY, followers[0], 5, epoch, log, 1) == errors.NONE
    assert node.on_replica_fetch(KEY, followers[1], 3, epoch, log, 1) == errors.NONE
    assert log.high_watermark == 3
    assert node.on_replica_fetch(KEY, followers[1], 3, epoch - 1, log, 1) == errors.FENCED_LEADER_EPOCH
    assert node.on_replica_fetch(KEY, followers[1], 3, epoch + 1, log, 1) == errors.UNKNOWN_LEADER_EPOCH
    assert node.on_replica_fetch(KEY, followers[1], 9, epoch, log, 1) == errors.OFFSET_OUT_OF_RANGE


def test_acks_all_waits_for_the_high_watermark_or_times_out() -> None:
    image = cluster_image()
    partition = image.topics_by_id[TOPIC_ID].partitions[0]
    followers = [b for b in partition.replicas if b != partition.leader]
    epoch = partition.leader_epoch

    async def scenario() -> None:
        node = manager(partition.leader)
        log = FakeLog()
        node.on_image(image, {KEY: log}, 0)
        assert node.check_acks_all(KEY, 2) == errors.NONE
        assert node.check_acks_all(KEY, 4) == errors.NOT_ENOUGH_REPLICAS
        log.log_end_offset = 4
        node.on_leader_append(KEY, log)
        waiting = asyncio.create_task(node.wait_for_acks_all(KEY, 4, 2, 5000))
        await asyncio.sleep(0)
        assert not waiting.done()
        for follower in followers:
            node.on_replica_fetch(KEY, follower, 4, epoch, log, 1)
        assert await asyncio.wait_for(waiting, 5) == errors.NONE
        log.log_end_offset = 6
        node.on_leader_append(KEY, log)
        assert await node.wait_for_acks_all(KEY, 6, 2, 20) == errors.REQUEST_TIMED_OUT
        await node.stop()

    asyncio.run(scenario())


def test_leadership_loss_answers_waiting_acks() -> None:
    image = cluster_image()
    partition = image.topics_by_id[TOPIC_ID].partitions[0]

    async def scenario() -> None:
        node = manager(partition.leader)
        log = FakeLog()
        node.on_image(image, {KEY: log}, 0)
        log.log_end_offset = 1
        node.on_leader_append(KEY, log)
        waiting = asyncio.create_task(node.wait_for_acks_all(KEY, 1, 2, 5000))
        await asyncio.sleep(0)
        node.on_image(image.apply(fence_brokers(image, [partition.leader])), {KEY: log}, 5)
        assert await asyncio.wait_for(waiting, 5) == errors.NOT_LEADER_OR_FOLLOWER
        await node.stop()

    asyncio.run(scenario())


def test_isr_shrink_goes_through_alter_partition_and_comes_back_in_the_image() -> None:
    image = cluster_image()
    partition = image.topics_by_id[TOPIC_ID].partitions[0]
    followers = [b for b in partition.replicas if b != partition.leader]
    node = manager(partition.leader)
    log = FakeLog(log_end_offset=10, high_watermark=10)
    node.on_image(image, {KEY: log}, 0)
    node.on_replica_fetch(KEY, followers[0], 10, partition.leader_epoch, log, 900)
    assert node.isr_changes(500) == []
    changes = node.isr_changes(LAG_MS + 1)  # followers[1] never fetched
    assert changes == [IsrChange(TOPIC_ID, 0, partition.leader, partition.leader_epoch,
                                 partition.partition_epoch,
                                 tuple(b for b in partition.replicas if b != followers[1]))]
    assert node.isr_changes(LAG_MS + 2) == []  # one in flight at a time
    change = changes[0]
    records, error = alter_partition(image, change.topic_id, change.partition, change.leader_id,
                                     change.leader_epoch, change.partition_epoch, change.new_isr,
                                     image.brokers[change.leader_id].epoch)
    assert error is None
    node.on_image(image.apply(records), {KEY: log}, LAG_MS + 3)
    state = node.leaders[KEY]
    assert state.isr == change.new_isr and state.pending_isr is None

    # A refused request frees the way for the next one.
    node.on_replica_fetch(KEY, followers[1], 10, partition.leader_epoch, log, LAG_MS + 4)
    expand = node.isr_changes(LAG_MS + 5)
    assert len(expand) == 1 and followers[1] in expand[0].new_isr
    node.isr_change_failed(expand[0])
    assert node.leaders[KEY].pending_isr is None
    assert node.isr_changes(LAG_MS + 6) == expand
