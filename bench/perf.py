"""Producer and consumer throughput, in the shape of kafka-producer-perf-test and
kafka-consumer-perf-test, next to the raw LMDB append rate of the same bytes.

Theory of operation
-------------------
``run_produce`` starts a node of its own in a fresh temporary directory (unless given
``bootstrap``), creates the topic, and sends ``records`` values of ``record_size`` bytes from
this process through the public ``Producer`` (``produce``, no per-record future, as
confluent-kafka's; or ``send``, a future per record: ``--api``); the node is a separate
process, so the two do not share a GIL. Before that, ``raw_lmdb_append`` writes the same
number of bytes, cut into batches built by the same codec, straight into a fresh LMDB
environment with synced commits (``batches_per_txn`` batches per transaction): the local
limit the node is compared with.
``run_consume`` produces a backlog the same way, then times one ``Consumer`` reading it all
from the beginning (wall time, and this process's CPU time per record). ``run_ingest``
measures the broker alone: it builds one batch with the same codec, then sends that batch
over and over as Produce requests from ``connections`` client connections (one thread
each, ``in_flight`` requests pipelined per connection, the partitions shared round robin),
so the client does no per-record work and the figure is
the node's ingest rate of pre-built batches, next to the raw LMDB append of the same bytes
measured in the same run. Each run returns a dict of figures that ``bench.report`` prints
and saves; ``python -m bench.perf ingest`` runs the ingest mode from the command line.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import os
import shutil
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import lmdb
from tqdm import tqdm

from bench import report
from bench.workers import value_bytes
from cluster.client import Admin, Consumer, NewTopic, Producer, TopicPartition
from cluster.client.connection import BrokerConnection, ResponseFuture, parse_address
from cluster.launcher import NodeProcess
from cluster.protocol.api import ACKS_ALL, ApiKey
from storage.batch import encode_batch

PROGRESS_EVERY_RECORDS = 10_000
CONSUME_IDLE_TIMEOUT_S = 30.0
RAW_MAP_SIZE_BYTES = 8 << 30
INGEST_IN_FLIGHT_DEFAULT = 8  # Produce requests pipelined per ingest connection
INGEST_REQUEST_TIMEOUT_MS = 60000


def _value_pool(record_size: int, count: int = 1024) -> list[bytes]:
    """Distinct random payloads, reused round-robin (building a value is not what is measured)."""
    return [os.urandom(record_size) for _ in range(count)]


def raw_lmdb_append(records: int, record_size: int, records_per_batch: int, batches_per_txn: int,
                    directory: Path) -> dict[str, Any]:
    """Append the same bytes the producer would send straight into LMDB, synced."""
    now_ms = int(time.time() * 1000)
    batch = encode_batch([(now_ms, None, v, None) for v in _value_pool(record_size, records_per_batch)])
    batches = max(1, records // records_per_batch)
    env = lmdb.open(str(directory), map_size=RAW_MAP_SIZE_BYTES, sync=True, metasync=True)
    key = struct.Struct(">Iq")
    started = time.perf_counter()
    done = 0
    while done < batches:
        with env.begin(write=True) as txn:
            for _ in range(min(batches_per_txn, batches - done)):
                txn.put(key.pack(0, done * records_per_batch), batch, append=True)
                done += 1
    elapsed = time.perf_counter() - started
    env.close()
    return report.throughput(batches * records_per_batch, batches * len(batch), elapsed,
                             batch_bytes=len(batch), batches_per_txn=batches_per_txn)


class _Cluster:
    """A node of our own in a temporary directory, or a running cluster's address."""

    def __init__(self, bootstrap: str | None, node_config: dict[str, Any] | None = None) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="kraft-bench-"))
        self.node: NodeProcess | None = None
        if bootstrap is None:
            self.node = NodeProcess(self.tmp / "node", node_config).start()
            self.bootstrap = self.node.bootstrap
        else:
            self.bootstrap = bootstrap

    def facts(self) -> dict[str, Any]:
        if self.node is None:
            return {"bootstrap": self.bootstrap, "started_by_bench": False}
        return {
            "bootstrap": self.bootstrap,
            "started_by_bench": True,
            "node_start_to_first_request_s": self.node.ready_seconds,
            "node_peak_rss_bytes": self.node.peak_rss_bytes(),
        }

    def close(self) -> None:
        if self.node is not None:
            self.node.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _create_topic(bootstrap: str, topic: str, partitions: int, replication_factor: int) -> None:
    admin = Admin(bootstrap_servers=bootstrap)
    try:
        if topic not in admin.list_topics():
            admin.create_topics([NewTopic(topic, partitions, replication_factor)])
    finally:
        admin.close()


