"""Three real node processes forming one cluster: formation, forwarded topic admin,
placement, leader-only produce, and topic deletion on every node."""

from __future__ import annotations

from collections import Counter

import pytest

from cluster.client import Consumer, Producer
from cluster.launcher import wait_until
from cluster.protocol import errors
from cluster.protocol.api import ApiKey
from storage.log import LogStore
from tests.client.conftest import drain
from tests.cluster.multinode import LocalCluster, cluster_factory  # noqa: F401  (fixture)
from tests.cluster.wire import batch, values_from

pytestmark = pytest.mark.timeout(90)


def non_controller(cluster: LocalCluster) -> int:
    controller_id = cluster.wait_formed()
    return next(i for i in cluster.live() if i != controller_id)


def test_three_nodes_form_one_cluster(cluster_factory) -> None:
    cluster = cluster_factory()
    controller_id = cluster.wait_formed()
    for node_id in (1, 2, 3):
        view = cluster.metadata(node_id)
        assert sorted(b["node_id"] for b in view["brokers"]) == [1, 2, 3]
        assert view["controller_id"] == controller_id
        described = cluster.describe(node_id)
        assert described["error_code"] == 0
        assert described["controller_id"] == controller_id
        assert [(b["node_id"], b["fenced"]) for b in described["brokers"]] == [(1, False), (2, False), (3, False)]
        assert described["raft"]["voters"] == [1, 2, 3]
        assert described["raft"]["is_leader"] == (node_id == controller_id)
    cluster_ids = {cluster.describe(i)["cluster_id"] for i in (1, 2, 3)}
    assert len(cluster_ids) == 1
    # SIGTERM stops a voter cleanly; the others carry on without it.
    stopped = next(i for i in (1, 2, 3) if i != controller_id)
    assert cluster.nodes[stopped].stop() == 0
    assert cluster.metadata(controller_id)["controller_id"] == controller_id


def test_a_single_node_describes_itself_as_its_own_controller(node) -> None:
    from tests.cluster.wire import WireClient

    with WireClient(node.port) as client:
        described = client.call(ApiKey.DESCRIBE_CLUSTER, {})
        assert described["error_code"] == 0
        raft = described["raft"]  # a cluster of one: its own only voter
        assert raft["voters"] == [1] and raft["is_leader"] and raft["leader_id"] == 1 and raft["ready"]
        assert described["controller_id"] == 1
        assert [(b["node_id"], b["fenced"]) for b in described["brokers"]] == [(1, False)]
        assert client.metadata()["controller_id"] == 1
        heartbeat = client.call(ApiKey.BROKER_HEARTBEAT, {"broker_id": 1})
        assert (heartbeat["error_code"], heartbeat["is_registered"], heartbeat["is_fenced"]) == (0, True, False)
        unknown = client.call(ApiKey.BROKER_HEARTBEAT, {"broker_id": 7})
        assert (unknown["error_code"], unknown["is_registered"]) == (0, False)
        wrong_cluster = client.call(ApiKey.BROKER_REGISTRATION, {
            "broker_id": 7, "cluster_id": "other", "host": "127.0.0.1", "port": 1, "rack": None,
            "incarnation_id": "x"})
        assert wrong_cluster["error_code"] == errors.INVALID_REQUEST


def test_create_through_a_non_controller_is_forwarded_and_balanced(cluster_factory) -> None:
    cluster = cluster_factory()
    via = non_controller(cluster)
    with cluster.client(via) as client:
        created = client.create_topic("orders", 6, replication_factor=3)
        assert created["error_code"] == 0, created
        # The forwarding node answers only once its own image has the topic.
        assert client.metadata(["orders"])["topics"][0]["error_code"] == 0
        too_many = client.create_topic("wide", 1, replication_factor=4)
        assert too_many["error_code"] == errors.INVALID_REPLICATION_FACTOR
        again = client.create_topic("orders", 6, replication_factor=3)
        assert again["error_code"] == errors.TOPIC_ALREADY_EXISTS
    for node_id in (1, 2, 3):
        wait_until(lambda: cluster.metadata(node_id, ["orders"])["topics"][0]["error_code"] == 0, 10)
        partitions = cluster.partitions(node_id, "orders")
        assert len(partitions) == 6
        assert Counter(p["leader_id"] for p in partitions.values()) == {1: 2, 2: 2, 3: 2}
        for p in partitions.values():
            assert sorted(p["replica_nodes"]) == [1, 2, 3]
            assert p["leader_id"] == p["replica_nodes"][0]
            assert sorted(p["isr_nodes"]) == [1, 2, 3]
            assert p["offline_replicas"] == []


