"""Consumer groups with every member a separate OS process (``tests.cluster.group_worker``).

1. Three members split 12 partitions 4/4/4; a fourth joins and gets 3 while the others keep
   consuming: no partition is ever owned by two members, the split ends 3/3/3/3, every record
   is processed exactly once, and the longest gap in each old member's records across the
   rebalance is printed next to ``group_heartbeat_interval_ms``.
2. kill -9 of a member: its partitions move to the others after its session timeout (the
   time is printed); with a commit after each poll every record is processed at least
   once, and the only duplicates are records past the killed member's last commit.
3. kill -9 of the active controller (the coordinator) on 3 nodes while members commit:
   committed offsets never go backwards, no acknowledged commit is lost, and the group goes
   on (records produced after the failover are processed, commits succeed again).
4. ``kraft groups describe`` shows committed offset, log end offset and lag per partition,
   equal to what was produced and committed.

Run with ``-s`` to see the measured figures.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from cluster.client import Admin, NewTopic, Producer, errors
from cluster.launcher import NodeProcess, wait_until
from tests.cluster.group_worker import read_events
from tests.cluster.multinode import LocalCluster, cluster_factory  # noqa: F401  (fixture)
from tests.cluster.test_replication_faults import create_topic

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
HEARTBEAT_INTERVAL_MS = 500  # the node's group_heartbeat_interval_ms in these tests
WORKER_START_TIMEOUT_S = 60.0
SETTLE_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
PRODUCE_RATE_PER_S = 150
PRODUCE_VALUES_MAX = 30_000  # bound on a steady producer's loop
WINDOW_MARGIN_S = 0.5  # records this long either side of a rebalance count toward its gap
STEADY_S = 2.0  # how long the members read in a steady split before the fourth joins


# -- workers -------------------------------------------------------------------------------------


class WorkerProcess:
    """One ``group_worker`` process and its events file."""

    def __init__(self, directory: Path, name: str, bootstrap: str, group: str, topic: str, *extra: str) -> None:
        self.name = name
        self.events_path = directory / f"{name}.jsonl"
        self.log_path = directory / f"{name}.log"
        self.killed_at: float | None = None
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.cluster.group_worker", "--bootstrap", bootstrap, "--group", group,
                 "--topic", topic, "--events", str(self.events_path), "--client-id", name, *extra],
                stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT), start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        found = read_events(self.events_path)
        return found if kind is None else [e for e in found if e["e"] == kind]

    def owned(self) -> set[int]:
        """The partitions this worker owns now, replayed from its listener events."""
        owned: set[int] = set()
        for event in self.events():
            if event["e"] == "assigned":
                owned |= set(event["parts"])
            elif event["e"] in ("revoked", "lost"):
                owned -= set(event["parts"])
        return owned

    def records(self) -> list[dict[str, Any]]:
        return self.events("rec")

    def ok_commits(self) -> list[dict[str, Any]]:
        return [e for e in self.events("commit") if e["ok"]]

    def kill9(self) -> float:
        """SIGKILL by PID; returns when it was sent (``time.monotonic()``)."""
        self.killed_at = time.monotonic()
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        return self.killed_at

    def stop(self) -> None:
        """SIGTERM: the worker closes its consumer (leaving the group) and exits 0."""
        if self.running:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=STOP_TIMEOUT_S)
        assert self.process.returncode == 0, f"{self.name} exited with {self.process.returncode}:\n{self.log()}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(name: str, bootstrap: str, group: str, topic: str, *extra: str) -> WorkerProcess:
        worker = WorkerProcess(tmp_path, name, bootstrap, group, topic, *extra)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.running:
            os.kill(worker.process.pid, signal.SIGKILL)
            worker.process.wait(timeout=10)


@pytest.fixture(scope="module")
def group_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    node = NodeProcess(tmp_path_factory.mktemp("group-node"),
                       {"group_heartbeat_interval_ms": HEARTBEAT_INTERVAL_MS})
    try:
        node.start()
        yield node
    finally:
        node.kill9()


def make_topic(bootstrap: str, name: str, partitions: int) -> str:
    with Admin(bootstrap_servers=bootstrap) as admin:
        admin.create_topics([NewTopic(name, partitions, 1)])
    return name


# -- a steady producer -----------------------------------------------------------------------------


class SteadyProducer:
    """Unique values ``v-0000001``... round-robin over the partitions at a steady rate
    (acks=all), from a thread; remembers when each value was acknowledged."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, rate_per_s: int = PRODUCE_RATE_PER_S) -> None:
        self.topic = topic
        self.partitions = partitions
        self.pace_s = 1 / rate_per_s
        self.lock = threading.Lock()
        self.acked: dict[str, tuple[int, int, float]] = {}  # value -> (partition, offset, when)
        self.failed: list[tuple[str, BaseException]] = []
        self._stop = threading.Event()
        self._producer = Producer(bootstrap_servers=bootstrap, acks="all", linger_ms=2, request_timeout_ms=5000,
                                  delivery_timeout_ms=60000)
        self._thread = threading.Thread(target=self._run, name="steady-producer", daemon=True)
        self._thread.start()

    def _on_ack(self, value: str, metadata: Any) -> None:
        with self.lock:
            self.acked[value] = (metadata.partition, metadata.offset, time.monotonic())

    def _on_error(self, value: str, error: BaseException) -> None:
        with self.lock:
            self.failed.append((value, error))

    def _run(self) -> None:
        for i in range(PRODUCE_VALUES_MAX):
            if self._stop.is_set():
                return
            value = "v-%07d" % i
            self._producer.send(self.topic, value.encode(), partition=i % self.partitions) \
                .add_callback(self._on_ack, value).add_errback(self._on_error, value)
            self._stop.wait(self.pace_s)  # the pace of the load, not a wait for a condition

    def acked_after(self, since: float) -> int:
        with self.lock:
            return sum(1 for _, _, when in self.acked.values() if when > since)

    def stop(self) -> dict[str, tuple[int, int, float]]:
        """Stop sending, wait for every acknowledgement; the acknowledged values."""
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "the producer thread did not stop"
        self._producer.flush(timeout=60)
        self._producer.close()
        with self.lock:
            return dict(self.acked)


