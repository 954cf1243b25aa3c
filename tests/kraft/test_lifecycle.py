"""Broker lifecycle: fencing, unfencing, elections and ISR changes as pure metadata decisions.

The scenario tests read as a story of one cluster; the simulation drives random sequences
of decisions through the image and checks named invariants after every step.
"""

from __future__ import annotations

import itertools
import random

import pytest

from kraft.controller import CreateTopicRequest, create_topics, register_broker
from kraft.image import MetadataImage, PartitionImage
from kraft.lifecycle import (
    FENCED_LEADER_EPOCH,
    INVALID_REQUEST,
    INVALID_UPDATE_VERSION,
    NOT_LEADER_OR_FOLLOWER,
    STALE_BROKER_EPOCH,
    UNKNOWN_TOPIC_OR_PARTITION,
    HeartbeatTracker,
    alter_partition,
    elect_preferred_leaders,
    fence_brokers,
    rejoin_isr,
    unfence_broker,
)
from kraft.records import (
    NO_LEADER,
    FenceBrokerRecord,
    PartitionChangeRecord,
    RegisterBrokerRecord,
    UnfenceBrokerRecord,
)

pytestmark = pytest.mark.timeout(60)

TOPIC_ID = "id-orders"


def brokers_up(*broker_ids: int) -> MetadataImage:
    image = MetadataImage.EMPTY
    for broker_id in broker_ids:
        image = image.apply(register_broker(image, broker_id, f"host{broker_id}", 9000 + broker_id, None))
        image = image.apply(unfence_broker(image, broker_id))
    return image


def with_topic(image: MetadataImage, name: str, partitions: int, replication_factor: int,
               topic_id: str = TOPIC_ID) -> MetadataImage:
    records, results = create_topics(
        image, [CreateTopicRequest(name, partitions, replication_factor)], new_topic_id=lambda: topic_id)
    assert results[0].error is None, results
    return image.apply(records)


def partitions(image: MetadataImage, topic_id: str = TOPIC_ID) -> dict[int, PartitionImage]:
    return dict(image.topics_by_id[topic_id].partitions)


def epoch_of(image: MetadataImage, broker_id: int) -> int:
    """The broker epoch a live broker would send (-1 for one that is not registered)."""
    broker = image.brokers.get(broker_id)
    return broker.epoch if broker is not None else -1


def decide(image: MetadataImage, records) -> MetadataImage:
    """Apply a decision's records: the image itself refuses any that break its rules."""
    return image.apply(records)


# -- the story of one cluster -------------------------------------------------------------

