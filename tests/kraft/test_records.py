"""Metadata records: every type round-trips through bytes; anything else is a ValueError."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kraft.records import (
    ConfigRecord,
    FenceBrokerRecord,
    PartitionChangeRecord,
    PartitionRecord,
    RECORD_TYPES,
    RegisterBrokerRecord,
    RemoveTopicRecord,
    TopicRecord,
    UnfenceBrokerRecord,
    decode_record,
    encode_record,
)

SAMPLES = [
    RegisterBrokerRecord(broker_id=1, host="127.0.0.1", port=9092, rack=None),
    RegisterBrokerRecord(broker_id=0, host="node-a", port=1, rack="rack-1"),
    TopicRecord(topic_id="b5d3c0de", name="orders"),
    ConfigRecord(topic_id="b5d3c0de", name="retention.ms", value="1000"),
    ConfigRecord(topic_id="b5d3c0de", name="retention.ms", value=None),
    ConfigRecord(topic_id="b5d3c0de", name="cleanup.policy", value=""),
    PartitionRecord(topic_id="b5d3c0de", partition=3, replicas=(1, 2, 3), isr=(2, 1),
                    leader=2, leader_epoch=4, partition_epoch=7),
    PartitionRecord(topic_id="b5d3c0de", partition=0, replicas=(1,), isr=(),
                    leader=-1, leader_epoch=0, partition_epoch=0),
    RemoveTopicRecord(topic_id="b5d3c0de"),
    PartitionChangeRecord(topic_id="b5d3c0de", partition=3, leader=1, isr=(1, 3),
                          leader_epoch=5, partition_epoch=8),
    PartitionChangeRecord(topic_id="b5d3c0de", partition=0, leader=-1, isr=(2,),
                          leader_epoch=1, partition_epoch=1),
    FenceBrokerRecord(broker_id=2),
    UnfenceBrokerRecord(broker_id=0),
]


@pytest.mark.parametrize("record", SAMPLES, ids=lambda r: type(r).__name__)
def test_round_trip(record):
    data = encode_record(record)
    assert isinstance(data, bytes)
    decoded = decode_record(data)
    assert decoded == record
    assert type(decoded) is type(record)


def test_every_record_type_is_sampled():
    assert {type(r) for r in SAMPLES} == set(RECORD_TYPES.values())


def test_type_numbers_are_kafkas():
    assert {cls.__name__: t for t, cls in RECORD_TYPES.items()} == {
        "RegisterBrokerRecord": 0, "TopicRecord": 2, "PartitionRecord": 3,
        "ConfigRecord": 4, "PartitionChangeRecord": 5, "RemoveTopicRecord": 9,
        "UnfenceBrokerRecord": 16, "FenceBrokerRecord": 17,
    }


def test_new_record_encodings_are_positional():
    assert msgpack.unpackb(encode_record(SAMPLES[9])) == [5, 0, "b5d3c0de", 3, 1, [1, 3], 5, 8]
    assert msgpack.unpackb(encode_record(FenceBrokerRecord(7))) == [17, 0, 7]
    assert msgpack.unpackb(encode_record(UnfenceBrokerRecord(7))) == [16, 0, 7]


def test_decoded_sequences_are_tuples_and_records_hashable():
    record = decode_record(encode_record(SAMPLES[6]))
    assert record.replicas == (1, 2, 3) and isinstance(record.isr, tuple)
    assert hash(record) == hash(SAMPLES[6])


def test_lists_given_in_code_become_tuples():
    record = PartitionRecord("t", 0, [1, 2], [1], 1, 0, 0)
    assert record.replicas == (1, 2) and record.isr == (1,)


@pytest.mark.parametrize(
    "values, why",
    [
        ([99, 0, "x"], "unknown type"),
        ([2, 1, "id", "name"], "unknown version"),
        ([2, True, "id", "name"], "bool version"),
        ([True, 0, "id", "name"], "bool type"),
        ([2, 0, "id"], "too few fields"),
        ([2, 0, "id", "name", "extra"], "too many fields"),
        ([2, 0, "", "name"], "empty topic id"),
        ([2, 0, "id", 5], "name not a string"),
        ([0, 0, -1, "h", 9092, None], "negative broker id"),
        ([0, 0, 1, "h", 70000, None], "port out of range"),
        ([0, 0, True, "h", 9092, None], "bool broker id"),
        ([0, 0, 1, "h", 9092, 7], "rack not a string"),
        ([3, 0, "id", 0, [1, 1], [1], 1, 0, 0], "duplicate replica"),
        ([3, 0, "id", 0, [1], [1], -2, 0, 0], "leader below -1"),
        ([3, 0, "id", -1, [1], [1], 1, 0, 0], "negative partition"),
        ([3, 0, "id", 0, "12", [1], 1, 0, 0], "replicas not a list"),
        ([3, 0, "id", 0, [1], [1], 1, -1, 0], "negative leader epoch"),
        ([4, 0, "id", "k", 5], "config value not a string"),
        ([5, 0, "id", 0, -2, [1], 0, 1], "change leader below -1"),
        ([5, 0, "id", 0, 1, [1, 1], 0, 1], "change isr duplicate"),
        ([5, 0, "id", 0, 1, [1], -1, 1], "change negative leader epoch"),
        ([5, 0, "id", 0, 1, [1], 0], "change too few fields"),
        ([5, 1, "id", 0, 1, [1], 0, 1], "change unknown version"),
        ([17, 0, -1], "fence negative broker"),
        ([17, 0, True], "fence bool broker"),
        ([16, 0, "1"], "unfence broker not an int"),
        ([16, 0, 1, 2], "unfence too many fields"),
        ({"type": 2}, "a map"),
        ([2], "no version"),
        ("TopicRecord", "a string"),
    ],
)
def test_malformed_values_are_refused(values, why):
    with pytest.raises(ValueError):
        decode_record(msgpack.packb(values, use_bin_type=True))


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x92\x02", encode_record(SAMPLES[2]) + b"\x00"])
def test_malformed_bytes_are_refused(data):
    with pytest.raises(ValueError):
        decode_record(data)


def test_not_bytes_is_refused():
    with pytest.raises(ValueError):
        decode_record("abc")  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_decode_or_raise_value_error(data):
    try:
        record = decode_record(data)
    except ValueError:
        return
    # The rare bytes that do decode are a real record that survives a round trip.
    assert type(record) in RECORD_TYPES.values()
    assert decode_record(encode_record(record)) == record


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(SAMPLES), st.data())
def test_bit_flips_never_escape_as_other_exceptions(record, data):
    encoded = bytearray(encode_record(record))
    index = data.draw(st.integers(0, len(encoded) - 1))
    encoded[index] ^= 1 << data.draw(st.integers(0, 7))
    try:
        decode_record(bytes(encoded))
    except ValueError:
        pass


names = st.text(min_size=1, max_size=20)
broker_ids = st.integers(0, 2**31 - 1)


@settings(max_examples=100, deadline=None)
@given(
    st.one_of(
        st.builds(RegisterBrokerRecord, broker_ids, names, st.integers(1, 65535),
                  st.none() | names),
        st.builds(TopicRecord, names, names),
        st.builds(ConfigRecord, names, names, st.none() | st.text(max_size=20)),
        st.builds(RemoveTopicRecord, names),
        st.builds(FenceBrokerRecord, broker_ids),
        st.builds(UnfenceBrokerRecord, broker_ids),
        st.builds(
            lambda t, p, isr, leader_epoch, partition_epoch: PartitionChangeRecord(
                t, p, isr[0], isr, leader_epoch, partition_epoch),
            names, st.integers(0, 10_000),
            st.lists(broker_ids, min_size=1, max_size=5, unique=True).map(tuple),
            st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1),
        ),
        st.builds(
            lambda t, p, replicas, leader_epoch, partition_epoch: PartitionRecord(
                t, p, replicas, replicas[:1], replicas[0], leader_epoch, partition_epoch),
            names, st.integers(0, 10_000),
            st.lists(broker_ids, min_size=1, max_size=5, unique=True).map(tuple),
            st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1),
        ),
    )
)
def test_round_trip_generated(record):
    assert decode_record(encode_record(record)) == record


def test_a_register_broker_record_of_version_0_still_reads() -> None:
    """Metadata logs written before broker epochs (RegisterBrokerRecord v0, four fields)."""
    import msgpack

    old = msgpack.packb([0, 0, 3, "h3", 9092, None])
    assert decode_record(old) == RegisterBrokerRecord(3, "h3", 9092, None, "")
    with pytest.raises(ValueError):
        decode_record(msgpack.packb([0, 0, 3, "h3", 9092, None, "run"]))  # v0 has four fields
    with pytest.raises(ValueError):
        decode_record(msgpack.packb([0, 2, 3, "h3", 9092, None, "run"]))
