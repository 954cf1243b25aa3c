"""Replication under process faults, with real node processes and acks=all producers.

A zombie leader (SIGSTOP past the broker session timeout, then SIGCONT) loses no
acknowledged record, and the old leader truncates, follows and rejoins the ISR; a producer
talking to a stopped leader moves to the new one while the old one is still stopped; a longer
run of 200,000 values through two kill -9s and one restart reads every acknowledged value
back at its acknowledged offset, with the replicas identical below the high watermark."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import pytest

from cluster.client import Consumer, Producer
from cluster.client.structs import TopicPartition
from cluster.config import NodeConfig
from cluster.launcher import wait_until
from cluster.protocol import errors
from cluster.protocol.api import ApiKey
from storage.log import LogStore
from tests.cluster.multinode import LocalCluster, cluster_factory  # noqa: F401  (fixture)
from tests.cluster.test_replication_cluster import read_all, stored_records
from tests.cluster.wire import batch

MIN_INSYNC = {"min.insync.replicas": "2"}
ALL_NODES = [1, 2, 3]
SESSION_TIMEOUT_MS = NodeConfig().broker_session_timeout_ms
STOP_EXTRA_MS = 2000  # the zombie stays stopped this long past the session timeout
LEADER_CHANGE_TIMEOUT_S = 30.0
CATCH_UP_TIMEOUT_S = 60.0
ZOMBIE_VALUES_MAX = 50_000  # bound on the zombie test's producer loop
ZOMBIE_PACE_S = 0.001  # pause between two sends of the zombie test's producer thread
ZOMBIE_DIRECT = [b"direct-0", b"direct-1"]  # written straight to the stopped leader
FRESH_VALUES = 500  # values a second producer writes while the old leader is stopped
MOVE_REQUEST_TIMEOUT_MS = 3000  # the moving producer's wait for an answer from the stopped leader
MOVE_TIMEOUT_S = 60.0

LONG_VALUES = 200_000
LONG_VALUE_BYTES = 100
LONG_PARTITIONS = 3
LONG_KILL_LEADER_ACKS = 50_000
LONG_RESTART_ACKS = 100_000
LONG_KILL_OTHER_ACKS = 150_000
LONG_IN_FLIGHT_MAX = 20_000  # sends allowed ahead of acknowledgements when a fault is due


class AckLog:
    """Thread-safe record of acknowledgements and failures, keyed by unique value."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acked: dict[bytes, tuple[int, int]] = {}
        self.failed: list[tuple[bytes, BaseException]] = []
        self.acked_after: dict[str, int] = {}  # marker -> acks counted when it was set

    def on_ack(self, value: bytes, metadata: Any) -> None:
        with self.lock:
            assert value not in self.acked, f"{value!r} acknowledged twice"
            self.acked[value] = (metadata.partition, metadata.offset)

    def on_error(self, value: bytes, error: BaseException) -> None:
        with self.lock:
            self.failed.append((value, error))

    def count(self) -> int:
        with self.lock:
            return len(self.acked)


def views(cluster: LocalCluster, node_ids: list[int], topic: str) -> list[dict]:
    out = []
    for node_id in node_ids:
        entry = cluster.metadata(node_id, [topic])["topics"][0]
        out.append(entry)
    return out


def isr_is(cluster: LocalCluster, node_ids: list[int], topic: str, replicas: list[int]) -> bool:
    """Every node of ``node_ids`` sees each partition of ``topic`` led, with ISR ``replicas``."""
    for view in views(cluster, node_ids, topic):
        if view["error_code"] != errors.NONE:
            return False
        if any(p["leader_id"] == -1 or sorted(p["isr_nodes"]) != replicas for p in view["partitions"]):
            return False
    return True


def create_topic(cluster: LocalCluster, topic: str, partitions: int) -> int:
    controller_id = cluster.wait_formed()
    with cluster.client(controller_id) as client:
        created = client.create_topic(topic, partitions, MIN_INSYNC, replication_factor=3)
        assert created["error_code"] == 0, created
    wait_until(lambda: isr_is(cluster, cluster.live(), topic, ALL_NODES), 20, message="the topic on every node")
    return controller_id


def read_back(bootstrap: str, topic: str, ends: dict[int, int]) -> dict[int, list[tuple[int, bytes | None]]]:
    """Every record below ``ends[p]`` of each partition, through a Consumer, cut at ``ends[p]``."""
    read = read_all(bootstrap, ends, topic)
    return {p: records[: ends[p]] for p, records in read.items()}


