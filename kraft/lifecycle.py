"""Broker lifecycle and partition leadership: fencing, unfencing, elections, ISR changes.

Theory of operation
-------------------
The active controller watches brokers' heartbeats (``HeartbeatTracker``, soft state that
only the active controller holds) and turns what it sees into metadata records with the
pure functions of this module. Each takes a ``MetadataImage`` and returns the records that
carry out the decision; nothing changes until the records are appended to the metadata log
and applied, so a decision made by a controller that has just lost its leadership is
simply dropped. No I/O, no clocks (time comes in as ``now_ms``), no randomness.

The rules follow Apache Kafka KRaft with unclean leader election disabled:

* A fenced broker never leads and leaves every ISR it is in, except that the last member
  of an ISR stays (it is the only replica known to hold every committed record); a
  partition whose last ISR member is fenced has no leader (``NO_LEADER``, offline).
* A new leader is always taken from the ISR: the first replica, in ``replicas`` order, that
  is in the ISR and unfenced. Never from outside the ISR.
* The leader epoch steps by one exactly when the leader changes; the partition epoch steps
  by one on every change (one ``PartitionChangeRecord`` per partition per decision).
* ``elect_preferred_leaders`` moves leadership back to ``replicas[0]`` where that replica
  is unfenced and in the ISR, which restores the placement's balance after a failure.
* ``alter_partition`` is the leader's own request to shrink or grow its ISR; the epochs it
  quotes must be current, so a deposed leader cannot change anything. It is the only way
  back into an ISR: unfencing a broker does not put its replicas back (they may lack
  committed records); their leader adds them once they have caught up.

Story (replicas (1, 2, 3), leader 1, isr (1, 2, 3), epochs 0/0)::

    fence_brokers([1])  -> leader 2, isr (2, 3),  leader_epoch 1, partition_epoch 1
    fence_brokers([2])  -> leader 3, isr (3,),    leader_epoch 2, partition_epoch 2
    fence_brokers([3])  -> leader -1, isr (3,),   leader_epoch 3, partition_epoch 3
    unfence_broker(3)   -> leader 3, isr (3,),    leader_epoch 4, partition_epoch 4
    unfence_broker(1)   -> nothing changes for the partition (1 is not in the ISR)
    alter_partition(leader 3, epochs 4/4, isr (1, 3)) once 1 has caught up
                        -> leader 3, isr (1, 3),  leader_epoch 4, partition_epoch 5
    elect_preferred_leaders() -> leader 1,        leader_epoch 5, partition_epoch 6

Outcomes of ``alter_partition`` are Kafka error NAMES; the node maps them to codes.
"""

from __future__ import annotations

import logging
from typing import Collection, Iterable, Iterator, Sequence

from kraft.image import MetadataImage, PartitionImage
from kraft.records import (
    NO_LEADER,
    FenceBrokerRecord,
    MetadataRecord,
    PartitionChangeRecord,
    UnfenceBrokerRecord,
)

logger = logging.getLogger(__name__)

UNKNOWN_TOPIC_OR_PARTITION = "UNKNOWN_TOPIC_OR_PARTITION"
NOT_LEADER_OR_FOLLOWER = "NOT_LEADER_OR_FOLLOWER"
FENCED_LEADER_EPOCH = "FENCED_LEADER_EPOCH"
INVALID_UPDATE_VERSION = "INVALID_UPDATE_VERSION"
STALE_BROKER_EPOCH = "STALE_BROKER_EPOCH"
INVALID_REQUEST = "INVALID_REQUEST"


def _partitions(image: MetadataImage) -> Iterator[tuple[str, PartitionImage]]:
    """Every partition as ``(topic_id, partition)``, in a fixed order (topic id, index),
    so that every controller emits the same records from the same image."""
    for topic_id in sorted(image.topics_by_id):
        topic = image.topics_by_id[topic_id]
        for index in sorted(topic.partitions):
            yield topic_id, topic.partitions[index]


def _unfenced(image: MetadataImage) -> set[int]:
    return {b.broker_id for b in image.brokers.values() if not b.fenced}


def _change(topic_id: str, old: PartitionImage, leader: int,
            isr: Sequence[int]) -> PartitionChangeRecord | None:
    """The record that moves ``old`` to ``(leader, isr)``, or None if nothing changes."""
    isr = tuple(isr)
    if leader == old.leader and isr == old.isr:
        return None
    return PartitionChangeRecord(
        topic_id=topic_id, partition=old.partition, leader=leader, isr=isr,
        leader_epoch=old.leader_epoch + (leader != old.leader),
        partition_epoch=old.partition_epoch + 1,
    )


