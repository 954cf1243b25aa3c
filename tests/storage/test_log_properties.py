"""Hypothesis stateful test: the LMDB partition log against a plain in-memory model.

The machine appends, reads, truncates, deletes prefixes, looks up timestamps, moves the
high watermark, applies retention and reopens the store (close + a new ``LogStore`` on the
same path), checking after every step that offsets, sizes and the epoch cache agree.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from storage.batch import decode_batch, parse_header
from storage.log import LogStore, OffsetOutOfRangeError
from storage.retention import BatchSummary, retention_cut
from tests.storage.helpers import make_batch

pytestmark = pytest.mark.timeout(120)

offsets = st.integers(min_value=0, max_value=160)


@dataclass(frozen=True)
class ModelBatch:
    base: int
    count: int
    max_timestamp: int
    size: int
    tag: int

    @property
    def next(self) -> int:
        return self.base + self.count


class LogMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.path = tempfile.mkdtemp(prefix="kraft-log-model-")
        self.store = LogStore(self.path, sync=False, map_size_bytes=1 << 20)
        self.log = self.store.open_partition("model", 0)
        self.batches: list[ModelBatch] = []
        self.start = 0
        self.end = 0
        self.high_watermark = 0
        self.epochs: list[tuple[int, int]] = []
        self.epoch = 0
        self.next_tag = 0

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.path, ignore_errors=True)

    # -- model operations -------------------------------------------------------------------

    def _model_delete_prefix(self, offset: int) -> None:
        new_start = max(self.start, min(offset, self.end))
        if new_start == self.start:
            return
        self.start = new_start
        self.batches = [b for b in self.batches if b.next > new_start]
        while len(self.epochs) > 1 and self.epochs[1][1] <= new_start:
            self.epochs.pop(0)
        if self.epochs and self.epochs[0][1] < new_start:
            self.epochs[0] = (self.epochs[0][0], new_start)
        self.high_watermark = max(self.high_watermark, self.start)

    # -- rules --------------------------------------------------------------------------------

    @rule(count=st.integers(min_value=1, max_value=6),
          timestamp_ms=st.integers(min_value=0, max_value=1_000),
          bump_epoch=st.booleans(), value_bytes=st.integers(min_value=8, max_value=300))
    def append(self, count, timestamp_ms, bump_epoch, value_bytes):
        if bump_epoch:
            self.epoch += 1
        tag = self.next_tag
        self.next_tag += 1
        batch = make_batch(count, timestamp_ms, value_bytes, tag=tag)
        result = self.log.append(batch, self.epoch).result(timeout=10)
        assert (result.base_offset, result.last_offset) == (self.end, self.end + count - 1)
        if not self.epochs or self.epochs[-1][0] < self.epoch:
            self.epochs.append((self.epoch, self.end))
        self.batches.append(ModelBatch(self.end, count, timestamp_ms, len(batch), tag))
        self.end += count

    @rule(offset=offsets, max_bytes=st.integers(min_value=0, max_value=3_000),
          upper=st.none() | offsets)
    def read(self, offset, max_bytes, upper):
        if offset < self.start or offset > self.end:
            with pytest.raises(OffsetOutOfRangeError):
                self.log.read(offset, max_bytes, upper_offset=upper)
            return
        bound = self.end if upper is None else min(upper, self.end)
        expected: list[ModelBatch] = []
        total = 0
        for b in self.batches:
            if b.next <= offset:
                continue
            if b.next - 1 >= bound or (expected and total + b.size > max_bytes):
                break
            expected.append(b)
            total += b.size
        got = self.log.read(offset, max_bytes, upper_offset=upper)
        assert [parse_header(g).base_offset for g in got] == [b.base for b in expected]
        assert [int.from_bytes(decode_batch(g)[0].value[:8], "big") for g in got] == \
            [b.tag for b in expected]

    @rule(offset=offsets)
    def truncate_to(self, offset):
        self.log.truncate_to(offset).result(timeout=10)
        if offset >= self.end:
            return
        new_end = offset
        for b in self.batches:
            if b.base <= offset < b.next:
                new_end = b.base
        self.batches = [b for b in self.batches if b.next <= new_end]
        self.end = new_end
        self.start = min(self.start, new_end)
        self.epochs = [e for e in self.epochs if e[1] < new_end]
        self.high_watermark = min(self.high_watermark, new_end)

    @rule(offset=offsets)
    def delete_prefix(self, offset):
        self.log.delete_prefix(offset).result(timeout=10)
        self._model_delete_prefix(offset)

    @rule(offset=offsets)
    def set_high_watermark(self, offset):
        self.log.set_high_watermark(offset)
        self.high_watermark = max(self.start, min(offset, self.end))

    @rule(now_ms=st.integers(min_value=0, max_value=2_000),
          retention_ms=st.sampled_from([-1, 0, 300, 800]),
          retention_bytes=st.sampled_from([-1, 0, 500, 2_000]))
    def apply_retention(self, now_ms, retention_ms, retention_bytes):
        summaries = [BatchSummary(b.base, b.next, b.max_timestamp, b.size) for b in self.batches]
        cut = retention_cut(summaries, now_ms, retention_ms, retention_bytes, self.high_watermark)
        future = self.log.apply_retention(now_ms, retention_ms, retention_bytes)
        if cut is None or cut <= self.start:
            assert future is None
            return
        future.result(timeout=10)
        self._model_delete_prefix(cut)

    @rule(timestamp_ms=st.integers(min_value=0, max_value=1_100))
    def offset_for_timestamp(self, timestamp_ms):
        expected = next((max(b.base, self.start) for b in self.batches
                         if b.max_timestamp >= timestamp_ms), None)
        assert self.log.offset_for_timestamp(timestamp_ms) == expected

    @rule()
    def reopen(self):
        self.store.close()
        self.store = LogStore(self.path, sync=False, map_size_bytes=1 << 20)
        self.log = self.store.get_partition("model", 0)
        assert self.log is not None

    # -- invariants -----------------------------------------------------------------------------

    @invariant()
    def offsets_sizes_and_epochs_agree(self):
        log = self.log
        assert (log.log_start_offset, log.log_end_offset) == (self.start, self.end)
        assert log.high_watermark == self.high_watermark
        assert log.size_bytes == sum(b.size for b in self.batches)
        assert log.leader_epoch_entries() == self.epochs
        log.verify()
        assert [s.base_offset for s in log.batch_summaries()] == [b.base for b in self.batches]
        for epoch in (0, self.epoch):
            known = [e for e in self.epochs if e[0] <= epoch]
            if not known:
                assert log.end_offset_for_epoch(epoch) == (-1, -1)
            else:
                index = self.epochs.index(known[-1])
                end = self.epochs[index + 1][1] if index + 1 < len(self.epochs) else self.end
                assert log.end_offset_for_epoch(epoch) == (known[-1][0], end)


LogMachine.TestCase.settings = settings(max_examples=120, stateful_step_count=30, deadline=None)
TestLogAgainstModel = LogMachine.TestCase
