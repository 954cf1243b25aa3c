"""Metadata records: the typed changes that, applied in order, build the metadata image.

Theory of operation
-------------------
Every change to cluster metadata (a broker registering, a topic being created, a config
being set, a partition being placed, a topic being removed) is one immutable record. The
controller decides and emits records (``kraft.controller``); the metadata log makes them
durable (a Raft group, ``kraft.raft_log``); every node applies them in log
order to its image (``kraft.image``). Records are the only thing that crosses the log, so
they are plain values with no behaviour beyond checking their own fields.

On the log a record is msgpack bytes: an array ``[type, version, field, field, ...]``. The
type numbers are Apache Kafka's metadata record API keys (RegisterBrokerRecord = 0,
TopicRecord = 2, PartitionRecord = 3, ConfigRecord = 4, RemoveTopicRecord = 9), and the
version lets a record gain fields later: a decoder refuses versions it does not know rather
than guessing. Consumer-group records (group epochs, members, assignments, committed
offsets) have kraft's own type numbers from 1000 up, a range Kafka's metadata record keys
do not reach. Fields are positional, in the order the dataclass declares them.

Example: ``TopicRecord(topic_id="t-1", name="orders")`` encodes as the msgpack array
``[2, 0, "t-1", "orders"]``.

``decode_record`` is a trust boundary (the bytes come from disk or from a peer), so it
raises ``ValueError`` for anything malformed: not msgpack, trailing bytes, an unknown type or
version, the wrong number of fields, a field of the wrong type or out of range. Building a
record in code runs the same checks, so an invalid record cannot exist.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, ClassVar, Union

import msgpack

# A record is a few hundred bytes; anything far larger is not a record.
RECORD_BYTES_MAX = 1024 * 1024
PORT_MAX = 65535
NO_LEADER = -1  # PartitionRecord.leader when no replica can lead


def _check_int(value: Any, name: str, minimum: int, maximum: int | None = None) -> None:
    # bool is an int subclass in Python; a bool is never a valid id, epoch or port.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"[{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
        raise ValueError(f"{name} must be {bound}, got {value}")


def _check_str(value: Any, name: str, *, optional: bool = False, non_empty: bool = True) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {type(value).__name__}")
    if non_empty and not value:
        raise ValueError(f"{name} must not be empty")


def _as_broker_tuple(record: Any, name: str) -> None:
    """Check a sequence of broker ids and store it on ``record`` as a tuple."""
    value = getattr(record, name)
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{name} must be a sequence of broker ids, got {type(value).__name__}")
    for broker_id in value:
        _check_int(broker_id, f"{name} entry", 0)
    if len(set(value)) != len(value):
        raise ValueError(f"{name} has a duplicate broker id: {list(value)}")
    object.__setattr__(record, name, tuple(value))


@dataclass(frozen=True)
class RegisterBrokerRecord:
    """A broker announces its id and its listener; re-registering replaces the old entry.

    A registered broker is fenced until an UnfenceBrokerRecord follows (Kafka KRaft: the
    controller unfences a broker once its heartbeats show it is ready).

    ``incarnation_id`` names one run of the broker process (a fresh id at every start):
    every new incarnation registers again, and the metadata offset of its record becomes
    the broker's epoch (KIP-841), so requests sent by an earlier run can be told apart.
    """

    TYPE: ClassVar[int] = 0
    VERSION: ClassVar[int] = 1
    # Older versions still read: version -> how many leading fields it has (the rest default).
    OLDER_VERSIONS: ClassVar[dict[int, int]] = {0: 4}
    broker_id: int
    host: str
    port: int
    rack: str | None
    incarnation_id: str = ""

    def __post_init__(self) -> None:
        _check_int(self.broker_id, "broker_id", 0)
        _check_str(self.host, "host")
        _check_int(self.port, "port", 1, PORT_MAX)
        _check_str(self.rack, "rack", optional=True)
        _check_str(self.incarnation_id, "incarnation_id", non_empty=False)


@dataclass(frozen=True)
class TopicRecord:
    """A topic comes into existence with a fresh id; its partitions follow as PartitionRecords."""

    TYPE: ClassVar[int] = 2
    VERSION: ClassVar[int] = 0
    topic_id: str
    name: str

    def __post_init__(self) -> None:
        _check_str(self.topic_id, "topic_id")
        _check_str(self.name, "name")


@dataclass(frozen=True)
class ConfigRecord:
    """Set one topic config key; ``value=None`` deletes the override (back to the default)."""

    TYPE: ClassVar[int] = 4
    VERSION: ClassVar[int] = 0
    topic_id: str
    name: str
    value: str | None

    def __post_init__(self) -> None:
        _check_str(self.topic_id, "topic_id")
        _check_str(self.name, "name")
        _check_str(self.value, "value", optional=True, non_empty=False)


@dataclass(frozen=True)
class PartitionRecord:
    """The full state of one partition: its replicas, ISR, leader and epochs."""

    TYPE: ClassVar[int] = 3
    VERSION: ClassVar[int] = 0
    topic_id: str
    partition: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]
    leader: int
    leader_epoch: int
    partition_epoch: int

    def __post_init__(self) -> None:
        _check_str(self.topic_id, "topic_id")
        _check_int(self.partition, "partition", 0)
        _as_broker_tuple(self, "replicas")
        _as_broker_tuple(self, "isr")
        _check_int(self.leader, "leader", NO_LEADER)
        _check_int(self.leader_epoch, "leader_epoch", 0)
        _check_int(self.partition_epoch, "partition_epoch", 0)


@dataclass(frozen=True)
class RemoveTopicRecord:
    """A topic and all its partitions are gone; its name is free again."""

    TYPE: ClassVar[int] = 9
    VERSION: ClassVar[int] = 0
    topic_id: str

    def __post_init__(self) -> None:
        _check_str(self.topic_id, "topic_id")


@dataclass(frozen=True)
class PartitionChangeRecord:
    """A partition's new leader, ISR and epochs; its replicas stay as they are.

    It carries the partition's full new state rather than a diff, so applying it needs no
    arithmetic, and the image checks that the epochs step by exactly one from the old state.
    """

    TYPE: ClassVar[int] = 5
    VERSION: ClassVar[int] = 0
    topic_id: str
    partition: int
    leader: int
    isr: tuple[int, ...]
    leader_epoch: int
    partition_epoch: int

    def __post_init__(self) -> None:
        _check_str(self.topic_id, "topic_id")
        _check_int(self.partition, "partition", 0)
        _check_int(self.leader, "leader", NO_LEADER)
        _as_broker_tuple(self, "isr")
        _check_int(self.leader_epoch, "leader_epoch", 0)
        _check_int(self.partition_epoch, "partition_epoch", 0)


@dataclass(frozen=True)
class UnfenceBrokerRecord:
    """The controller lets a registered broker lead and join ISRs again."""

    TYPE: ClassVar[int] = 16
    VERSION: ClassVar[int] = 0
    broker_id: int

    def __post_init__(self) -> None:
        _check_int(self.broker_id, "broker_id", 0)


@dataclass(frozen=True)
class FenceBrokerRecord:
    """The controller stops trusting a broker (its heartbeats lapsed): it may not lead."""

    TYPE: ClassVar[int] = 17
    VERSION: ClassVar[int] = 0
    broker_id: int

    def __post_init__(self) -> None:
        _check_int(self.broker_id, "broker_id", 0)


# -- consumer groups: kraft's own record types (1000+, outside Kafka's metadata keys) ------
#
# Group state and committed offsets live in the metadata log too (DESIGN.md §6), so they
# survive a controller failover. The records carry full values, never diffs, and
# ``kraft.groups`` applies them. A "topic partitions" field is a tuple of
# ``(topic, (partition, ...))`` sorted by topic with sorted partitions, each topic once
# and with at least one partition, e.g. ``(("orders", (0, 2)), ("audit", (1,)))`` is
# stored as ``(("audit", (1,)), ("orders", (0, 2)))``.

TopicPartitionsField = tuple[tuple[str, tuple[int, ...]], ...]
TopicMetadataField = tuple[tuple[str, str, int], ...]
NO_MEMBER_EPOCH = -1  # GroupMemberAssignmentRecord.previous_member_epoch before any epoch


def _as_topic_partitions(record: Any, name: str) -> None:
    """Check a topic partitions field and store it on ``record`` in canonical order."""
    value = getattr(record, name)
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{name} must be a sequence of (topic, partitions), got {type(value).__name__}")
    entries: dict[str, tuple[int, ...]] = {}
    for entry in value:
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise ValueError(f"{name} entries must be (topic, partitions) pairs, got {entry!r}")
        topic, partitions = entry
        _check_str(topic, f"{name} topic")
        if topic in entries:
            raise ValueError(f"{name} lists topic {topic!r} twice")
        if not isinstance(partitions, (list, tuple)) or not partitions:
            raise ValueError(f"{name} partitions of {topic!r} must be a non-empty sequence")
        for partition in partitions:
            _check_int(partition, f"{name} partition of {topic!r}", 0)
        if len(set(partitions)) != len(partitions):
            raise ValueError(f"{name} lists a partition of {topic!r} twice: {list(partitions)}")
        entries[topic] = tuple(sorted(partitions))
    object.__setattr__(record, name, tuple(sorted(entries.items())))


def _as_topic_metadata(record: Any, name: str) -> None:
    """Check a ``((topic, topic_id, partition_count), ...)`` field; store it sorted."""
    value = getattr(record, name)
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{name} must be a sequence of (topic, topic_id, count), got {type(value).__name__}")
    entries: dict[str, tuple[str, str, int]] = {}
    for entry in value:
        if not isinstance(entry, (list, tuple)) or len(entry) != 3:
            raise ValueError(f"{name} entries must be (topic, topic_id, count), got {entry!r}")
        topic, topic_id, count = entry
        _check_str(topic, f"{name} topic")
        _check_str(topic_id, f"{name} topic_id")
        _check_int(count, f"{name} partition count", 1)
        if topic in entries:
            raise ValueError(f"{name} lists topic {topic!r} twice")
        entries[topic] = (topic, topic_id, count)
    object.__setattr__(record, name, tuple(entries[t] for t in sorted(entries)))


def _as_string_tuple(record: Any, name: str) -> None:
    value = getattr(record, name)
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{name} must be a sequence of strings, got {type(value).__name__}")
    for item in value:
        _check_str(item, f"{name} entry")
    if len(set(value)) != len(value):
        raise ValueError(f"{name} has a duplicate: {list(value)}")
    object.__setattr__(record, name, tuple(sorted(value)))


@dataclass(frozen=True)
class GroupRecord:
    """A consumer group's epochs: creates the group, or moves its epochs forward.

    ``group_epoch`` steps on every change of membership, subscriptions or the partitions of
    subscribed topics; ``assignment_epoch`` is the group epoch the target assignment was
    computed at; ``subscription_metadata`` is what it was computed from:
    ``((topic, topic_id, partition_count), ...)`` of every subscribed topic that exists.
    """

    TYPE: ClassVar[int] = 1000
    VERSION: ClassVar[int] = 0
    group_id: str
    group_epoch: int
    assignment_epoch: int
    subscription_metadata: TopicMetadataField

    def __post_init__(self) -> None:
        _check_str(self.group_id, "group_id")
        _check_int(self.group_epoch, "group_epoch", 0)
        _check_int(self.assignment_epoch, "assignment_epoch", 0, self.group_epoch)
        _as_topic_metadata(self, "subscription_metadata")


@dataclass(frozen=True)
class GroupMemberRecord:
    """A member joins a group, or changes what it told the coordinator about itself.

    A new member starts at member epoch 0 with nothing assigned; an existing one keeps its
    assignment. ``subscribed_topic_names`` (sorted) and ``subscribed_topic_regex`` together
    are its subscription.
    """

    TYPE: ClassVar[int] = 1001
    VERSION: ClassVar[int] = 0
    group_id: str
    member_id: str
    instance_id: str | None
    rack_id: str | None
    client_id: str
    subscribed_topic_names: tuple[str, ...]
    subscribed_topic_regex: str | None
    rebalance_timeout_ms: int
    session_timeout_ms: int

    def __post_init__(self) -> None:
        _check_str(self.group_id, "group_id")
        _check_str(self.member_id, "member_id")
        _check_str(self.instance_id, "instance_id", optional=True)
        _check_str(self.rack_id, "rack_id", optional=True)
        _check_str(self.client_id, "client_id", non_empty=False)
        _as_string_tuple(self, "subscribed_topic_names")
        _check_str(self.subscribed_topic_regex, "subscribed_topic_regex", optional=True)
        _check_int(self.rebalance_timeout_ms, "rebalance_timeout_ms", 1)
        _check_int(self.session_timeout_ms, "session_timeout_ms", 1)


@dataclass(frozen=True)
class GroupMemberAssignmentRecord:
    """A member's current assignment: what it was given (``assigned``), what it must give
    back (``pending_revocation``), its member epoch, and whether it left as a static member
    that will come back (its partitions stay reserved)."""

    TYPE: ClassVar[int] = 1002
    VERSION: ClassVar[int] = 0
    group_id: str
    member_id: str
    member_epoch: int
    previous_member_epoch: int
    assigned: TopicPartitionsField
    pending_revocation: TopicPartitionsField
    left_static: bool

    def __post_init__(self) -> None:
        _check_str(self.group_id, "group_id")
        _check_str(self.member_id, "member_id")
        _check_int(self.member_epoch, "member_epoch", 0)
        _check_int(self.previous_member_epoch, "previous_member_epoch", NO_MEMBER_EPOCH)
        _as_topic_partitions(self, "assigned")
        _as_topic_partitions(self, "pending_revocation")
        if not isinstance(self.left_static, bool):
            raise ValueError(f"left_static must be a boolean, got {type(self.left_static).__name__}")


@dataclass(frozen=True)
class GroupTargetAssignmentRecord:
    """One member's target assignment at the group's assignment epoch."""

    TYPE: ClassVar[int] = 1003
    VERSION: ClassVar[int] = 0
    group_id: str
    member_id: str
    target: TopicPartitionsField

    def __post_init__(self) -> None:
        _check_str(self.group_id, "group_id")
        _check_str(self.member_id, "member_id")
        _as_topic_partitions(self, "target")


@dataclass(frozen=True)
class RemoveGroupMemberRecord:
    """A member left or expired: its assignment and target are gone, its partitions free."""

    TYPE: ClassVar[int] = 1004
    VERSION: ClassVar[int] = 0
    group_id: str
    member_id: str

    def __post_init__(self) -> None:
        _check_str(self.group_id, "group_id")
        _check_str(self.member_id, "member_id")


@dataclass(frozen=True)
class OffsetCommitRecord:
    """A group's committed offset of one partition (creates the group if it has none)."""

    TYPE: ClassVar[int] = 1005
    VERSION: ClassVar[int] = 0
    group_id: str
    topic: str
    partition: int
    committed_offset: int
    committed_leader_epoch: int
    committed_metadata: str | None

    def __post_init__(self) -> None:
        _check_str(self.group_id, "group_id")
        _check_str(self.topic, "topic")
        _check_int(self.partition, "partition", 0)
        _check_int(self.committed_offset, "committed_offset", 0)
        _check_int(self.committed_leader_epoch, "committed_leader_epoch", -1)
        _check_str(self.committed_metadata, "committed_metadata", optional=True, non_empty=False)


