"""A broker-only node (not a Raft voter) beside three voters, as real processes: it follows
the metadata over MetadataFetch, registers and heartbeats, leads partitions, serves produce
and fetch, forwards topic changes; killed it is fenced and its partitions move; restarted
it is unfenced and catches up; it follows a controller failover."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Iterator

import pytest

from cluster.client import Consumer, Producer
from cluster.launcher import NodeProcess, wait_until
from cluster.metadata_follower import decode_image
from cluster.protocol import errors
from cluster.protocol.api import ApiKey
from tests.cluster.multinode import PASSWORD, LocalCluster, distinct_ports
from tests.cluster.wire import batch

pytestmark = pytest.mark.timeout(150)

BROKER = 4  # the broker-only node's id
VOTERS = (1, 2, 3)
ALL = [*VOTERS, BROKER]
MOVE_TIMEOUT_S = 15.0


def with_broker_only_node(directory: Path, **overrides: object) -> LocalCluster:
    """Three voters (LocalCluster) plus node 4, which is in no voters list."""
    cluster = LocalCluster(directory, len(VOTERS), **overrides)
    voters = cluster.nodes[1].config["controller_quorum_voters"]
    taken = {int(re.split(r"[:@]", voter)[-1]) for voter in voters} | {n.port for n in cluster.nodes.values()}
    config = {
        "node_id": BROKER,
        "controller_quorum_voters": voters,
        "controller_quorum_bootstrap_servers": [cluster.nodes[i].bootstrap for i in VOTERS],
        "cluster_password": PASSWORD,
        **overrides,
    }
    cluster.nodes[BROKER] = NodeProcess(directory / f"node{BROKER}", config, port=distinct_ports(1, taken)[0])
    return cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    made = with_broker_only_node(tmp_path, leader_imbalance_check_interval_ms=1000)
    try:
        yield made.start()
    finally:
        made.kill9()


def create(cluster: LocalCluster, via: int, topic: str, partitions: int, replication_factor: int) -> None:
    with cluster.client(via) as client:
        result = client.create_topic(topic, partitions, replication_factor=replication_factor)
    assert result["error_code"] == 0, result


def broker_state(cluster: LocalCluster, asked: int) -> dict[int, bool]:
    """broker id -> fenced, as DescribeCluster on ``asked`` says."""
    return {b["node_id"]: b["fenced"] for b in cluster.describe(asked)["brokers"]}


def led_by(cluster: LocalCluster, asked: int, topic: str, node_id: int) -> set[int]:
    return {i for i, p in cluster.partitions(asked, topic).items() if p["leader_id"] == node_id}


def test_a_broker_only_node_joins_leads_serves_and_forwards(cluster: LocalCluster) -> None:
    controller_id = cluster.wait_formed(ALL)
    assert controller_id in VOTERS
    for asked in ALL:
        assert broker_state(cluster, asked) == {i: False for i in ALL}
    raft_view = cluster.describe(BROKER)["raft"]
    assert raft_view["is_leader"] is False and raft_view["leader_id"] == controller_id and raft_view["ready"]

    # RF=4 needs the broker-only node; leaders spread, one partition each.
    create(cluster, controller_id, "wide", 4, 4)
    for asked in ALL:
        wait_until(lambda: cluster.metadata(asked, ["wide"])["topics"][0]["error_code"] == 0, 10,
                   message=f"topic wide on node {asked}")
        partitions = cluster.partitions(asked, "wide")
        assert all(BROKER in p["replica_nodes"] for p in partitions.values()), partitions
    led = led_by(cluster, controller_id, "wide", BROKER)
    assert len(led) == 1, cluster.partitions(controller_id, "wide")

    # It serves the partition it leads (once its reconcile opened the log: until then the
    # answer is the retriable UNKNOWN_TOPIC_OR_PARTITION), and refuses the others.
    with cluster.client(BROKER) as client:
        for index in range(4):
            if index in led:
                wait_until(lambda: client.produce("wide", index, batch([b"direct"]))["error_code"] == errors.NONE,
                           10, message=f"a produce to wide-{index} on its leader, node {BROKER}")
            else:
                code = client.produce("wide", index, batch([b"direct"]))["error_code"]
                assert code == errors.NOT_LEADER_OR_FOLLOWER, (index, code)

    # A topic created through it is forwarded to the controller, and visible there at once.
    create(cluster, BROKER, "via-broker", 2, 3)
    assert cluster.metadata(BROKER, ["via-broker"])["topics"][0]["error_code"] == 0
    assert cluster.metadata(controller_id, ["via-broker"])["topics"][0]["error_code"] == 0

    # Producer and consumer bootstrapped from the broker-only node alone.
    bootstrap = cluster.nodes[BROKER].bootstrap
    with Producer(bootstrap_servers=bootstrap, acks="all") as producer:
        futures = [producer.send("wide", value=b"v%d" % i, partition=i % 4) for i in range(40)]
        producer.flush(timeout=30)
        assert all(f.get(timeout=30).offset >= 0 for f in futures)
    expected = {b"v%d" % i for i in range(40)} | {b"direct"}
    seen: set[bytes] = set()
    with Consumer("wide", bootstrap_servers=bootstrap, auto_offset_reset="earliest") as consumer:
        def consumed_all() -> bool:
            for records in consumer.poll(timeout_ms=200).values():
                seen.update(r.value for r in records)
            return expected <= seen

        wait_until(consumed_all, 30, interval_s=0, message="every record consumed through the broker-only node")

    # MetadataFetch: only voters answer; a caught-up voter says "nothing newer" after its long poll.
    with cluster.client(BROKER) as client:
        assert client.call(ApiKey.METADATA_FETCH, {"after_offset": 0})["error_code"] == errors.NOT_CONTROLLER
    with cluster.client(controller_id) as client:
        whole = client.call(ApiKey.METADATA_FETCH, {"after_offset": 0})
        image = decode_image(whole["snapshot"])
        assert image.offset == whole["offset"] > 0 and image.topic("wide") is not None
        assert whole["controller_id"] == controller_id
        current = client.call(ApiKey.METADATA_FETCH, {"after_offset": whole["offset"] + 10 ** 6, "max_wait_ms": 50})
        assert current["error_code"] == 0 and current["records"] == [] and current["snapshot"] is None


def test_killed_it_is_fenced_restarted_it_catches_up_and_follows_a_new_controller(cluster: LocalCluster) -> None:
    controller_id = cluster.wait_formed(ALL)
    create(cluster, controller_id, "orders", 8, 2)
    led = led_by(cluster, controller_id, "orders", BROKER)
    assert len(led) == 2

    cluster.kill9(BROKER)
    for asked in VOTERS:
        wait_until(lambda: broker_state(cluster, asked).get(BROKER) is True, MOVE_TIMEOUT_S,
                   message=f"node {BROKER} fenced as node {asked} sees it")
        wait_until(lambda: not led_by(cluster, asked, "orders", BROKER), MOVE_TIMEOUT_S,
                   message=f"node {BROKER}'s partitions moved, as node {asked} sees it")
    for p in cluster.partitions(controller_id, "orders").values():
        assert p["leader_id"] in VOTERS
    create(cluster, controller_id, "while-down", 1, 1)

    cluster.start(BROKER)
    cluster.wait_formed(ALL)
    wait_until(lambda: broker_state(cluster, controller_id)[BROKER] is False, MOVE_TIMEOUT_S,
               message=f"node {BROKER} unfenced")
    assert cluster.metadata(BROKER, ["while-down"])["topics"][0]["error_code"] == 0
    wait_until(lambda: led_by(cluster, controller_id, "orders", BROKER) == led, MOVE_TIMEOUT_S,
               message=f"node {BROKER} leads its preferred partitions again")

    # The active controller dies: the broker-only node finds the new one, stays unfenced,
    # and forwards to it.
    cluster.kill9(controller_id)

    def new_controller() -> int | None:
        found = cluster.metadata(BROKER)["controller_id"]
        return found if found not in (-1, controller_id) else None

    successor = wait_until(new_controller, MOVE_TIMEOUT_S, message="a new controller seen by the broker-only node")
    assert successor in VOTERS
    create(cluster, BROKER, "after-failover", 2, 2)
    assert cluster.metadata(BROKER, ["after-failover"])["topics"][0]["error_code"] == 0
    assert cluster.metadata(successor, ["after-failover"])["topics"][0]["error_code"] == 0
    wait_until(lambda: broker_state(cluster, successor).get(BROKER) is False, MOVE_TIMEOUT_S,
               message=f"node {BROKER} unfenced under the new controller")


def test_sigterm_stops_a_broker_only_node_cleanly_during_its_long_poll(cluster: LocalCluster) -> None:
    cluster.wait_formed(ALL)
    started = time.monotonic()
    assert cluster.nodes[BROKER].stop(timeout_s=10) == 0
    assert time.monotonic() - started < 8, cluster.nodes[BROKER].log()[-3000:]
    assert "metadata follower closed" in cluster.nodes[BROKER].log()
