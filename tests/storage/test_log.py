"""The LMDB partition log: offsets, reads, truncation, epochs, reopen, concurrency, limits."""

from __future__ import annotations

import os
import subprocess
import threading

import pytest

from storage.batch import decode_batch, parse_header, stamp
from storage.log import (
    LogStore,
    OffsetOutOfRangeError,
    PartitionDeletedError,
    StorageError,
)
from cluster.launcher import wait_until
from tests.storage.helpers import make_batch

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def store(tmp_path):
    s = LogStore(tmp_path / "log")
    yield s
    s.close()


def _fill(log, batches: int, records: int = 10, value_bytes: int = 10, epoch: int = 0,
          timestamp_ms: int = 1_000) -> list:
    futures = [log.append(make_batch(records, timestamp_ms + i, value_bytes, tag=i), epoch)
               for i in range(batches)]
    return [f.result(timeout=10) for f in futures]


def _bases(batches: list[bytes]) -> list[int]:
    return [parse_header(b).base_offset for b in batches]


# -- append and read ------------------------------------------------------------------------


def test_append_assigns_dense_offsets_and_stamps_batches(store):
    log = store.open_partition("orders", 3)
    results = _fill(log, 3, records=10)
    assert [(r.base_offset, r.last_offset) for r in results] == [(0, 9), (10, 19), (20, 29)]
    assert log.log_end_offset == 30 and log.log_start_offset == 0
    batches = log.read(0, 1 << 20)
    assert _bases(batches) == [0, 10, 20]
    assert all(parse_header(b).partition_leader_epoch == 0 for b in batches)
    assert [r.offset for r in decode_batch(batches[1])] == list(range(10, 20))
    assert log.size_bytes == sum(len(b) for b in batches)
    assert results[0].log_append_time_ms > 0


def test_barrier_completes_after_every_write_queued_before_it(store):
    log, other = store.open_partition("orders", 0), store.open_partition("orders", 1)
    queued = [log.append(make_batch(5, 1_000 + i, 10, tag=i), 3) for i in range(200)]
    queued.append(other.append(make_batch(5, 1_000, 10, tag=0), 3))
    log.barrier().result(timeout=10)
    assert all(f.done() for f in queued)
    assert log.log_end_offset == 1000 and other.log_end_offset == 5


def test_read_starts_with_the_batch_containing_the_offset(store):
    log = store.open_partition("t", 0)
    _fill(log, 3)
    assert _bases(log.read(15, 1 << 20)) == [10, 20]
    assert _bases(log.read(10, 1 << 20)) == [10, 20]
    assert _bases(log.read(29, 1 << 20)) == [20]


def test_read_bounds(store):
    log = store.open_partition("t", 0)
    assert log.read(0, 100) == []
    _fill(log, 2)
    assert log.read(20, 100) == []  # offset == log end offset
    with pytest.raises(OffsetOutOfRangeError):
        log.read(21, 100)
    with pytest.raises(OffsetOutOfRangeError):
        log.read(-1, 100)


def test_read_max_bytes_and_first_batch_always_whole(store):
    log = store.open_partition("t", 0)
    _fill(log, 5, value_bytes=100)
    size = len(log.read(0, 1 << 20)[0])
    assert _bases(log.read(0, 1)) == [0]  # first batch whole even when larger than max_bytes
    assert _bases(log.read(0, 0)) == [0]
    assert _bases(log.read(0, 2 * size)) == [0, 10]
    assert _bases(log.read(0, 3 * size - 1)) == [0, 10]
    assert _bases(log.read(5, 3 * size)) == [0, 10, 20]


def test_read_upper_offset(store):
    log = store.open_partition("t", 0)
    _fill(log, 4)
    assert _bases(log.read(0, 1 << 20, upper_offset=20)) == [0, 10]
    assert _bases(log.read(0, 1 << 20, upper_offset=25)) == [0, 10]  # [20, 30) not whole below
    assert _bases(log.read(0, 1 << 20, upper_offset=30)) == [0, 10, 20]
    assert log.read(10, 1 << 20, upper_offset=10) == []
    assert log.read(12, 1 << 20, upper_offset=5) == []
    assert _bases(log.read(0, 1 << 20, upper_offset=10_000)) == [0, 10, 20, 30]


def test_partitions_do_not_see_each_other(store):
    a = store.open_partition("t", 0)
    b = store.open_partition("t", 1)
    c = store.open_partition("u", 0)
    _fill(a, 2)
    _fill(c, 1)
    assert b.read(0, 1 << 20) == []
    assert _bases(a.read(0, 1 << 20)) == [0, 10]
    assert _bases(c.read(0, 1 << 20)) == [0]
    assert store.open_partition("t", 0) is a
    assert store.get_partition("t", 0) is a and store.get_partition("x", 0) is None
    assert set(store.partitions()) == {("t", 0), ("t", 1), ("u", 0)}


