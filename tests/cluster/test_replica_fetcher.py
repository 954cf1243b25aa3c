"""The follower's fetcher against an in-process leader: truncation by leader epoch before
fetching, appends that keep the leader's offsets and epochs, the high watermark learned
from the leader, parking on a fenced epoch, and riding out an unreachable source."""

from __future__ import annotations

import asyncio
import concurrent.futures
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from cluster.peer import PeerError
from cluster.protocol import errors
from cluster.protocol.api import ApiKey
from cluster.replica_fetcher import (
    OFFSETS_FOR_LEADER_EPOCH_API_KEY,
    FollowedPartition,
    SourceFetcher,
)
from cluster.replication import end_offset_for_epoch
from storage import batch as batch_codec
from storage.log import LogStore, PartitionLog

pytestmark = pytest.mark.timeout(30)

TOPIC_ID, TOPIC, INDEX = "t-1", "orders", 0
LEADER_ID, FOLLOWER_ID = 1, 2


def batch(*values: bytes) -> bytes:
    return batch_codec.encode_batch([(1000, None, v, None) for v in values])


def values_of(log: PartitionLog) -> list[tuple[int, int, bytes | None]]:
    """(offset, leader epoch, value) of every record."""
    out = []
    for raw in log.read(log.log_start_offset, 1 << 30):
        header = batch_codec.parse_header(raw)
        for i, record in enumerate(batch_codec.decode_batch(raw)):
            out.append((header.base_offset + i, header.partition_leader_epoch, record.value))
    return out


class FakeLeader:
    """Serves Fetch and OffsetsForLeaderEpoch for one partition from a real log."""

    def __init__(self, log: PartitionLog, leader_epoch: int) -> None:
        self.log = log
        self.leader_epoch = leader_epoch
        self.high_watermark = 0
        self.reachable = True
        self.out_of_range: dict[str, Any] | None = None  # answer every Fetch with this
        self.fetches: list[dict[str, Any]] = []
        self.before_fetch: Callable[[], None] | None = None  # runs as each Fetch arrives

    async def call(self, broker_id: int, api_key: int, body: dict[str, Any], timeout_ms: int) -> dict[str, Any]:
        assert broker_id == LEADER_ID
        if not self.reachable:
            raise PeerError("connection refused")
        part = body["topics"][0]["partitions"][0]
        assert body["replica_id"] == FOLLOWER_ID
        if part["current_leader_epoch"] != self.leader_epoch:
            answer: dict[str, Any] = {"index": INDEX, "error_code": errors.FENCED_LEADER_EPOCH}
        elif api_key == OFFSETS_FOR_LEADER_EPOCH_API_KEY:
            epoch, end = end_offset_for_epoch(self.log.leader_epoch_entries(), self.log.log_end_offset,
                                              part["leader_epoch"])
            answer = {"index": INDEX, "error_code": errors.NONE, "leader_epoch": epoch, "end_offset": end}
        else:
            assert api_key == ApiKey.FETCH
            if self.before_fetch is not None:
                self.before_fetch()
            self.fetches.append(part)
            fetch_offset = part["fetch_offset"]
            if self.out_of_range is not None:
                return {"topics": [{"name": TOPIC, "partitions": [self.out_of_range]}]}
            if not self.log.log_start_offset <= fetch_offset <= self.log.log_end_offset:
                answer = {"index": INDEX, "error_code": errors.OFFSET_OUT_OF_RANGE,
                          "high_watermark": self.high_watermark,
                          "log_start_offset": self.log.log_start_offset, "records": b""}
                return {"topics": [{"name": TOPIC, "partitions": [answer]}]}
            records = b"".join(self.log.read(part["fetch_offset"], part["partition_max_bytes"]))
            if not records:
                await asyncio.sleep(body["max_wait_ms"] / 1000)  # the long poll, roughly
            answer = {"index": INDEX, "error_code": errors.NONE, "high_watermark": self.high_watermark,
                      "log_start_offset": self.log.log_start_offset, "records": records}
        return {"topics": [{"name": TOPIC, "partitions": [answer]}]}


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[LogStore, LogStore]]:
    leader_store, follower_store = LogStore(tmp_path / "leader"), LogStore(tmp_path / "follower")
    yield leader_store, follower_store
    leader_store.close()
    follower_store.close()


def append(log: PartitionLog, epoch: int, *values: bytes) -> None:
    log.append(batch(*values), epoch).result(timeout=10)


