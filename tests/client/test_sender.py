"""The producer's retry and failure paths against a scripted broker (no node): retriable
errors are retried in order after a metadata refresh, others fail the records, batches
that cannot be sent expire, and acks=0 gets no response."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from cluster.client import Producer, errors
from cluster.launcher import wait_until
from cluster.protocol import framing
from cluster.protocol.api import ApiKey
from storage.batch import decode_batch, split_batches
from tests.client.fake_broker import FakeBroker

pytestmark = pytest.mark.timeout(60)


class ScriptedCluster:
    """One broker, topic ``t`` with one partition; produce results come from ``errors_to_return``."""

    def __init__(self, produce_errors: list[int] | None = None, leader: int = 1) -> None:
        self.produce_errors = list(produce_errors or [])
        self.leader = leader
        self.metadata_requests = 0
        self.produced: list[list[bytes]] = []  # values of each accepted batch, in order
        self.acks_seen: list[int] = []
        self.lock = threading.Lock()
        self.broker = FakeBroker(self.handle)

    def handle(self, header: framing.RequestHeader, body: dict) -> Any:
        with self.lock:
            if header.api_key == ApiKey.METADATA:
                self.metadata_requests += 1
                return {"cluster_id": "c", "controller_id": 1,
                        "brokers": [{"node_id": 1, "host": "127.0.0.1", "port": self.broker.port, "rack": None}],
                        "topics": [{"error_code": 0, "name": "t", "is_internal": False, "partitions": [
                            {"error_code": 0, "partition_index": 0, "leader_id": self.leader, "leader_epoch": 0,
                             "replica_nodes": [1], "isr_nodes": [1], "offline_replicas": []}]}]}
            assert header.api_key == ApiKey.PRODUCE
            self.acks_seen.append(body["acks"])
            results = []
            for topic in body["topics"]:
                parts = []
                for p in topic["partitions"]:
                    code = self.produce_errors.pop(0) if self.produce_errors else 0
                    base = sum(len(b) for b in self.produced)
                    if code == 0:
                        self.produced.append([r.value for b in split_batches(p["records"]) for r in decode_batch(b)])
                    parts.append({"index": p["index"], "error_code": code, "error_message": None if not code else "scripted",
                                  "base_offset": base if code == 0 else -1, "log_append_time_ms": -1,
                                  "log_start_offset": 0})
                results.append({"name": topic["name"], "partitions": parts})
            if body["acks"] == 0:
                return None
            return {"topics": results}

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.broker.port}"


def test_retriable_errors_are_retried_in_order_after_a_metadata_refresh() -> None:
    cluster = ScriptedCluster([errors.NOT_LEADER_OR_FOLLOWER, errors.NOT_LEADER_OR_FOLLOWER])
    try:
        with Producer(cluster.bootstrap, linger_ms=0, retry_backoff_ms=10, batch_size=1000) as producer:
            futures = [producer.send("t", value=b"%03d" % i) for i in range(60)]
            producer.flush(timeout=30)
        assert [f.get(timeout=1).offset for f in futures] == list(range(60))
        values = [v for batch in cluster.produced for v in batch]
        assert values == [b"%03d" % i for i in range(60)], "a retried batch was overtaken or lost"
        assert cluster.metadata_requests >= 2, "NOT_LEADER_OR_FOLLOWER must refresh the metadata"
    finally:
        cluster.broker.close()


def test_non_retriable_errors_fail_the_records_and_retries_zero_fails_fast() -> None:
    cluster = ScriptedCluster([errors.CORRUPT_MESSAGE, errors.MESSAGE_TOO_LARGE])
    try:
        with Producer(cluster.bootstrap, linger_ms=0, retries=0) as producer:
            first = producer.send("t", value=b"a")
            with pytest.raises(errors.CorruptMessageError):  # retriable, but retries=0
                first.get(timeout=30)
            second = producer.send("t", value=b"b")
            with pytest.raises(errors.MessageTooLargeError, match="MESSAGE_TOO_LARGE"):
                second.get(timeout=30)
            seen: list = []
            producer.send("t", value=b"c").add_errback(seen.append).get(timeout=30)
            assert seen == []
    finally:
        cluster.broker.close()


def test_stale_leadership_refreshes_the_metadata_even_without_retries() -> None:
    cluster = ScriptedCluster([errors.NONE, errors.NOT_LEADER_OR_FOLLOWER])
    try:
        with Producer(cluster.bootstrap, linger_ms=0, retries=0) as producer:
            producer.send("t", value=b"a").get(timeout=30)
            before = cluster.metadata_requests
            with pytest.raises(errors.NotLeaderOrFollowerError):
                producer.send("t", value=b"b").get(timeout=30)
            wait_until(lambda: cluster.metadata_requests > before or None, 10,
                       message="a metadata refresh after NOT_LEADER_OR_FOLLOWER")
    finally:
        cluster.broker.close()


def test_batches_without_a_leader_expire_after_the_delivery_timeout() -> None:
    cluster = ScriptedCluster(leader=-1)
    try:
        with Producer(cluster.bootstrap, linger_ms=0, delivery_timeout_ms=400, request_timeout_ms=300,
                      retry_backoff_ms=20) as producer:
            future = producer.send("t", value=b"x")
            with pytest.raises(errors.KafkaTimeoutError, match="expiring 1 record"):
                future.get(timeout=30)
        assert cluster.produced == []
    finally:
        cluster.broker.close()


def test_acks_zero_completes_without_a_response() -> None:
    cluster = ScriptedCluster()
    try:
        with Producer(cluster.bootstrap, acks=0, linger_ms=0) as producer:
            futures = [producer.send("t", value=b"%d" % i) for i in range(10)]
            producer.flush(timeout=30)
            assert all(f.get(timeout=1).offset == -1 for f in futures)
        # acks=0 completes once the bytes are written; the broker reads them when it can
        wait_until(lambda: cluster.acks_seen, 10, message="the broker to read the produce request")
        assert set(cluster.acks_seen) == {0}
    finally:
        cluster.broker.close()


def test_close_with_a_timeout_fails_what_cannot_be_delivered() -> None:
    cluster = ScriptedCluster(leader=-1)
    try:
        producer = Producer(cluster.bootstrap, linger_ms=0, retry_backoff_ms=20)
        future = producer.send("t", value=b"stuck")
        producer.close(timeout=0.3)
        with pytest.raises(errors.KraftError):
            future.get(timeout=10)
    finally:
        cluster.broker.close()


class _StubMetadata:
    def leader_for(self, topic: str, partition: int) -> int:
        return 1

    def request_update(self) -> None:
        pass

    def refresh_due_in_ms(self, now_ms: float) -> float:
        return 1e9


class _StubClient:
    """Records Produce requests; the test completes their futures from its own threads."""

    def __init__(self) -> None:
        self.metadata = _StubMetadata()
        self.requests: list[tuple[dict, Any]] = []

    def maybe_refresh_metadata(self, topics: Any) -> bool:
        return False

    def send(self, node: int, api_key: int, body: dict, expect_response: bool = True) -> Any:
        from cluster.client.connection import ResponseFuture
        future = ResponseFuture()
        self.requests.append((body, future))
        return future


def _stub_sender(records: int, *, retries: int = 3, retry_backoff_ms: int = 10, request_bytes_max: int = 0):
    """A sender over a stub client (this thread plays the sender thread by calling
    ``_run_once``), topic ``t`` with one partition, and the futures of ``records`` records
    of 60 estimated bytes each in 100-byte batches: one record per batch."""
    from cluster.client.accumulator import RecordAccumulator
    from cluster.client.sender import Sender

    acc = RecordAccumulator(batch_size=100, linger_ms=0, buffer_memory=1 << 20, delivery_timeout_ms=60_000,
                            retry_backoff_ms=retry_backoff_ms, request_bytes_max=request_bytes_max)
    acc.set_partition_count("t", 1)
    client = _StubClient()
    sender = Sender(client, acc, acks=1, retries=retries, request_timeout_ms=30_000, max_in_flight=5,  # type: ignore[arg-type]
                    topics=lambda: {"t"})
    futures = [acc.append("t", 0, None, (0, None, b"v%d" % i, None), 60, 1.0) for i in range(records)]
    return client, sender, futures


def _answer(client: _StubClient, request: int, code: int, base: int = -1) -> None:
    """Complete a request's future from another thread, as a connection reader does."""
    reply = {"topics": [{"name": "t", "partitions": [
        {"index": 0, "error_code": code, "error_message": "scripted" if code else None, "base_offset": base,
         "log_append_time_ms": -1}]}]}
    reader = threading.Thread(target=client.requests[request][1].success, args=(reply,))
    reader.start()
    reader.join(timeout=10)


