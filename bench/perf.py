"""Producer and consumer throughput, in the shape of kafka-producer-perf-test and
kafka-consumer-perf-test, next to the raw LMDB append rate of the same bytes.

Theory of operation
-------------------
``run_produce`` starts a node of its own in a fresh temporary directory (unless given
``bootstrap``), creates the topic, and sends ``records`` values of ``record_size`` bytes from
this process through the public ``Producer``; the node is a separate process, so the two do
not share a GIL. Before that, ``raw_lmdb_append`` writes the same number of bytes, cut into
batches built by the same codec, straight into a fresh LMDB environment with synced commits
(``batches_per_txn`` batches per transaction): the local limit the node is compared with.
``run_consume`` produces a backlog the same way, then times one ``Consumer`` reading it all
from the beginning. Each run returns a dict of figures that ``bench.report`` prints and saves.
"""

from __future__ import annotations

import itertools
import os
import shutil
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

import lmdb
from tqdm import tqdm

from cluster.client import Admin, Consumer, NewTopic, Producer, TopicPartition
from cluster.launcher import NodeProcess
from storage.batch import encode_batch

PROGRESS_EVERY_RECORDS = 10_000
CONSUME_IDLE_TIMEOUT_S = 30.0
RAW_MAP_SIZE_BYTES = 8 << 30


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
    total_records = batches * records_per_batch
    return {
        "records": total_records,
        "seconds": elapsed,
        "records_per_s": total_records / elapsed,
        "mb_per_s": batches * len(batch) / elapsed / 1e6,
        "batch_bytes": len(batch),
        "batches_per_txn": batches_per_txn,
    }


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
             producer_options: dict[str, Any], progress: bool) -> dict[str, Any]:
    values = itertools.cycle(_value_pool(record_size))
    errors: list[BaseException | None] = []
    with Producer(bootstrap_servers=bootstrap, acks=acks, **producer_options) as producer:
        bar = tqdm(total=records, unit="rec", unit_scale=True, disable=not progress, desc="produce")
        started = time.perf_counter()
        send = producer.send
        samples = []  # the last future of every chunk: a failed batch shows up here
        for chunk_start in range(0, records, PROGRESS_EVERY_RECORDS):
            chunk = min(PROGRESS_EVERY_RECORDS, records - chunk_start)
            for value in itertools.islice(values, chunk):  # the loop body is all that is timed per record
                last = send(topic, value)
            samples.append(last)
            bar.update(chunk)
        producer.flush()
        elapsed = time.perf_counter() - started
        bar.close()
        errors.extend(f.exception() for f in samples if f.exception() is not None)
    if errors:
        raise RuntimeError(f"produce failed: {errors[0]}")
    return {
        "records": records,
        "seconds": elapsed,
        "records_per_s": records / elapsed,
        "mb_per_s": records * record_size / elapsed / 1e6,
    }


def run_produce(*, records: int, record_size: int, partitions: int, acks: int | str,
                topic: str = "bench-produce", bootstrap: str | None = None,
                producer_options: dict[str, Any] | None = None, batches_per_txn: int = 10,
                progress: bool = True) -> dict[str, Any]:
    options = dict(producer_options or {})
    with tempfile.TemporaryDirectory(prefix="kraft-bench-lmdb-") as raw_dir:
        raw = raw_lmdb_append(records, record_size, _records_per_batch(record_size, options),
                              batches_per_txn, Path(raw_dir))
    cluster = _Cluster(bootstrap)
    try:
        _create_topic(cluster.bootstrap, topic, partitions, 1)
        produced = _produce(cluster.bootstrap, topic, records, record_size, acks, options, progress)
        facts = cluster.facts()
    finally:
        cluster.close()
    return {
        "workload": "produce",
        "params": {"records": records, "record_size": record_size, "partitions": partitions,
                   "acks": acks, "producer_options": options, "batches_per_txn": batches_per_txn},
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
        idle_since = time.monotonic()
        while count < records:
            got = consumer.poll(timeout_ms=200, max_records=100_000)
            n = 0
            for batch in got.values():
                n += len(batch)
                nbytes += sum(len(r.value or b"") for r in batch)
            if n:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > CONSUME_IDLE_TIMEOUT_S:
                raise RuntimeError(f"consumer stalled after {count} of {records} records")
            count += n
            bar.update(n)
        elapsed = time.perf_counter() - started
        bar.close()
    return {"records": count, "seconds": elapsed, "records_per_s": count / elapsed,
            "mb_per_s": nbytes / elapsed / 1e6}