def _produce(bootstrap: str, topic: str, records: int, record_size: int, acks: int | str,
             producer_options: dict[str, Any], progress: bool, api: str = "produce") -> dict[str, Any]:
    """Send ``records`` values through ``Producer.produce`` (no per-record future, failures
    counted by the producer) or ``Producer.send`` (a future per record)."""
    values = itertools.cycle(_value_pool(record_size))
    with Producer(bootstrap_servers=bootstrap, acks=acks, **producer_options) as producer:
        bar = tqdm(total=records, unit="rec", unit_scale=True, disable=not progress, desc="produce")
        started = time.perf_counter()
        send = producer.send if api == "send" else producer.produce
        for chunk_start in range(0, records, PROGRESS_EVERY_RECORDS):
            chunk = min(PROGRESS_EVERY_RECORDS, records - chunk_start)
            for value in itertools.islice(values, chunk):  # the loop body is all that is timed per record
                send(topic, value)
            bar.update(chunk)
        producer.flush()
        elapsed = time.perf_counter() - started
        bar.close()
        failed = producer.metrics()["failed_records"]
    if failed:
        raise RuntimeError(f"produce failed: {failed} of {records} records were not acknowledged")
    return report.throughput(records, records * record_size, elapsed)


def run_produce(*, records: int, record_size: int, partitions: int, acks: int | str,
                topic: str = "bench-produce", bootstrap: str | None = None,
                producer_options: dict[str, Any] | None = None, batches_per_txn: int = 10,
                progress: bool = True, api: str = "produce") -> dict[str, Any]:
    options = dict(producer_options or {})
    with tempfile.TemporaryDirectory(prefix="kraft-bench-lmdb-") as raw_dir:
        raw = raw_lmdb_append(records, record_size, _records_per_batch(record_size, options),
                              batches_per_txn, Path(raw_dir))
    cluster = _Cluster(bootstrap)
    try:
        _create_topic(cluster.bootstrap, topic, partitions, 1)
        produced = _produce(cluster.bootstrap, topic, records, record_size, acks, options, progress, api)
        facts = cluster.facts()
    finally:
        cluster.close()
    return {
        "workload": "produce",
        "params": {"records": records, "record_size": record_size, "partitions": partitions,
                   "acks": acks, "producer_options": options, "batches_per_txn": batches_per_txn, "api": api},
        "produce": produced,
        "raw_lmdb_append": raw,
        "ratio_produce_to_raw_lmdb": produced["records_per_s"] / raw["records_per_s"],
        "cluster": facts,
    }


