"""A million 100-byte records through the Producer into a 4-partition topic and back
through the Consumer: every record once, in send order per partition, values intact.
Prints the produce and consume rates."""

from __future__ import annotations

import time

import pytest

from cluster.client import Admin, Consumer, NewTopic, Producer

pytestmark = [pytest.mark.integration]

RECORDS = 1_000_000
VALUE_BYTES = 100
PARTITIONS = 4


def value_of(i: int) -> bytes:
    head = b"%010d:" % i
    return head + b"x" * (VALUE_BYTES - len(head))


@pytest.mark.timeout(300)
def test_a_million_records_round_trip(node_factory) -> None:
    node = node_factory()
    with Admin(bootstrap_servers=node.bootstrap) as admin:
        admin.create_topics([NewTopic("million", PARTITIONS)])

    padding = value_of(0)[11:]
    tail = value_of(0)[10:]
    started = time.perf_counter()
    with Producer(bootstrap_servers=node.bootstrap, acks=1) as producer:
        send = producer.send
        last = None
        for i in range(RECORDS):
            last = send("million", b"%010d:" % i + padding)
        producer.flush(timeout=120)
        last.get(timeout=1)
    produce_s = time.perf_counter() - started

    seen = bytearray(RECORDS)
    last_seq = [-1] * PARTITIONS
    last_offset = [-1] * PARTITIONS
    count = 0
    started = time.perf_counter()
    with Consumer("million", bootstrap_servers=node.bootstrap, auto_offset_reset="earliest") as consumer:
        deadline = time.monotonic() + 180
        while count < RECORDS:
            assert time.monotonic() < deadline, f"only {count} records consumed"
            for tp, records in consumer.poll(timeout_ms=500).items():
                p = tp.partition
                for r in records:
                    value = r.value
                    seq = int(value[:10])
                    assert value[10:] == tail, f"record {seq} has a damaged value"
                    assert r.offset == last_offset[p] + 1, f"partition {p} skipped or repeated an offset"
                    assert seq > last_seq[p], f"partition {p} out of send order at offset {r.offset}"
                    assert not seen[seq], f"record {seq} delivered twice"
                    seen[seq] = 1
                    last_seq[p] = seq
                    last_offset[p] = r.offset
                count += len(records)
        consume_s = time.perf_counter() - started
        assert consumer.poll(timeout_ms=300) == {}
    assert count == RECORDS and all(seen)
    print(f"\nproduced {RECORDS / produce_s:,.0f} records/s ({produce_s:.1f} s), "
          f"consumed {RECORDS / consume_s:,.0f} records/s ({consume_s:.1f} s)")
