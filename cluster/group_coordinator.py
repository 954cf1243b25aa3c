"""The group coordinator's decisions (KIP-848 style): pure functions from the image to records.

Theory of operation
-------------------
The coordinator of every consumer group is the active controller (``cluster.group_service``
runs it). Each API call is decided here from the metadata image (``image.groups``, see
``kraft.groups``) and the parsed request, and returns a ``Decision``: the metadata records
to append (one append, one Raft command), the response body, and events worth logging.
Nothing here does I/O, reads a clock or draws a random number: a new member id comes in as
an argument, time as ``now_ms``. A decision that changes nothing returns no records, so a
plain heartbeat appends nothing.

Rebalancing, one heartbeat at a time::

    join / leave / expiry / subscription change / partition count change
        -> group epoch + 1, target assignment recomputed by ``cluster.group_assignor.assign``
           (sticky: the current targets are its input), assignment epoch = group epoch
    the heartbeating member moves toward its target (``reconcile``):
        partitions it holds but should not    -> pending revocation (left out of the
                                                 assignment it is sent; still its own)
        pending partitions its heartbeat no longer lists -> released
        once nothing is pending: every target partition that no other member holds or has
        pending is added, and its member epoch becomes the assignment epoch

So a partition is handed to a member only after its previous owner gave it up (or left or
expired): no partition ever has two owners, and members keep their other partitions
throughout (no stop-the-world). The image refuses any record that would break this.

Example: m1 holds t-0..t-3 at epoch 1, and m2 joins::

    m2 joins            group epoch 2, targets m1 {0, 1}, m2 {2, 3}; m2 has nothing to
                        revoke: epoch 2, assignment {} (2 and 3 are still m1's)
    m1 heartbeats       {2, 3} pending revocation: m1 is sent {0, 1}, still at epoch 1
    m1 lists {0, 1}     2 and 3 released: m1 moves to epoch 2
    m2 heartbeats       2 and 3 are free: m2 is sent {2, 3} at epoch 2

Subscriptions: a member sends ``subscribed_topic_names`` and/or ``subscribed_topic_regex``
when its subscription changes (both None: unchanged); whichever is sent replaces the whole
subscription. A regex is matched with ``re.fullmatch`` against the image's topic names; a
named topic that does not exist yet is simply not assigned until it does. The group keeps
``(topic, topic id, partition count)`` of every subscribed topic that its target was
computed from; when the image differs (a topic created, deleted, recreated or grown) the
next heartbeat rebalances.

Membership (member_epoch in the request): 0 joins (the coordinator names the member when
member_id is ""; a known member id rejoining gives up what it held); -1 leaves; -2 leaves
as a static member (instance_id) that will come back: its partitions stay reserved until
its session expires, and a new member joining with the same instance id takes its place,
partitions and epoch, without a rebalance of the others. An instance id held by a live
member is FENCED_INSTANCE_ID. A heartbeat with an epoch other than the member's is
FENCED_MEMBER_EPOCH, except the member's previous epoch when it holds nothing it was not
given (the answer that carried the new epoch was lost).

Sessions (``GroupSessions``) are soft state of the active controller: a member silent for
its session_timeout_ms, or holding partitions pending revocation for longer than its
rebalance_timeout_ms, is removed by ``expire_members`` (its partitions become free).

Offsets (``commit_offsets``): committed by the member at its current epoch
(STALE_MEMBER_EPOCH otherwise), or with member_id "" / epoch -1 by a group without members;
never backwards (OFFSET_OUT_OF_RANGE) except by ``admin_reset`` of a group without members
(NON_EMPTY_GROUP otherwise); every reset is an event the shell logs.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from cluster.group_assignor import MemberSpec, assign
from cluster.protocol import errors
from cluster.protocol.api import (
    JOIN_GROUP_MEMBER_EPOCH,
    LEAVE_GROUP_MEMBER_EPOCH,
    LEAVE_GROUP_STATIC_MEMBER_EPOCH,
    NO_COMMITTED_OFFSET,
    NO_MEMBER_EPOCH,
)
from kraft.groups import (
    EMPTY_TOPIC_PARTITIONS,
    CommittedOffset,
    GroupImage,
    GroupMemberImage,
    TopicPartitions,
    difference,
    intersection,
    to_field,
    topic_partitions,
    union,
)
from kraft.image import MetadataImage
from kraft.records import (
    GroupMemberAssignmentRecord,
    GroupMemberRecord,
    GroupRecord,
    GroupTargetAssignmentRecord,
    MetadataRecord,
    OffsetCommitRecord,
    RemoveGroupMemberRecord,
    RemoveGroupRecord,
)

Body = dict[str, Any]
Assignor = Callable[[Mapping[str, MemberSpec], Mapping[str, int]], Mapping[str, Mapping[str, frozenset[int]]]]

# Limits on what a request may carry (INVALID_REQUEST beyond them).
ID_CHARS_MAX = 1024  # group ids, member ids, instance ids, rack ids, client ids
REGEX_CHARS_MAX = 1024
SUBSCRIBED_TOPICS_MAX = 10_000
OFFSET_METADATA_CHARS_MAX = 4096
TIMEOUT_MS_MAX = 2**31 - 1
REGEX_CACHE_MAX = 256

NO_LEADER_EPOCH = -1


@dataclass(frozen=True)
class CoordinatorConfig:
    min_session_timeout_ms: int = 1000
    max_session_timeout_ms: int = 300000
    heartbeat_interval_ms: int = 500  # what members are told


@dataclass(frozen=True)
class HeartbeatRequest:
    """A ConsumerGroupHeartbeat body, parsed (``topic_partitions`` as ``owned``)."""

    group_id: str
    member_id: str
    member_epoch: int
    rebalance_timeout_ms: int
    session_timeout_ms: int
    instance_id: str | None = None
    rack_id: str | None = None
    client_id: str = ""
    subscribed_topic_names: tuple[str, ...] | None = None
    subscribed_topic_regex: str | None = None
    owned: TopicPartitions | None = None


@dataclass(frozen=True)
class PartitionCommit:
    index: int
    committed_offset: int
    committed_leader_epoch: int = NO_LEADER_EPOCH
    committed_metadata: str | None = None


@dataclass(frozen=True)
class OffsetCommitRequest:
    group_id: str
    member_id: str
    member_epoch: int
    topics: tuple[tuple[str, tuple[PartitionCommit, ...]], ...]
    admin_reset: bool = False


@dataclass
class Decision:
    records: list[MetadataRecord] = field(default_factory=list)
    response: Body = field(default_factory=dict)
    events: list[str] = field(default_factory=list)  # what the shell logs once appended


# -- helpers ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=REGEX_CACHE_MAX)
def _compile(regex: str) -> re.Pattern[str] | None:
    try:
        return re.compile(regex)
    except (re.error, RecursionError, OverflowError):
        return None


def resolve_subscription(image: MetadataImage, member: GroupMemberImage) -> frozenset[str]:
    """The existing topics a member subscribes to: its names, and the regex's full matches."""
    topics = {name for name in member.subscribed_topic_names if image.topic(name) is not None}
    if member.subscribed_topic_regex is not None:
        pattern = _compile(member.subscribed_topic_regex)
        if pattern is not None:
            topics.update(name for name in image.topics_by_name if pattern.fullmatch(name))
    return frozenset(topics)


