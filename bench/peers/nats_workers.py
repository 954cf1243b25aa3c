"""Load generators for the NATS JetStream peer: producer and consumer processes (nats-py).

Theory of operation
-------------------
These are the NATS counterparts of ``bench.workers``, started by ``bench.harness`` as
separate processes with the same arguments and the same report protocol (``ready``,
``interval``, ``done``, ``error`` on the report queue), so the harness runs them on the
same timeline and stop rule as kraft's workers. Each process runs one asyncio loop;
waiting for the harness's start signal happens in a thread so the NATS connection keeps
being served.

A kraft topic is a JetStream stream here, and its partition ``p`` the subject
``<stream>.<p>`` (``spec["subjects"]``: one list per topic).

Producer: JetStream async publish (``publish_async``): each publish returns a future
resolved by the stream's acknowledgement, and at most ``spec["publish_in_flight_max"]``
are unacknowledged at once (the call waits for a free slot beyond that). Subjects are
taken round-robin, or chosen by a CRC-32 of the key for keyed workloads. Rate control,
warm-up and the measured window are those of ``bench.workers``; publish latency (intended
send time -> acknowledgement) is taken for the records ``workers.sample_every_for`` picks,
as for kraft. The first 8 bytes of each payload carry the
send time in milliseconds (big-endian), which the consumer reads for end-to-end latency.
After the last publish it waits (up to ``FLUSH_TIMEOUT_S``) until every publish is
acknowledged; the window ends there.

Consumer: one pull consumer per stream (acknowledgement policy none, like a Kafka
consumer reading from offsets; deliver all, filtered to this worker's share of the
subjects, shared round-robin by index as kraft's consumers share partitions). Messages
arrive on a subscription with a callback; the worker keeps pull requests outstanding for
about ``PULL_BATCH`` to ``2 * PULL_BATCH`` messages per stream, and when a pull request
expires part-filled the server's 408 status says how many it had still to give
(``Nats-Pending-Messages``), which is taken off the outstanding count. (nats-py's
``fetch`` waits for each message with its own timer, which is several times slower, and
would measure the client's helper rather than the server.)
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import multiprocessing.synchronize
import time
import zlib
from collections import Counter
from typing import Any

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from bench import workers
from bench.histogram import Histogram

log = logging.getLogger(__name__)

FLUSH_TIMEOUT_S = workers.FLUSH_TIMEOUT_S
TIMESTAMP_BYTES = 8
PULL_BATCH = 4096
PULL_EXPIRES_S = 1.0
PULL_SUBJECT = "$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
PENDING_HEADER = "Nats-Pending-Messages"
CONSUMER_TICK_S = 0.002  # how often the consumer tops up pulls and reports counts
CONSUMER_INACTIVE_THRESHOLD_S = 60.0  # the server removes a consumer left behind by a dead worker
SUBSCRIPTION_PENDING_MSGS_MAX = 8 * PULL_BATCH
SUBSCRIPTION_PENDING_BYTES_MAX = 1 << 30
CONNECT_TIMEOUT_S = 10.0


async def _connect(spec: dict[str, Any], name: str) -> NatsClient:
    return await nats.connect(servers=spec["nats_servers"], name=name, connect_timeout=CONNECT_TIMEOUT_S,
                              max_reconnect_attempts=0, allow_reconnect=False)


async def _wait_for_start(role: str, worker_id: int, spec: dict[str, Any], reports: Any,
                          go: multiprocessing.synchronize.Event, start_at: Any) -> float:
    return await asyncio.to_thread(workers._wait_for_start, role, worker_id, reports, go, start_at,
                                   spec["start_timeout_s"])


def producer_main(worker_id: int, spec: dict[str, Any], reports: Any, go: multiprocessing.synchronize.Event,
                  start_at: Any) -> None:
    """Entry point of a producer process; ``spec`` is built by ``bench.peers.nats_jetstream``."""
    try:
        reports.put(("done", "producer", worker_id, asyncio.run(_produce(worker_id, spec, reports, go, start_at))))
    except BaseException as exc:  # the harness must hear about any failure
        reports.put(("error", "producer", worker_id, f"{type(exc).__name__}: {exc}"))


def _subject_for_key(subjects: list[str], key: bytes) -> str:
    return subjects[zlib.crc32(key) % len(subjects)]


async def _produce(worker_id: int, spec: dict[str, Any], reports: Any, go: multiprocessing.synchronize.Event,
                   start_at: Any) -> dict[str, Any]:
    streams: list[list[str]] = spec["subjects"]
    values = workers._values(spec)
    value_bytes = len(values[0])
    stamped = value_bytes >= TIMESTAMP_BYTES and spec["payload"] is None  # a payload file is sent as is
    tails = [v[TIMESTAMP_BYTES:] for v in values]
    keys = [f"key-{i}".encode() for i in range(spec["key_count"])] if spec["keyed"] else None
    rate: float | None = spec["rate_per_producer"]
    backlog: int | None = spec.get("backlog_records")
    sample_every = workers.sample_every_for(rate)
    publish = Histogram()
    failures: list[str] = []

    nc = await _connect(spec, f"bench-nats-producer-{worker_id}")
    try:
        js = nc.jetstream(publish_async_max_pending=spec["publish_in_flight_max"])
        start = await _wait_for_start("producer", worker_id, spec, reports, go, start_at)
        intervals = workers._Intervals("producer", worker_id, reports, start)
        start_mono = intervals.start_mono
        warm_mono = start_mono + spec["warmup_s"]
        end_mono = warm_mono + spec["duration_s"]
        wall_offset_s = time.time() - time.monotonic()

        def acked(intended_mono: float, future: asyncio.Future[Any]) -> None:
            if future.cancelled() or future.exception() is not None:
                failed(future)
            else:
                publish.record(int((time.monotonic() - intended_mono) * 1e6))

        def failed(future: asyncio.Future[Any]) -> None:
            error = None if future.cancelled() else future.exception()
            if (future.cancelled() or error is not None) and len(failures) < 10:
                failures.append("cancelled" if error is None else f"{type(error).__name__}: {error}")

        publish_async = js.publish_async
        tail_cycle = itertools.cycle(tails if stamped else values)
        if keys is not None:
            flat = [s for subjects in streams for s in subjects]
            key_cycle = itertools.cycle(keys)
            subject_cycle = iter(lambda: _subject_for_key(flat, next(key_cycle)), None)
        else:  # round-robin over the topics, and within each over its partitions
            partitions = len(streams[0])
            subject_cycle = itertools.cycle([subjects[p] for p in range(partitions) for subjects in streams])
        sent = 0
        sent_in_window = 0
        now = time.monotonic()
        # The kraft producer's schedule (``workers.next_burst``, ``workers.until_due_s``):
        # bursts with one look at the clock each, so both peers pay the same harness cost at
        # a fixed rate.
        period_s = 1.0 / rate if rate is not None else 0.0
        while now < end_mono if backlog is None else sent < backlog:
            burst = workers.next_burst(now, start_mono, sent, rate)
            if burst <= 0:
                assert rate is not None
                await asyncio.sleep(workers.until_due_s(now, start_mono, sent, rate))
                now = time.monotonic()
                continue
            if backlog is not None:
                burst = min(burst, backlog - sent)
            for _ in range(burst):
                intended = start_mono + sent * period_s if rate is not None else now
                if stamped:
                    payload = int((intended + wall_offset_s) * 1000).to_bytes(TIMESTAMP_BYTES, "big") + next(tail_cycle)
                else:
                    payload = next(tail_cycle)
                future = await publish_async(next(subject_cycle), payload)
                if sent % sample_every == 0 and (intended >= warm_mono or backlog is not None):
                    future.add_done_callback(functools.partial(acked, intended))
                else:
                    future.add_done_callback(failed)
                sent += 1
                if backlog is not None or intended >= warm_mono:
                    sent_in_window += 1
            now = time.monotonic()
            intervals.add(burst, value_bytes * burst, now)
        window_start = warm_mono if backlog is None else start_mono
        try:
            await asyncio.wait_for(js.publish_async_completed(), FLUSH_TIMEOUT_S)
        except asyncio.TimeoutError:
            failures.append(f"{js.publish_async_pending()} publishes not acknowledged within {FLUSH_TIMEOUT_S} s")
        flushed_mono = time.monotonic()
        intervals.flush()
    finally:
        await nc.close()
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
    """Entry point of a consumer process; ``spec`` is built by ``bench.peers.nats_jetstream``."""
    try:
        figures = asyncio.run(_consume(worker_id, spec, reports, go, start_at, stop))
        reports.put(("done", "consumer", worker_id, figures))
    except BaseException as exc:
        reports.put(("error", "consumer", worker_id, f"{type(exc).__name__}: {exc}"))


def share_of_subjects(spec: dict[str, Any], worker_id: int) -> dict[str, list[str]]:
    """This consumer's subjects per stream: every partition round-robin over the consumers."""
    pairs = [(stream, subject) for stream, subjects in zip(spec["topics"], spec["subjects"]) for subject in subjects]
    share: dict[str, list[str]] = {}
    for i, (stream, subject) in enumerate(pairs):
        if i % spec["consumers"] == worker_id:
            share.setdefault(stream, []).append(subject)
    return share


