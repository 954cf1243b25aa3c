"""The partition logs of one node, in one LMDB environment, written by one thread.

Theory of operation
-------------------
``LogStore`` owns an LMDB environment and every partition log in it. ``PartitionLog`` is the
handle the node uses for one (topic, partition).

Writes. Every mutating call (append, truncate_to, truncate_fully_and_start_at,
delete_prefix, open/delete partition)
builds an *op* with a ``concurrent.futures.Future`` and puts it on one FIFO queue. A single
writer thread takes everything pending (up to ``OPS_PER_TRANSACTION_MAX`` ops and
``TRANSACTION_BYTES_MAX`` bytes of batches), applies the ops in queue order inside ONE write
transaction (group commit), commits, and only then publishes the new per-partition state in
memory and completes the futures. Offsets are assigned in the writer, so they follow
submission order and are dense. An op whose precondition fails (a follower batch whose base
offset is not the log end offset, a stale leader epoch, a deleted partition) writes nothing
and its future fails alone; the rest of the transaction goes ahead.

    caller threads --append()--> queue --> writer: begin; op, op, op ...; commit --> futures

Failures of the transaction as a whole:

* ``lmdb.MapFullError``: abort, double the map (up to ``map_size_max_bytes``), replay the
  same ops in a fresh transaction. Callers never see it.
* any other ``lmdb.Error`` (ENOSPC, EIO, ...): abort; every future of that transaction fails
  with ``StorageError`` naming the cause ("disk full" when the filesystem is out of space:
  LMDB reports a write cut short by ENOSPC as EIO, so free space decides); in-memory state
  is unchanged (it only moves after a commit) and the writer keeps serving later ops.

The writer never decodes records: it reads a few header fields, stamps base offset and
leader epoch in place (the CRC does not cover them) and stores the bytes. Invariants are
asserted on both sides of a write: the key of a new batch must not exist, its base offset
must be the log end offset, and every partition state is checked before it is written.
A lock file keeps a second ``LogStore`` (in any process) off the same directory.

Reads (``read``, ``offset_for_timestamp``, ``batch_summaries``) run in the caller's thread in
one read transaction with one cursor and ``buffers=True``: they see a committed snapshot, and
read the partition's log start / end offsets from that same snapshot, so the bounds they
check always match the batches they find. Only the bytes handed back are copied. Growing the
map invalidates every open transaction, so readers hold a shared gate and the writer takes it
exclusively (waiting for readers to finish) just while it resizes.

Layout. Four named databases:

* ``batches``: key ``(partition id u32, base offset u64)`` big-endian, value = one whole
  batch exactly as served. One database with a composite key rather than a database per
  partition because: LMDB caps named databases at ``max_dbs`` fixed at open and looks them
  up linearly, a handle opened in an aborted transaction is lost, and deleting a partition is
  just a range delete; measured here with 10 KB batches over 16 partitions, both layouts
  commit ~28k puts/s (~285 MB/s) with ``sync=True``, so nothing is paid for it.
  Big-endian keys make LMDB's order (partition, offset) order, so a partition is one
  contiguous key range and a read is ``set_range`` + ``next``.
* ``partition_state``: ``pid + b"s"`` -> log start offset, log end offset, high-watermark
  checkpoint, size in bytes (4 x i64); ``pid + b"e"`` -> the leader-epoch cache as msgpack
  ``[[epoch, start_offset], ...]``. Written in the same transaction as the batches they
  describe, so a crash never separates them.
* ``partition_ids``: msgpack ``[topic, partition]`` -> partition id (u32). Ids are never
  reused (the counter lives in ``meta``), so a stale handle cannot touch a new partition.
* ``meta``: format version, next partition id.

Durability. ``sync=True`` (default): every commit is fsynced before futures complete, so an
acknowledged write survives power loss. ``sync=False``: commits reach the OS page cache
only; they survive a crash of this process (kill -9) but NOT a power loss or kernel crash.

Tail cache. The newest committed batches that the writer stamped itself (a leader's
appends) stay in memory after their commit: per partition a contiguous run of batches
ending at the log end offset, at most ``TAIL_CACHE_BYTES_MAX`` / ``TAIL_CACHE_BATCHES_MAX``
over the whole store, the oldest dropped first. ``read`` answers from it when the run
holds the asked offset (what followers and consumers at the end of the log ask for, right
after the commit that woke them), with the same bounds checks and the same batches an LMDB
read would give, without a read transaction, page faults on the map or a copy. It is
published with the partition's state in ``_install`` (under the store lock, so a reader
sees both or neither), and emptied by anything but an append (truncation, prefix deletion,
partition deletion) and by an append it does not hold (a follower's, stored as received).

    append [10, 20) [20, 30) committed  ->  tail [10, 20) [20, 30), log end 30
    read(25)  -> [20, 30) from memory      read(5) -> LMDB (before the run)
    truncate_to(20) -> tail emptied; the next appends start a new run at 20

High watermark. ``set_high_watermark`` changes the in-memory value at once and marks the
partition dirty; the checkpoint is written with the next transaction, and the writer starts
one itself after ``HIGH_WATERMARK_CHECKPOINT_INTERVAL_MS`` if nothing else happens. The high
watermark is always kept within [log start offset, log end offset].
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import fcntl
import logging
import os
import queue
import struct
import threading
import time
from typing import Iterator, NamedTuple

import lmdb
import msgpack

from storage.batch import LENGTH_PREFIX_BYTES, NO_PARTITION_LEADER_EPOCH, stamp
from storage.retention import BatchSummary, retention_cut

__all__ = [
    "AppendResult",
    "BatchSummary",
    "LogStore",
    "OffsetOutOfRangeError",
    "PartitionDeletedError",
    "PartitionLog",
    "StorageError",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
OPS_PER_TRANSACTION_MAX = 4096
TRANSACTION_BYTES_MAX = 64 << 20
HIGH_WATERMARK_CHECKPOINT_INTERVAL_MS = 1000
NAMED_DATABASES_MAX = 4
READERS_MAX = 126
PARTITION_ID_MAX = (1 << 32) - 1
MAP_GROWTH_FACTOR = 2
DISK_FULL_HEADROOM_BYTES = 1 << 20  # a failed commit with less free space than this is "disk full"
TAIL_CACHE_BYTES_MAX = 16 << 20  # newest committed batches kept in memory for reads, whole store
TAIL_CACHE_BATCHES_MAX = 4096

_BATCH_KEY = struct.Struct(">IQ")  # partition id, base offset
_PARTITION_ID = struct.Struct(">I")
_STATE = struct.Struct(">qqqq")  # log start, log end, high watermark, size bytes
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
_BATCH_LENGTH_AT = 8
_LEADER_EPOCH_AT = 12
_LAST_OFFSET_DELTA_AT = 23
_MAX_TIMESTAMP_AT = 35
_HEADER_BYTES = 61

_STATE_SUFFIX = b"s"
_EPOCHS_SUFFIX = b"e"
_META_FORMAT = b"format_version"
_META_NEXT_ID = b"next_partition_id"
_LOCK_FILE = "kraft-log.lock"


class StorageError(Exception):
    """The store could not do what was asked (disk full, I/O error, closed); the message says why."""


class PartitionDeletedError(StorageError):
    """The partition behind this handle has been deleted."""


class OffsetOutOfRangeError(Exception):
    """A read asked for an offset outside [log_start_offset, log_end_offset]."""


class AppendResult(NamedTuple):
    base_offset: int
    last_offset: int
    log_append_time_ms: int


class _State(NamedTuple):
    """Committed durable state of one partition; replaced whole, never mutated."""

    log_start_offset: int
    log_end_offset: int
    high_watermark: int
    size_bytes: int
    epochs: tuple[tuple[int, int], ...]


_EMPTY_STATE = _State(0, 0, 0, 0, ())


def _check_state(state: _State) -> None:
    assert 0 <= state.log_start_offset <= state.log_end_offset, state
    assert state.log_start_offset <= state.high_watermark <= state.log_end_offset, state
    assert state.size_bytes >= 0, state
    previous_epoch, previous_start = -1, -1
    for epoch, start in state.epochs:
        assert epoch > previous_epoch and start >= previous_start, state.epochs
        previous_epoch, previous_start = epoch, start
    assert not state.epochs or state.epochs[-1][1] <= state.log_end_offset, state


def _clamp(value: int, low: int, high: int) -> int:
    return low if value < low else high if value > high else value


# -- ops: what callers put on the writer's queue ----------------------------------------


class _Op:
    __slots__ = ("future",)
    size_bytes = 0

    def __init__(self) -> None:
        self.future: concurrent.futures.Future = concurrent.futures.Future()
        # Once queued, the op will run: a caller can no longer cancel it.
        self.future.set_running_or_notify_cancel()


class _Append(_Op):
    __slots__ = ("log", "batch", "leader_epoch", "assign_offsets", "size_bytes")

    def __init__(self, log: PartitionLog, batch: bytes | memoryview, leader_epoch: int,
                 assign_offsets: bool) -> None:
        super().__init__()
        self.log = log
        self.batch = batch
        self.leader_epoch = leader_epoch
        self.assign_offsets = assign_offsets
        self.size_bytes = len(batch)


class _Truncate(_Op):
    __slots__ = ("log", "offset")

    def __init__(self, log: PartitionLog, offset: int) -> None:
        super().__init__()
        self.log = log
        self.offset = offset


class _TruncateFully(_Op):
    __slots__ = ("log", "offset")

    def __init__(self, log: PartitionLog, offset: int) -> None:
        super().__init__()
        self.log = log
        self.offset = offset


class _DeletePrefix(_Op):
    __slots__ = ("log", "offset")

    def __init__(self, log: PartitionLog, offset: int) -> None:
        super().__init__()
        self.log = log
        self.offset = offset


class _Barrier(_Op):
    """Writes nothing: completes once every op queued before it has been committed."""

    __slots__ = ()


class _OpenPartition(_Op):
    __slots__ = ("topic", "partition")

    def __init__(self, topic: str, partition: int) -> None:
        super().__init__()
        self.topic = topic
        self.partition = partition


class _DeletePartition(_Op):
    __slots__ = ("log",)

    def __init__(self, log: PartitionLog) -> None:
        super().__init__()
        self.log = log


_STOP = object()


class _Rejected(Exception):
    """Raised inside the writer when one op's precondition fails; carries the caller's error."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