def test_follower_copies_batches_with_the_leaders_offsets_and_epochs(stores: tuple[LogStore, LogStore]) -> None:
    leader_log = stores[0].open_partition(TOPIC_ID, INDEX)
    follower_log = stores[1].open_partition(TOPIC_ID, INDEX)
    append(leader_log, 0, b"a", b"b")
    append(leader_log, 3, b"c")
    leader = FakeLeader(leader_log, leader_epoch=3)
    leader.high_watermark = 2

    async def scenario() -> None:
        fetcher = SourceFetcher(FOLLOWER_ID, LEADER_ID, leader, max_wait_ms=0)
        fetcher.assign(FollowedPartition(TOPIC_ID, TOPIC, INDEX, 3, follower_log))
        assert await fetcher.run_once()
        assert await fetcher.run_once()  # nothing new: an empty fetch at the end

    asyncio.run(scenario())
    assert values_of(follower_log) == values_of(leader_log)
    assert follower_log.leader_epoch_entries() == [(0, 0), (3, 2)]
    assert follower_log.high_watermark == 2
    assert [f["fetch_offset"] for f in leader.fetches] == [0, 3]
    assert all(f["current_leader_epoch"] == 3 for f in leader.fetches)


def test_divergent_tail_is_truncated_by_leader_epoch_not_high_watermark(
        stores: tuple[LogStore, LogStore]) -> None:
    # Both got a, b in epoch 0. The follower (once leader in epoch 1) wrote x, y that nobody
    # else got; the new leader wrote c in epoch 2.
    leader_log = stores[0].open_partition(TOPIC_ID, INDEX)
    follower_log = stores[1].open_partition(TOPIC_ID, INDEX)
    append(leader_log, 0, b"a", b"b")
    append(leader_log, 2, b"c")
    append(follower_log, 0, b"a", b"b")
    append(follower_log, 1, b"x", b"y")
    follower_log.set_high_watermark(0)  # a high-watermark truncation would drop a and b
    leader = FakeLeader(leader_log, leader_epoch=2)
    leader.high_watermark = 3

    async def scenario() -> None:
        fetcher = SourceFetcher(FOLLOWER_ID, LEADER_ID, leader, max_wait_ms=0)
        fetcher.assign(FollowedPartition(TOPIC_ID, TOPIC, INDEX, 2, follower_log))
        assert await fetcher.run_once()

    asyncio.run(scenario())
    assert [f["fetch_offset"] for f in leader.fetches] == [2]  # kept a, b; dropped x, y
    assert values_of(follower_log) == values_of(leader_log)
    assert follower_log.high_watermark == 3


def test_fenced_epoch_parks_until_reassigned_and_unreachable_source_is_retried(
        stores: tuple[LogStore, LogStore]) -> None:
    leader_log = stores[0].open_partition(TOPIC_ID, INDEX)
    follower_log = stores[1].open_partition(TOPIC_ID, INDEX)
    append(leader_log, 4, b"a")
    leader = FakeLeader(leader_log, leader_epoch=4)

    async def scenario() -> None:
        fetcher = SourceFetcher(FOLLOWER_ID, LEADER_ID, leader, max_wait_ms=0)
        fetcher.assign(FollowedPartition(TOPIC_ID, TOPIC, INDEX, 3, follower_log))  # stale epoch
        assert await fetcher.run_once()
        assert fetcher.partitions[(TOPIC_ID, INDEX)].parked
        assert await fetcher.run_once()
        assert leader.fetches == []
        leader.reachable = False
        fetcher.assign(FollowedPartition(TOPIC_ID, TOPIC, INDEX, 4, follower_log))
        assert not await fetcher.run_once()
        leader.reachable = True
        assert await fetcher.run_once()

    asyncio.run(scenario())
    assert values_of(follower_log) == values_of(leader_log)


def test_run_loop_follows_until_stopped(stores: tuple[LogStore, LogStore]) -> None:
    leader_log = stores[0].open_partition(TOPIC_ID, INDEX)
    follower_log = stores[1].open_partition(TOPIC_ID, INDEX)
    leader = FakeLeader(leader_log, leader_epoch=0)

    async def scenario() -> None:
        stopping = asyncio.Event()
        fetcher = SourceFetcher(FOLLOWER_ID, LEADER_ID, leader, max_wait_ms=10)
        task = asyncio.create_task(fetcher.run(stopping))
        fetcher.assign(FollowedPartition(TOPIC_ID, TOPIC, INDEX, 0, follower_log))
        for i in range(5):
            append(leader_log, 0, str(i).encode())
        deadline = asyncio.get_running_loop().time() + 10
        while follower_log.log_end_offset < 5:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        stopping.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(scenario())
    assert values_of(follower_log) == values_of(leader_log)


