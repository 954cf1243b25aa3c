"""Three real node processes under kill -9: a broker is fenced and its partitions get new
leaders from the ISR; it comes back and leads again; the active controller dies and another
takes over; the whole cluster dies and comes back with every topic and placement."""

from __future__ import annotations

import time

import pytest

from cluster.config import NodeConfig
from cluster.launcher import wait_until
from tests.cluster.multinode import LocalCluster, cluster_factory  # noqa: F401  (fixture)
from tests.cluster.wire import batch

pytestmark = pytest.mark.timeout(120)

SESSION_TIMEOUT_MS = NodeConfig.broker_session_timeout_ms
# Liveness deadlines only: tests print the failover times they measure, never assert them.
FAILOVER_DEADLINE_S = 30.0


def leaders(cluster: LocalCluster, node_id: int, topic: str) -> dict[int, tuple[int, int]]:
    """partition -> (leader, leader_epoch) as ``node_id`` sees it."""
    return {i: (p["leader_id"], p["leader_epoch"]) for i, p in cluster.partitions(node_id, topic).items()}


def create(cluster: LocalCluster, node_id: int, topic: str, partitions: int, replication_factor: int) -> None:
    with cluster.client(node_id) as client:
        result = client.create_topic(topic, partitions, replication_factor=replication_factor)
        assert result["error_code"] == 0, result


def test_a_killed_broker_is_fenced_its_partitions_move_and_it_comes_back(cluster_factory) -> None:
    cluster = cluster_factory(leader_imbalance_check_interval_ms=1000)
    controller_id = cluster.wait_formed()
    create(cluster, controller_id, "orders", 6, 3)
    before = leaders(cluster, controller_id, "orders")
    victim = next(i for i in (1, 2, 3) if i != controller_id)
    survivors = [i for i in (1, 2, 3) if i != victim]
    led = {p for p, (leader, _) in before.items() if leader == victim}
    assert len(led) == 2

    killed = time.monotonic()
    cluster.kill9(victim)

    def moved() -> bool:
        views = [leaders(cluster, i, "orders") for i in survivors]
        return all(all(view[p][0] not in (victim, -1) for p in led) for view in views)

    wait_until(moved, FAILOVER_DEADLINE_S, interval_s=0.02, message="new leaders of the killed broker's partitions")
    failover_s = time.monotonic() - killed
    print(f"\nkill -9 of broker {victim} -> new leaders on every survivor after {failover_s:.2f} s "
          f"(broker_session_timeout_ms {SESSION_TIMEOUT_MS})")

    for node_id in survivors:
        view = cluster.metadata(node_id)
        assert sorted(b["node_id"] for b in view["brokers"]) == survivors
        for index, p in cluster.partitions(node_id, "orders").items():
            assert victim not in p["isr_nodes"]
            assert p["offline_replicas"] == [victim]
            assert p["leader_id"] in p["isr_nodes"]
            if index in led:
                assert p["leader_epoch"] == before[index][1] + 1
            else:
                assert (p["leader_id"], p["leader_epoch"]) == before[index]

    cluster.start(victim)
    cluster.wait_formed([1, 2, 3])

    def restored() -> bool:
        return all(leaders(cluster, i, "orders") == {p: (before[p][0], leaders(cluster, i, "orders")[p][1])
                                                    for p in before} for i in (1, 2, 3))

    wait_until(restored, 15, interval_s=0.1, message="preferred leaders restored")
    for node_id in (1, 2, 3):
        for index, p in cluster.partitions(node_id, "orders").items():
            assert sorted(p["isr_nodes"]) == [1, 2, 3]
            assert p["offline_replicas"] == []
            if index in led:
                assert p["leader_epoch"] == before[index][1] + 2  # moved away, then back


def test_a_killed_controller_is_replaced_and_topics_can_still_be_created(cluster_factory) -> None:
    cluster = cluster_factory()
    old_controller = cluster.wait_formed()
    create(cluster, old_controller, "before", 3, 3)
    led = {p for p, (leader, _) in leaders(cluster, old_controller, "before").items() if leader == old_controller}
    survivors = [i for i in (1, 2, 3) if i != old_controller]

    killed = time.monotonic()
    cluster.kill9(old_controller)
    via_first = survivors[0]

    def created() -> bool:
        with cluster.client(via_first) as client:
            result = client.create_topic("after-kill", 2, replication_factor=2)
        assert result["error_code"] in (0, 41, 5, 7), result  # NONE, or NOT_CONTROLLER/… while electing
        return result["error_code"] == 0

    wait_until(created, FAILOVER_DEADLINE_S, interval_s=0.02, message="a topic creation after the controller died")
    create_s = time.monotonic() - killed
    print(f"\nkill -9 of the active controller {old_controller} -> topic creation succeeded after {create_s:.2f} s")
    new_controller = cluster.wait_formed(survivors)
    assert new_controller in survivors

    def moved() -> bool:
        return all(all(leaders(cluster, i, "before")[p][0] in survivors for p in led) for i in survivors)

    wait_until(moved, FAILOVER_DEADLINE_S, interval_s=0.02, message="new leaders of the controller's partitions")
    failover_s = time.monotonic() - killed
    print(f"\nkill -9 of the active controller {old_controller} -> controller {new_controller}, "
          f"new partition leaders after {failover_s:.2f} s")

    via = next(i for i in survivors if i != new_controller)
    create(cluster, via, "after", 4, 2)
    for node_id in survivors:
        partitions = cluster.partitions(node_id, "after")
        assert len(partitions) == 4
        assert all(set(p["replica_nodes"]) <= set(survivors) for p in partitions.values())
    with cluster.client(via) as client:
        assert client.create_topic("too-wide", 1, replication_factor=3)["error_code"] == 38  # 2 live brokers


