"""The controller shell: the one place on a node where metadata records are decided and appended.

Theory of operation
-------------------
Every node has one ``ControllerService``. It owns the node's metadata write path (one
asyncio lock: decide on the newest image, append, repeat) and, on a voter of a multi-node
cluster, the active controller's duties while this voter is the Raft leader. Every
decision is a pure function of ``kraft`` (``kraft.controller``, ``kraft.lifecycle``) given
the current image and ``now_ms``; this module adds only timers, the lock and the appends
(``asyncio.to_thread``: an append blocks until the Raft majority has it).

    commit(decide)   lock -> image -> decide(image) -> (records, result)
                     -> append (off the loop) -> (new image, result)
                     CommandSkippedError (the image moved under the decision): decide again
                     NotControllerError: raised to the caller, who answers NOT_CONTROLLER

The active controller (multi-node only; a single node decides everything itself and
never fences itself):

    tick, every CONTROLLER_TICK_MS
      became active  -> HeartbeatTracker.reset(image, now): every broker gets a fresh
                        session, since the old controller's heartbeat times are gone
      expired brokers (silent > broker_session_timeout_ms) -> fence_brokers
      every leader_imbalance_check_interval_ms (auto_leader_rebalance_enable)
                     -> elect_preferred_leaders
    BrokerRegistration  -> register_broker (the broker is fenced until it heartbeats)
    BrokerHeartbeat     -> tracker.heartbeat; a fenced registered broker -> unfence_broker

The heartbeat tracker is soft state of the active controller alone: it is not replicated,
and a voter that loses leadership simply stops using it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable, Sequence, TypeVar

from cluster.config import NodeConfig
from cluster.metadata_follower import RemoteMetadataLog
from kraft import controller, lifecycle
from kraft.image import MetadataImage
from kraft.quorum import MetadataLogError
from kraft.quorum import MetadataLog
from kraft.raft_log import CommandSkippedError, NotControllerError, RaftMetadataLog
from kraft.records import MetadataRecord

logger = logging.getLogger(__name__)

CONTROLLER_TICK_MS = 100  # how often the active controller looks for expired sessions
COMMIT_ATTEMPTS_MAX = 5  # decisions retried after a skipped command before giving up

T = TypeVar("T")
Decision = Callable[[MetadataImage], tuple[Sequence[MetadataRecord], T]]


def now_ms() -> int:
    return int(time.time() * 1000)


async def cancel_and_wait(task: asyncio.Task | None) -> None:
    """Cancel ``task`` (if any) and return once it has finished."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


async def tick_forever(interval_ms: int, tick: Callable[[int], Awaitable[None]],
                       lost_controller: Callable[[], None], what: str) -> None:
    """Call ``tick(now_ms())`` every ``interval_ms`` until cancelled. A tick that finds this
    node no longer the active controller calls ``lost_controller``; any other failure is
    logged as "``what`` failed" and the next tick runs as usual."""
    while True:
        await asyncio.sleep(interval_ms / 1000)
        try:
            await tick(now_ms())
        except NotControllerError:
            lost_controller()
        except MetadataLogError as exc:
            logger.warning("%s failed: %s", what, exc)
        except Exception:
            logger.exception("%s failed", what)


