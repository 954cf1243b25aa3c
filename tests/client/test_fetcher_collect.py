"""The record path of ``poll``: ``Fetcher.collect`` hands out ``PartitionRecords`` over batches
decoded to columns without the subscription lock and with the garbage collector paused, and
moves the position past exactly what it hands out; the first position lookup does not back
off for metadata it has not loaded yet. No threads or sockets."""

from __future__ import annotations

import gc
from typing import Any

import pytest

from cluster.client import consumer as consumer_module
from cluster.client import fetcher as fetcher_module
from cluster.client.connection import ResponseFuture
from cluster.client.fetcher import Fetcher
from cluster.client.network import NetworkClient
from cluster.client.structs import ConsumerRecord, PartitionRecords, TopicPartition
from cluster.client.subscription import SubscriptionState
from storage.batch import encode_batch, encode_kafka_v2_batch, stamp

TP = TopicPartition("t", 0)


def batch(base_offset: int, count: int) -> bytes:
    records = [(1000 + i, None, b"v%d" % (base_offset + i), None) for i in range(count)]
    return bytes(stamp(encode_batch(records), base_offset, 0))


def make() -> tuple[Fetcher, SubscriptionState]:
    subs = SubscriptionState("earliest")
    fetcher = Fetcher(NetworkClient("127.0.0.1:1", client_id="t"), subs, fetch_min_bytes=1, fetch_max_wait_ms=10,
                      fetch_max_bytes=1 << 20, max_partition_fetch_bytes=1 << 20, retry_backoff_ms=50)
    subs.assign([TP])
    subs.seek(TP, 0)
    return fetcher, subs


def respond(fetcher: Fetcher, subs: SubscriptionState, offset: int, records: bytes) -> None:
    future = ResponseFuture()
    future.success({"error_code": 0, "topics": [{"name": "t", "partitions": [{
        "index": 0, "error_code": 0, "high_watermark": 100, "log_start_offset": 0, "records": records}]}]})
    fetcher._on_response(1, [(TP, offset, subs.assignment[TP].generation)], future)


def test_records_are_consumer_records_and_a_batch_handed_out_whole_stays_the_callers() -> None:
    fetcher, subs = make()
    respond(fetcher, subs, 0, batch(0, 4) + batch(4, 4))
    first = fetcher.collect(6)[TP]  # the first batch whole, then part of the second
    assert all(type(r) is ConsumerRecord for r in first)
    assert first[0] == ConsumerRecord("t", 0, 0, 1000, None, b"v0", ())
    assert [r.offset for r in first] == [0, 1, 2, 3, 4, 5]
    kept = list(first)
    assert [r.offset for r in fetcher.collect(10)[TP]] == [6, 7]
    assert first == kept, "a later collect must not add to a list already returned"
    assert subs.position(TP) == 8
    assert fetcher.collect(10) == {}


@pytest.mark.parametrize("enabled", [True, False])
def test_decoding_runs_with_the_collector_paused_and_its_state_is_restored(monkeypatch, enabled: bool) -> None:
    fetcher, subs = make()
    respond(fetcher, subs, 0, batch(0, 3))
    seen: list[bool] = []
    real = fetcher_module.decode_columns

    def spy(*args: Any) -> Any:
        seen.append(gc.isenabled())
        return real(*args)

    monkeypatch.setattr(fetcher_module, "decode_columns", spy)
    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        assert len(fetcher.collect(10)[TP]) == 3
        assert gc.isenabled() is enabled
    finally:
        gc.enable() if was else gc.disable()
    assert seen == [False]


