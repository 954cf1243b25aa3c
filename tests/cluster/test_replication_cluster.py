"""Partition replication with real processes: acks=all survives kill -9 of a partition
leader mid-stream (every acknowledged value read back at its acknowledged offset; the old
leader restarts, catches up and rejoins the ISRs; replicas identical below the high
watermark), and with too few replicas left acks=all is refused
while acks=1 still works."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from cluster.client import Consumer, Producer
from cluster.client.structs import TopicPartition
from cluster.launcher import wait_until
from cluster.protocol import errors
from storage.batch import decode_batch
from storage.log import LogStore
from tests.cluster.multinode import LocalCluster, cluster_factory  # noqa: F401  (fixture)
from tests.cluster.test_broker_only import BROKER, with_broker_only_node
from tests.cluster.wire import batch

pytestmark = pytest.mark.timeout(240)

TOPIC = "replicated"
PARTITIONS = 3
VALUES = 20_000
KILL_AFTER_ACKS = 4_000  # the leader of partition 0 dies once this many records are acknowledged
CATCH_UP_TIMEOUT_S = 60.0
MIN_INSYNC = {"min.insync.replicas": "2"}


def full_isr(cluster: LocalCluster, topic: str, replicas: list[int]) -> bool:
    """Every live node sees the topic, each partition led, with ``replicas`` in its ISR."""
    for node_id in cluster.live():
        view = cluster.metadata(node_id, [topic])["topics"][0]
        if view["error_code"] != errors.NONE:
            return False  # this node's image does not have the topic yet
        if any(p["leader_id"] == -1 or sorted(p["isr_nodes"]) != replicas for p in view["partitions"]):
            return False
    return True


def stored_records(directory: Path, topic_id: str, index: int, upper_offset: int) -> list[tuple[int, bytes | None]]:
    """(offset, value) below ``upper_offset`` in a stopped node's LogStore."""
    store = LogStore(directory / "data" / "log")
    try:
        log = dict(store.partitions())[(topic_id, index)]
        out: list[tuple[int, bytes | None]] = []
        offset = 0
        while offset < upper_offset:
            batches = log.read(offset, 1 << 20, upper_offset=upper_offset)
            if not batches:
                break
            for one in batches:
                records = decode_batch(one)
                out.extend((r.offset, r.value) for r in records if r.offset >= offset)
            offset = out[-1][0] + 1
        return out
    finally:
        store.close()


def read_all(bootstrap: str, ends: dict[int, int], topic: str = TOPIC) -> dict[int, list[tuple[int, bytes | None]]]:
    """Every record below ``ends[p]`` of each partition, through a Consumer."""
    read: dict[int, list[tuple[int, bytes | None]]] = {p: [] for p in ends}
    with Consumer(bootstrap_servers=bootstrap) as consumer:
        tps = [TopicPartition(topic, p) for p in ends]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)

        def done() -> bool:
            for tp, records in consumer.poll(timeout_ms=200).items():
                read[tp.partition].extend((r.offset, r.value) for r in records)
            return all(len(read[p]) >= ends[p] for p in ends)

        wait_until(done, CATCH_UP_TIMEOUT_S, interval_s=0, message="reading every record back")
    return read


