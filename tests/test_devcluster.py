"""``kraft dev-cluster``: three voters and a broker-only node form one cluster, stopped by SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from cluster.client import Admin, Consumer, NewTopic, Producer, TopicPartition
from cluster.launcher import free_port, wait_until

pytestmark = pytest.mark.timeout(120)


def _free_block(size: int) -> int:
    """A base port whose next ``size`` ports were free a moment ago."""
    for _ in range(50):
        base = free_port()
        if base + size < 65000 and all(_is_free(base + i) for i in range(size)):
            return base
    raise RuntimeError("no block of free ports")


def _is_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def test_dev_cluster_starts_serves_and_stops(tmp_path) -> None:
    base, controller_base = _free_block(4), _free_block(3)
    log = open(tmp_path / "dev.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "cluster", "dev-cluster", "--nodes", "3", "--brokers", "1", "--data-dir", str(tmp_path / "dc"),
         "--base-port", str(base), "--controller-base-port", str(controller_base)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: b"Ctrl-C stops" in (tmp_path / "dev.log").read_bytes() or process.poll() is not None,
                   60, interval_s=0.1, message="the dev cluster to come up")
        out = (tmp_path / "dev.log").read_text()
        assert process.poll() is None, out
        bootstrap = f"127.0.0.1:{base + 1}"
        assert f"bootstrap servers: 127.0.0.1:{base},127.0.0.1:{base + 1},127.0.0.1:{base + 2},127.0.0.1:{base + 3}" in out
        assert "node 4: client" in out and "none (broker only)" in out

        with Admin(bootstrap_servers=bootstrap) as admin:
            admin.create_topics([NewTopic("dev", 3, replication_factor=3)])
            cluster = admin.describe_cluster()
            assert [(b.node_id, b.fenced) for b in cluster.brokers] == [(i, False) for i in (1, 2, 3, 4)]
            (dev,) = admin.describe_topics(["dev"])
            assert len({p.leader for p in dev.partitions}) == 3
        with Producer(bootstrap_servers=bootstrap, acks="all") as producer:
            futures = [producer.send("dev", b"v%d" % i, key=b"k%d" % i) for i in range(300)]
            producer.flush()
            assert all(f.exception() is None for f in futures)
        with Consumer(bootstrap_servers=bootstrap) as consumer:
            tps = [TopicPartition("dev", p) for p in range(3)]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            seen: list[bytes] = []
            wait_until(lambda: seen.extend(r.value for rs in consumer.poll(200).values() for r in rs)
                       or len(seen) >= 300, 30, interval_s=0)
            assert sorted(seen) == sorted(b"v%d" % i for i in range(300))

        status = subprocess.run([sys.executable, "-m", "cluster", "cluster", "status", "--bootstrap-server", bootstrap],
                                capture_output=True, text=True, timeout=30)
        assert status.returncode == 0, status.stderr
        assert status.stdout.count("\tlive") == 4 and "active controller" in status.stdout
        assert "Partitions: 3\tOffline: 0" in status.stdout
        rows = [line.split() for line in status.stdout.split("Topic dev\n")[1].splitlines()[1:4]]
        assert [row[0] for row in rows] == ["0", "1", "2"] and all(row[-1] == "ok" for row in rows)
        assert all(len(row[3].split(",")) == 3 for row in rows)  # replicas on three brokers

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        assert "dev cluster stopped" in (tmp_path / "dev.log").read_text()
        node_configs = [str(tmp_path / "dc" / f"node-{i}" / "node.toml") for i in (1, 2, 3, 4)]
        wait_until(lambda: not any(subprocess.run(["pgrep", "-f", c], capture_output=True).stdout.strip()
                                   for c in node_configs), 10, interval_s=0.1, message="node processes to exit")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        subprocess.run(["pkill", "-9", "-f", str(tmp_path / "dc")], capture_output=True)
        log.close()
