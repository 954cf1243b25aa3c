"""The fetcher's handling of responses and ``collect``, without threads or sockets: batches
are built with the real codec, responses are fed to it as a connection would."""

from __future__ import annotations

from typing import Any

import pytest

from cluster.client import errors
from cluster.client.connection import ResponseFuture
from cluster.client.fetcher import Fetcher
from cluster.client.network import NetworkClient
from cluster.client.structs import TopicPartition
from cluster.client.subscription import SubscriptionState
from storage.batch import encode_batch, stamp

TP = TopicPartition("t", 0)


def batch(base_offset: int, count: int, base_ts: int = 1000) -> bytes:
    records = [(base_ts + i, None, b"v%d" % (base_offset + i), [("h", b"x")]) for i in range(count)]
    return bytes(stamp(encode_batch(records), base_offset, 0))


def make(reset: str = "earliest") -> tuple[Fetcher, SubscriptionState]:
    subs = SubscriptionState(reset)
    client = NetworkClient("127.0.0.1:1", client_id="t")
    fetcher = Fetcher(client, subs, fetch_min_bytes=1, fetch_max_wait_ms=10, fetch_max_bytes=1 << 20,
                      max_partition_fetch_bytes=1 << 20, retry_backoff_ms=50)
    subs.assign([TP])
    return fetcher, subs


def respond(fetcher: Fetcher, offset: int, generation: int, *, records: bytes = b"", error: int = 0,
            hw: int = 100) -> None:
    future = ResponseFuture()
    future.success({"error_code": 0, "topics": [{"name": "t", "partitions": [{
        "index": 0, "error_code": error, "high_watermark": hw, "log_start_offset": 0, "records": records}]}]})
    fetcher._on_response(1, [(TP, offset, generation)], future)


def state(subs: SubscriptionState) -> Any:
    return subs.assignment[TP]


def test_records_below_the_position_are_skipped_and_positions_follow_returned_records() -> None:
    fetcher, subs = make()
    subs.seek(TP, 3)
    respond(fetcher, 3, state(subs).generation, records=batch(0, 5) + batch(5, 5))
    assert state(subs).fetch_position == 10, "the next fetch starts after the last batch"
    first = fetcher.collect(4)[TP]
    assert [r.offset for r in first] == [3, 4, 5, 6]
    assert subs.position(TP) == 7
    rest = fetcher.collect(100)[TP]
    assert [r.offset for r in rest] == [7, 8, 9]
    assert subs.position(TP) == 10
    r = rest[0]
    assert (r.topic, r.partition, r.value, r.headers, r.timestamp) == ("t", 0, b"v7", (("h", b"x"),), 1002)
    assert fetcher.collect(100) == {}


def test_data_fetched_before_a_seek_is_dropped() -> None:
    fetcher, subs = make()
    subs.seek(TP, 0)
    old_generation = state(subs).generation
    respond(fetcher, 0, old_generation, records=batch(0, 5))
    subs.seek(TP, 2)
    assert fetcher.collect(100) == {}, "the buffered data belongs to the old position"
    respond(fetcher, 0, old_generation, records=batch(0, 5))  # an in-flight response arriving late
    assert fetcher.collect(100) == {}
    respond(fetcher, 2, state(subs).generation, records=batch(0, 5))
    assert [r.offset for r in fetcher.collect(100)[TP]] == [2, 3, 4]


def test_paused_partitions_keep_their_data_until_resumed() -> None:
    fetcher, subs = make()
    subs.seek(TP, 0)
    respond(fetcher, 0, state(subs).generation, records=batch(0, 3))
    subs.pause([TP])
    assert fetcher.collect(100) == {}
    subs.resume([TP])
    assert len(fetcher.collect(100)[TP]) == 3


def test_offset_out_of_range_resets_with_the_strategy() -> None:
    fetcher, subs = make("latest")
    subs.seek(TP, 50)
    respond(fetcher, 50, state(subs).generation, error=errors.OFFSET_OUT_OF_RANGE)
    assert subs.position(TP) is None
    assert subs.needing_reset() == {TP: "latest"}


def test_offset_out_of_range_with_reset_none_is_raised_once() -> None:
    fetcher, subs = make("none")
    subs.seek(TP, 50)
    respond(fetcher, 50, state(subs).generation, error=errors.OFFSET_OUT_OF_RANGE)
    (error,) = subs.take_errors()
    assert isinstance(error, errors.OffsetOutOfRangeError) and "OFFSET_OUT_OF_RANGE" in str(error)
    assert subs.take_errors() == []
    assert state(subs).fetch_position is None, "no more fetching until the application seeks"


def test_a_leader_change_backs_off_and_asks_for_metadata() -> None:
    fetcher, subs = make()
    subs.seek(TP, 0)
    fetcher.client.metadata.update({"brokers": [], "topics": []}, now_ms=0)
    respond(fetcher, 0, state(subs).generation, error=errors.NOT_LEADER_OR_FOLLOWER)
    assert state(subs).backoff_until_s > 0
    assert fetcher.client.metadata.refresh_due_in_ms(10_000) == 0
    assert subs.take_errors() == [], "a retriable error is not the application's business"


def test_a_corrupt_response_is_reported_not_returned() -> None:
    fetcher, subs = make()
    subs.seek(TP, 0)
    truncated = batch(0, 3)[:-5]  # the batch length runs past the end of the data
    respond(fetcher, 0, state(subs).generation, records=truncated)
    (error,) = subs.take_errors()
    assert isinstance(error, errors.CorruptMessageError)


def test_max_records_spans_partitions_in_turn() -> None:
    fetcher, subs = make()
    tp1 = TopicPartition("t", 1)
    subs.assign([TP, tp1])
    for tp in (TP, tp1):
        subs.seek(tp, 0)
        future = ResponseFuture()
        future.success({"error_code": 0, "topics": [{"name": "t", "partitions": [{
            "index": tp.partition, "error_code": 0, "high_watermark": 10, "log_start_offset": 0,
            "records": batch(0, 10)}]}]})
        fetcher._on_response(1, [(tp, 0, subs.assignment[tp].generation)], future)
    seen: dict[TopicPartition, list[int]] = {TP: [], tp1: []}
    for _ in range(4):
        got = fetcher.collect(5)
        assert sum(len(v) for v in got.values()) == 5
        for tp, records in got.items():
            seen[tp].extend(r.offset for r in records)
    assert seen == {TP: list(range(10)), tp1: list(range(10))}


@pytest.mark.parametrize("reset", ["earliest", "latest", "none"])
def test_partitions_start_without_a_position(reset: str) -> None:
    _, subs = make(reset)
    assert subs.needing_reset() == {TP: reset}