def test_invalid_append_fails_alone(store):
    log = store.open_partition("t", 0)
    good1 = log.append(make_batch(2), 0)
    bad = log.append(make_batch(2)[:-1], 0)
    good2 = log.append(make_batch(2), 0)
    assert good1.result().base_offset == 0
    with pytest.raises(ValueError, match="whole batch"):
        bad.result()
    assert good2.result().base_offset == 2
    log.verify()


# -- follower appends and the leader-epoch cache --------------------------------------------


def test_follower_append_keeps_base_offset_and_epoch(store):
    leader = store.open_partition("t", 0)
    follower = store.open_partition("t", 1)
    _fill(leader, 2, epoch=3)
    _fill(leader, 1, epoch=5)
    for batch in leader.read(0, 1 << 20):
        follower.append(batch, 99, assign_offsets=False).result()
    assert follower.read(0, 1 << 20) == leader.read(0, 1 << 20)
    assert follower.leader_epoch_entries() == [(3, 0), (5, 20)]
    wrong = stamp(make_batch(1), 7, 5)
    with pytest.raises(ValueError, match="base offset 7"):
        follower.append(wrong, 5, assign_offsets=False).result()
    assert follower.log_end_offset == 30


def test_epoch_cache_and_end_offset_for_epoch(store):
    log = store.open_partition("t", 0)
    assert log.end_offset_for_epoch(0) == (-1, -1)
    _fill(log, 2, epoch=1)   # [0, 20)
    _fill(log, 1, epoch=1)   # [20, 30)
    _fill(log, 1, epoch=4)   # [30, 40)
    _fill(log, 2, epoch=6)   # [40, 60)
    assert log.leader_epoch_entries() == [(1, 0), (4, 30), (6, 40)]
    assert log.end_offset_for_epoch(0) == (-1, -1)
    assert log.end_offset_for_epoch(1) == (1, 30)
    assert log.end_offset_for_epoch(3) == (1, 30)
    assert log.end_offset_for_epoch(4) == (4, 40)
    assert log.end_offset_for_epoch(6) == (6, 60)
    assert log.end_offset_for_epoch(9) == (6, 60)
    with pytest.raises(ValueError, match="older"):
        log.append(make_batch(1), 5).result()
    log.truncate_to(40).result()  # epoch 6 started at 40: it goes
    assert log.leader_epoch_entries() == [(1, 0), (4, 30)]
    assert log.end_offset_for_epoch(6) == (4, 40)
    log.truncate_to(35).result()  # [30, 40) straddles 35 and goes whole, with epoch 4
    assert log.leader_epoch_entries() == [(1, 0)]
    _fill(log, 1, epoch=4)  # [30, 40) again
    log.delete_prefix(25).result()  # epoch 1 now starts at 25
    assert log.leader_epoch_entries() == [(1, 25), (4, 30)]
    log.delete_prefix(30).result()
    assert log.leader_epoch_entries() == [(4, 30)]


# -- truncation and prefix deletion ---------------------------------------------------------


def test_truncate_to_boundary_and_straddling(store):
    log = store.open_partition("t", 0)
    _fill(log, 5)
    log.set_high_watermark(50)
    log.truncate_to(40).result()
    assert log.log_end_offset == 40 and log.high_watermark == 40
    log.truncate_to(25).result()  # [20, 30) straddles 25 and goes whole
    assert log.log_end_offset == 20 and log.high_watermark == 20
    assert _bases(log.read(0, 1 << 20)) == [0, 10]
    log.truncate_to(100).result()  # past the end: nothing
    assert log.log_end_offset == 20
    assert _fill(log, 1)[0].base_offset == 20
    log.verify()


def test_truncate_to_zero_empties(store):
    log = store.open_partition("t", 0)
    _fill(log, 3)
    log.truncate_to(0).result()
    assert (log.log_start_offset, log.log_end_offset, log.size_bytes) == (0, 0, 0)
    assert log.read(0, 100) == []
    log.verify()


