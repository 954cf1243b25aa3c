"""Group membership, member side: the pure state machine as scripted stories, then the
heartbeat thread and the consumer's reconciliation against a scripted fake coordinator."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from cluster.client import Consumer, ConsumerRebalanceListener, OffsetAndMetadata, TopicPartition, errors
from cluster.client.group import (
    CLOSED,
    FATAL,
    FENCED,
    JOINING,
    LEAVING,
    STABLE,
    STALE,
    UNSUBSCRIBED,
    CoordinatorClient,
    MembershipManager,
    MembershipState,
    coordinator_error,
    topic_partitions_to_wire,
)
from cluster.client.network import NetworkClient
from cluster.protocol.api import ApiKey
from storage.batch import encode_batch, stamp
from tests.client.fake_broker import FakeBroker
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(60)

A0, A1, A2, B0 = (TopicPartition("a", 0), TopicPartition("a", 1), TopicPartition("a", 2), TopicPartition("b", 0))


def wire(*tps: TopicPartition) -> list[dict[str, Any]]:
    return topic_partitions_to_wire(tps)


def ok(member_id: str = "m-1", epoch: int = 1, interval_ms: int = 1000, assignment: Any = None) -> dict[str, Any]:
    return {"error_code": 0, "error_message": None, "member_id": member_id, "member_epoch": epoch,
            "heartbeat_interval_ms": interval_ms,
            "assignment": None if assignment is None else {"topic_partitions": wire(*assignment)}}


def error(code: int) -> dict[str, Any]:
    return {"error_code": code, "error_message": errors.error_name(code), "member_id": None, "member_epoch": -1,
            "heartbeat_interval_ms": 0, "assignment": None}


def member(instance_id: str | None = None, rebalance_timeout_ms: int = 60000, now_ms: float = 0) -> MembershipState:
    state = MembershipState("g", client_id="c", session_timeout_ms=10000, rebalance_timeout_ms=rebalance_timeout_ms,
                            instance_id=instance_id, retry_backoff_ms=100, now_ms=now_ms)
    state.subscribe(topic_names=["b", "a"])
    return state


def joined(assignment: tuple[TopicPartition, ...] = (A0, A1), **kwargs: Any) -> MembershipState:
    state = member(**kwargs)
    state.heartbeat_request(0)
    state.on_heartbeat_response(ok(assignment=assignment), 0)
    return state


# -- the state machine, as stories ---------------------------------------------------------

def test_a_member_joins_with_epoch_0_and_sends_its_subscription_and_owned_partitions() -> None:
    state = member()
    assert state.state == JOINING
    body = state.heartbeat_request(0)
    assert body is not None
    assert body["member_id"] == "" and body["member_epoch"] == 0 and body["group_id"] == "g"
    assert body["subscribed_topic_names"] == ["a", "b"] and body["subscribed_topic_regex"] is None
    assert body["topic_partitions"] == [], "a joining member sends what it owns: nothing"
    assert body["session_timeout_ms"] == 10000 and body["rebalance_timeout_ms"] == 60000
    assert state.heartbeat_request(0) is None, "one heartbeat in flight at a time"

    state.on_heartbeat_response(ok(member_id="m-7", epoch=3, interval_ms=2000, assignment=(A0, B0)), 5)
    assert (state.state, state.member_id, state.member_epoch) == (STABLE, "m-7", 3)
    assert state.assignment_to_reconcile() == {A0, B0}
    assert state.commit_identity() == ("m-7", 3)


def test_heartbeats_come_every_interval_and_carry_only_what_changed() -> None:
    state = joined(assignment=(A0,))
    state.reconciled({A0})
    body = state.heartbeat_request(1)
    assert body is not None, "a reconciliation is reported at once, not after the interval"
    assert body["topic_partitions"] == wire(A0) and body["subscribed_topic_names"] is None
    assert body["member_epoch"] == 1 and body["member_id"] == "m-1"
    state.on_heartbeat_response(ok(), 2)
    assert state.assignment_to_reconcile() is None, "nothing left to reconcile"
    assert state.heartbeat_request(500) is None
    assert state.time_to_next_heartbeat_ms(500) == pytest.approx(502)
    body = state.heartbeat_request(1002)
    assert body is not None
    assert body["topic_partitions"] is None and body["subscribed_topic_names"] is None, "nothing changed"

    state.on_heartbeat_response(ok(), 1003)
    state.subscribe(topic_regex="a.*")
    body = state.heartbeat_request(1004)
    assert body is not None and body["subscribed_topic_regex"] == "a.*" and body["subscribed_topic_names"] == []


def test_a_failed_heartbeat_is_retried_with_backoff_and_resends_every_field() -> None:
    state = joined()
    state.reconciled({A0, A1})
    state.heartbeat_request(0)
    state.on_heartbeat_response(ok(), 0)
    state.heartbeat_request(1000)
    state.on_heartbeat_response(error(errors.NOT_COORDINATOR), 1000)
    assert state.state == STABLE
    assert state.heartbeat_request(1050) is None, "backoff"
    body = state.heartbeat_request(1100)
    assert body is not None
    assert body["topic_partitions"] == wire(A0, A1) and body["subscribed_topic_names"] == ["a", "b"]
    state.on_heartbeat_failure(errors.NetworkExceptionError("gone"), 1100)
    assert state.heartbeat_request(1250) is None, "the backoff grows"
    assert state.heartbeat_request(1300) is not None


@pytest.mark.parametrize("code", [errors.FENCED_MEMBER_EPOCH, errors.UNKNOWN_MEMBER_ID])
def test_a_fenced_member_waits_for_the_application_to_give_up_its_partitions_then_rejoins(code: int) -> None:
    state = joined()
    state.reconciled({A0, A1})
    state.heartbeat_request(0)
    state.on_heartbeat_response(error(code), 0)
    assert state.state == FENCED and state.needs_release()
    assert state.commit_identity() is None, "a fenced member cannot commit"
    assert state.time_to_next_heartbeat_ms(10**9) == float("inf"), "no rejoin before the partitions are given up"
    state.released()
    assert state.state == JOINING and state.owned == frozenset()
    body = state.heartbeat_request(1)
    assert body is not None and body["member_epoch"] == 0 and body["topic_partitions"] == []
    # FENCED_MEMBER_EPOCH: the coordinator knows the id; UNKNOWN_MEMBER_ID: ask for a new one
    assert body["member_id"] == ("m-1" if code == errors.FENCED_MEMBER_EPOCH else "")


def test_no_poll_for_max_poll_interval_leaves_the_group_and_the_next_poll_rejoins() -> None:
    state = joined(rebalance_timeout_ms=5000)
    state.poll_called(1000)
    assert not state.check_poll_timeout(6000)
    assert state.time_to_poll_timeout_ms(6000) == 0
    assert state.check_poll_timeout(6001)
    assert state.state == LEAVING
    body = state.heartbeat_request(6001)
    assert body is not None and body["member_epoch"] == -1 and body["member_id"] == "m-1"
    state.on_heartbeat_response(ok(epoch=-1), 6002)
    assert state.state == STALE and state.needs_release() and state.member_id == ""
    state.poll_called(7000)
    state.released()
    body = state.heartbeat_request(7000)
    assert body is not None and body["member_epoch"] == 0


def test_a_static_member_leaves_with_epoch_minus_2_and_keeps_its_name() -> None:
    state = joined(instance_id="worker-1")
    state.leave()
    body = state.heartbeat_request(10)
    assert body is not None
    assert body["member_epoch"] == -2 and body["instance_id"] == "worker-1"
    assert body["topic_partitions"] is None and body["subscribed_topic_names"] is None
    state.on_heartbeat_response(ok(epoch=-2), 11)
    assert state.state == CLOSED and state.member_id == "m-1"


def test_a_static_member_that_stops_polling_leaves_with_epoch_minus_1() -> None:
    state = joined(instance_id="worker-1", rebalance_timeout_ms=5000)
    assert state.check_poll_timeout(5001)
    body = state.heartbeat_request(5001)
    assert body is not None and body["member_epoch"] == -1, "its partitions must move on, not wait for it"
    state.on_heartbeat_response(ok(epoch=-1), 5002)
    assert state.state == STALE and state.member_id == ""


def test_a_leave_asked_while_the_join_is_out_goes_after_it_with_the_new_id() -> None:
    state = member()
    state.heartbeat_request(0)
    state.leave()
    assert state.state == LEAVING and state.heartbeat_request(0) is None
    state.on_heartbeat_response(ok(member_id="m-9"), 5)
    body = state.heartbeat_request(5)
    assert body is not None and (body["member_id"], body["member_epoch"]) == ("m-9", -1)
    state.on_heartbeat_failure(errors.NetworkExceptionError("gone"), 6)
    assert state.state == CLOSED, "a failed leave is not retried: the session timeout ends the member"


def test_a_member_that_never_joined_leaves_without_a_heartbeat() -> None:
    state = member()
    state.leave()
    assert state.state == CLOSED and state.heartbeat_request(0) is None


def test_unsubscribe_then_subscribe_while_the_leave_is_out_joins_again() -> None:
    state = joined()
    state.leave(then=UNSUBSCRIBED)
    state.heartbeat_request(0)
    state.subscribe(topic_names=["b"])
    state.on_heartbeat_response(ok(epoch=-1), 1)
    assert state.state == JOINING
    body = state.heartbeat_request(1)
    assert body is not None and body["member_epoch"] == 0 and body["subscribed_topic_names"] == ["b"]


def test_a_non_retriable_error_is_fatal_and_kept_for_poll() -> None:
    state = member()
    state.heartbeat_request(0)
    state.on_heartbeat_response(error(errors.INVALID_SESSION_TIMEOUT), 0)
    assert state.state == FATAL and isinstance(state.fatal_error, errors.InvalidSessionTimeoutError)
    assert state.time_to_next_heartbeat_ms(10**9) == float("inf")


def test_transitions_not_in_the_table_are_programmer_errors() -> None:
    state = joined()
    with pytest.raises(AssertionError):
        state.released()  # a stable member has nothing to release


def test_coordinator_errors_are_found_anywhere_in_a_response() -> None:
    assert coordinator_error({"error_code": errors.NOT_COORDINATOR}) == errors.NOT_COORDINATOR
    nested = {"topics": [{"name": "a", "partitions": [{"index": 0, "error_code": errors.COORDINATOR_NOT_AVAILABLE}]}]}
    assert coordinator_error(nested) == errors.COORDINATOR_NOT_AVAILABLE
    assert coordinator_error({"topics": [{"partitions": [{"error_code": errors.OFFSET_OUT_OF_RANGE}]}]}) == 0


# -- the heartbeat thread against a scripted coordinator -----------------------------------

class FakeCoordinator:
    """Two fake nodes: ``bootstrap`` answers FindCoordinator, ``coordinator`` the group APIs.
    ``script`` is a list of heartbeat answers (dicts), used in order; then ``steady``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.heartbeats: list[dict[str, Any]] = []
        self.finds = 0
        self.script: list[Any] = []
        self.steady = ok(interval_ms=100)
        self.coordinator = FakeBroker(self.handle_coordinator)
        self.bootstrap = FakeBroker(self.handle_bootstrap)

    def handle_bootstrap(self, header: Any, body: Any) -> Any:
        if header.api_key == ApiKey.FIND_COORDINATOR:
            with self.lock:
                self.finds += 1
            return {"error_code": 0, "error_message": None, "node_id": 1, "host": "127.0.0.1",
                    "port": self.coordinator.port}
        return {"error_code": errors.UNSUPPORTED_VERSION, "error_message": "no"}

    def handle_coordinator(self, header: Any, body: Any) -> Any:
        assert header.api_key == ApiKey.CONSUMER_GROUP_HEARTBEAT
        with self.lock:
            self.heartbeats.append(body)
            answer = self.script.pop(0) if self.script else self.steady
        if answer == "drop":
            self.coordinator.drop_connections()
            return None
        return answer

    def close(self) -> None:
        self.coordinator.close()
        self.bootstrap.close()