def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    with Consumer(bootstrap_servers=bootstrap) as probe:
        return {tp.partition: end for tp, end in
                probe.end_offsets([TopicPartition(topic, p) for p in range(partitions)]).items()}


def check_acked(acks: AckLog, read: dict[int, list[tuple[int, bytes | None]]], ends: dict[int, int]) -> int:
    """Offsets dense (each read exactly once, in order), every acknowledged value at its
    acknowledged offset, no value in two partitions; returns the number of extra copies of
    values in the logs (a producer without idempotence rewrites a batch whose
    acknowledgement it did not receive, so a value may also sit at an earlier offset)."""
    where: dict[bytes | None, list[tuple[int, int]]] = {}
    by_offset: dict[int, dict[int, bytes | None]] = {}
    for p, records in read.items():
        assert [offset for offset, _ in records] == list(range(ends[p])), f"partition {p}: offsets not dense"
        by_offset[p] = dict(records)
        for offset, value in records:
            where.setdefault(value, []).append((p, offset))
    for value, (p, offset) in acks.acked.items():
        assert by_offset[p].get(offset) == value, (value, p, offset, by_offset[p].get(offset))
        assert {q for q, _ in where[value]} == {p}, (value, where[value])
    return sum(len(places) - 1 for places in where.values())


def check_replicas_identical(cluster: LocalCluster, read: dict[int, list[tuple[int, bytes | None]]],
                             ends: dict[int, int]) -> None:
    """With every node stopped: each node's log equals ``read`` below each high watermark."""
    cluster.kill9()
    for node_id in ALL_NODES:
        store = LogStore(cluster.nodes[node_id].directory / "data" / "log")
        try:
            topic_ids = {t for t, _ in store.partitions()}
        finally:
            store.close()
        assert len(topic_ids) == 1, (node_id, topic_ids)
        topic_id = topic_ids.pop()
        for p, end in ends.items():
            stored = stored_records(cluster.nodes[node_id].directory, topic_id, p, end)
            assert stored == read[p], f"node {node_id} partition {p} differs below the high watermark {end}"


def produce_to_partition_0(producer: Producer, topic: str, prefix: bytes, acks: AckLog, sent: list[int],
                           stop: threading.Event, pace_s: float) -> threading.Thread:
    """A started thread sending unique values ``prefix-NNNNNN`` to partition 0, one every
    ``pace_s``, until ``stop`` (at most ZOMBIE_VALUES_MAX); ``sent[0]`` counts them."""

    def produce() -> None:
        for i in range(ZOMBIE_VALUES_MAX):
            if stop.is_set():
                return
            value = b"%s-%06d" % (prefix, i)
            producer.send(topic, value=value, partition=0) \
                .add_callback(acks.on_ack, value).add_errback(acks.on_error, value)
            sent[0] = i + 1
            stop.wait(pace_s)

    thread = threading.Thread(target=produce, name=f"{prefix.decode()}-producer", daemon=True)
    thread.start()
    return thread