def subscription_metadata(image: MetadataImage, group: GroupImage) -> tuple[tuple[str, str, int], ...]:
    """``(topic, topic id, partition count)`` of every existing topic a member subscribes to."""
    names: set[str] = set()
    regexes: set[str] = set()
    for member in group.members.values():
        names.update(member.subscribed_topic_names)
        if member.subscribed_topic_regex is not None:
            regexes.add(member.subscribed_topic_regex)
    for regex in sorted(regexes):
        pattern = _compile(regex)
        if pattern is not None:
            names.update(name for name in image.topics_by_name if pattern.fullmatch(name))
    entries = []
    for name in sorted(names):
        topic = image.topic(name)
        if topic is not None and topic.partitions:
            entries.append((name, topic.topic_id, len(topic.partitions)))
    return tuple(entries)


def topic_partitions_body(partitions: TopicPartitions) -> list[Body]:
    """The wire's ``topic_partitions``: sorted by topic, sorted partitions."""
    return [{"topic": topic, "partitions": list(parts)} for topic, parts in to_field(partitions)]


def _is_subset(small: TopicPartitions, big: TopicPartitions) -> bool:
    return all(parts <= big.get(topic, frozenset()) for topic, parts in small.items())


class _Working:
    """The image as the decision's records so far leave it (each record applied at once, so
    a decision can never emit records that do not apply)."""

    def __init__(self, image: MetadataImage, group_id: str) -> None:
        self.image = image
        self.group_id = group_id
        self.decision = Decision()

    @property
    def group(self) -> GroupImage | None:
        return self.image.groups.get(self.group_id)

    def emit(self, records: Sequence[MetadataRecord]) -> None:
        if records:
            self.image = self.image.apply(records)
            self.decision.records.extend(records)

    def event(self, text: str) -> None:
        self.decision.events.append(text)