# -- analysis of the events ------------------------------------------------------------------------


def ownership(worker: WorkerProcess) -> dict[int, list[tuple[float, float]]]:
    """partition -> the intervals [assigned, revoked) during which ``worker`` owned it; an
    interval still open ends at the kill, or never."""
    intervals: dict[int, list[tuple[float, float]]] = {}
    since: dict[int, float] = {}
    for event in worker.events():
        if event["e"] == "assigned":
            for p in event["parts"]:
                assert p not in since, f"{worker.name} was assigned {p} twice"
                since[p] = event["t"]
        elif event["e"] in ("revoked", "lost"):
            for p in event["parts"]:
                intervals.setdefault(p, []).append((since.pop(p), event["t"]))
    end = worker.killed_at if worker.killed_at is not None else math.inf
    for p, start in since.items():
        intervals.setdefault(p, []).append((start, end))
    return intervals


def assert_single_owner(all_workers: list[WorkerProcess]) -> int:
    """No partition owned by two workers at once, and every record processed while its
    worker owned the partition; returns how many ownership handovers there were."""
    by_partition: dict[int, list[tuple[float, float, str]]] = {}
    for worker in all_workers:
        owned = ownership(worker)
        for p, intervals in owned.items():
            by_partition.setdefault(p, []).extend((a, b, worker.name) for a, b in intervals)
        for record in worker.records():
            assert any(a <= record["t"] <= b for a, b in owned.get(record["p"], ())), \
                f"{worker.name} processed {record} outside its ownership of partition {record['p']}"
    handovers = 0
    for p, owners in by_partition.items():
        owners.sort()
        for (_, end, old), (start, _, new) in zip(owners, owners[1:]):
            assert start >= end, (f"partition {p} was assigned to {new} at {start:.3f} before {old} "
                                  f"revoked it at {end:.3f}")
            handovers += old != new
    return handovers


def processed(all_workers: list[WorkerProcess]) -> Counter[tuple[int, int]]:
    """How many times each (partition, offset) was processed, over every worker."""
    return Counter((r["p"], r["o"]) for w in all_workers for r in w.records())


