"""The benchmark harness runs end to end (figures are not asserted: tests never assert timings)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.timeout(180)
@pytest.mark.parametrize("workload", ["produce", "consume"])
def test_bench_runs_and_writes_a_result(tmp_path, workload: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench", workload, "--records", "20000", "--partitions", "2",
         "--no-progress", "--out-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=170,
    )
    assert out.returncode == 0, out.stderr + out.stdout
    results = list(tmp_path.glob(f"{workload}-*.json"))
    assert len(results) == 1
    result = json.loads(results[0].read_text())
    assert result["workload"] == workload
    assert result["machine"]["cores"] >= 1
    section = result["consume" if workload == "consume" else "produce"]
    assert section["records"] == 20000 and section["records_per_s"] > 0
    if workload == "produce":
        assert result["raw_lmdb_append"]["records_per_s"] > 0


TINY_WORKLOAD = """
topics = 1
partitions_per_topic = 2
record_size = 100
producers = 1
consumers = 1
producer_rate = 2000
acks = "1"
warmup_s = 0.5
duration_s = 1.5
"""


@pytest.mark.timeout(60)
def test_bench_run_of_a_workload_file_writes_every_figure(tmp_path) -> None:
    workload = tmp_path / "tiny.toml"
    workload.write_text(TINY_WORKLOAD)
    out = subprocess.run(
        [sys.executable, "-m", "bench", "run", str(workload), "--no-progress", "--no-chart",
         "--out-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=55,
    )
    assert out.returncode == 0, out.stderr + out.stdout
    [path] = tmp_path.glob("tiny-*.json")
    result = json.loads(path.read_text())
    assert result["params"]["producer_rate"] == 2000 and result["params"]["duration_s"] == 1.5
    assert result["revision"] and result["machine"]["memory_bytes"] > 0
    produce, consume = result["produce"], result["consume"]
    # a fixed rate of 2000/s over a 1.5 s window: about 3000 records, every one timed
    assert 2000 <= produce["records"] <= 3100
    assert produce["publish_latency_ms"]["count"] == produce["records"]
    assert produce["publish_latency_ms"]["p50"] <= produce["publish_latency_ms"]["max"]
    assert consume["records_total"] == produce["records_sent_total"]
    assert result["e2e_latency_ms"]["count"] > 0
    assert sum(result["series_records_per_interval"]["produce"]) == produce["records_sent_total"]
    cluster = result["cluster"]
    assert cluster["started_by_bench"] and cluster["node_peak_rss_bytes"][0] > 0
    assert 0 < cluster["node_start_to_first_request_s"][0] < 30
    assert result["raw_lmdb_append"]["records_per_s"] > 0 and result["ratio_produce_to_raw_lmdb"] > 0
    assert "e2e latency" in out.stdout and "publish latency" in out.stdout


@pytest.mark.timeout(90)
def test_a_share_of_the_maximum_rate_is_measured_first_then_held(tmp_path) -> None:
    workload = tmp_path / "tiny.toml"
    workload.write_text(TINY_WORKLOAD.replace("producer_rate = 2000", 'producer_rate = "10%"'))
    out = subprocess.run(
        [sys.executable, "-m", "bench", "run", str(workload), "--no-progress", "--no-chart", "--peer", "none",
         "--out-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=85,
    )
    assert out.returncode == 0, out.stderr + out.stdout
    [path] = tmp_path.glob("tiny-*.json")
    result = json.loads(path.read_text())
    probe = result["rate_probe"]
    assert probe["producer_rate"] == "10%" and probe["max_records_per_s"] > 0
    assert result["params"]["producer_rate"] == probe["rate_records_per_s"] == max(1, round(probe["max_records_per_s"] * 0.1))
    # a fixed rate: about 1.5 s worth of that rate in the window, every k-th record timed
    produce = result["produce"]
    every = produce["publish_latency_sampled_every"]
    assert every == max(1, round(probe["rate_records_per_s"] / 5000))
    assert produce["records"] // every <= produce["publish_latency_ms"]["count"] <= produce["records"] // every + 1
    assert produce["records"] <= probe["rate_records_per_s"] * 1.5 * 1.1 + 100
    assert "of the maximum" in out.stdout


def test_bench_run_rejects_a_bad_workload(tmp_path) -> None:
    workload = tmp_path / "bad.toml"
    workload.write_text("partitions_per_topic = 0\n")
    out = subprocess.run([sys.executable, "-m", "bench", "run", str(workload)], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 2
    assert "partitions_per_topic" in out.stderr