def test_brokers_fail_one_by_one_and_come_back():
    image = with_topic(brokers_up(1, 2, 3), "orders", 6, 3)
    start = partitions(image)
    assert all(p.isr == p.replicas and p.leader == p.replicas[0] for p in start.values())
    assert sorted(p.leader for p in start.values()) == [1, 1, 2, 2, 3, 3]

    # Broker 2's heartbeats lapse: it is fenced and leaves every ISR.
    records = fence_brokers(image, [2])
    assert records[0] == FenceBrokerRecord(2)
    assert all(isinstance(r, PartitionChangeRecord) for r in records[1:])
    assert len(records) == 1 + 6  # broker 2 is in every ISR (RF 3 on 3 brokers)
    image = decide(image, records)
    assert image.brokers[2].fenced
    after_2 = partitions(image)
    for index, p in after_2.items():
        before = start[index]
        assert 2 not in p.isr and p.partition_epoch == before.partition_epoch + 1
        if before.leader == 2:
            # The new leader is the next replica in replicas order that is still in the ISR.
            assert p.leader == next(b for b in before.replicas if b != 2)
            assert p.leader_epoch == before.leader_epoch + 1
        else:
            assert p.leader == before.leader and p.leader_epoch == before.leader_epoch

    # Fencing an already fenced broker decides nothing.
    assert fence_brokers(image, [2]) == []

    # Broker 3 follows: every ISR is down to broker 1, which leads everything.
    image = decide(image, fence_brokers(image, [3]))
    assert all(p.isr == (1,) and p.leader == 1 for p in partitions(image).values())

    # Broker 1 goes too: it stays as the last ISR member, and the partitions are offline.
    before_1 = partitions(image)
    image = decide(image, fence_brokers(image, [1]))
    offline = partitions(image)
    for index, p in offline.items():
        assert p.isr == (1,) and p.leader == NO_LEADER
        assert p.leader_epoch == before_1[index].leader_epoch + 1

    # Broker 1, the last ISR member, returns and leads every partition again.
    image = decide(image, unfence_broker(image, 1))
    for index, p in partitions(image).items():
        assert p.leader == 1 and p.isr == (1,)
        assert p.leader_epoch == offline[index].leader_epoch + 1

    # Brokers 2 and 3 return: unfencing alone puts no replica back into an ISR.
    image = decide(image, unfence_broker(image, 2))
    image = decide(image, unfence_broker(image, 3))
    assert all(p.isr == (1,) and p.leader == 1 for p in partitions(image).values())
    # Their leader adds them through AlterPartition once they have caught up; leadership
    # does not move by itself.
    for index, p in partitions(image).items():
        records, error = alter_partition(image, TOPIC_ID, index, 1, p.leader_epoch, p.partition_epoch,
                                         list(p.replicas), epoch_of(image, 1))
        assert error is None
        image = decide(image, records)
    rejoined = partitions(image)
    for p in rejoined.values():
        assert p.isr == p.replicas and p.leader == 1

    # Preferred leader election restores the original placement's leaders.
    records = elect_preferred_leaders(image)
    assert len(records) == 4  # broker 1 was preferred for 2 of the 6 partitions
    image = decide(image, records)
    for index, p in partitions(image).items():
        assert p.leader == start[index].leader == p.replicas[0]
        moved = rejoined[index].leader != p.leader
        assert p.leader_epoch == rejoined[index].leader_epoch + moved
    assert elect_preferred_leaders(image) == []


def test_a_broker_out_of_the_isr_never_revives_an_offline_partition():
    image = with_topic(brokers_up(1, 2, 3), "orders", 3, 3)
    for broker_id in (2, 3, 1):
        image = decide(image, fence_brokers(image, [broker_id]))
    offline = partitions(image)
    assert all(p.leader == NO_LEADER and p.isr == (1,) for p in offline.values())
    # Broker 2 returns first, but it was out of the ISR: it must not lead (no unclean
    # election), and an offline partition gains no ISR members.
    records = unfence_broker(image, 2)
    assert records == [UnfenceBrokerRecord(2)]
    image = decide(image, records)
    assert partitions(image) == offline
    # When broker 1 returns it leads again, alone in the ISR: broker 2 rejoins only when
    # its leader asks (AlterPartition), not by being unfenced.
    image = decide(image, unfence_broker(image, 1))
    for p in partitions(image).values():
        assert p.leader == 1 and p.isr == (1,)


def test_fencing_several_brokers_at_once_keeps_one_isr_member():
    image = with_topic(brokers_up(1, 2, 3), "orders", 3, 2)
    image = decide(image, fence_brokers(image, [3, 1, 2, 99]))  # 99 is not registered
    assert all(image.brokers[b].fenced for b in (1, 2, 3))
    for p in partitions(image).values():
        # Both replicas went at once: the leader, which had every acknowledged record, stays.
        assert p.leader == NO_LEADER and p.isr == (p.replicas[0],)


def test_the_kept_isr_member_is_the_last_leader_whatever_the_isr_order():
    image = with_topic(brokers_up(1, 2), "orders", 1, 2)
    records, error = alter_partition(image, TOPIC_ID, 0, 1, 0, 0, [2, 1], epoch_of(image, 1))
    image = decide(image, records)
    assert error is None and partitions(image)[0].isr == (2, 1)
    image = decide(image, fence_brokers(image, [1, 2]))
    assert partitions(image)[0].isr == (1,) and partitions(image)[0].leader == NO_LEADER


def test_fence_nothing_and_unknown_brokers():
    image = with_topic(brokers_up(1, 2), "orders", 2, 2)
    assert fence_brokers(image, []) == []
    assert fence_brokers(image, [7]) == []
    assert unfence_broker(image, 7) == []
    assert unfence_broker(image, 1) == []  # already unfenced


