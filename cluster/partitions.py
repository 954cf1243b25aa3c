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
and after every metadata change, one pass at a time (a lock).

Metadata changes arrive through ``watch(metadata_log)``: the log calls back on its own
thread (the Raft tick thread, or the appending thread of the local log); the callback only
hops to the event loop (``call_soon_threadsafe``), where ``_image_changed`` remembers the
newest image, wakes ``wait_for_image`` callers and starts one reconcile task if none is
running. That task reconciles until it has caught up with the newest image, so a burst of
changes costs one or two passes, not one per change.

An image part-way through a replay lacks every topic created later, and a reconcile against
it would delete their partitions' data. Two guards: until ``start_reconciling`` is called
nothing is opened or deleted (the node calls it once the metadata log reports that it has
caught up with the quorum; at once for the single-node log, which replays completely on
open); and nothing is ever deleted against an image older than the newest one reconciled
before, whose offset is kept durably in ``offset_path`` (the deletion floor). Images are
prefixes of one log, so an image at or past the floor holds every topic that existed when
the floor was written, and a partition it lacks belongs to a topic that is really gone.
Worked example: a node reconciled offset 120 (floor 120) and crashed; on restart a Raft
follower may briefly apply only up to offset 40, before topic "orders" was created at 55:
that image opens what it knows and deletes nothing; at offset >= 120 the orphans of topics
removed meanwhile are deleted. The handlers read each partition's leader and leader epoch from the image per request;
roles (leader state, follower fetchers) belong to the replica manager
(``cluster.replica_manager``), which ``on_reconciled`` hands every reconciled image with
the open logs.

Appends go through ``append``: it hands the batch to the partition log (whose writer thread
group-commits it) and, when the commit completes (one hop to the loop per group commit, not
per batch), first wakes the followers' fetches parked on that partition, which is what an
acks=all produce waits for, then tells the replica manager (which moves the leader's high
watermark), then wakes the consumers' fetches if the high watermark moved
(``wait_for_data``). Without a replica manager (or on a single node, whose ISR is the node
itself) the high watermark is the log end offset once the append is committed.

``run_retention`` applies each topic's retention settings to the partitions held here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
from pathlib import Path
from typing import Callable, Iterable, Mapping, Protocol

from kraft.image import MetadataImage
from kraft.quorum import MetadataLog
from kraft.topic_config import effective_topic_config
from storage.log import AppendResult, LogStore, PartitionLog

logger = logging.getLogger(__name__)

PartitionKey = tuple[str, int]  # (topic_id, partition index)


class Replicas(Protocol):
    """The part of ``cluster.replica_manager.ReplicaManager`` the partitions use."""

    def high_watermark(self, key: PartitionKey, log: PartitionLog) -> int: ...

    def on_leader_append(self, key: PartitionKey, log: PartitionLog) -> None: ...


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


def read_offset(path: Path | None) -> int:
    """The deletion floor kept in ``path`` (0 when there is none)."""
    if path is None:
        return 0
    try:
        return int(path.read_text().strip() or 0)
    except FileNotFoundError:
        return 0
    except ValueError:
        logger.warning("ignoring unreadable metadata offset file %s", path)
        return 0


