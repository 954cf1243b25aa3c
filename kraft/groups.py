"""Consumer groups in the metadata image: members, assignments, epochs and committed offsets.

Theory of operation
-------------------
The active controller is every group's coordinator (``cluster.group_coordinator`` decides,
``cluster.group_service`` runs it). What it decides is kept here, as part of the immutable
``MetadataImage`` (``image.groups``), built by applying the group records of
``kraft.records`` in log order, so every voter holds the same groups and a new active
controller carries on where the old one stopped. Session timers are not here: they are
soft state of the active controller.

    GroupRecord                   create a group / move its group and assignment epochs
    GroupMemberRecord             a member joins, or changes its subscription or timeouts
    GroupTargetAssignmentRecord   one member's target assignment (at the assignment epoch)
    GroupMemberAssignmentRecord   one member's current assignment: assigned, pending
                                  revocation, member epoch, left as a static member
    RemoveGroupMemberRecord       a member left or expired
    OffsetCommitRecord            a committed offset (creates the group if needed)
    RemoveGroupRecord             an empty group and its offsets are deleted

Invariants that ``GroupsDelta`` checks (a record breaking one raises ``ValueError``, and
the whole ``MetadataImage.apply`` call has no effect):

* no partition is held by two members: the ``assigned`` and ``pending_revocation`` sets of
  all members of a group are pairwise disjoint (revocation before reassignment);
* epochs never go backwards; a member epoch never passes the group's assignment epoch;
* assignments, targets and offsets name only partitions that exist, and an instance id
  belongs to one member at most.

When a topic is removed (``remove_topic``), its committed offsets and its partitions in
every assignment and target disappear (and a group left with no member and no offset
with them). The group's ``subscription_metadata`` still names
the topic, which is how the coordinator notices that the group must be rebalanced.

Example::

    image.apply([GroupRecord("g", 1, 1, (("t", "id-t", 2),)),
                 GroupMemberRecord("g", "m1", None, None, "c", ("t",), None, 60000, 10000),
                 GroupTargetAssignmentRecord("g", "m1", (("t", (0, 1)),)),
                 GroupMemberAssignmentRecord("g", "m1", 1, 0, (("t", (0, 1)),), (), False)])
    -> image.groups["g"].members["m1"].assigned == {"t": frozenset({0, 1})}
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Callable, Collection, Iterable, Mapping

from kraft.records import (
    NO_MEMBER_EPOCH,
    GroupMemberAssignmentRecord,
    GroupMemberRecord,
    GroupMetadataRecord,
    GroupRecord,
    GroupTargetAssignmentRecord,
    OffsetCommitRecord,
    RemoveGroupMemberRecord,
    RemoveGroupRecord,
    TopicPartitionsField,
)

TopicPartitions = Mapping[str, frozenset[int]]
EMPTY_TOPIC_PARTITIONS: TopicPartitions = MappingProxyType({})

# ListGroups / ConsumerGroupDescribe states.
GROUP_STATE_EMPTY = "empty"
GROUP_STATE_ASSIGNING = "assigning"  # the target is older than the group epoch
GROUP_STATE_RECONCILING = "reconciling"  # some member does not hold its target yet
GROUP_STATE_STABLE = "stable"

# Looks up a partition's existence in the image being built: topic name -> its partition
# indexes, or None when the topic does not exist.
PartitionLookup = Callable[[str], "Collection[int] | None"]


def topic_partitions(pairs: Iterable[tuple[str, Iterable[int]]]) -> TopicPartitions:
    """An immutable ``{topic: frozenset(partitions)}`` without empty topics."""
    return MappingProxyType({topic: frozenset(parts) for topic, parts in pairs if parts})


def to_field(partitions: TopicPartitions) -> TopicPartitionsField:
    """The canonical record field of a topic partitions mapping (sorted, no empty topic)."""
    return tuple((topic, tuple(sorted(parts))) for topic, parts in sorted(partitions.items()) if parts)


def union(*many: TopicPartitions) -> TopicPartitions:
    merged: dict[str, set[int]] = {}
    for partitions in many:
        for topic, parts in partitions.items():
            merged.setdefault(topic, set()).update(parts)
    return topic_partitions(merged.items())


def difference(left: TopicPartitions, right: TopicPartitions) -> TopicPartitions:
    return topic_partitions((t, parts - right.get(t, frozenset())) for t, parts in left.items())


def intersection(left: TopicPartitions, right: TopicPartitions) -> TopicPartitions:
    return topic_partitions((t, parts & right.get(t, frozenset())) for t, parts in left.items())


def partition_count(partitions: TopicPartitions) -> int:
    return sum(len(parts) for parts in partitions.values())


@dataclass(frozen=True)
class CommittedOffset:
    committed_offset: int
    committed_leader_epoch: int
    committed_metadata: str | None


@dataclass(frozen=True)
class GroupMemberImage:
    member_id: str
    instance_id: str | None
    rack_id: str | None
    client_id: str
    subscribed_topic_names: tuple[str, ...]
    subscribed_topic_regex: str | None
    rebalance_timeout_ms: int
    session_timeout_ms: int
    member_epoch: int = 0
    previous_member_epoch: int = NO_MEMBER_EPOCH
    assigned: TopicPartitions = field(default_factory=lambda: EMPTY_TOPIC_PARTITIONS)
    pending_revocation: TopicPartitions = field(default_factory=lambda: EMPTY_TOPIC_PARTITIONS)
    target: TopicPartitions = field(default_factory=lambda: EMPTY_TOPIC_PARTITIONS)
    left_static: bool = False  # left with epoch -2: its partitions stay reserved

    def __post_init__(self) -> None:
        for name in ("assigned", "pending_revocation", "target"):
            value = getattr(self, name)
            if not isinstance(value, MappingProxyType):
                object.__setattr__(self, name, topic_partitions(value.items()))

    @property
    def holds(self) -> TopicPartitions:
        """Every partition this member may still own: assigned or not yet revoked."""
        return union(self.assigned, self.pending_revocation)

    @property
    def is_reconciled(self) -> bool:
        """The member holds exactly its target (nothing pending, nothing missing)."""
        return not self.pending_revocation and self.assigned == self.target


@dataclass(frozen=True)
class GroupImage:
    group_id: str
    group_epoch: int
    assignment_epoch: int
    subscription_metadata: tuple[tuple[str, str, int], ...]  # (topic, topic id, partitions)
    members: Mapping[str, GroupMemberImage] = field(default_factory=dict)
    offsets: Mapping[str, Mapping[int, CommittedOffset]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.members, MappingProxyType):
            object.__setattr__(self, "members", MappingProxyType(dict(self.members)))
        if not isinstance(self.offsets, MappingProxyType) or not all(
                isinstance(parts, MappingProxyType) for parts in self.offsets.values()):
            object.__setattr__(self, "offsets", MappingProxyType({
                topic: parts if isinstance(parts, MappingProxyType) else MappingProxyType(dict(parts))
                for topic, parts in self.offsets.items() if parts
            }))

    @property
    def exists(self) -> bool:
        """A group exists for the APIs while it has members or committed offsets."""
        return bool(self.members) or bool(self.offsets)

    @property
    def state(self) -> str:
        if not self.members:
            return GROUP_STATE_EMPTY
        if self.assignment_epoch < self.group_epoch:
            return GROUP_STATE_ASSIGNING
        if any(m.member_epoch != self.assignment_epoch or not m.is_reconciled for m in self.members.values()):
            return GROUP_STATE_RECONCILING
        return GROUP_STATE_STABLE

    def member_with_instance(self, instance_id: str) -> GroupMemberImage | None:
        for member in self.members.values():
            if member.instance_id == instance_id:
                return member
        return None

    def committed(self, topic: str, partition: int) -> CommittedOffset | None:
        parts = self.offsets.get(topic)
        return parts.get(partition) if parts is not None else None


class _WorkingGroup:
    """A group being changed by a delta: plain dicts, frozen again by ``build``."""

    def __init__(self, group: GroupImage) -> None:
        self.group = group
        self.members = dict(group.members)
        self.offsets: dict[str, Mapping[int, CommittedOffset]] = dict(group.offsets)

    def build(self) -> GroupImage:
        return replace(self.group, members=self.members, offsets={t: p for t, p in self.offsets.items() if p})


class GroupsDelta:
    """The group changes of one ``MetadataImage.apply`` call (see the module docstring)."""

    def __init__(self, base: Mapping[str, GroupImage], partitions_of: PartitionLookup) -> None:
        self.base = base
        self.partitions_of = partitions_of
        self.groups: dict[str, GroupImage | _WorkingGroup] | None = None

    # -- replay -----------------------------------------------------------------------------

    def replay(self, record: GroupMetadataRecord) -> None:
        if isinstance(record, GroupRecord):
            self._set_epochs(record)
        elif isinstance(record, GroupMemberRecord):
            self._set_member(record)
        elif isinstance(record, GroupMemberAssignmentRecord):
            self._set_assignment(record)
        elif isinstance(record, GroupTargetAssignmentRecord):
            self._set_target(record)
        elif isinstance(record, RemoveGroupMemberRecord):
            self._remove_member(record)
        elif isinstance(record, OffsetCommitRecord):
            self._commit_offset(record)
        elif isinstance(record, RemoveGroupRecord):
            self._remove_group(record)
        else:
            raise ValueError(f"not a group record: {type(record).__name__}")

    def remove_topic(self, name: str) -> None:
        """Drop a removed topic's offsets and its partitions from every assignment."""
        for group_id, group in list(self._groups().items()):
            image = group.group if isinstance(group, _WorkingGroup) else group
            offsets = group.offsets if isinstance(group, _WorkingGroup) else image.offsets
            members = group.members if isinstance(group, _WorkingGroup) else image.members
            if name not in offsets and not any(
                    name in m.assigned or name in m.pending_revocation or name in m.target
                    for m in members.values()):
                continue
            working = self._working(group_id, None)
            working.offsets.pop(name, None)
            for member_id, member in list(working.members.items()):
                working.members[member_id] = replace(
                    member,
                    assigned=_without_topic(member.assigned, name),
                    pending_revocation=_without_topic(member.pending_revocation, name),
                    target=_without_topic(member.target, name),
                )
            if not working.members and not any(working.offsets.values()):
                del self._groups()[group_id]  # nothing left: the group is gone with its topic

    def build(self) -> Mapping[str, GroupImage] | None:
        """The new groups, or None when no group changed."""
        if self.groups is None:
            return None
        return MappingProxyType({
            group_id: group.build() if isinstance(group, _WorkingGroup) else group
            for group_id, group in self.groups.items()
        })

    # -- the records ------------------------------------------------------------------------

    def _groups(self) -> dict[str, GroupImage | _WorkingGroup]:
        if self.groups is None:
            self.groups = dict(self.base)
        return self.groups

    def _working(self, group_id: str, record: Any) -> _WorkingGroup:
        groups = self._groups()
        group = groups.get(group_id)
        if group is None:
            raise ValueError(f"{record}: unknown group {group_id!r}")
        if isinstance(group, GroupImage):
            group = _WorkingGroup(group)
            groups[group_id] = group
        return group

    def _member(self, working: _WorkingGroup, member_id: str, record: Any) -> GroupMemberImage:
        member = working.members.get(member_id)
        if member is None:
            raise ValueError(f"{record}: unknown member {member_id!r} of group {working.group.group_id!r}")
        return member

    def _set_epochs(self, record: GroupRecord) -> None:
        groups = self._groups()
        if record.group_id not in groups:
            groups[record.group_id] = GroupImage(record.group_id, 0, 0, ())
        working = self._working(record.group_id, record)
        old = working.group
        if record.group_epoch < old.group_epoch or record.assignment_epoch < old.assignment_epoch:
            raise ValueError(f"{record}: epochs go backwards from {old.group_epoch}/{old.assignment_epoch}")
        working.group = replace(old, group_epoch=record.group_epoch, assignment_epoch=record.assignment_epoch,
                                subscription_metadata=record.subscription_metadata)

    def _set_member(self, record: GroupMemberRecord) -> None:
        working = self._working(record.group_id, record)
        if record.instance_id is not None:
            for other in working.members.values():
                if other.instance_id == record.instance_id and other.member_id != record.member_id:
                    raise ValueError(f"{record}: instance id held by member {other.member_id!r}")
        metadata: dict[str, Any] = dict(
            instance_id=record.instance_id, rack_id=record.rack_id, client_id=record.client_id,
            subscribed_topic_names=record.subscribed_topic_names,
            subscribed_topic_regex=record.subscribed_topic_regex,
            rebalance_timeout_ms=record.rebalance_timeout_ms, session_timeout_ms=record.session_timeout_ms,
        )
        current = working.members.get(record.member_id)
        if current is None:
            working.members[record.member_id] = GroupMemberImage(member_id=record.member_id, **metadata)
        else:
            working.members[record.member_id] = replace(current, **metadata)

    def _check_exists(self, partitions: TopicPartitions, record: Any) -> None:
        for topic, parts in partitions.items():
            known = self.partitions_of(topic)
            if known is None:
                raise ValueError(f"{record}: unknown topic {topic!r}")
            missing = [p for p in parts if p not in known]
            if missing:
                raise ValueError(f"{record}: unknown partitions {sorted(missing)} of {topic!r}")

    def _set_assignment(self, record: GroupMemberAssignmentRecord) -> None:
        working = self._working(record.group_id, record)
        member = self._member(working, record.member_id, record)
        assigned = topic_partitions(record.assigned)
        pending = topic_partitions(record.pending_revocation)
        if intersection(assigned, pending):
            raise ValueError(f"{record}: a partition is both assigned and pending revocation")
        if record.member_epoch < member.member_epoch:
            raise ValueError(f"{record}: member epoch goes backwards from {member.member_epoch}")
        if record.member_epoch > working.group.assignment_epoch:
            raise ValueError(f"{record}: member epoch is ahead of the assignment epoch "
                             f"{working.group.assignment_epoch}")
        held = union(assigned, pending)
        self._check_exists(held, record)
        for other in working.members.values():
            if other.member_id != record.member_id and intersection(held, other.holds):
                raise ValueError(f"{record}: partitions {to_field(intersection(held, other.holds))} "
                                 f"are held by member {other.member_id!r}")
        working.members[record.member_id] = replace(
            member, member_epoch=record.member_epoch, previous_member_epoch=record.previous_member_epoch,
            assigned=assigned, pending_revocation=pending, left_static=record.left_static,
        )

    def _set_target(self, record: GroupTargetAssignmentRecord) -> None:
        working = self._working(record.group_id, record)
        member = self._member(working, record.member_id, record)
        target = topic_partitions(record.target)
        self._check_exists(target, record)
        working.members[record.member_id] = replace(member, target=target)

    def _remove_member(self, record: RemoveGroupMemberRecord) -> None:
        working = self._working(record.group_id, record)
        self._member(working, record.member_id, record)
        del working.members[record.member_id]

    def _commit_offset(self, record: OffsetCommitRecord) -> None:
        known = self.partitions_of(record.topic)
        if known is None or record.partition not in known:
            raise ValueError(f"{record}: unknown partition {record.topic}-{record.partition}")
        groups = self._groups()
        if record.group_id not in groups:
            groups[record.group_id] = GroupImage(record.group_id, 0, 0, ())
        working = self._working(record.group_id, record)
        parts = dict(working.offsets.get(record.topic, {}))
        parts[record.partition] = CommittedOffset(record.committed_offset, record.committed_leader_epoch,
                                                  record.committed_metadata)
        working.offsets[record.topic] = MappingProxyType(parts)

    def _remove_group(self, record: RemoveGroupRecord) -> None:
        groups = self._groups()
        group = groups.get(record.group_id)
        if group is None:
            raise ValueError(f"{record}: unknown group")
        if group.members:
            raise ValueError(f"{record}: the group still has members")
        del groups[record.group_id]


def _without_topic(partitions: TopicPartitions, name: str) -> TopicPartitions:
    if name not in partitions:
        return partitions
    return topic_partitions((t, p) for t, p in partitions.items() if t != name)
