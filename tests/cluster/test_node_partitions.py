"""Reconciling the LogStore against the image (pure plan + a real LogStore), and long-poll
wake-ups, in-process."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from cluster.partitions import PartitionManager, desired_partitions, reconcile_plan
from kraft import controller, lifecycle
from kraft.image import MetadataImage
from storage.log import LogStore
from tests.cluster.wire import batch

pytestmark = pytest.mark.timeout(30)


def image_with(topics: dict[str, int], brokers: tuple[int, ...] = (1,), replication_factor: int = 1) -> MetadataImage:
    image = MetadataImage.EMPTY
    for broker_id in brokers:
        image = image.apply(controller.register_broker(image, broker_id, "127.0.0.1", 9000 + broker_id, None))
        image = image.apply(lifecycle.unfence_broker(image, broker_id))
    ids = iter(f"id-{name}" for name in topics)
    records, results = controller.create_topics(
        image, [controller.CreateTopicRequest(name, n, replication_factor, {}) for name, n in topics.items()],
        new_topic_id=lambda: next(ids),
    )
    assert all(r.error is None for r in results), results
    return image.apply(records)


def test_desired_partitions_are_those_placed_on_this_node() -> None:
    image = image_with({"a": 3, "b": 2}, brokers=(1, 2, 3), replication_factor=2)
    mine = desired_partitions(image, 1)
    expected = {
        (topic.topic_id, p.partition)
        for topic in image.topics_by_id.values() for p in topic.partitions.values() if 1 in p.replicas
    }
    assert mine == expected and 0 < len(mine) < 5
    assert desired_partitions(image, 9) == set()


def test_reconcile_plan_opens_the_missing_and_deletes_the_removed() -> None:
    desired = {("t1", 0), ("t1", 1), ("t2", 0)}
    actual = {("t1", 0), ("old", 0), ("old", 1)}
    assert reconcile_plan(desired, actual) == ([("t1", 1), ("t2", 0)], [("old", 0), ("old", 1)])
    assert reconcile_plan(desired, desired) == ([], [])
    assert reconcile_plan([], actual) == ([], sorted(actual))


def test_reconcile_makes_the_store_match_the_image(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = LogStore(tmp_path / "log")
        manager = PartitionManager(1, store)
        image = image_with({"a": 2, "b": 1})
        await manager.reconcile(image)
        assert set(store.partitions()) == {("id-a", 0), ("id-a", 1), ("id-b", 0)}
        log = manager.get("id-b", 0)
        assert log is not None
        await manager.append(log, batch([b"x"]), 0)
        # topic b removed: its data goes; a stays
        records, _ = controller.delete_topics(image, ["b"])
        await manager.reconcile(image.apply(records))
        assert set(store.partitions()) == {("id-a", 0), ("id-a", 1)}
        assert manager.get("id-b", 0) is None
        store.close()
        # a new manager over the reopened store sees what is on disk
        reopened = LogStore(tmp_path / "log")
        assert set(PartitionManager(1, reopened).store.partitions()) == {("id-a", 0), ("id-a", 1)}
        reopened.close()

    asyncio.run(scenario())


def test_append_advances_the_high_watermark_and_wakes_waiters(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = LogStore(tmp_path / "log")
        manager = PartitionManager(1, store)
        await manager.reconcile(image_with({"a": 2}))
        log = manager.get("id-a", 0)
        assert log is not None
        waiter = asyncio.create_task(manager.wait_for_data([("id-a", 0)], 20.0))
        other = asyncio.create_task(manager.wait_for_data([("id-a", 1)], 0.3))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        result = await manager.append(log, batch([b"a", b"b"]), 0)
        assert result.base_offset == 0
        await asyncio.wait_for(waiter, 5)
        assert time.monotonic() - started < 5
        assert manager.high_watermark(log) == 2 and log.high_watermark == 2
        assert not other.done()  # a different partition: still waiting until its timeout
        await other
        # shutdown wakes everybody and later waits return at once
        parked = asyncio.create_task(manager.wait_for_data([("id-a", 1)], 20.0))
        await asyncio.sleep(0.05)
        manager.wake_all()
        await asyncio.wait_for(parked, 5)
        await asyncio.wait_for(manager.wait_for_data([("id-a", 1)], 20.0), 1)
        store.close()

    asyncio.run(scenario())


def test_retention_uses_each_topics_config(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = LogStore(tmp_path / "log")
        manager = PartitionManager(1, store)
        image = MetadataImage.EMPTY
        image = image.apply(controller.register_broker(image, 1, "h", 1, None))
        image = image.apply(lifecycle.unfence_broker(image, 1))
        ids = iter(["short", "long"])
        records, _ = controller.create_topics(image, [
            controller.CreateTopicRequest("short", 1, 1, {"retention.ms": "1000"}),
            controller.CreateTopicRequest("long", 1, 1, {}),
        ], new_topic_id=lambda: next(ids))
        image = image.apply(records)
        await manager.reconcile(image)
        now_ms = 10_000_000
        for topic_id in ("short", "long"):
            log = manager.get(topic_id, 0)
            assert log is not None
            await manager.append(log, batch([b"old"], timestamp_ms=now_ms - 5000), 0)
            await manager.append(log, batch([b"new"], timestamp_ms=now_ms), 0)
        await manager.run_retention(image, now_ms, {"retention.ms": "604800000"})
        assert manager.get("short", 0).log_start_offset == 1  # type: ignore[union-attr]
        assert manager.get("long", 0).log_start_offset == 0  # type: ignore[union-attr]
        store.close()

    asyncio.run(scenario())


def test_no_partition_is_deleted_against_an_image_older_than_the_last_reconciled(tmp_path: Path) -> None:
    """A restarted Raft follower may apply a prefix of the metadata log first: the topics
    created later are missing from it, and their data must survive until the image is newer."""

    async def scenario() -> None:
        full = image_with({"a": 2, "b": 1})
        prefix = image_with({"a": 2})  # same log, before "b" was created
        assert prefix.offset < full.offset
        offset_path = tmp_path / "reconciled.offset"
        store = LogStore(tmp_path / "log")
        manager = PartitionManager(1, store, offset_path=offset_path)
        await manager.reconcile(full)
        await asyncio.wrap_future(manager.get("id-b", 0).append(batch([b"keep"]), 0))
        await asyncio.to_thread(store.close)

        store = LogStore(tmp_path / "log")
        manager = PartitionManager(1, store, offset_path=offset_path)
        await manager.reconcile(prefix)
        assert manager.get("id-b", 0) is not None and manager.get("id-b", 0).log_end_offset == 1
        without_b = full.apply(controller.delete_topics(full, ["b"])[0])
        await manager.reconcile(without_b)
        assert manager.get("id-b", 0) is None
        assert set(store.partitions()) == {("id-a", 0), ("id-a", 1)}
        await asyncio.to_thread(store.close)

    asyncio.run(scenario())


async def registered(manager: PartitionManager, key, *, replica: bool, count: int = 1) -> None:
    """Poll (with a deadline) until ``count`` long polls of that kind wait on ``key``."""
    table = manager._replica_waiters if replica else manager._waiters
    deadline = time.monotonic() + 5
    while len(table.get(key, ())) < count:
        assert time.monotonic() < deadline, "the long poll never registered"
        await asyncio.sleep(0.001)


class HeldHighWatermark:
    """A replica manager whose followers have not caught up: the high watermark stays put
    on the leader's appends until ``advance`` moves it."""

    def __init__(self) -> None:
        self.value = 0

    def high_watermark(self, key, log) -> int:
        return self.value

    def on_leader_append(self, key, log) -> None:
        pass

    def advance(self, log, offset: int) -> None:
        self.value = offset
        log.set_high_watermark(offset)


