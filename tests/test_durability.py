"""kill -9 of a node in the middle of an acks=1 produce stream loses nothing it acknowledged.

The producer sends unique values without retries, so a record can appear at most once;
after the kill the node restarts on the same data dir and a consumer reads every partition
from the beginning.
"""

from __future__ import annotations

import threading

import pytest

from cluster.client import Admin, Consumer, NewTopic, Producer, TopicPartition
from cluster.launcher import wait_until

PARTITIONS = 2
ACKED_BEFORE_KILL = 20_000


@pytest.mark.timeout(180)
def test_kill9_mid_stream_keeps_every_acknowledged_record(node_factory) -> None:
    node = node_factory()
    admin = Admin(bootstrap_servers=node.bootstrap)
    admin.create_topics([NewTopic("stream", PARTITIONS)])
    admin.close()

    producer = Producer(bootstrap_servers=node.bootstrap, acks=1, retries=0, linger_ms=1,
                        request_timeout_ms=5000, delivery_timeout_ms=10000)
    sent: list[tuple[int, object]] = []
    acked_count = 0
    lock = threading.Lock()
    stop = threading.Event()

    def on_ack(_metadata) -> None:
        nonlocal acked_count
        with lock:
            acked_count += 1

    def send_loop() -> None:
        i = 0
        while not stop.is_set() and i < 2_000_000:
            try:
                future = producer.send("stream", str(i).encode())
            except Exception:
                break
            future.add_callback(on_ack)
            sent.append((i, future))
            i += 1

    sender = threading.Thread(target=send_loop, daemon=True)
    sender.start()
    wait_until(lambda: acked_count >= ACKED_BEFORE_KILL, 60, message="acknowledged records before the kill")
    node.kill9()
    stop.set()
    sender.join(timeout=30)
    producer.close(timeout=30)

    acked = {}
    for value, future in sent:
        if future.done() and future.exception() is None:
            md = future.get()
            acked[(md.partition, md.offset)] = value
    assert len(acked) >= ACKED_BEFORE_KILL

    node.start()
    tps = [TopicPartition("stream", p) for p in range(PARTITIONS)]
    stored: dict[tuple[int, int], int] = {}
    with Consumer(bootstrap_servers=node.bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign(tps)
        ends = consumer.end_offsets(tps)
        consumer.seek_to_beginning(*tps)

        def drained() -> bool:
            for tp, records in consumer.poll(timeout_ms=200).items():
                for r in records:
                    assert (r.partition, r.offset) not in stored, "offset delivered twice"
                    stored[(r.partition, r.offset)] = int(r.value)
            return all(consumer.position(tp) >= ends[tp] for tp in tps)

        wait_until(drained, 60, interval_s=0, message="draining the restarted node")

    for tp in tps:
        offsets = sorted(o for (p, o) in stored if p == tp.partition)
        assert offsets == list(range(ends[tp])), f"offsets of partition {tp.partition} are not dense"
    lost = {k: v for k, v in acked.items() if stored.get(k) != v}
    assert not lost, f"{len(lost)} acknowledged records lost or changed, e.g. {list(lost.items())[:5]}"
    values = list(stored.values())
    assert len(values) == len(set(values)), "a value was stored twice"