def test_acks_all_survives_kill9_of_a_partition_leader(cluster_factory) -> None:
    cluster = cluster_factory()
    controller_id = cluster.wait_formed()
    with cluster.client(controller_id) as client:
        created = client.create_topic(TOPIC, PARTITIONS, MIN_INSYNC, replication_factor=3)
        assert created["error_code"] == 0, created
    wait_until(lambda: full_isr(cluster, TOPIC, [1, 2, 3]), 20, message="the topic on every node")
    victim = cluster.partitions(controller_id, TOPIC)[0]["leader_id"]
    survivors = [i for i in (1, 2, 3) if i != victim]

    lock = threading.Lock()
    acked: dict[bytes, tuple[int, int]] = {}
    ack_times: list[tuple[float, int]] = []
    failed: list[tuple[bytes, BaseException]] = []

    def on_ack(value: bytes, metadata) -> None:
        with lock:
            acked[value] = (metadata.partition, metadata.offset)
            ack_times.append((time.monotonic(), metadata.partition))

    def on_error(value: bytes, error: BaseException) -> None:
        with lock:
            failed.append((value, error))

    killed_at = None
    started = time.monotonic()
    with Producer(bootstrap_servers=cluster.bootstrap, acks="all", request_timeout_ms=15000) as producer:
        for i in range(VALUES):
            value = b"value-%06d" % i
            producer.send(TOPIC, value=value, partition=i % PARTITIONS) \
                .add_callback(on_ack, value).add_errback(on_error, value)
            if killed_at is None and i >= 2 * KILL_AFTER_ACKS:
                wait_until(lambda: len(acked) >= KILL_AFTER_ACKS, 60, message="acknowledgements before the kill")
                cluster.kill9(victim)
                killed_at = time.monotonic()
        producer.flush(timeout=120)
    elapsed_s = time.monotonic() - started
    assert killed_at is not None
    assert len(acked) + len(failed) == VALUES
    assert len(acked) > VALUES // 2, failed[:3]
    after_kill = [t for t, p in ack_times if p == 0 and t > killed_at]
    assert after_kill, "no acknowledged write on partition 0 after the kill"
    print(f"\n{len(acked)} of {VALUES} acknowledged ({len(failed)} failed) in {elapsed_s:.1f} s; "
          f"kill -9 of broker {victim} (leader of {TOPIC}-0) -> next acknowledged write on {TOPIC}-0 "
          f"after {min(after_kill) - killed_at:.2f} s")

    # Read back through the new leaders: every acknowledged value sits at its acknowledged
    # offset, and offsets are dense (each offset read exactly once, in order).
    cluster.wait_formed(survivors)
    with Consumer(bootstrap_servers=cluster.bootstrap) as probe:
        ends = {tp.partition: end for tp, end in
                probe.end_offsets([TopicPartition(TOPIC, p) for p in range(PARTITIONS)]).items()}
    read = read_all(cluster.bootstrap, ends)
    by_offset: dict[int, dict[int, bytes | None]] = {}
    for p, records in read.items():
        offsets = [offset for offset, _ in records][: ends[p]]
        assert offsets == list(range(ends[p])), f"partition {p}: offsets not dense"
        by_offset[p] = dict(records)
    for value, (p, offset) in acked.items():
        assert by_offset[p].get(offset) == value, (value, p, offset)
    values = [v for records in read.values() for _, v in records]
    print(f"read back {len(values)} records ({len(values) - len(set(values))} duplicates from retries)")

    # The killed leader comes back: it truncates by leader epoch, catches up from the new
    # leaders and rejoins every ISR (through their AlterPartition).
    cluster.start(victim)
    wait_until(lambda: full_isr(cluster, TOPIC, [1, 2, 3]), CATCH_UP_TIMEOUT_S, interval_s=0.1,
               message=f"broker {victim} back in every ISR")

    # All three logs are identical below each partition's high watermark (ISR members hold
    # everything below it).
    cluster.kill9()
    for node_id in (1, 2, 3):
        store = LogStore(cluster.nodes[node_id].directory / "data" / "log")
        try:
            topic_id = {t for t, _ in store.partitions()}.pop()
        finally:
            store.close()
        for p in range(PARTITIONS):
            assert stored_records(cluster.nodes[node_id].directory, topic_id, p, ends[p]) == read[p][: ends[p]], \
                (node_id, p)


def test_too_few_replicas_refuse_acks_all_but_not_acks_1(tmp_path: Path) -> None:
    # Three voters keep the metadata quorum; broker 4 (not a voter) can die with one voter.
    cluster = with_broker_only_node(tmp_path)
    try:
        cluster.start()
        controller_id = cluster.wait_formed([1, 2, 3, BROKER])
        with cluster.client(controller_id) as client:
            created = client.create_topic("scarce", 4, MIN_INSYNC, replication_factor=3)
            assert created["error_code"] == 0, created
        partitions = cluster.partitions(controller_id, "scarce")
        index, chosen = next((i, p) for i, p in partitions.items() if BROKER in p["replica_nodes"])
        voter_replicas = [r for r in chosen["replica_nodes"] if r != BROKER]
        survivor = voter_replicas[0]
        doomed = [BROKER, voter_replicas[1]]
        wait_until(lambda: sorted(cluster.partitions(survivor, "scarce")[index]["isr_nodes"])
                   == sorted(chosen["replica_nodes"]), 20, message="the topic on the survivor")

        cluster.kill9(*doomed)
        wait_until(lambda: cluster.partitions(survivor, "scarce")[index]["isr_nodes"] == [survivor], 30,
                   message=f"the ISR of scarce-{index} to shrink to broker {survivor}")
        with cluster.client(survivor) as client:
            refused = client.produce("scarce", index, batch([b"all"]), acks=-1)
            assert refused["error_code"] == errors.NOT_ENOUGH_REPLICAS, refused
            accepted = client.produce("scarce", index, batch([b"one"]), acks=1)
            assert accepted["error_code"] == errors.NONE, accepted
            assert client.read_all("scarce", index)[-1][1] == b"one"
    finally:
        cluster.kill9()