# -- ConsumerGroupHeartbeat -------------------------------------------------------------------


def _heartbeat_error(request: HeartbeatRequest, name: str, message: str) -> Decision:
    return Decision(response={
        "error_code": errors.error_class(name).code, "error_message": message,
        "member_id": request.member_id or None, "member_epoch": request.member_epoch,
        "heartbeat_interval_ms": 0, "assignment": None,
    })


def _check_heartbeat(request: HeartbeatRequest, config: CoordinatorConfig) -> tuple[str, str] | None:
    """The first thing wrong with the request's own fields, as (error name, message)."""
    if not request.group_id:
        return "INVALID_GROUP_ID", "the group id is empty"
    for name in ("group_id", "member_id", "instance_id", "rack_id", "client_id"):
        value = getattr(request, name)
        if value is not None and len(value) > ID_CHARS_MAX:
            return "INVALID_REQUEST", f"{name} is longer than {ID_CHARS_MAX} characters"
    if request.member_epoch < LEAVE_GROUP_STATIC_MEMBER_EPOCH:
        return "INVALID_REQUEST", f"member_epoch {request.member_epoch} is not -2, -1, 0 or a member epoch"
    if request.member_epoch != JOIN_GROUP_MEMBER_EPOCH and not request.member_id:
        return "INVALID_REQUEST", f"member_epoch {request.member_epoch} needs the member's id"
    if request.instance_id == "":
        return "INVALID_REQUEST", "instance_id must be null or non-empty"
    if not 0 < request.rebalance_timeout_ms <= TIMEOUT_MS_MAX:
        return "INVALID_REQUEST", f"rebalance_timeout_ms must be positive, got {request.rebalance_timeout_ms}"
    if not config.min_session_timeout_ms <= request.session_timeout_ms <= config.max_session_timeout_ms:
        return "INVALID_SESSION_TIMEOUT", (
            f"session_timeout_ms {request.session_timeout_ms} is outside [{config.min_session_timeout_ms}, "
            f"{config.max_session_timeout_ms}] (group_min/max_session_timeout_ms)")
    names = request.subscribed_topic_names
    if names is not None:
        if len(names) > SUBSCRIBED_TOPICS_MAX:
            return "INVALID_REQUEST", f"more than {SUBSCRIBED_TOPICS_MAX} subscribed topics"
        if any(not name or len(name) > ID_CHARS_MAX for name in names):
            return "INVALID_REQUEST", "a subscribed topic name is empty or too long"
    regex = request.subscribed_topic_regex
    if regex:
        if len(regex) > REGEX_CHARS_MAX:
            return "INVALID_REQUEST", f"subscribed_topic_regex is longer than {REGEX_CHARS_MAX} characters"
        if _compile(regex) is None:
            return "INVALID_REQUEST", f"subscribed_topic_regex {regex!r} is not a valid regular expression"
    if request.member_epoch == JOIN_GROUP_MEMBER_EPOCH and names is None and regex is None:
        return "INVALID_REQUEST", "a joining member must send its subscription"
    return None


def heartbeat(image: MetadataImage, request: HeartbeatRequest, config: CoordinatorConfig,
              new_member_id: str, assignor: Assignor = assign) -> Decision:
    """Decide one ConsumerGroupHeartbeat (see the module docstring)."""
    problem = _check_heartbeat(request, config)
    if problem is not None:
        return _heartbeat_error(request, *problem)
    work = _Working(image, request.group_id)
    if request.member_epoch == LEAVE_GROUP_MEMBER_EPOCH:
        return _leave(work, request, config, assignor)
    if request.member_epoch == LEAVE_GROUP_STATIC_MEMBER_EPOCH:
        return _leave_static(work, request, config)
    if request.member_epoch == JOIN_GROUP_MEMBER_EPOCH:
        joined = _join(work, request, new_member_id)
        if isinstance(joined, Decision):
            return joined
        member_id, membership_changed = joined
    else:
        refused = _check_member(work.group, request)
        if refused is not None:
            return refused
        member_id, membership_changed = request.member_id, False
    return _heartbeat_member(work, request, config, member_id, membership_changed, assignor)