_TailEntry = tuple[int, int, bytes]  # (base offset, next offset, the stored batch)


def _stamped(batch: bytes | memoryview, base_offset: int, leader_epoch: int) -> bytes:
    """The batch with base offset and leader epoch set, as one new immutable ``bytes`` (the
    CRC does not cover either field)."""
    view = memoryview(batch)
    return b"".join((_I64.pack(base_offset), view[_BATCH_LENGTH_AT:_LEADER_EPOCH_AT],
                     _I32.pack(leader_epoch), view[_LEADER_EPOCH_AT + 4:]))


class _Draft:
    """What one write transaction changes, kept aside until it commits."""

    def __init__(self, store: LogStore) -> None:
        self.states: dict[int, _State] = {}
        self.logs: dict[int, PartitionLog] = {}  # pid -> handle, for every pid in states
        self.epochs_changed: set[int] = set()
        self.created: dict[tuple[str, int], PartitionLog] = {}
        self.deleted: dict[int, PartitionLog] = {}
        self.next_partition_id = store._next_partition_id
        # For the tail cache: batches appended per pid (a run ending at the new log end),
        # and the partitions whose cached run is no longer the end of their log.
        self.appended: dict[int, list[_TailEntry]] = {}
        self.tail_reset: dict[int, PartitionLog] = {}

    def reset_tail(self, log: PartitionLog) -> None:
        self.tail_reset[log.pid] = log
        self.appended.pop(log.pid, None)

    def state(self, log: PartitionLog) -> _State:
        if log._deleted or log.pid in self.deleted:
            raise _Rejected(PartitionDeletedError(f"partition {log.name} has been deleted"))
        state = self.states.get(log.pid)
        return log._state if state is None else state

    def put(self, log: PartitionLog, state: _State) -> None:
        self.states[log.pid] = state
        self.logs[log.pid] = log


# -- the reader/resizer gate ------------------------------------------------------------


class _ResizeGate:
    """Shared for readers, exclusive for the map resize (which invalidates open transactions)."""

    def __init__(self) -> None:
        self._condition = threading.Condition(threading.Lock())
        self._readers = 0
        self._exclusive = False

    def acquire_shared(self) -> None:
        with self._condition:
            while self._exclusive:
                self._condition.wait()
            self._readers += 1

    def release_shared(self) -> None:
        with self._condition:
            self._readers -= 1
            if self._exclusive and not self._readers:
                self._condition.notify_all()

    def acquire_exclusive(self) -> None:
        with self._condition:
            while self._exclusive:
                self._condition.wait()
            self._exclusive = True
            while self._readers:
                self._condition.wait()

    def release_exclusive(self) -> None:
        with self._condition:
            self._exclusive = False
            self._condition.notify_all()