def processed_values(all_workers: list[WorkerProcess]) -> set[str]:
    return {r["v"] for w in all_workers for r in w.records()}


def longest_gap_s(times: list[float], start: float, end: float) -> float:
    """The longest time between two consecutive ``times`` in [start, end]."""
    window = sorted(t for t in times if start <= t <= end)
    return max((b - a for a, b in zip(window, window[1:])), default=math.inf)


def wait_all_processed(all_workers: list[WorkerProcess], acked: dict[str, Any], what: str) -> None:
    def done() -> bool:
        return not set(acked) - processed_values(all_workers)

    wait_until(done, DRAIN_TIMEOUT_S, interval_s=0.2, message=f"every acknowledged record processed ({what})")


# -- 1. a fourth member joins ----------------------------------------------------------------------


@pytest.mark.timeout(150)
def test_a_fourth_member_takes_three_partitions_while_the_others_keep_consuming(group_node, workers) -> None:
    b = group_node.bootstrap
    topic = make_topic(b, "join-12", 12)
    group = "join-group"
    producer = SteadyProducer(b, topic, 12)
    try:
        first = [workers(f"w{i}", b, group, topic) for i in (1, 2, 3)]
        wait_until(lambda: all(len(w.owned()) == 4 and w.records() for w in first), WORKER_START_TIMEOUT_S,
                   interval_s=0.1, message="a 4/4/4 split with records flowing")
        split_at = max(e["t"] for w in first for e in w.events() if e["e"] in ("assigned", "revoked"))
        wait_until(lambda: all(any(r["t"] > split_at + STEADY_S for r in w.records()) for w in first),
                   SETTLE_TIMEOUT_S, interval_s=0.1, message="a steady 4/4/4 split")
        joined_at = time.monotonic()
        fourth = workers("w4", b, group, topic)
        everyone = first + [fourth]
        wait_until(lambda: [len(w.owned()) for w in everyone] == [3, 3, 3, 3], SETTLE_TIMEOUT_S,
                   interval_s=0.1, message="a 3/3/3/3 split")
        settled_at = max(e["t"] for w in everyone for e in w.events() if e["e"] in ("assigned", "revoked"))
        wait_until(lambda: all(any(r["t"] > settled_at + WINDOW_MARGIN_S for r in w.records()) for w in everyone),
                   SETTLE_TIMEOUT_S, interval_s=0.1, message="every member processing after the rebalance")
    finally:
        acked = producer.stop()
    wait_all_processed(everyone, acked, "after the join")
    split = [sorted(w.owned()) for w in everyone]
    for worker in everyone:
        worker.stop()

    assert [len(s) for s in split] == [3, 3, 3, 3], split
    assert sorted(p for s in split for p in s) == list(range(12)), split
    assert [w.owned() for w in everyone] == [set()] * 4, "every member revoked its partitions when it closed"
    handovers = assert_single_owner(everyone)
    for worker, kept in zip(first, split):
        owned = ownership(worker)
        assert all(any(a < joined_at and b > settled_at for a, b in owned[p]) for p in kept), \
            f"{worker.name} kept {kept} throughout the rebalance, never revoking them"
    counts = processed(everyone)
    assert not producer.failed, producer.failed[:3]
    assert {(p, o) for p, o, _ in acked.values()} == set(counts), "every acknowledged record, and nothing else"
    assert max(counts.values()) == 1, "a commit after each poll and at revocation: each record exactly once"

    print(f"\n[groups] 4th member joined a 3-member group on 12 partitions "
          f"(group_heartbeat_interval_ms={HEARTBEAT_INTERVAL_MS}, {PRODUCE_RATE_PER_S} records/s produced); "
          f"rebalanced in {settled_at - joined_at:.2f} s, {handovers} handovers")
    for worker in first:
        times = [r["t"] for r in worker.records()]
        polls = [e["t"] for e in worker.events("poll")]
        before = longest_gap_s(times, split_at + WINDOW_MARGIN_S, joined_at)
        across = longest_gap_s(times, joined_at - WINDOW_MARGIN_S, settled_at + WINDOW_MARGIN_S)
        poll_gap = longest_gap_s(polls, joined_at - WINDOW_MARGIN_S, settled_at + WINDOW_MARGIN_S)
        print(f"[groups]   {worker.name}: longest gap between records across the rebalance {across * 1000:.0f} ms "
              f"(before it, steady: {before * 1000:.0f} ms; longest gap between polls {poll_gap * 1000:.0f} ms; "
              f"heartbeat interval {HEARTBEAT_INTERVAL_MS} ms)")


