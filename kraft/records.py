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
than guessing. Fields are positional, in the order the dataclass declares them.

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


MetadataRecord = Union[
    RegisterBrokerRecord, TopicRecord, ConfigRecord, PartitionRecord, PartitionChangeRecord,
    RemoveTopicRecord, UnfenceBrokerRecord, FenceBrokerRecord,
]

RECORD_TYPES: dict[int, type[MetadataRecord]] = {
    cls.TYPE: cls
    for cls in (
        RegisterBrokerRecord, TopicRecord, ConfigRecord, PartitionRecord, PartitionChangeRecord,
        RemoveTopicRecord, UnfenceBrokerRecord, FenceBrokerRecord,
    )
}

# msgpack gives sequences back as lists; these fields are tuples on the record.
_FIELD_NAMES: dict[type, tuple[str, ...]] = {
    cls: tuple(f.name for f in fields(cls)) for cls in RECORD_TYPES.values()
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
    cls = RECORD_TYPES.get(record_type) if isinstance(record_type, int) and not isinstance(record_type, bool) else None
    if cls is None:
        raise ValueError(f"unknown metadata record type {record_type!r}")
    if version != cls.VERSION or isinstance(version, bool):
        raise ValueError(f"unsupported {cls.__name__} version {version!r}")
    names = _FIELD_NAMES[cls]
    if len(values) - 2 != len(names):
        raise ValueError(f"{cls.__name__} v{version} has {len(names)} fields, got {len(values) - 2}")
    constructor: Callable[..., MetadataRecord] = cls
    # The record's own checks turn wrong types and ranges into ValueError.
    return constructor(**dict(zip(names, values[2:])))