# -- the store ----------------------------------------------------------------------------


class LogStore:
    """One LMDB environment per node holding every partition's batches and state."""

    def __init__(self, path: str | os.PathLike, *, sync: bool = True,
                 map_size_bytes: int = 1 << 30, map_size_max_bytes: int = 1 << 40) -> None:
        if map_size_bytes <= 0 or map_size_max_bytes < map_size_bytes:
            raise ValueError("need 0 < map_size_bytes <= map_size_max_bytes")
        self.path = os.fspath(path)
        self.sync = sync
        self.map_size_max_bytes = map_size_max_bytes
        self.transactions_committed = 0
        os.makedirs(self.path, exist_ok=True)
        # One writer per directory: a second process would assign the same offsets. The
        # kernel drops the lock when the process dies, kill -9 included.
        self._lock_fd = os.open(os.path.join(self.path, _LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock_fd)
            raise StorageError(f"log store at {self.path} is in use by another LogStore") from exc
        try:
            self._open_env(map_size_bytes, sync)
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._lock = threading.Lock()  # guards _logs, _closed, _dirty_high_watermarks, tails
        self._logs: dict[tuple[str, int], PartitionLog] = {}
        self._dirty_high_watermarks: set[PartitionLog] = set()
        self._tail_order: collections.deque[tuple[PartitionLog, _TailEntry]] = collections.deque()
        self._tail_bytes = 0
        self._closed = False  # no more ops accepted
        self._env_open = True
        self._gate = _ResizeGate()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._carry: _Op | None = None
        self._next_partition_id = 0
        try:
            self._load()
        except BaseException:
            self._env.close()
            os.close(self._lock_fd)
            raise
        self._writer = threading.Thread(target=self._writer_main, name=f"log-writer {self.path}",
                                        daemon=True)
        self._writer.start()
        logger.info("opened log store at %s with %d partitions (sync=%s, map %d bytes)",
                    self.path, len(self._logs), sync, self._map_size_bytes)

    def _open_env(self, map_size_bytes: int, sync: bool) -> None:
        try:
            self._env = lmdb.open(
                self.path, map_size=map_size_bytes, max_dbs=NAMED_DATABASES_MAX,
                max_readers=READERS_MAX, sync=sync, metasync=sync, writemap=False,
                readahead=False,
            )
            with self._env.begin(write=True) as txn:
                self._batches_db = self._env.open_db(b"batches", txn=txn)
                self._state_db = self._env.open_db(b"partition_state", txn=txn)
                self._ids_db = self._env.open_db(b"partition_ids", txn=txn)
                self._meta_db = self._env.open_db(b"meta", txn=txn)
                stored = txn.get(_META_FORMAT, db=self._meta_db)
                if stored is None:
                    txn.put(_META_FORMAT, _PARTITION_ID.pack(FORMAT_VERSION), db=self._meta_db)
                elif _PARTITION_ID.unpack(stored)[0] != FORMAT_VERSION:
                    raise StorageError(
                        f"{self.path} holds log format {_PARTITION_ID.unpack(stored)[0]}, "
                        f"this build reads format {FORMAT_VERSION}"
                    )
        except BaseException as exc:
            if hasattr(self, "_env"):
                self._env.close()
            if isinstance(exc, lmdb.Error):
                raise StorageError(f"cannot open log store at {self.path}: {exc}") from exc
            raise
        self._map_size_bytes = self._env.info()["map_size"]

    # -- public API ------------------------------------------------------------------------

    @property
    def map_size_bytes(self) -> int:
        return self._map_size_bytes

    def open_partition(self, topic: str, partition: int) -> PartitionLog:
        """Return the partition's log, creating it durably first if it does not exist."""
        with self._lock:
            log = self._logs.get((topic, partition))
        if log is not None and not log._deleting:
            return log
        if threading.current_thread() is self._writer:
            raise RuntimeError("open_partition would wait on the writer thread from itself")
        op = _OpenPartition(topic, partition)
        self._submit(op)
        return op.future.result()

    def get_partition(self, topic: str, partition: int) -> PartitionLog | None:
        with self._lock:
            log = self._logs.get((topic, partition))
        return None if log is None or log._deleting else log

    def partitions(self) -> dict[tuple[str, int], PartitionLog]:
        with self._lock:
            return {key: log for key, log in self._logs.items() if not log._deleting}

    def delete_partition(self, topic: str, partition: int) -> concurrent.futures.Future[None]:
        """Delete the partition's batches and state; its handles then refuse every call."""
        with self._lock:
            log = self._logs.get((topic, partition))
        if log is None:
            done: concurrent.futures.Future[None] = concurrent.futures.Future()
            done.set_result(None)
            return done
        log._deleting = True
        op = _DeletePartition(log)
        self._submit(op)
        return op.future

    def close(self) -> None:
        """Complete pending writes, stop the writer, close the environment. Idempotent."""
        if threading.current_thread() is self._writer:
            raise RuntimeError("close() would wait on the writer thread from itself")
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._writer.join()
        self._gate.acquire_exclusive()
        try:
            self._env_open = False
            self._env.close()
        finally:
            self._gate.release_exclusive()
            os.close(self._lock_fd)
        logger.info("closed log store at %s", self.path)

    def __enter__(self) -> LogStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- callers' side -----------------------------------------------------------------------

    def _submit(self, op: _Op) -> None:
        with self._lock:
            if not self._closed:
                self._queue.put(op)
                return
        op.future.set_exception(StorageError(f"log store at {self.path} is closed"))

    def _mark_high_watermark_dirty(self, log: PartitionLog, offset: int) -> None:
        with self._lock:
            state = log._state
            log._high_watermark = _clamp(offset, state.log_start_offset, state.log_end_offset)
            self._dirty_high_watermarks.add(log)

    @contextlib.contextmanager
    def _reading(self) -> Iterator[lmdb.Transaction]:
        self._gate.acquire_shared()
        try:
            if not self._env_open:
                raise StorageError(f"log store at {self.path} is closed")
            with self._env.begin(buffers=True) as txn:
                yield txn
        finally:
            self._gate.release_shared()

    # -- loading -----------------------------------------------------------------------------

    def _load(self) -> None:
        with self._env.begin(buffers=True) as txn:
            raw = txn.get(_META_NEXT_ID, db=self._meta_db)
            self._next_partition_id = 0 if raw is None else _PARTITION_ID.unpack(raw)[0]
            cursor = txn.cursor(db=self._ids_db)
            for key, value in cursor.iternext():
                topic, partition = msgpack.unpackb(key)
                pid = _PARTITION_ID.unpack(value)[0]
                assert pid < self._next_partition_id, (pid, self._next_partition_id)
                state = self._read_state(txn, pid)
                log = PartitionLog(self, topic, partition, pid, state)
                self._check_ends(txn, log)
                self._logs[(topic, partition)] = log

    def _read_state(self, txn: lmdb.Transaction, pid: int) -> _State:
        prefix = _PARTITION_ID.pack(pid)
        raw = txn.get(prefix + _STATE_SUFFIX, db=self._state_db)
        if raw is None:
            raise StorageError(f"log store at {self.path}: partition id {pid} has no state")
        raw_epochs = txn.get(prefix + _EPOCHS_SUFFIX, db=self._state_db)
        epochs = () if raw_epochs is None else tuple(
            (e, s) for e, s in msgpack.unpackb(raw_epochs))
        log_start_offset, log_end_offset, high_watermark, size_bytes = _STATE.unpack(raw)
        state = _State(log_start_offset, log_end_offset, high_watermark, size_bytes, epochs)
        _check_state(state)
        return state

    def _check_ends(self, txn: lmdb.Transaction, log: PartitionLog) -> None:
        """The first and last stored batches agree with the stored offsets."""
        state = log._state
        cursor = txn.cursor(db=self._batches_db)
        first = _first_batch(cursor, log.pid)
        if first is None:
            ok = state.log_start_offset == state.log_end_offset and state.size_bytes == 0
        else:
            base, value = first
            ok = base <= state.log_start_offset < _next_offset(base, value)
            cursor.set_range(_BATCH_KEY.pack(log.pid + 1, 0)) or cursor.last()
            if _BATCH_KEY.unpack(cursor.key())[0] != log.pid:
                cursor.prev()
            last_base = _BATCH_KEY.unpack(cursor.key())[1]
            ok = ok and _next_offset(last_base, cursor.value()) == state.log_end_offset
        if not ok:
            raise StorageError(f"log store at {self.path}: stored batches of {log.name} "
                               f"disagree with its state {state}")

    # -- the writer thread ------------------------------------------------------------------

    def _writer_main(self) -> None:
        interval_s = HIGH_WATERMARK_CHECKPOINT_INTERVAL_MS / 1000
        while True:
            ops, stop = self._take_ops(interval_s)
            with self._lock:
                dirty = bool(self._dirty_high_watermarks)
            if ops or dirty:
                self._commit(ops)
            if stop:
                return

    def _take_ops(self, timeout_s: float) -> tuple[list[_Op], bool]:
        """Everything pending, within the per-transaction limits; waits for the first op."""
        if self._carry is not None:
            first: object = self._carry
            self._carry = None
        else:
            try:
                first = self._queue.get(timeout=timeout_s)
            except queue.Empty:
                return [], False
        if first is _STOP:
            return [], True
        ops: list[_Op] = [first]  # type: ignore[list-item]
        total_bytes = ops[0].size_bytes
        while len(ops) < OPS_PER_TRANSACTION_MAX:
            try:
                op = self._queue.get_nowait()
            except queue.Empty:
                break
            if op is _STOP:
                return ops, True
            if total_bytes + op.size_bytes > TRANSACTION_BYTES_MAX:
                self._carry = op
                break
            ops.append(op)
            total_bytes += op.size_bytes
        return ops, False

    def _commit(self, ops: list[_Op]) -> None:
        while True:
            with self._lock:
                dirty = self._dirty_high_watermarks
                self._dirty_high_watermarks = set()
            draft = _Draft(self)
            now_ms = int(time.time() * 1000)
            txn = self._env.begin(write=True, buffers=True)
            try:
                cursor = txn.cursor(db=self._batches_db)
                outcomes = [self._apply(op, txn, cursor, draft, now_ms) for op in ops]
                self._write_states(txn, draft, dirty)
                txn.commit()
            except lmdb.MapFullError:
                txn.abort()
                self._restore_dirty(dirty)
                if self._grow_map():
                    continue
                self._fail(ops, StorageError(
                    f"log store at {self.path} is full: the LMDB map reached its limit of "
                    f"{self.map_size_max_bytes} bytes (map_size_max_bytes)"))
                return
            except lmdb.Error as exc:
                txn.abort()
                self._restore_dirty(dirty)
                cause = self._describe_failure(exc, sum(op.size_bytes for op in ops))
                logger.error("log store at %s: transaction of %d ops failed: %s: %s",
                             self.path, len(ops), cause, exc)
                self._fail(ops, StorageError(
                    f"log store at {self.path}: {cause} while committing {len(ops)} ops: {exc}"))
                return
            except BaseException as exc:
                txn.abort()
                self._restore_dirty(dirty)
                logger.exception("log store at %s: transaction of %d ops aborted by a bug",
                                 self.path, len(ops))
                self._fail(ops, exc)
                return
            self._install(draft, dirty)
            self.transactions_committed += 1
            for op, outcome in zip(ops, outcomes):
                if isinstance(outcome, _Rejected):
                    op.future.set_exception(outcome.error)
                else:
                    op.future.set_result(outcome)
            return

    def _describe_failure(self, exc: lmdb.Error, transaction_bytes: int) -> str:
        """Name the cause of a failed commit. LMDB reports a write cut short by a full disk
        as EIO, not ENOSPC, so the free space of the filesystem decides."""
        try:
            stats = os.statvfs(self.path)
            free_bytes = stats.f_bavail * stats.f_frsize
        except OSError:
            free_bytes = -1
        if isinstance(exc, lmdb.DiskError) or \
                0 <= free_bytes < transaction_bytes + DISK_FULL_HEADROOM_BYTES:
            return f"disk full (no space left on device, {free_bytes} bytes free)"
        return "I/O error"

    def _restore_dirty(self, dirty: set[PartitionLog]) -> None:
        with self._lock:
            self._dirty_high_watermarks |= dirty

    @staticmethod
    def _fail(ops: list[_Op], error: BaseException) -> None:
        for op in ops:
            op.future.set_exception(error)

    def _grow_map(self) -> bool:
        if self._map_size_bytes >= self.map_size_max_bytes:
            return False
        new_size = min(self._map_size_bytes * MAP_GROWTH_FACTOR, self.map_size_max_bytes)
        self._gate.acquire_exclusive()
        try:
            self._env.set_mapsize(new_size)
        finally:
            self._gate.release_exclusive()
        logger.info("log store at %s: grew the LMDB map from %d to %d bytes",
                    self.path, self._map_size_bytes, new_size)
        self._map_size_bytes = self._env.info()["map_size"]
        return True

    def _apply(self, op: _Op, txn: lmdb.Transaction, cursor: lmdb.Cursor, draft: _Draft,
               now_ms: int) -> object:
        try:
            if type(op) is _Append:
                return self._apply_append(op, txn, draft, now_ms)
            if type(op) is _Truncate:
                self._apply_truncate(op.log, op.offset, cursor, draft)
                return None
            if type(op) is _TruncateFully:
                self._apply_truncate_fully(op.log, op.offset, cursor, draft)
                return None
            if type(op) is _DeletePrefix:
                self._apply_delete_prefix(op.log, op.offset, cursor, draft)
                return None
            if type(op) is _OpenPartition:
                return self._apply_open_partition(op, txn, draft)
            if type(op) is _Barrier:
                return None
            if type(op) is _DeletePartition:
                self._apply_delete_partition(op.log, txn, cursor, draft)
                return None
            raise AssertionError(f"unknown op {op!r}")
        except _Rejected as rejected:
            return rejected

    def _apply_append(self, op: _Append, txn: lmdb.Transaction, draft: _Draft,
                      now_ms: int) -> AppendResult:
        log = op.log
        state = draft.state(log)
        batch = op.batch
        size = len(batch)
        if size < _HEADER_BYTES or _I32.unpack_from(batch, _BATCH_LENGTH_AT)[0] + \
                LENGTH_PREFIX_BYTES != size:
            raise _Rejected(ValueError(f"append to {log.name}: not one whole batch ({size} bytes)"))
        last_offset_delta = _I32.unpack_from(batch, _LAST_OFFSET_DELTA_AT)[0]
        if last_offset_delta < 0:
            raise _Rejected(ValueError(f"append to {log.name}: negative last offset delta"))
        base = state.log_end_offset
        if op.assign_offsets:
            epoch = op.leader_epoch
            data: bytes | bytearray | memoryview = _stamped(batch, base, epoch)
            assert _I64.unpack_from(data, 0)[0] == base
        else:
            own_base = _I64.unpack_from(batch, 0)[0]
            if own_base != base:
                raise _Rejected(ValueError(
                    f"append to {log.name}: batch base offset {own_base} is not the log end "
                    f"offset {base}"))
            epoch = _I32.unpack_from(batch, _LEADER_EPOCH_AT)[0]
            data = batch
            if epoch == NO_PARTITION_LEADER_EPOCH:
                epoch = op.leader_epoch
                data = stamp(batch, base, epoch)
        epochs = state.epochs
        if epoch < 0:
            raise _Rejected(ValueError(f"append to {log.name}: leader epoch {epoch} is negative"))
        if epochs and epoch < epochs[-1][0]:
            raise _Rejected(ValueError(
                f"append to {log.name}: leader epoch {epoch} is older than the latest "
                f"epoch {epochs[-1][0]}"))
        if not epochs or epoch > epochs[-1][0]:
            epochs = epochs + ((epoch, base),)
            draft.epochs_changed.add(log.pid)
        next_offset = base + last_offset_delta + 1
        # Before the write: the key is new (offsets are never reused).
        written = txn.put(_BATCH_KEY.pack(log.pid, base), data, db=self._batches_db,
                          overwrite=False)
        assert written, f"{log.name}: a batch already exists at offset {base}"
        draft.put(log, _State(state.log_start_offset, next_offset, state.high_watermark,
                              state.size_bytes + size, epochs))
        if type(data) is bytes:  # immutable: safe to hand to readers as is
            draft.appended.setdefault(log.pid, []).append((base, next_offset, data))
        else:
            draft.reset_tail(log)
        return AppendResult(base, next_offset - 1, now_ms)

    def _apply_truncate(self, log: PartitionLog, offset: int, cursor: lmdb.Cursor,
                        draft: _Draft) -> None:
        state = draft.state(log)
        if offset >= state.log_end_offset:
            return None
        new_end = offset
        removed_bytes = 0
        found = _position_at(cursor, log.pid, offset)
        if found is not None:
            base, value = found
            if base <= offset:
                new_end = base  # a batch straddling `offset` goes whole
            while True:
                removed_bytes += len(value)
                cursor.delete()
                item = _current(cursor, log.pid)
                if item is None:
                    break
                value = item[1]
        new_start = min(state.log_start_offset, new_end)
        draft.reset_tail(log)
        epochs = tuple(entry for entry in state.epochs if entry[1] < new_end)
        if epochs != state.epochs:
            draft.epochs_changed.add(log.pid)
        draft.put(log, state._replace(
            log_start_offset=new_start, log_end_offset=new_end,
            size_bytes=state.size_bytes - removed_bytes, epochs=epochs))
        return None

    def _apply_truncate_fully(self, log: PartitionLog, offset: int, cursor: lmdb.Cursor,
                              draft: _Draft) -> None:
        state = draft.state(log)
        if offset < 0:
            raise _Rejected(ValueError(f"truncate {log.name}: offset {offset} is negative"))
        item = _first_batch(cursor, log.pid)
        while item is not None:
            cursor.delete()
            item = _current(cursor, log.pid)
        if state.epochs:
            draft.epochs_changed.add(log.pid)
        draft.reset_tail(log)
        draft.put(log, _State(offset, offset, offset, 0, ()))
        return None

    def _apply_delete_prefix(self, log: PartitionLog, offset: int, cursor: lmdb.Cursor,
                             draft: _Draft) -> None:
        state = draft.state(log)
        new_start = max(state.log_start_offset, min(offset, state.log_end_offset))
        if new_start == state.log_start_offset:
            return None
        removed_bytes = 0
        item = _first_batch(cursor, log.pid)
        while item is not None and _next_offset(*item) <= new_start:
            removed_bytes += len(item[1])
            cursor.delete()
            item = _current(cursor, log.pid)
        draft.reset_tail(log)
        # The epoch in force at new_start now starts there; entries before it go.
        epochs = list(state.epochs)
        while len(epochs) > 1 and epochs[1][1] <= new_start:
            epochs.pop(0)
        if epochs and epochs[0][1] < new_start:
            epochs[0] = (epochs[0][0], new_start)
        draft.epochs_changed.add(log.pid)
        draft.put(log, state._replace(log_start_offset=new_start,
                                      size_bytes=state.size_bytes - removed_bytes,
                                      epochs=tuple(epochs)))
        return None

    def _apply_open_partition(self, op: _OpenPartition, txn: lmdb.Transaction,
                              draft: _Draft) -> PartitionLog:
        key = (op.topic, op.partition)
        log = draft.created.get(key)
        if log is not None:
            return log
        with self._lock:
            log = self._logs.get(key)
        if log is not None and log.pid not in draft.deleted:
            # Alive, or its deletion is queued behind this op: the caller asked first.
            return log
        pid = draft.next_partition_id
        assert pid <= PARTITION_ID_MAX, "partition ids exhausted"
        draft.next_partition_id = pid + 1
        log = PartitionLog(self, op.topic, op.partition, pid, _EMPTY_STATE)
        txn.put(msgpack.packb([op.topic, op.partition]), _PARTITION_ID.pack(pid),
                db=self._ids_db)
        draft.put(log, _EMPTY_STATE)
        draft.epochs_changed.add(pid)
        draft.created[key] = log
        return log

    def _apply_delete_partition(self, log: PartitionLog, txn: lmdb.Transaction,
                                cursor: lmdb.Cursor, draft: _Draft) -> None:
        if log._deleted or log.pid in draft.deleted:
            return None
        item = _first_batch(cursor, log.pid)
        while item is not None:
            cursor.delete()
            item = _current(cursor, log.pid)
        prefix = _PARTITION_ID.pack(log.pid)
        txn.delete(prefix + _STATE_SUFFIX, db=self._state_db)
        txn.delete(prefix + _EPOCHS_SUFFIX, db=self._state_db)
        txn.delete(msgpack.packb([log.topic, log.partition]), db=self._ids_db)
        draft.states.pop(log.pid, None)
        draft.logs.pop(log.pid, None)
        draft.epochs_changed.discard(log.pid)
        if draft.created.get((log.topic, log.partition)) is log:
            del draft.created[(log.topic, log.partition)]
        draft.deleted[log.pid] = log
        draft.reset_tail(log)
        return None

    def _write_states(self, txn: lmdb.Transaction, draft: _Draft,
                      dirty: set[PartitionLog]) -> None:
        for log in dirty:
            if log.pid not in draft.states and log.pid not in draft.deleted and not log._deleted:
                draft.put(log, log._state)
        for pid, state in draft.states.items():
            log = draft.logs[pid]
            high_watermark = _clamp(log._high_watermark, state.log_start_offset,
                                    state.log_end_offset)
            state = state._replace(high_watermark=high_watermark)
            draft.states[pid] = state
            # Before the write: the state is sound and the log start never moves back,
            # except when truncation empties the log below it.
            _check_state(state)
            assert state.log_start_offset >= log._state.log_start_offset or \
                state.log_start_offset == state.log_end_offset, (log._state, state)
            prefix = _PARTITION_ID.pack(pid)
            txn.put(prefix + _STATE_SUFFIX,
                    _STATE.pack(state.log_start_offset, state.log_end_offset,
                                state.high_watermark, state.size_bytes),
                    db=self._state_db)
            if pid in draft.epochs_changed:
                txn.put(prefix + _EPOCHS_SUFFIX, msgpack.packb(state.epochs), db=self._state_db)
        if draft.next_partition_id != self._next_partition_id:
            txn.put(_META_NEXT_ID, _PARTITION_ID.pack(draft.next_partition_id), db=self._meta_db)

    def _install(self, draft: _Draft, dirty: set[PartitionLog]) -> None:
        """Publish a committed transaction's state: only now do readers of memory see it."""
        with self._lock:
            for log in draft.deleted.values():
                log._deleted = True
                log._deleting = True
                self._dirty_high_watermarks.discard(log)
                if self._logs.get((log.topic, log.partition)) is log:
                    del self._logs[(log.topic, log.partition)]
            for pid, state in draft.states.items():
                log = draft.logs[pid]
                log._state = state
                log._high_watermark = _clamp(log._high_watermark, state.log_start_offset,
                                             state.log_end_offset)
            for key, log in draft.created.items():
                self._logs[key] = log
            self._next_partition_id = draft.next_partition_id
            self._install_tail(draft)
        for log in draft.created.values():
            logger.info("log store at %s: created partition %s (id %d)",
                        self.path, log.name, log.pid)


    def _install_tail(self, draft: _Draft) -> None:
        """Publish a committed transaction's appends to the tail cache (under ``_lock``)."""
        for log in draft.tail_reset.values():
            for entry in log._tail:
                self._tail_bytes -= len(entry[2])
            log._tail.clear()
        for pid, entries in draft.appended.items():
            if not entries:
                continue
            log = draft.logs[pid]
            tail = log._tail
            assert not tail or tail[-1][1] == entries[0][0], (log.name, tail[-1], entries[0])
            for entry in entries:
                tail.append(entry)
                self._tail_order.append((log, entry))
                self._tail_bytes += len(entry[2])
            assert tail[-1][1] == log._state.log_end_offset, (log.name, tail[-1], log._state)
        order = self._tail_order
        while order and (self._tail_bytes > TAIL_CACHE_BYTES_MAX or len(order) > TAIL_CACHE_BATCHES_MAX):
            log, entry = order.popleft()
            tail = log._tail
            if tail and tail[0] is entry:  # else a reset dropped it already
                tail.popleft()
                self._tail_bytes -= len(entry[2])


# -- cursor helpers (work in read and write transactions, buffers or not) ------------------


def _next_offset(base: int, value: bytes | memoryview) -> int:
    return base + _I32.unpack_from(value, _LAST_OFFSET_DELTA_AT)[0] + 1


def _current(cursor: lmdb.Cursor, pid: int) -> tuple[int, memoryview] | None:
    """(base offset, batch) at the cursor if it is still in partition ``pid``."""
    key = cursor.key()
    if not key:
        return None
    key_pid, base = _BATCH_KEY.unpack(key)
    if key_pid != pid:
        return None
    return base, memoryview(cursor.value())


def _first_batch(cursor: lmdb.Cursor, pid: int) -> tuple[int, memoryview] | None:
    if not cursor.set_range(_BATCH_KEY.pack(pid, 0)):
        return None
    return _current(cursor, pid)


def _position_at(cursor: lmdb.Cursor, pid: int, offset: int) -> tuple[int, memoryview] | None:
    """Put the cursor on the batch containing ``offset``, else the first batch after it."""
    if cursor.set_range(_BATCH_KEY.pack(pid, offset)):
        item = _current(cursor, pid)
        if item is not None and item[0] == offset:
            return item
        moved = cursor.prev()
    else:
        moved = cursor.last()
    if moved:
        before = _current(cursor, pid)
        if before is not None and _next_offset(*before) > offset:
            return before
        if not cursor.next():
            return None
    elif not cursor.first():
        return None
    return _current(cursor, pid)


# -- one partition ----------------------------------------------------------------------------


class PartitionLog:
    """The log of one (topic, partition). Made by ``LogStore``; safe to use from any thread.

    Worked example. Appends of 3 batches of 10 records give batches [0, 10) [10, 20) [20, 30),
    log_end_offset 30. ``read(15, ...)`` starts with the batch [10, 20). ``truncate_to(25)``
    removes [20, 30) (it straddles 25): log_end_offset 20. ``delete_prefix(5)`` makes
    log_start_offset 5 and keeps [0, 10) (it straddles 5; readers skip offsets below 5);
    ``delete_prefix(10)`` then deletes it.
    """

    def __init__(self, store: LogStore, topic: str, partition: int, pid: int,
                 state: _State) -> None:
        self.topic = topic
        self.partition = partition
        self.pid = pid
        self.name = f"{topic}-{partition}"
        self._store = store
        self._state = state
        self._state_key = _PARTITION_ID.pack(pid) + _STATE_SUFFIX
        self._high_watermark = state.high_watermark
        self._deleting = False  # delete_partition was called
        self._deleted = False  # ... and has committed
        self._tail: collections.deque[_TailEntry] = collections.deque()  # see "Tail cache"

    def __repr__(self) -> str:
        state = self._state
        return (f"PartitionLog({self.name}, start={state.log_start_offset}, "
                f"end={state.log_end_offset}, hw={self._high_watermark})")

    @property
    def log_start_offset(self) -> int:
        return self._state.log_start_offset

    @property
    def log_end_offset(self) -> int:
        return self._state.log_end_offset

    @property
    def high_watermark(self) -> int:
        return self._high_watermark

    @property
    def size_bytes(self) -> int:
        return self._state.size_bytes

    def set_high_watermark(self, offset: int) -> None:
        """Set the high watermark (clamped to the log); the checkpoint follows within
        ``HIGH_WATERMARK_CHECKPOINT_INTERVAL_MS`` or with the next transaction."""
        self._store._mark_high_watermark_dirty(self, offset)

    # -- writes ------------------------------------------------------------------------------

    def append(self, batch: bytes | memoryview, leader_epoch: int, *, assign_offsets: bool = True
               ) -> concurrent.futures.Future[AppendResult]:
        """Queue one whole, validated batch; the future completes once it is committed.

        With ``assign_offsets`` the batch gets the log end offset as base offset and
        ``leader_epoch`` as partition leader epoch. Without it (a follower copying its leader)
        the batch keeps its base offset, which must equal the log end offset (else
        ``ValueError``), and its own leader epoch (``leader_epoch`` only fills in a -1).
        """
        op = _Append(self, batch, leader_epoch, assign_offsets)
        self._store._submit(op)
        return op.future

    def barrier(self) -> concurrent.futures.Future[None]:
        """A future that completes once every write queued before this call (to any
        partition of the store) has been committed or has failed: the log end offset read
        after it includes them all. A replica that stops leading waits for it before
        deciding where to truncate, so that no append it accepted as leader lands later."""
        op = _Barrier()
        self._store._submit(op)
        return op.future

    def truncate_to(self, offset: int) -> concurrent.futures.Future[None]:
        """Remove every offset >= ``offset``; a batch straddling it goes whole."""
        op = _Truncate(self, offset)
        self._store._submit(op)
        return op.future

    def truncate_fully_and_start_at(self, offset: int) -> concurrent.futures.Future[None]:
        """Remove every batch and restart the empty log at ``offset``: log start = log end
        = ``offset``, the leader-epoch cache emptied, the high watermark clamped to it.

        A follower does this when its leader has deleted (by retention) the prefix the
        follower would fetch next; ``offset`` may be below, inside or past the old log.
        A negative ``offset`` fails the future with ``ValueError``.
        """
        op = _TruncateFully(self, offset)
        self._store._submit(op)
        return op.future

    def delete_prefix(self, offset: int) -> concurrent.futures.Future[None]:
        """Raise the log start offset to ``offset`` (bounded by the log end offset)."""
        op = _DeletePrefix(self, offset)
        self._store._submit(op)
        return op.future

    def apply_retention(self, now_ms: int, retention_ms: int, retention_bytes: int
                        ) -> concurrent.futures.Future[None] | None:
        """Delete the prefix retention allows; ``None`` when there is nothing to delete."""
        cut = retention_cut(self.batch_summaries(), now_ms, retention_ms, retention_bytes,
                            self._high_watermark)
        if cut is None or cut <= self._state.log_start_offset:
            return None
        return self.delete_prefix(cut)

    # -- reads -------------------------------------------------------------------------------

    def _snapshot_bounds(self, txn: lmdb.Transaction) -> tuple[int, int]:
        raw = txn.get(self._state_key, db=self._store._state_db)
        if raw is None:
            raise PartitionDeletedError(f"partition {self.name} has been deleted")
        log_start_offset, log_end_offset, _, _ = _STATE.unpack(raw)
        return log_start_offset, log_end_offset

    def read(self, offset: int, max_bytes: int, *, upper_offset: int | None = None) -> list[bytes]:
        """Whole batches from the one containing ``offset``, in offset order.

        Only batches whose last offset is below ``upper_offset`` (default and at most: the
        log end offset); stops before ``max_bytes`` would be exceeded, but the first batch
        is returned whole whatever its size. ``offset == log_end_offset`` gives ``[]``;
        outside [log_start_offset, log_end_offset] raises ``OffsetOutOfRangeError``.
        Any thread, concurrently with the writer: from the tail cache when it holds
        ``offset``, else one read transaction, one cursor.
        """
        store = self._store
        if self._tail and store._env_open:
            with store._lock:
                cached = self._read_tail(offset, max_bytes, upper_offset)
            if cached is not None:
                return cached
        store._gate.acquire_shared()  # inlined _reading(): this is the fetch hot path
        try:
            if not store._env_open:
                raise StorageError(f"log store at {store.path} is closed")
            txn = store._env.begin(buffers=True)
            try:
                return self._read_in(txn, offset, max_bytes, upper_offset)
            finally:
                txn.abort()
        finally:
            store._gate.release_shared()

    def _read_tail(self, offset: int, max_bytes: int, upper_offset: int | None) -> list[bytes] | None:
        """``read`` from the tail cache (under the store lock), or None when it does not
        hold ``offset`` (the caller reads LMDB, which also reports every error)."""
        tail = self._tail
        state = self._state
        if not tail or self._deleted or not tail[0][0] <= offset <= state.log_end_offset \
                or offset < state.log_start_offset:
            return None
        log_end_offset = state.log_end_offset
        upper = log_end_offset if upper_offset is None or upper_offset > log_end_offset \
            else upper_offset
        if offset >= upper:
            return []
        low, high = 0, len(tail) - 1  # find the last batch whose base is <= ``offset``
        while low < high:
            middle = (low + high + 1) // 2
            if tail[middle][0] <= offset:
                low = middle
            else:
                high = middle - 1
        first = low
        out: list[bytes] = []
        total_bytes = 0
        for index in range(first, len(tail)):
            base, next_offset, data = tail[index]
            if next_offset - 1 >= upper:
                break
            size = len(data)
            if out and total_bytes + size > max_bytes:
                break
            out.append(data)
            total_bytes += size
        return out

    def _read_in(self, txn: lmdb.Transaction, offset: int, max_bytes: int,
                 upper_offset: int | None) -> list[bytes]:
        store = self._store
        pid = self.pid
        log_start_offset, log_end_offset = self._snapshot_bounds(txn)
        if offset < log_start_offset or offset > log_end_offset:
            raise OffsetOutOfRangeError(
                f"offset {offset} is outside [{log_start_offset}, {log_end_offset}] "
                f"of {self.name}")
        upper = log_end_offset if upper_offset is None or upper_offset > log_end_offset \
            else upper_offset
        if offset >= upper:
            return []
        cursor = txn.cursor(db=store._batches_db)
        found = _position_at(cursor, pid, offset)
        assert found is not None and found[0] <= offset, (self.name, offset, found)
        out: list[bytes] = []
        total_bytes = 0
        unpack_key = _BATCH_KEY.unpack
        unpack_delta = _I32.unpack_from
        for key, value in cursor.iternext():
            key_pid, base = unpack_key(key)
            if key_pid != pid or base + unpack_delta(value, _LAST_OFFSET_DELTA_AT)[0] >= upper:
                break
            size = len(value)
            if out and total_bytes + size > max_bytes:
                break
            out.append(bytes(value))
            total_bytes += size
        return out

    def offset_for_timestamp(self, timestamp_ms: int) -> int | None:
        """Base offset (at least the log start offset) of the first batch whose max
        timestamp is >= ``timestamp_ms``; ``None`` if there is none."""
        with self._store._reading() as txn:
            log_start_offset, _ = self._snapshot_bounds(txn)
            cursor = txn.cursor(db=self._store._batches_db)
            item = _first_batch(cursor, self.pid)
            while item is not None:
                base, value = item
                if _I64.unpack_from(value, _MAX_TIMESTAMP_AT)[0] >= timestamp_ms:
                    return max(base, log_start_offset)
                if not cursor.next():
                    break
                item = _current(cursor, self.pid)
            return None

    def batch_summaries(self) -> list[BatchSummary]:
        """One summary per stored batch, oldest first (a batch straddling the log start
        offset included)."""
        out: list[BatchSummary] = []
        with self._store._reading() as txn:
            self._snapshot_bounds(txn)
            cursor = txn.cursor(db=self._store._batches_db)
            if not cursor.set_range(_BATCH_KEY.pack(self.pid, 0)):
                return out
            for key, value in cursor.iternext():
                key_pid, base = _BATCH_KEY.unpack(key)
                if key_pid != self.pid:
                    break
                out.append(BatchSummary(
                    base, _next_offset(base, value),
                    _I64.unpack_from(value, _MAX_TIMESTAMP_AT)[0], len(value)))
        return out

    def leader_epoch_entries(self) -> list[tuple[int, int]]:
        """The leader-epoch cache: (epoch, start offset), ascending."""
        return list(self._state.epochs)

    def end_offset_for_epoch(self, epoch: int) -> tuple[int, int]:
        """KIP-101: (largest known epoch <= ``epoch``, the offset where it ended); (-1, -1)
        when no known epoch is <= ``epoch``. The latest epoch ends at the log end offset."""
        state = self._state
        epochs = state.epochs
        for index in range(len(epochs) - 1, -1, -1):
            if epochs[index][0] <= epoch:
                if index == len(epochs) - 1:
                    return epochs[index][0], state.log_end_offset
                return epochs[index][0], epochs[index + 1][1]
        return -1, -1

    def verify(self) -> None:
        """Full scan: stored batches are dense and agree with the state. For tests and tools."""
        with self._store._reading() as txn:
            raw = txn.get(self._state_key, db=self._store._state_db)
            if raw is None:
                raise PartitionDeletedError(f"partition {self.name} has been deleted")
            log_start_offset, log_end_offset, high_watermark, size_bytes = _STATE.unpack(raw)
            cursor = txn.cursor(db=self._store._batches_db)
            expected = None
            total_bytes = 0
            item = _first_batch(cursor, self.pid)
            if item is not None:
                assert item[0] <= log_start_offset, (self.name, item[0], log_start_offset)
            while item is not None:
                base, value = item
                assert expected is None or base == expected, (self.name, base, expected)
                assert _I64.unpack_from(value, 0)[0] == base, (self.name, base)
                expected = _next_offset(base, value)
                total_bytes += len(value)
                if not cursor.next():
                    break
                item = _current(cursor, self.pid)
            assert (expected if expected is not None else log_start_offset) == log_end_offset, \
                (self.name, expected, log_end_offset)
            assert expected is None or expected > log_start_offset, (self.name, expected)
            assert total_bytes == size_bytes, (self.name, total_bytes, size_bytes)
            assert log_start_offset <= high_watermark <= log_end_offset