@pytest.fixture
def fake() -> Any:
    f = FakeCoordinator()
    yield f
    f.close()


def manager_for(fake: FakeCoordinator, state: MembershipState) -> tuple[MembershipManager, NetworkClient]:
    client = NetworkClient(f"127.0.0.1:{fake.bootstrap.port}", client_id="t", request_timeout_ms=5000,
                           retry_backoff_ms=20, reconnect_backoff_ms=10)
    coordinator = CoordinatorClient(client, "g", retry_backoff_ms=20)
    return MembershipManager(state, coordinator), client


def test_the_thread_finds_the_coordinator_joins_heartbeats_and_leaves_on_close(fake: FakeCoordinator) -> None:
    state = member(now_ms=time.monotonic() * 1000)
    state.retry_backoff_ms = 20
    fake.script = [ok(member_id="m-1", epoch=1, interval_ms=50, assignment=(A0,))]
    manager, client = manager_for(fake, state)
    try:
        assert wait_until(lambda: len(fake.heartbeats) >= 4, 10), "heartbeats every interval"
        assert fake.finds == 1
        assert fake.heartbeats[0]["member_epoch"] == 0 and fake.heartbeats[1]["member_id"] == "m-1"
        with manager.lock:
            assert state.assignment_to_reconcile() == {A0}
            state.reconciled({A0})
        manager.notify()
        assert wait_until(lambda: any(h["topic_partitions"] == wire(A0) for h in fake.heartbeats[1:]), 10)
    finally:
        manager.close()
        client.close()
    assert fake.heartbeats[-1]["member_epoch"] == -1, "close leaves the group"
    assert state.state == CLOSED


