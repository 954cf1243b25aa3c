"""The fault run's node processes: start, kill -9, pause, restart inside their namespaces,
ask the cluster what it looks like, and dump every replica once the nodes are stopped.

Theory of operation
-------------------
``FaultNode`` owns one node's config file, data dir, log file and OS process. ``start``
spawns ``[ip netns exec NS] <python> -m cluster.node --config FILE`` (``ip netns exec``
execs the node, so the PID is the node's own) and ``wait_ready`` polls ApiVersions on the
node's address. ``incarnation`` counts starts, so an observation can be tied to one process
lifetime. ``kill9`` / ``pause`` / ``resume`` / ``stop`` act on that PID only.

``FaultCluster`` owns the nodes of one run and a ``Network`` (``netns``). It writes each
node's config (its address from the network, the shared voters list and password, the run's
timings) and answers questions with raw frames (``cluster.launcher.probe``): the leaders
and ISRs of a topic as the answering nodes see them, the active controller, whether every
partition has its full ISR. ``dump`` opens every stopped node's ``LogStore`` and reads
every partition's records, log end offset and high-watermark checkpoint. ``close`` kills
every process it started, by PID (the runner's ``finally``).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cluster.launcher import api_versions_ok, probe, wait_until, write_toml
from cluster.protocol import errors
from cluster.protocol.api import ApiKey
from storage.batch import decode_batch
from storage.log import LogStore
from tests.faults.history import decode_value
from tests.faults.netns import Network

logger = logging.getLogger(__name__)

NODE_READY_TIMEOUT_S = 30.0
NODE_STOP_TIMEOUT_S = 15.0
DUMP_READ_BYTES_MAX = 1 << 20
LOG_TAIL_CHARS = 4000

# Node timings for fault runs: a follower 3 s behind leaves the ISR, so a cut or paused
# follower stops blocking acks=all well within one fault's hold time.
NODE_OVERRIDES: dict[str, Any] = {
    "replica_lag_time_max_ms": 3000,
    "broker_session_timeout_ms": 1500,
    "broker_heartbeat_interval_ms": 250,
}

# A dump: node id -> partition index -> {"records": [[offset, value], ...],
#                                         "log_start_offset", "log_end_offset", "high_watermark"}
Dump = dict[int, dict[int, dict[str, Any]]]


class FaultNode:
    def __init__(self, node_id: int, directory: Path, host: str, port: int, raft_port: int,
                 config: dict[str, Any], command_prefix: list[str]) -> None:
        self.node_id = node_id
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.port = port
        self.raft_port = raft_port
        self.data_dir = directory / "data"
        self.config = {"node_id": node_id, "listeners": f"{host}:{port}",
                       "controller_listener": f"{host}:{raft_port}",
                       "data_dir": str(self.data_dir), **config}
        self.config_path = write_toml(directory / "node.toml", self.config)
        self.log_path = directory / "node.log"
        self.command_prefix = command_prefix
        self.process: subprocess.Popen[bytes] | None = None
        self.incarnation = 0
        self.paused = False

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        assert not self.running, f"node {self.node_id} is already running"
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== start {self.incarnation + 1} at {time.time():.3f}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [*self.command_prefix, sys.executable, "-m", "cluster.node", "--config", str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT, cwd=str(self.directory), start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.incarnation += 1
        self.paused = False

    def wait_ready(self, timeout_s: float = NODE_READY_TIMEOUT_S) -> None:
        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"node {self.node_id} exited with {self.process.returncode}:\n{self.log_tail()}")
            return api_versions_ok(self.host, self.port)

        wait_until(ready, timeout_s, interval_s=0.05, message=f"node {self.node_id} on {self.address}")

    def answers(self) -> bool:
        return self.running and not self.paused and api_versions_ok(self.host, self.port)

    def kill9(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.paused = False

    def pause(self) -> None:
        if self.running and not self.paused:
            assert self.process is not None
            os.kill(self.process.pid, signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.process is not None and self.paused:
            if self.process.poll() is None:
                os.kill(self.process.pid, signal.SIGCONT)
            self.paused = False

    def stop(self, timeout_s: float = NODE_STOP_TIMEOUT_S) -> int | None:
        """SIGTERM (after SIGCONT), then kill -9 if it does not exit; the exit code."""
        if self.process is None:
            return None
        self.resume()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("node %d ignored SIGTERM for %.0f s; kill -9", self.node_id, timeout_s)
                self.kill9()
        return self.process.returncode

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]


class FaultCluster:
    def __init__(self, directory: Path, network: Network, password: str,
                 overrides: dict[str, Any] | None = None) -> None:
        self.directory = directory
        self.network = network
        self.nodes: dict[int, FaultNode] = {}
        voters = []
        addresses = {}
        for node_id in network.node_ids:
            host = network.host(node_id)
            port, raft_port = network.ports(node_id)
            addresses[node_id] = (host, port, raft_port)
            voters.append(f"{node_id}@{host}:{raft_port}")
        config = {"controller_quorum_voters": voters, "cluster_password": password,
                  **NODE_OVERRIDES, **(overrides or {})}
        for node_id, (host, port, raft_port) in addresses.items():
            self.nodes[node_id] = FaultNode(node_id, directory / f"node{node_id}", host, port, raft_port,
                                            config, network.command_prefix(node_id))

    @property
    def node_ids(self) -> list[int]:
        return sorted(self.nodes)

    @property
    def bootstrap(self) -> str:
        return ",".join(node.address for node in self.nodes.values())

    def start_all(self) -> None:
        for node in self.nodes.values():
            if not node.running:
                node.start()
        for node in self.nodes.values():
            node.wait_ready()

    def wait_formed(self, timeout_s: float) -> None:
        """Every node registered and unfenced, as every node sees it."""
        ids = self.node_ids

        def formed() -> bool:
            for node in self.nodes.values():
                answer = probe(node.host, node.port, ApiKey.DESCRIBE_CLUSTER, {})
                if answer is None or answer.get("error_code") or answer.get("controller_id", -1) < 0:
                    return False
                if {b["node_id"] for b in answer.get("brokers", []) if not b.get("fenced")} != set(ids):
                    return False
            return True

        wait_until(formed, timeout_s, interval_s=0.1, message=f"a cluster of nodes {ids}")

    def responsive(self) -> list[FaultNode]:
        return [node for node in self.nodes.values() if node.running and not node.paused]

    def topic_views(self, topic: str) -> dict[int, list[dict[str, Any]]]:
        """node id -> the partitions of ``topic`` as that node sees them (answering nodes only)."""
        views = {}
        for node in self.responsive():
            answer = probe(node.host, node.port, ApiKey.METADATA, {"topics": [topic], "allow_auto_topic_creation": False})
            if answer is None:
                continue
            topics = answer.get("topics") or []
            if topics and topics[0].get("error_code") == errors.NONE:
                views[node.node_id] = topics[0]["partitions"]
        return views

    def leaders(self, topic: str) -> dict[int, int]:
        """partition -> leader, from the view with the highest leader epochs."""
        best: dict[int, tuple[int, int]] = {}
        for partitions in self.topic_views(topic).values():
            for p in partitions:
                index, epoch = p["partition_index"], p.get("leader_epoch", -1)
                if p["leader_id"] >= 0 and (index not in best or epoch > best[index][0]):
                    best[index] = (epoch, p["leader_id"])
        return {index: leader for index, (_, leader) in best.items()}

    def controller_id(self) -> int | None:
        votes: dict[int, int] = {}
        for node in self.responsive():
            answer = probe(node.host, node.port, ApiKey.DESCRIBE_CLUSTER, {})
            if answer is not None and answer.get("controller_id", -1) >= 0:
                votes[answer["controller_id"]] = votes.get(answer["controller_id"], 0) + 1
        return max(votes, key=lambda k: votes[k]) if votes else None

    def full_isr(self, topic: str, partitions: int) -> bool:
        """Every node answers and sees every partition led, with every replica in its ISR."""
        views = self.topic_views(topic)
        if sorted(views) != self.node_ids:
            return False
        for partitions_seen in views.values():
            if len(partitions_seen) != partitions:
                return False
            for p in partitions_seen:
                if p["leader_id"] < 0 or sorted(p["isr_nodes"]) != sorted(p["replica_nodes"]):
                    return False
        return True

    def stop_all(self) -> None:
        for node in self.nodes.values():
            node.stop()

    def kill_all(self) -> None:
        for node in self.nodes.values():
            try:
                node.resume()
                node.kill9()
            except (OSError, subprocess.SubprocessError) as exc:
                logger.warning("killing node %d: %s", node.node_id, exc)

    def dump(self) -> Dump:
        """Every partition of every stopped node's LogStore (a store holds one topic here)."""
        assert not any(node.running for node in self.nodes.values()), "dump needs stopped nodes"
        return {node_id: dump_store(node.data_dir / "log") for node_id, node in self.nodes.items()}

    def close(self) -> None:
        self.kill_all()