@dataclass(frozen=True)
class RemoveGroupRecord:
    """A group without members is gone, with its committed offsets."""

    TYPE: ClassVar[int] = 1006
    VERSION: ClassVar[int] = 0
    group_id: str

    def __post_init__(self) -> None:
        _check_str(self.group_id, "group_id")


GROUP_RECORD_TYPES = (
    GroupRecord, GroupMemberRecord, GroupMemberAssignmentRecord, GroupTargetAssignmentRecord,
    RemoveGroupMemberRecord, OffsetCommitRecord, RemoveGroupRecord,
)
GroupMetadataRecord = Union[
    GroupRecord, GroupMemberRecord, GroupMemberAssignmentRecord, GroupTargetAssignmentRecord,
    RemoveGroupMemberRecord, OffsetCommitRecord, RemoveGroupRecord,
]


MetadataRecord = Union[
    RegisterBrokerRecord, TopicRecord, ConfigRecord, PartitionRecord, PartitionChangeRecord,
    RemoveTopicRecord, UnfenceBrokerRecord, FenceBrokerRecord, GroupMetadataRecord,
]

RECORD_TYPES: dict[int, type[MetadataRecord]] = {
    cls.TYPE: cls
    for cls in (
        RegisterBrokerRecord, TopicRecord, ConfigRecord, PartitionRecord, PartitionChangeRecord,
        RemoveTopicRecord, UnfenceBrokerRecord, FenceBrokerRecord,
    )
}
# kraft's own record types (consumer groups), numbered from 1000 so that they can never
# collide with a Kafka metadata record key in RECORD_TYPES.
KRAFT_RECORD_TYPES: dict[int, type[MetadataRecord]] = {cls.TYPE: cls for cls in GROUP_RECORD_TYPES}
assert not set(KRAFT_RECORD_TYPES) & set(RECORD_TYPES) and min(KRAFT_RECORD_TYPES) >= 1000
_ALL_RECORD_TYPES: dict[int, type[MetadataRecord]] = {**RECORD_TYPES, **KRAFT_RECORD_TYPES}

