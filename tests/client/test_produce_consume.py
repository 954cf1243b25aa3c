"""Producer and consumer against a real node: what goes in comes out, once, in order."""

from __future__ import annotations

import collections
import threading
import time

import pytest

from cluster.client import Consumer, Producer, TopicPartition, errors
from cluster.client.partitioner import partition_for_key
from tests.client.conftest import drain

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_keyed_and_unkeyed_records_with_headers_come_back_intact(shared_node, make_topic) -> None:
    topic = make_topic(4)
    sent = []
    with Producer(bootstrap_servers=shared_node.bootstrap, acks="all", linger_ms=2, batch_size=4096) as producer:
        for i in range(3000):
            key = f"user-{i % 37}".encode() if i % 2 else None
            value = f"value-{i}".encode()
            headers = [("seq", str(i).encode()), ("kind", b"odd" if i % 2 else b"even")] if i % 3 == 0 else None
            sent.append((key, value, headers, producer.send(topic, value=value, key=key, headers=headers)))
        producer.flush(timeout=60)
    metadata = [future.get(timeout=1) for *_, future in sent]
    assert all(m.topic == topic and m.offset >= 0 for m in metadata)
    for (key, *_), m in zip(sent, metadata):
        if key is not None:
            assert m.partition == partition_for_key(key, 4)
    assert len({(m.partition, m.offset) for m in metadata}) == len(sent), "two records share an offset"

    with Consumer(topic, bootstrap_servers=shared_node.bootstrap, auto_offset_reset="earliest") as consumer:
        records = drain(consumer, len(sent))
        assert consumer.poll(timeout_ms=300) == {}, "every record exactly once"
    by_position = {(r.partition, r.offset): r for r in records}
    assert len(by_position) == len(sent)
    for (key, value, headers, _), m in zip(sent, metadata):
        r = by_position[(m.partition, m.offset)]
        assert (r.topic, r.key, r.value) == (topic, key, value)
        assert r.headers == (tuple(headers) if headers else ())
        assert r.timestamp == m.timestamp
    per_partition = collections.defaultdict(list)
    for r in records:
        per_partition[r.partition].append(r)
    for partition, rs in per_partition.items():
        assert [r.offset for r in rs] == sorted(r.offset for r in rs), f"partition {partition} out of order"
        sent_order = [v for (k, v, h, _), m in zip(sent, metadata) if m.partition == partition]
        assert [r.value for r in rs] == sent_order, "per-partition order differs from send order"


def test_str_values_and_keys_are_utf8(shared_node, make_topic) -> None:
    topic = make_topic()
    with Producer(bootstrap_servers=shared_node.bootstrap) as producer:
        producer.send(topic, value="größe", key="ключ").get(timeout=30)
        producer.send(topic).get(timeout=30)  # a record with neither key nor value
    with Consumer(topic, bootstrap_servers=shared_node.bootstrap) as consumer:
        first, second = drain(consumer, 2)
    assert (first.key, first.value) == ("ключ".encode(), "größe".encode())
    assert (second.key, second.value) == (None, None)


@pytest.mark.parametrize("acks", [0, 1, -1, "all"])
def test_every_acks_setting_delivers(shared_node, make_topic, acks) -> None:
    topic = make_topic(2)
    with Producer(bootstrap_servers=shared_node.bootstrap, acks=acks) as producer:
        futures = [producer.send(topic, value=b"%d" % i, partition=i % 2) for i in range(200)]
        producer.flush(timeout=30)
    offsets = [f.get(timeout=1).offset for f in futures]
    if acks == 0:
        assert set(offsets) == {-1}, "acks=0 learns no offsets"
    else:
        assert sorted(offsets[0::2]) == list(range(100)) and sorted(offsets[1::2]) == list(range(100))
    with Consumer(topic, bootstrap_servers=shared_node.bootstrap) as consumer:
        values = sorted(int(r.value) for r in drain(consumer, 200))
    assert values == list(range(200))


