"""The node's partitions: reconciling the LogStore against the metadata image, and waking
long-polling fetches when data lands.

Theory of operation
-------------------
The metadata image says which partitions exist and which nodes hold them; the LogStore says
which partitions this node actually has on disk. ``reconcile_plan`` (pure) compares the two
and ``PartitionManager.reconcile`` carries the plan out:

    image --(partitions whose replicas include this node)--> desired {(topic_id, p)}
    LogStore.partitions()  ---------------------------------> actual  {(topic_id, p)}
    desired - actual: open_partition      actual - desired: delete_partition

Partitions are stored under their topic *id*, not their name, so a topic deleted and
created again under the same name never sees the old topic's data, even if the node
crashed between the two (the next reconcile deletes the orphan). Reconciling runs at start
and after every metadata change the node makes, one pass at a time (a lock).

Appends go through ``append``: it hands the batch to the partition log (whose writer thread
group-commits it) and, when the commit completes, advances the high watermark and wakes any
fetch waiting for that partition (``wait_for_data``). On a single node the ISR is the node
itself, so the high watermark is the log end offset once the append is committed.

``run_retention`` applies each topic's retention settings to the partitions held here.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Iterable, Mapping

from kraft.image import MetadataImage
from kraft.topic_config import effective_topic_config
from storage.log import AppendResult, LogStore, PartitionLog

logger = logging.getLogger(__name__)

PartitionKey = tuple[str, int]  # (topic_id, partition index)


def desired_partitions(image: MetadataImage, node_id: int) -> set[PartitionKey]:
    """Every partition the image places on ``node_id``."""
    return {
        (topic.topic_id, partition.partition)
        for topic in image.topics_by_id.values()
        for partition in topic.partitions.values()
        if node_id in partition.replicas
    }


def reconcile_plan(
    desired: Iterable[PartitionKey], actual: Iterable[PartitionKey]
) -> tuple[list[PartitionKey], list[PartitionKey]]:
    """(to open, to delete), each sorted, so that the store ends up holding ``desired``."""
    desired_set, actual_set = set(desired), set(actual)
    return sorted(desired_set - actual_set), sorted(actual_set - desired_set)


class PartitionManager:
    """Owns the LogStore's partitions on behalf of the node (see the module docstring)."""

    def __init__(self, node_id: int, store: LogStore) -> None:
        self.node_id = node_id
        self.store = store
        self._logs: dict[PartitionKey, PartitionLog] = dict(store.partitions())
        self._waiters: dict[PartitionKey, set[asyncio.Future[None]]] = {}
        self._reconcile_lock = asyncio.Lock()
        self._closing = False

    # -- reconcile ------------------------------------------------------------------------

    async def reconcile(self, image: MetadataImage) -> None:
        async with self._reconcile_lock:
            to_open, to_delete = reconcile_plan(desired_partitions(image, self.node_id), self._logs)
            for key in to_delete:
                self._logs.pop(key, None)
            deletions = [asyncio.wrap_future(self.store.delete_partition(*key)) for key in to_delete]
            if deletions:
                await asyncio.gather(*deletions)
                logger.info("node %d deleted %d partitions of removed topics", self.node_id, len(deletions))
                for key in to_delete:
                    self._wake(key)
            if to_open:
                opened = await asyncio.to_thread(self._open_all, to_open)
                self._logs.update(opened)
                logger.info("node %d opened %d new partitions", self.node_id, len(opened))

    def _open_all(self, keys: list[PartitionKey]) -> dict[PartitionKey, PartitionLog]:
        return {key: self.store.open_partition(*key) for key in keys}

    # -- lookups --------------------------------------------------------------------------

    def get(self, topic_id: str, partition: int) -> PartitionLog | None:
        return self._logs.get((topic_id, partition))

    def high_watermark(self, log: PartitionLog) -> int:
        """Single node: the ISR is this node, so every committed offset is below the mark."""
        return log.log_end_offset

    # -- the produce path -----------------------------------------------------------------

    def append(self, log: PartitionLog, batch: memoryview | bytes, leader_epoch: int) -> asyncio.Future[AppendResult]:
        """Submit one validated batch; the returned future completes after the commit.

        Cancelling the returned future (a client that went away) does not stop the append,
        nor the high-watermark advance and wake-ups that follow its commit.
        """
        future = asyncio.wrap_future(log.append(batch, leader_epoch))
        key = (log.topic, log.partition)
        future.add_done_callback(lambda done: self._committed(key, log, done))
        return asyncio.shield(future)

    def _committed(self, key: PartitionKey, log: PartitionLog, done: asyncio.Future[AppendResult]) -> None:
        if done.cancelled() or done.exception() is not None:
            return  # the exception is reported to whoever awaits the future
        log.set_high_watermark(self.high_watermark(log))
        self._wake(key)

    # -- long polls -----------------------------------------------------------------------

    @property
    def closing(self) -> bool:
        return self._closing

    async def wait_for_data(self, keys: Iterable[PartitionKey], timeout_s: float) -> None:
        """Return when any of ``keys`` gets new data, on shutdown, or after ``timeout_s``."""
        if self._closing or timeout_s <= 0:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        registered = list(set(keys))
        for key in registered:
            self._waiters.setdefault(key, set()).add(waiter)
        try:
            await asyncio.wait([waiter], timeout=timeout_s)
        finally:
            for key in registered:
                waiting = self._waiters.get(key)
                if waiting is not None:
                    waiting.discard(waiter)
                    if not waiting:
                        del self._waiters[key]

    def _wake(self, key: PartitionKey) -> None:
        for waiter in self._waiters.pop(key, ()):
            if not waiter.done():
                waiter.set_result(None)

    def wake_all(self) -> None:
        """Shutdown: every long poll answers now with what it has."""
        self._closing = True
        for key in list(self._waiters):
            self._wake(key)

    # -- retention ------------------------------------------------------------------------

    async def run_retention(self, image: MetadataImage, now_ms: int, defaults: Mapping[str, str]) -> None:
        pending: list[tuple[str, int, asyncio.Future[None]]] = []
        for topic in image.topics_by_id.values():
            config = effective_topic_config(topic.configs, defaults)
            for index in topic.partitions:
                log = self._logs.get((topic.topic_id, index))
                if log is None:
                    continue
                log.set_high_watermark(self.high_watermark(log))
                deletion = log.apply_retention(now_ms, config.retention_ms, config.retention_bytes)
                if deletion is not None:
                    pending.append((topic.name, index, asyncio.wrap_future(deletion)))
        for name, index, future in pending:
            try:
                await future
            except Exception as exc:  # a failed retention pass is retried next interval
                logger.warning("node %d retention of %s-%d failed: %s", self.node_id, name, index, exc)
        if pending:
            logger.info("node %d applied retention to %d partitions", self.node_id, len(pending))
