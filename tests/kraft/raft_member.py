"""One Raft metadata voter in its own process, driven by JSON lines; and the measurement run.

``python -m tests.kraft.raft_member member --node-id 1 --voters 1=127.0.0.1:P1,2=...,3=...
--data-dir DIR --password PW`` opens a ``RaftMetadataLog`` and prints ``{"event": "started"}``.
It then reads one JSON request per stdin line and prints one JSON response per line:

    {"op": "status"}                          -> node_id, leader, controller_id, ready, offset,
                                                 topics, brokers, notified_offset, term,
                                                 commit_index, first_ready
    {"op": "wait_ready", "timeout_s": 10}     -> {"ready": bool, "offset": image offset then}
    {"op": "create_topic", "name": "t"}       -> {"ok": true, "offset": N} or
    {"op": "register", "broker_id": 1}           {"error": "NotControllerError", "controller_id": 2, ...}
    {"op": "bench_sync", "count": 200}        -> one append at a time: latency percentiles
    {"op": "bench_pipelined", "count": 2000, "threads": 8} -> appends/s from concurrent callers

``first_ready`` is what a thread started right after the log opened saw when its
``wait_ready`` first returned: ``{"ready": bool, "offset": image offset at that moment}``
(``null`` until it returns). It shows whether the member ever called itself ready on an
image that was behind.

EOF on stdin closes the log and exits. Logs go to stderr.

``python -m tests.kraft.raft_member measure`` starts 3 local voters per scenario and prints
the figures quoted in ``kraft/raft_log.py`` (latency with batching on/off and fsync on/off,
pipelined throughput, failover time with pysyncobj's default and the tuned timeouts). It
takes a few minutes.

``MemberProcess`` is the parent's handle on one member; the tests use it too.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
REQUEST_TIMEOUT_S = 30.0
FIRST_READY_TIMEOUT_S = 120.0  # how long the member's watcher waits for readiness

# pysyncobj 0.3.17's own defaults, for the comparison runs.
PYSYNCOBJ_DEFAULT_TIMING = {
    "append_entries_period_ms": 100,
    "raft_min_timeout_ms": 400,
    "raft_max_timeout_ms": 1400,
    "connection_timeout_ms": 3500,
    "connection_retry_ms": 5000,
    "leader_fallback_timeout_ms": 30000,
}


# -- the member process ---------------------------------------------------------------------


def _parse_voters(text: str) -> dict[int, str]:
    voters = {}
    for item in text.split(","):
        node_id, address = item.split("=", 1)
        voters[int(node_id)] = address
    return voters


def run_member(args: argparse.Namespace) -> int:
    from kraft.raft_log import RaftConfig, RaftMetadataLog
    from kraft.records import RegisterBrokerRecord, TopicRecord

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    voters = _parse_voters(args.voters)
    timing: dict[str, Any] = dict(PYSYNCOBJ_DEFAULT_TIMING) if args.default_timing else {}
    for setting in args.set:
        key, value = setting.split("=", 1)
        timing[key] = int(value)
    config = RaftConfig(
        node_id=args.node_id,
        bind_address=args.bind or voters[args.node_id],
        voters=voters,
        password=args.password,
        data_dir=args.data_dir,
        append_timeout_ms=args.append_timeout_ms,
        append_entries_use_batch=args.batch,
        journal_fsync=not args.no_fsync,
        log_compaction_entries_min=args.compaction_entries,
        **timing,
    )
    log = RaftMetadataLog(config)
    notified = {"offset": log.image.offset, "calls": 0}

    def on_change(old: Any, new: Any) -> None:
        notified["offset"] = new.offset
        notified["calls"] += 1

    log.subscribe(on_change)
    first_ready: dict[str, Any] = {}

    def watch_ready() -> None:
        ready = log.wait_ready(FIRST_READY_TIMEOUT_S)
        first_ready.update(ready=ready, offset=log.image.offset)

    threading.Thread(target=watch_ready, name="watch-ready", daemon=True).start()
    out = sys.stdout

    def reply(message: dict[str, Any]) -> None:
        out.write(json.dumps(message) + "\n")
        out.flush()

    def append(records: list[Any]) -> dict[str, Any]:
        try:
            image = log.append(records)
        except Exception as exc:
            return {"error": type(exc).__name__, "message": str(exc),
                    "controller_id": getattr(exc, "controller_id", None)}
        return {"ok": True, "offset": image.offset}

    reply({"event": "started", "offset": log.image.offset})
    for line in sys.stdin:
        request = json.loads(line)
        op = request["op"]
        if op == "status":
            image = log.image
            reply({
                "node_id": args.node_id,
                "leader": log.is_active_controller(),
                "controller_id": log.active_controller_id(),
                "ready": log.status.ready,
                "term": log.status.term,
                "commit_index": log.status.commit_index,
                "first_ready": dict(first_ready) or None,
                "offset": image.offset,
                "topics": sorted(image.topics_by_name),
                "brokers": sorted(image.brokers),
                "notified_offset": notified["offset"],
                "failed": log.failed,
            })
        elif op == "wait_ready":
            ready = log.wait_ready(float(request.get("timeout_s", 10)))
            reply({"ready": ready, "offset": log.image.offset})
        elif op == "create_topic":
            name = request["name"]
            reply(append([TopicRecord(topic_id=f"id-{name}", name=name)]))
        elif op == "register":
            reply(append([RegisterBrokerRecord(int(request["broker_id"]), "127.0.0.1", 9092, None)]))
        elif op == "bench_sync":
            reply(_bench_sync(log, int(request["count"])))
        elif op == "bench_pipelined":
            reply(_bench_pipelined(log, int(request["count"]), int(request["threads"])))
        else:
            reply({"error": "BadRequest", "message": f"unknown op {op!r}"})
    log.close()
    return 0


def _bench_record(i: int) -> list[Any]:
    from kraft.records import RegisterBrokerRecord

    # Re-registering a handful of brokers keeps the image small, so apply cost stays flat.
    return [RegisterBrokerRecord(i % 5, "127.0.0.1", 9092 + i % 1000, None)]


def _bench_sync(log: Any, count: int) -> dict[str, Any]:
    latencies_ms = []
    started = time.perf_counter()
    for i in range(count):
        t0 = time.perf_counter()
        log.append(_bench_record(i))
        latencies_ms.append((time.perf_counter() - t0) * 1000)
    elapsed_s = time.perf_counter() - started
    latencies_ms.sort()
    return {
        "count": count,
        "ops_per_s": round(count / elapsed_s),
        "p50_ms": round(statistics.median(latencies_ms), 2),
        "p99_ms": round(latencies_ms[int(len(latencies_ms) * 0.99) - 1], 2),
        "max_ms": round(latencies_ms[-1], 2),
    }


def _bench_pipelined(log: Any, count: int, threads: int) -> dict[str, Any]:
    from kraft.raft_log import CommandSkippedError

    per_thread = count // threads
    counts = {"ok": 0, "skipped": 0, "other": 0}
    lock = threading.Lock()

    def worker(offset: int) -> None:
        for i in range(per_thread):
            try:
                log.append(_bench_record(offset + i))
                key = "ok"
            except CommandSkippedError:
                key = "skipped"
            except Exception:
                key = "other"
            with lock:
                counts[key] += 1

    workers = [threading.Thread(target=worker, args=(t * per_thread,)) for t in range(threads)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed_s = time.perf_counter() - started
    return {"threads": threads, "ok_per_s": round(counts["ok"] / elapsed_s), **counts}


# -- the parent's handle ------------------------------------------------------------------------


class MemberProcess:
    """One member process: start, request/response over pipes, kill -9 by PID."""

    def __init__(self, node_id: int, voters: dict[int, str], data_dir: Path, password: str,
                 log_path: Path, extra_args: list[str] | None = None) -> None:
        self.node_id = node_id
        self.voters = voters
        self.data_dir = data_dir
        self.password = password
        self.log_path = log_path
        self.extra_args = list(extra_args or [])
        self.process: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()

    @property
    def address(self) -> str:
        return self.voters[self.node_id]

    def start(self, timeout_s: float = REQUEST_TIMEOUT_S) -> dict[str, Any]:
        assert self.process is None or self.process.poll() is not None
        voters = ",".join(f"{i}={a}" for i, a in sorted(self.voters.items()))
        command = [sys.executable, "-m", "tests.kraft.raft_member", "member",
                   "--node-id", str(self.node_id), "--voters", voters,
                   "--data-dir", str(self.data_dir), "--password", self.password,
                   *self.extra_args]
        log_file = open(self.log_path, "ab")
        try:
            self.process = subprocess.Popen(
                command, cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=log_file, text=True, bufsize=1)
        finally:
            log_file.close()
        self._lines = queue.Queue()
        threading.Thread(target=self._read_lines, args=(self.process, self._lines),
                         daemon=True).start()
        started = self._next_line(timeout_s)
        assert started.get("event") == "started", started
        return started

    @staticmethod
    def _read_lines(process: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    def _next_line(self, timeout_s: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout_s)
        except queue.Empty:
            raise TimeoutError(f"member {self.node_id} did not answer within {timeout_s}s") from None
        if line is None:
            raise RuntimeError(f"member {self.node_id} exited; see {self.log_path}")
        return json.loads(line)

    def request(self, op: str, timeout_s: float = REQUEST_TIMEOUT_S, **fields: Any) -> dict[str, Any]:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.process.stdin.flush()
        return self._next_line(timeout_s)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill9(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        if self.process is not None:
            for stream in (self.process.stdin, self.process.stdout):
                try:
                    if stream is not None:
                        stream.close()
                except OSError:
                    pass

    def stop(self, timeout_s: float = 10.0) -> None:
        """Close stdin (the member closes its log and exits); kill -9 if it does not."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            assert self.process.stdin is not None
            self.process.stdin.close()
            self.process.wait(timeout_s)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill9()


