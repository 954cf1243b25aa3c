"""A 3-node cluster of real processes on 127.0.0.1 for the multi-node tests.

``LocalCluster`` writes one config per node (its own client port, Raft port and data dir,
the shared voter list and password), starts every process without waiting, then waits
until each answers ApiVersions. ``metadata(node_id)`` / ``describe(node_id)`` ask one node
over raw frames; ``wait_formed`` polls until every live node lists the same brokers and
controller. Processes are killed by PID in the fixture's finaliser (``cluster_factory``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from cluster.launcher import NodeProcess, free_port, wait_until
from cluster.protocol.api import ApiKey
from tests.cluster.wire import WireClient

PASSWORD = "multinode-test-password"
FORMED_TIMEOUT_S = 30.0


def distinct_ports(count: int, taken: set[int]) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in taken and port not in ports:
            ports.append(port)
    return ports


class LocalCluster:
    def __init__(self, directory: Path, size: int = 3, **overrides: Any) -> None:
        self.nodes: dict[int, NodeProcess] = {}
        raft_ports = distinct_ports(size, set())
        voters = [f"{i + 1}@127.0.0.1:{port}" for i, port in enumerate(raft_ports)]
        for i, raft_port in enumerate(raft_ports):
            node_id = i + 1
            config = {
                "node_id": node_id,
                "controller_listener": f"127.0.0.1:{raft_port}",
                "controller_quorum_voters": voters,
                "cluster_password": PASSWORD,
                **overrides,
            }
            node = NodeProcess(directory / f"node{node_id}", config)
            while node.port in raft_ports or any(n.port == node.port for n in self.nodes.values()):
                node = NodeProcess(directory / f"node{node_id}", config)
            self.nodes[node_id] = node

    def start(self, *node_ids: int) -> "LocalCluster":
        chosen = [self.nodes[i] for i in (node_ids or self.nodes)]
        for node in chosen:
            node.start(wait=False)
        for node in chosen:
            node.wait_ready()
        return self

    def kill9(self, *node_ids: int) -> None:
        for node_id in node_ids or tuple(self.nodes):
            self.nodes[node_id].kill9()

    def live(self) -> list[int]:
        return [i for i, n in self.nodes.items() if n.running]

    @property
    def bootstrap(self) -> str:
        return ",".join(n.bootstrap for n in self.nodes.values() if n.running)

    def client(self, node_id: int) -> WireClient:
        return WireClient(self.nodes[node_id].port, timeout_s=15.0)

    def metadata(self, node_id: int, topics: list[str] | None = None) -> dict:
        with self.client(node_id) as client:
            return client.metadata(topics)

    def describe(self, node_id: int) -> dict:
        with self.client(node_id) as client:
            return client.call(ApiKey.DESCRIBE_CLUSTER, {})

    def controller_id(self, node_id: int) -> int:
        return int(self.metadata(node_id)["controller_id"])

    def wait_formed(self, brokers: list[int] | None = None, timeout_s: float = FORMED_TIMEOUT_S) -> int:
        """Wait until every live node lists ``brokers`` (default: the live ones) and one
        controller; returns that controller's id."""
        expected = sorted(brokers if brokers is not None else self.live())

        def formed() -> int | None:
            views = [self.metadata(i) for i in self.live()]
            controllers = {v["controller_id"] for v in views}
            if len(controllers) != 1 or -1 in controllers:
                return None
            if any(sorted(b["node_id"] for b in v["brokers"]) != expected for v in views):
                return None
            return controllers.pop()

        return wait_until(formed, timeout_s, interval_s=0.05, message=f"a cluster of brokers {expected}")

    def partitions(self, node_id: int, topic: str) -> dict[int, dict]:
        entry = self.metadata(node_id, [topic])["topics"][0]
        assert entry["error_code"] == 0, entry
        return {p["partition_index"]: p for p in entry["partitions"]}

    def logs(self) -> str:
        return "\n".join(f"--- node {i}\n{n.log()[-6000:]}" for i, n in self.nodes.items())


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[Callable[..., LocalCluster]]:
    made: list[LocalCluster] = []

    def make(size: int = 3, start: bool = True, **overrides: Any) -> LocalCluster:
        cluster = LocalCluster(tmp_path / f"cluster{len(made)}", size, **overrides)
        made.append(cluster)
        if start:
            cluster.start()
        return cluster

    yield make
    for cluster in made:
        cluster.kill9()