# -- 2. kill -9 of a member ------------------------------------------------------------------------


def last_commits(worker: WorkerProcess) -> dict[int, int]:
    """partition -> the highest offset ``worker`` committed successfully."""
    found: dict[int, int] = {}
    for commit in worker.ok_commits():
        for p, offset in commit["offsets"].items():
            found[int(p)] = max(found.get(int(p), 0), offset)
    return found


def processed_ends(worker: WorkerProcess) -> dict[int, int]:
    """partition -> the offset after the last record ``worker`` processed."""
    found: dict[int, int] = {}
    for record in worker.records():
        found[record["p"]] = max(found.get(record["p"], 0), record["o"] + 1)
    return found


@pytest.mark.timeout(150)
def test_a_killed_member_s_partitions_move_on_and_only_its_uncommitted_records_repeat(group_node, workers) -> None:
    b = group_node.bootstrap
    session_timeout_ms = 3000
    commit_interval_ms = 1000  # commits after processing, once a second: a crash leaves some uncommitted
    topic = make_topic(b, "kill-6", 6)
    group = "kill-group"
    producer = SteadyProducer(b, topic, 6)
    team = [workers(f"k{i}", b, group, topic, "--session-timeout-ms", str(session_timeout_ms),
                    "--commit-interval-ms", str(commit_interval_ms)) for i in (1, 2, 3)]
    victim, survivors = team[0], team[1:]
    try:
        wait_until(lambda: all(len(w.owned()) == 2 and w.ok_commits() for w in team), WORKER_START_TIMEOUT_S,
                   interval_s=0.1, message="a 2/2/2 split with commits")

        def victim_has_uncommitted_records() -> bool:
            committed, ends = last_commits(victim), processed_ends(victim)
            return any(ends[p] > committed.get(p, 0) for p in victim.owned() if p in ends)

        wait_until(victim_has_uncommitted_records, SETTLE_TIMEOUT_S, interval_s=0.01,
                   message="records the member processed and has not committed")
        lost = victim.owned()
        killed_at = victim.kill9()

        def taken_over() -> float | None:
            taken = {p: e["t"] for w in survivors for e in w.events("assigned") if e["t"] > killed_at
                     for p in e["parts"] if p in lost}
            return max(taken.values()) if set(taken) == lost else None

        taken_at = wait_until(taken_over, session_timeout_ms / 1000 + SETTLE_TIMEOUT_S, interval_s=0.1,
                              message="the killed member's partitions in the others' hands")
        assert taken_at is not None
        wait_until(lambda: producer.acked_after(taken_at) >= 60, SETTLE_TIMEOUT_S, interval_s=0.1,
                   message="records produced after the takeover")
    finally:
        acked = producer.stop()
    wait_all_processed(team, acked, "after the kill")
    for worker in survivors:
        worker.stop()

    assert_single_owner(team)
    counts = processed(team)
    assert {(p, o) for p, o, _ in acked.values()} <= set(counts), "every acknowledged record at least once"
    committed, victim_ends = last_commits(victim), processed_ends(victim)
    victim_done = {(r["p"], r["o"]) for r in victim.records()}
    expected: set[tuple[int, int]] = set()
    for p in lost:
        resumed = min(r["o"] for w in survivors for r in w.records() if r["p"] == p and r["t"] > killed_at)
        assert committed.get(p, 0) <= resumed <= victim_ends.get(p, 0), \
            f"partition {p} resumed at {resumed}: not between the last commit {committed.get(p)} and the last record"
        expected |= {(q, o) for q, o in victim_done if q == p and o >= resumed}
    duplicates = {po for po, n in counts.items() if n > 1}
    assert max(counts.values()) <= 2
    assert duplicates == expected, "the duplicates are exactly the killed member's records past its last commit"
    print(f"\n[groups] kill -9 of a member (session_timeout_ms={session_timeout_ms}, heartbeat interval "
          f"{HEARTBEAT_INTERVAL_MS} ms): its partitions {sorted(lost)} were reassigned {taken_at - killed_at:.2f} s "
          f"after the kill; {len(duplicates)} of {len(counts)} records processed twice, all past its last commits "
          f"{ {p: committed.get(p) for p in sorted(lost)} } "
          f"(processed up to { {p: victim_ends.get(p) for p in sorted(lost)} })")