class _Pulls:
    """Pull requests kept outstanding for one stream's pull consumer, and what they delivered."""

    def __init__(self, nc: NatsClient, stream: str, consumer: str, inbox: str) -> None:
        self.nc = nc
        self.subject = PULL_SUBJECT.format(stream=stream, consumer=consumer)
        self.inbox = inbox
        self.request = json.dumps({"batch": PULL_BATCH, "expires": int(PULL_EXPIRES_S * 1e9)}).encode()
        self.outstanding = 0

    async def top_up(self) -> None:
        while self.outstanding < PULL_BATCH:
            await self.nc.publish(self.subject, self.request, reply=self.inbox)
            self.outstanding += PULL_BATCH

    def ended(self, headers: dict[str, str]) -> None:
        """A status message: a pull request ended with this many messages it never delivered."""
        try:
            undelivered = int(headers.get(PENDING_HEADER, ""))
        except ValueError:
            undelivered = self.outstanding  # unknown: ask again rather than stall
        self.outstanding = max(0, self.outstanding - undelivered)


async def _consume(worker_id: int, spec: dict[str, Any], reports: Any, go: multiprocessing.synchronize.Event,
                   start_at: Any, stop: multiprocessing.synchronize.Event) -> dict[str, Any]:
    share = share_of_subjects(spec, worker_id)
    latency_ms: Counter[int] = Counter()
    live = spec.get("backlog_records") is None
    window_ms = [0, 0]  # record timestamps counted for end-to-end latency, set once the start is known
    stamped = spec["record_size"] >= TIMESTAMP_BYTES and spec["payload"] is None
    counts = [0, 0]  # records and bytes not yet reported

    nc = await _connect(spec, f"bench-nats-consumer-{worker_id}")
    try:
        js = nc.jetstream()
        pulls: list[_Pulls] = []
        for stream, subjects in share.items():
            name = f"bench-consumer-{worker_id}"
            await js.add_consumer(stream, ConsumerConfig(
                name=name, ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, filter_subjects=subjects,
                inactive_threshold=CONSUMER_INACTIVE_THRESHOLD_S))
            pull = _Pulls(nc, stream, name, nc.new_inbox())
            pulls.append(pull)

            async def on_message(msg: Msg, pull: _Pulls = pull) -> None:
                if msg.headers:  # only status messages carry headers here
                    pull.ended(msg.headers)
                    return
                pull.outstanding -= 1
                data = msg.data
                counts[0] += 1
                counts[1] += len(data)
                if live and stamped:
                    sent_ms = int.from_bytes(data[:TIMESTAMP_BYTES], "big")
                    if window_ms[0] <= sent_ms < window_ms[1]:
                        latency_ms[int(time.time() * 1000) - sent_ms] += 1

            await nc.subscribe(pull.inbox, cb=on_message, pending_msgs_limit=SUBSCRIPTION_PENDING_MSGS_MAX,
                               pending_bytes_limit=SUBSCRIPTION_PENDING_BYTES_MAX)
        start = await _wait_for_start("consumer", worker_id, spec, reports, go, start_at)
        intervals = workers._Intervals("consumer", worker_id, reports, start)
        window_ms[0] = int((start + spec["warmup_s"]) * 1000)
        window_ms[1] = int((start + spec["warmup_s"] + spec["duration_s"]) * 1000)
        warm_mono = intervals.start_mono + spec["warmup_s"]
        end_mono = warm_mono + spec["duration_s"]
        deadline = time.monotonic() + spec["consume_deadline_s"]
        count = nbytes = in_window = bytes_in_window = 0
        first_mono: float | None = None
        last_mono = time.monotonic()
        while not stop.is_set() and time.monotonic() < deadline and pulls:
            for pull in pulls:
                await pull.top_up()
            await asyncio.sleep(CONSUMER_TICK_S)
            now_mono = time.monotonic()
            n, b = counts
            counts[0] = counts[1] = 0
            if not n:
                intervals.tick(now_mono)
                continue
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
        await nc.close()
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
