"""The replication APIs of one real node over raw frames: OffsetForLeaderEpoch answers from
the leader-epoch cache with epoch checks, AlterPartition refuses stale epochs and
non-leaders, a replica Fetch from a broker that is no follower is refused, and acks=all on
a lone node completes (its ISR is itself)."""

from __future__ import annotations

import re

import pytest

from cluster.protocol import errors
from cluster.protocol.api import ApiKey
from tests.cluster.wire import WireClient, batch
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(60)


def epoch_end(client: WireClient, topic: str, current_epoch: int, epoch: int) -> dict:
    body = {"replica_id": 2, "topics": [{"name": topic, "partitions": [
        {"index": 0, "current_leader_epoch": current_epoch, "leader_epoch": epoch}]}]}
    return client.call(ApiKey.OFFSET_FOR_LEADER_EPOCH, body)["topics"][0]["partitions"][0]


def partition_state(client: WireClient, topic: str) -> tuple[str, dict]:
    view = client.metadata([topic])["topics"][0]
    return view["name"], view["partitions"][0]


def test_offset_for_leader_epoch_and_its_epoch_checks(node) -> None:
    with WireClient(node.port) as client:
        assert client.create_topic("epochs")["error_code"] == 0
        for i in range(3):
            assert client.produce("epochs", 0, batch([b"v%d" % i]), acks=-1)["error_code"] == 0
        _, p = partition_state(client, "epochs")
        epoch = p["leader_epoch"]
        answer = epoch_end(client, "epochs", epoch, epoch)
        assert (answer["error_code"], answer["leader_epoch"], answer["end_offset"]) == (errors.NONE, epoch, 3)
        assert epoch_end(client, "epochs", -1, epoch + 5)["end_offset"] == 3  # later epoch: log end
        if epoch > 0:
            assert epoch_end(client, "epochs", epoch - 1, epoch)["error_code"] == errors.FENCED_LEADER_EPOCH
        assert epoch_end(client, "epochs", epoch + 1, epoch)["error_code"] == errors.UNKNOWN_LEADER_EPOCH
        assert epoch_end(client, "nope", -1, 0)["error_code"] == errors.UNKNOWN_TOPIC_OR_PARTITION


def test_alter_partition_refuses_stale_epochs_and_non_leaders(node) -> None:
    with WireClient(node.port) as client:
        assert client.create_topic("isr")["error_code"] == 0
        _, p = partition_state(client, "isr")
        topic_id = wait_until(lambda: "created partition" in node.log() and _topic_id(node), 10)

        broker_epoch = client.call(ApiKey.DESCRIBE_CLUSTER, {})["brokers"][0]["broker_epoch"]
        assert broker_epoch > 0

        def alter(broker_id: int, leader_epoch: int, partition_epoch: int, isr: list[int],
                  sender_epoch: int = broker_epoch) -> dict:
            body = {"broker_id": broker_id, "broker_epoch": sender_epoch, "topics": [{"topic_id": topic_id, "partitions": [
                {"index": 0, "leader_epoch": leader_epoch, "partition_epoch": partition_epoch, "new_isr": isr}]}]}
            response = client.call(ApiKey.ALTER_PARTITION, body)
            assert response["error_code"] == errors.NONE
            return response["topics"][0]["partitions"][0]

        leader, epoch = p["leader_id"], p["leader_epoch"]
        assert alter(leader + 1, epoch, 0, [leader + 1])["error_code"] == errors.NOT_LEADER_OR_FOLLOWER
        assert alter(leader, epoch + 1, 0, [leader])["error_code"] == errors.FENCED_LEADER_EPOCH
        # A request of an earlier run of the leader's process (an older broker epoch) is refused.
        assert alter(leader, epoch, 0, [leader], broker_epoch - 1)["error_code"] == errors.STALE_BROKER_EPOCH
        stale = alter(leader, epoch, 99, [leader])
        assert stale["error_code"] == errors.INVALID_UPDATE_VERSION
        assert (stale["leader_id"], stale["isr"]) == (leader, [leader])
        assert alter(leader, epoch, stale["partition_epoch"], [leader, 7])["error_code"] == errors.INVALID_REQUEST
        body = {"broker_id": leader, "broker_epoch": broker_epoch, "topics": [{"topic_id": "no-such-id", "partitions": [
            {"index": 0, "leader_epoch": epoch, "partition_epoch": 0, "new_isr": [leader]}]}]}
        unknown = client.call(ApiKey.ALTER_PARTITION, body)["topics"][0]["partitions"][0]
        assert unknown["error_code"] == errors.UNKNOWN_TOPIC_OR_PARTITION


def _topic_id(node) -> str:
    """Metadata does not carry topic ids: the node logs the partitions it creates."""
    found = re.findall(r"created partition ([0-9a-f]+)-0 ", node.log())
    assert len(found) == 1, found
    return found[0]


def test_a_replica_fetch_from_a_non_follower_is_refused(node) -> None:
    with WireClient(node.port) as client:
        assert client.create_topic("solo")["error_code"] == 0
        assert client.produce("solo", 0, batch([b"x"]), acks=1)["error_code"] == 0
        body = client.fetch_body("solo", 0, 0)
        body["replica_id"] = 5
        answer = client.call(ApiKey.FETCH, body)["topics"][0]["partitions"][0]
        assert answer["error_code"] == errors.FENCED_LEADER_EPOCH  # a replica must quote the epoch
        _, p = partition_state(client, "solo")
        body["topics"][0]["partitions"][0]["current_leader_epoch"] = p["leader_epoch"]
        answer = client.call(ApiKey.FETCH, body)["topics"][0]["partitions"][0]
        assert answer["error_code"] == errors.NOT_LEADER_OR_FOLLOWER
        consumer = client.fetch("solo", 0, 0)
        assert consumer["error_code"] == errors.NONE and consumer["high_watermark"] == 1


def test_every_run_of_a_node_registers_under_a_new_broker_epoch(node) -> None:
    """A restarted process is a new incarnation: a new broker epoch (so AlterPartition from
    the earlier run is refused), a new leader epoch for its partitions, and its data kept."""
    with WireClient(node.port) as client:
        assert client.create_topic("runs")["error_code"] == 0
        assert client.produce("runs", 0, batch([b"before"]), acks=-1)["error_code"] == 0
        first_epoch = client.call(ApiKey.DESCRIBE_CLUSTER, {})["brokers"][0]["broker_epoch"]
        first_leader_epoch = partition_state(client, "runs")[1]["leader_epoch"]
    node.kill9()
    node.start()
    with WireClient(node.port) as client:
        broker = client.call(ApiKey.DESCRIBE_CLUSTER, {})["brokers"][0]
        assert broker["broker_epoch"] > first_epoch and not broker["fenced"]
        p = wait_until(lambda: (lambda q: q if q["leader_id"] == 1 else None)(partition_state(client, "runs")[1]), 10)
        assert p["leader_epoch"] > first_leader_epoch
        produced = client.produce("runs", 0, batch([b"after"]), acks=-1)
        assert (produced["error_code"], produced["base_offset"]) == (errors.NONE, 1)