def test_not_coordinator_and_a_lost_connection_send_the_member_to_find_the_coordinator_again(
        fake: FakeCoordinator) -> None:
    state = member(now_ms=time.monotonic() * 1000)
    state.retry_backoff_ms = 20
    fake.script = [ok(interval_ms=50), error(errors.NOT_COORDINATOR), ok(interval_ms=50), "drop"]
    manager, client = manager_for(fake, state)
    try:
        assert wait_until(lambda: fake.finds >= 3 and len(fake.heartbeats) >= 6, 15)
        assert state.state == STABLE and state.member_id == "m-1", "the member stayed in the group throughout"
    finally:
        manager.close()
        client.close()


def test_the_heartbeat_thread_leaves_when_poll_is_not_called(fake: FakeCoordinator) -> None:
    state = MembershipState("g", client_id="c", session_timeout_ms=10000, rebalance_timeout_ms=300,
                            retry_backoff_ms=20, now_ms=time.monotonic() * 1000)
    state.subscribe(topic_names=["a"])
    fake.steady = ok(interval_ms=50)
    manager, client = manager_for(fake, state)
    try:
        assert wait_until(lambda: state.state == STALE, 10)
        assert fake.heartbeats[-1]["member_epoch"] == -1
    finally:
        manager.close()
        client.close()


