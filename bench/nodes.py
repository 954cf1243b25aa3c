"""The cluster a benchmark measures: started by the harness, or a running one.

Theory of operation
-------------------
``BenchCluster`` owns a temporary directory and, unless given ``bootstrap``, the node
processes in it: one node with the embedded defaults, or ``count`` nodes configured by
``cluster.devcluster.node_configs`` (every node a voter, a cluster password file written
here) on a block of free loopback ports. Each node is started and waited for in turn, so
``NodeProcess.ready_seconds`` is that node's start-up time to its first served request;
with several nodes the harness then waits until every broker is registered and unfenced.
``resources`` reads each node's peak RSS (VmHWM); ``close`` stops the nodes and removes
the directory.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from cluster.devcluster import node_configs
from cluster.launcher import NodeProcess, cluster_formed, free_port, wait_until

log = logging.getLogger(__name__)

CLUSTER_FORMED_TIMEOUT_S = 60.0
PORT_BLOCK_ATTEMPTS_MAX = 50


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_block(count: int) -> int:
    """A port p such that p .. p + count - 1 are free on 127.0.0.1 now."""
    for _ in range(PORT_BLOCK_ATTEMPTS_MAX):
        base = free_port()
        if base + count < 65536 and all(_port_free(base + i) for i in range(1, count)):
            return base
    raise RuntimeError(f"no block of {count} free ports found")


class BenchCluster:
    def __init__(self, nodes: int, bootstrap: str | None = None) -> None:
        self.count = nodes
        self.tmp = Path(tempfile.mkdtemp(prefix="kraft-bench-"))
        self.nodes: list[NodeProcess] = []
        self.formed_s: float | None = None
        self.idle_rss_bytes: list[int | None] = []
        if bootstrap is not None:
            self.bootstrap = bootstrap
            return
        try:
            self._start(nodes)
        except BaseException:
            self.close()
            raise
        self.bootstrap = ",".join(n.bootstrap for n in self.nodes)

    def _start(self, count: int) -> None:
        started = time.monotonic()
        if count == 1:
            self.nodes.append(NodeProcess(self.tmp / "node-1").start())
        else:
            password_file = self.tmp / "cluster-password"
            password_file.write_text(secrets.token_urlsafe(32) + "\n")
            password_file.chmod(0o600)
            base_port = free_port_block(count)
            controller_base_port = free_port_block(count)
            for i, (port, config) in enumerate(
                    node_configs(count, self.tmp, base_port, controller_base_port, password_file), start=1):
                self.nodes.append(NodeProcess(self.tmp / f"node-{i}", config, port=port).start())
            ids = list(range(1, count + 1))
            wait_until(lambda: all(cluster_formed("127.0.0.1", n.port, ids) for n in self.nodes),
                       CLUSTER_FORMED_TIMEOUT_S, interval_s=0.05, message="every broker registered")
        self.formed_s = time.monotonic() - started
        self.idle_rss_bytes = [n.peak_rss_bytes() for n in self.nodes]
        log.info("bench cluster of %d node(s) up in %.2f s", count, self.formed_s)

    @property
    def started_by_bench(self) -> bool:
        return bool(self.nodes)

    def resources(self) -> dict[str, Any]:
        if not self.nodes:
            return {"bootstrap": self.bootstrap, "started_by_bench": False}
        return {
            "bootstrap": self.bootstrap,
            "started_by_bench": True,
            "nodes": self.count,
            "cluster_ready_s": self.formed_s,
            "node_start_to_first_request_s": [n.ready_seconds for n in self.nodes],
            "node_idle_rss_bytes": self.idle_rss_bytes,
            "node_peak_rss_bytes": [n.peak_rss_bytes() for n in self.nodes],
        }

    def close(self) -> None:
        for node in self.nodes:
            if node.process is not None:
                try:
                    node.stop()
                except RuntimeError as exc:
                    log.warning("bench node did not stop cleanly: %s", exc)
        shutil.rmtree(self.tmp, ignore_errors=True)