def _elect(replicas: Sequence[int], isr: Sequence[int], unfenced: set[int]) -> int:
    """The first replica in ``replicas`` order that is in the ISR and unfenced."""
    for broker_id in replicas:
        if broker_id in isr and broker_id in unfenced:
            return broker_id
    return NO_LEADER


def fence_brokers(image: MetadataImage, broker_ids: Iterable[int]) -> list[MetadataRecord]:
    """Fence the given brokers (those registered and not fenced yet) and move leadership.

    Every partition with a fenced broker in its ISR loses that broker from the ISR, except
    its last member; a partition whose leader is fenced gets the first unfenced ISR member
    (in replicas order) as leader, or ``NO_LEADER`` if there is none.
    """
    to_fence = sorted({
        b for b in broker_ids if b in image.brokers and not image.brokers[b].fenced
    })
    if not to_fence:
        return []
    records: list[MetadataRecord] = [FenceBrokerRecord(broker_id=b) for b in to_fence]
    unfenced = _unfenced(image) - set(to_fence)
    for topic_id, partition in _partitions(image):
        if all(b in unfenced for b in partition.isr):
            continue
        isr = [b for b in partition.isr if b in unfenced]
        if not isr:
            # Keep the last member: prefer the leader, which had every acknowledged record.
            keep = partition.leader if partition.leader in partition.isr else partition.isr[0]
            isr = [keep]
        leader = partition.leader
        if leader not in unfenced or leader not in isr:
            leader = _elect(partition.replicas, isr, unfenced)
        change = _change(topic_id, partition, leader, isr)
        if change is not None:
            records.append(change)
    logger.info("fencing brokers %s: %d partition change(s)", to_fence, len(records) - len(to_fence))
    return records


def unfence_broker(image: MetadataImage, broker_id: int) -> list[MetadataRecord]:
    """Unfence a registered, fenced broker: nothing if it is unknown or already unfenced.

    Leaderless partitions whose ISR holds the broker get it as leader (it is in the ISR,
    so this is a clean election). No replica rejoins an ISR here: the partition's leader
    adds it through ``alter_partition`` once it has caught up.
    """
    broker = image.brokers.get(broker_id)
    if broker is None or not broker.fenced:
        return []
    records: list[MetadataRecord] = [UnfenceBrokerRecord(broker_id=broker_id)]
    for topic_id, partition in _partitions(image):
        if partition.leader == NO_LEADER and broker_id in partition.isr:
            change = _change(topic_id, partition, broker_id, partition.isr)
            assert change is not None
            records.append(change)
    logger.info("unfencing broker %d: %d partition change(s)", broker_id, len(records) - 1)
    return records


def rejoin_isr(image: MetadataImage, broker_id: int,
               only: Collection[tuple[str, int]] | None = None) -> list[MetadataRecord]:
    """Put an unfenced broker's replicas back into the ISRs of partitions that have a leader
    (all of them, or those ``(topic_id, partition)`` in ``only``).

    Not part of any controller decision (leaders grow their ISR through ``alter_partition``);
    kept for tools and tests that set up an image by hand. Leaderless partitions are left alone: a replica that was out of
    the ISR may miss committed records, so it must not make an offline partition electable.
    """
    broker = image.brokers.get(broker_id)
    if broker is None or broker.fenced:
        return []
    records: list[MetadataRecord] = []
    for topic_id, partition in _partitions(image):
        if (
            broker_id in partition.replicas
            and broker_id not in partition.isr
            and partition.leader != NO_LEADER
            and (only is None or (topic_id, partition.partition) in only)
        ):
            isr = [b for b in partition.replicas if b in partition.isr or b == broker_id]
            change = _change(topic_id, partition, partition.leader, isr)
            assert change is not None
            records.append(change)
    return records


def elect_preferred_leaders(image: MetadataImage) -> list[MetadataRecord]:
    """Move leadership to ``replicas[0]`` wherever it is unfenced, in the ISR and not leader."""
    unfenced = _unfenced(image)
    records: list[MetadataRecord] = []
    for topic_id, partition in _partitions(image):
        preferred = partition.replicas[0]
        if preferred != partition.leader and preferred in unfenced and preferred in partition.isr:
            change = _change(topic_id, partition, preferred, partition.isr)
            assert change is not None
            records.append(change)
    return records