def test_a_full_cluster_restart_keeps_every_topic_and_placement(cluster_factory) -> None:
    cluster = cluster_factory()
    controller_id = cluster.wait_formed()
    create(cluster, controller_id, "alpha", 6, 3)
    create(cluster, controller_id, "beta", 3, 2)
    with cluster.client(controller_id) as client:
        assert client.create_topic("gamma", 1, replication_factor=1, configs={"retention.ms": "60000"})["error_code"] == 0
        assert client.delete_topics(["gamma"])[0]["error_code"] == 0
    placement = {t: {i: (p["replica_nodes"], p["leader_id"]) for i, p in cluster.partitions(controller_id, t).items()}
                 for t in ("alpha", "beta")}
    leader_of_alpha0 = placement["alpha"][0][1]
    with cluster.client(leader_of_alpha0) as client:
        # acks=all: committed on every ISR member, so it survives whichever replica leads
        # after the restart (every restarted broker registers anew and is fenced first).
        assert client.produce("alpha", 0, batch([b"kept"]), acks=-1)["error_code"] == 0

    cluster.kill9()
    cluster.start()
    cluster.wait_formed([1, 2, 3])
    for node_id in (1, 2, 3):
        view = cluster.metadata(node_id)
        assert sorted(t["name"] for t in view["topics"]) == ["alpha", "beta"]
        for topic in ("alpha", "beta"):
            partitions = cluster.partitions(node_id, topic)
            assert {i: p["replica_nodes"] for i, p in partitions.items()} == \
                {i: replicas for i, (replicas, _) in placement[topic].items()}

    def preferred_leaders() -> bool:
        return all(cluster.partitions(i, "alpha")[p]["leader_id"] == placement["alpha"][p][1]
                   for i in (1, 2, 3) for p in placement["alpha"])

    wait_until(preferred_leaders, 20, interval_s=0.1, message="leaders after the restart")
    with cluster.client(leader_of_alpha0) as client:
        # Visible again once the restarted followers have fetched (the high watermark).
        wait_until(lambda: client.read_all("alpha", 0) == [(0, b"kept")], 10, message="the record read back")


def test_a_partition_whose_only_replica_is_dead_is_offline_and_says_so(cluster_factory) -> None:
    """No unclean election: a partition with no live ISR member has no leader (-1);
    Metadata answers LEADER_NOT_AVAILABLE for it and ``kraft cluster status`` lists it as
    offline, until its replica comes back and leads it again with its data."""
    import subprocess
    import sys

    cluster = cluster_factory()
    controller_id = cluster.wait_formed()
    create(cluster, controller_id, "lonely", 3, 1)
    placement = {i: p["replica_nodes"][0] for i, p in cluster.partitions(controller_id, "lonely").items()}
    victim = next(i for i in (1, 2, 3) if i != controller_id and i in placement.values())
    index = next(i for i, replica in placement.items() if replica == victim)
    with cluster.client(victim) as client:  # once the victim has opened the partition
        wait_until(lambda: client.produce("lonely", index, batch([b"kept"]))["error_code"] == 0, 10,
                   message="a write to the victim's partition")
    cluster.kill9(victim)

    def offline() -> dict | None:
        p = cluster.partitions(controller_id, "lonely")[index]
        return p if p["leader_id"] == -1 else None

    p = wait_until(offline, FAILOVER_DEADLINE_S, interval_s=0.05, message="the partition to go offline")
    assert p["error_code"] == 5 and p["isr_nodes"] == [victim]  # LEADER_NOT_AVAILABLE; never unclean
    status = subprocess.run([sys.executable, "-m", "cluster", "cluster", "status", "--bootstrap-server",
                             cluster.nodes[controller_id].bootstrap], capture_output=True, timeout=60)
    assert status.returncode == 0, status.stderr
    out = status.stdout.decode()
    assert "Offline: 1" in out and "offline" in out, out

    cluster.start(victim)
    back = wait_until(lambda: (lambda q: q if q["leader_id"] == victim else None)(
        cluster.partitions(controller_id, "lonely")[index]), FAILOVER_DEADLINE_S, interval_s=0.05,
        message="the replica back as leader")
    assert back["error_code"] == 0
    with cluster.client(victim) as client:
        wait_until(lambda: client.read_all("lonely", index) == [(0, b"kept")], 10, message="its record")
