"""Choosing a partition for a record: Kafka's murmur2 for keyed records, a sticky choice for
unkeyed ones.

Keyed records go to ``(murmur2(key) & 0x7fffffff) % num_partitions`` exactly as the Java
client computes it, so a key lands on the same partition whichever client wrote it.
Unkeyed records stick to one partition of their topic until the batch they fill is handed
to the sender; then the topic moves to another partition (Kafka's sticky partitioner,
KIP-480), which keeps batches large instead of spreading one record per partition.

``StickyPartitions`` owns only the current sticky choice per topic; the caller (the
producer's accumulator, under its lock) tells it when a batch was sent.
"""

from __future__ import annotations

import random
import struct
from functools import lru_cache

MURMUR2_SEED = 0x9747B28C
MURMUR2_M = 0x5BD1E995
MASK_32 = 0xFFFFFFFF
KEY_HASH_CACHE_ENTRIES = 65536


def murmur2(data: bytes) -> int:
    """Kafka's ``Utils.murmur2``: the 32-bit MurmurHash2 of ``data``, as a signed int."""
    length = len(data)
    m = MURMUR2_M
    h = (MURMUR2_SEED ^ length) & MASK_32
    words = length >> 2
    if words:
        for k in struct.unpack_from(f"<{words}I", data):
            k = (k * m) & MASK_32
            k ^= k >> 24
            k = (k * m) & MASK_32
            h = ((h * m) & MASK_32) ^ k
    tail = words << 2
    extra = length & 3
    if extra == 3:
        h ^= data[tail + 2] << 16
    if extra >= 2:
        h ^= data[tail + 1] << 8
    if extra >= 1:
        h ^= data[tail]
        h = (h * m) & MASK_32
    h ^= h >> 13
    h = (h * m) & MASK_32
    h ^= h >> 15
    return h - 0x100000000 if h & 0x80000000 else h


@lru_cache(maxsize=KEY_HASH_CACHE_ENTRIES)
def positive_murmur2(key: bytes) -> int:
    """``murmur2(key) & 0x7fffffff``, cached: applications reuse keys, the hash is pure Python."""
    return murmur2(key) & 0x7FFFFFFF


def partition_for_key(key: bytes, num_partitions: int) -> int:
    return positive_murmur2(key) % num_partitions


class StickyPartitions:
    """The current partition of each topic's unkeyed records.

    ``current`` is a plain dict the producer reads on its hot path; ``next_partition`` moves
    a topic to another partition (chosen by ``rng``) when its sticky batch is sent.
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self.current: dict[str, int] = {}
        self._rng = rng or random.Random()

    def choose(self, topic: str, num_partitions: int) -> int:
        partition = self._rng.randrange(num_partitions)
        self.current[topic] = partition
        return partition

    def next_partition(self, topic: str, sent_partition: int, num_partitions: int) -> int:
        """After the batch of ``sent_partition`` was closed, pick a different partition."""
        if self.current.get(topic) != sent_partition:
            return self.current.get(topic, sent_partition)
        if num_partitions <= 1:
            partition = 0
        else:
            partition = self._rng.randrange(num_partitions - 1)
            if partition >= sent_partition:
                partition += 1
        self.current[topic] = partition
        return partition