def _is_broker_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def alter_partition(
    image: MetadataImage,
    topic_id: str,
    partition: int,
    leader_id: int,
    leader_epoch: int,
    partition_epoch: int,
    new_isr: Sequence[int],
    broker_epoch: int,
) -> tuple[list[MetadataRecord], str | None]:
    """Decide a leader's request to set its partition's ISR to ``new_isr``.

    Returns ``([PartitionChangeRecord], None)`` on success (same leader and leader epoch,
    partition epoch + 1), or ``([], error name)``: UNKNOWN_TOPIC_OR_PARTITION,
    STALE_BROKER_EPOCH (``broker_epoch`` is not the leader's current broker epoch: the
    request comes from an earlier run of the leader's process, KIP-841),
    NOT_LEADER_OR_FOLLOWER (``leader_id`` does not lead it), FENCED_LEADER_EPOCH (the
    leader epoch is not the current one), INVALID_UPDATE_VERSION (the partition epoch is
    not the current one: the leader has not seen the last change), INVALID_REQUEST (the
    ISR is malformed, not within the replicas, lacks the leader, or adds a broker that is
    fenced or not registered).
    """
    topic = image.topics_by_id.get(topic_id) if isinstance(topic_id, str) else None
    current = topic.partitions.get(partition) if topic is not None else None
    if current is None:
        return [], UNKNOWN_TOPIC_OR_PARTITION
    if leader_id != current.leader or current.leader == NO_LEADER:
        return [], NOT_LEADER_OR_FOLLOWER
    sender = image.brokers.get(leader_id)
    if sender is None or broker_epoch != sender.epoch:
        return [], STALE_BROKER_EPOCH
    if leader_epoch != current.leader_epoch:
        return [], FENCED_LEADER_EPOCH
    if partition_epoch != current.partition_epoch:
        return [], INVALID_UPDATE_VERSION
    if not isinstance(new_isr, (list, tuple)) or not all(_is_broker_id(b) for b in new_isr):
        return [], INVALID_REQUEST
    isr = tuple(new_isr)
    if len(set(isr)) != len(isr) or not set(isr) <= set(current.replicas) or leader_id not in isr:
        return [], INVALID_REQUEST
    unfenced = _unfenced(image)
    if any(b not in current.isr and b not in unfenced for b in isr):
        return [], INVALID_REQUEST
    return [PartitionChangeRecord(
        topic_id=topic_id, partition=partition, leader=current.leader, isr=isr,
        leader_epoch=current.leader_epoch, partition_epoch=current.partition_epoch + 1,
    )], None


class HeartbeatTracker:
    """Active-controller-only soft state: when each broker was last heard from. Not
    replicated; a new active controller starts it with ``reset(image, now_ms)`` giving every
    registered broker a fresh grace period.

    ``expired`` names the unfenced brokers silent for longer than the session timeout; the
    caller fences them with ``fence_brokers``. A broker the tracker has never heard from
    (registered after the reset) gets its grace period from the first ``expired`` call that
    sees it.
    """

    def __init__(self, session_timeout_ms: int) -> None:
        assert session_timeout_ms > 0, f"session timeout {session_timeout_ms} ms"
        self.session_timeout_ms = session_timeout_ms
        self._last_heard_ms: dict[int, int] = {}

    def reset(self, image: MetadataImage, now_ms: int) -> None:
        self._last_heard_ms = {broker_id: now_ms for broker_id in image.brokers}

    def heartbeat(self, broker_id: int, now_ms: int) -> None:
        # A late-delivered heartbeat with an older timestamp never shortens the grace.
        self._last_heard_ms[broker_id] = max(now_ms, self._last_heard_ms.get(broker_id, now_ms))

    def last_heard_ms(self, broker_id: int) -> int | None:
        return self._last_heard_ms.get(broker_id)

    def expired(self, image: MetadataImage, now_ms: int) -> list[int]:
        silent: list[int] = []
        for broker_id in sorted(image.brokers):
            if image.brokers[broker_id].fenced:
                continue
            last_ms = self._last_heard_ms.setdefault(broker_id, now_ms)
            if now_ms - last_ms > self.session_timeout_ms:
                silent.append(broker_id)
        return silent

    def forget(self, broker_id: int) -> None:
        self._last_heard_ms.pop(broker_id, None)
