"""Kafka's murmur2 partitioner and the sticky choice for unkeyed records."""

from __future__ import annotations

import random

import pytest

from cluster.client.partitioner import StickyPartitions, murmur2, partition_for_key

# Apache Kafka's UtilsTest.testMurmur2 (the Java client's own vectors).
KAFKA_MURMUR2_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}

# Partitions the Java DefaultPartitioner picks among 1000 partitions.
KAFKA_PARTITION_VECTORS = {b"": 681, b"a": 524, b"ab": 434, b"abc": 107, b"123456789": 566, b"\x00 ": 742}


@pytest.mark.parametrize("key, expected", sorted(KAFKA_MURMUR2_VECTORS.items()))
def test_murmur2_matches_the_java_client(key: bytes, expected: int) -> None:
    assert murmur2(key) == expected


@pytest.mark.parametrize("key, expected", sorted(KAFKA_PARTITION_VECTORS.items()))
def test_keyed_partition_matches_the_java_client(key: bytes, expected: int) -> None:
    assert partition_for_key(key, 1000) == expected


def test_keyed_partition_is_stable_and_in_range() -> None:
    for n in (1, 2, 3, 7, 16):
        for i in range(200):
            key = f"key-{i}".encode()
            p = partition_for_key(key, n)
            assert 0 <= p < n
            assert p == (murmur2(key) & 0x7FFFFFFF) % n


def test_sticky_partition_moves_only_when_its_batch_is_sent() -> None:
    sticky = StickyPartitions(random.Random(7))
    first = sticky.choose("t", 4)
    assert sticky.current["t"] == first
    other = (first + 1) % 4
    # A batch of another partition being sent does not move the sticky choice.
    assert sticky.next_partition("t", other, 4) == first
    seen = set()
    current = first
    for _ in range(50):
        nxt = sticky.next_partition("t", current, 4)
        assert nxt != current, "the topic must move to a different partition"
        assert 0 <= nxt < 4
        seen.add(nxt)
        current = nxt
    assert seen == {0, 1, 2, 3}


def test_sticky_with_one_partition_stays_put() -> None:
    sticky = StickyPartitions(random.Random(1))
    assert sticky.choose("t", 1) == 0
    assert sticky.next_partition("t", 0, 1) == 0