def test_send_refuses_bad_records_at_once(shared_node, make_topic) -> None:
    topic = make_topic(2)
    with Producer(bootstrap_servers=shared_node.bootstrap, max_request_size=10_000, max_block_ms=500) as producer:
        with pytest.raises(errors.MessageTooLargeError):
            producer.send(topic, value=b"x" * 20_000)
        with pytest.raises(errors.UnknownTopicOrPartitionError):
            producer.send(topic, value=b"x", partition=2)
        with pytest.raises(TypeError):
            producer.send(topic, value=12345)
        started = time.monotonic()
        with pytest.raises(errors.KafkaTimeoutError, match="UNKNOWN_TOPIC_OR_PARTITION"):
            producer.send("no-such-topic", value=b"x")
        assert time.monotonic() - started < 10
        assert producer.partitions_for(topic) == {0, 1}
        assert producer.send(topic, value=b"fine").get(timeout=30).offset == 0
    with pytest.raises(errors.IllegalStateError):
        producer.send(topic, value=b"after close")


def test_a_batch_over_the_topics_message_limit_is_split_not_failed(shared_node, make_topic) -> None:
    """batch_size above the topic's max.message.bytes: the node refuses the batch as
    MESSAGE_TOO_LARGE and the producer sends it again as smaller wire batches; only a record
    too large by itself fails. Offsets stay those of the records' order."""
    topic = make_topic(1, {"max.message.bytes": "2048"})
    with Producer(bootstrap_servers=shared_node.bootstrap, acks="all", linger_ms=50, batch_size=64 * 1024) as producer:
        futures = [producer.send(topic, value=b"%04d" % i + b"." * 96) for i in range(300)]
        producer.flush(timeout=30)
        assert [f.get(timeout=1).offset for f in futures] == list(range(300))
        too_big = producer.send(topic, value=b"x" * 4000)
        with pytest.raises(errors.MessageTooLargeError):
            too_big.get(timeout=30)
        assert producer.metrics()["failed_records"] == 1
    with Consumer(topic, bootstrap_servers=shared_node.bootstrap, auto_offset_reset="earliest") as consumer:
        records = drain(consumer, 300)
    assert [(r.offset, r.value[:4]) for r in records] == [(i, b"%04d" % i) for i in range(300)]


def test_seek_positions_and_offset_lookups(shared_node, make_topic) -> None:
    topic = make_topic(1)
    tp = TopicPartition(topic, 0)
    with Producer(bootstrap_servers=shared_node.bootstrap, linger_ms=0) as producer:
        for i, ts in enumerate([1000, 2000, 3000, 4000]):
            producer.send(topic, value=b"%d" % i, timestamp_ms=ts)
            producer.flush(timeout=30)  # one batch per record: timestamp lookups are exact
    with Consumer(bootstrap_servers=shared_node.bootstrap) as consumer:
        consumer.assign([tp])
        assert consumer.assignment() == {tp}
        assert consumer.beginning_offsets([tp]) == {tp: 0}
        assert consumer.end_offsets([tp]) == {tp: 4}
        found = consumer.offsets_for_times({tp: 2500})
        assert found[tp].offset == 2 and found[tp].timestamp == 3000
        assert consumer.offsets_for_times({tp: 9000}) == {tp: None}

        consumer.seek(tp, 2)
        assert consumer.position(tp) == 2
        assert [r.value for r in drain(consumer, 2)] == [b"2", b"3"]
        assert consumer.position(tp) == 4
        consumer.seek_to_beginning(tp)
        assert consumer.position(tp) == 0
        assert [r.offset for r in drain(consumer, 4)] == [0, 1, 2, 3]
        consumer.seek_to_end(tp)
        assert consumer.position(tp) == 4
        assert consumer.poll(timeout_ms=200) == {}
        consumer.seek(tp, 1)
        for expected in (1, 2, 3):
            got = {}
            deadline = time.monotonic() + 30
            while not got and time.monotonic() < deadline:
                got = consumer.poll(timeout_ms=200, max_records=1)
            assert [r.offset for r in got[tp]] == [expected], "max_records bounds what poll returns"