# -- 3. kill -9 of the coordinator -------------------------------------------------------------------


class OffsetWatcher:
    """Reads the group's committed offsets (Admin.list_group_offsets) in a loop, from a thread."""

    def __init__(self, bootstrap: str, group: str, topic: str) -> None:
        self.group = group
        self.topic = topic
        self.seen: list[tuple[float, float, dict[int, int]]] = []  # (asked at, answered at, offsets)
        self.failures = 0
        self._stop = threading.Event()
        self._admin = Admin(bootstrap_servers=bootstrap, request_timeout_ms=3000, retry_backoff_ms=50)
        self._thread = threading.Thread(target=self._run, name="offset-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            asked_at = time.monotonic()
            try:
                offsets = self._admin.list_group_offsets(self.group)
            except errors.KraftError:
                self.failures += 1
            else:
                self.seen.append((asked_at, time.monotonic(), {tp.partition: om.offset for tp, om in offsets.items()
                                                               if tp.topic == self.topic}))
            self._stop.wait(0.05)  # the pace of the watcher

    def latest(self) -> tuple[float, float, dict[int, int]] | None:
        return self.seen[-1] if self.seen else None

    def stop(self) -> list[tuple[float, float, dict[int, int]]]:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "the offset watcher did not stop"
        self._admin.close()
        return list(self.seen)


@pytest.mark.timeout(180)
def test_killing_the_coordinator_loses_no_commit_and_the_group_goes_on(cluster_factory, workers) -> None:
    cluster: LocalCluster = cluster_factory(group_heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS)
    topic, group, partitions = "failover-6", "failover-group", 6
    create_topic(cluster, topic, partitions)
    b = cluster.bootstrap
    producer = SteadyProducer(b, topic, partitions, rate_per_s=100)
    watcher = OffsetWatcher(b, group, topic)
    try:
        team = [workers(f"c{i}", b, group, topic) for i in (1, 2)]
        wait_until(lambda: all(len(w.owned()) == 3 and len(w.ok_commits()) >= 5 for w in team),
                   WORKER_START_TIMEOUT_S, interval_s=0.1, message="a 3/3 split with commits")
        controller_id = cluster.wait_formed()  # the active controller coordinates every group
        cluster.kill9(controller_id)
        killed_at = time.monotonic()

        def served_again() -> float | None:
            return next((answered for asked, answered, _ in watcher.seen if asked > killed_at), None)

        served_at = wait_until(served_again, SETTLE_TIMEOUT_S, interval_s=0.1,
                               message="offsets served by a new coordinator")
        assert served_at is not None
        wait_until(lambda: all(any(c["t0"] > served_at for c in w.ok_commits()) for w in team)
                   and producer.acked_after(served_at) >= 100, SETTLE_TIMEOUT_S, interval_s=0.1,
                   message="commits and records after the failover")
    finally:
        acked = producer.stop()
    try:
        wait_all_processed(team, acked, "after the failover")

        def committed_everything() -> bool:
            ends: dict[int, int] = {}
            for w in team:
                for r in w.records():
                    ends[r["p"]] = max(ends.get(r["p"], 0), r["o"] + 1)
            latest = watcher.latest()
            return latest is not None and latest[0] > time.monotonic() - 5 and latest[2] == ends

        wait_until(committed_everything, SETTLE_TIMEOUT_S, interval_s=0.2,
                   message="the group's offsets at the end of what was processed")
    finally:
        seen = watcher.stop()
    for worker in team:
        worker.stop()

    # Offsets read from the coordinator never go backwards, and never fall below a commit
    # that was acknowledged before the read was asked.
    commits = sorted(((c["t"], int(p), o) for w in team for c in w.ok_commits() for p, o in c["offsets"].items()))
    high: dict[int, int] = {}
    for asked_at, _, offsets in seen:
        for p, offset in offsets.items():
            assert offset >= high.get(p, 0), f"partition {p}'s committed offset went back {high[p]} -> {offset}"
            high[p] = offset
        for done_at, p, offset in commits:
            if done_at >= asked_at:
                break
            assert offsets.get(p, -1) >= offset, \
                f"a commit of {p}@{offset} acknowledged at {done_at:.3f} is missing from a read at {asked_at:.3f}"
    # The workers' own acknowledged commits never go backwards either.
    last: dict[int, int] = {}
    for _, p, offset in commits:
        assert offset >= last.get(p, 0), f"partition {p}: an acknowledged commit {offset} after {last[p]}"
        last[p] = offset
    assert_single_owner(team)
    counts = processed(team)
    assert {(p, o) for p, o, _ in acked.values()} <= set(counts), "every acknowledged record processed"
    after = sum(1 for _, _, when in acked.values() if when > served_at)
    failed_commits = [c for w in team for c in w.events("commit") if not c["ok"]]
    across = [c["t"] - c["t0"] for w in team for c in w.ok_commits() if c["t0"] <= killed_at <= c["t"]]
    slowest_s = max((c["t"] - c["t0"] for w in team for c in w.ok_commits()), default=0.0)
    print(f"\n[groups] kill -9 of the coordinator (node {controller_id}): offsets served again "
          f"{served_at - killed_at:.2f} s later; {len(seen)} reads of the offsets never went back, "
          f"{watcher.failures} reads failed during the failover; {len(commits)} commits acknowledged, "
          f"{len(failed_commits)} failed; {after} records produced after the failover were processed; "
          f"{sum(1 for n in counts.values() if n > 1)} records processed twice; {len(across)} commits were out "
          f"at the kill and took {', '.join(f'{t:.2f}' for t in across) or '-'} s; the slowest commit took "
          f"{slowest_s:.2f} s")
    for commit in failed_commits:
        print(f"[groups]   failed commit {commit['offsets']} after {commit['t'] - commit['t0']:.2f} s: {commit['err']}")


# -- 4. kraft groups describe --------------------------------------------------------------------------


def kraft(*args: str, timeout_s: float = 60) -> str:
    done = subprocess.run([sys.executable, "-m", "cluster", *args], capture_output=True, cwd=str(ROOT),
                          timeout=timeout_s, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.timeout(90)
def test_kraft_groups_describe_shows_committed_offsets_log_ends_and_lag(group_node, workers) -> None:
    b = group_node.bootstrap
    topic = make_topic(b, "lag-4", 4)
    group = "lag-group"
    produced = 20
    consumed = {0: 5, 1: 12, 2: 20, 3: 1}
    with Producer(bootstrap_servers=b, acks="all", linger_ms=2) as producer:
        for i in range(produced):
            for p in range(4):
                producer.send(topic, b"lag-%d-%d" % (p, i), partition=p)
        producer.flush(timeout=60)
    worker = workers("lagging", b, group, topic, "--limit", ",".join(f"{p}:{m}" for p, m in consumed.items()))

    def committed() -> dict[int, int]:
        found: dict[int, int] = {}
        for commit in worker.ok_commits():
            found.update((int(p), o) for p, o in commit["offsets"].items())
        return found

    wait_until(lambda: committed() == consumed, WORKER_START_TIMEOUT_S, interval_s=0.1,
               message=f"commits of {consumed}")
    worker.stop()

    out = kraft("groups", "describe", group, "--bootstrap-server", b)
    print(f"\n[groups] kraft groups describe {group}:\n{out}")
    header = out.splitlines()[0]
    assert "State: empty" in header and "Members: 0" in header, header
    rows = {}
    for line in out.splitlines():
        cells = line.split()
        if cells and cells[0] == topic:
            rows[int(cells[1])] = (int(cells[2]), int(cells[3]), int(cells[4]), cells[5])
    assert rows == {p: (m, produced, produced - m, "-") for p, m in consumed.items()}
    total = sum(produced - m for m in consumed.values())
    assert f"Total lag: {total}" in out
    assert sum(r["o"] < consumed[r["p"]] for r in worker.records()) == len(worker.records()) == sum(consumed.values())