def test_delete_prefix_keeps_straddling_batch(store):
    log = store.open_partition("t", 0)
    _fill(log, 4)
    log.delete_prefix(15).result()
    assert log.log_start_offset == 15
    assert _bases(log.read(15, 1 << 20)) == [10, 20, 30]  # readers skip offsets below 15
    with pytest.raises(OffsetOutOfRangeError):
        log.read(14, 100)
    log.delete_prefix(5).result()  # never moves back
    assert log.log_start_offset == 15
    log.delete_prefix(30).result()
    assert [s.base_offset for s in log.batch_summaries()] == [30]
    log.delete_prefix(1_000).result()  # bounded by the log end offset
    assert (log.log_start_offset, log.log_end_offset, log.size_bytes) == (40, 40, 0)
    assert log.read(40, 100) == []
    assert _fill(log, 1)[0].base_offset == 40
    log.verify()


def test_truncate_below_log_start_restarts_there(store):
    log = store.open_partition("t", 0)
    _fill(log, 4)
    log.delete_prefix(25).result()  # keeps [20, 30) straddling
    log.truncate_to(22).result()
    assert (log.log_start_offset, log.log_end_offset) == (20, 20)
    log.verify()


def test_truncate_fully_and_start_at_above_the_log(tmp_path):
    path = tmp_path / "log"
    with LogStore(path) as store:
        log = store.open_partition("t", 0)
        other = store.open_partition("t", 1)
        _fill(log, 3, epoch=2)
        _fill(other, 2)
        log.set_high_watermark(25)
        log.truncate_fully_and_start_at(100).result()
        assert (log.log_start_offset, log.log_end_offset, log.size_bytes) == (100, 100, 0)
        assert log.high_watermark == 100
        assert log.leader_epoch_entries() == []
        assert log.end_offset_for_epoch(2) == (-1, -1)
        assert log.read(100, 1 << 20) == []
        assert log.batch_summaries() == []
        with pytest.raises(OffsetOutOfRangeError):
            log.read(20, 100)
        log.verify()
        assert other.log_end_offset == 20 and _bases(other.read(0, 1 << 20)) == [0, 10]
        other.verify()
        # A follower copies on from the new start; the epoch cache restarts there.
        follower_batch = stamp(make_batch(5), 100, 7)
        log.append(follower_batch, 7, assign_offsets=False).result()
        assert (log.log_start_offset, log.log_end_offset) == (100, 105)
        assert log.leader_epoch_entries() == [(7, 100)]
        log.verify()
    with LogStore(path) as store:
        log = store.get_partition("t", 0)
        assert (log.log_start_offset, log.log_end_offset) == (100, 105)
        assert log.leader_epoch_entries() == [(7, 100)]
        assert _bases(log.read(100, 1 << 20)) == [100]
        log.verify()


def test_truncate_fully_and_start_at_below_or_inside_the_log(store):
    log = store.open_partition("t", 0)
    _fill(log, 4)
    log.delete_prefix(20).result()
    log.set_high_watermark(35)
    log.truncate_fully_and_start_at(5).result()  # below the old log start: allowed
    assert (log.log_start_offset, log.log_end_offset, log.high_watermark) == (5, 5, 5)
    assert log.size_bytes == 0 and log.leader_epoch_entries() == []
    log.verify()
    _fill(log, 1, epoch=3)
    log.truncate_fully_and_start_at(10).result()  # inside the old log: still emptied
    assert (log.log_start_offset, log.log_end_offset, log.size_bytes) == (10, 10, 0)
    assert _fill(log, 1, epoch=4)[0].base_offset == 10
    assert log.leader_epoch_entries() == [(4, 10)]
    log.verify()


def test_truncate_fully_refuses_a_negative_offset_and_deleted_partitions(store):
    log = store.open_partition("t", 0)
    _fill(log, 1)
    with pytest.raises(ValueError, match="negative"):
        log.truncate_fully_and_start_at(-1).result()
    assert (log.log_start_offset, log.log_end_offset) == (0, 10)
    store.delete_partition("t", 0).result()
    with pytest.raises(PartitionDeletedError):
        log.truncate_fully_and_start_at(3).result()


def test_offset_for_timestamp(store):
    log = store.open_partition("t", 0)
    assert log.offset_for_timestamp(0) is None
    for ts in (100, 300, 200, 400):
        log.append(make_batch(10, ts), 0).result()
    assert log.offset_for_timestamp(50) == 0
    assert log.offset_for_timestamp(100) == 0
    assert log.offset_for_timestamp(150) == 10
    assert log.offset_for_timestamp(250) == 10  # first batch whose max timestamp >= 250
    assert log.offset_for_timestamp(350) == 30
    assert log.offset_for_timestamp(401) is None
    log.delete_prefix(15).result()
    assert log.offset_for_timestamp(50) == 15  # clamped up to the log start offset


# -- reopen, delete, high watermark ---------------------------------------------------------