def _join(work: _Working, request: HeartbeatRequest, new_member_id: str) -> Decision | tuple[str, bool]:
    """Set up the joining member; (member id, whether the membership changed)."""
    group = work.group
    member_id = request.member_id or new_member_id
    existing = group.members.get(member_id) if group is not None else None
    if request.instance_id is not None and group is not None:
        holder = group.member_with_instance(request.instance_id)
        if holder is not None and holder.member_id != member_id:
            if not holder.left_static or existing is not None:
                return _heartbeat_error(request, "FENCED_INSTANCE_ID",
                                        f"instance id {request.instance_id!r} is held by member {holder.member_id}")
            _take_over(work, holder, member_id)
            return member_id, False
    if existing is not None:
        # A known member joins again: it has given up what it held (or it is the static
        # member coming back under its own id, which keeps its partitions).
        keep = existing.left_static and existing.instance_id == request.instance_id
        if existing.left_static or (not keep and existing.holds):
            work.emit([GroupMemberAssignmentRecord(
                request.group_id, member_id, existing.member_epoch, existing.previous_member_epoch,
                to_field(existing.assigned) if keep else (), to_field(existing.pending_revocation) if keep else (),
                False)])
        work.event(f"member {member_id} of group {request.group_id} joined again")
        return member_id, False
    if group is None:
        work.emit([GroupRecord(request.group_id, 0, 0, ())])
    work.emit([GroupMemberRecord(
        request.group_id, member_id, request.instance_id, request.rack_id, request.client_id,
        tuple(sorted(set(request.subscribed_topic_names or ()))), request.subscribed_topic_regex or None,
        request.rebalance_timeout_ms, request.session_timeout_ms)])
    work.event(f"member {member_id} (client {request.client_id!r}, instance {request.instance_id}) "
               f"joined group {request.group_id}")
    return member_id, True


def _take_over(work: _Working, old: GroupMemberImage, member_id: str) -> None:
    """A static member comes back under a new member id: it inherits the old one's state."""
    group_id = work.group_id
    work.emit([
        RemoveGroupMemberRecord(group_id, old.member_id),
        GroupMemberRecord(group_id, member_id, old.instance_id, old.rack_id, old.client_id,
                          old.subscribed_topic_names, old.subscribed_topic_regex, old.rebalance_timeout_ms,
                          old.session_timeout_ms),
        GroupTargetAssignmentRecord(group_id, member_id, to_field(old.target)),
        GroupMemberAssignmentRecord(group_id, member_id, old.member_epoch, old.previous_member_epoch,
                                    to_field(old.assigned), to_field(old.pending_revocation), False),
    ])
    work.event(f"static member {old.instance_id} of group {group_id} came back as member {member_id} "
               f"(was {old.member_id}), keeping its partitions")


def _check_member(group: GroupImage | None, request: HeartbeatRequest) -> Decision | None:
    member = group.members.get(request.member_id) if group is not None else None
    if member is None or member.left_static:
        return _heartbeat_error(request, "UNKNOWN_MEMBER_ID",
                                f"member {request.member_id} is not in group {request.group_id}")
    if request.instance_id is not None and request.instance_id != member.instance_id:
        return _heartbeat_error(request, "FENCED_INSTANCE_ID",
                                f"member {request.member_id} is not instance {request.instance_id!r}")
    epoch = request.member_epoch
    if epoch == member.member_epoch:
        return None
    if epoch < member.member_epoch and epoch == member.previous_member_epoch and (
            request.owned is None or _is_subset(request.owned, member.assigned)):
        return None  # the answer that moved it to its current epoch was lost
    return _heartbeat_error(request, "FENCED_MEMBER_EPOCH",
                            f"member {request.member_id} is at epoch {member.member_epoch}, not {epoch}")


# (instance_id, rack_id, client_id, subscribed_topic_names, subscribed_topic_regex,
#  rebalance_timeout_ms, session_timeout_ms): the fields of a GroupMemberRecord after its ids.
MemberMetadata = tuple[str | None, str | None, str, tuple[str, ...], str | None, int, int]


def _metadata_of(member: GroupMemberImage) -> MemberMetadata:
    return (member.instance_id, member.rack_id, member.client_id, member.subscribed_topic_names,
            member.subscribed_topic_regex, member.rebalance_timeout_ms, member.session_timeout_ms)


def _wanted_metadata(member: GroupMemberImage, request: HeartbeatRequest) -> MemberMetadata:
    """The member's metadata with what this heartbeat changed."""
    names, regex = member.subscribed_topic_names, member.subscribed_topic_regex
    if request.subscribed_topic_names is not None or request.subscribed_topic_regex is not None:
        names = tuple(sorted(set(request.subscribed_topic_names or ())))
        regex = request.subscribed_topic_regex or None
    return (member.instance_id, request.rack_id if request.rack_id is not None else member.rack_id,
            request.client_id, names, regex, request.rebalance_timeout_ms, request.session_timeout_ms)