@pytest.mark.timeout(180)
def test_zombie_leader_loses_no_acknowledged_write_and_rejoins(cluster_factory) -> None:
    topic = "zombie"
    cluster = cluster_factory()
    controller_id = create_topic(cluster, topic, 1)
    victim = cluster.partitions(controller_id, topic)[0]["leader_id"]
    survivors = [i for i in ALL_NODES if i != victim]
    acks = AckLog()
    stop_producing = threading.Event()
    sent = [0]

    with Producer(bootstrap_servers=cluster.bootstrap, acks="all", request_timeout_ms=10000,
                  delivery_timeout_ms=60000) as producer:
        thread = produce_to_partition_0(producer, topic, b"zombie", acks, sent, stop_producing, ZOMBIE_PACE_S)
        try:
            wait_until(lambda: acks.count() >= 500, 30, message="acknowledgements before the stop")
            zombie_client = cluster.client(victim)
            cluster.nodes[victim].signal(signal.SIGSTOP)
            stopped_at = time.monotonic()
            new_leader = wait_until(
                lambda: next((leader for leader in
                              {cluster.partitions(i, topic)[0]["leader_id"] for i in survivors}
                              if leader in survivors), None),
                LEADER_CHANGE_TIMEOUT_S, interval_s=0.05, message="a new leader of partition 0")
            # While the old leader is stopped, a producer that bootstraps from the survivors
            # gets acks=all writes acknowledged by the new leader; the first producer's batches
            # stay addressed to the stopped leader until it answers.
            with Producer(bootstrap_servers=",".join(cluster.nodes[i].bootstrap for i in survivors),
                          acks="all", request_timeout_ms=10000) as fresh:
                for i in range(FRESH_VALUES):
                    value = b"fresh-%06d" % i
                    fresh.send(topic, value=value, partition=0) \
                        .add_callback(acks.on_ack, value).add_errback(acks.on_error, value)
                fresh.flush(timeout=30)
            fresh_acked = sum(1 for v in acks.acked if v.startswith(b"fresh-"))
            assert fresh_acked == FRESH_VALUES, (fresh_acked, acks.failed[:3])
            # Stay stopped past the session timeout + 2 s.
            wait_until(lambda: time.monotonic() - stopped_at >= (SESSION_TIMEOUT_MS + STOP_EXTRA_MS) / 1000,
                       LEADER_CHANGE_TIMEOUT_S, interval_s=0.05, message="the stop to outlast the session timeout")
            # An acks=all write queued at the stopped leader, which it handles first on resume,
            # before it has heard of the new leader: it must not be acknowledged unless it is
            # really committed (check_acked then finds it at its offset).
            with zombie_client:
                zombie_client.send(ApiKey.PRODUCE, zombie_client.produce_body(topic, 0, batch(ZOMBIE_DIRECT), acks=-1))
                stopped_s = time.monotonic() - stopped_at
                cluster.nodes[victim].signal(signal.SIGCONT)
                _, response = zombie_client.recv()
            direct = response["topics"][0]["partitions"][0]
            acked_at_resume = acks.count()
            wait_until(lambda: acks.count() >= acked_at_resume + 500, 30, message="writes after the resume")
        finally:
            stop_producing.set()
            thread.join(timeout=30)
        producer.flush(timeout=90)

    assert len(acks.acked) + len(acks.failed) == sent[0] + FRESH_VALUES, \
        (len(acks.acked), len(acks.failed), sent[0])
    assert len(acks.acked) > (sent[0] + FRESH_VALUES) // 2, acks.failed[:3]
    if direct["error_code"] == errors.NONE:
        acks.acked.update((value, (0, direct["base_offset"] + k)) for k, value in enumerate(ZOMBIE_DIRECT))
    print(f"\nzombie's answer to an acks=all write queued while it was stopped: {direct}")
    print(f"broker {victim} stopped {stopped_s:.1f} s, broker {new_leader} took over; "
          f"{len(acks.acked)} of {sent[0] + FRESH_VALUES} acknowledged ({len(acks.failed)} failed)")

    # The old leader truncates whatever it did not replicate, follows and rejoins the ISR.
    wait_until(lambda: isr_is(cluster, ALL_NODES, topic, ALL_NODES), CATCH_UP_TIMEOUT_S, interval_s=0.1,
               message=f"broker {victim} back in the ISR")
    ends = end_offsets(cluster.bootstrap, topic, 1)
    read = read_back(cluster.bootstrap, topic, ends)
    duplicates = check_acked(acks, read, ends)
    if direct["error_code"] != errors.NONE:
        # The followers had left the stopped leader before it appended these: refused, they
        # must never become visible (the old leader truncates them away).
        assert not set(ZOMBIE_DIRECT) & {value for _, value in read[0]}, direct
    print(f"read back {ends[0]} records ({duplicates} duplicates from retries)")
    check_replicas_identical(cluster, read, ends)


