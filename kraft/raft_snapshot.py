"""Raft snapshots of the metadata image: plain msgpack data, never pickled objects.

Theory of operation
-------------------
pysyncobj compacts its journal by writing a "full dump" of the state machine and dropping
the journal entries the dump covers; it sends the same file to a follower that is too far
behind to be caught up from the journal. By default it pickles the state machine's
attributes. ``kraft.raft_log`` replaces that with the ``serializer``/``deserializer`` hooks
and this module's file format, so nothing of the project (and no pickle opcode written by
the project) is inside a dump, and a dump can be read without running code from it.

A dump is one file::

    SNAPSHOT_MAGIC (8 bytes) | payload_length (u32 BE) | crc32(payload) (u32 BE) | payload
    payload = msgpack map {
        "image":  [offset, brokers, topics, groups],  (image_to_plain below)
        "last":   [command, index, term],             the last journal entry the image includes
        "prev":   [command, index, term],             the entry before it (pysyncobj keeps both)
        "voters": ["host:port", ...],
    }

``command`` is the journal's own bytes for that entry; it is carried, never interpreted.

The image is written field by field in the order each image dataclass declares its fields
(``BROKER_FIELDS`` and friends). A test compares those tuples with the dataclasses, so a
field added to the image without being added here fails the suite instead of being
silently dropped from snapshots.

Example: the image after ``RegisterBrokerRecord(1, "h", 9092, None)`` is
``[1, [[1, "h", 9092, None, False, "", 1]], [], []]``.

Consumer groups are written as ``[group_id, group_epoch, assignment_epoch,
subscription_metadata, members, offsets]``; a member as its ``MEMBER_FIELDS`` in order
(topic partitions as ``[[topic, [partition, ...]], ...]``), an offset as ``[topic,
partition, committed_offset, committed_leader_epoch, committed_metadata]``. Reading a group
back goes through the group records' own checks (``kraft.records``), so a damaged group
is refused like a damaged record. An image written before groups existed (three
elements) reads as one without groups.

pysyncobj has the dump written to ``<file>.tmp`` and renames it over the file; the write
is fsynced here, and ``kraft.raft_log`` fsyncs the directory after the rename and before
the journal the dump replaces is cut, so a crash leaves either the old dump or the new
one. ``read_snapshot`` raises ``ValueError`` for a file that is torn, damaged or of another
format.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import msgpack

from kraft.groups import CommittedOffset, GroupImage, GroupMemberImage, to_field, topic_partitions
from kraft.image import BrokerImage, MetadataImage, PartitionImage, TopicImage
from kraft.records import (
    GroupMemberAssignmentRecord,
    GroupMemberRecord,
    GroupRecord,
    GroupTargetAssignmentRecord,
    OffsetCommitRecord,
)

SNAPSHOT_MAGIC = b"KRAFTSN1"  # the last byte is the format version
SNAPSHOT_HEADER = struct.Struct(">II")  # payload length, CRC-32 of the payload
SNAPSHOT_BYTES_MAX = 512 * 1024 * 1024

# The order in which each image dataclass is written; must list every field (tested).
BROKER_FIELDS = ("broker_id", "host", "port", "rack", "fenced", "incarnation_id", "epoch")
PARTITION_FIELDS = ("partition", "replicas", "isr", "leader", "leader_epoch", "partition_epoch")
TOPIC_FIELDS = ("topic_id", "name", "configs", "partitions")
IMAGE_FIELDS = ("brokers", "topics_by_id", "offset", "groups")
GROUP_FIELDS = ("group_id", "group_epoch", "assignment_epoch", "subscription_metadata", "members", "offsets")
MEMBER_FIELDS = ("member_id", "instance_id", "rack_id", "client_id", "subscribed_topic_names",
                 "subscribed_topic_regex", "rebalance_timeout_ms", "session_timeout_ms", "member_epoch",
                 "previous_member_epoch", "assigned", "pending_revocation", "target", "left_static")
OFFSET_FIELDS = ("committed_offset", "committed_leader_epoch", "committed_metadata")

JournalEntry = tuple[bytes, int, int]  # (command, raft index, raft term), as pysyncobj keeps it


@dataclass(frozen=True)
class Snapshot:
    image: MetadataImage
    last_entry: JournalEntry
    previous_entry: JournalEntry
    voters: tuple[str, ...]


def image_to_plain(image: MetadataImage) -> list[Any]:
    """The image as msgpack-ready lists: ``[offset, brokers, topics, groups]``."""
    brokers = [
        [getattr(broker, name) for name in BROKER_FIELDS]
        for _, broker in sorted(image.brokers.items())
    ]
    topics = []
    for _, topic in sorted(image.topics_by_id.items()):
        partitions = [
            [list(v) if isinstance(v, tuple) else v
             for v in (getattr(partition, name) for name in PARTITION_FIELDS)]
            for _, partition in sorted(topic.partitions.items())
        ]
        topics.append([topic.topic_id, topic.name, dict(topic.configs), partitions])
    groups = [_group_to_plain(group) for _, group in sorted(image.groups.items())]
    return [image.offset, brokers, topics, groups]


def _group_to_plain(group: GroupImage) -> list[Any]:
    members = []
    for _, member in sorted(group.members.items()):
        values: list[Any] = []
        for name in MEMBER_FIELDS:
            value = getattr(member, name)
            if name in ("assigned", "pending_revocation", "target"):
                value = [[topic, list(parts)] for topic, parts in to_field(value)]
            elif isinstance(value, tuple):
                value = list(value)
            values.append(value)
        members.append(values)
    offsets = [
        [topic, partition, *(getattr(offset, name) for name in OFFSET_FIELDS)]
        for topic, parts in sorted(group.offsets.items()) for partition, offset in sorted(parts.items())
    ]
    return [group.group_id, group.group_epoch, group.assignment_epoch,
            [list(entry) for entry in group.subscription_metadata], members, offsets]


def _group_from_plain(values: Any) -> GroupImage:
    _require(isinstance(values, list) and len(values) == len(GROUP_FIELDS), "group")
    group_id, group_epoch, assignment_epoch, metadata, members_plain, offsets_plain = values
    header = GroupRecord(group_id, group_epoch, assignment_epoch, metadata)  # the record's checks
    members: dict[str, GroupMemberImage] = {}
    for member_values in members_plain:
        _require(isinstance(member_values, list) and len(member_values) == len(MEMBER_FIELDS), "group member")
        fields = dict(zip(MEMBER_FIELDS, member_values))
        about = GroupMemberRecord(
            group_id, fields["member_id"], fields["instance_id"], fields["rack_id"], fields["client_id"],
            fields["subscribed_topic_names"], fields["subscribed_topic_regex"], fields["rebalance_timeout_ms"],
            fields["session_timeout_ms"])
        current = GroupMemberAssignmentRecord(
            group_id, about.member_id, fields["member_epoch"], fields["previous_member_epoch"], fields["assigned"],
            fields["pending_revocation"], fields["left_static"])
        target = GroupTargetAssignmentRecord(group_id, about.member_id, fields["target"])
        _require(about.member_id not in members, "group member id")
        members[about.member_id] = GroupMemberImage(
            member_id=about.member_id, instance_id=about.instance_id, rack_id=about.rack_id,
            client_id=about.client_id, subscribed_topic_names=about.subscribed_topic_names,
            subscribed_topic_regex=about.subscribed_topic_regex,
            rebalance_timeout_ms=about.rebalance_timeout_ms, session_timeout_ms=about.session_timeout_ms,
            member_epoch=current.member_epoch, previous_member_epoch=current.previous_member_epoch,
            assigned=topic_partitions(current.assigned),
            pending_revocation=topic_partitions(current.pending_revocation),
            target=topic_partitions(target.target), left_static=current.left_static,
        )
    offsets: dict[str, dict[int, CommittedOffset]] = {}
    for offset_values in offsets_plain:
        _require(isinstance(offset_values, list) and len(offset_values) == 2 + len(OFFSET_FIELDS), "offset")
        commit = OffsetCommitRecord(group_id, *offset_values)
        parts = offsets.setdefault(commit.topic, {})
        _require(commit.partition not in parts, "offset partition")
        parts[commit.partition] = CommittedOffset(commit.committed_offset, commit.committed_leader_epoch,
                                                  commit.committed_metadata)
    return GroupImage(header.group_id, header.group_epoch, header.assignment_epoch,
                      header.subscription_metadata, members, offsets)


def image_from_plain(plain: Any) -> MetadataImage:
    """Inverse of ``image_to_plain``; ``ValueError`` if the data does not have its shape."""
    try:
        _require(isinstance(plain, list) and len(plain) in (3, 4), "image")
        offset, brokers_plain, topics_plain = plain[:3]
        groups_plain = plain[3] if len(plain) == 4 else []  # written before groups existed
        _require(_is_int(offset) and offset >= 0, "offset")
        brokers: dict[int, BrokerImage] = {}
        for values in brokers_plain:
            # Snapshots written before broker epochs have the first five fields only.
            _require(isinstance(values, list) and len(values) in (5, len(BROKER_FIELDS)), "broker")
            broker = BrokerImage(**dict(zip(BROKER_FIELDS, values)))
            _require(_is_int(broker.broker_id) and broker.broker_id not in brokers, "broker id")
            _require(isinstance(broker.host, str) and _is_int(broker.port)
                     and (broker.rack is None or isinstance(broker.rack, str))
                     and isinstance(broker.fenced, bool) and isinstance(broker.incarnation_id, str)
                     and _is_int(broker.epoch), "broker fields")
            brokers[broker.broker_id] = broker
        topics: dict[str, TopicImage] = {}
        for topic_id, name, configs, partitions_plain in topics_plain:
            _require(isinstance(topic_id, str) and isinstance(name, str), "topic id/name")
            _require(isinstance(configs, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in configs.items()), "configs")
            partitions: dict[int, PartitionImage] = {}
            for values in partitions_plain:
                _require(isinstance(values, list) and len(values) == len(PARTITION_FIELDS), "partition")
                fields = dict(zip(PARTITION_FIELDS, values))
                fields["replicas"] = tuple(fields["replicas"])
                fields["isr"] = tuple(fields["isr"])
                partition = PartitionImage(**fields)
                _require(all(_is_int(v) for v in (partition.partition, partition.leader,
                                                  partition.leader_epoch, partition.partition_epoch,
                                                  *partition.replicas, *partition.isr)),
                         "partition fields")
                _require(partition.partition not in partitions, "partition number")
                partitions[partition.partition] = partition
            _require(topic_id not in topics, "topic id")
            topics[topic_id] = TopicImage(topic_id, name, configs, partitions)
        _require(len({t.name for t in topics.values()}) == len(topics), "topic names")
        groups: dict[str, GroupImage] = {}
        for group_values in groups_plain:
            group = _group_from_plain(group_values)
            _require(group.group_id not in groups, "group id")
            groups[group.group_id] = group
        return MetadataImage(brokers=brokers, topics_by_id=topics, offset=offset, groups=groups)
    except ValueError:
        raise
    except (TypeError, KeyError, AssertionError) as exc:
        raise ValueError(f"snapshot image is malformed: {exc!r}") from None


def encode_snapshot(snapshot: Snapshot) -> bytes:
    payload = msgpack.packb(
        {
            "image": image_to_plain(snapshot.image),
            "last": list(snapshot.last_entry),
            "prev": list(snapshot.previous_entry),
            "voters": list(snapshot.voters),
        },
        use_bin_type=True,
    )
    return SNAPSHOT_MAGIC + SNAPSHOT_HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def decode_snapshot(data: bytes) -> Snapshot:
    """Parse ``encode_snapshot``'s bytes; ``ValueError`` for anything else."""
    header_end = len(SNAPSHOT_MAGIC) + SNAPSHOT_HEADER.size
    if len(data) < header_end or data[: len(SNAPSHOT_MAGIC)] != SNAPSHOT_MAGIC:
        raise ValueError("not a kraft snapshot (or another version)")
    length, crc = SNAPSHOT_HEADER.unpack_from(data, len(SNAPSHOT_MAGIC))
    payload = data[header_end:]
    if len(payload) != length:
        raise ValueError(f"snapshot payload is {len(payload)} bytes, header says {length}")
    if zlib.crc32(payload) != crc:
        raise ValueError("snapshot CRC mismatch")
    try:
        body = msgpack.unpackb(payload, raw=False, use_list=True, strict_map_key=True)
    except (ValueError, TypeError, OverflowError, msgpack.UnpackException) as exc:
        raise ValueError(f"snapshot is not valid msgpack: {exc!r}") from None
    if not isinstance(body, dict) or set(body) != {"image", "last", "prev", "voters"}:
        raise ValueError("snapshot body has the wrong keys")
    voters = body["voters"]
    if not isinstance(voters, list) or not all(isinstance(v, str) for v in voters):
        raise ValueError("snapshot voters must be a list of addresses")
    return Snapshot(
        image=image_from_plain(body["image"]),
        last_entry=_journal_entry(body["last"]),
        previous_entry=_journal_entry(body["prev"]),
        voters=tuple(voters),
    )


def write_snapshot(path: str, snapshot: Snapshot, fsync: bool = True) -> None:
    """Write the snapshot to ``path`` (a temporary name: pysyncobj renames it into place
    afterwards, and the caller makes that rename durable) and fsync it."""
    data = encode_snapshot(snapshot)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def read_snapshot(path: str) -> Snapshot:
    size = os.path.getsize(path)
    if size > SNAPSHOT_BYTES_MAX:
        raise ValueError(f"snapshot {path} is {size} bytes, limit {SNAPSHOT_BYTES_MAX}")
    with open(path, "rb") as f:
        return decode_snapshot(f.read())


def fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(directory: str) -> None:
    """Make a new or renamed file's directory entry durable, not only its contents."""
    fsync_file(directory)


def _journal_entry(values: Any) -> JournalEntry:
    _require(isinstance(values, list) and len(values) == 3, "journal entry")
    command, index, term = values
    _require(isinstance(command, bytes), "journal entry command")
    _require(isinstance(index, int) and isinstance(term, int) and index >= 0 and term >= 0,
             "journal entry index/term")
    return (command, index, term)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise ValueError(f"snapshot {what} is malformed")