def test_pause_and_resume(shared_node, make_topic) -> None:
    topic = make_topic(2)
    tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    with Producer(bootstrap_servers=shared_node.bootstrap) as producer:
        for i in range(20):
            producer.send(topic, value=b"%d" % i, partition=i % 2)
    with Consumer(bootstrap_servers=shared_node.bootstrap) as consumer:
        consumer.assign([tp0, tp1])
        consumer.pause(tp1)
        assert consumer.paused() == {tp1}
        records = drain(consumer, 10)
        assert {r.partition for r in records} == {0}
        assert consumer.poll(timeout_ms=300) == {}, "a paused partition returns nothing"
        consumer.resume(tp1)
        assert consumer.paused() == set()
        assert {r.partition for r in drain(consumer, 10)} == {1}


def test_auto_offset_reset_latest_and_none(shared_node, make_topic) -> None:
    topic = make_topic(1)
    tp = TopicPartition(topic, 0)
    with Producer(bootstrap_servers=shared_node.bootstrap) as producer:
        for i in range(5):
            producer.send(topic, value=b"old-%d" % i)
        producer.flush(timeout=30)
        with Consumer(bootstrap_servers=shared_node.bootstrap, auto_offset_reset="latest") as latest:
            latest.assign([tp])
            assert latest.position(tp) == 5
            producer.send(topic, value=b"new").get(timeout=30)
            assert [r.value for r in drain(latest, 1)] == [b"new"]
        with Consumer(bootstrap_servers=shared_node.bootstrap, auto_offset_reset="none") as strict:
            strict.assign([tp])
            with pytest.raises(errors.NoOffsetForPartitionError):
                strict.poll(timeout_ms=100)
            strict.seek(tp, 100)
            with pytest.raises(errors.OffsetOutOfRangeError):
                for _ in range(50):
                    strict.poll(timeout_ms=100)
            strict.seek(tp, 4)
            assert [r.value for r in drain(strict, 2)] == [b"old-4", b"new"]
        with Consumer(bootstrap_servers=shared_node.bootstrap, auto_offset_reset="earliest") as lenient:
            lenient.assign([tp])
            lenient.seek(tp, 100)
            assert drain(lenient, 6)[0].value == b"old-0", "out of range resets to the earliest offset"


def test_iteration_blocks_until_records_and_stops_after_the_timeout(shared_node, make_topic) -> None:
    topic = make_topic(2)
    with Producer(bootstrap_servers=shared_node.bootstrap) as producer:
        for i in range(30):
            producer.send(topic, value=b"%d" % i)
    with Consumer(topic, bootstrap_servers=shared_node.bootstrap, consumer_timeout_ms=1000) as consumer:
        assert consumer.subscription() == {topic}
        values = sorted(int(r.value) for r in consumer)
        assert consumer.assignment() == {TopicPartition(topic, 0), TopicPartition(topic, 1)}
        consumer.unsubscribe()
        assert consumer.assignment() == set() and consumer.subscription() is None
    assert values == list(range(30))


def test_four_threads_share_one_producer(shared_node, make_topic) -> None:
    topic = make_topic(3)
    per_thread = 5000
    futures: dict[int, list] = {}
    with Producer(bootstrap_servers=shared_node.bootstrap, linger_ms=1, batch_size=8192) as producer:
        def run(thread_id: int) -> None:
            futures[thread_id] = [producer.send(topic, value=b"%d-%d" % (thread_id, i), key=b"%d" % thread_id)
                                  for i in range(per_thread)]

        _run_threads(run, 4)
        producer.flush(timeout=60)
    positions = [f.get(timeout=1) for fs in futures.values() for f in fs]
    assert len({(m.partition, m.offset) for m in positions}) == 4 * per_thread
    with Consumer(topic, bootstrap_servers=shared_node.bootstrap) as consumer:
        records = drain(consumer, 4 * per_thread)
    by_thread = collections.defaultdict(list)
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        thread_id, i = r.value.split(b"-")
        by_thread[int(thread_id)].append(int(i))
    for thread_id, seq in by_thread.items():
        assert seq == list(range(per_thread)), f"thread {thread_id}'s records lost, doubled or reordered"


def _run_threads(run, count: int) -> None:
    """``run(thread_id)`` in ``count`` threads at once, until all return."""
    threads = [threading.Thread(target=run, args=(t,)) for t in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)