def test_a_forwarded_request_is_never_forwarded_again(cluster_factory) -> None:
    cluster = cluster_factory()
    via = non_controller(cluster)
    body = {"topics": [{"name": "bounced", "num_partitions": 1, "replication_factor": 1, "configs": {}}],
            "timeout_ms": 5000, "validate_only": False, "forwarded_by": 99}
    with cluster.client(via) as client:
        answer = client.call(ApiKey.CREATE_TOPICS, body)["topics"][0]
        assert answer["error_code"] == errors.NOT_CONTROLLER
        deleted = client.call(ApiKey.DELETE_TOPICS, {"topic_names": ["x"], "timeout_ms": 5000, "forwarded_by": 99})
        assert deleted["responses"][0]["error_code"] == errors.NOT_CONTROLLER


def test_only_the_leader_serves_a_partition_and_the_client_finds_it(cluster_factory) -> None:
    cluster = cluster_factory()
    cluster.wait_formed()
    with cluster.client(1) as client:
        assert client.create_topic("events", 3, replication_factor=2)["error_code"] == 0
    partitions = cluster.partitions(1, "events")
    for index, p in partitions.items():
        leader = p["leader_id"]
        follower = next(r for r in p["replica_nodes"] if r != leader)
        outsider = next(i for i in (1, 2, 3) if i not in p["replica_nodes"])
        for wrong in (follower, outsider):
            with cluster.client(wrong) as client:
                wait_until(lambda: cluster.metadata(wrong, ["events"])["topics"][0]["error_code"] == 0, 10)
                assert client.produce("events", index, batch([b"x"]))["error_code"] == errors.NOT_LEADER_OR_FOLLOWER
                fetched = client.call(ApiKey.FETCH, client.fetch_body("events", index, 0))
                assert fetched["topics"][0]["partitions"][0]["error_code"] == errors.NOT_LEADER_OR_FOLLOWER
                assert client.list_offset("events", index, -1)["error_code"] == errors.NOT_LEADER_OR_FOLLOWER
        with cluster.client(leader) as client:
            assert client.produce("events", index, batch([b"direct-%d" % index]))["error_code"] == 0
            # Visible once the follower has it too (the high watermark passed it).
            expected = [(0, b"direct-%d" % index)]
            wait_until(lambda: values_from(client.fetch("events", index, 0)["records"]) == expected, 10)
            assert client.list_offset("events", index, -1)["leader_epoch"] == p["leader_epoch"]

    # One bootstrap node is enough: the Producer sends each partition to its leader.
    bootstrap = cluster.nodes[2].bootstrap
    with Producer(bootstrap_servers=bootstrap, acks="all") as producer:
        futures = [producer.send("events", value=b"v%d" % i, partition=i % 3) for i in range(30)]
        producer.flush(timeout=30)
        for future in futures:
            future.get(timeout=30)
    with Consumer("events", bootstrap_servers=bootstrap, auto_offset_reset="earliest") as consumer:
        records = drain(consumer, 33)
    assert sorted(r.value for r in records) == sorted([b"v%d" % i for i in range(30)] + [b"direct-%d" % i for i in range(3)])


def test_delete_topics_removes_partition_data_on_every_node(cluster_factory) -> None:
    cluster = cluster_factory()
    via = non_controller(cluster)
    with cluster.client(via) as client:
        assert client.create_topic("doomed", 4, replication_factor=3)["error_code"] == 0
        assert client.create_topic("kept", 2, replication_factor=2)["error_code"] == 0
        leader = cluster.partitions(via, "doomed")[0]["leader_id"]
    with cluster.client(leader) as client:
        assert client.produce("doomed", 0, batch([b"gone"]))["error_code"] == 0
    with cluster.client(via) as client:
        deleted = client.delete_topics(["doomed", "never-was"])
        assert [r["error_code"] for r in deleted] == [0, errors.UNKNOWN_TOPIC_OR_PARTITION]
        # The forwarding node answers once its own image has dropped the topic.
        assert client.metadata(["doomed"])["topics"][0]["error_code"] == errors.UNKNOWN_TOPIC_OR_PARTITION
    for node_id in (1, 2, 3):
        wait_until(lambda: cluster.metadata(node_id, ["doomed"])["topics"][0]["error_code"] != 0, 10)
    kept_placement = cluster.partitions(1, "kept")
    # Every node deletes its partitions of the topic as it applies the change; look at
    # each node's LogStore once the processes are gone.
    wait_until(lambda: all(f"node {i} deleted 4 partitions of removed topics" in n.log()
                           for i, n in cluster.nodes.items()),
               10, message="every node to delete the topic's partitions")
    cluster.kill9()
    for node_id, node in cluster.nodes.items():
        store = LogStore(node.directory / "data" / "log")
        try:
            held = sorted(index for _, index in store.partitions())
        finally:
            store.close()
        expected = sorted(i for i, p in kept_placement.items() if node_id in p["replica_nodes"])
        assert held == expected, (node_id, held, expected)
