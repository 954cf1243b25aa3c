"""The harness's pure parts: the latency histogram, workload files, the chart."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import chart, workers
from bench.histogram import Histogram, bucket_bounds, bucket_index
from bench.workload import RATE_MAX, WorkloadError, load_workload, parse_workload

WORKLOADS = sorted((Path(__file__).resolve().parent.parent / "bench" / "workloads").glob("*.toml"))


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=1 << 40))
def test_a_value_falls_inside_its_bucket_within_one_percent(value: int) -> None:
    low, high = bucket_bounds(bucket_index(value))
    assert low <= value <= high
    assert high - low <= max(0, value) / 100


def test_buckets_are_contiguous_and_ordered() -> None:
    previous_high = -1
    for index in range(0, 3000):
        low, high = bucket_bounds(index)
        assert low == previous_high + 1 and high >= low
        assert bucket_index(low) == index == bucket_index(high)
        previous_high = high


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000_000), min_size=1, max_size=300),
       st.sampled_from([50.0, 99.0, 99.9, 100.0]))
def test_percentiles_match_the_sorted_values_within_the_bucket_error(values: list[int], percent: float) -> None:
    h = Histogram()
    h.record_many(values)
    exact = sorted(values)[max(0, math.ceil(len(values) * percent / 100) - 1)]
    got = h.percentile(percent)
    assert got is not None and exact <= got <= exact + exact / 100 + 1
    assert h.max_value == max(values) and h.total == len(values)


def test_histograms_merge_and_travel_as_dicts() -> None:
    rng = random.Random(7)
    a, b, both = Histogram(), Histogram(), Histogram()
    for _ in range(1000):
        v = rng.randrange(0, 5_000_000)
        (a if rng.random() < 0.5 else b).record(v)
        both.record(v)
    merged = Histogram.from_dict(a.to_dict()).merge(Histogram.from_dict(b.to_dict()))
    assert merged.counts == both.counts and merged.total == 1000
    assert merged.summary(1000.0) == both.summary(1000.0)
    assert Histogram().summary() == {"count": 0, "p50": None, "p99": None, "p99.9": None, "max": None}


def test_record_with_a_count_weighs_the_percentiles() -> None:
    h = Histogram()
    h.record(1000, 990)
    h.record(90_000, 10)
    assert 1000 <= h.percentile(50) <= 1010 and h.percentile(99) == h.percentile(50)  # type: ignore[operator]
    assert h.percentile(99.9) is not None and h.percentile(99.9) >= 90_000 * 0.99


@pytest.mark.parametrize("path", WORKLOADS, ids=lambda p: p.stem)
def test_every_shipped_workload_loads(path: Path) -> None:
    w = load_workload(path)
    assert w.name == path.stem
    assert w.replication_factor <= w.nodes


def test_the_required_workloads_ship() -> None:
    names = {p.stem for p in WORKLOADS}
    assert {"1-topic-1-partition-100b", "1-topic-16-partitions-1kb", "1-topic-16-partitions-100b-keyed",
            "backlog-drain", "e2e-latency"} <= names
    e2e = load_workload(next(p for p in WORKLOADS if p.stem == "e2e-latency"))
    assert e2e.fixed_rate and e2e.nodes == 3 and e2e.acks == "all"
    assert load_workload(next(p for p in WORKLOADS if p.stem == "backlog-drain")).mode == "backlog"


def test_overrides_apply_and_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "w.toml"
    path.write_text('producer_rate = "max"\nacks = "1"\n')
    w = load_workload(path, {"duration_s": 3, "producer_rate": "500", "acks": "all", "nodes": None})
    assert (w.duration_s, w.producer_rate, w.acks, w.nodes) == (3.0, 500, "all", 1)
    assert w.acks_value == "all" and w.fixed_rate
    assert load_workload(path).producer_rate == RATE_MAX
    with pytest.raises(WorkloadError, match="replication_factor"):
        load_workload(path, {"replication_factor": 3})
    with pytest.raises(WorkloadError, match="nodes"):
        w.replace(nodes=2)


def test_a_rate_can_be_a_share_of_the_maximum(tmp_path: Path) -> None:
    path = tmp_path / "w.toml"
    path.write_text('producer_rate = "50%"\n')
    w = load_workload(path)
    assert w.producer_rate == "50%" and w.rate_share == 0.5 and w.fixed_rate
    assert load_workload(path, {"producer_rate": "12.5%"}).rate_share == 0.125
    assert load_workload(path, {"producer_rate": "800"}).rate_share is None
    for bad in ("0%", "150%", "half%", "%"):
        with pytest.raises(WorkloadError, match="producer_rate"):
            load_workload(path, {"producer_rate": bad})


@pytest.mark.parametrize("data, key", [
    ({"partitions": 4}, "unknown key"),
    ({"partitions_per_topic": 0}, "partitions_per_topic"),
    ({"record_size": "big"}, "record_size"),
    ({"producer_rate": -5}, "producer_rate"),
    ({"acks": 2}, "acks"),
    ({"mode": "burst"}, "mode"),
    ({"keyed": 1}, "keyed"),
    ({"payload_file": "/nonexistent/payload"}, "payload_file"),
])
def test_a_bad_workload_names_its_key(data: dict, key: str) -> None:
    with pytest.raises(WorkloadError, match=key):
        parse_workload(data, "w", "w.toml")


def test_a_payload_file_sets_the_value(tmp_path: Path) -> None:
    (tmp_path / "payload.bin").write_bytes(b"z" * 333)
    path = tmp_path / "w.toml"
    path.write_text('payload_file = "payload.bin"\n')
    w = load_workload(path)
    assert w.payload() == b"z" * 333 and w.value_size() == 333


def test_the_chart_is_written_or_skipped(tmp_path: Path) -> None:
    result = {"workload": "w", "revision": "abc",
              "series_records_per_interval": {"produce": [10, 20, 30], "consume": [5, 25, 30]},
              "series_interval_s": 1.0,
              "produce": {"publish_latency_ms": {"count": 3, "p50": 1.0, "p99": 2.0, "p99.9": 3.0, "max": 4.0}},
              "e2e_latency_ms": {"count": 3, "p50": 1.5, "p99": 2.5, "p99.9": 3.5, "max": 4.5}}
    path = chart.write_chart(result, tmp_path / "w.png")
    if not chart.available():
        assert path is None
        return
    assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@settings(max_examples=200, deadline=None)
@given(rate=st.floats(min_value=1.0, max_value=2e6), elapsed_s=st.floats(min_value=0.0, max_value=100.0),
       behind=st.integers(min_value=-5000, max_value=5000))
def test_a_fixed_rate_burst_sends_exactly_the_records_due(rate: float, elapsed_s: float, behind: int) -> None:
    """Both peers' producers send, per look at the clock, every record whose intended time
    (start + i / rate) has come, at most RATE_BURST_MAX, and none that is not due yet."""
    now = 10.0 + elapsed_s
    due = int((now - 10.0) * rate) + 1  # records 0 .. due-1 are due at ``now``
    sent = max(0, due - behind)
    burst = workers.next_burst(now, 10.0, sent, rate)
    assert burst == min(due - sent, workers.RATE_BURST_MAX)
    if burst > 0:  # the last record of the burst is due
        assert 10.0 + (sent + burst - 1) / rate <= now + 1e-6
    else:  # nothing is due: the sleep reaches the next record's time, and is never shorter than the minimum
        wait_s = workers.until_due_s(now, 10.0, sent, rate)
        assert wait_s >= workers.RATE_SLEEP_MIN_S and now + wait_s >= 10.0 + sent / rate - 1e-6
    assert workers.next_burst(12.0, 10.0, 0, None) == workers.CHECK_CLOCK_EVERY