# msgpack gives sequences back as lists; these fields are tuples on the record.
_FIELD_NAMES: dict[type, tuple[str, ...]] = {
    cls: tuple(f.name for f in fields(cls)) for cls in _ALL_RECORD_TYPES.values()
}


def encode_record(record: MetadataRecord) -> bytes:
    """Serialise one record as msgpack ``[type, version, *fields]``."""
    cls = type(record)
    assert cls in _FIELD_NAMES, f"not a metadata record: {cls.__name__}"
    values: list[Any] = [cls.TYPE, cls.VERSION]
    for name in _FIELD_NAMES[cls]:
        value = getattr(record, name)
        values.append(list(value) if isinstance(value, tuple) else value)
    return msgpack.packb(values, use_bin_type=True)


def decode_record(data: bytes) -> MetadataRecord:
    """Parse bytes produced by ``encode_record``; ``ValueError`` for anything else."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"a record is bytes, got {type(data).__name__}")
    if len(data) > RECORD_BYTES_MAX:
        raise ValueError(f"record of {len(data)} bytes exceeds {RECORD_BYTES_MAX} bytes")
    try:
        values = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except (ValueError, TypeError, OverflowError, msgpack.UnpackException) as exc:
        # msgpack reports bad input with several exception types (ExtraData, FormatError,
        # StackError, UnicodeDecodeError are all ValueErrors; unhashable keys a TypeError).
        raise ValueError(f"record is not valid msgpack: {exc!r}") from None
    if not isinstance(values, list) or len(values) < 2:
        raise ValueError("record must be a msgpack array [type, version, fields...]")
    record_type, version = values[0], values[1]
    cls = _ALL_RECORD_TYPES.get(record_type) if isinstance(record_type, int) and not isinstance(record_type, bool) else None
    if cls is None:
        raise ValueError(f"unknown metadata record type {record_type!r}")
    older: dict[int, int] = getattr(cls, "OLDER_VERSIONS", {})
    if not isinstance(version, int) or isinstance(version, bool) \
            or (version != cls.VERSION and version not in older):
        raise ValueError(f"unsupported {cls.__name__} version {version!r}")
    names = _FIELD_NAMES[cls]
    if version != cls.VERSION:
        names = names[:older[version]]
    if len(values) - 2 != len(names):
        raise ValueError(f"{cls.__name__} v{version} has {len(names)} fields, got {len(values) - 2}")
    constructor: Callable[..., MetadataRecord] = cls
    # The record's own checks turn wrong types and ranges into ValueError.
    return constructor(**dict(zip(names, values[2:])))