def test_decoding_releases_the_lock_and_a_seek_meanwhile_wins(monkeypatch) -> None:
    fetcher, subs = make()
    respond(fetcher, subs, 0, batch(0, 3) + batch(3, 3))
    real = fetcher_module.decode_columns
    calls = 0

    def seek_while_decoding(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        assert not subs.lock.locked(), "the fetcher thread must be able to buffer meanwhile"
        if calls == 2:
            subs.seek(TP, 1)  # what another application thread may do during poll
        return real(*args)

    monkeypatch.setattr(fetcher_module, "decode_columns", seek_while_decoding)
    got = fetcher.collect(10)
    assert [r.offset for r in got[TP]] == [0, 1, 2], "what was taken before the seek is returned"
    assert subs.position(TP) == 1, "the seek's position is not overwritten"
    assert fetcher.collect(10) == {}, "data buffered before the seek is dropped"


class _Metadata:
    def __init__(self) -> None:
        self.loaded = False

    def leader_for(self, topic: str, partition: int) -> int:
        return 1 if self.loaded else -1

    def request_update(self) -> None:
        pass


class _Client:
    """Knows no leader until the first metadata refresh, then answers ListOffsets."""

    def __init__(self, error_code: int = 0) -> None:
        self.metadata = _Metadata()
        self.error_codes = [error_code, 0]

    def refresh_metadata(self, topics: Any) -> None:
        self.metadata.loaded = True

    def request_node(self, node: int, api_key: int, body: dict) -> dict:
        code = self.error_codes.pop(0)
        return {"topics": [{"name": "t", "partitions": [
            {"index": 0, "error_code": code, "offset": -1 if code else 42, "timestamp": -1}]}]}


def test_the_first_position_lookup_does_not_back_off_for_metadata_not_loaded_yet(monkeypatch) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(consumer_module.time, "sleep", sleeps.append)
    found = consumer_module.list_offsets(_Client(), {TP: -2}, timeout_ms=5000, retry_backoff_ms=100)
    assert found == {TP: (42, -1)}
    assert sleeps == []


def test_a_retriable_error_from_the_node_still_backs_off(monkeypatch) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(consumer_module.time, "sleep", sleeps.append)
    client = _Client(error_code=6)  # NOT_LEADER_OR_FOLLOWER
    client.metadata.loaded = True
    found = consumer_module.list_offsets(client, {TP: -2}, timeout_ms=5000, retry_backoff_ms=100)
    assert found == {TP: (42, -1)}
    assert sleeps == [0.1]


def test_records_below_the_position_are_left_out() -> None:
    fetcher, subs = make()
    subs.seek(TP, 2)
    respond(fetcher, subs, 2, batch(0, 5))  # the node answers with the whole batch holding offset 2
    got = fetcher.collect(10)[TP]
    assert isinstance(got, PartitionRecords)
    assert [r.offset for r in got] == [2, 3, 4]
    assert got[0] == ConsumerRecord("t", 0, 2, 1002, None, b"v2", ())
    assert subs.position(TP) == 5


def test_a_batch_taken_in_part_continues_at_the_next_poll_and_earlier_records_stay_as_returned() -> None:
    fetcher, subs = make()
    respond(fetcher, subs, 0, batch(0, 10))
    first = fetcher.collect(3)[TP]
    assert subs.position(TP) == 3
    second = fetcher.collect(4)[TP]
    assert subs.position(TP) == 7
    third = fetcher.collect(100)[TP]
    assert subs.position(TP) == 10
    assert [r.offset for r in first] == [0, 1, 2] and len(first) == 3
    assert [r.offset for r in second] == [3, 4, 5, 6]
    assert [r.value for r in third] == [b"v7", b"v8", b"v9"] and third[-1].offset == 9
    assert fetcher.collect(10) == {}


def test_a_poll_that_spans_batches_moves_the_position_past_exactly_what_it_returned() -> None:
    fetcher, subs = make()
    respond(fetcher, subs, 0, batch(0, 4) + batch(4, 4) + batch(8, 4))
    got = fetcher.collect(9)[TP]
    assert [r.offset for r in got] == list(range(9))
    assert got[3].offset == 3 and got[4].offset == 4 and got[-1].offset == 8
    assert subs.position(TP) == 9
    assert [r.offset for r in fetcher.collect(9)[TP]] == [9, 10, 11]


def test_kafka_v2_batches_with_headers_come_out_as_consumer_records() -> None:
    fetcher, subs = make()
    rows = [(7, b"k", b"a", [("h", b"x")]), (8, None, b"b", None), (9, None, None, [("n", None)])]
    respond(fetcher, subs, 0, bytes(stamp(encode_kafka_v2_batch(rows), 0, 0)))
    got = fetcher.collect(2)[TP]
    assert got == [ConsumerRecord("t", 0, 0, 7, b"k", b"a", (("h", b"x"),)), ConsumerRecord("t", 0, 1, 8, None, b"b", ())]
    assert fetcher.collect(2)[TP] == [ConsumerRecord("t", 0, 2, 9, None, None, (("n", None),))]
    assert subs.position(TP) == 3
