"""``kraft dev-cluster``: a local cluster of N node processes on loopback, for development.

Theory of operation
-------------------
Voters come first, then ``--brokers`` broker-only nodes that follow the voters' metadata
over their client listeners. Node ``i`` gets client port ``base_port + i - 1`` and Raft port
``controller_base_port + i - 1`` (voters only) on 127.0.0.1, its own data dir ``DIR/node-i`` and log
file ``DIR/node-i/node.log``; all nodes share a cluster password
generated once and kept in ``DIR/cluster-password`` (mode 0600), so a restarted dev cluster
on the same directory finds its data and its quorum again. The command waits until every
node answers and sees every broker registered and unfenced under an active controller,
prints the addresses, then waits for Ctrl-C or SIGTERM and stops the nodes
with SIGTERM (kill -9 after a grace period). A node that dies while the cluster runs is
reported and the others stop too.
"""

from __future__ import annotations

import os
import secrets
import signal
import threading
from pathlib import Path
from typing import Any

from cluster.launcher import NodeProcess, cluster_formed, wait_until

POLL_INTERVAL_S = 0.5
FORMED_TIMEOUT_S = 30.0
NODES_MAX = 9


def node_configs(count: int, directory: Path, base_port: int, controller_base_port: int,
                 password_file: Path, brokers: int = 0) -> list[tuple[int, dict[str, Any]]]:
    """(client port, config) for each node of a dev cluster: ``count`` voters, then
    ``brokers`` broker-only nodes that follow the voters' metadata."""
    voters = [f"{i}@127.0.0.1:{controller_base_port + i - 1}" for i in range(1, count + 1)]
    voter_listeners = [f"127.0.0.1:{base_port + i - 1}" for i in range(1, count + 1)]
    out = []
    for i in range(1, count + brokers + 1):
        port = base_port + i - 1
        config: dict[str, Any] = {
            "node_id": i,
            "listeners": f"127.0.0.1:{port}",
            "data_dir": str(directory / f"node-{i}" / "data"),
            "controller_quorum_voters": voters,
            "cluster_password_file": str(password_file),
        }
        if i <= count:
            config["controller_listener"] = f"127.0.0.1:{controller_base_port + i - 1}"
        else:
            config["controller_quorum_bootstrap_servers"] = voter_listeners
        out.append((port, config))
    return out


def _password_file(directory: Path) -> Path:
    path = directory / "cluster-password"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(32) + "\n")
        path.chmod(0o600)
    return path


def run(count: int, directory: Path, base_port: int, controller_base_port: int, brokers: int = 0) -> int:
    if not 1 <= count <= NODES_MAX or not 0 <= brokers <= NODES_MAX:
        print(f"error: --nodes must be between 1 and {NODES_MAX}, --brokers between 0 and {NODES_MAX}")
        return 2
    directory.mkdir(parents=True, exist_ok=True)
    password_file = _password_file(directory)
    nodes = [NodeProcess(directory / f"node-{i}", config, port=port)
             for i, (port, config) in enumerate(
                 node_configs(count, directory, base_port, controller_base_port, password_file, brokers),
                 start=1)]
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        for node in nodes:
            node.start(wait=False)
        for node in nodes:
            node.wait_ready()
        ids = list(range(1, count + brokers + 1))
        wait_until(lambda: all(cluster_formed("127.0.0.1", n.port, ids) for n in nodes), FORMED_TIMEOUT_S,
                   interval_s=0.1, message="every node registered with an active controller")
        bootstrap = ",".join(n.bootstrap for n in nodes)
        print(f"kraft dev cluster of {count} voters and {brokers} broker-only nodes is up (data in {directory})")
        for i, node in enumerate(nodes, start=1):
            raft = node.config.get("controller_listener", "none (broker only)")
            print(f"  node {i}: client 127.0.0.1:{node.port}  raft {raft}  log {node.log_path}")
        print(f"bootstrap servers: {bootstrap}")
        print("Ctrl-C stops the cluster.", flush=True)
        while not stop.wait(POLL_INTERVAL_S):
            dead = [i for i, n in enumerate(nodes, start=1) if not n.running]
            if dead:
                print(f"node(s) {dead} exited; stopping the cluster (see their node.log)")
                return 1
        return 0
    except (RuntimeError, TimeoutError) as exc:
        print(f"error: the dev cluster did not start: {exc}")
        return 1
    finally:
        for node in nodes:
            if node.running:
                node.signal(signal.SIGTERM)
        for node in nodes:
            if node.process is not None:
                try:
                    node.stop()
                except RuntimeError:
                    pass
        print("dev cluster stopped")


def default_directory() -> Path:
    return Path(os.environ.get("KRAFT_DEV_CLUSTER_DIR", "kraft-dev-cluster"))
