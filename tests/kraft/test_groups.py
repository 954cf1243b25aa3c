"""Consumer groups in the metadata: the group records, their apply, and snapshots of them."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest

from kraft.groups import GROUP_STATE_EMPTY, GROUP_STATE_RECONCILING, GROUP_STATE_STABLE, GroupImage
from kraft.image import MetadataImage
from kraft.raft_snapshot import (
    GROUP_FIELDS,
    MEMBER_FIELDS,
    OFFSET_FIELDS,
    Snapshot,
    decode_snapshot,
    encode_snapshot,
    image_from_plain,
    image_to_plain,
)
from kraft.records import (
    KRAFT_RECORD_TYPES,
    RECORD_TYPES,
    GroupMemberAssignmentRecord,
    GroupMemberRecord,
    GroupRecord,
    GroupTargetAssignmentRecord,
    OffsetCommitRecord,
    PartitionRecord,
    RemoveGroupMemberRecord,
    RemoveGroupRecord,
    RemoveTopicRecord,
    TopicRecord,
    decode_record,
    encode_record,
)
from kraft.groups import CommittedOffset, GroupMemberImage

SAMPLES = [
    GroupRecord("g", 3, 2, (("t", "id-t", 4),)),
    GroupRecord("g", 0, 0, ()),
    GroupMemberRecord("g", "m1", "instance-1", "rack-a", "client", ("b", "a"), "or.*", 60000, 10000),
    GroupMemberRecord("g", "m2", None, None, "", (), None, 1, 1),
    GroupMemberAssignmentRecord("g", "m1", 3, 2, (("t", (2, 0)),), (("u", (1,)),), False),
    GroupMemberAssignmentRecord("g", "m1", 0, -1, (), (), True),
    GroupTargetAssignmentRecord("g", "m1", (("t", (0, 1)), ("a", (3,)))),
    RemoveGroupMemberRecord("g", "m1"),
    OffsetCommitRecord("g", "t", 2, 42, 1, "meta"),
    OffsetCommitRecord("g", "t", 0, 0, -1, None),
    RemoveGroupRecord("g"),
]


def topics(**counts: int) -> list:
    records: list = []
    for name, count in counts.items():
        records.append(TopicRecord(f"id-{name}", name))
        records.extend(PartitionRecord(f"id-{name}", i, (1,), (1,), 1, 0, 0) for i in range(count))
    return records


def member(group: str, member_id: str, instance_id: str | None = None, names: tuple[str, ...] = ("t",)):
    return GroupMemberRecord(group, member_id, instance_id, None, "c", names, None, 60000, 10000)


BASE = MetadataImage.EMPTY.apply(topics(t=4, u=2))


def group_image() -> MetadataImage:
    """Group g: m1 holds t-0, t-1 (t-2 pending revocation), m2 holds nothing yet; offsets."""
    return BASE.apply([
        GroupRecord("g", 2, 2, (("t", "id-t", 4),)),
        member("g", "m1", "i-1"), member("g", "m2"),
        GroupTargetAssignmentRecord("g", "m1", (("t", (0, 1)),)),
        GroupTargetAssignmentRecord("g", "m2", (("t", (2, 3)),)),
        GroupMemberAssignmentRecord("g", "m1", 1, 0, (("t", (0, 1)),), (("t", (2,)),), False),
        GroupMemberAssignmentRecord("g", "m2", 2, 0, (("t", (3,)),), (), False),
        OffsetCommitRecord("g", "t", 0, 17, 0, "m"),
        OffsetCommitRecord("g", "u", 1, 5, -1, None),
    ])


# -- records ------------------------------------------------------------------------------


@pytest.mark.parametrize("record", SAMPLES, ids=lambda r: type(r).__name__)
def test_group_records_round_trip(record):
    decoded = decode_record(encode_record(record))
    assert decoded == record and type(decoded) is type(record)
    assert hash(decoded) == hash(record)


def test_every_group_record_type_is_sampled_and_outside_kafkas_numbers():
    assert {type(r) for r in SAMPLES} == set(KRAFT_RECORD_TYPES.values())
    assert min(KRAFT_RECORD_TYPES) >= 1000
    assert not set(KRAFT_RECORD_TYPES) & set(RECORD_TYPES)


def test_topic_partitions_are_stored_in_canonical_order():
    record = GroupTargetAssignmentRecord("g", "m", [["b", [3, 1]], ["a", [0]]])
    assert record.target == (("a", (0,)), ("b", (1, 3)))
    assert msgpack.unpackb(encode_record(record)) == [1003, 0, "g", "m", [["a", [0]], ["b", [1, 3]]]]
    assert GroupMemberRecord("g", "m", None, None, "", ["z", "a"], None, 1, 1).subscribed_topic_names == ("a", "z")


@pytest.mark.parametrize("make", [
    lambda: GroupRecord("", 1, 1, ()),
    lambda: GroupRecord("g", 1, 2, ()),  # assignment epoch ahead of the group epoch
    lambda: GroupRecord("g", -1, 0, ()),
    lambda: GroupRecord("g", 1, 1, (("t", "id", 0),)),  # a topic without partitions
    lambda: GroupRecord("g", 1, 1, (("t", "id", 1), ("t", "id", 2))),
    lambda: GroupMemberRecord("g", "", None, None, "", (), None, 1, 1),
    lambda: GroupMemberRecord("g", "m", "", None, "", (), None, 1, 1),
    lambda: GroupMemberRecord("g", "m", None, None, "", ("a", "a"), None, 1, 1),
    lambda: GroupMemberRecord("g", "m", None, None, "", (), None, 0, 1),
    lambda: GroupMemberAssignmentRecord("g", "m", -1, -1, (), (), False),
    lambda: GroupMemberAssignmentRecord("g", "m", 1, 0, (("t", (1, 1)),), (), False),
    lambda: GroupMemberAssignmentRecord("g", "m", 1, 0, (("t", (-1,)),), (), False),
    lambda: GroupMemberAssignmentRecord("g", "m", 1, 0, (("t", ()),), (), False),
    lambda: GroupMemberAssignmentRecord("g", "m", 1, 0, (("t", (0,)), ("t", (1,))), (), False),
    lambda: GroupMemberAssignmentRecord("g", "m", 1, 0, (("t", (True,)),), (), False),
    lambda: GroupMemberAssignmentRecord("g", "m", 1, 0, (), (), 1),
    lambda: GroupTargetAssignmentRecord("g", "m", [("t", 0)]),
    lambda: OffsetCommitRecord("g", "t", 0, -1, 0, None),
    lambda: OffsetCommitRecord("g", "t", 0, 1, -2, None),
    lambda: RemoveGroupRecord(""),
])
def test_bad_group_records_are_refused(make):
    with pytest.raises(ValueError):
        make()


def test_decoding_checks_group_record_fields_and_versions():
    with pytest.raises(ValueError):
        decode_record(msgpack.packb([1004, 0, "g"]))  # a field missing
    with pytest.raises(ValueError):
        decode_record(msgpack.packb([1004, 1, "g", "m"]))  # an unknown version
    with pytest.raises(ValueError):
        decode_record(msgpack.packb([1005, 0, "g", "t", 0, "1", 0, None]))
    with pytest.raises(ValueError):
        decode_record(msgpack.packb([1999, 0]))


# -- apply --------------------------------------------------------------------------------


def test_apply_builds_members_assignments_and_offsets():
    image = group_image()
    group = image.groups["g"]
    m1, m2 = group.members["m1"], group.members["m2"]
    assert (group.group_epoch, group.assignment_epoch) == (2, 2)
    assert m1.assigned == {"t": frozenset({0, 1})} and m1.pending_revocation == {"t": frozenset({2})}
    assert m1.holds == {"t": frozenset({0, 1, 2})} and m1.instance_id == "i-1"
    assert m2.target == {"t": frozenset({2, 3})} and m2.member_epoch == 2 and m2.previous_member_epoch == 0
    assert group.committed("t", 0) == CommittedOffset(17, 0, "m")
    assert group.committed("t", 1) is None
    assert group.state == GROUP_STATE_RECONCILING and group.exists
    assert BASE.groups == {}  # the old image is unchanged


def test_a_member_record_keeps_the_assignment_and_a_new_member_starts_empty():
    image = group_image().apply([
        GroupMemberRecord("g", "m1", "i-1", "rack", "c2", ("t", "u"), None, 1000, 2000),
        member("g", "m3"),
    ])
    m1, m3 = image.groups["g"].members["m1"], image.groups["g"].members["m3"]
    assert m1.subscribed_topic_names == ("t", "u") and m1.client_id == "c2" and m1.rack_id == "rack"
    assert m1.assigned == {"t": frozenset({0, 1})} and m1.member_epoch == 1
    assert (m3.member_epoch, m3.assigned, m3.target, m3.left_static) == (0, {}, {}, False)


@pytest.mark.parametrize("records", [
    # t-3 is m2's: no partition may have two owners, assigned or pending revocation
    [GroupMemberAssignmentRecord("g", "m1", 2, 1, (("t", (0, 1, 3)),), (), False)],
    [GroupMemberAssignmentRecord("g", "m2", 2, 0, (("t", (2, 3)),), (), False)],
    [GroupMemberAssignmentRecord("g", "m1", 1, 0, (("t", (0,)),), (("t", (0,)),), False)],
    [GroupMemberAssignmentRecord("g", "m2", 1, 0, (("t", (3,)),), (), False)],  # epoch backwards
    [GroupMemberAssignmentRecord("g", "m2", 3, 2, (("t", (3,)),), (), False)],  # ahead of assignment
    [GroupMemberAssignmentRecord("g", "nobody", 1, 0, (), (), False)],
    [GroupTargetAssignmentRecord("g", "m1", (("t", (9,)),))],  # no such partition
    [GroupTargetAssignmentRecord("g", "m1", (("nope", (0,)),))],
    [GroupTargetAssignmentRecord("other", "m1", ())],
    [GroupRecord("g", 1, 1, ())],  # epochs backwards
    [GroupMemberRecord("g", "m2", "i-1", None, "c", ("t",), None, 1, 1)],  # instance id taken
    [RemoveGroupMemberRecord("g", "m9")],
    [RemoveGroupRecord("g")],  # it has members
    [RemoveGroupRecord("nope")],
    [OffsetCommitRecord("g", "t", 4, 1, 0, None)],
    [OffsetCommitRecord("g", "gone", 0, 1, 0, None)],
])
def test_records_that_do_not_fit_are_refused_and_change_nothing(records):
    image = group_image()
    with pytest.raises(ValueError):
        image.apply([OffsetCommitRecord("g", "t", 1, 3, 0, None), *records])
    assert image.groups["g"].committed("t", 1) is None


def test_a_released_partition_can_go_to_another_member():
    image = group_image().apply([
        GroupMemberAssignmentRecord("g", "m1", 2, 1, (("t", (0, 1)),), (), False),
        GroupMemberAssignmentRecord("g", "m2", 2, 0, (("t", (2, 3)),), (), False),
    ])
    assert image.groups["g"].state == GROUP_STATE_STABLE


def test_offsets_of_a_new_group_create_it_and_remove_group_deletes_them():
    image = BASE.apply([OffsetCommitRecord("solo", "u", 0, 9, 0, None)])
    solo = image.groups["solo"]
    assert solo.exists and not solo.members and solo.state == GROUP_STATE_EMPTY
    assert (solo.group_epoch, solo.assignment_epoch) == (0, 0)
    assert "solo" not in image.apply([RemoveGroupRecord("solo")]).groups


def test_removing_a_member_frees_its_partitions_and_keeps_the_group():
    image = group_image().apply([RemoveGroupMemberRecord("g", "m1"), RemoveGroupMemberRecord("g", "m2")])
    group = image.groups["g"]
    assert not group.members and group.exists  # its offsets keep it
    image = image.apply([GroupRecord("g", 3, 3, ()), member("g", "m4"),
                         GroupMemberAssignmentRecord("g", "m4", 3, 0, (("t", (0, 1, 2, 3)),), (), False)])
    assert image.groups["g"].members["m4"].assigned == {"t": frozenset(range(4))}


def test_removing_a_topic_drops_its_offsets_and_its_partitions_everywhere():
    image = group_image().apply([RemoveTopicRecord("id-t")])
    group = image.groups["g"]
    assert group.offsets == {"u": {1: CommittedOffset(5, -1, None)}}
    for m in group.members.values():
        assert (m.assigned, m.pending_revocation, m.target) == ({}, {}, {})
    # the target was computed from t: the metadata still says so, which tells the
    # coordinator to rebalance
    assert group.subscription_metadata == (("t", "id-t", 4),)
    recreated = image.apply(topics(t=2))
    assert recreated.groups["g"].committed("t", 0) is None


def test_removing_a_topic_removes_a_group_left_with_nothing():
    image = BASE.apply([OffsetCommitRecord("only-t", "t", 0, 1, 0, None)])
    assert "only-t" not in image.apply([RemoveTopicRecord("id-t")]).groups


def test_a_static_member_that_left_keeps_its_partitions():
    image = group_image().apply([
        GroupMemberAssignmentRecord("g", "m1", 1, 0, (("t", (0, 1)),), (("t", (2,)),), True)])
    m1 = image.groups["g"].members["m1"]
    assert m1.left_static and m1.holds == {"t": frozenset({0, 1, 2})}
    with pytest.raises(ValueError):  # still reserved
        image.apply([GroupMemberAssignmentRecord("g", "m2", 2, 0, (("t", (0, 3)),), (), False)])


# -- snapshots ----------------------------------------------------------------------------


def test_snapshot_codec_lists_every_group_field():
    names = lambda cls: tuple(f.name for f in dataclasses.fields(cls) if f.init)  # noqa: E731
    assert names(GroupImage) == GROUP_FIELDS
    assert names(GroupMemberImage) == MEMBER_FIELDS
    assert names(CommittedOffset) == OFFSET_FIELDS


def test_snapshot_round_trip_keeps_every_group():
    image = group_image().apply([
        GroupMemberAssignmentRecord("g", "m1", 1, 0, (("t", (0, 1)),), (("t", (2,)),), True),
        OffsetCommitRecord("other", "u", 0, 3, 2, ""),
        GroupMemberRecord("g", "m2", None, "r", "c", (), "t|u", 5000, 6000),
    ])
    plain = msgpack.unpackb(msgpack.packb(image_to_plain(image)))
    restored = image_from_plain(plain)
    assert restored == image
    assert restored.groups["g"].members["m1"].left_static
    assert restored.groups["g"].members["m2"].subscribed_topic_regex == "t|u"
    assert restored.groups["other"].committed("u", 0) == CommittedOffset(3, 2, "")
    snapshot = Snapshot(image, (b"c", 5, 1), (b"b", 4, 1), ("127.0.0.1:1",))
    assert decode_snapshot(encode_snapshot(snapshot)) == snapshot
    # applying more group records to the restored image works as on the original
    more = [RemoveGroupMemberRecord("g", "m1"), OffsetCommitRecord("g", "t", 3, 1, 0, None)]
    assert restored.apply(more) == image.apply(more)


def test_an_image_written_before_groups_reads_without_groups():
    plain = msgpack.unpackb(msgpack.packb(image_to_plain(BASE)))
    assert plain[3] == []
    assert image_from_plain(plain[:3]) == BASE


@pytest.mark.parametrize("damage", [
    lambda g: g.__setitem__(1, "2"),  # group epoch not an int
    lambda g: g[4][0].__setitem__(10, [["t", [-1]]]),  # a negative partition
    lambda g: g[4][0].pop(),  # a member field missing
    lambda g: g[4].append(list(g[4][0])),  # a member twice
    lambda g: g[5][0].__setitem__(2, -5),  # a negative committed offset
    lambda g: g.append(1),
])
def test_a_damaged_group_in_a_snapshot_is_refused(damage):
    plain = msgpack.unpackb(msgpack.packb(image_to_plain(group_image())))
    damage(plain[3][0])
    with pytest.raises(ValueError):
        image_from_plain(plain)