class ControllerService:
    """Metadata decisions of this node (see the module docstring)."""

    def __init__(self, config: NodeConfig, cluster_id: str, metadata: MetadataLog) -> None:
        self.config = config
        self.node_id = config.node_id
        self.cluster_id = cluster_id
        self.metadata = metadata
        # A broker-only node's log follows the voters: never active, it names the controller.
        self.raft: RaftMetadataLog | RemoteMetadataLog | None = (
            metadata if isinstance(metadata, (RaftMetadataLog, RemoteMetadataLog)) else None)
        self.lock = asyncio.Lock()
        self.tracker = lifecycle.HeartbeatTracker(config.broker_session_timeout_ms)
        self._acting = False  # this voter is running the active controller's timers
        self._next_rebalance_ms = 0
        self._task: asyncio.Task | None = None

    # -- who decides --------------------------------------------------------------------

    def is_active(self) -> bool:
        """True when this node may decide and append metadata now."""
        return True if self.raft is None else self.raft.is_active_controller()

    def controller_id(self) -> int | None:
        """The active controller's node id, or None while there is none."""
        return self.node_id if self.raft is None else self.raft.active_controller_id()

    # -- the write path -------------------------------------------------------------------

    async def commit(self, decide: Decision[T], *, dry_run: bool = False) -> tuple[MetadataImage, T]:
        """Decide on the newest image and append the records; see the module docstring."""
        async with self.lock:
            for _ in range(COMMIT_ATTEMPTS_MAX):
                if not self.is_active():
                    raise self._not_controller()
                image = self.metadata.image
                records, result = decide(image)
                if not records or dry_run:
                    return image, result
                try:
                    new_image = await asyncio.to_thread(self.metadata.append, list(records))
                except CommandSkippedError as exc:
                    logger.info("node %d decides again: %s", self.node_id, exc)
                    continue
                return new_image, result
            raise MetadataLogError(f"node {self.node_id}: the metadata kept changing under {COMMIT_ATTEMPTS_MAX} decisions")

    def _not_controller(self) -> NotControllerError:
        controller_id = self.controller_id()
        return NotControllerError(
            f"node {self.node_id} is not the active controller (active controller: {controller_id})",
            None if controller_id == self.node_id else controller_id,
        )

    # -- broker lifecycle: what a broker asks of the active controller -------------------

    async def register(self, broker_id: int, host: str, port: int, rack: str | None,
                       incarnation_id: str) -> int:
        """Register (or re-register) a broker and return its broker epoch;
        NotControllerError when not active."""
        registered_ms = now_ms()
        image, records = await self.commit(lambda image: _with_records(
            controller.register_broker(image, broker_id, host, port, rack, incarnation_id)))
        self.tracker.heartbeat(broker_id, registered_ms)
        broker = image.brokers.get(broker_id)
        epoch = broker.epoch if broker is not None else -1
        if records:
            logger.info("node %d registered broker %d at %s:%d (rack %s, broker epoch %d)", self.node_id,
                        broker_id, host, port, rack, epoch)
        return epoch

    async def heartbeat(self, broker_id: int) -> tuple[bool, bool]:
        """(is_registered, is_fenced) after handling one heartbeat of ``broker_id``."""
        if not self.is_active():
            raise self._not_controller()
        heard_ms = now_ms()
        broker = self.metadata.image.brokers.get(broker_id)
        if broker is None:
            return False, True
        self.tracker.heartbeat(broker_id, heard_ms)
        if not broker.fenced:
            return True, False
        image, records = await self.commit(lambda image: _with_records(lifecycle.unfence_broker(image, broker_id)))
        if records:
            logger.info("node %d unfenced broker %d (%d metadata records)", self.node_id, broker_id, len(records))
        broker = image.brokers.get(broker_id)
        return broker is not None, broker is None or broker.fenced

    # -- the active controller's timers ---------------------------------------------------

    def start(self) -> None:
        """Start the active-controller timers (multi-node voters only)."""
        if self.raft is not None and self._task is None:
            self._task = asyncio.create_task(
                tick_forever(CONTROLLER_TICK_MS, self.tick, self._stop_acting,
                             f"node {self.node_id} controller tick"),
                name=f"controller-{self.node_id}")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    def _stop_acting(self) -> None:
        self._acting = False

    async def tick(self, tick_ms: int) -> None:
        """One round of the active controller's duties (nothing when not active)."""
        raft = self.raft
        if raft is None or not raft.is_active_controller() or not raft.status.ready:
            if self._acting:
                logger.info("node %d stopped acting as the active controller", self.node_id)
            self._acting = False
            return
        if not self._acting:
            self._acting = True
            self.tracker.reset(self.metadata.image, tick_ms)
            self._next_rebalance_ms = tick_ms + self.config.leader_imbalance_check_interval_ms
            logger.info("node %d is acting as the active controller at metadata offset %d",
                        self.node_id, self.metadata.image.offset)
            return

        def fence(image: MetadataImage) -> tuple[list[MetadataRecord], list[int]]:
            expired = self.tracker.expired(image, tick_ms)
            return (lifecycle.fence_brokers(image, expired) if expired else []), expired

        image, fenced = await self.commit(fence)
        if fenced:
            logger.info("node %d fenced brokers %s: no heartbeat for %d ms", self.node_id, fenced,
                        self.config.broker_session_timeout_ms)
        if self.config.auto_leader_rebalance_enable and tick_ms >= self._next_rebalance_ms:
            self._next_rebalance_ms = tick_ms + self.config.leader_imbalance_check_interval_ms
            _, records = await self.commit(lambda image: _with_records(lifecycle.elect_preferred_leaders(image)))
            if records:
                logger.info("node %d restored preferred leaders of %d partitions", self.node_id, len(records))


def _with_records(records: Sequence[MetadataRecord]) -> tuple[Sequence[MetadataRecord], Sequence[MetadataRecord]]:
    """A decision whose result is its own records (so the caller can tell if any were made)."""
    return records, records