def test_fencing_a_broker_without_replicas_only_fences_it():
    image = with_topic(brokers_up(1, 2), "orders", 2, 1)
    image = decide(image, [RegisterBrokerRecord(3, "h3", 1, None), UnfenceBrokerRecord(3)])
    assert fence_brokers(image, [3]) == [FenceBrokerRecord(3)]


def test_rejoin_isr_only_for_unfenced_brokers_and_led_partitions():
    image = with_topic(brokers_up(1, 2, 3), "orders", 3, 3)
    image = decide(image, fence_brokers(image, [3]))
    assert rejoin_isr(image, 3) == []  # still fenced
    assert rejoin_isr(image, 42) == []  # unknown
    unfenced = decide(image, [UnfenceBrokerRecord(3)])
    records = rejoin_isr(unfenced, 3)
    assert len(records) == 3
    for record in records:
        assert isinstance(record, PartitionChangeRecord) and 3 in record.isr
    assert rejoin_isr(decide(unfenced, records), 3) == []


def test_preferred_election_skips_fenced_and_out_of_isr_preferred_replicas():
    image = with_topic(brokers_up(1, 2, 3), "orders", 3, 3)
    image = decide(image, fence_brokers(image, [1]))
    assert elect_preferred_leaders(image) == []  # broker 1 is fenced and out of the ISRs
    # Unfenced but not yet back in the ISR (rejoin not applied): still not elected.
    image = decide(image, [UnfenceBrokerRecord(1)])
    led_by_1 = [p for p in partitions(image).values() if p.replicas[0] == 1]
    assert led_by_1 and all(1 not in p.isr for p in led_by_1)
    assert elect_preferred_leaders(image) == []


# -- alter_partition ------------------------------------------------------------------------

@pytest.fixture
def three_replicas() -> MetadataImage:
    """One partition, replicas (1, 2, 3), leader 1, epochs 0/0; broker 4 has no replica."""
    image = with_topic(brokers_up(1, 2, 3), "orders", 1, 3)
    image = decide(image, [RegisterBrokerRecord(4, "h4", 1, None), UnfenceBrokerRecord(4)])
    assert partitions(image)[0] == PartitionImage(0, (1, 2, 3), (1, 2, 3), 1, 0, 0)
    return image


def test_alter_partition_shrinks_and_grows_the_isr(three_replicas):
    image = three_replicas
    records, error = alter_partition(image, TOPIC_ID, 0, 1, 0, 0, [1, 3], epoch_of(image, 1))
    assert error is None
    assert records == [PartitionChangeRecord(TOPIC_ID, 0, 1, (1, 3), 0, 1)]
    image = decide(image, records)
    records, error = alter_partition(image, TOPIC_ID, 0, 1, 0, 1, (1, 3, 2), epoch_of(image, 1))
    assert error is None
    image = decide(image, records)
    assert partitions(image)[0] == PartitionImage(0, (1, 2, 3), (1, 3, 2), 1, 0, 2)


@pytest.mark.parametrize(
    "topic_id, partition, leader_id, leader_epoch, partition_epoch, new_isr, expected",
    [
        ("missing", 0, 1, 0, 0, [1], UNKNOWN_TOPIC_OR_PARTITION),
        (TOPIC_ID, 1, 1, 0, 0, [1], UNKNOWN_TOPIC_OR_PARTITION),
        (TOPIC_ID, 0, 2, 0, 0, [2], NOT_LEADER_OR_FOLLOWER),  # a follower
        (TOPIC_ID, 0, 4, 0, 0, [4], NOT_LEADER_OR_FOLLOWER),  # not even a replica
        (TOPIC_ID, 0, 1, 1, 0, [1], FENCED_LEADER_EPOCH),  # an epoch the controller never gave
        (TOPIC_ID, 0, 1, 0, 1, [1], INVALID_UPDATE_VERSION),
        (TOPIC_ID, 0, 1, 0, 0, [1, 4], INVALID_REQUEST),  # outside the replicas
        (TOPIC_ID, 0, 1, 0, 0, [2, 3], INVALID_REQUEST),  # without the leader
        (TOPIC_ID, 0, 1, 0, 0, [], INVALID_REQUEST),
        (TOPIC_ID, 0, 1, 0, 0, [1, 1], INVALID_REQUEST),
        (TOPIC_ID, 0, 1, 0, 0, [1, -1], INVALID_REQUEST),
        (TOPIC_ID, 0, 1, 0, 0, ["1"], INVALID_REQUEST),
        (TOPIC_ID, 0, 1, 0, 0, "1", INVALID_REQUEST),
    ],
)
def test_alter_partition_errors(three_replicas, topic_id, partition, leader_id, leader_epoch,
                                partition_epoch, new_isr, expected):
    assert alter_partition(three_replicas, topic_id, partition, leader_id, leader_epoch,
                           partition_epoch, new_isr, epoch_of(three_replicas, leader_id)) == ([], expected)