def _values_of(client: _StubClient, request: int) -> list[bytes]:
    (part,), = [t["partitions"] for t in client.requests[request][0]["topics"]]
    return [r.value for b in split_batches(part["records"]) for r in decode_batch(b)]


def test_the_thread_that_reads_a_response_sends_what_it_freed() -> None:
    """A response frees its partition and the reader sends the next batch at once, without
    waking the sender thread (whose wake-up would wait for the GIL)."""
    client, sender, futures = _stub_sender(3)
    assert sender._run_once()  # the sender thread is never started: this thread plays it once
    assert len(client.requests) == 1, "one batch per partition in flight"

    for i in range(3):
        _answer(client, i, 0, base=i)
        assert futures[i].get(timeout=1).offset == i
        assert len(client.requests) == min(i + 2, 3), "the reader sent the next batch itself"
    assert [_values_of(client, i) for i in range(3)] == [[b"v0"], [b"v1"], [b"v2"]]


def test_queued_batches_of_a_partition_travel_in_one_request_and_keep_their_order() -> None:
    """The batches queued behind a partition's head go in the same request, up to the request
    limit; each gets its offsets from the first one's base offset, and a retry resends them
    together, in the same order."""
    # One record per batch, four batches fit in 250 bytes.
    client, sender, futures = _stub_sender(6, retry_backoff_ms=0, request_bytes_max=250)
    assert sender._run_once()
    assert len(client.requests) == 1 and _values_of(client, 0) == [b"v0", b"v1", b"v2", b"v3"]
    client.requests[0][1].success({"topics": [{"name": "t", "partitions": [
        {"index": 0, "error_code": errors.NOT_LEADER_OR_FOLLOWER, "error_message": "moved", "base_offset": -1}]}]})
    wait_until(lambda: sender._run_once() and len(client.requests) == 2, 10)
    assert _values_of(client, 1) == [b"v0", b"v1", b"v2", b"v3"], "a retry keeps the batches together and in order"
    assert not futures[0].done()

    _answer(client, 1, 0, base=10)
    assert [f.get(timeout=1).offset for f in futures[:4]] == [10, 11, 12, 13]
    assert len(client.requests) == 3 and _values_of(client, 2) == [b"v4", b"v5"], "the rest went next, together"