def test_a_commit_wakes_the_followers_fetches_and_a_high_watermark_move_the_consumers(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = LogStore(tmp_path / "log")
        manager = PartitionManager(1, store)
        replicas = HeldHighWatermark()
        manager.replicas = replicas
        await manager.reconcile(image_with({"a": 1}))
        log = manager.get("id-a", 0)
        assert log is not None
        key = ("id-a", 0)
        follower = asyncio.create_task(manager.wait_for_data([key], 20.0, replica=True))
        consumer = asyncio.create_task(manager.wait_for_data([key], 20.0))
        await registered(manager, key, replica=True)
        await registered(manager, key, replica=False)
        await manager.append(log, batch([b"a"]), 0)
        await asyncio.wait_for(follower, 5)  # new data past its fetch offset
        await asyncio.sleep(0.05)
        assert not consumer.done()  # nothing new below the high watermark yet
        second_follower = asyncio.create_task(manager.wait_for_data([key], 20.0, replica=True))
        await registered(manager, key, replica=True)
        replicas.advance(log, 1)
        manager.wake(key)  # what the Fetch handler does when a follower moved the high watermark
        await asyncio.wait_for(consumer, 5)
        await asyncio.sleep(0.05)
        assert not second_follower.done()  # its answer would hold nothing new
        manager.wake_all()
        await asyncio.wait_for(second_follower, 5)
        store.close()

    asyncio.run(scenario())


def test_a_group_commit_reaches_the_loop_in_one_hop_not_one_per_batch(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = LogStore(tmp_path / "log")
        manager = PartitionManager(1, store)
        await manager.reconcile(image_with({"a": 4}))
        logs = [manager.get("id-a", i) for i in range(4)]
        hops = 0
        run_completed = manager._run_completed

        def counting() -> None:
            nonlocal hops
            hops += 1
            run_completed()

        manager._run_completed = counting  # type: ignore[method-assign]
        appends = [manager.append(logs[i % 4], batch([b"v%d" % i]), 0) for i in range(50)]
        results = await asyncio.wait_for(asyncio.gather(*appends), 10)
        assert sorted((r.base_offset for r in results)) == sorted(i // 4 for i in range(50))
        assert 1 <= hops < 50
        assert all(manager.high_watermark(log) == log.log_end_offset for log in logs)
        store.close()

    asyncio.run(scenario())