def test_reopen_keeps_everything(tmp_path):
    path = tmp_path / "log"
    with LogStore(path) as store:
        a = store.open_partition("t", 0)
        b = store.open_partition("t", 1)
        _fill(a, 5, epoch=2)
        _fill(a, 1, epoch=3)
        _fill(b, 1)
        a.delete_prefix(12).result()
        a.set_high_watermark(45)
        expected = a.read(12, 1 << 20)
        summaries = a.batch_summaries()
    with LogStore(path) as store:
        assert set(store.partitions()) == {("t", 0), ("t", 1)}
        a = store.get_partition("t", 0)
        assert (a.log_start_offset, a.log_end_offset, a.high_watermark) == (12, 60, 45)
        assert a.read(12, 1 << 20) == expected
        assert a.batch_summaries() == summaries
        assert a.leader_epoch_entries() == [(2, 12), (3, 50)]
        a.verify()
        c = store.open_partition("t", 2)
        assert c.pid not in {a.pid, store.get_partition("t", 1).pid}
        assert _fill(a, 1, epoch=3)[0].base_offset == 60


def test_high_watermark_is_clamped_and_checkpointed_without_other_writes(store):
    log = store.open_partition("t", 0)
    _fill(log, 2)
    log.set_high_watermark(100)
    assert log.high_watermark == 20
    before = store.transactions_committed
    log.set_high_watermark(15)
    assert log.high_watermark == 15
    wait_until(lambda: store.transactions_committed > before, 5, message="checkpoint")


def test_delete_partition(tmp_path):
    path = tmp_path / "log"
    with LogStore(path) as store:
        log = store.open_partition("t", 0)
        other = store.open_partition("t", 1)
        _fill(log, 3)
        _fill(other, 2)
        store.delete_partition("t", 0).result()
        assert store.get_partition("t", 0) is None
        with pytest.raises(PartitionDeletedError):
            log.read(0, 100)
        with pytest.raises(PartitionDeletedError):
            log.append(make_batch(1), 0).result()
        store.delete_partition("t", 0).result()  # idempotent
        fresh = store.open_partition("t", 0)
        assert fresh is not log and fresh.log_end_offset == 0 and fresh.read(0, 100) == []
        assert _bases(other.read(0, 1 << 20)) == [0, 10]
    with LogStore(path) as store:
        assert store.get_partition("t", 0).log_end_offset == 0
        assert store.get_partition("t", 1).log_end_offset == 20
        with store._env.begin() as txn:  # the old partition's batches are gone from disk
            assert txn.stat(store._batches_db)["entries"] == 2


def test_delete_then_open_in_one_transaction(store):
    log = store.open_partition("t", 0)
    _fill(log, 1)
    deleted = store.delete_partition("t", 0)
    opened = store.open_partition("t", 0)
    deleted.result()
    assert opened is not log and opened.log_end_offset == 0


def test_closed_store_refuses_ops(tmp_path):
    store = LogStore(tmp_path / "log")
    log = store.open_partition("t", 0)
    pending = [log.append(make_batch(1), 0) for _ in range(50)]
    store.close()
    assert [f.result().base_offset for f in pending] == list(range(50))  # close completes them
    with pytest.raises(StorageError, match="closed"):
        log.append(make_batch(1), 0).result()
    with pytest.raises(StorageError, match="closed"):
        log.read(0, 10)
    store.close()


# -- concurrency and group commit -----------------------------------------------------------


