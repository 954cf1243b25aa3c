"""The metadata image: records build a new image, the old one never changes, misfits raise."""

from __future__ import annotations

import pytest

from kraft.image import BrokerImage, MetadataImage, PartitionImage
from kraft.records import (
    ConfigRecord,
    FenceBrokerRecord,
    PartitionChangeRecord,
    PartitionRecord,
    RegisterBrokerRecord,
    RemoveTopicRecord,
    TopicRecord,
    UnfenceBrokerRecord,
)

EMPTY = MetadataImage.EMPTY


def partition(topic_id: str, index: int, replicas=(1,), leader_epoch=0, partition_epoch=0,
              isr=None, leader=None) -> PartitionRecord:
    isr = replicas if isr is None else isr
    leader = replicas[0] if leader is None else leader
    return PartitionRecord(topic_id, index, replicas, isr, leader, leader_epoch, partition_epoch)


def orders_image() -> MetadataImage:
    return EMPTY.apply([
        RegisterBrokerRecord(1, "h1", 9092, None),
        RegisterBrokerRecord(2, "h2", 9093, "r2"),
        TopicRecord("id-orders", "orders"),
        ConfigRecord("id-orders", "retention.ms", "1000"),
        partition("id-orders", 0, (1, 2)),
        partition("id-orders", 1, (2, 1)),
    ])


def test_empty_image():
    assert EMPTY.offset == 0
    assert EMPTY.brokers == {} and EMPTY.topics_by_id == {} and EMPTY.topics_by_name == {}
    assert EMPTY.topic("orders") is None


def test_create_topic_with_config_and_partitions():
    image = orders_image()
    assert image.offset == 6
    topic = image.topic("orders")
    assert topic is not None and topic.topic_id == "id-orders" and topic.name == "orders"
    assert image.topics_by_id["id-orders"] is topic
    assert image.topics_by_name["orders"] is topic
    assert dict(topic.configs) == {"retention.ms": "1000"}
    assert topic.partitions[1] == PartitionImage(1, (2, 1), (2, 1), 2, 0, 0)
    assert set(topic.partitions) == {0, 1}


def test_brokers_registered_and_replaced():
    image = orders_image()
    # The broker epoch is the metadata offset of the broker's registration (record 2 here).
    assert image.brokers[2] == BrokerImage(2, "h2", 9093, "r2", fenced=True, epoch=2)
    moved = image.apply([RegisterBrokerRecord(2, "h9", 1234, None, "run-2")])
    assert moved.brokers[2] == BrokerImage(2, "h9", 1234, None, fenced=True, incarnation_id="run-2",
                                           epoch=image.offset + 1)
    # Fencing and unfencing keep the broker epoch.
    unfenced = moved.apply([UnfenceBrokerRecord(2)])
    assert unfenced.brokers[2].epoch == image.offset + 1 and not unfenced.brokers[2].fenced
    assert image.brokers[2].host == "h2"
    assert moved.topics_by_id is image.topics_by_id  # untouched parts are shared


def test_old_image_is_unchanged():
    before = orders_image()
    snapshot = (dict(before.brokers), {k: (dict(t.configs), dict(t.partitions))
                                      for k, t in before.topics_by_id.items()}, before.offset)
    after = before.apply([
        ConfigRecord("id-orders", "retention.ms", "5"),
        partition("id-orders", 2, (1,)),
        TopicRecord("id-x", "x"),
        RegisterBrokerRecord(3, "h3", 1, None),
    ])
    assert after.offset == before.offset + 4
    assert (dict(before.brokers), {k: (dict(t.configs), dict(t.partitions))
                                   for k, t in before.topics_by_id.items()},
            before.offset) == snapshot
    assert before.topic("x") is None and after.topic("x") is not None


def test_image_maps_are_read_only():
    image = orders_image()
    with pytest.raises(TypeError):
        image.brokers[9] = None  # type: ignore[index]
    with pytest.raises(TypeError):
        image.topic("orders").configs["retention.ms"] = "1"  # type: ignore[index,union-attr]
    with pytest.raises(TypeError):
        image.topic("orders").partitions[0] = None  # type: ignore[index,union-attr]


def test_config_set_and_delete_back_to_default():
    image = orders_image().apply([
        ConfigRecord("id-orders", "cleanup.policy", "delete"),
        ConfigRecord("id-orders", "retention.ms", None),
    ])
    assert dict(image.topic("orders").configs) == {"cleanup.policy": "delete"}
    # Deleting a key that is not set is harmless.
    again = image.apply([ConfigRecord("id-orders", "retention.ms", None)])
    assert dict(again.topic("orders").configs) == {"cleanup.policy": "delete"}


def test_partition_change_replaces_state():
    image = orders_image().apply([
        partition("id-orders", 0, (1, 2), isr=(2,), leader=2, leader_epoch=1, partition_epoch=1)
    ])
    assert image.topic("orders").partitions[0] == PartitionImage(0, (1, 2), (2,), 2, 1, 1)


def test_remove_topic_frees_the_name():
    image = orders_image().apply([RemoveTopicRecord("id-orders")])
    assert image.topic("orders") is None and "id-orders" not in image.topics_by_id
    recreated = image.apply([TopicRecord("id-new", "orders")])
    assert recreated.topic("orders").topic_id == "id-new"
    assert dict(recreated.topic("orders").partitions) == {}


def test_apply_no_records_is_the_same_image():
    image = orders_image()
    assert image.apply([]) is image


def test_image_equality_follows_content():
    assert orders_image() == orders_image()
    assert orders_image() != orders_image().apply([RemoveTopicRecord("id-orders")])