# -- the consumer's reconciliation against a scripted one-node cluster ----------------------

def batch(base_offset: int, count: int) -> bytes:
    records = [(1000 + i, None, b"v%d" % (base_offset + i), None) for i in range(count)]
    return bytes(stamp(encode_batch(records), base_offset, 0))


class FakeCluster:
    """One fake node that is broker and coordinator for topic "a" (3 partitions, 10 records
    each). The coordinator hands out ``self.assignment`` (bumping the epoch when it changes)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.assignment: frozenset[TopicPartition] = frozenset()
        self.sent_assignment: frozenset[TopicPartition] | None = None
        self.epoch = 0
        self.committed: dict[TopicPartition, int] = {A1: 4}
        self.commits: list[dict[str, Any]] = []
        self.heartbeats: list[dict[str, Any]] = []
        self.commit_error = 0
        self.broker = FakeBroker(self.handle)

    def handle(self, header: Any, body: Any) -> Any:
        key = header.api_key
        with self.lock:
            if key == ApiKey.METADATA:
                return {"cluster_id": "c", "controller_id": 1,
                        "brokers": [{"node_id": 1, "host": "127.0.0.1", "port": self.broker.port, "rack": None}],
                        "topics": [{"error_code": 0, "name": "a", "is_internal": False, "partitions": [
                            {"error_code": 0, "partition_index": p, "leader_id": 1, "leader_epoch": 0,
                             "replica_nodes": [1], "isr_nodes": [1], "offline_replicas": []} for p in range(3)]}]}
            if key == ApiKey.FIND_COORDINATOR:
                return {"error_code": 0, "error_message": None, "node_id": 1, "host": "127.0.0.1",
                        "port": self.broker.port}
            if key == ApiKey.CONSUMER_GROUP_HEARTBEAT:
                self.heartbeats.append(body)
                if body["member_epoch"] < 0:
                    return ok(epoch=body["member_epoch"])
                assignment = None
                if self.assignment != self.sent_assignment:
                    self.epoch += 1
                    self.sent_assignment = self.assignment
                    assignment = self.assignment
                return ok(epoch=max(self.epoch, 1), interval_ms=50, assignment=assignment)
            if key == ApiKey.OFFSET_FETCH:
                topics = body["topics"] or [{"name": "a", "partitions": [0, 1, 2]}]
                return {"error_code": 0, "error_message": None, "topics": [
                    {"name": t["name"], "partitions": [
                        {"index": p, "committed_offset": self.committed.get(TopicPartition(t["name"], p), -1),
                         "committed_leader_epoch": -1, "committed_metadata": None, "error_code": 0}
                        for p in t["partitions"]]} for t in topics]}
            if key == ApiKey.OFFSET_COMMIT:
                self.commits.append(body)
                for t in body["topics"]:
                    for p in t["partitions"]:
                        if not self.commit_error:
                            self.committed[TopicPartition(t["name"], p["index"])] = p["committed_offset"]
                return {"topics": [{"name": t["name"], "partitions": [
                    {"index": p["index"], "error_code": self.commit_error, "error_message": None}
                    for p in t["partitions"]]} for t in body["topics"]]}
            if key == ApiKey.LIST_OFFSETS:
                return {"topics": [{"name": t["name"], "partitions": [
                    {"index": p["index"], "error_code": 0, "timestamp": -1, "leader_epoch": 0,
                     "offset": 0 if p["timestamp"] == -2 else 10} for p in t["partitions"]]} for t in body["topics"]]}
            if key == ApiKey.FETCH:
                parts = []
                for t in body["topics"]:
                    for p in t["partitions"]:
                        offset = p["fetch_offset"]
                        records = batch(offset, 10 - offset) if offset < 10 else b""
                        parts.append((t["name"], {"index": p["index"], "error_code": 0, "high_watermark": 10,
                                                  "log_start_offset": 0, "records": records}))
                return {"error_code": 0, "topics": [{"name": "a", "partitions": [p for _, p in parts]}]}
        return {"error_code": errors.UNSUPPORTED_VERSION, "error_message": "no"}

    def commits_of(self, tp: TopicPartition) -> list[int]:
        with self.lock:
            return [p["committed_offset"] for c in self.commits for t in c["topics"] if t["name"] == tp.topic
                    for p in t["partitions"] if p["index"] == tp.partition]

    def owned_reports(self) -> list[list[dict[str, Any]]]:
        with self.lock:
            return [h["topic_partitions"] for h in self.heartbeats if h["topic_partitions"] is not None]


class Recorder(ConsumerRebalanceListener):
    def __init__(self) -> None:
        self.events: list[tuple[str, set[TopicPartition]]] = []
        self.consumer: Consumer | None = None
        self.commit_in_revoke = False

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.events.append(("revoked", revoked))
        if self.commit_in_revoke and self.consumer is not None:
            self.consumer.commit()

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.events.append(("assigned", assigned))

    def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        self.events.append(("lost", lost))


@pytest.fixture
def cluster() -> Any:
    c = FakeCluster()
    yield c
    c.broker.close()


def group_consumer(cluster: FakeCluster, listener: ConsumerRebalanceListener, **kwargs: Any) -> Consumer:
    consumer = Consumer(bootstrap_servers=f"127.0.0.1:{cluster.broker.port}", group_id="g", retry_backoff_ms=20,
                        fetch_max_wait_ms=10, request_timeout_ms=5000, **kwargs)
    consumer.subscribe(["a"], listener=listener)
    return consumer


def poll_until(consumer: Consumer, cond: Any, timeout_s: float = 10) -> dict[TopicPartition, list[Any]]:
    got: dict[TopicPartition, list[Any]] = {}

    def step() -> bool:
        for tp, records in consumer.poll(timeout_ms=50).items():
            got.setdefault(tp, []).extend(records)
        return bool(cond(got))
    assert wait_until(step, timeout_s)
    return got


def test_reconciliation_revokes_with_a_commit_first_then_assigns_from_committed_offsets(cluster: FakeCluster) -> None:
    listener = Recorder()
    cluster.assignment = frozenset({A0, A1})
    consumer = group_consumer(cluster, listener, auto_commit_interval_ms=60000)
    try:
        got = poll_until(consumer, lambda g: len(g.get(A0, [])) == 10 and len(g.get(A1, [])) == 6)
        assert [r.offset for r in got[A1]] == list(range(4, 10)), "A1 starts at its committed offset"
        assert [r.offset for r in got[A0]] == list(range(10)), "A0 has no commit: auto_offset_reset earliest"
        assert listener.events == [("assigned", {A0, A1})]
        assert wait_until(lambda: wire(A0, A1) in cluster.owned_reports(), 5), "the owned set is reported"

        with cluster.lock:
            cluster.assignment = frozenset({A1, A2})
        poll_until(consumer, lambda g: consumer.assignment() == {A1, A2})
        assert listener.events[1:] == [("revoked", {A0}), ("assigned", {A2})]
        assert cluster.commits_of(A0) == [10], "the auto commit commits a revoked partition before the revocation"
        assert cluster.commits_of(A1) == [], "only the revoked partition is committed at revocation"
        assert wait_until(lambda: wire(A1, A2) in cluster.owned_reports(), 5)
        owned = cluster.owned_reports()
        assert owned.index(wire(A1)) < owned.index(wire(A1, A2)), "the revocation is reported before the addition"

        consumer.commit()
        assert cluster.commits_of(A1) == [10], "commit() sends the positions of what poll returned"
        assert consumer.committed(A1) == 10
        assert consumer.committed({A0, B0}) == {A0: OffsetAndMetadata(10, None, -1), B0: None}
        assert all(c["member_id"] == "m-1" and c["member_epoch"] == 2 for c in cluster.commits)
    finally:
        consumer.close()
    assert cluster.heartbeats[-1]["member_epoch"] == -1, "close leaves the group"
    assert listener.events[-1] == ("revoked", {A1, A2}), "close revokes what the member owns"


def test_a_commit_inside_on_partitions_revoked_commits_the_revoked_positions(cluster: FakeCluster) -> None:
    listener = Recorder()
    listener.commit_in_revoke = True
    cluster.assignment = frozenset({A0})
    consumer = group_consumer(cluster, listener, enable_auto_commit=False)
    listener.consumer = consumer
    try:
        poll_until(consumer, lambda g: len(g.get(A0, [])) == 10)
        assert cluster.commits_of(A0) == []
        with cluster.lock:
            cluster.assignment = frozenset()
        poll_until(consumer, lambda g: consumer.assignment() == set())
        assert cluster.commits_of(A0) == [10]
    finally:
        consumer.close()


def test_a_fenced_commit_raises_commit_failed(cluster: FakeCluster) -> None:
    cluster.assignment = frozenset({A0})
    consumer = group_consumer(cluster, Recorder(), enable_auto_commit=False)
    try:
        poll_until(consumer, lambda g: len(g.get(A0, [])) == 10)
        cluster.commit_error = errors.UNKNOWN_MEMBER_ID
        with pytest.raises(errors.CommitFailedError, match="fenced"):
            consumer.commit()
        results: list[Any] = []
        consumer.commit_async(callback=lambda offsets, exc: results.append((offsets, exc)))
        assert wait_until(lambda: bool(consumer.poll(timeout_ms=20) or True) and bool(results), 5)
        assert isinstance(results[0][1], errors.CommitFailedError) and results[0][0] == {A0: OffsetAndMetadata(10)}
    finally:
        consumer.close()


def test_auto_commit_commits_only_what_poll_returned(cluster: FakeCluster) -> None:
    cluster.assignment = frozenset({A0})
    consumer = group_consumer(cluster, Recorder(), auto_commit_interval_ms=1, max_poll_records=3)
    try:
        poll_until(consumer, lambda g: len(g.get(A0, [])) >= 3)
        assert consumer.position(A0) < 10, "records are still buffered"
        got = poll_until(consumer, lambda g: bool(cluster.commits_of(A0)))
        returned = 3 + len(got.get(A0, []))
        assert all(offset <= returned for offset in cluster.commits_of(A0)), "never past what poll returned"
        assert all(c["member_epoch"] >= 1 for c in cluster.commits)
    finally:
        consumer.close()


def test_a_fenced_member_loses_its_partitions_without_commit_and_rejoins(cluster: FakeCluster) -> None:
    listener = Recorder()
    cluster.assignment = frozenset({A0})
    consumer = group_consumer(cluster, listener)
    try:
        poll_until(consumer, lambda g: len(g.get(A0, [])) == 10)
        commits_before = len(cluster.commits)
        original = cluster.handle

        def fence_once(header: Any, body: Any) -> Any:
            if header.api_key == ApiKey.CONSUMER_GROUP_HEARTBEAT and body["member_epoch"] > 0:
                cluster.broker.handler = original
                with cluster.lock:
                    cluster.sent_assignment = None  # the rejoin gets the assignment again
                return error(errors.FENCED_MEMBER_EPOCH)
            return original(header, body)
        cluster.broker.handler = fence_once
        poll_until(consumer, lambda g: ("lost", {A0}) in listener.events and consumer.assignment() == {A0})
        assert listener.events == [("assigned", {A0}), ("lost", {A0}), ("assigned", {A0})]
        assert len(cluster.commits) == commits_before, "lost partitions are not committed"
        joins = [h for h in cluster.heartbeats if h["member_epoch"] == 0]
        assert len(joins) == 2 and joins[1]["topic_partitions"] == []
    finally:
        consumer.close()


def test_commit_without_a_group_is_a_clear_error_and_assign_commits_as_a_non_member(cluster: FakeCluster) -> None:
    bootstrap = f"127.0.0.1:{cluster.broker.port}"
    with Consumer(bootstrap_servers=bootstrap) as plain:
        with pytest.raises(errors.IllegalStateError, match="group_id"):
            plain.commit({A0: 1})
    with Consumer(bootstrap_servers=bootstrap, group_id="g", retry_backoff_ms=20) as consumer:
        consumer.assign([A0])
        consumer.commit({A0: 3})
        assert consumer.committed(A0) == 3
    assert cluster.commits[0]["member_id"] == "" and cluster.commits[0]["member_epoch"] == -1
    assert not cluster.heartbeats, "assign() makes no group membership"


# -- a regression found by the group demonstrations (tests/cluster/test_groups_cluster.py) ---

HEARTBEAT_ANSWER_DELAY_S = 0.3  # the scripted coordinator's answer that carries the new epoch is this late


@pytest.mark.timeout(30)
def test_a_commit_refused_as_stale_waits_for_the_new_epoch_instead_of_failing() -> None:
    """The coordinator moves a member to a new epoch in answer to its heartbeat; a commit the
    member sends before that answer arrives is refused with STALE_MEMBER_EPOCH. The member is
    not fenced: ``commit()`` must send again with the new epoch (it raised CommitFailedError,
    seen once in a few runs of the coordinator failover test in tests/cluster/test_groups_cluster.py)."""
    cluster = FakeCluster()
    original = cluster.handle

    def moved_on_before_the_answer(header: Any, body: Any) -> Any:
        if header.api_key == ApiKey.OFFSET_COMMIT:
            with cluster.lock:
                if body["member_epoch"] < 2:
                    cluster.commits.append(body)
                    cluster.epoch = 2  # the coordinator's next answers carry epoch 2
                    return {"topics": [{"name": t["name"], "partitions": [
                        {"index": p["index"], "error_code": errors.STALE_MEMBER_EPOCH, "error_message": None}
                        for p in t["partitions"]]} for t in body["topics"]]}
        if header.api_key == ApiKey.CONSUMER_GROUP_HEARTBEAT and cluster.epoch >= 2:
            time.sleep(HEARTBEAT_ANSWER_DELAY_S)  # the answer with the new epoch is on its way
        return original(header, body)

    cluster.broker.handler = moved_on_before_the_answer
    cluster.assignment = frozenset({A0})
    consumer = group_consumer(cluster, Recorder(), enable_auto_commit=False)
    try:
        poll_until(consumer, lambda got: len(got.get(A0, [])) == 10)
        consumer.commit()
        assert [c["member_epoch"] for c in cluster.commits] == [1, 2], "refused at epoch 1, sent again at 2"
        assert cluster.committed[A0] == 10
    finally:
        consumer.close()
        cluster.broker.close()
