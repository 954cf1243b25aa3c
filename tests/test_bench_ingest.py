"""bench.perf's ingest mode sends pre-built batches that the node stores whole (figures are
not asserted: tests never assert timings)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench import perf
from cluster.client import Consumer, TopicPartition
from cluster.launcher import NodeProcess


@pytest.mark.timeout(120)
def test_ingest_stores_every_batch_it_sends(node: NodeProcess) -> None:
    result = perf.run_ingest(records=30_000, record_size=100, partitions=3, bootstrap=node.bootstrap,
                             batch_size=16_384, connections=2, in_flight=3, topic="ingested")
    params = result["params"]
    records_per_batch = params["records_per_batch"]
    assert records_per_batch == 16_384 // (100 + 8)
    assert result["produce"]["records"] == params["records"] == result["produce"]["batches"] * records_per_batch
    assert result["raw_lmdb_append"]["records"] == params["records"]
    assert result["ratio_ingest_to_raw_lmdb"] > 0
    tps = [TopicPartition("ingested", p) for p in range(3)]
    with Consumer(bootstrap_servers=node.bootstrap) as consumer:
        ends = consumer.end_offsets(tps)
    assert sum(ends.values()) == params["records"], "every batch sent is stored, nothing twice"
    assert min(ends.values()) > 0, "the connections share the partitions"


@pytest.mark.timeout(120)
def test_ingest_command_writes_a_result(tmp_path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.perf", "ingest", "--records", "20000", "--partitions", "2",
         "--connections", "2", "--out-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=110,
    )
    assert out.returncode == 0, out.stderr + out.stdout
    (path,) = tmp_path.glob("ingest-*.json")
    result = json.loads(path.read_text())
    assert result["workload"] == "ingest" and result["params"]["connections"] == 2
    assert result["produce"]["records"] == result["params"]["records"] > 0
    assert "produce / raw LMDB append" in out.stdout