def test_alter_partition_from_a_deposed_leader_is_fenced(three_replicas):
    image = decide(three_replicas, fence_brokers(three_replicas, [1]))
    current = partitions(image)[0]
    assert current.leader == 2 and current.leader_epoch == 1
    # Broker 1 still thinks it leads at epoch 0: it is no longer the leader.
    assert alter_partition(image, TOPIC_ID, 0, 1, 0, 0, [1], epoch_of(image, 1)) == ([], NOT_LEADER_OR_FOLLOWER)
    # The new leader quoting the old leader epoch or the old partition epoch is refused.
    assert alter_partition(image, TOPIC_ID, 0, 2, 0, 1, [2], epoch_of(image, 2)) == ([], FENCED_LEADER_EPOCH)
    assert alter_partition(image, TOPIC_ID, 0, 2, 1, 0, [2], epoch_of(image, 2)) == ([], INVALID_UPDATE_VERSION)
    # Growing the ISR with the fenced broker is refused; shrinking it is fine.
    assert alter_partition(image, TOPIC_ID, 0, 2, 1, 1, [2, 3, 1], epoch_of(image, 2)) == ([], INVALID_REQUEST)
    records, error = alter_partition(image, TOPIC_ID, 0, 2, 1, 1, [2], epoch_of(image, 2))
    assert error is None and decide(image, records)


def test_alter_partition_from_an_earlier_run_of_the_leader_is_stale(three_replicas):
    """KIP-841: a request sent just before the leader's process restarted may land after the
    new run registered; its old broker epoch gets it refused even though every partition
    epoch in it is still current."""
    old_epoch = epoch_of(three_replicas, 1)
    # The same run registering again (a retried registration) changes nothing.
    assert register_broker(three_replicas, 1, "host1", 9001, None) == []
    # A new run registers with a new incarnation: fenced, leadership moves, a new broker epoch.
    image = decide(three_replicas, register_broker(three_replicas, 1, "host1", 9001, None, "run-2"))
    assert image.brokers[1].fenced and image.brokers[1].epoch > old_epoch
    assert partitions(image)[0].leader != 1
    image = decide(image, unfence_broker(image, 1))
    interim = partitions(image)[0]  # broker 2 leads; once broker 1 has caught up it is let back in
    image = decide(image, alter_partition(image, TOPIC_ID, 0, interim.leader, interim.leader_epoch,
                                          interim.partition_epoch, [*interim.isr, 1],
                                          epoch_of(image, interim.leader))[0])
    image = decide(image, elect_preferred_leaders(image))
    current = partitions(image)[0]
    assert current.leader == 1 and epoch_of(image, 1) > old_epoch
    stale = alter_partition(image, TOPIC_ID, 0, 1, current.leader_epoch, current.partition_epoch,
                            [1, 2, 3], old_epoch)
    assert stale == ([], STALE_BROKER_EPOCH)
    records, error = alter_partition(image, TOPIC_ID, 0, 1, current.leader_epoch, current.partition_epoch,
                                     list(current.isr), epoch_of(image, 1))
    assert error is None and records


def test_alter_partition_of_an_offline_partition_is_refused():
    image = with_topic(brokers_up(1), "orders", 1, 1)
    image = decide(image, fence_brokers(image, [1]))
    assert partitions(image)[0].leader == NO_LEADER
    assert alter_partition(image, TOPIC_ID, 0, NO_LEADER, 1, 1, [1], epoch_of(image, NO_LEADER)) == ([], NOT_LEADER_OR_FOLLOWER)


