"""A node process: ``python -m cluster.node [--config FILE]`` (and ``kraft node``).

Theory of operation
-------------------
``Node`` wires the parts together and owns their lifetimes:

    NodeConfig --> data dir:  meta.properties   (node id + cluster id; refuses another node's dir)
                              metadata/         (LocalMetadataLog: the kraft image, durable)
                              log/              (LogStore: one LMDB env holding every partition)
               --> PartitionManager (LogStore reconciled against the image)
               --> RequestHandlers  (every API)  --> Server (asyncio TCP listener)
               --> retention task   (every log_retention_check_interval_ms)

Start order: data dir, metadata log, LogStore, register this broker and reconcile, then
listen, then log ``node N serving on HOST:PORT (data DIR)``. Stop order is the reverse:
stop accepting and reading, wake long polls, give in-flight requests a grace period, stop
retention, close the LogStore (pending writes complete, flushed), close the metadata log.
SIGTERM and SIGINT trigger the stop; the process then exits 0. A bad config exits 2 with
one line on stderr naming the key; any other start-up failure exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
import uuid
from pathlib import Path

from cluster.config import NodeConfig, load_config
from cluster.handlers import RequestHandlers
from cluster.partitions import PartitionManager
from cluster.protocol.errors import ConfigError
from cluster.server import SHUTDOWN_GRACE_S, Server
from kraft.local_log import LocalMetadataLog
from storage.log import LogStore

logger = logging.getLogger("cluster.node")  # also when run as __main__

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_CONFIG = 2
META_PROPERTIES = "meta.properties"
META_VERSION = 1


def read_or_create_meta(data_dir: Path, node_id: int) -> str:
    """The cluster id stored in the data dir (created on first start); checks the node id."""
    path = data_dir / META_PROPERTIES
    if path.exists():
        properties = dict(
            line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and not line.startswith("#")
        )
        stored_node_id = properties.get("node.id")
        if stored_node_id != str(node_id):
            raise ConfigError(f"data_dir {data_dir} belongs to node {stored_node_id}, not to node_id {node_id}")
        return properties["cluster.id"]
    cluster_id = uuid.uuid4().hex
    temporary = path.with_suffix(".tmp")
    with open(temporary, "w") as out:
        out.write(f"version={META_VERSION}\nnode.id={node_id}\ncluster.id={cluster_id}\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)
    return cluster_id


class Node:
    """One running node (see the module docstring)."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.data_dir = Path(config.data_dir)
        self.server: Server | None = None
        self.store: LogStore | None = None
        self.metadata: LocalMetadataLog | None = None
        self.partitions: PartitionManager | None = None
        self.handlers: RequestHandlers | None = None
        self._retention_task: asyncio.Task | None = None

    async def start(self) -> None:
        config = self.config
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cluster_id = read_or_create_meta(self.data_dir, config.node_id)
        self.metadata = LocalMetadataLog(self.data_dir / "metadata")
        self.store = LogStore(
            self.data_dir / "log",
            sync=config.log_sync,
            map_size_bytes=config.lmdb_map_size_bytes,
            map_size_max_bytes=config.lmdb_map_size_max_bytes,
        )
        self.partitions = PartitionManager(config.node_id, self.store)
        self.handlers = RequestHandlers(config, cluster_id, self.metadata, self.partitions)
        await self.handlers.start()
        self.server = Server(
            config.listener_host,
            config.listener_port,
            self.handlers,
            frame_bytes_max=config.socket_request_max_bytes,
            connections_max=config.connections_max,
            in_flight_max=config.request_in_flight_per_connection_max,
        )
        await self.server.start()
        self._retention_task = asyncio.create_task(self._retention_loop())
        logger.info(
            "node %d serving on %s:%d (data %s)", config.node_id, config.listener_host, self.server.port, config.data_dir
        )

    async def _retention_loop(self) -> None:
        interval_s = self.config.log_retention_check_interval_ms / 1000.0
        assert self.partitions is not None and self.metadata is not None
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.partitions.run_retention(
                    self.metadata.image, int(time.time() * 1000), self.config.topic_config_defaults()
                )
            except Exception:
                logger.exception("node %d retention pass failed", self.config.node_id)

    async def stop(self) -> None:
        node_id = self.config.node_id
        logger.info("node %d stopping", node_id)
        if self.partitions is not None:
            self.partitions.wake_all()
        if self.server is not None:
            await self.server.stop(SHUTDOWN_GRACE_S)
        if self._retention_task is not None:
            self._retention_task.cancel()
            try:
                await self._retention_task
            except asyncio.CancelledError:
                pass
        if self.store is not None:
            await asyncio.to_thread(self.store.close)
        if self.metadata is not None:
            self.metadata.close()
        logger.info("node %d stopped", node_id)


async def run(config: NodeConfig) -> int:
    """Run a node until SIGTERM or SIGINT; the exit code."""
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_requested.set)
    node = Node(config)
    try:
        await node.start()
    except ConfigError as exc:
        logger.error("%s", exc.message)
        await node.stop()
        return EXIT_BAD_CONFIG
    except Exception as exc:
        logger.exception("node %d failed to start: %s", config.node_id, exc)
        await node.stop()
        return EXIT_FAILED
    await stop_requested.wait()
    await node.stop()
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kraft node", description="Run a kraft node.")
    parser.add_argument("--config", metavar="FILE", help="TOML config file (default: the embedded single-node config)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc.message, file=sys.stderr)
        return EXIT_BAD_CONFIG
    logging.basicConfig(
        level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    return asyncio.run(run(config))


if __name__ == "__main__":
    sys.exit(main())