def test_follower_behind_the_leaders_log_start_restarts_there(stores: tuple[LogStore, LogStore]) -> None:
    leader_log = stores[0].open_partition(TOPIC_ID, INDEX)
    follower_log = stores[1].open_partition(TOPIC_ID, INDEX)
    append(leader_log, 0, b"a")
    append(leader_log, 0, b"b", b"c")
    append(leader_log, 0, b"d")  # offset 3
    append(leader_log, 2, b"e")  # offset 4
    leader_log.delete_prefix(3).result(timeout=10)  # retention took a, b, c; epoch 0 stays known
    append(follower_log, 0, b"a")  # the follower has offset 0 only: no truncation by epoch
    follower_log.set_high_watermark(1)
    leader = FakeLeader(leader_log, leader_epoch=2)
    leader.high_watermark = 5

    async def scenario() -> None:
        fetcher = SourceFetcher(FOLLOWER_ID, LEADER_ID, leader, max_wait_ms=0)
        fetcher.assign(FollowedPartition(TOPIC_ID, TOPIC, INDEX, 2, follower_log))
        assert await fetcher.run_once()
        assert (follower_log.log_start_offset, follower_log.log_end_offset) == (3, 3)
        assert follower_log.leader_epoch_entries() == []
        assert follower_log.high_watermark == 3
        assert await fetcher.run_once()

    asyncio.run(scenario())
    assert [f["fetch_offset"] for f in leader.fetches] == [1, 3]
    assert values_of(follower_log) == values_of(leader_log) == [(3, 0, b"d"), (4, 2, b"e")]
    assert follower_log.log_start_offset == 3
    assert follower_log.leader_epoch_entries() == [(0, 3), (2, 4)]
    assert follower_log.high_watermark == 5
    follower_log.verify()


@pytest.mark.parametrize("answer", [
    {"index": INDEX, "error_code": errors.OFFSET_OUT_OF_RANGE, "high_watermark": 0,
     "log_start_offset": 2, "records": b""},  # not above our fetch offset 2
    {"index": INDEX, "error_code": errors.OFFSET_OUT_OF_RANGE},  # no log start given
])
def test_other_offset_out_of_range_answers_keep_the_log(
        stores: tuple[LogStore, LogStore], answer: dict[str, Any]) -> None:
    leader_log = stores[0].open_partition(TOPIC_ID, INDEX)
    follower_log = stores[1].open_partition(TOPIC_ID, INDEX)
    append(leader_log, 0, b"a", b"b")
    append(follower_log, 0, b"a", b"b")
    leader = FakeLeader(leader_log, leader_epoch=0)
    leader.out_of_range = answer

    async def scenario() -> None:
        fetcher = SourceFetcher(FOLLOWER_ID, LEADER_ID, leader, max_wait_ms=0)
        fetcher.assign(FollowedPartition(TOPIC_ID, TOPIC, INDEX, 0, follower_log))
        assert await fetcher.run_once()
        assert await fetcher.run_once()

    asyncio.run(scenario())
    assert [f["fetch_offset"] for f in leader.fetches] == [2, 2]
    assert (follower_log.log_start_offset, follower_log.log_end_offset) == (0, 2)
    assert values_of(follower_log) == values_of(leader_log)


class LateAppends:
    """A follower's log with appends it accepted as leader still queued: they commit when
    the fetcher waits for the store (``barrier``) or, at the latest, while its first fetch is
    on the wire, as the writer thread would commit them."""

    def __init__(self, log: PartitionLog, epoch: int, *values: bytes) -> None:
        self._log: PartitionLog = log
        self._late: tuple[int, tuple[bytes, ...]] | None = (epoch, values)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)

    def land(self) -> None:
        if self._late is not None:
            epoch, values = self._late
            self._late = None
            append(self._log, epoch, *values)

    def barrier(self) -> Any:
        self.land()
        return self._log.barrier()


def test_appends_accepted_as_leader_land_before_the_truncation_point_is_chosen(
        stores: tuple[LogStore, LogStore]) -> None:
    """Found by the fault suite (seed 25): a leader SIGSTOPped with produce requests queued
    became follower; its queued epoch-1 appends committed after it had read its log end, so
    it kept records the new leader never had. The fetcher now waits for the store first."""
    leader_log = stores[0].open_partition(TOPIC_ID, INDEX)
    follower_log = stores[1].open_partition(TOPIC_ID, INDEX)
    append(leader_log, 1, b"a", b"b")
    append(leader_log, 2, b"c")
    append(follower_log, 1, b"a", b"b")
    late = LateAppends(follower_log, 1, b"x", b"y")
    leader = FakeLeader(leader_log, leader_epoch=2)
    leader.before_fetch = late.land

    async def scenario() -> None:
        fetcher = SourceFetcher(FOLLOWER_ID, LEADER_ID, leader, max_wait_ms=0)
        fetcher.assign(FollowedPartition(TOPIC_ID, TOPIC, INDEX, 2, late))  # type: ignore[arg-type]
        assert await fetcher.run_once()

    asyncio.run(scenario())
    assert [f["fetch_offset"] for f in leader.fetches] == [2]  # x, y truncated away first
    assert values_of(follower_log) == values_of(leader_log)


