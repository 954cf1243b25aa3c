"""The metadata cache: partial updates, leaders, refresh timing."""

from __future__ import annotations

from cluster.client import errors
from cluster.client.metadata import NO_LEADER, ClusterMetadata


def response(topics: list[dict], brokers=((1, 9001), (2, 9002)), controller: int = 1) -> dict:
    return {
        "cluster_id": "c", "controller_id": controller,
        "brokers": [{"node_id": n, "host": "127.0.0.1", "port": p, "rack": None} for n, p in brokers],
        "topics": topics,
    }


def topic(name: str, leaders: list[int], error: int = 0) -> dict:
    return {"error_code": error, "name": name, "is_internal": False, "partitions": [
        {"error_code": 0, "partition_index": i, "leader_id": leader, "leader_epoch": 3,
         "replica_nodes": [1, 2], "isr_nodes": [leader], "offline_replicas": []}
        for i, leader in enumerate(leaders)]}


def test_leaders_and_partition_counts() -> None:
    md = ClusterMetadata()
    md.update(response([topic("a", [1, 2, -1])]), now_ms=0)
    assert md.partition_count("a") == 3
    assert [md.leader_for("a", p) for p in range(3)] == [1, 2, NO_LEADER]
    assert md.leader_for("a", 7) == NO_LEADER and md.leader_for("zz", 0) == NO_LEADER
    assert md.broker(2).port == 9002 and md.controller_id == 1


def test_a_leader_missing_from_the_brokers_counts_as_unknown() -> None:
    md = ClusterMetadata()
    md.update(response([topic("a", [3])]), now_ms=0)
    assert md.leader_for("a", 0) == NO_LEADER


def test_an_update_replaces_only_the_topics_it_names() -> None:
    md = ClusterMetadata()
    md.update(response([topic("a", [1]), topic("b", [1])]), now_ms=0)
    failed = md.update(response([topic("a", [2, 2]), topic("b", [], error=errors.UNKNOWN_TOPIC_OR_PARTITION)]), now_ms=1)
    assert failed == {"b": errors.UNKNOWN_TOPIC_OR_PARTITION}
    assert md.partition_count("a") == 2 and md.topic("b") is None
    assert md.topic_error("b") == errors.UNKNOWN_TOPIC_OR_PARTITION
    md.update(response([topic("c", [1])]), now_ms=2)
    assert md.partition_count("a") == 2, "a response about c leaves a alone"


def test_refresh_is_due_on_request_after_the_backoff_and_by_age() -> None:
    md = ClusterMetadata(metadata_max_age_ms=1000, retry_backoff_ms=100)
    assert md.refresh_due_in_ms(0) == 0
    md.update(response([]), now_ms=0)
    assert md.refresh_due_in_ms(10) == 990
    md.request_update()
    assert md.refresh_due_in_ms(10) == 90, "a requested refresh still honours the backoff"
    assert md.refresh_due_in_ms(200) == 0
    md.failed_attempt(200)
    assert md.refresh_due_in_ms(250) == 50
    version = md.version
    md.update(response([]), now_ms=300)
    assert md.version == version + 1
