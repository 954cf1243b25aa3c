"""One consumer-group member as its own OS process, for the group demonstrations.

Theory of operation
-------------------
``python -m tests.cluster.group_worker --bootstrap B --group G --topic T --events FILE``
joins group G with a ``Consumer``, subscribes to T with a rebalance listener, and loops:
``poll``, process every record, commit. It owns one events file and appends one JSON line
per event, flushed at once, so a test that kills the process with SIGKILL still reads every
line written before the kill (a half-written last line is ignored by ``read_events``).

Events (``t`` is ``time.monotonic()``, which is one clock for every process of the host)::

    {"e": "start", "pid": 1234, "t": ...}
    {"e": "assigned" | "revoked" | "lost", "parts": [0, 3], "t": ...}   # from the listener
    {"e": "poll", "n": 7, "t": ...}                 # every poll: its gaps are the heartbeat
    {"e": "rec", "p": 3, "o": 41, "v": "v-000123", "t": ...}            # each record processed
    {"e": "commit", "offsets": {"3": 42}, "ok": true, "err": null, "t0": ..., "t": ...}
    {"e": "error", "err": "...", "t": ...}           # an error raised by poll
    {"e": "closed", "t": ...}

Commits are manual by default: after processing the records of one poll, the worker
commits, for each partition, the offset after the last record it processed there (and, in
``on_partitions_revoked``, whatever it processed and has not committed yet);
``--commit-interval-ms N`` commits after a poll only when N ms have passed since the last
commit, so that a crash leaves processed records uncommitted. With
``--auto-commit`` the consumer commits by itself and no commit events are written.
``--limit P:M,...`` processes at most M records of partition P (the next ones are
skipped and the partition paused). SIGTERM ends the loop: the consumer closes and leaves
the group.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import IO, Any

from cluster.client import Consumer, ConsumerRebalanceListener, TopicPartition, errors

POLL_TIMEOUT_MS = 100
ERRORS_IN_A_ROW_MAX = 600  # a poll loop that only fails for this long gives up


def read_events(path: Path) -> list[dict[str, Any]]:
    """Every complete line of an events file (a line cut by a kill is left out)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.split("\n")[:-1] if line]


def parse_limits(text: str | None) -> dict[int, int]:
    if not text:
        return {}
    limits = {}
    for item in text.split(","):
        partition, count = item.split(":")
        limits[int(partition)] = int(count)
    return limits


class EventLog:
    def __init__(self, path: Path) -> None:
        self._file: IO[str] = open(path, "a", buffering=1)

    def write(self, event: str, **fields: Any) -> None:
        fields.setdefault("t", time.monotonic())
        self._file.write(json.dumps({"e": event, **fields}, separators=(",", ":")) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class Worker(ConsumerRebalanceListener):
    def __init__(self, args: argparse.Namespace, events: EventLog) -> None:
        self.events = events
        self.topic = args.topic
        self.manual = not args.auto_commit
        self.commit_interval_s = args.commit_interval_ms / 1000
        self.next_commit_s = 0.0
        self.limits = parse_limits(args.limit)
        self.processed: dict[int, int] = {}  # partition -> offset after the last record processed
        self.committed: dict[int, int] = {}  # partition -> what this worker last committed
        self.counts: dict[int, int] = {}
        self.stopping = False
        self.consumer = Consumer(
            bootstrap_servers=args.bootstrap, group_id=args.group, client_id=args.client_id,
            enable_auto_commit=args.auto_commit, auto_commit_interval_ms=args.auto_commit_interval_ms,
            session_timeout_ms=args.session_timeout_ms, max_poll_records=args.max_poll_records,
            request_timeout_ms=args.request_timeout_ms, retry_backoff_ms=50, auto_offset_reset="earliest")

    # -- the listener -----------------------------------------------------------------

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.events.write("assigned", parts=sorted(tp.partition for tp in assigned))

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        parts = {tp.partition for tp in revoked}
        if self.manual:
            self.commit(parts)
        self.events.write("revoked", parts=sorted(parts))
        self._forget(parts)

    def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        parts = {tp.partition for tp in lost}
        self.events.write("lost", parts=sorted(parts))
        self._forget(parts)

    def _forget(self, parts: set[int]) -> None:
        for p in parts:
            self.processed.pop(p, None)
            self.committed.pop(p, None)
            self.counts.pop(p, None)

    # -- the loop ---------------------------------------------------------------------

    def commit(self, parts: set[int] | None = None) -> None:
        offsets = {p: o for p, o in self.processed.items()
                   if (parts is None or p in parts) and self.committed.get(p) != o}
        if not offsets:
            return
        started = time.monotonic()
        self.next_commit_s = started + self.commit_interval_s
        try:
            self.consumer.commit({TopicPartition(self.topic, p): o for p, o in offsets.items()})
        except errors.KraftError as exc:
            self.events.write("commit", offsets={str(p): o for p, o in offsets.items()}, ok=False,
                              err=f"{type(exc).__name__}: {exc}", t0=started)
            return
        self.committed.update(offsets)
        self.events.write("commit", offsets={str(p): o for p, o in offsets.items()}, ok=True, err=None, t0=started)

    def process(self, batches: dict[TopicPartition, list[Any]]) -> None:
        for tp, records in batches.items():
            limit = self.limits.get(tp.partition)
            for record in records:
                if limit is not None and self.counts.get(tp.partition, 0) >= limit:
                    self.consumer.pause(tp)
                    break
                value = record.value.decode() if record.value is not None else None
                self.events.write("rec", p=tp.partition, o=record.offset, v=value)
                self.processed[tp.partition] = record.offset + 1
                self.counts[tp.partition] = self.counts.get(tp.partition, 0) + 1

    def run(self) -> int:
        self.consumer.subscribe([self.topic], listener=self)
        failures = 0
        while not self.stopping:
            try:
                batches = self.consumer.poll(timeout_ms=POLL_TIMEOUT_MS)
            except errors.KraftError as exc:
                self.events.write("error", err=f"{type(exc).__name__}: {exc}")
                failures += 1
                fatal = not exc.retriable and not isinstance(exc, errors.CommitFailedError)
                if fatal or failures > ERRORS_IN_A_ROW_MAX:
                    return 1
                continue
            failures = 0
            self.events.write("poll", n=sum(len(r) for r in batches.values()))
            self.process(batches)
            if self.manual and time.monotonic() >= self.next_commit_s:
                self.commit()
        self.consumer.close()
        self.events.write("closed")
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster.group_worker")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--events", required=True, type=Path)
    parser.add_argument("--client-id", default="group-worker")
    parser.add_argument("--auto-commit", action="store_true")
    parser.add_argument("--auto-commit-interval-ms", type=int, default=200)
    parser.add_argument("--commit-interval-ms", type=int, default=0, help="manual commits at most this often")
    parser.add_argument("--session-timeout-ms", type=int, default=10000)
    parser.add_argument("--request-timeout-ms", type=int, default=10000)
    parser.add_argument("--max-poll-records", type=int, default=100)
    parser.add_argument("--limit", help="P:M,... process at most M records of partition P")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    events = EventLog(args.events)
    events.write("start", pid=os.getpid())
    worker = Worker(args, events)

    def stop(signum: int, frame: Any) -> None:
        worker.stopping = True

    signal.signal(signal.SIGTERM, stop)
    try:
        return worker.run()
    finally:
        events.close()


if __name__ == "__main__":
    sys.exit(main())