def _heartbeat_member(work: _Working, request: HeartbeatRequest, config: CoordinatorConfig, member_id: str,
                      membership_changed: bool, assignor: Assignor) -> Decision:
    group_id = request.group_id
    group = work.group
    assert group is not None
    before = group.members[member_id]
    wanted, current = _wanted_metadata(before, request), _metadata_of(before)
    rebalance = membership_changed
    if wanted != current:
        work.emit([GroupMemberRecord(group_id, member_id, *wanted)])
        if wanted[3:5] != current[3:5]:
            rebalance = True
            work.event(f"member {member_id} of group {group_id} subscribes to {list(wanted[3])} "
                       f"/ regex {wanted[4]!r}")
    _rebalance_if_needed(work, rebalance, assignor)
    group = work.group
    assert group is not None
    member = group.members[member_id]
    update = reconcile(group, member, request.owned)
    if update is not None:
        work.emit([update])
        group = work.group
        assert group is not None
        member = group.members[member_id]
    send_assignment = (
        request.member_epoch == JOIN_GROUP_MEMBER_EPOCH
        or request.member_epoch != member.member_epoch
        or member.assigned != before.assigned
        or (request.owned is not None and request.owned != member.assigned)
    )
    work.decision.response = {
        "error_code": errors.NONE, "error_message": None, "member_id": member_id,
        "member_epoch": member.member_epoch, "heartbeat_interval_ms": config.heartbeat_interval_ms,
        "assignment": {"topic_partitions": topic_partitions_body(member.assigned)} if send_assignment else None,
    }
    return work.decision


def _rebalance_if_needed(work: _Working, membership_changed: bool, assignor: Assignor) -> None:
    """Bump the group epoch and compute a new target when the members, their subscriptions
    or the subscribed topics' partitions changed."""
    group = work.group
    if group is None or not group.members:
        return
    metadata = subscription_metadata(work.image, group)
    if not membership_changed and metadata == group.subscription_metadata:
        return
    epoch = group.group_epoch + 1
    specs = {
        member_id: MemberSpec(topics=resolve_subscription(work.image, member), owned=member.target,
                              instance_id=member.instance_id)
        for member_id, member in group.members.items()
    }
    targets = assignor(specs, {topic: count for topic, _, count in metadata})
    records: list[MetadataRecord] = [GroupRecord(group.group_id, epoch, epoch, metadata)]
    for member_id in sorted(group.members):
        target = topic_partitions((t, p) for t, p in targets.get(member_id, {}).items())
        if target != group.members[member_id].target:
            records.append(GroupTargetAssignmentRecord(group.group_id, member_id, to_field(target)))
    work.emit(records)
    work.event(f"group {group.group_id} rebalanced at epoch {epoch}: {len(group.members)} members, "
               f"{sum(count for _, _, count in metadata)} partitions, {len(records) - 1} targets changed")


def reconcile(group: GroupImage, member: GroupMemberImage,
              owned: TopicPartitions | None) -> GroupMemberAssignmentRecord | None:
    """The member's next current assignment on its way to its target, or None if unchanged.

    ``owned`` is what the member says it holds (None: unchanged since its last heartbeat).
    """
    target = member.target
    pending = member.pending_revocation
    if owned is not None:
        pending = intersection(pending, owned)  # what it no longer lists is released
    back = intersection(pending, target)  # still its own, and wanted again
    assigned = union(member.assigned, back)
    pending = difference(pending, back)
    revoking = difference(assigned, target)
    assigned = difference(assigned, revoking)
    pending = union(pending, revoking)
    epoch, previous = member.member_epoch, member.previous_member_epoch
    if not pending:
        held_by_others = union(*(m.holds for m in group.members.values() if m.member_id != member.member_id))
        assigned = union(assigned, difference(target, held_by_others))
        if epoch != group.assignment_epoch:
            epoch, previous = group.assignment_epoch, epoch
    if (epoch, previous, assigned, pending) == (
            member.member_epoch, member.previous_member_epoch, member.assigned, member.pending_revocation):
        return None
    return GroupMemberAssignmentRecord(group.group_id, member.member_id, epoch, previous, to_field(assigned),
                                       to_field(pending), member.left_static)


def _leave(work: _Working, request: HeartbeatRequest, config: CoordinatorConfig, assignor: Assignor) -> Decision:
    group = work.group
    member = group.members.get(request.member_id) if group is not None else None
    if member is None:
        return _heartbeat_error(request, "UNKNOWN_MEMBER_ID",
                                f"member {request.member_id} is not in group {request.group_id}")
    _remove_members(work, [request.member_id], assignor)
    work.event(f"member {request.member_id} left group {request.group_id}")
    work.decision.response = {
        "error_code": errors.NONE, "error_message": None, "member_id": request.member_id,
        "member_epoch": LEAVE_GROUP_MEMBER_EPOCH, "heartbeat_interval_ms": config.heartbeat_interval_ms,
        "assignment": None,
    }
    return work.decision