def test_concurrent_appenders_get_dense_offsets(store):
    logs = [store.open_partition("t", p) for p in range(3)]
    results: dict[tuple[int, int], list] = {}

    def appender(thread_id: int) -> None:
        futures = [(logs[i % 3], logs[i % 3].append(make_batch(3, tag=thread_id * 1000 + i), 0))
                   for i in range(60)]
        results[thread_id] = [(log.partition, f.result().base_offset) for log, f in futures]

    threads = [threading.Thread(target=appender, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for log in logs:
        assert log.log_end_offset == 8 * 20 * 3
        log.verify()
        bases = sorted(base for r in results.values() for p, base in r if p == log.partition)
        assert bases == list(range(0, 480, 3))
        batches = log.read(0, 1 << 30)
        assert _bases(batches) == bases
        tags = [int.from_bytes(decode_batch(b)[0].value[:8], "big") for b in batches]
        assert len(set(tags)) == len(tags)
        # Within one thread, submission order is offset order.
        for thread_id in range(8):
            mine = [t for t in tags if t // 1000 == thread_id]
            assert mine == sorted(mine)


def test_group_commit_coalesces(store):
    log = store.open_partition("t", 0)
    before = store.transactions_committed
    futures = [log.append(make_batch(10, tag=i), 0) for i in range(500)]
    assert futures[-1].result().base_offset == 4990
    assert store.transactions_committed - before < 100
    assert log.log_end_offset == 5000


def test_readers_see_only_committed_dense_prefixes(store):
    log = store.open_partition("t", 0)
    stop = threading.Event()
    problems: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            end = log.log_end_offset
            batches = log.read(0, 1 << 30)
            expected = 0
            for batch in batches:
                header = parse_header(batch)
                if header.base_offset != expected:
                    problems.append(f"gap at {expected}")
                expected = header.next_offset
            if expected < end:
                problems.append(f"read {expected} < committed end {end}")

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for _ in range(20):
            _fill(log, 20, records=5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert problems == []


# -- map growth, sync off, disk full ---------------------------------------------------------


def test_map_grows_transparently(tmp_path):
    with LogStore(tmp_path / "log", map_size_bytes=256 << 10) as store:
        log = store.open_partition("t", 0)
        stop = threading.Event()
        errors: list[BaseException] = []

        def reader() -> None:  # reads keep working while the writer resizes the map
            while not stop.is_set():
                try:
                    log.read(0, 1 << 30)
                except BaseException as exc:  # noqa: BLE001 - any failure is the finding
                    errors.append(exc)

        thread = threading.Thread(target=reader)
        thread.start()
        try:
            results = _fill(log, 300, records=10, value_bytes=1_000)
        finally:
            stop.set()
            thread.join()
        assert errors == []
        assert results[-1].base_offset == 2990
        assert store.map_size_bytes > 256 << 10
        assert len(log.read(0, 1 << 30)) == 300
        log.verify()
    with LogStore(tmp_path / "log", map_size_bytes=256 << 10) as store:
        assert store.get_partition("t", 0).log_end_offset == 3000


def test_map_at_its_limit_is_a_storage_error(tmp_path):
    with LogStore(tmp_path / "log", map_size_bytes=256 << 10, map_size_max_bytes=512 << 10) as store:
        log = store.open_partition("t", 0)
        acknowledged = 0
        with pytest.raises(StorageError, match="map_size_max_bytes"):
            for i in range(200):
                log.append(make_batch(10, value_bytes=1_000, tag=i), 0).result()
                acknowledged += 1
        assert log.log_end_offset == acknowledged * 10
        assert len(log.read(0, 1 << 30)) == acknowledged
        log.delete_prefix(log.log_end_offset).result()  # freeing space works ...
        log.append(make_batch(1), 0).result()  # ... and so do later appends


def test_sync_false_works(tmp_path):
    with LogStore(tmp_path / "log", sync=False) as store:
        assert not store._env.flags()["sync"]
        log = store.open_partition("t", 0)
        _fill(log, 10)
    with LogStore(tmp_path / "log") as store:
        assert store._env.flags()["sync"]
        assert store.get_partition("t", 0).log_end_offset == 100


@pytest.fixture
def small_tmpfs(tmp_path):
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root): {done.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.mark.timeout(60)
def test_disk_full_is_a_clean_error(small_tmpfs):
    filler = small_tmpfs / "filler"
    filler.write_bytes(b"\0" * (1 << 20))
    store = LogStore(small_tmpfs / "log", map_size_bytes=64 << 20)
    try:
        log = store.open_partition("t", 0)
        acknowledged: list[bytes] = []
        error = None
        for i in range(400):
            batch = make_batch(10, value_bytes=2_000, tag=i)
            try:
                log.append(batch, 0).result()
            except StorageError as exc:
                error = exc
                break
            acknowledged.append(batch)
        assert error is not None, "the 4 MiB tmpfs never filled up"
        assert "disk full" in str(error) and "no space" in str(error).lower()
        assert log.log_end_offset == 10 * len(acknowledged)
        stored = log.read(0, 1 << 30)
        assert [decode_batch(b)[0].value for b in stored] == \
            [decode_batch(b)[0].value for b in acknowledged]
        # The writer survived; once space is freed, later ops succeed.
        os.unlink(filler)
        result = log.append(make_batch(1, tag=9999), 0).result(timeout=10)
        assert result.base_offset == 10 * len(acknowledged)
        log.verify()
    finally:
        store.close()
    with LogStore(small_tmpfs / "log", map_size_bytes=64 << 20) as store:
        log = store.get_partition("t", 0)
        assert log.log_end_offset == 10 * len(acknowledged) + 1
        log.verify()


def test_one_store_per_directory(tmp_path):
    with LogStore(tmp_path / "log"):
        with pytest.raises(StorageError, match="in use"):
            LogStore(tmp_path / "log")
    LogStore(tmp_path / "log").close()  # the lock goes with the store
