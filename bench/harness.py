"""Run a workload: start the cluster, the producer and consumer processes, gather figures.

Theory of operation
-------------------
``run_workload`` owns one run. It starts a ``BenchCluster`` (or uses a running one),
creates the workload's topics under fresh names, and runs one phase (``mode = "live"``:
producers and consumers together) or two (``"backlog"``: producers write
``backlog_records``, then consumers read them from the beginning). A phase spawns the
worker processes of ``bench.workers``, waits until each is connected, publishes one start
time, and then reads the report queue: interval counts feed the progress bar and the
throughput series; when every producer is done and the consumers have read every record
sent (or the drain deadline passes), it tells the consumers to stop and collects their
figures. Worker processes are joined, and terminated by PID if they overstay.

A rate given as a share of the maximum (``producer_rate = "50%"``) first runs the same
workload at max rate on a cluster of its own; the run proper then holds that share of the
produce rate measured (``rate_probe`` in the result).

After the cluster is stopped, the raw LMDB append of the same bytes (``bench.perf``) runs
as the local baseline, and the result dict gets the produce/raw ratio. ``run_compare``
runs the same workload as 1 node acks=1, 1 node acks=all and 3 nodes RF=3 acks=all and
adds their ratios. ``run_phases`` is the part a peer system reuses (``bench.peers``): the
same phases, timeline and stop rule with the peer's own worker entry points.
"""

from __future__ import annotations

import logging
import multiprocessing
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from bench import perf, report, workers
from bench.histogram import Histogram
from bench.nodes import BenchCluster
from bench.workload import RATE_MAX, Workload
from cluster.client import Admin, NewTopic

log = logging.getLogger(__name__)

WORKER_START_TIMEOUT_S = 60.0  # spawn, import, connect, fetch metadata
START_MARGIN_S = 0.3  # the start time is this far after the last worker is ready
DRAIN_TIMEOUT_S = 30.0  # after the producers finish, how long consumers may take to catch up
JOIN_TIMEOUT_S = 15.0
QUEUE_POLL_S = 0.1
PROGRESS_REFRESH_S = 0.5
RATE_PROBE_DURATION_S = 8.0  # the max-rate run that a "50%" rate is a share of
RAW_BASELINE_RECORDS_MIN = 10_000
RAW_BASELINE_RECORDS_MAX = 2_000_000
RAW_BATCHES_PER_TXN = 10
RECORD_OVERHEAD_BYTES = 8

COMPARE_VARIANTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("1 node acks=1", {"nodes": 1, "replication_factor": 1, "acks": "1"}),
    ("1 node acks=all", {"nodes": 1, "replication_factor": 1, "acks": "all"}),
    ("3 nodes RF=3 acks=all", {"nodes": 3, "replication_factor": 3, "acks": "all"}),
)


class BenchError(RuntimeError):
    """A worker failed or the run could not complete."""


def _create_topics(bootstrap: str, w: Workload) -> list[str]:
    run_id = secrets.token_hex(3)
    names = [f"bench-{w.name}-{run_id}-{i}" for i in range(w.topics)]
    with Admin(bootstrap_servers=bootstrap) as admin:
        admin.create_topics([NewTopic(n, w.partitions_per_topic, w.replication_factor) for n in names])
    return names