def test_produce_without_futures_delivers_in_order_and_reports_failures() -> None:
    """``produce`` (no future): records land in order, ``on_delivery`` gets (None, metadata)
    or (error, None), and a failure without a callback is counted in the metrics."""
    cluster = ScriptedCluster([errors.NONE, errors.MESSAGE_TOO_LARGE, errors.MESSAGE_TOO_LARGE])
    try:
        with Producer(cluster.bootstrap, linger_ms=0, retries=0) as producer:
            for i in range(50):
                producer.produce("t", b"%02d" % i)
            producer.flush(timeout=30)
            assert [v for batch in cluster.produced for v in batch] == [b"%02d" % i for i in range(50)]
            assert producer.metrics()["failed_records"] == 0

            reports: list = []
            producer.produce("t", b"x", key=b"k", on_delivery=lambda error, md: reports.append((error, md)))
            producer.flush(timeout=30)
            (error, metadata), = reports
            assert isinstance(error, errors.MessageTooLargeError) and metadata is None
            assert producer.metrics()["failed_records"] == 1, "a failure is counted with a callback too"

            producer.produce("t", b"lost")  # fails with no callback: only the count tells
            producer.flush(timeout=30)
            assert producer.metrics()["failed_records"] == 2

            producer.produce("t", b"ok", on_delivery=lambda error, md: reports.append((error, md)))
            producer.flush(timeout=30)
            error, metadata = reports[-1]
            assert error is None and metadata.offset == 50 and metadata.topic == "t"
    finally:
        cluster.broker.close()