def write_file_durably(path: Path, text: str) -> None:
    """Replace ``path``'s contents all or nothing: write a temporary file, fsync it, rename it
    over ``path``, fsync the directory."""
    temporary = path.with_suffix(".tmp")
    with open(temporary, "w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def write_offset(path: Path, offset: int) -> None:
    """Durably replace the file's offset."""
    write_file_durably(path, f"{offset}\n")


class PartitionManager:
    """Owns the LogStore's partitions on behalf of the node (see the module docstring)."""

    def __init__(self, node_id: int, store: LogStore, *, reconciling: bool = True,
                 offset_path: Path | None = None) -> None:
        self.node_id = node_id
        self._reconciling = reconciling
        self._offset_path = offset_path
        self._deletion_floor = read_offset(offset_path)
        self.store = store
        self._logs: dict[PartitionKey, PartitionLog] = dict(store.partitions())
        self._waiters: dict[PartitionKey, set[asyncio.Future[None]]] = {}  # consumers' long polls
        self._replica_waiters: dict[PartitionKey, set[asyncio.Future[None]]] = {}  # followers'
        # Appends completed by the log's writer thread, waiting for one hop to the loop.
        self._completed: list[tuple[PartitionKey, PartitionLog, concurrent.futures.Future[AppendResult],
                                    asyncio.Future[AppendResult]]] = []
        self._completed_lock = threading.Lock()
        self._completed_scheduled = False
        self._reconcile_lock = asyncio.Lock()
        self._closing = False
        self._latest_image: MetadataImage | None = None
        self._reconciled_offset = -1
        self._reconcile_task: asyncio.Task | None = None
        self._image_condition: asyncio.Condition | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.replicas: Replicas | None = None
        self.on_reconciled: Callable[[MetadataImage, Mapping[PartitionKey, PartitionLog]], None] | None = None

    # -- following the metadata log -------------------------------------------------------

    def watch(self, metadata: MetadataLog) -> None:
        """Reconcile after every change of ``metadata``'s image (call from the event loop)."""
        self._loop = asyncio.get_running_loop()
        self._image_condition = asyncio.Condition()
        metadata.subscribe(self._on_image_thread)

    def _on_image_thread(self, old: MetadataImage, new: MetadataImage) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._image_changed, new)
        except RuntimeError:
            pass  # the loop closed meanwhile: the node is stopping

    def _image_changed(self, image: MetadataImage) -> None:
        if self._latest_image is None or image.offset >= self._latest_image.offset:
            self._latest_image = image
        if self._closing:
            return
        if self._reconciling and (self._reconcile_task is None or self._reconcile_task.done()):
            self._reconcile_task = asyncio.create_task(self._reconcile_latest())
        if self._image_condition is not None:
            asyncio.create_task(self._notify_image())

    async def _notify_image(self) -> None:
        assert self._image_condition is not None
        async with self._image_condition:
            self._image_condition.notify_all()

    def start_reconciling(self, image: MetadataImage) -> None:
        """The metadata has caught up: reconcile from ``image`` on (call from the event loop)."""
        self._reconciling = True
        self._image_changed(image)

    async def _reconcile_latest(self) -> None:
        while (self._reconciling and self._latest_image is not None
               and self._latest_image.offset > self._reconciled_offset):
            try:
                await self.reconcile(self._latest_image)
            except Exception:
                logger.exception("node %d failed to reconcile partitions at metadata offset %d",
                                 self.node_id, self._latest_image.offset)
                return

    async def wait_for_image(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Wait (bounded) until ``predicate()`` holds, re-checking after each image change."""
        if predicate():
            return True
        condition = self._image_condition
        if condition is None:
            return False
        try:
            async with condition:
                await asyncio.wait_for(condition.wait_for(predicate), timeout_s)
            return True
        except asyncio.TimeoutError:
            return predicate()

    # -- reconcile ------------------------------------------------------------------------

    async def reconcile(self, image: MetadataImage) -> None:
        if not self._reconciling:
            return  # the image may be part-way through a replay (see the module docstring)
        async with self._reconcile_lock:
            if image.offset < self._reconciled_offset:
                return  # a newer image was reconciled already
            to_open, to_delete = reconcile_plan(desired_partitions(image, self.node_id), self._logs)
            if image.offset < self._deletion_floor:
                if to_delete:
                    logger.info("node %d keeps %d partitions unknown to metadata offset %d until it reaches %d",
                                self.node_id, len(to_delete), image.offset, self._deletion_floor)
                to_delete = []
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
            self._reconciled_offset = max(self._reconciled_offset, image.offset)
            if self.on_reconciled is not None and image.offset >= self._reconciled_offset:
                self.on_reconciled(image, self._logs)
            if image.offset > self._deletion_floor:
                self._deletion_floor = image.offset
                if self._offset_path is not None:
                    await asyncio.to_thread(write_offset, self._offset_path, image.offset)

    def _open_all(self, keys: list[PartitionKey]) -> dict[PartitionKey, PartitionLog]:
        return {key: self.store.open_partition(*key) for key in keys}

    # -- lookups --------------------------------------------------------------------------

    @property
    def logs(self) -> Mapping[PartitionKey, PartitionLog]:
        """The open partition logs (read-only view; reconciling replaces entries)."""
        return self._logs

    def get(self, topic_id: str, partition: int) -> PartitionLog | None:
        return self._logs.get((topic_id, partition))

    def high_watermark(self, log: PartitionLog) -> int:
        """The replicated high watermark (without a replica manager: the log end offset)."""
        if self.replicas is None:
            return log.log_end_offset
        return self.replicas.high_watermark((log.topic, log.partition), log)

    # -- the produce path -----------------------------------------------------------------

    def append(self, log: PartitionLog, batch: memoryview | bytes, leader_epoch: int) -> asyncio.Future[AppendResult]:
        """Submit one validated batch; the returned future completes after the commit.

        Cancelling the returned future (a client that went away) does not stop the append,
        nor the high-watermark advance and wake-ups that follow its commit: those hang off
        the log's own future. The writer thread completes every append of a transaction
        together; the first completion schedules one hop to the event loop
        (``call_soon_threadsafe``) and the others join it, so a group commit of N batches
        costs one wake-up of the loop, not N (no wrap/shield chain either: this runs for
        every batch produced).
        """
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[AppendResult] = loop.create_future()
        key = (log.topic, log.partition)

        def committed(done: concurrent.futures.Future[AppendResult]) -> None:  # the writer thread
            with self._completed_lock:
                self._completed.append((key, log, done, waiter))
                if self._completed_scheduled:
                    return  # the hop already on its way takes this one too
                self._completed_scheduled = True
            if not loop.is_closed():
                try:
                    loop.call_soon_threadsafe(self._run_completed)
                except RuntimeError:
                    pass  # the loop closed meanwhile: the node is stopping

        log.append(batch, leader_epoch).add_done_callback(committed)
        return waiter

    def _run_completed(self) -> None:
        """On the loop: every append completed since the last hop, in completion order."""
        with self._completed_lock:
            completed = self._completed
            self._completed = []
            self._completed_scheduled = False
        for key, log, done, waiter in completed:
            self._committed(key, log, done, waiter)

    def _committed(self, key: PartitionKey, log: PartitionLog, done: concurrent.futures.Future[AppendResult],
                   waiter: asyncio.Future[AppendResult]) -> None:
        error = done.exception()
        if error is None:
            # Followers' fetches are woken first, in this same callback: they are what an
            # acks=all produce waits for. Consumers read below the high watermark, so they
            # wake only if it moved (with followers in the ISR it moves on their fetches).
            self._wake_replicas(key)
            if self.replicas is None:
                log.set_high_watermark(log.log_end_offset)
                self._wake_consumers(key)
            else:
                before = log.high_watermark
                self.replicas.on_leader_append(key, log)
                if log.high_watermark != before:
                    self._wake_consumers(key)
        if waiter.done():
            return  # cancelled: nobody waits for the outcome any more
        if error is None:
            waiter.set_result(done.result())
        else:
            waiter.set_exception(error)

    # -- long polls -----------------------------------------------------------------------

    @property
    def closing(self) -> bool:
        return self._closing

    async def wait_for_data(self, keys: Iterable[PartitionKey], timeout_s: float, *,
                            replica: bool = False) -> None:
        """Return when any of ``keys`` gets new data, on shutdown, or after ``timeout_s``.

        A consumer (``replica=False``) reads below the high watermark: it wakes when that
        moves. A follower's replica fetch (``replica=True``) reads up to the log end: it
        wakes when a local append commits, and not for high-watermark moves (its answer
        would hold nothing new)."""
        if self._closing or timeout_s <= 0:
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        table = self._replica_waiters if replica else self._waiters
        registered = list(set(keys))
        for key in registered:
            table.setdefault(key, set()).add(waiter)
        # The task awaits the waiter itself, so a wake resumes it in the next loop iteration.
        timer = loop.call_later(timeout_s, _resolve, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            for key in registered:
                waiting = table.get(key)
                if waiting is not None:
                    waiting.discard(waiter)
                    if not waiting:
                        del table[key]

    def wake(self, key: PartitionKey) -> None:
        """Answer the consumers' long polls waiting on ``key`` (its high watermark moved)."""
        self._wake_consumers(key)

    def _wake(self, key: PartitionKey) -> None:
        self._wake_replicas(key)
        self._wake_consumers(key)

    def _wake_consumers(self, key: PartitionKey) -> None:
        for waiter in self._waiters.pop(key, ()):
            _resolve(waiter)

    def _wake_replicas(self, key: PartitionKey) -> None:
        for waiter in self._replica_waiters.pop(key, ()):
            _resolve(waiter)

    def wake_all(self) -> None:
        """Shutdown: every long poll answers now with what it has."""
        self._closing = True
        if self._reconcile_task is not None:
            self._reconcile_task.cancel()
        for key in list(self._waiters) + list(self._replica_waiters):
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
                if self.replicas is None:
                    log.set_high_watermark(log.log_end_offset)
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


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