def _leave_static(work: _Working, request: HeartbeatRequest, config: CoordinatorConfig) -> Decision:
    group = work.group
    member = group.members.get(request.member_id) if group is not None else None
    if member is None:
        return _heartbeat_error(request, "UNKNOWN_MEMBER_ID",
                                f"member {request.member_id} is not in group {request.group_id}")
    if member.instance_id is None:
        return _heartbeat_error(request, "INVALID_REQUEST",
                                f"member {request.member_id} has no instance id: it leaves with epoch -1")
    if not member.left_static:
        work.emit([GroupMemberAssignmentRecord(
            request.group_id, member.member_id, member.member_epoch, member.previous_member_epoch,
            to_field(member.assigned), to_field(member.pending_revocation), True)])
        work.event(f"static member {member.instance_id} ({member.member_id}) left group {request.group_id}; "
                   f"its partitions stay reserved for {member.session_timeout_ms} ms")
    work.decision.response = {
        "error_code": errors.NONE, "error_message": None, "member_id": request.member_id,
        "member_epoch": LEAVE_GROUP_STATIC_MEMBER_EPOCH, "heartbeat_interval_ms": config.heartbeat_interval_ms,
        "assignment": None,
    }
    return work.decision


def _remove_members(work: _Working, member_ids: Iterable[str], assignor: Assignor) -> list[str]:
    """Remove the members (those still in the group), then rebalance the others, or delete
    the group when nobody and no offset is left. Returns the ids removed."""
    group = work.group
    if group is None:
        return []
    removed = [m for m in member_ids if m in group.members]
    if not removed:
        return []
    work.emit([RemoveGroupMemberRecord(group.group_id, m) for m in removed])
    group = work.group
    assert group is not None
    if group.members:
        _rebalance_if_needed(work, True, assignor)
    elif not group.offsets:
        work.emit([RemoveGroupRecord(group.group_id)])
    return removed


def expire_members(image: MetadataImage, expired: Sequence[tuple[str, str, str]],
                   assignor: Assignor = assign) -> Decision:
    """Remove members whose session or revocation time ran out: ``(group, member, why)``."""
    by_group: dict[str, list[tuple[str, str]]] = {}
    for group_id, member_id, why in expired:
        by_group.setdefault(group_id, []).append((member_id, why))
    decision = Decision()
    for group_id in sorted(by_group):
        work = _Working(image, group_id)
        reasons = dict(by_group[group_id])
        for member_id in _remove_members(work, list(reasons), assignor):
            work.event(f"member {member_id} was removed from group {group_id}: {reasons[member_id]}")
        image = work.image
        decision.records.extend(work.decision.records)
        decision.events.extend(work.decision.events)
    return decision


# -- sessions: soft state of the active controller ---------------------------------------------