# -- the heartbeat tracker ----------------------------------------------------------------

def test_heartbeat_tracker_expires_only_silent_unfenced_brokers():
    image = brokers_up(1, 2, 3)
    image = decide(image, [FenceBrokerRecord(3)])
    tracker = HeartbeatTracker(session_timeout_ms=1000)
    tracker.reset(image, now_ms=10_000)
    assert tracker.expired(image, 11_000) == []  # exactly the timeout: not yet
    tracker.heartbeat(1, 10_500)
    assert tracker.expired(image, 11_001) == [2]  # 3 is silent too, but already fenced
    tracker.heartbeat(1, 10_200)  # a late, older heartbeat does not shorten the grace
    assert tracker.last_heard_ms(1) == 10_500
    assert tracker.expired(image, 11_501) == [1, 2]


def test_heartbeat_tracker_grace_for_new_and_forgotten_brokers():
    tracker = HeartbeatTracker(session_timeout_ms=100)
    image = brokers_up(1)
    tracker.reset(image, 0)
    image = brokers_up(1, 2)  # broker 2 registered after the reset: grace from first sight
    assert tracker.expired(image, 60) == []
    assert tracker.last_heard_ms(2) == 60
    assert tracker.expired(image, 151) == [1]
    assert tracker.expired(image, 161) == [1, 2]
    tracker.forget(2)
    assert tracker.last_heard_ms(2) is None
    assert tracker.expired(image, 300) == [1]  # a new grace for 2 starts at 300
    tracker.heartbeat(1, 300)
    tracker.reset(image, 1000)  # a new active controller: everyone gets a fresh grace
    assert tracker.expired(image, 1100) == []


def test_heartbeat_tracker_drives_fencing():
    image = with_topic(brokers_up(1, 2, 3), "orders", 3, 3)
    tracker = HeartbeatTracker(session_timeout_ms=500)
    tracker.reset(image, 0)
    for now_ms in range(0, 2000, 100):
        for broker_id in (1, 3):  # broker 2 stops heartbeating
            tracker.heartbeat(broker_id, now_ms)
        image = decide(image, fence_brokers(image, tracker.expired(image, now_ms)))
    assert [b for b, broker in image.brokers.items() if broker.fenced] == [2]
    assert all(2 not in p.isr and p.leader != 2 for p in partitions(image).values())


# -- seeded simulation with named invariants -------------------------------------------------

BROKERS = (1, 2, 3, 4)


def check_invariants(before: MetadataImage, after: MetadataImage) -> None:
    fenced = {b for b, broker in after.brokers.items() if broker.fenced}
    for topic_id, topic in after.topics_by_id.items():
        old_topic = before.topics_by_id.get(topic_id)
        for index, p in topic.partitions.items():
            where = f"{topic.name}-{index} {p}"
            assert p.isr, f"isr is non-empty: {where}"
            assert set(p.isr) <= set(p.replicas), f"isr is within the replicas: {where}"
            assert p.leader == NO_LEADER or p.leader in p.isr, f"leader is in the isr: {where}"
            assert p.leader not in fenced, f"a fenced broker never leads: {where}"
            assert not (fenced & set(p.isr)) or len(p.isr) == 1, \
                f"a fenced broker stays in an isr only as its last member: {where}"
            old = old_topic.partitions.get(index) if old_topic is not None else None
            if old is None:
                continue
            assert p.leader_epoch >= old.leader_epoch, f"leader epoch never decreases: {where}"
            assert p.partition_epoch >= old.partition_epoch, f"partition epoch never decreases: {where}"
            if p != old:
                assert p.partition_epoch > old.partition_epoch, \
                    f"partition epoch increases on every change: {old} -> {p}"
            if p.leader != old.leader:
                assert p.leader_epoch > old.leader_epoch, f"a new leader has a new epoch: {where}"
                assert p.leader == NO_LEADER or p.leader in old.isr, \
                    f"no unclean election: the new leader was in the isr: {old} -> {p}"


