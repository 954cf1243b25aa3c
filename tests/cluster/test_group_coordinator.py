"""The group coordinator's pure decisions: membership, reconciliation, sessions, offsets.

Every test drives ``cluster.group_coordinator`` with an image and requests, applies the
records it returns (as the metadata log would) and looks at responses and the image. The
``Consumer`` below plays a client that applies the newest assignment it was sent whenever
the test says so (as a real consumer does in ``poll``) and reports what it owns.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.group_coordinator import (
    CoordinatorConfig,
    Decision,
    GroupSessions,
    HeartbeatRequest,
    OffsetCommitRequest,
    PartitionCommit,
    commit_offsets,
    delete_groups,
    describe_group,
    expire_members,
    fetch_offsets,
    heartbeat,
    list_groups,
)
from cluster.protocol import errors
from kraft.groups import TopicPartitions, topic_partitions, union
from kraft.image import MetadataImage
from kraft.records import PartitionRecord, RemoveTopicRecord, TopicRecord

CONFIG = CoordinatorConfig(min_session_timeout_ms=1000, max_session_timeout_ms=300000, heartbeat_interval_ms=500)
SESSION_MS = 10000
REBALANCE_MS = 30000


def topic_records(name: str, count: int, start: int = 0) -> list:
    records: list = [] if start else [TopicRecord(f"id-{name}", name)]
    records.extend(PartitionRecord(f"id-{name}", i, (1,), (1,), 1, 0, 0) for i in range(start, count))
    return records


def image_with(**counts: int) -> MetadataImage:
    records: list = []
    for name, count in counts.items():
        records.extend(topic_records(name, count))
    return MetadataImage.EMPTY.apply(records)


def tps(**parts: set[int] | list[int]) -> TopicPartitions:
    return topic_partitions((t, frozenset(p)) for t, p in parts.items())


def body_to_tps(assignment: dict | None) -> TopicPartitions | None:
    if assignment is None:
        return None
    return topic_partitions((e["topic"], frozenset(e["partitions"])) for e in assignment["topic_partitions"])


class Cluster:
    """The image, updated with every decision's records; and what members last reported
    owning (as ``cluster.group_service`` keeps it in its ``GroupSessions``)."""

    def __init__(self, image: MetadataImage) -> None:
        self.image = image
        self.appends = 0
        self.reports = GroupSessions()

    def apply(self, decision: Decision) -> Decision:
        if decision.records:
            self.image = self.image.apply(decision.records)
            self.appends += 1
        return decision

    def group(self, group_id: str = "g"):
        return self.image.groups.get(group_id)


@dataclass
class Consumer:
    cluster: Cluster
    name: str
    topics: tuple[str, ...] | None = ("t",)
    regex: str | None = None
    instance_id: str | None = None
    group_id: str = "g"
    member_id: str = ""
    epoch: int = 0
    owned: TopicPartitions = field(default_factory=dict)
    latest: TopicPartitions | None = None  # the newest assignment received, not applied yet
    reported: TopicPartitions | None = None
    subscription_sent: bool = False

    def request(self, epoch: int, report: bool = True, **overrides) -> HeartbeatRequest:
        joining = epoch == 0
        send_owned = joining or (report and self.owned != self.reported)
        fields = dict(
            group_id=self.group_id, member_id=self.member_id, member_epoch=epoch, instance_id=self.instance_id,
            client_id=self.name, rebalance_timeout_ms=REBALANCE_MS, session_timeout_ms=SESSION_MS,
            subscribed_topic_names=self.topics if joining or not self.subscription_sent else None,
            subscribed_topic_regex=self.regex if joining or not self.subscription_sent else None,
            owned=self.owned if send_owned else None,
        )
        fields.update(overrides)
        return HeartbeatRequest(**fields)

    def send(self, request: HeartbeatRequest) -> dict:
        reports = self.cluster.reports
        sent = dataclasses.replace(request, owned=reports.owned(request.group_id, request.member_id, request.owned))
        decision = self.cluster.apply(heartbeat(self.cluster.image, sent, CONFIG, new_member_id=self.name))
        response = decision.response
        if response["error_code"] == errors.NONE:
            reports.heard(request.group_id, response["member_id"], 0, request.owned)
            if request.owned is not None:
                self.reported = request.owned
            if request.subscribed_topic_names is not None or request.subscribed_topic_regex is not None:
                self.subscription_sent = True
            self.member_id = response["member_id"]
            self.epoch = response["member_epoch"]
            if response["assignment"] is not None:
                self.latest = body_to_tps(response["assignment"])
        return response

    def join(self) -> dict:
        self.epoch = 0
        self.reported = None
        return self.send(self.request(0))

    def beat(self, report: bool = True) -> dict:
        return self.send(self.request(self.epoch, report))

    def apply(self) -> None:
        """What poll() does: revoke and add to match the newest assignment received."""
        if self.latest is not None:
            self.owned = self.latest
            self.latest = None

    def settle(self) -> dict:
        response = self.beat()
        self.apply()
        return response

    def leave(self, static: bool = False) -> dict:
        response = self.send(self.request(-2 if static else -1))
        self.owned, self.latest = {}, None
        return response


def settle_all(consumers: list[Consumer], rounds: int = 10) -> None:
    for _ in range(rounds):
        for consumer in consumers:
            consumer.settle()


def assert_no_two_owners(consumers: list[Consumer]) -> None:
    seen: dict[tuple[str, int], str] = {}
    for consumer in consumers:
        for topic, parts in consumer.owned.items():
            for p in parts:
                assert (topic, p) not in seen, f"{topic}-{p} owned by {seen[(topic, p)]} and {consumer.name}"
                seen[(topic, p)] = consumer.name


# -- join, leave, balance, revocation ---------------------------------------------------------


def test_a_lone_member_gets_every_partition_and_a_quiet_heartbeat_appends_nothing():
    cluster = Cluster(image_with(t=4))
    a = Consumer(cluster, "a")
    response = a.join()
    assert response["error_code"] == 0 and response["member_id"] == "a"
    assert response["member_epoch"] == 1 and response["heartbeat_interval_ms"] == 500
    assert body_to_tps(response["assignment"]) == tps(t={0, 1, 2, 3})
    a.apply()
    appends = cluster.appends
    a.beat()  # reports its owned partitions: the coordinator's view does not change
    for _ in range(3):
        response = a.beat()
        assert response["assignment"] is None and response["member_epoch"] == 1
    assert cluster.appends == appends
    group = cluster.group()
    assert group.state == "stable" and group.group_epoch == 1


def test_a_second_member_gets_half_only_after_the_first_revokes():
    cluster = Cluster(image_with(t=4))
    a, b = Consumer(cluster, "a"), Consumer(cluster, "b")
    a.join()
    a.settle()
    response = b.join()
    assert response["member_epoch"] == 2
    assert body_to_tps(response["assignment"]) == {}  # its target is still a's
    group = cluster.group()
    assert group.group_epoch == 2
    assert group.members["a"].target == tps(t={0, 1}) and group.members["b"].target == tps(t={2, 3})

    response = a.beat()  # a learns it must give up 2 and 3; its epoch waits
    assert response["member_epoch"] == 1 and body_to_tps(response["assignment"]) == tps(t={0, 1})
    assert cluster.group().members["a"].pending_revocation == tps(t={2, 3})
    assert body_to_tps(b.beat()["assignment"]) in (None, {})  # still held by a
    assert cluster.group().state == "reconciling"

    a.apply()  # a stops consuming 2 and 3
    response = a.beat()
    assert response["member_epoch"] == 2
    response = b.beat()
    assert body_to_tps(response["assignment"]) == tps(t={2, 3}) and response["member_epoch"] == 2
    b.apply()
    assert_no_two_owners([a, b])
    assert cluster.group().state == "stable"


def test_leaving_frees_partitions_for_the_others_and_the_last_leave_deletes_the_group():
    cluster = Cluster(image_with(t=4))
    a, b = Consumer(cluster, "a"), Consumer(cluster, "b")
    a.join(), b.join()
    settle_all([a, b])
    response = b.leave()
    assert response["error_code"] == 0 and response["member_epoch"] == -1
    assert cluster.group().group_epoch == 3
    a.settle()
    assert a.owned == tps(t={0, 1, 2, 3})
    a.leave()
    assert cluster.group() is None  # no member and no offsets
    assert a.beat()["error_code"] == errors.UNKNOWN_MEMBER_ID


def test_a_member_that_joins_again_gives_up_what_it_held():
    cluster = Cluster(image_with(t=2))
    a = Consumer(cluster, "a")
    a.join()
    a.settle()
    response = a.join()  # e.g. after being fenced: same member id, epoch 0
    assert response["error_code"] == 0 and body_to_tps(response["assignment"]) == tps(t={0, 1})
    assert cluster.group().members["a"].member_epoch == 1


def test_subscription_change_and_new_topics_rebalance():
    cluster = Cluster(image_with(t=2, u=2))
    a, b = Consumer(cluster, "a"), Consumer(cluster, "b", topics=("t", "u"))
    a.join(), b.join()
    settle_all([a, b])
    assert union(a.owned, b.owned) == tps(t={0, 1}, u={0, 1})
    assert "u" not in a.owned
    epoch = cluster.group().group_epoch
    a.topics, a.subscription_sent = ("u",), False
    settle_all([a, b])
    assert cluster.group().group_epoch == epoch + 1 and "t" not in a.owned and "u" in a.owned
    # a topic created later that matches a regex subscription joins the assignment
    c = Consumer(cluster, "c", topics=None, regex="new-.*")
    c.join()
    settle_all([a, b, c])
    assert c.owned == {}
    cluster.image = cluster.image.apply(topic_records("new-1", 3))
    settle_all([a, b, c])
    assert c.owned == tps(**{"new-1": {0, 1, 2}})
    assert cluster.group().subscription_metadata[0] == ("new-1", "id-new-1", 3)
    # growing a topic rebalances too
    cluster.image = cluster.image.apply(topic_records("new-1", 5, start=3))
    settle_all([a, b, c])
    assert c.owned == tps(**{"new-1": {0, 1, 2, 3, 4}})
    assert_no_two_owners([a, b, c])


def test_a_deleted_topic_disappears_from_assignments_and_offsets():
    cluster = Cluster(image_with(t=2, u=2))
    a = Consumer(cluster, "a", topics=("t", "u"))
    a.join()
    a.settle()
    cluster.apply(commit_offsets(cluster.image, commit_request("a", 1, t={0: 5}, u={1: 7})))
    cluster.image = cluster.image.apply([RemoveTopicRecord("id-u")])
    assert cluster.group().members["a"].assigned == tps(t={0, 1})
    epoch = cluster.group().group_epoch
    a.settle()
    assert cluster.group().group_epoch == epoch + 1  # the subscription metadata changed
    assert a.owned == tps(t={0, 1})
    assert fetch_offsets(cluster.image, "g", None)["topics"] == [
        {"name": "t", "partitions": [{"index": 0, "committed_offset": 5, "committed_leader_epoch": -1,
                                      "committed_metadata": None, "error_code": 0}]}]


# -- epochs -------------------------------------------------------------------------------------


def test_epochs_ahead_or_behind_are_fenced_but_the_previous_one_is_accepted():
    cluster = Cluster(image_with(t=4))
    a, b = Consumer(cluster, "a"), Consumer(cluster, "b")
    a.join()
    a.settle()
    b.join()
    settle_all([a, b])
    member = cluster.group().members["a"]
    assert (member.member_epoch, member.previous_member_epoch) == (2, 1)
    assert a.send(a.request(3))["error_code"] == errors.FENCED_MEMBER_EPOCH
    assert a.send(a.request(0 + 7))["error_code"] == errors.FENCED_MEMBER_EPOCH
    # the answer that moved a to epoch 2 was lost: epoch 1 with what it was given is fine
    response = a.send(a.request(1, owned=tps(t={0, 1})))
    assert response["error_code"] == 0 and response["member_epoch"] == 2
    assert body_to_tps(response["assignment"]) == tps(t={0, 1})
    # ...but not while claiming partitions it was not given
    response = a.send(a.request(1, owned=tps(t={0, 1, 2})))
    assert response["error_code"] == errors.FENCED_MEMBER_EPOCH
    assert a.send(a.request(2, member_id="ghost"))["error_code"] == errors.UNKNOWN_MEMBER_ID


@pytest.mark.parametrize("overrides, code", [
    ({"group_id": ""}, errors.INVALID_GROUP_ID),
    ({"session_timeout_ms": 999}, errors.INVALID_SESSION_TIMEOUT),
    ({"session_timeout_ms": 300001}, errors.INVALID_SESSION_TIMEOUT),
    ({"rebalance_timeout_ms": 0}, errors.INVALID_REQUEST),
    ({"member_epoch": -3}, errors.INVALID_REQUEST),
    ({"subscribed_topic_names": None, "subscribed_topic_regex": None}, errors.INVALID_REQUEST),
    ({"subscribed_topic_regex": "(unclosed"}, errors.INVALID_REQUEST),
    ({"subscribed_topic_names": ("",)}, errors.INVALID_REQUEST),
    ({"instance_id": ""}, errors.INVALID_REQUEST),
    ({"member_epoch": 5}, errors.INVALID_REQUEST),  # an epoch without a member id
])
def test_bad_heartbeats_get_named_errors_and_change_nothing(overrides, code):
    cluster = Cluster(image_with(t=1))
    a = Consumer(cluster, "a")
    response = a.send(a.request(0, **overrides))
    assert response["error_code"] == code and response["error_message"]
    assert cluster.image.groups == {} and cluster.appends == 0


# -- static membership --------------------------------------------------------------------------


def test_a_static_member_comes_back_to_its_partitions_without_a_rebalance():
    cluster = Cluster(image_with(t=4))
    a = Consumer(cluster, "a", instance_id="host-a")
    b = Consumer(cluster, "b", instance_id="host-b")
    a.join(), b.join()
    settle_all([a, b])
    b_partitions = b.owned
    epoch = cluster.group().group_epoch
    response = b.leave(static=True)
    assert response["member_epoch"] == -2
    assert cluster.group().members["b"].left_static
    settle_all([a])
    assert a.owned == tps(t={0, 1, 2, 3} - b_partitions["t"])  # b's stay reserved

    # another process with b's instance id while b is alive: fenced
    intruder = Consumer(cluster, "intruder", instance_id="host-a")
    assert intruder.join()["error_code"] == errors.FENCED_INSTANCE_ID

    b2 = Consumer(cluster, "b2", instance_id="host-b")  # b restarted: a new member id
    response = b2.join()
    assert response["error_code"] == 0 and response["member_id"] == "b2"
    assert body_to_tps(response["assignment"]) == b_partitions
    assert cluster.group().group_epoch == epoch  # nobody else was rebalanced
    assert set(cluster.group().members) == {"a", "b2"}
    b2.apply()
    assert_no_two_owners([a, b2])


def test_a_static_member_that_does_not_come_back_expires_and_its_partitions_move():
    cluster = Cluster(image_with(t=4))
    a = Consumer(cluster, "a")
    b = Consumer(cluster, "b", instance_id="host-b")
    a.join(), b.join()
    settle_all([a, b])
    sessions = GroupSessions()
    sessions.reset(cluster.image.groups, 0)
    sessions.heard("g", "b", 1000)  # its last heartbeat: the static leave
    b.leave(static=True)
    sessions.heard("g", "a", 1000 + SESSION_MS)
    assert sessions.expired(cluster.image.groups, 1000 + SESSION_MS) == []
    expired = sessions.expired(cluster.image.groups, 1001 + SESSION_MS)
    assert [(g, m) for g, m, _ in expired] == [("g", "b")]
    cluster.apply(expire_members(cluster.image, expired))
    settle_all([a])
    assert a.owned == tps(t={0, 1, 2, 3})


# -- sessions ---------------------------------------------------------------------------------


def test_a_silent_member_expires_after_its_session_and_a_new_controller_gives_fresh_sessions():
    cluster = Cluster(image_with(t=2))
    a, b = Consumer(cluster, "a"), Consumer(cluster, "b")
    a.join(), b.join()
    settle_all([a, b])
    sessions = GroupSessions()
    sessions.reset(cluster.image.groups, 5000)
    for now in range(5000, 5000 + SESSION_MS + 1000, 500):
        sessions.heard("g", "a", now)
        expired = sessions.expired(cluster.image.groups, now)
        if now - 5000 <= SESSION_MS:
            assert expired == []
    assert [m for _, m, _ in expired] == ["b"]
    decision = cluster.apply(expire_members(cluster.image, expired))
    assert any("removed from group g" in e for e in decision.events)
    assert set(cluster.group().members) == {"a"}
    settle_all([a])
    assert a.owned == tps(t={0, 1})
    # a controller that takes over knows no heartbeat times: everyone starts afresh
    fresh = GroupSessions()
    fresh.reset(cluster.image.groups, 10**9)
    assert fresh.expired(cluster.image.groups, 10**9 + SESSION_MS) == []


def test_a_member_that_does_not_revoke_within_its_rebalance_timeout_is_removed():
    cluster = Cluster(image_with(t=2))
    a = Consumer(cluster, "a")
    a.join()
    a.settle()
    sessions = GroupSessions()
    sessions.reset(cluster.image.groups, 0)
    Consumer(cluster, "b").join()
    a.beat()  # told to revoke, but never does (it keeps reporting nothing new)
    assert cluster.group().members["a"].pending_revocation
    for now in range(0, REBALANCE_MS + 1000, 500):
        sessions.heard("g", "a", now)
        sessions.heard("g", "b", now)
        expired = sessions.expired(cluster.image.groups, now)
        if now <= REBALANCE_MS:
            assert expired == []
    assert [m for _, m, _ in expired] == ["a"]
    cluster.apply(expire_members(cluster.image, expired))
    assert set(cluster.group().members) == {"b"}


# -- the invariant under random schedules ------------------------------------------------------


OPERATIONS = st.lists(st.tuples(
    st.sampled_from(["join", "leave", "leave_static", "beat", "beat_quiet", "apply", "expire", "grow",
                     "subscribe"]),
    st.integers(min_value=0, max_value=3)), min_size=1, max_size=60)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPERATIONS)
def test_no_partition_ever_has_two_owners_and_the_group_converges(operations):
    cluster = Cluster(image_with(t=3, u=2))
    counts = {"t": 3, "u": 2}
    slots: list[Consumer | None] = [None] * 4
    generation = [0]

    def new_consumer(slot: int) -> Consumer:
        generation[0] += 1
        instance = f"host-{slot}" if slot % 2 else None
        return Consumer(cluster, f"c{slot}-{generation[0]}", instance_id=instance,
                        topics=("t",) if slot < 2 else ("t", "u"))

    for operation, slot in operations:
        consumer = slots[slot]
        if operation == "join" and consumer is None:
            consumer = new_consumer(slot)
            if consumer.join()["error_code"] == errors.NONE:
                slots[slot] = consumer
        elif consumer is None:
            continue
        elif operation in ("leave", "leave_static"):
            static = operation == "leave_static" and consumer.instance_id is not None
            consumer.leave(static=static)
            slots[slot] = None
        elif operation in ("beat", "beat_quiet"):
            response = consumer.beat(report=operation == "beat")
            if response["error_code"] != errors.NONE:  # fenced: give everything up, rejoin
                consumer.owned, consumer.latest = {}, None
                assert consumer.join()["error_code"] == errors.NONE
        elif operation == "apply":
            consumer.apply()
        elif operation == "expire":
            cluster.apply(expire_members(cluster.image, [("g", consumer.member_id, "test")]))
            slots[slot] = None  # the member is gone; its process is treated as dead
        elif operation == "grow" and counts["u"] < 5:
            cluster.image = cluster.image.apply(topic_records("u", counts["u"] + 1, start=counts["u"]))
            counts["u"] += 1
        elif operation == "subscribe":
            consumer.topics = ("u",) if consumer.topics != ("u",) else ("t", "u")
            consumer.subscription_sent = False
        live = [c for c in slots if c is not None]
        assert_no_two_owners(live)
        group = cluster.group()
        if group is not None:
            for c in live:
                holds = group.members[c.member_id].holds
                for topic, parts in c.owned.items():
                    assert parts <= holds.get(topic, frozenset()), (c.name, c.owned, holds)

    # Heal: members that left as static members expire, everyone else keeps heartbeating.
    group = cluster.group()
    if group is not None:
        gone = [("g", m, "test") for m, member in group.members.items() if member.left_static]
        cluster.apply(expire_members(cluster.image, gone))
    live = [c for c in slots if c is not None]
    settle_all(live, rounds=8)
    assert_no_two_owners(live)
    group = cluster.group()
    if not live:
        return
    wanted = set()
    for c in live:
        member = group.members[c.member_id]
        assert member.member_epoch == group.assignment_epoch == group.group_epoch
        assert member.assigned == member.target == c.owned and not member.pending_revocation
        wanted |= {(t, p) for t in c.topics for p in range(counts[t])}
    owned = {(t, p) for c in live for t, parts in c.owned.items() for p in parts}
    assert owned == wanted
    assert group.state == "stable"


# -- offsets ----------------------------------------------------------------------------------


def commit_request(member_id: str, epoch: int, admin_reset: bool = False, group_id: str = "g",
                   **offsets: dict[int, int]) -> OffsetCommitRequest:
    topics = tuple((topic, tuple(PartitionCommit(i, offset) for i, offset in sorted(parts.items())))
                   for topic, parts in offsets.items())
    return OffsetCommitRequest(group_id, member_id, epoch, topics, admin_reset)


def codes(decision: Decision) -> dict[tuple[str, int], int]:
    return {(t["name"], p["index"]): p["error_code"] for t in decision.response["topics"] for p in t["partitions"]}


def committed(cluster: Cluster, topic: str, partition: int, group_id: str = "g") -> int:
    body = fetch_offsets(cluster.image, group_id, [(topic, [partition])])
    return body["topics"][0]["partitions"][0]["committed_offset"]


def test_commits_follow_the_member_epoch_and_never_go_backwards():
    cluster = Cluster(image_with(t=2))
    a = Consumer(cluster, "a")
    a.join()
    a.settle()
    decision = cluster.apply(commit_offsets(cluster.image, commit_request("a", 1, t={0: 10, 1: 4})))
    assert codes(decision) == {("t", 0): 0, ("t", 1): 0} and len(decision.records) == 2
    appends = cluster.appends
    decision = commit_offsets(cluster.image, commit_request("a", 1, t={0: 10}))
    assert codes(decision) == {("t", 0): 0} and decision.records == []  # nothing changes
    assert codes(commit_offsets(cluster.image, commit_request("a", 1, t={0: 9}))) == {
        ("t", 0): errors.OFFSET_OUT_OF_RANGE}
    assert codes(commit_offsets(cluster.image, commit_request("a", 0, t={0: 11}))) == {
        ("t", 0): errors.STALE_MEMBER_EPOCH}
    assert codes(commit_offsets(cluster.image, commit_request("zombie", 1, t={0: 11}))) == {
        ("t", 0): errors.UNKNOWN_MEMBER_ID}
    assert codes(commit_offsets(cluster.image, commit_request("", -1, t={0: 11}))) == {
        ("t", 0): errors.UNKNOWN_MEMBER_ID}  # outside the membership while it has members
    decision = commit_offsets(cluster.image, commit_request("a", 1, t={0: 12, 7: 1}, nope={0: 1}))
    assert codes(decision) == {("t", 0): 0, ("t", 7): errors.UNKNOWN_TOPIC_OR_PARTITION,
                               ("nope", 0): errors.UNKNOWN_TOPIC_OR_PARTITION}
    assert len(decision.records) == 1
    assert cluster.appends == appends
    assert committed(cluster, "t", 0) == 10 and committed(cluster, "t", 1) == 4
    assert committed(cluster, "t", 0, group_id="unknown") == -1


def test_admin_reset_moves_offsets_back_only_in_an_empty_group():
    cluster = Cluster(image_with(t=2))
    a = Consumer(cluster, "a")
    a.join()
    a.settle()
    cluster.apply(commit_offsets(cluster.image, commit_request("a", 1, t={0: 10})))
    refused = commit_offsets(cluster.image, commit_request("", -1, admin_reset=True, t={0: 0}))
    assert codes(refused) == {("t", 0): errors.NON_EMPTY_GROUP} and not refused.records
    a.leave()
    assert cluster.group() is not None  # kept for its offsets
    decision = cluster.apply(commit_offsets(cluster.image, commit_request("", -1, admin_reset=True, t={0: 3, 1: 2})))
    assert codes(decision) == {("t", 0): 0, ("t", 1): 0}
    assert decision.events == ["group g offset of t-0 reset 10 -> 3", "group g offset of t-1 reset -1 -> 2"]
    assert committed(cluster, "t", 0) == 3
    # outside membership, in an empty group: a plain commit works, still never backwards
    assert codes(cluster.apply(commit_offsets(cluster.image, commit_request("", -1, t={0: 5})))) == {("t", 0): 0}
    assert codes(commit_offsets(cluster.image, commit_request("", -1, t={0: 4}))) == {
        ("t", 0): errors.OFFSET_OUT_OF_RANGE}


def test_a_static_member_that_left_cannot_commit():
    cluster = Cluster(image_with(t=1))
    a = Consumer(cluster, "a", instance_id="i")
    a.join()
    a.settle()
    a.leave(static=True)
    assert codes(commit_offsets(cluster.image, commit_request("a", 1, t={0: 1}))) == {
        ("t", 0): errors.UNKNOWN_MEMBER_ID}


# -- ListGroups, ConsumerGroupDescribe, DeleteGroups -------------------------------------------


def test_list_describe_and_delete_groups():
    cluster = Cluster(image_with(t=2))
    a = Consumer(cluster, "a", regex="t.*", topics=None)
    a.join()
    a.settle()
    cluster.apply(commit_offsets(cluster.image, commit_request("", -1, group_id="offsets-only", t={1: 3})))
    assert list_groups(cluster.image)["groups"] == [
        {"group_id": "g", "group_state": "stable", "member_count": 1},
        {"group_id": "offsets-only", "group_state": "empty", "member_count": 0},
    ]
    described = describe_group(cluster.image, "g")
    assert described["error_code"] == 0 and described["group_epoch"] == 1
    assert described["members"] == [{
        "member_id": "a", "instance_id": None, "client_id": "a", "member_epoch": 1,
        "subscribed_topic_names": [], "subscribed_topic_regex": "t.*",
        "assignment": [{"topic": "t", "partitions": [0, 1]}],
        "target_assignment": [{"topic": "t", "partitions": [0, 1]}],
    }]
    assert describe_group(cluster.image, "nope")["error_code"] == errors.GROUP_ID_NOT_FOUND
    decision = cluster.apply(delete_groups(cluster.image, ["g", "offsets-only", "nope", "offsets-only"]))
    assert [r["error_code"] for r in decision.response["results"]] == [
        errors.NON_EMPTY_GROUP, errors.NONE, errors.GROUP_ID_NOT_FOUND, errors.GROUP_ID_NOT_FOUND]
    assert "offsets-only" not in cluster.image.groups and "g" in cluster.image.groups