class GroupSessions:
    """When each member was last heard from, what it last said it owns, and since when it
    holds partitions it must revoke. Not replicated: a new active controller calls ``reset``
    and every member of every group gets a fresh session. Pure: time comes in as ``now_ms``.

    A heartbeat's ``topic_partitions`` is None when unchanged since the member's last
    report; ``owned`` turns that back into the last report, so a member that says nothing
    new still releases partitions it was told to revoke and never owned. After a failover
    the last reports are unknown until each member sends its set again.

    ``expired`` names the members to remove: silent for longer than their
    session_timeout_ms (a static member that left is silent from its leave on), or with
    partitions pending revocation for longer than their rebalance_timeout_ms.
    """

    def __init__(self) -> None:
        self._last_heard_ms: dict[tuple[str, str], int] = {}
        self._revoking_since_ms: dict[tuple[str, str], int] = {}
        self._reported: dict[tuple[str, str], TopicPartitions] = {}

    def reset(self, groups: Mapping[str, GroupImage], now_ms: int) -> None:
        self._last_heard_ms = {
            (group_id, member_id): now_ms for group_id, group in groups.items() for member_id in group.members
        }
        self._revoking_since_ms = {}
        self._reported = {}

    def heard(self, group_id: str, member_id: str, now_ms: int, owned: TopicPartitions | None = None) -> None:
        """A heartbeat of the member was answered; ``owned``: what it reported, if anything."""
        key = (group_id, member_id)
        self._last_heard_ms[key] = max(now_ms, self._last_heard_ms.get(key, now_ms))
        if owned is not None:
            self._reported[key] = owned

    def owned(self, group_id: str, member_id: str, reported: TopicPartitions | None) -> TopicPartitions | None:
        """What the member owns: ``reported``, or its last report when that is None."""
        return reported if reported is not None else self._reported.get((group_id, member_id))

    def forget(self, group_id: str, member_id: str) -> None:
        self._last_heard_ms.pop((group_id, member_id), None)
        self._revoking_since_ms.pop((group_id, member_id), None)
        self._reported.pop((group_id, member_id), None)

    def expired(self, groups: Mapping[str, GroupImage], now_ms: int) -> list[tuple[str, str, str]]:
        found: list[tuple[str, str, str]] = []
        alive: set[tuple[str, str]] = set()
        for group_id in sorted(groups):
            group = groups[group_id]
            for member_id in sorted(group.members):
                member = group.members[member_id]
                key = (group_id, member_id)
                alive.add(key)
                silent_ms = now_ms - self._last_heard_ms.setdefault(key, now_ms)
                if silent_ms > member.session_timeout_ms:
                    found.append((group_id, member_id, f"no heartbeat for {silent_ms} ms"))
                    continue
                if member.pending_revocation and not member.left_static:
                    revoking_ms = now_ms - self._revoking_since_ms.setdefault(key, now_ms)
                    if revoking_ms > member.rebalance_timeout_ms:
                        found.append((group_id, member_id, f"partitions not revoked within {revoking_ms} ms"))
                else:
                    self._revoking_since_ms.pop(key, None)
        for key in [k for k in self._last_heard_ms if k not in alive]:
            self.forget(*key)
        return found


# -- OffsetCommit / OffsetFetch ---------------------------------------------------------------


def commit_offsets(image: MetadataImage, request: OffsetCommitRequest) -> Decision:
    """Decide one OffsetCommit: all its records form one append."""
    group = image.groups.get(request.group_id)
    members = group.members if group is not None else {}
    refusal: tuple[str, str] | None = None
    if not request.group_id:
        refusal = "INVALID_GROUP_ID", "the group id is empty"
    elif request.admin_reset:
        if members:
            refusal = "NON_EMPTY_GROUP", (f"group {request.group_id} has {len(members)} members: "
                                          "offsets are reset only in an empty group")
    elif not request.member_id and request.member_epoch == NO_MEMBER_EPOCH:
        if members:
            refusal = "UNKNOWN_MEMBER_ID", (f"group {request.group_id} has members: commit as one of them")
    else:
        member = members.get(request.member_id)
        if member is None or member.left_static:
            refusal = "UNKNOWN_MEMBER_ID", f"member {request.member_id} is not in group {request.group_id}"
        elif request.member_epoch != member.member_epoch:
            refusal = "STALE_MEMBER_EPOCH", (f"member {request.member_id} is at epoch {member.member_epoch}, "
                                             f"not {request.member_epoch}")
    decision = Decision()
    committed: dict[tuple[str, int], CommittedOffset] = {}
    topics_body = []
    for name, partitions in request.topics:
        entries = []
        topic = image.topic(name)
        for commit in partitions:
            problem = refusal
            key = (name, commit.index)
            current = committed.get(key) or (group.committed(name, commit.index) if group is not None else None)
            if problem is None:
                problem = _check_commit(topic is not None and commit.index in topic.partitions, name, commit,
                                        current, request.admin_reset)
            if problem is None:
                new = CommittedOffset(commit.committed_offset, commit.committed_leader_epoch,
                                      commit.committed_metadata)
                if new != current:
                    committed[key] = new
                    decision.records.append(OffsetCommitRecord(
                        request.group_id, name, commit.index, commit.committed_offset,
                        commit.committed_leader_epoch, commit.committed_metadata))
                    if request.admin_reset:
                        old = current.committed_offset if current is not None else NO_COMMITTED_OFFSET
                        decision.events.append(f"group {request.group_id} offset of {name}-{commit.index} reset "
                                               f"{old} -> {commit.committed_offset}")
            entries.append({"index": commit.index,
                            "error_code": errors.NONE if problem is None else errors.error_class(problem[0]).code,
                            "error_message": None if problem is None else problem[1]})
        topics_body.append({"name": name, "partitions": entries})
    decision.response = {"topics": topics_body}
    return decision