def test_a_log_ending_past_the_leaders_goes_back_to_truncation(stores: tuple[LogStore, LogStore]) -> None:
    """If records still land after the truncation point was chosen, the fetch past the
    leader's log end (OFFSET_OUT_OF_RANGE) sends the partition back to truncation."""
    leader_log = stores[0].open_partition(TOPIC_ID, INDEX)
    follower_log = stores[1].open_partition(TOPIC_ID, INDEX)
    append(leader_log, 1, b"a", b"b")
    append(leader_log, 2, b"c")
    append(follower_log, 1, b"a", b"b")
    leader = FakeLeader(leader_log, leader_epoch=2)

    async def scenario() -> None:
        fetcher = SourceFetcher(FOLLOWER_ID, LEADER_ID, leader, max_wait_ms=0)
        fetcher.assign(FollowedPartition(TOPIC_ID, TOPIC, INDEX, 2, follower_log))
        await fetcher._truncate_pending()  # nothing to truncate yet ...
        append(follower_log, 1, b"x", b"y", b"z")  # ... then a late write lands
        assert await fetcher.run_once()  # fetch at 5: past the leader's end
        assert not fetcher.partitions[(TOPIC_ID, INDEX)].truncated
        assert await fetcher.run_once()  # truncate to 2, fetch c

    asyncio.run(scenario())
    assert [f["fetch_offset"] for f in leader.fetches] == [5, 2]
    assert values_of(follower_log) == values_of(leader_log)


class HeldLog:
    """A follower log whose appends are held until the test releases them, so the test sees
    which appends the fetcher hands over before any of them completes."""

    def __init__(self, log: PartitionLog, held: list[tuple[PartitionLog, bytes, int, concurrent.futures.Future]]) -> None:
        self._log = log
        self._held = held

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)

    def append(self, batch: bytes | memoryview, leader_epoch: int, *,
               assign_offsets: bool = True) -> concurrent.futures.Future[Any]:
        assert not assign_offsets
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._held.append((self._log, bytes(batch), leader_epoch, future))
        return future


def test_an_answer_for_several_partitions_is_appended_in_one_group_commit(
        stores: tuple[LogStore, LogStore]) -> None:
    """Every partition's batches of one Fetch answer are handed to the log before any is
    awaited; one partition after the other would cost a synced commit each."""
    leader_logs = [stores[0].open_partition(TOPIC_ID, index) for index in (0, 1)]
    for index, log in enumerate(leader_logs):
        append(log, 0, f"p{index}-a".encode(), f"p{index}-b".encode())
    held: list[tuple[PartitionLog, bytes, int, concurrent.futures.Future]] = []
    follower_logs = [stores[1].open_partition(TOPIC_ID, index) for index in (0, 1)]

    class TwoPartitionLeader:
        async def call(self, broker_id: int, api_key: int, body: dict[str, Any], timeout_ms: int) -> dict[str, Any]:
            parts = body["topics"][0]["partitions"]
            if api_key == OFFSETS_FOR_LEADER_EPOCH_API_KEY:
                return {"topics": [{"name": TOPIC, "partitions": [
                    {"index": p["index"], "error_code": errors.NONE, "leader_epoch": 0,
                     "end_offset": leader_logs[p["index"]].log_end_offset} for p in parts]}]}
            return {"topics": [{"name": TOPIC, "partitions": [
                {"index": p["index"], "error_code": errors.NONE, "high_watermark": 2, "log_start_offset": 0,
                 "records": b"".join(leader_logs[p["index"]].read(p["fetch_offset"], 1 << 20))}
                for p in parts]}]}

    async def scenario() -> None:
        fetcher = SourceFetcher(FOLLOWER_ID, LEADER_ID, TwoPartitionLeader(), max_wait_ms=0)
        for index, log in enumerate(follower_logs):
            fetcher.assign(FollowedPartition(TOPIC_ID, TOPIC, index, 0, HeldLog(log, held)))
        round_ = asyncio.create_task(fetcher.run_once())
        deadline = asyncio.get_running_loop().time() + 5
        while len(held) < 2:  # the serial fetcher never gets here: it awaits the first append
            assert asyncio.get_running_loop().time() < deadline, f"{len(held)} append(s) handed over"
            await asyncio.sleep(0.01)
        for log, raw, epoch, future in held:
            future.set_result(log.append(raw, epoch, assign_offsets=False).result(timeout=10))
        assert await asyncio.wait_for(round_, 10)

    asyncio.run(scenario())
    for leader_log, follower_log in zip(leader_logs, follower_logs):
        assert values_of(follower_log) == values_of(leader_log)
        assert follower_log.high_watermark == 2