def test_a_refused_shared_record_set_is_resent_batch_by_batch() -> None:
    """A non-retriable refusal of a record set several batches shared (one of them too large)
    does not fail the others: each is sent again by itself and gets its own answer."""
    client, sender, futures = _stub_sender(3, retries=0, retry_backoff_ms=0, request_bytes_max=250)
    assert sender._run_once()
    assert _values_of(client, 0) == [b"v0", b"v1", b"v2"]
    _answer(client, 0, errors.MESSAGE_TOO_LARGE)
    wait_until(lambda: sender._run_once() and len(client.requests) == 2, 10)
    assert _values_of(client, 1) == [b"v0"], "each batch goes by itself now"
    _answer(client, 1, 0, base=7)
    assert len(client.requests) == 3 and _values_of(client, 2) == [b"v1"]
    _answer(client, 2, errors.MESSAGE_TOO_LARGE)
    assert len(client.requests) == 4 and _values_of(client, 3) == [b"v2"]
    _answer(client, 3, 0, base=8)
    assert futures[0].get(timeout=1).offset == 7 and futures[2].get(timeout=1).offset == 8
    with pytest.raises(errors.MessageTooLargeError):
        futures[1].get(timeout=1)


def test_a_batch_still_refused_as_one_record_per_wire_batch_goes_record_by_record() -> None:
    """A batch refused as MESSAGE_TOO_LARGE even when cut into one wire batch per record is
    sent one record per request: only the record too large by itself fails, the others get
    their offsets, in order, and the next record is no retry (no backoff)."""
    from cluster.client.accumulator import RecordAccumulator
    from cluster.client.sender import Sender

    acc = RecordAccumulator(batch_size=1000, linger_ms=0, buffer_memory=1 << 20, delivery_timeout_ms=60_000,
                            retry_backoff_ms=0, request_bytes_max=0)
    acc.set_partition_count("t", 1)
    client = _StubClient()
    sender = Sender(client, acc, acks=1, retries=0, request_timeout_ms=30_000, max_in_flight=5,  # type: ignore[arg-type]
                    topics=lambda: {"t"})
    futures = [acc.append("t", 0, None, (0, None, b"v%d" % i, None), 60, 1.0) for i in range(3)]
    assert sender._run_once()
    for request in range(3):  # 1, then 2, then 3 wire batches in one record set: all refused
        assert _values_of(client, request) == [b"v0", b"v1", b"v2"]
        _answer(client, request, errors.MESSAGE_TOO_LARGE)
        wait_until(lambda: sender._run_once() and len(client.requests) == request + 2, 10)
    acc.retry_backoff_s = 60.0  # from here a backoff would stall the test
    assert _values_of(client, 3) == [b"v0"]
    _answer(client, 3, 0, base=10)
    assert len(client.requests) == 5 and _values_of(client, 4) == [b"v1"]
    _answer(client, 4, errors.MESSAGE_TOO_LARGE)
    assert len(client.requests) == 6 and _values_of(client, 5) == [b"v2"]
    assert not futures[0].done(), "the batch completes once every record has its outcome"
    client.requests[5][1].success({"topics": [{"name": "t", "partitions": [  # a LogAppendTime topic
        {"index": 0, "error_code": 0, "error_message": None, "base_offset": 11, "log_append_time_ms": 777}]}]})
    assert futures[0].get(timeout=1).offset == 10 and futures[2].get(timeout=1).offset == 11
    assert futures[0].get().timestamp == 0 and futures[2].get().timestamp == 777, "each record's own time"
    with pytest.raises(errors.MessageTooLargeError):
        futures[1].get(timeout=1)
    assert futures[0].succeeded() and futures[1].failed() and futures[2].exception() is None
    assert sender.failed_records == 1