def _check_commit(exists: bool, name: str, commit: PartitionCommit, current: CommittedOffset | None,
                  admin_reset: bool) -> tuple[str, str] | None:
    if not exists:
        return "UNKNOWN_TOPIC_OR_PARTITION", f"unknown partition {name}-{commit.index}"
    if commit.committed_offset < 0:
        return "INVALID_REQUEST", f"committed_offset {commit.committed_offset} is negative"
    if commit.committed_leader_epoch < NO_LEADER_EPOCH:
        return "INVALID_REQUEST", f"committed_leader_epoch {commit.committed_leader_epoch} is below -1"
    if commit.committed_metadata is not None and len(commit.committed_metadata) > OFFSET_METADATA_CHARS_MAX:
        return "INVALID_REQUEST", f"committed_metadata is longer than {OFFSET_METADATA_CHARS_MAX} characters"
    if current is not None and commit.committed_offset < current.committed_offset and not admin_reset:
        return "OFFSET_OUT_OF_RANGE", (f"offset {commit.committed_offset} of {name}-{commit.index} is below the "
                                       f"committed {current.committed_offset}: offsets never go backwards")
    return None


def fetch_offsets(image: MetadataImage, group_id: str,
                  topics: Sequence[tuple[str, Sequence[int]]] | None) -> Body:
    """An OffsetFetch answer: -1 for partitions without a committed offset."""
    group = image.groups.get(group_id)
    if topics is None:
        offsets = group.offsets if group is not None else {}
        topics = [(name, sorted(offsets[name])) for name in sorted(offsets)]
    body = []
    for name, partitions in topics:
        entries = []
        for index in partitions:
            committed = group.committed(name, index) if group is not None else None
            entries.append({
                "index": index,
                "committed_offset": committed.committed_offset if committed else NO_COMMITTED_OFFSET,
                "committed_leader_epoch": committed.committed_leader_epoch if committed else NO_LEADER_EPOCH,
                "committed_metadata": committed.committed_metadata if committed else None,
                "error_code": errors.NONE,
            })
        body.append({"name": name, "partitions": entries})
    return {"error_code": errors.NONE, "error_message": None, "topics": body}


# -- ListGroups / ConsumerGroupDescribe / DeleteGroups ----------------------------------------


def list_groups(image: MetadataImage) -> Body:
    groups = [
        {"group_id": group.group_id, "group_state": group.state, "member_count": len(group.members)}
        for _, group in sorted(image.groups.items()) if group.exists
    ]
    return {"error_code": errors.NONE, "error_message": None, "groups": groups}


def describe_group(image: MetadataImage, group_id: str) -> Body:
    group = image.groups.get(group_id)
    if group is None or not group.exists:
        return {"error_code": errors.GROUP_ID_NOT_FOUND, "error_message": f"group {group_id!r} does not exist",
                "group_id": group_id, "group_state": "empty", "group_epoch": -1, "assignment_epoch": -1,
                "members": []}
    members = []
    for _, member in sorted(group.members.items()):
        members.append({
            "member_id": member.member_id, "instance_id": member.instance_id, "client_id": member.client_id,
            "member_epoch": LEAVE_GROUP_STATIC_MEMBER_EPOCH if member.left_static else member.member_epoch,
            "subscribed_topic_names": list(member.subscribed_topic_names),
            "subscribed_topic_regex": member.subscribed_topic_regex,
            "assignment": topic_partitions_body(member.assigned),
            "target_assignment": topic_partitions_body(member.target),
        })
    return {"error_code": errors.NONE, "error_message": None, "group_id": group_id, "group_state": group.state,
            "group_epoch": group.group_epoch, "assignment_epoch": group.assignment_epoch, "members": members}


def delete_groups(image: MetadataImage, group_ids: Sequence[str]) -> Decision:
    decision = Decision()
    results = []
    for group_id in group_ids:
        group = image.groups.get(group_id)
        if group is None or not group.exists:
            code, message = errors.GROUP_ID_NOT_FOUND, f"group {group_id!r} does not exist"
        elif group.members:
            code, message = errors.NON_EMPTY_GROUP, f"group {group_id!r} has {len(group.members)} members"
        else:
            record = RemoveGroupRecord(group_id)
            image = image.apply([record])
            decision.records.append(record)
            decision.events.append(f"group {group_id} deleted with its committed offsets")
            code, message = errors.NONE, None
        results.append({"group_id": group_id, "error_code": code, "error_message": message})
    decision.response = {"results": results}
    return decision


__all__ = [
    "EMPTY_TOPIC_PARTITIONS", "CoordinatorConfig", "Decision", "GroupSessions", "HeartbeatRequest",
    "OffsetCommitRequest", "PartitionCommit", "commit_offsets", "delete_groups", "describe_group",
    "expire_members", "fetch_offsets", "heartbeat", "list_groups", "reconcile", "resolve_subscription",
    "subscription_metadata",
]
