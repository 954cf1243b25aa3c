"""Retention: the pure choice of a new log start offset, then applied to a real log."""

from __future__ import annotations

import pytest

from storage.log import LogStore
from storage.retention import BatchSummary, retention_cut
from tests.storage.helpers import make_batch

NOW_MS = 1_000_000


def _summaries(*spec: tuple[int, int, int]) -> list[BatchSummary]:
    """(record count, max timestamp, size) per batch, offsets laid out densely from 0."""
    out, offset = [], 0
    for count, max_ts, size in spec:
        out.append(BatchSummary(offset, offset + count, max_ts, size))
        offset += count
    return out


LOG = _summaries((10, 100, 100), (10, 200, 100), (10, 300, 100), (10, 400, 100))


def test_no_limits_delete_nothing():
    assert retention_cut(LOG, NOW_MS, -1, -1, 40) is None


def test_empty_log():
    assert retention_cut([], NOW_MS, 0, 0, 0) is None


def test_time_deletes_leading_expired_batches():
    # now - retention = 250: batches with max_ts 100 and 200 are expired.
    assert retention_cut(LOG, 1_250, 1_000, -1, 40) == 20


def test_time_stops_at_first_young_batch():
    log = _summaries((10, 100, 1), (10, 900, 1), (10, 100, 1))
    assert retention_cut(log, 1_250, 1_000, -1, 30) == 10


def test_time_boundary_is_strict():
    # max_timestamp == now - retention is kept
    assert retention_cut(LOG, 1_100, 1_000, -1, 40) is None


def test_size_deletes_oldest_until_within_limit():
    assert retention_cut(LOG, NOW_MS, -1, 250, 40) == 20
    assert retention_cut(LOG, NOW_MS, -1, 300, 40) == 10
    assert retention_cut(LOG, NOW_MS, -1, 400, 40) is None
    assert retention_cut(LOG, NOW_MS, -1, 0, 40) == 40


def test_time_then_size():
    # time removes the first batch; the other 300 bytes exceed 150, so two more go.
    assert retention_cut(LOG, 1_150, 1_000, 150, 40) == 30
    # size alone would remove one; time removes three.
    assert retention_cut(LOG, 1_350, 1_000, 300, 40) == 30


def test_never_deletes_at_or_above_high_watermark():
    assert retention_cut(LOG, NOW_MS, 0, 0, 25) == 20  # batch [20, 30) is not committed
    assert retention_cut(LOG, NOW_MS, 0, 0, 30) == 30
    assert retention_cut(LOG, NOW_MS, 0, 0, 5) is None


@pytest.fixture
def store(tmp_path):
    with LogStore(tmp_path / "log", sync=False) as s:
        yield s


def test_apply_retention_on_a_real_log(store):
    log = store.open_partition("t", 0)
    for ts in (100, 200, 300, 400):
        log.append(make_batch(10, ts), 0).result()
    size = log.batch_summaries()[-1].size_bytes  # one batch
    assert log.apply_retention(NOW_MS, 1, -1) is None  # high watermark 0 guards everything
    log.set_high_watermark(35)
    future = log.apply_retention(1_250, 1_000, -1)
    assert future is not None
    future.result()
    assert (log.log_start_offset, log.log_end_offset) == (20, 40)
    assert [s.base_offset for s in log.batch_summaries()] == [20, 30]
    assert log.apply_retention(1_250, 1_000, -1) is None  # nothing more to do
    log.apply_retention(NOW_MS, -1, size).result()  # [30, 40) is above the high watermark
    assert log.log_start_offset == 30 and log.size_bytes == size
    assert log.apply_retention(NOW_MS, 0, 0) is None
    log.verify()