def _records_per_batch(record_size: int, options: dict[str, Any]) -> int:
    batch_size = int(options.get("batch_size", Producer.DEFAULT_BATCH_SIZE))
    return max(1, batch_size // (record_size + 8))


def run_consume(*, records: int, record_size: int, partitions: int, topic: str = "bench-consume",
                bootstrap: str | None = None, progress: bool = True) -> dict[str, Any]:
    cluster = _Cluster(bootstrap)
    try:
        _create_topic(cluster.bootstrap, topic, partitions, 1)
        produced = _produce(cluster.bootstrap, topic, records, record_size, 1, {}, progress)
        consumed = _consume_all(cluster.bootstrap, topic, partitions, records, progress)
        facts = cluster.facts()
    finally:
        cluster.close()
    return {
        "workload": "consume",
        "params": {"records": records, "record_size": record_size, "partitions": partitions},
        "produce": produced,
        "consume": consumed,
        "cluster": facts,
    }


def _consume_all(bootstrap: str, topic: str, partitions: int, records: int, progress: bool) -> dict[str, Any]:
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    count = 0
    nbytes = 0
    with Consumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        bar = tqdm(total=records, unit="rec", unit_scale=True, disable=not progress, desc="consume")
        started = time.perf_counter()
        cpu_started = time.process_time()
        idle_since = time.monotonic()
        while count < records:
            got = consumer.poll(timeout_ms=200, max_records=100_000)
            n = 0
            for batch in got.values():
                n += len(batch)
                nbytes += value_bytes(batch)
            if n:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > CONSUME_IDLE_TIMEOUT_S:
                raise RuntimeError(f"consumer stalled after {count} of {records} records")
            count += n
            bar.update(n)
        elapsed = time.perf_counter() - started
        cpu_s = time.process_time() - cpu_started
        bar.close()
    # CPU of this process (the application and the consumer's threads) per record: steadier
    # than records/s on a shared machine.
    return report.throughput(count, nbytes, elapsed, cpu_ns_per_record=cpu_s / max(1, count) * 1e9)


# -- ingest of pre-built batches --------------------------------------------------------------


def _ingest_connection(address: str, topic: str, partitions: list[int], batch: bytes, requests: int,
                       acks: int, in_flight: int, errors: list[str]) -> None:
    """Send ``requests`` Produce requests of one batch each, round robin over ``partitions``."""
    host, port = parse_address(address)
    conn = BrokerConnection(host, port, client_id="bench-ingest", request_timeout_ms=INGEST_REQUEST_TIMEOUT_MS)
    window: collections.deque[ResponseFuture] = collections.deque()

    def check(future: ResponseFuture) -> None:
        body = future.result(INGEST_REQUEST_TIMEOUT_MS / 1000)
        for t in body.get("topics", ()):
            for part in t.get("partitions", ()):
                if part.get("error_code") and len(errors) < 10:
                    errors.append(f"partition {part['index']}: error {part['error_code']} {part.get('error_message')}")
        if "topics" not in body and len(errors) < 10:
            errors.append(f"request failed: {body}")

    try:
        for i in range(requests):
            if len(window) >= in_flight:
                check(window.popleft())
            body = {"acks": acks, "timeout_ms": INGEST_REQUEST_TIMEOUT_MS,
                    "topics": [{"name": topic, "partitions": [
                        {"index": partitions[i % len(partitions)], "records": batch}]}]}
            window.append(conn.send(ApiKey.PRODUCE, body))
        while window:
            check(window.popleft())
    except Exception as exc:  # reported by the caller
        errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()


def _ingest(bootstrap: str, topic: str, partitions: int, batch: bytes, records_per_batch: int, batches: int,
            acks: int, connections: int, in_flight: int) -> dict[str, Any]:
    address = bootstrap.split(",")[0]
    shares = [list(range(c, partitions, connections)) or [c % partitions] for c in range(connections)]
    counts = [batches // connections + (1 if c < batches % connections else 0) for c in range(connections)]
    errors: list[str] = []
    threads = [threading.Thread(target=_ingest_connection,
                                args=(address, topic, shares[c], batch, counts[c], acks, in_flight, errors),
                                name=f"bench-ingest-{c}") for c in range(connections) if counts[c]]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"ingest failed: {errors[0]}")
    return report.throughput(batches * records_per_batch, batches * len(batch), elapsed,
                             batches=batches, requests_per_s=batches / elapsed)


def run_ingest(*, records: int, record_size: int, partitions: int, acks: int | str = 1,
               topic: str = "bench-ingest", bootstrap: str | None = None, batch_size: int | None = None,
               connections: int = 1, in_flight: int = INGEST_IN_FLIGHT_DEFAULT,
               batches_per_txn: int = 10) -> dict[str, Any]:
    """The node's ingest rate of pre-built batches against the raw LMDB append of the same bytes."""
    options = {} if batch_size is None else {"batch_size": batch_size}
    records_per_batch = _records_per_batch(record_size, options)
    batches = max(1, records // records_per_batch)
    acks_value = ACKS_ALL if acks in ("all", ACKS_ALL) else int(acks)
    with tempfile.TemporaryDirectory(prefix="kraft-bench-lmdb-") as raw_dir:
        raw = raw_lmdb_append(batches * records_per_batch, record_size, records_per_batch, batches_per_txn,
                              Path(raw_dir))
    now_ms = int(time.time() * 1000)
    batch = encode_batch([(now_ms, None, v, None) for v in _value_pool(record_size, records_per_batch)])
    cluster = _Cluster(bootstrap)
    try:
        _create_topic(cluster.bootstrap, topic, partitions, 1)
        ingested = _ingest(cluster.bootstrap, topic, partitions, batch, records_per_batch, batches, acks_value,
                           connections, in_flight)
        facts = cluster.facts()
    finally:
        cluster.close()
    ratio = ingested["records_per_s"] / raw["records_per_s"]
    return {
        "workload": "ingest",
        "params": {"records": batches * records_per_batch, "record_size": record_size, "partitions": partitions,
                   "acks": acks, "batch_bytes": len(batch), "records_per_batch": records_per_batch,
                   "connections": connections, "in_flight": in_flight, "batches_per_txn": batches_per_txn},
        "produce": ingested,
        "raw_lmdb_append": raw,
        "ratio_produce_to_raw_lmdb": ratio,
        "ratio_ingest_to_raw_lmdb": ratio,
        "cluster": facts,
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.perf ingest``: the broker's ingest of pre-built batches."""

    parser = argparse.ArgumentParser(prog="python -m bench.perf")
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("ingest", help="send pre-built batches to a node: its ingest rate against raw LMDB")
    p.add_argument("--records", type=int, default=2_000_000)
    p.add_argument("--record-size", type=int, default=100, help="value bytes")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--batch-size", type=int, help="batch size in bytes (default: the producer's)")
    p.add_argument("--connections", type=int, default=1)
    p.add_argument("--in-flight", type=int, default=INGEST_IN_FLIGHT_DEFAULT, help="requests pipelined per connection")
    p.add_argument("--acks", default="1", choices=["1", "all", "-1"])
    p.add_argument("--batches-per-txn", type=int, default=10,
                   help="batches per synced transaction in the raw LMDB baseline")
    p.add_argument("--bootstrap-server", help="measure a running node instead of starting one")
    p.add_argument("--out-dir", type=Path, help="where the JSON result goes (default bench/results)")
    args = parser.parse_args(argv)
    result = run_ingest(records=args.records, record_size=args.record_size, partitions=args.partitions,
                        acks=args.acks, bootstrap=args.bootstrap_server, batch_size=args.batch_size,
                        connections=args.connections, in_flight=args.in_flight,
                        batches_per_txn=args.batches_per_txn)
    report.publish(result, args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