def dump_store(path: Path) -> dict[int, dict[str, Any]]:
    """partition index -> records and offsets of one node's LogStore, read to its log end."""
    store = LogStore(path)
    try:
        out: dict[int, dict[str, Any]] = {}
        for (_, index), log in sorted(store.partitions().items()):
            records: list[list[Any]] = []
            offset = log.log_start_offset
            while offset < log.log_end_offset:
                batches = log.read(offset, DUMP_READ_BYTES_MAX)
                if not batches:
                    break
                for one in batches:
                    records.extend([r.offset, decode_value(r.value)] for r in decode_batch(one) if r.offset >= offset)
                offset = records[-1][0] + 1 if records else log.log_end_offset
            out[index] = {"records": records, "log_start_offset": log.log_start_offset,
                          "log_end_offset": log.log_end_offset, "high_watermark": log.high_watermark}
        return out
    finally:
        store.close()


def truncate_partition(path: Path, index: int, offset: int) -> None:
    """Remove every offset >= ``offset`` of partition ``index`` in a stopped node's store."""
    store = LogStore(path)
    try:
        for (_, partition), log in store.partitions().items():
            if partition == index:
                log.truncate_to(offset).result(timeout=30)
    finally:
        store.close()


def log_end_offsets(path: Path) -> dict[int, int]:
    store = LogStore(path)
    try:
        return {index: log.log_end_offset for (_, index), log in store.partitions().items()}
    finally:
        store.close()