def make_cluster(base_dir: Path, ports: list[int], password: str,
                 extra_args: list[str] | None = None) -> list[MemberProcess]:
    voters = {i + 1: f"127.0.0.1:{port}" for i, port in enumerate(ports)}
    members = []
    for node_id in voters:
        data_dir = base_dir / f"voter-{node_id}"
        data_dir.mkdir(parents=True, exist_ok=True)
        members.append(MemberProcess(node_id, voters, data_dir, password,
                                     base_dir / f"voter-{node_id}.log", extra_args))
    return members


def find_leader(members: list[MemberProcess], timeout_s: float) -> MemberProcess:
    """The one live member that is ready and says it leads, polled until the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        for member in members:
            if member.alive():
                status = member.request("status")
                if status["leader"] and status["ready"]:
                    return member
        if time.monotonic() > deadline:
            raise TimeoutError("no ready leader")
        time.sleep(0.02)


# -- the measurement run ------------------------------------------------------------------------


def _free_ports(count: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _with_cluster(extra_args: list[str], body: Any) -> Any:
    with tempfile.TemporaryDirectory(prefix="raft-measure-") as tmp:
        members = make_cluster(Path(tmp), _free_ports(3), "measure-password", extra_args)
        try:
            for member in members:
                member.start()
            return body(members)
        finally:
            for member in members:
                member.kill9()


def _measure_latency(extra_args: list[str], count: int) -> dict[str, Any]:
    def body(members: list[MemberProcess]) -> dict[str, Any]:
        leader = find_leader(members, 30)
        leader.request("bench_sync", count=20)  # warm-up
        return leader.request("bench_sync", timeout_s=300, count=count)
    return _with_cluster(extra_args, body)


def _measure_pipelined(extra_args: list[str], count: int, threads: int) -> dict[str, Any]:
    def body(members: list[MemberProcess]) -> dict[str, Any]:
        leader = find_leader(members, 30)
        leader.request("bench_sync", count=20)
        return leader.request("bench_pipelined", timeout_s=300, count=count, threads=threads)
    return _with_cluster(extra_args, body)


def _measure_failover(extra_args: list[str], rounds: int) -> list[float]:
    """Seconds from kill -9 of the leader until another voter accepts an append."""
    def body(members: list[MemberProcess]) -> list[float]:
        times = []
        for round_number in range(rounds):
            leader = find_leader(members, 60)
            leader.request("create_topic", name=f"before-{round_number}")
            killed_at = time.monotonic()
            leader.kill9()
            others = [m for m in members if m is not leader]
            accepted = False
            while not accepted:
                for member in others:
                    answer = member.request("create_topic", name=f"after-{round_number}")
                    if answer.get("ok"):
                        accepted = True
                        break
                if time.monotonic() - killed_at > 120:
                    raise TimeoutError("no failover within 120 s")
            times.append(round(time.monotonic() - killed_at, 3))
            leader.start()
            for member in members:
                member.request("wait_ready", timeout_s=60)
        return times
    return _with_cluster(extra_args, body)


def run_measure(args: argparse.Namespace) -> int:
    count, rounds = args.count, args.rounds
    results: dict[str, Any] = {}
    for name, extra in [
        ("sync_batch_off_fsync_on", []),
        ("sync_batch_off_fsync_off", ["--no-fsync"]),
        ("sync_batch_on_fsync_on", ["--batch"]),
    ]:
        results[name] = _measure_latency(extra, count)
        print(name, results[name], flush=True)
    for name, threads, extra in [
        ("pipelined_1_thread_fsync_on", 1, []),
        ("pipelined_8_threads_fsync_on", 8, []),
        ("pipelined_8_threads_fsync_off", 8, ["--no-fsync"]),
    ]:
        results[name] = _measure_pipelined(extra, count * 4, threads)
        print(name, results[name], flush=True)
    for name, extra in [
        ("failover_tuned", []),
        ("failover_tuned_but_connection_timeout_3500", ["--set", "connection_timeout_ms=3500"]),
        ("failover_pysyncobj_defaults", ["--default-timing"]),
    ]:
        times = _measure_failover(extra, rounds)
        results[name] = {"seconds": times, "median_s": statistics.median(times), "max_s": max(times)}
        print(name, results[name], flush=True)
    print(json.dumps(results, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.kraft.raft_member")
    sub = parser.add_subparsers(dest="command", required=True)
    member = sub.add_parser("member", help="run one voter driven by JSON lines on stdin")
    member.add_argument("--node-id", type=int, required=True)
    member.add_argument("--voters", required=True, help="1=host:port,2=host:port,...")
    member.add_argument("--data-dir", required=True)
    member.add_argument("--password", required=True)
    member.add_argument("--bind", help="bind address (default: this voter's address)")
    member.add_argument("--batch", action="store_true", help="appendEntriesUseBatch=True")
    member.add_argument("--no-fsync", action="store_true", help="journal_fsync=False")
    member.add_argument("--default-timing", action="store_true", help="pysyncobj's default timeouts")
    member.add_argument("--set", action="append", default=[], metavar="KEY=MS",
                        help="override one integer RaftConfig setting, e.g. tick_ms=50")
    member.add_argument("--append-timeout-ms", type=int, default=5000)
    member.add_argument("--compaction-entries", type=int, default=5000)
    measure = sub.add_parser("measure", help="print latency, throughput and failover figures")
    measure.add_argument("--count", type=int, default=500, help="sync appends per latency run")
    measure.add_argument("--rounds", type=int, default=5, help="leader kills per failover run")
    args = parser.parse_args(argv)
    if args.command == "member":
        return run_member(args)
    return run_measure(args)


if __name__ == "__main__":
    sys.exit(main())
