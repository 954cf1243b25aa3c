"""The tail cache of the partition log: reads of the newest batches come from memory and
give exactly what an LMDB read gives, across appends, truncations, prefix deletions,
follower appends and eviction."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import storage.log as log_module
from storage.batch import parse_header, stamp
from storage.log import LogStore, OffsetOutOfRangeError, PartitionLog
from tests.storage.helpers import make_batch

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def store(tmp_path):
    s = LogStore(tmp_path / "log", sync=False)
    yield s
    s.close()


def lmdb_read(log: PartitionLog, offset: int, max_bytes: int, upper_offset: int | None) -> list[bytes]:
    """The same read, straight from LMDB (the cache bypassed)."""
    with log._store._reading() as txn:
        return log._read_in(txn, offset, max_bytes, upper_offset)


def outcome(read, *args):
    try:
        return [bytes(b) for b in read(*args)]
    except OffsetOutOfRangeError:
        return "out of range"


def tail_bases(log: PartitionLog) -> list[int]:
    return [entry[0] for entry in log._tail]


def test_a_read_at_the_end_of_the_log_is_served_from_memory(store, monkeypatch):
    log = store.open_partition("t", 0)
    first = log.append(make_batch(5), 1).result()
    second = log.append(make_batch(3, tag=1), 1).result()
    assert tail_bases(log) == [0, 5] and log.log_end_offset == 8

    def no_lmdb(*args, **kwargs):
        raise AssertionError("read LMDB for a batch the tail holds")

    monkeypatch.setattr(PartitionLog, "_read_in", no_lmdb)
    batches = log.read(5, 1 << 20)
    assert [parse_header(b).base_offset for b in batches] == [second.base_offset]
    assert parse_header(batches[0]).partition_leader_epoch == 1
    assert log.read(8, 1 << 20) == []  # at the log end
    assert [parse_header(b).base_offset for b in log.read(2, 1 << 20)] == [first.base_offset, 5]
    assert log.read(0, 1 << 20, upper_offset=5) == batches[:0] + log.read(0, 0, upper_offset=5)
    monkeypatch.undo()
    assert log.read(0, 1 << 20) == lmdb_read(log, 0, 1 << 20, None)


def test_truncation_and_prefix_deletion_empty_the_tail(store):
    log = store.open_partition("t", 0)
    for i in range(4):
        log.append(make_batch(5, tag=i), 0).result()
    log.truncate_to(12).result()  # [10, 15) straddles 12: the log ends at 10
    assert log.log_end_offset == 10 and tail_bases(log) == []
    log.append(make_batch(2, tag=9), 0).result()
    assert tail_bases(log) == [10]  # a new run from the new end
    assert log.read(10, 1 << 20) == lmdb_read(log, 10, 1 << 20, None)
    log.delete_prefix(5).result()
    assert tail_bases(log) == []
    assert log.read(10, 1 << 20) == lmdb_read(log, 10, 1 << 20, None)


def test_a_followers_append_is_not_cached_and_breaks_the_run(store):
    log = store.open_partition("t", 0)
    log.append(make_batch(5), 0).result()
    copied = stamp(make_batch(5, tag=1), 5, 0)
    log.append(memoryview(bytes(copied)), 0, assign_offsets=False).result()
    assert log.log_end_offset == 10 and tail_bases(log) == []
    log.append(make_batch(1, tag=2), 0).result()
    assert tail_bases(log) == [10]
    assert log.read(0, 1 << 20) == lmdb_read(log, 0, 1 << 20, None)


def test_the_oldest_batches_are_evicted_across_partitions(store, monkeypatch):
    monkeypatch.setattr(log_module, "TAIL_CACHE_BATCHES_MAX", 5)
    a, b = store.open_partition("t", 0), store.open_partition("t", 1)
    for i in range(4):
        a.append(make_batch(2, tag=i), 0).result()
        b.append(make_batch(3, tag=i), 0).result()
    assert tail_bases(a) == [4, 6] and tail_bases(b) == [3, 6, 9]  # the 5 newest batches
    assert sum(len(e[2]) for log in (a, b) for e in log._tail) == store._tail_bytes
    for log in (a, b):
        assert log.read(0, 1 << 20) == lmdb_read(log, 0, 1 << 20, None)
    store.delete_partition("t", 1).result()
    assert store._tail_bytes == sum(len(e[2]) for e in a._tail)


_ops = st.lists(st.one_of(
    st.tuples(st.just("append"), st.integers(1, 6), st.integers(1, 300)),
    st.tuples(st.just("follower"), st.integers(1, 6), st.integers(1, 300)),
    st.tuples(st.just("truncate"), st.integers(0, 40), st.just(0)),
    st.tuples(st.just("delete_prefix"), st.integers(0, 40), st.just(0)),
), min_size=1, max_size=25)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_ops, limit=st.integers(1, 6), probes=st.lists(
    st.tuples(st.integers(0, 45), st.integers(0, 2000), st.one_of(st.none(), st.integers(0, 45))),
    min_size=1, max_size=6))
def test_reads_match_lmdb_whatever_happened_before(tmp_path_factory, ops, limit, probes):
    store = LogStore(tmp_path_factory.mktemp("tail") / "log", sync=False)
    original = log_module.TAIL_CACHE_BATCHES_MAX
    log_module.TAIL_CACHE_BATCHES_MAX = limit
    try:
        log = store.open_partition("t", 0)
        for tag, (kind, n, size) in enumerate(ops):
            if kind == "append":
                log.append(make_batch(n, value_bytes=size, tag=tag), 0).result()
            elif kind == "follower":
                batch = stamp(make_batch(n, value_bytes=size, tag=tag), log.log_end_offset, 0)
                log.append(memoryview(bytes(batch)), 0, assign_offsets=False).result()
            elif kind == "truncate":
                log.truncate_to(n).result()
            else:
                log.delete_prefix(n).result()
            if log._tail:
                assert log._tail[-1][1] == log.log_end_offset
            start, end = log.log_start_offset, log.log_end_offset
            for offset, max_bytes, upper in probes:
                # near the log: inside it, at its ends, one past them
                offset = max(0, start - 1 + offset % (end - start + 3))
                upper = None if upper is None else upper % (end + 2)
                assert outcome(lambda *a: log.read(*a[:2], upper_offset=a[2]), offset, max_bytes, upper) == \
                    outcome(lmdb_read, log, offset, max_bytes, upper), (offset, max_bytes, upper)
    finally:
        log_module.TAIL_CACHE_BATCHES_MAX = original
        store.close()
