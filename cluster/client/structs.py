"""The small value types the client hands to and takes from applications.

They are NamedTuples (cheap to build by the million, hashable, comparable) except the
admin descriptions, which are frozen dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple


class TopicPartition(NamedTuple):
    topic: str
    partition: int


class ConsumerRecord(NamedTuple):
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]


class RecordMetadata(NamedTuple):
    """Where an acknowledged record was written. ``offset`` is -1 when acks=0."""

    topic: str
    partition: int
    offset: int
    timestamp: int


class OffsetAndTimestamp(NamedTuple):
    offset: int
    timestamp: int


class OffsetAndMetadata(NamedTuple):
    """A committed offset: the offset of the next record to read, with optional metadata."""

    offset: int
    metadata: str | None = None
    leader_epoch: int = -1


class BrokerInfo(NamedTuple):
    node_id: int
    host: str
    port: int
    rack: str | None = None


@dataclass(frozen=True)
class NewTopic:
    name: str
    num_partitions: int = -1
    replication_factor: int = -1
    configs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PartitionDescription:
    partition: int
    leader: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]
    leader_epoch: int = -1
    offline_replicas: tuple[int, ...] = ()


@dataclass(frozen=True)
class TopicDescription:
    name: str
    partitions: tuple[PartitionDescription, ...]
    is_internal: bool = False


@dataclass(frozen=True)
class BrokerStatus:
    node_id: int
    host: str
    port: int
    rack: str | None
    fenced: bool


@dataclass(frozen=True)
class ClusterDescription:
    """What DescribeCluster answers: every registered broker (fenced or not), the active
    controller (-1 when unknown) and the answering node's view of the metadata quorum
    (``None`` on a single node without one)."""

    cluster_id: str
    controller_id: int
    brokers: tuple[BrokerStatus, ...]
    raft: dict[str, Any] | None = None


@dataclass(frozen=True)
class GroupListing:
    """One line of ListGroups: ``state`` is "empty", "assigning", "reconciling" or "stable"."""

    group_id: str
    state: str
    member_count: int


@dataclass(frozen=True)
class MemberDescription:
    member_id: str
    instance_id: str | None
    client_id: str
    member_epoch: int
    assignment: tuple[TopicPartition, ...]
    target_assignment: tuple[TopicPartition, ...] = ()
    subscribed_topic_names: tuple[str, ...] = ()
    subscribed_topic_regex: str | None = None


@dataclass(frozen=True)
class GroupPartitionLag:
    """Where a group stands on one partition. ``committed_offset`` is -1 when the group has
    committed nothing there; ``log_end_offset`` and ``lag`` are -1 when the partition's end
    could not be looked up (a deleted topic). Without a commit, the lag counts from the log
    start, since that is what a consumer with ``auto_offset_reset="earliest"`` would read."""

    topic: str
    partition: int
    committed_offset: int
    log_end_offset: int
    lag: int
    member_id: str | None = None


@dataclass(frozen=True)
class GroupDescription:
    group_id: str
    state: str
    group_epoch: int
    assignment_epoch: int
    members: tuple[MemberDescription, ...]
    partitions: tuple[GroupPartitionLag, ...]

    @property
    def total_lag(self) -> int:
        return sum(p.lag for p in self.partitions if p.lag > 0)