def random_step(rng: random.Random, image: MetadataImage, topic_ids) -> tuple[str, list]:
    action = rng.choice(["fence", "fence", "unfence", "unfence", "preferred", "alter", "alter",
                         "reregister", "create"])
    if action == "fence":
        return action, fence_brokers(image, rng.sample(BROKERS, rng.randint(1, 2)))
    if action == "unfence":
        return action, unfence_broker(image, rng.choice(BROKERS))
    if action == "preferred":
        return action, elect_preferred_leaders(image)
    if action == "reregister":
        broker_id = rng.choice(BROKERS)
        return action, register_broker(image, broker_id, rng.choice(["a", "b"]), 9000, None)
    if action == "create":
        unfenced = sum(not b.fenced for b in image.brokers.values())
        if unfenced == 0:
            return action, []
        records, _ = create_topics(
            image, [CreateTopicRequest(f"t{len(topic_ids)}", rng.randint(1, 4), rng.randint(1, unfenced))],
            new_topic_id=lambda: f"id-{len(topic_ids)}", start_index=rng.randint(0, 9))
        topic_ids.append(f"id-{len(topic_ids)}")
        return action, records
    # alter: a leader (or an impostor, or a stale one) asks for a random ISR
    topic = image.topics_by_id[rng.choice(topic_ids)]
    p = topic.partitions[rng.choice(sorted(topic.partitions))]
    leader_id = p.leader if rng.random() < 0.8 else rng.choice(BROKERS)
    new_isr = rng.sample(p.replicas, rng.randint(1, len(p.replicas)))
    if leader_id in p.replicas and leader_id not in new_isr and rng.random() < 0.8:
        new_isr.append(leader_id)
    records, error = alter_partition(
        image, topic.topic_id, p.partition, leader_id,
        p.leader_epoch - (rng.random() < 0.1), p.partition_epoch - (rng.random() < 0.1), new_isr,
        epoch_of(image, leader_id) - (rng.random() < 0.1))
    assert (records == []) == (error is not None)
    return action, records


@pytest.mark.parametrize("seed", range(12))
def test_simulation_keeps_the_invariants(seed):
    rng = random.Random(seed)
    image = with_topic(brokers_up(*BROKERS), "orders", 8, 3)
    topic_ids = [TOPIC_ID]
    changes = 0
    for step in range(150):
        action, records = random_step(rng, image, topic_ids)
        after = image.apply(records)  # the image refuses records that break its rules
        try:
            check_invariants(image, after)
        except AssertionError as exc:
            raise AssertionError(f"seed {seed} step {step} {action}: {exc}") from None
        changes += sum(isinstance(r, PartitionChangeRecord) for r in records)
        image = after
    assert changes > 0  # the run exercised partition changes


def test_invariant_checker_catches_an_unclean_election():
    # A negative control: a checker that cannot fail proves nothing.
    image = with_topic(brokers_up(1, 2), "orders", 1, 2)
    image = decide(image, fence_brokers(image, [2]))  # isr (1,)
    bad = image.apply([UnfenceBrokerRecord(2), PartitionChangeRecord(TOPIC_ID, 0, 2, (1, 2), 1, 2)])
    with pytest.raises(AssertionError, match="unclean"):
        check_invariants(image, bad)


def test_decisions_are_deterministic():
    def run() -> list:
        rng = random.Random(7)
        image = with_topic(brokers_up(*BROKERS), "orders", 8, 3)
        topic_ids = [TOPIC_ID]
        log = []
        for _ in range(60):
            _, records = random_step(rng, image, topic_ids)
            log.append(records)
            image = image.apply(records)
        return log

    assert run() == run()


def test_epochs_step_by_exactly_one_per_record():
    image = with_topic(brokers_up(1, 2, 3), "orders", 3, 3)
    for decision in (lambda i: fence_brokers(i, [1, 2]), lambda i: unfence_broker(i, 1),
                     lambda i: unfence_broker(i, 2), elect_preferred_leaders):
        records = decision(image)
        seen = set()
        for record in records:
            if isinstance(record, PartitionChangeRecord):
                key = (record.topic_id, record.partition)
                assert key not in seen, "one change per partition per decision"
                seen.add(key)
                old = partitions(image, record.topic_id)[record.partition]
                assert record.partition_epoch == old.partition_epoch + 1
        image = decide(image, records)
    assert list(itertools.chain.from_iterable([elect_preferred_leaders(image)])) == []