def worker_spec(w: Workload, bootstrap: str, topics: list[str], backlog: bool) -> dict[str, Any]:
    """What every worker process is told: where to connect, what to send and the timeline."""
    rate_per_producer = None if not w.fixed_rate else float(w.producer_rate) / w.producers
    return {
        "bootstrap": bootstrap, "topics": topics, "partitions_per_topic": w.partitions_per_topic,
        "record_size": w.record_size, "payload": w.payload(), "keyed": w.keyed, "key_count": w.key_count,
        "acks": w.acks_value, "linger_ms": w.linger_ms, "batch_size": w.batch_size,
        "rate_per_producer": rate_per_producer, "consumers": max(1, w.consumers),
        "warmup_s": 0.0 if backlog else w.warmup_s, "duration_s": w.duration_s,
        "backlog_records": -(-w.backlog_records // w.producers) if backlog else None,
        "start_timeout_s": WORKER_START_TIMEOUT_S,
        "consume_deadline_s": w.warmup_s + w.duration_s + DRAIN_TIMEOUT_S + WORKER_START_TIMEOUT_S,
    }


WorkerMain = Callable[..., None]


class _Phase:
    """One set of worker processes on one timeline, and what they reported."""

    def __init__(self, producers: int, consumers: int, spec: dict[str, Any], label: str,
                 progress: bool, total: float, unit: str, producer_main: WorkerMain = workers.producer_main,
                 consumer_main: WorkerMain = workers.consumer_main) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.reports: Any = ctx.Queue()
        self.go = ctx.Event()
        self.stop = ctx.Event()
        self.start_at: Any = ctx.Value("d", 0.0)
        self.spec = spec
        self.processes: list[Any] = []
        for i in range(producers):
            self.processes.append(ctx.Process(target=producer_main, name=f"bench-producer-{i}",
                                              args=(i, spec, self.reports, self.go, self.start_at), daemon=True))
        for i in range(consumers):
            self.processes.append(ctx.Process(target=consumer_main, name=f"bench-consumer-{i}",
                                              args=(i, spec, self.reports, self.go, self.start_at, self.stop),
                                              daemon=True))
        self.expected = {"producer": producers, "consumer": consumers}
        self.counted_role = "producer" if producers else "consumer"  # what a "rec" progress bar counts
        self.done: dict[str, list[dict[str, Any]]] = {"producer": [], "consumer": []}
        self.series: dict[str, dict[int, list[int]]] = {"producer": {}, "consumer": {}}
        self.totals = {"producer": 0, "consumer": 0}
        self.label = label
        self.progress = progress
        self.total = total
        self.unit = unit

    def _handle(self, message: tuple[Any, ...]) -> str:
        kind, role = message[0], message[1]
        if kind == "error":
            raise BenchError(f"{role} {message[2]} failed: {message[3]}")
        if kind == "interval":
            _, _, _, second, records, nbytes = message
            row = self.series[role].setdefault(second, [0, 0])
            row[0] += records
            row[1] += nbytes
            self.totals[role] += records
        elif kind == "done":
            self.done[role].append(message[3])
        return str(kind)

    def run(self) -> None:
        for p in self.processes:
            p.start()
        try:
            self._run()
        finally:
            self.stop.set()
            self.go.set()
            for p in self.processes:
                p.join(JOIN_TIMEOUT_S)
                if p.is_alive():
                    log.warning("bench worker %s (pid %s) overstayed; terminating it", p.name, p.pid)
                    p.terminate()
                    p.join(JOIN_TIMEOUT_S)

    def _run(self) -> None:
        ready = 0
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        while ready < len(self.processes):
            if time.monotonic() > deadline:
                raise BenchError(f"{len(self.processes) - ready} worker(s) not ready in {WORKER_START_TIMEOUT_S} s")
            for message in workers.drain(self.reports, QUEUE_POLL_S):
                ready += self._handle(message) == "ready"
            dead = [p.name for p in self.processes if p.exitcode not in (None, 0)]
            if dead:
                raise BenchError(f"worker(s) {dead} exited before the start")
        self.start_at.value = time.time() + START_MARGIN_S
        self.go.set()
        started = time.monotonic() + START_MARGIN_S
        bar = tqdm(total=self.total, unit=self.unit, unit_scale=True, disable=not self.progress, desc=self.label,
                   bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.4g}/{total:.4g} {unit} {postfix}")
        producers_done_at: float | None = None
        refreshed_at = 0.0
        try:
            while True:
                for message in workers.drain(self.reports, QUEUE_POLL_S):
                    self._handle(message)
                now = time.monotonic()
                done_p = len(self.done["producer"]) == self.expected["producer"]
                if done_p and producers_done_at is None:
                    producers_done_at = now
                sent = sum(d["records_sent"] for d in self.done["producer"]) if done_p else None
                if sent is not None and self.totals["consumer"] >= sent:
                    self.stop.set()
                if producers_done_at is not None and now - producers_done_at > DRAIN_TIMEOUT_S:
                    self.stop.set()
                if len(self.done["consumer"]) == self.expected["consumer"] and done_p:
                    break
                for p in self.processes:
                    if p.exitcode not in (None, 0):
                        raise BenchError(f"worker {p.name} exited with {p.exitcode}")
                if self.progress and now - refreshed_at >= PROGRESS_REFRESH_S:
                    refreshed_at = now
                    position = (self.totals[self.counted_role] if self.unit == "rec" else max(0.0, now - started))
                    bar.n = min(self.total, position)
                    bar.set_postfix_str(f"produced {self.totals['producer']:,} consumed {self.totals['consumer']:,}",
                                        refresh=False)
                    bar.refresh()
        finally:
            bar.close()

    def series_list(self, role: str) -> list[int]:
        rows = self.series[role]
        return [rows.get(s, [0, 0])[0] for s in range(max(rows) + 1)] if rows else []


def _merge(histograms: list[dict[str, Any]]) -> Histogram:
    merged = Histogram()
    for h in histograms:
        merged.merge(Histogram.from_dict(h))
    return merged


def _produce_figures(done: list[dict[str, Any]]) -> dict[str, Any]:
    records = sum(d["records_in_window"] for d in done)
    nbytes = sum(d["bytes_in_window"] for d in done)
    seconds = max(d["window_s"] for d in done)
    failures = [f for d in done for f in d["failures"]]
    if failures:
        raise BenchError(f"produce failed: {failures[0]}")
    return report.throughput(records, nbytes, seconds, records_sent_total=sum(d["records_sent"] for d in done),
                             publish_latency_ms=_merge([d["publish_latency_us"] for d in done]).summary(1000.0),
                             publish_latency_sampled_every=max(d["sample_every"] for d in done))


def run_workload(w: Workload, *, bootstrap: str | None = None, progress: bool = True,
                 raw_baseline: bool = True) -> dict[str, Any]:
    """Run ``w`` once and return every parameter and figure (see ``bench.report``).

    A rate given as a share of the maximum (``"50%"``) is measured first: the same workload
    at ``"max"`` (at most ``RATE_PROBE_DURATION_S`` measured, on a cluster of its own), then
    the run at that share of the produce rate it reached."""
    share = w.rate_share
    if share is not None:
        probe = run_workload(w.replace(producer_rate=RATE_MAX, duration_s=min(w.duration_s, RATE_PROBE_DURATION_S)),
                             bootstrap=bootstrap, progress=progress, raw_baseline=False)
        max_rate = probe["produce"]["records_per_s"]
        held = run_workload(w.replace(producer_rate=max(1, round(max_rate * share))), bootstrap=bootstrap,
                            progress=progress, raw_baseline=raw_baseline)
        held["rate_probe"] = {"producer_rate": w.producer_rate, "max_records_per_s": max_rate,
                              "max_e2e_latency_ms": probe.get("e2e_latency_ms"),
                              "rate_records_per_s": held["params"]["producer_rate"]}
        return held
    cluster = BenchCluster(w.nodes, bootstrap)
    try:
        topics = _create_topics(cluster.bootstrap, w)
        spec = worker_spec(w, cluster.bootstrap, topics, backlog=w.mode == "backlog")
        figures = run_phases(w, spec, progress)
        resources = cluster.resources()
    finally:
        cluster.close()
    result: dict[str, Any] = {"workload": w.name, "params": w.params(), **figures, "cluster": resources}
    if raw_baseline:
        records = min(RAW_BASELINE_RECORDS_MAX, max(RAW_BASELINE_RECORDS_MIN, figures["produce"]["records"]))
        with tempfile.TemporaryDirectory(prefix="kraft-bench-lmdb-") as raw_dir:
            raw = perf.raw_lmdb_append(records, w.value_size(), max(1, w.batch_size // (w.value_size() + RECORD_OVERHEAD_BYTES)),
                                       RAW_BATCHES_PER_TXN, Path(raw_dir))
        result["raw_lmdb_append"] = raw
        result["ratio_produce_to_raw_lmdb"] = figures["produce"]["records_per_s"] / raw["records_per_s"]
    return result


def run_phases(w: Workload, spec: dict[str, Any], progress: bool, producer_main: WorkerMain = workers.producer_main,
               consumer_main: WorkerMain = workers.consumer_main) -> dict[str, Any]:
    """Run the workload's phases with these worker entry points; the figures of one run.

    ``spec`` comes from ``worker_spec`` (a peer adds its own keys); the workers follow the
    report protocol of ``bench.workers``."""
    if w.mode == "live":
        return _run_live(w, spec, progress, producer_main, consumer_main)
    return _run_backlog(w, spec, progress, producer_main, consumer_main)


def _run_live(w: Workload, spec: dict[str, Any], progress: bool, producer_main: WorkerMain,
              consumer_main: WorkerMain) -> dict[str, Any]:
    phase = _Phase(w.producers, w.consumers, spec, w.name, progress, w.warmup_s + w.duration_s, "s",
                   producer_main, consumer_main)
    phase.run()
    out: dict[str, Any] = {"produce": _produce_figures(phase.done["producer"]),
                           "series_records_per_interval": {"produce": phase.series_list("producer"),
                                                           "consume": phase.series_list("consumer")},
                           "series_interval_s": workers.REPORT_INTERVAL_S}
    if w.consumers:
        done = phase.done["consumer"]
        records = sum(d["records_in_window"] for d in done)
        nbytes = sum(d["bytes_in_window"] for d in done)
        out["consume"] = report.throughput(records, nbytes, w.duration_s,
                                           records_total=sum(d["records"] for d in done))
        out["e2e_latency_ms"] = _merge([d["e2e_latency_us"] for d in done]).summary(1000.0)
    return out


def _run_backlog(w: Workload, spec: dict[str, Any], progress: bool, producer_main: WorkerMain,
                 consumer_main: WorkerMain) -> dict[str, Any]:
    produce = _Phase(w.producers, 0, spec, f"{w.name} produce", progress, float(w.backlog_records), "rec",
                     producer_main, consumer_main)
    produce.run()
    produced = _produce_figures(produce.done["producer"])
    consume = _Phase(0, w.consumers, spec, f"{w.name} consume", progress, float(produced["records_sent_total"]), "rec",
                     producer_main, consumer_main)
    consume.totals["producer"] = produced["records_sent_total"]
    consume.done["producer"] = [{"records_sent": produced["records_sent_total"]}]
    consume.expected["producer"] = 1
    consume.run()
    done = consume.done["consumer"]
    records = sum(d["records"] for d in done)
    if records < produced["records_sent_total"]:
        raise BenchError(f"backlog drain read {records} of {produced['records_sent_total']} records")
    seconds = max(d["last_record_s"] for d in done)
    return {"produce": produced,
            "consume": report.throughput(records, sum(d["bytes"] for d in done), seconds),
            "series_records_per_interval": {"produce": produce.series_list("producer"),
                                            "consume": consume.series_list("consumer")},
            "series_interval_s": workers.REPORT_INTERVAL_S}


def run_compare(w: Workload, *, bootstrap: str | None = None, progress: bool = True) -> dict[str, Any]:
    """The workload as 1 node acks=1, 1 node acks=all and 3 nodes RF=3 acks=all, with ratios."""
    variants = [(label, changes) for label, changes in COMPARE_VARIANTS
                if bootstrap is None or changes["nodes"] == 1]
    runs: dict[str, dict[str, Any]] = {}
    for i, (label, changes) in enumerate(variants):
        if progress:
            print(f"== {label}", flush=True)
        runs[label] = run_workload(w.replace(**changes), bootstrap=bootstrap, progress=progress, raw_baseline=i == 0)
    base = runs[variants[0][0]]
    ratios: dict[str, float] = {}
    for label, run in runs.items():
        if run is not base:
            ratios[f"produce {label} / {variants[0][0]}"] = run["produce"]["records_per_s"] / base["produce"]["records_per_s"]
    three, one_all = runs.get("3 nodes RF=3 acks=all"), runs.get("1 node acks=all")
    if three is not None and one_all is not None:
        ratios["produce 3 nodes RF=3 acks=all / 1 node acks=all"] = (
            three["produce"]["records_per_s"] / one_all["produce"]["records_per_s"])
    return {"workload": w.name, "params": w.params(), "compare": True, "runs": runs, "ratios": ratios,
            "raw_lmdb_append": base.get("raw_lmdb_append"),
            "ratio_produce_to_raw_lmdb": base.get("ratio_produce_to_raw_lmdb")}