def test_threads_sharing_unkeyed_batches_get_their_own_offsets(shared_node, make_topic) -> None:
    """``produce`` and ``send`` of unkeyed records append to the same open batches without a
    lock: every record lands once, and each future's offset holds that future's value."""
    topic = make_topic(2)
    per_thread = 4000
    futures: dict[int, list] = {}
    with Producer(bootstrap_servers=shared_node.bootstrap, acks=1, linger_ms=0, batch_size=4096) as producer:
        def run(thread_id: int) -> None:
            mine = futures[thread_id] = []
            for i in range(per_thread):
                value = b"%d-%d" % (thread_id, i)
                if i % 2:
                    producer.produce(topic, value)
                else:
                    mine.append((value, producer.send(topic, value)))

        _run_threads(run, 3)
        producer.flush(timeout=60)
        assert producer.metrics()["failed_records"] == 0
    with Consumer(topic, bootstrap_servers=shared_node.bootstrap) as consumer:
        records = drain(consumer, 3 * per_thread)
    at = {(r.partition, r.offset): r.value for r in records}
    assert len(at) == len(records) == 3 * per_thread
    assert sorted(at.values()) == sorted(b"%d-%d" % (t, i) for t in range(3) for i in range(per_thread))
    for value, future in (pair for pairs in futures.values() for pair in pairs):
        metadata = future.get(timeout=1)
        assert at[(metadata.partition, metadata.offset)] == value, "the future's offset holds another record"
    by_thread = collections.defaultdict(lambda: collections.defaultdict(list))
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        thread_id, i = r.value.split(b"-")
        by_thread[int(thread_id)][r.partition].append(int(i))
    for thread_id, partitions in by_thread.items():
        for partition, seq in partitions.items():
            assert seq == sorted(seq), f"thread {thread_id}'s records reordered in partition {partition}"


def test_callbacks_fire_for_every_record(shared_node, make_topic) -> None:
    topic = make_topic(2)
    acked: list[int] = []
    lock = threading.Lock()

    def on_ack(metadata) -> None:
        with lock:
            acked.append(metadata.offset)

    with Producer(bootstrap_servers=shared_node.bootstrap) as producer:
        for i in range(1000):
            producer.send(topic, value=b"x").add_callback(on_ack)
        producer.flush(timeout=30)
        assert len(acked) == 1000


def test_a_subscription_picks_up_a_topic_created_later(shared_node, admin) -> None:
    from cluster.client import NewTopic

    name = f"late-{time.monotonic_ns() % 1000000}"
    with Consumer(name, bootstrap_servers=shared_node.bootstrap) as consumer:
        assert consumer.poll(timeout_ms=200) == {}
        admin.create_topics([NewTopic(name, 2)])
        with Producer(bootstrap_servers=shared_node.bootstrap) as producer:
            producer.send(name, value=b"hello").get(timeout=30)
        assert [r.value for r in drain(consumer, 1)] == [b"hello"]


def test_a_record_too_large_for_the_topic_fails_alone_in_its_batch(shared_node, make_topic) -> None:
    """One record over the topic's max.message.bytes among small ones in the same batch:
    it fails, the others are written, in their order."""
    topic = make_topic(1, {"max.message.bytes": "2048"})
    with Producer(bootstrap_servers=shared_node.bootstrap, acks="all", linger_ms=500, batch_size=64 * 1024) as producer:
        futures = [producer.send(topic, value=v) for v in (b"a" * 100, b"x" * 4000, b"b" * 100)]
        producer.flush(timeout=30)
        assert [futures[0].get(timeout=1).offset, futures[2].get(timeout=1).offset] == [0, 1]
        with pytest.raises(errors.MessageTooLargeError):
            futures[1].get(timeout=1)
        assert producer.metrics()["failed_records"] == 1
    with Consumer(topic, bootstrap_servers=shared_node.bootstrap, auto_offset_reset="earliest") as consumer:
        records = drain(consumer, 2)
    assert [(r.offset, r.value) for r in records] == [(0, b"a" * 100), (1, b"b" * 100)]
