"""Load generators: producer and consumer processes that report counts and latencies.

Theory of operation
-------------------
The harness starts each worker as a separate process (multiprocessing, spawn), so workers
share a GIL neither with each other nor with the nodes. A worker connects, puts
``("ready", role, id)`` on the report queue and waits for the harness's ``go`` event; the
harness then publishes one wall-clock start time (``start_at``, shared memory) and every
worker works on the same timeline: ``[start, start + warmup_s)`` is warm-up, ``[start +
warmup_s, end)`` is measured.

Every ``REPORT_EVERY_S`` a worker puts ``("interval", role, id, second, records, bytes)``
on the queue (second = whole ``REPORT_INTERVAL_S`` since start), which drives the progress
bar, the harness's stop rule and the throughput-over-time chart. At the end it puts ``("done", role, id, figures)``;
figures hold counts, window times and latency histograms (``bench.histogram``, as dicts).

Producer: at a fixed rate, record ``i`` has an intended send time ``start + i / rate``; the
producer sends every record whose time has come in one burst (the clock read once per
burst, not per record: at 108k records/s the per-record clock and bookkeeping were a
quarter of the producer's CPU), sleeps until the next one is due (at least
``RATE_SLEEP_MIN_S``, so a record may leave up to that late, which counts against it) and
never skips a record when behind. Publish latency (send -> ack, taken in a callback when
the record's batch completes) is measured from the intended time, so a stall counts
against every record it delays (no coordinated omission). The record's timestamp is the intended time too, so the
consumers' end-to-end latency starts there. At ``"max"`` rate the intended time is the
time of the ``send`` call and one record in ``MAX_RATE_SAMPLE_EVERY`` is timed; at a fixed
rate every record up to ``FIXED_RATE_SAMPLES_PER_S`` a second, and every k-th above that.
A timed record goes through ``Producer.send`` and gets a callback on its future; the others
through ``Producer.produce`` (no future), whose failures the producer counts.

Consumer: reads its share of the partitions (round-robin by index) from the beginning
and keeps, for records whose timestamp falls in the measured window, a count per
millisecond of ``now - timestamp`` (end-to-end latency; timestamps are milliseconds of the
same machine's clock, so a figure can be up to 1 ms high). It stops when the harness sets
``stop`` or at the hard deadline.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing.synchronize
import operator
import os
import queue as queue_module
import time
from collections import Counter
from typing import Any

from bench.histogram import Histogram

log = logging.getLogger(__name__)

REPORT_INTERVAL_S = 1.0  # the chart's resolution
REPORT_EVERY_S = 0.2  # how often counts reach the harness (its progress bar and stop rule)
MAX_RATE_SAMPLE_EVERY = 64
FIXED_RATE_SAMPLES_PER_S = 5_000  # at a fixed rate, records timed per second and producer
RATE_SLEEP_MIN_S = 0.0002  # at a fixed rate, the shortest sleep before the next burst
RATE_BURST_MAX = 1024  # at a fixed rate, records sent between two looks at the clock
CHECK_CLOCK_EVERY = 64  # at max rate, look at the clock once per this many records
VALUE_POOL = 1024
CONSUMER_POLL_MS = 100
CONSUMER_POLL_RECORDS_MAX = 100_000
FLUSH_TIMEOUT_S = 120.0

_value_of = operator.attrgetter("value")
_timestamp_and_value_of = operator.attrgetter("timestamp", "value")
_first = operator.itemgetter(0)
_second = operator.itemgetter(1)


def value_bytes(records: Any) -> int:
    """The summed value sizes of ``records`` (None values count 0), in C: a generator with
    an attribute lookup per record costs the consumer loop ~15 % of its throughput."""
    return _sizes(map(_value_of, records))


def _sizes(values: Any) -> int:
    """The summed sizes of ``values`` (None counts 0), in C."""
    return sum(map(len, filter(None, values)))


def next_burst(now: float, start_mono: float, sent: int, rate: float | None) -> int:
    """How many records to send before the next look at the clock: at max rate (``rate``
    None) ``CHECK_CLOCK_EVERY``; at a fixed rate every record whose intended time
    (``start_mono + i / rate``) has come, at most ``RATE_BURST_MAX``; 0 or less when the
    next one is not due yet (then sleep ``until_due_s``)."""
    if rate is None:
        return CHECK_CLOCK_EVERY
    return min(int((now - start_mono) * rate) + 1 - sent, RATE_BURST_MAX)


def until_due_s(now: float, start_mono: float, sent: int, rate: float) -> float:
    """How long to sleep before record ``sent`` is due, at least ``RATE_SLEEP_MIN_S``."""
    return max(start_mono + sent / rate - now, RATE_SLEEP_MIN_S)


def _wait_for_start(role: str, worker_id: int, reports: Any, go: multiprocessing.synchronize.Event,
                    start_at: Any, timeout_s: float) -> float:
    reports.put(("ready", role, worker_id))
    if not go.wait(timeout_s):
        raise TimeoutError(f"{role} {worker_id}: no start signal within {timeout_s} s")
    start = float(start_at.value)
    delay = start - time.time()
    if delay > 0:
        time.sleep(delay)
    return start


class _Intervals:
    """Counts per whole second since the start, flushed to the report queue once a second."""

    def __init__(self, role: str, worker_id: int, reports: Any, start_wall: float) -> None:
        self.role, self.worker_id, self.reports = role, worker_id, reports
        self.start_mono = time.monotonic() - (time.time() - start_wall)
        self.second = 0
        self.records = 0
        self.nbytes = 0
        self.flushed_mono = time.monotonic()

    def add(self, records: int, nbytes: int, now_mono: float) -> None:
        second = int((now_mono - self.start_mono) / REPORT_INTERVAL_S)
        if second != self.second or now_mono - self.flushed_mono >= REPORT_EVERY_S:
            self.flush()
            self.flushed_mono = now_mono
            self.second = second
        self.records += records
        self.nbytes += nbytes

    def tick(self, now_mono: float) -> None:
        """Send what is pending once it is ``REPORT_EVERY_S`` old, also when nothing new came."""
        if self.records and now_mono - self.flushed_mono >= REPORT_EVERY_S:
            self.flush()
            self.flushed_mono = now_mono

    def flush(self) -> None:
        if self.records:
            self.reports.put(("interval", self.role, self.worker_id, self.second, self.records, self.nbytes))
        self.records = 0
        self.nbytes = 0


def producer_main(worker_id: int, spec: dict[str, Any], reports: Any, go: multiprocessing.synchronize.Event,
                  start_at: Any) -> None:
    """Entry point of a producer process; ``spec`` is built by ``bench.harness``."""
    try:
        reports.put(("done", "producer", worker_id, _produce(worker_id, spec, reports, go, start_at)))
    except BaseException as exc:  # the harness must hear about any failure
        reports.put(("error", "producer", worker_id, f"{type(exc).__name__}: {exc}"))


def sample_every_for(rate: float | None) -> int:
    """Which records a producer times: one in this many. At a fixed rate at most
    ``FIXED_RATE_SAMPLES_PER_S`` a second (a timed record costs microseconds: a future,
    callbacks, a histogram update), at max rate one in ``MAX_RATE_SAMPLE_EVERY``."""
    if rate is None:
        return MAX_RATE_SAMPLE_EVERY
    return max(1, round(rate / FIXED_RATE_SAMPLES_PER_S))


def _values(spec: dict[str, Any]) -> list[bytes]:
    if spec["payload"] is not None:
        return [spec["payload"]]
    return [os.urandom(spec["record_size"]) for _ in range(VALUE_POOL)]


def _produce(worker_id: int, spec: dict[str, Any], reports: Any, go: multiprocessing.synchronize.Event,
             start_at: Any) -> dict[str, Any]:
    from cluster.client import Producer  # imported in the child: the harness process needs no client

    topics: list[str] = spec["topics"]
    values = _values(spec)
    value_bytes = len(values[0])
    keys = [f"key-{i}".encode() for i in range(spec["key_count"])] if spec["keyed"] else None
    rate: float | None = spec["rate_per_producer"]
    backlog: int | None = spec.get("backlog_records")
    sample_every = sample_every_for(rate)
    publish = Histogram()
    failures: list[str] = []

    producer = Producer(bootstrap_servers=spec["bootstrap"], acks=spec["acks"], linger_ms=spec["linger_ms"],
                        batch_size=spec["batch_size"], client_id=f"bench-producer-{worker_id}")
    try:
        for topic in topics:  # metadata first, so the first measured send does not wait for it
            producer.partitions_for(topic)
        start = _wait_for_start("producer", worker_id, reports, go, start_at, spec["start_timeout_s"])
        intervals = _Intervals("producer", worker_id, reports, start)
        start_mono = intervals.start_mono
        warm_mono = start_mono + spec["warmup_s"]
        end_mono = warm_mono + spec["duration_s"]

        def acked(intended_mono: float, _metadata: Any) -> None:
            publish.record(int((time.monotonic() - intended_mono) * 1e6))

        def failed(error: BaseException) -> None:
            if len(failures) < 10:
                failures.append(f"{type(error).__name__}: {error}")

        send = producer.send  # the timed records: a future each
        produce = producer.produce  # the others: no future (failures are counted by the producer)
        value_cycle = itertools.cycle(values)
        topic_cycle = itertools.cycle(topics)
        key_cycle = itertools.cycle(keys) if keys else None
        one_topic = topics[0] if len(topics) == 1 else None
        sent = 0
        sent_in_window = 0
        wall_offset_ms = (time.time() - time.monotonic()) * 1000
        now = time.monotonic()
        # Records go out in bursts with one look at the clock each: at max rate
        # CHECK_CLOCK_EVERY records sent "now"; at a fixed rate every record already due,
        # then a sleep until the next one is.
        period_s = 1.0 / rate if rate is not None else 0.0
        while now < end_mono if backlog is None else sent < backlog:
            burst = next_burst(now, start_mono, sent, rate)
            if burst <= 0:
                assert rate is not None
                time.sleep(until_due_s(now, start_mono, sent, rate))
                now = time.monotonic()
                continue
            if backlog is not None:
                burst = min(burst, backlog - sent)
            for _ in range(burst):
                if rate is None:
                    intended, timestamp_ms = now, None
                else:
                    intended = start_mono + sent * period_s
                    timestamp_ms = int(intended * 1000 + wall_offset_ms)
                topic = one_topic or next(topic_cycle)
                key = next(key_cycle) if key_cycle is not None else None
                if sent % sample_every == 0:
                    future = send(topic, next(value_cycle), key=key, timestamp_ms=timestamp_ms)
                    if intended >= warm_mono or backlog is not None:
                        future.add_callback(acked, intended)
                    future.add_errback(failed)
                else:
                    produce(topic, next(value_cycle), key=key, timestamp_ms=timestamp_ms)
                sent += 1
                if backlog is not None or intended >= warm_mono:
                    sent_in_window += 1
            now = time.monotonic()
            intervals.add(burst, value_bytes * burst, now)
        window_start = warm_mono if backlog is None else start_mono
        producer.flush(timeout=FLUSH_TIMEOUT_S)
        flushed_mono = time.monotonic()
        intervals.flush()
        failed_records = producer.metrics()["failed_records"]
        if failed_records:
            failures.append(f"{failed_records} of {sent} records failed")
    finally:
        producer.close()
    return {
        "records_sent": sent,
        "records_in_window": sent_in_window,
        "bytes_in_window": sent_in_window * value_bytes,
        "window_s": max(1e-9, flushed_mono - window_start),
        "send_end_s": max(0.0, min(now, end_mono) - start_mono),
        "publish_latency_us": publish.to_dict(),
        "sample_every": sample_every,
        "failures": failures,
    }


def consumer_main(worker_id: int, spec: dict[str, Any], reports: Any, go: multiprocessing.synchronize.Event,
                  start_at: Any, stop: multiprocessing.synchronize.Event) -> None:
    """Entry point of a consumer process; ``spec`` is built by ``bench.harness``."""
    try:
        reports.put(("done", "consumer", worker_id, _consume(worker_id, spec, reports, go, start_at, stop)))
    except BaseException as exc:
        reports.put(("error", "consumer", worker_id, f"{type(exc).__name__}: {exc}"))


def _consume(worker_id: int, spec: dict[str, Any], reports: Any, go: multiprocessing.synchronize.Event,
             start_at: Any, stop: multiprocessing.synchronize.Event) -> dict[str, Any]:
    from cluster.client import Consumer, TopicPartition

    assigned = [tp for i, tp in enumerate(TopicPartition(t, p) for t in spec["topics"]
                                          for p in range(spec["partitions_per_topic"]))
                if i % spec["consumers"] == worker_id]
    latency_ms: Counter[int] = Counter()
    consumer = Consumer(bootstrap_servers=spec["bootstrap"], auto_offset_reset="earliest",
                        max_poll_records=CONSUMER_POLL_RECORDS_MAX, client_id=f"bench-consumer-{worker_id}")
    try:
        if assigned:
            consumer.assign(assigned)
            consumer.seek_to_beginning(*assigned)
        start = _wait_for_start("consumer", worker_id, reports, go, start_at, spec["start_timeout_s"])
        intervals = _Intervals("consumer", worker_id, reports, start)
        live = spec.get("backlog_records") is None
        warm_ms = int((start + spec["warmup_s"]) * 1000)
        end_ms = int((start + spec["warmup_s"] + spec["duration_s"]) * 1000)
        warm_mono = intervals.start_mono + spec["warmup_s"]
        end_mono = warm_mono + spec["duration_s"]
        deadline = time.monotonic() + spec["consume_deadline_s"]
        count = 0
        nbytes = 0
        in_window = 0
        bytes_in_window = 0
        first_mono: float | None = None
        last_mono = time.monotonic()
        while not stop.is_set() and time.monotonic() < deadline and assigned:
            got = consumer.poll(timeout_ms=CONSUMER_POLL_MS)
            if not got:
                intervals.tick(time.monotonic())
                continue
            now_mono = time.monotonic()
            now_ms = int(time.time() * 1000)
            n = 0
            b = 0
            for records in got.values():
                n += len(records)
                if not live:
                    b += value_bytes(records)
                    continue
                # Each record read once, its timestamp and value taken in C.
                pairs = list(map(_timestamp_and_value_of, records))
                b += _sizes(map(_second, pairs))
                timestamps = list(map(_first, pairs))
                if warm_ms <= min(timestamps) and max(timestamps) < end_ms:
                    latency_ms.update(map(now_ms.__sub__, timestamps))
                else:
                    latency_ms.update(now_ms - t for t in timestamps if warm_ms <= t < end_ms)
            if first_mono is None:
                first_mono = now_mono
            last_mono = now_mono
            count += n
            nbytes += b
            if not live or warm_mono <= now_mono < end_mono:
                in_window += n
                bytes_in_window += b
            intervals.add(n, b, now_mono)
        intervals.flush()
    finally:
        consumer.close()
    e2e = Histogram()
    for value_ms, n in latency_ms.items():
        e2e.record(value_ms * 1000, n)
    return {
        "records": count,
        "bytes": nbytes,
        "records_in_window": in_window,
        "bytes_in_window": bytes_in_window,
        "first_record_s": None if first_mono is None else first_mono - intervals.start_mono,
        "last_record_s": last_mono - intervals.start_mono,
        "e2e_latency_us": e2e.to_dict(),
    }


def drain(reports: Any, timeout_s: float) -> list[tuple[Any, ...]]:
    """Every message waiting on the queue, waiting up to ``timeout_s`` for the first."""
    out: list[tuple[Any, ...]] = []
    try:
        out.append(reports.get(timeout=timeout_s))
        while True:
            out.append(reports.get_nowait())
    except queue_module.Empty:
        pass
    return out