@pytest.mark.parametrize(
    "records",
    [
        [TopicRecord("id-orders", "other")],  # id taken
        [TopicRecord("id-2", "orders")],  # name taken
        [ConfigRecord("missing", "retention.ms", "1")],
        [partition("missing", 0)],
        [RemoveTopicRecord("missing")],
        [RemoveTopicRecord("id-orders"), RemoveTopicRecord("id-orders")],
        [partition("id-orders", 0, (1, 2), isr=(3,), leader=3)],  # isr outside replicas
        [partition("id-orders", 0, (1, 2), isr=(1,), leader=2)],  # leader outside isr
        [partition("id-orders", 0, (), isr=(), leader=-1)],  # no replicas
        [partition("id-orders", 0, (1, 2), leader_epoch=1, partition_epoch=1),
         partition("id-orders", 0, (1, 2), leader_epoch=0, partition_epoch=2)],  # epoch back
        [partition("id-orders", 0, (1, 2), leader_epoch=1, partition_epoch=1),
         partition("id-orders", 0, (1, 2), leader_epoch=1, partition_epoch=0)],
        ["not a record"],
    ],
)
def test_records_that_do_not_fit_raise_and_change_nothing(records):
    image = orders_image()
    with pytest.raises(ValueError):
        image.apply(records)
    assert image == orders_image()


def test_leaderless_partition_is_allowed():
    image = orders_image().apply([
        partition("id-orders", 0, (1, 2), isr=(), leader=-1, leader_epoch=1, partition_epoch=1)
    ])
    assert image.topic("orders").partitions[0].leader == -1


def test_apply_is_deterministic():
    records = [
        RegisterBrokerRecord(1, "h", 1, None), TopicRecord("a", "a"), TopicRecord("b", "b"),
        partition("a", 0), RemoveTopicRecord("b"), ConfigRecord("a", "retention.ms", "1"),
    ]
    assert EMPTY.apply(records) == EMPTY.apply(records[:3]).apply(records[3:])


# -- fencing and partition changes ------------------------------------------------------

def change(index: int, leader: int, isr: tuple[int, ...], leader_epoch: int,
           partition_epoch: int, topic_id: str = "id-orders") -> PartitionChangeRecord:
    return PartitionChangeRecord(topic_id, index, leader, isr, leader_epoch, partition_epoch)


def test_registration_fences_until_unfenced_and_fence_takes_it_back():
    image = orders_image()
    assert image.brokers[1].fenced and image.brokers[2].fenced
    unfenced = image.apply([UnfenceBrokerRecord(1)])
    assert not unfenced.brokers[1].fenced and unfenced.brokers[2].fenced
    twice = unfenced.apply([UnfenceBrokerRecord(1)])  # harmless: counted, nothing changes
    assert twice.brokers == unfenced.brokers and twice.offset == unfenced.offset + 1
    fenced = unfenced.apply([FenceBrokerRecord(1)])
    assert fenced.brokers[1] == BrokerImage(1, "h1", 9092, None, fenced=True, epoch=1)
    assert not unfenced.brokers[1].fenced  # the old image is unchanged


def test_reregistration_updates_endpoint_and_leaves_the_broker_fenced():
    image = orders_image().apply([UnfenceBrokerRecord(2)])
    again = image.apply([RegisterBrokerRecord(2, "h2b", 9999, "r9")])
    assert again.brokers[2] == BrokerImage(2, "h2b", 9999, "r9", fenced=True, epoch=image.offset + 1)


def test_partition_change_keeps_replicas_and_steps_epochs():
    image = orders_image()
    moved = image.apply([change(0, 2, (2,), 1, 1)])  # leader changed: both epochs step
    assert moved.topic("orders").partitions[0] == PartitionImage(0, (1, 2), (2,), 2, 1, 1)
    grown = moved.apply([change(0, 2, (2, 1), 1, 2)])  # same leader: leader epoch stays
    assert grown.topic("orders").partitions[0] == PartitionImage(0, (1, 2), (2, 1), 2, 1, 2)
    offline = grown.apply([change(0, -1, (2,), 2, 3)])
    assert offline.topic("orders").partitions[0].leader == -1
    assert offline.topic("orders").partitions[1] is image.topic("orders").partitions[1]


@pytest.mark.parametrize(
    "records",
    [
        [FenceBrokerRecord(9)],  # not registered
        [UnfenceBrokerRecord(9)],
        [change(5, 1, (1,), 0, 1)],  # unknown partition
        [change(0, 1, (1,), 0, 1, topic_id="missing")],  # unknown topic
        [change(0, 1, (1, 2), 0, 0)],  # partition epoch does not step
        [change(0, 1, (1, 2), 0, 2)],  # partition epoch skips
        [change(0, 1, (1,), 1, 1)],  # leader unchanged but leader epoch bumped
        [change(0, 2, (1, 2), 0, 1)],  # leader changed but leader epoch kept
        [change(0, 2, (1, 2), 2, 1)],  # leader epoch skips
        [change(0, 1, (1, 3), 0, 1)],  # isr outside replicas
        [change(0, 2, (1,), 1, 1)],  # leader outside isr
        [change(0, -1, (), 1, 1)],  # empty isr
        [change(0, 2, (2,), 1, 1), change(0, 2, (2,), 1, 1)],  # replayed twice
    ],
)
def test_lifecycle_records_that_do_not_fit_raise_and_change_nothing(records):
    image = orders_image()
    with pytest.raises(ValueError):
        image.apply(records)
    assert image == orders_image()
