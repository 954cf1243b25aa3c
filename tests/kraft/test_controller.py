"""Controller decisions: records and per-item results for every success and error path."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kraft.controller import (
    MAX_PARTITIONS_PER_TOPIC,
    CreateTopicRequest,
    ItemResult,
    create_topics,
    delete_topics,
    place_replicas,
    rack_alternated,
    register_broker,
    validate_topic_name,
)
from kraft.image import MetadataImage
from kraft.lifecycle import unfence_broker
from kraft.records import (
    ConfigRecord,
    FenceBrokerRecord,
    PartitionRecord,
    RegisterBrokerRecord,
    RemoveTopicRecord,
    TopicRecord,
    UnfenceBrokerRecord,
)


def cluster(*broker_ids: int, racks: dict[int, str] | None = None) -> MetadataImage:
    """Registered and unfenced brokers (a registration alone leaves a broker fenced)."""
    racks = racks or {}
    return MetadataImage.EMPTY.apply(
        [RegisterBrokerRecord(b, f"host{b}", 9000 + b, racks.get(b)) for b in broker_ids]
        + [UnfenceBrokerRecord(b) for b in broker_ids]
    )


def ids():
    counter = itertools.count()
    return lambda: f"topic-id-{next(counter)}"


def create(image, *requests, **kwargs):
    return create_topics(image, list(requests), new_topic_id=kwargs.pop("new_topic_id", ids()),
                         **kwargs)


# -- topic names -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["a", "orders", "Orders-2024_v1.x", "a" * 249, "...", "-", "_"])
def test_legal_topic_names(name):
    assert validate_topic_name(name) is None


@pytest.mark.parametrize("name", ["", ".", "..", "a" * 250, "has space", "slash/x", "é",
                                  "tab\t", "new\nline", "orders\n", "star*", None])
def test_illegal_topic_names(name):
    message = validate_topic_name(name)
    assert isinstance(message, str) and message


# -- placement -------------------------------------------------------------------------

def test_placement_example():
    assert place_replicas([1, 2, 3], 4, 2, 0) == [(1, 2), (2, 3), (3, 1), (1, 3)]


def test_placement_start_index_rotates_leaders():
    assert [r[0] for r in place_replicas([1, 2, 3], 3, 1, 1)] == [2, 3, 1]


def test_placement_single_broker():
    assert place_replicas([7], 3, 1, 5) == [(7,), (7,), (7,)]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(0, 1000), min_size=1, max_size=9, unique=True),
    st.integers(0, 60),
    st.data(),
)
def test_placement_properties(brokers, num_partitions, data):
    replication_factor = data.draw(st.integers(1, len(brokers)))
    start_index = data.draw(st.integers(0, 100))
    placement = place_replicas(brokers, num_partitions, replication_factor, start_index)
    assert len(placement) == num_partitions
    for replicas in placement:
        assert len(replicas) == replication_factor
        assert len(set(replicas)) == replication_factor  # no broker twice in a partition
        assert set(replicas) <= set(brokers)
    leaders = Counter(replicas[0] for replicas in placement)
    fair = num_partitions / len(brokers)
    for broker in brokers:
        assert abs(leaders[broker] - fair) <= 1  # leaders balanced within one
    # Every replica (leader or follower) is spread too: within one round per broker.
    replica_counts = Counter(b for replicas in placement for b in replicas)
    fair_replicas = num_partitions * replication_factor / len(brokers)
    for broker in brokers:
        assert abs(replica_counts[broker] - fair_replicas) <= replication_factor


# -- create_topics ---------------------------------------------------------------------

def test_create_success_records():
    image = cluster(1, 2, 3)
    records, results = create(
        image, CreateTopicRequest("orders", 3, 2, {"retention.ms": "1000", "cleanup.policy": "delete"})
    )
    assert results == [ItemResult("orders")]
    assert records[0] == TopicRecord("topic-id-0", "orders")
    assert records[1:3] == [
        ConfigRecord("topic-id-0", "cleanup.policy", "delete"),
        ConfigRecord("topic-id-0", "retention.ms", "1000"),
    ]
    partitions = records[3:]
    assert [p.partition for p in partitions] == [0, 1, 2]
    for p in partitions:
        assert isinstance(p, PartitionRecord)
        assert len(p.replicas) == 2 and p.isr == p.replicas and p.leader == p.replicas[0]
        assert p.leader_epoch == 0 and p.partition_epoch == 0
    assert sorted(p.leader for p in partitions) == [1, 2, 3]
    # The controller did not change the image; applying the records does.
    assert image.topic("orders") is None
    after = image.apply(records)
    assert len(after.topic("orders").partitions) == 3
    assert dict(after.topic("orders").configs) == {"retention.ms": "1000", "cleanup.policy": "delete"}


def test_create_several_topics_spreads_leaders_across_topics():
    image = cluster(1, 2, 3)
    records, results = create(image, *[CreateTopicRequest(f"t{i}", 1, 1, {}) for i in range(3)])
    assert all(r.error is None for r in results)
    assert sorted(r.leader for r in records if isinstance(r, PartitionRecord)) == [1, 2, 3]


def test_create_uses_start_index():
    records, _ = create(cluster(1, 2, 3), CreateTopicRequest("t", 1, 1, {}), start_index=2)
    assert [r.leader for r in records if isinstance(r, PartitionRecord)] == [3]


def test_create_new_topic_id_called_only_on_success():
    calls = []

    def new_id():
        calls.append(1)
        return f"id{len(calls)}"

    _, results = create(cluster(1), CreateTopicRequest("ok", 1, 1, {}),
                        CreateTopicRequest("bad name", 1, 1, {}), new_topic_id=new_id)
    assert [r.error for r in results] == [None, "INVALID_TOPIC_EXCEPTION"]
    assert len(calls) == 1


def error_of(image, request, **kwargs):
    records, results = create(image, request, **kwargs)
    assert len(results) == 1 and results[0].name == request.name
    assert records == []  # a failed item emits nothing
    assert results[0].message
    return results[0].error


def test_create_invalid_name():
    assert error_of(cluster(1), CreateTopicRequest("bad/name", 1, 1, {})) == "INVALID_TOPIC_EXCEPTION"


def test_create_existing_topic():
    image = cluster(1).apply([TopicRecord("x", "orders")])
    assert error_of(image, CreateTopicRequest("orders", 1, 1, {})) == "TOPIC_ALREADY_EXISTS"


def test_create_name_colliding_with_existing():
    image = cluster(1).apply([TopicRecord("x", "my.topic")])
    assert error_of(image, CreateTopicRequest("my_topic", 1, 1, {})) == "INVALID_TOPIC_EXCEPTION"


def test_create_duplicate_within_request():
    records, results = create(cluster(1), CreateTopicRequest("t", 1, 1, {}),
                              CreateTopicRequest("t", 2, 1, {}), CreateTopicRequest("t.x", 1, 1, {}),
                              CreateTopicRequest("t_x", 1, 1, {}))
    assert [r.error for r in results] == [None, "TOPIC_ALREADY_EXISTS", None, "INVALID_TOPIC_EXCEPTION"]
    assert sum(isinstance(r, TopicRecord) for r in records) == 2
    cluster(1).apply(records)  # what was emitted applies cleanly


@pytest.mark.parametrize("num_partitions", [0, -1, MAX_PARTITIONS_PER_TOPIC + 1, "3", True, None])
def test_create_invalid_partitions(num_partitions):
    assert error_of(cluster(1), CreateTopicRequest("t", num_partitions, 1, {})) == "INVALID_PARTITIONS"


def test_create_max_partitions_argument():
    assert error_of(cluster(1), CreateTopicRequest("t", 5, 1, {}), max_partitions=4) == "INVALID_PARTITIONS"
    records, results = create(cluster(1), CreateTopicRequest("t", 4, 1, {}), max_partitions=4)
    assert results[0].error is None and len(records) == 5


@pytest.mark.parametrize("replication_factor", [0, -1, 3, "1", None])
def test_create_invalid_replication_factor(replication_factor):
    request = CreateTopicRequest("t", 1, replication_factor, {})
    assert error_of(cluster(1, 2), request) == "INVALID_REPLICATION_FACTOR"


def test_create_counts_only_unfenced_brokers():
    image = cluster(1, 2)
    fenced = MetadataImage(
        brokers={**image.brokers, 2: image.brokers[2].__class__(2, "h", 1, None, fenced=True)},
        topics_by_id={}, offset=image.offset,
    )
    assert error_of(fenced, CreateTopicRequest("t", 1, 2, {})) == "INVALID_REPLICATION_FACTOR"
    records, _ = create(fenced, CreateTopicRequest("t", 4, 1, {}))
    assert {r.leader for r in records if isinstance(r, PartitionRecord)} == {1}


def test_create_with_no_brokers():
    assert error_of(MetadataImage.EMPTY, CreateTopicRequest("t", 1, 1, {})) == "INVALID_REPLICATION_FACTOR"


@pytest.mark.parametrize("configs", [{"retention.ms": "-5"}, {"no.such.key": "1"},
                                     {"cleanup.policy": "compact"}, {"retention.ms": 5}, None,
                                     [("retention.ms", "5")]])
def test_create_invalid_config(configs):
    assert error_of(cluster(1), CreateTopicRequest("t", 1, 1, configs)) == "INVALID_CONFIG"


def test_create_mixed_request_keeps_order():
    image = cluster(1).apply([TopicRecord("x", "exists")])
    _, results = create(image, CreateTopicRequest("exists", 1, 1, {}),
                        CreateTopicRequest("fresh", 1, 1, {}), CreateTopicRequest("", 1, 1, {}))
    assert [(r.name, r.error) for r in results] == [
        ("exists", "TOPIC_ALREADY_EXISTS"), ("fresh", None), ("", "INVALID_TOPIC_EXCEPTION")]


# -- delete_topics ---------------------------------------------------------------------

def test_delete_topics():
    image = cluster(1).apply([TopicRecord("id-a", "a"), TopicRecord("id-b", "b")])
    records, results = delete_topics(image, ["a", "missing", "a"])
    assert records == [RemoveTopicRecord("id-a")]
    assert [(r.name, r.error) for r in results] == [
        ("a", None), ("missing", "UNKNOWN_TOPIC_OR_PARTITION"), ("a", "UNKNOWN_TOPIC_OR_PARTITION")]
    assert results[1].message
    after = image.apply(records)
    assert after.topic("a") is None and after.topic("b") is not None


def test_delete_nothing():
    assert delete_topics(cluster(1), []) == ([], [])


# -- register_broker -------------------------------------------------------------------

def test_register_new_broker():
    records = register_broker(MetadataImage.EMPTY, 1, "h", 9092, "r1")
    assert records == [RegisterBrokerRecord(1, "h", 9092, "r1")]


def test_register_same_broker_again_is_a_no_op():
    image = MetadataImage.EMPTY.apply(register_broker(MetadataImage.EMPTY, 1, "h", 9092, None))
    assert register_broker(image, 1, "h", 9092, None) == []


@pytest.mark.parametrize("host, port, rack", [("h2", 9092, None), ("h", 9093, None), ("h", 9092, "r")])
def test_register_changed_broker(host, port, rack):
    image = MetadataImage.EMPTY.apply(register_broker(MetadataImage.EMPTY, 1, "h", 9092, None))
    assert register_broker(image, 1, host, port, rack) == [RegisterBrokerRecord(1, host, port, rack)]


def test_register_fenced_broker_with_same_endpoint_is_a_no_op():
    image = cluster(1).apply([FenceBrokerRecord(1)])
    assert register_broker(image, 1, "host1", 9001, None) == []


def test_registration_leaves_the_broker_fenced_until_unfenced():
    image = MetadataImage.EMPTY.apply(register_broker(MetadataImage.EMPTY, 1, "h", 9092, None))
    assert image.brokers[1].fenced
    assert error_of(image, CreateTopicRequest("t", 1, 1, {})) == "INVALID_REPLICATION_FACTOR"
    image = image.apply(unfence_broker(image, 1))
    assert not image.brokers[1].fenced
    records, results = create(image, CreateTopicRequest("t", 1, 1, {}))
    assert results[0].error is None and image.apply(records).topic("t") is not None


def test_unfenced_broker_moving_endpoint_is_fenced_and_loses_leadership():
    image = cluster(1, 2)
    image = image.apply(create(image, CreateTopicRequest("t", 2, 2, {}))[0])
    led_by_1 = [p for p in image.topic("t").partitions.values() if p.leader == 1]
    assert led_by_1
    records = register_broker(image, 1, "moved", 9001, None)
    assert records[0] == FenceBrokerRecord(1)
    assert records[-1] == RegisterBrokerRecord(1, "moved", 9001, None)
    after = image.apply(records)
    assert after.brokers[1].fenced and after.brokers[1].host == "moved"
    for p in after.topic("t").partitions.values():
        assert p.leader == 2 and p.isr == (2,)


def test_fenced_broker_moving_endpoint_only_registers():
    image = cluster(1).apply([FenceBrokerRecord(1)])
    assert register_broker(image, 1, "moved", 1, "r") == [RegisterBrokerRecord(1, "moved", 1, "r")]


# -- rack-aware placement ----------------------------------------------------------------

def test_rack_alternated_example():
    racks = {1: "a", 4: "a", 2: "b", 5: "b", 3: "c"}
    assert rack_alternated([5, 4, 3, 2, 1], racks) == [1, 2, 3, 4, 5]
    assert rack_alternated([1, 2, 3, 4], {1: "a", 2: "a", 3: "b", 4: None}) == [1, 3, 4, 2]


def test_rack_aware_placement_spans_racks_where_plain_placement_does_not():
    racks = {1: "a", 2: "a", 3: "b", 4: "b"}
    plain = place_replicas([1, 2, 3, 4], 8, 2, 0)
    assert any(racks[r[0]] == racks[r[1]] for r in plain)  # the plain order ignores racks
    aware = place_replicas([1, 2, 3, 4], 8, 2, 0, racks)
    assert all(racks[r[0]] != racks[r[1]] for r in aware)


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(st.integers(0, 50), st.sampled_from(["a", "b", "c", None]), min_size=1, max_size=9),
    st.integers(0, 40),
    st.data(),
)
def test_rack_aware_placement_properties(racks, num_partitions, data):
    brokers = sorted(racks)
    replication_factor = data.draw(st.integers(1, len(brokers)))
    start_index = data.draw(st.integers(0, 100))
    placement = place_replicas(brokers, num_partitions, replication_factor, start_index, racks)
    rack_count = len(set(racks.values()))
    assert len(placement) == num_partitions
    for replicas in placement:
        assert len(set(replicas)) == replication_factor and set(replicas) <= set(brokers)
        assert len({racks[b] for b in replicas}) == min(replication_factor, rack_count)
    leaders = Counter(replicas[0] for replicas in placement)
    for broker in brokers:
        assert abs(leaders[broker] - num_partitions / len(brokers)) <= 1


def test_create_places_across_racks_of_unfenced_brokers():
    racks = {1: "a", 2: "a", 3: "b", 4: "b"}
    image = cluster(1, 2, 3, 4, racks=racks)
    records, _ = create(image, CreateTopicRequest("t", 8, 2, {}))
    partitions = [r for r in records if isinstance(r, PartitionRecord)]
    assert len(partitions) == 8
    assert all(racks[p.replicas[0]] != racks[p.replicas[1]] for p in partitions)
    # Fenced brokers get nothing, even when that leaves one rack.
    image = image.apply([FenceBrokerRecord(3), FenceBrokerRecord(4)])
    records, _ = create(image, CreateTopicRequest("u", 4, 2, {}))
    assert {b for r in records if isinstance(r, PartitionRecord) for b in r.replicas} == {1, 2}