@pytest.mark.timeout(180)
def test_a_producer_moves_off_a_stopped_leader(cluster_factory) -> None:
    """A producer whose requests to a SIGSTOPped leader get no answer gives up on them after
    request_timeout_ms, refreshes its metadata and sends to the new leader while the old one
    is still stopped: acks=all writes are acknowledged again before the zombie resumes."""
    topic = "moves"
    cluster = cluster_factory()
    controller_id = create_topic(cluster, topic, 1)
    victim = cluster.partitions(controller_id, topic)[0]["leader_id"]
    survivors = [i for i in ALL_NODES if i != victim]
    acks = AckLog()
    stop_producing = threading.Event()
    sent = [0]
    with Producer(bootstrap_servers=cluster.bootstrap, acks="all", request_timeout_ms=MOVE_REQUEST_TIMEOUT_MS,
                  delivery_timeout_ms=120000) as producer:
        thread = produce_to_partition_0(producer, topic, b"moves", acks, sent, stop_producing, ZOMBIE_PACE_S * 5)
        try:
            wait_until(lambda: acks.count() >= 200, 30, message="acknowledgements before the stop")
            cluster.nodes[victim].signal(signal.SIGSTOP)
            stopped_at = time.monotonic()
            acked_at_stop = acks.count()
            # Acknowledgements resume, from the new leader, while the old one is still stopped.
            wait_until(lambda: acks.count() >= acked_at_stop + 200, MOVE_TIMEOUT_S, interval_s=0.05,
                       message="acknowledgements from the new leader during the stop")
            resumed_s = time.monotonic() - stopped_at
            new_leader = cluster.partitions(survivors[0], topic)[0]["leader_id"]
            assert new_leader in survivors, new_leader
            assert cluster.nodes[victim].running  # still stopped, not dead
        finally:
            stop_producing.set()
            thread.join(timeout=30)
            cluster.nodes[victim].signal(signal.SIGCONT)
        producer.flush(timeout=90)
    print(f"\nbroker {victim} stopped: the producer's acks=all writes were acknowledged by broker "
          f"{new_leader} again {resumed_s:.1f} s later (request_timeout_ms {MOVE_REQUEST_TIMEOUT_MS})")
    assert len(acks.acked) + len(acks.failed) == sent[0], (len(acks.acked), len(acks.failed), sent[0])
    wait_until(lambda: isr_is(cluster, ALL_NODES, topic, ALL_NODES), CATCH_UP_TIMEOUT_S, interval_s=0.1,
               message=f"broker {victim} back in the ISR")
    ends = end_offsets(cluster.bootstrap, topic, 1)
    read = read_back(cluster.bootstrap, topic, ends)
    check_acked(acks, read, ends)
    check_replicas_identical(cluster, read, ends)


@pytest.mark.timeout(240)
def test_long_run_through_kills_and_restart(cluster_factory) -> None:
    topic = "long"
    cluster = cluster_factory()
    controller_id = create_topic(cluster, topic, LONG_PARTITIONS)
    first_victim = cluster.partitions(controller_id, topic)[0]["leader_id"]
    second_victim = next(i for i in ALL_NODES if i != first_victim)
    acks = AckLog()
    # (acknowledgements that trigger the fault, what to do)
    faults = [
        (LONG_KILL_LEADER_ACKS, lambda: cluster.kill9(first_victim)),
        (LONG_RESTART_ACKS, lambda: cluster.start(first_victim)),
        (LONG_KILL_OTHER_ACKS, lambda: cluster.kill9(second_victim)),
    ]
    fault_log: list[str] = []
    padding = b"x" * (LONG_VALUE_BYTES - len(b"long-%06d-" % 0))

    started = time.monotonic()
    with Producer(bootstrap_servers=cluster.bootstrap, acks="all", request_timeout_ms=10000,
                  delivery_timeout_ms=120000) as producer:
        for i in range(LONG_VALUES):
            value = b"long-%06d-" % i + padding
            producer.send(topic, value=value, partition=i % LONG_PARTITIONS) \
                .add_callback(acks.on_ack, value).add_errback(acks.on_error, value)
            if faults and i >= faults[0][0] + LONG_IN_FLIGHT_MAX:
                threshold, action = faults.pop(0)
                wait_until(lambda: acks.count() >= threshold, 90, interval_s=0.01,
                           message=f"{threshold} acknowledgements")
                action()
                fault_log.append(f"{time.monotonic() - started:.1f}s")
        producer.flush(timeout=120)
    elapsed_s = time.monotonic() - started
    assert not faults, "a fault did not fire"
    assert len(acks.acked) + len(acks.failed) == LONG_VALUES
    assert len(acks.acked) > LONG_VALUES // 2, acks.failed[:3]

    # Broker first_victim is back, second_victim is dead: the two live nodes hold the ISRs.
    live = [i for i in ALL_NODES if i != second_victim]
    wait_until(lambda: isr_is(cluster, live, topic, live), CATCH_UP_TIMEOUT_S, interval_s=0.1,
               message=f"ISRs of brokers {live}")
    ends = end_offsets(cluster.bootstrap, topic, LONG_PARTITIONS)
    read = read_back(cluster.bootstrap, topic, ends)
    duplicates = check_acked(acks, read, ends)
    print(f"\nacked {len(acks.acked)}, failed {len(acks.failed)}, duplicates {duplicates}, "
          f"run {elapsed_s:.1f} s (faults at {', '.join(fault_log)}: kill -9 {first_victim}, "
          f"restart {first_victim}, kill -9 {second_victim})")

    # Restart the second victim so every replica can be compared below the high watermark.
    cluster.start(second_victim)
    wait_until(lambda: isr_is(cluster, ALL_NODES, topic, ALL_NODES), CATCH_UP_TIMEOUT_S, interval_s=0.1,
               message=f"broker {second_victim} back in every ISR")
    check_replicas_identical(cluster, read, ends)
