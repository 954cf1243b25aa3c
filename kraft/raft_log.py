"""The replicated metadata log: a pysyncobj Raft group whose leader is the active controller.

Theory of operation
-------------------
``RaftMetadataLog`` is the ``kraft.quorum.MetadataLog`` of a node that is one of several
voters (DESIGN.md §4). Every voter runs one pysyncobj ``SyncObj`` on its own Raft port; the
Raft leader is the active controller, the only node that appends. What this module owns:

* the command format (``encode_command``) and the deterministic apply step
  (``apply_command``), both pure;
* the current ``MetadataImage`` of this voter and its subscribers;
* the ``SyncObj`` and the one thread that drives it ("the tick thread"): every network
  event, every apply and every subscriber call happens on that thread;
* the durability of pysyncobj's files in ``data_dir``.

Data flow of one append, on the leader::

    append(records)                       caller's thread
      validate against the tail image      (ValueError: nothing proposed)
      command = msgpack [1, base_offset, [record bytes, ...]]
      SyncObj._applyCommand(command)       queued; the tick thread wakes up
    tick thread: journal.add, append_entries to followers; fsync at the end of the tick
    followers: journal.add; at the end of their tick one fsync, then the acknowledgements
    tick thread: majority acknowledged -> committed -> apply_command on every voter
      apply: base_offset == image.offset and image.apply(records) succeeds
             -> new image, subscribers called with (old, new)
             otherwise the command is skipped (logged) identically on every voter
    append returns the image that includes the records (or raises, see below)

Only msgpack bytes enter the replicated log: the replicated method takes one ``bytes``
argument (pysyncobj wraps it with its own method number). Applying never reads a clock or
randomness. A command carries the image offset it was validated against (``base_offset``);
it applies only on exactly that image, so a command decided on a stale image (a deposed
leader, a command forwarded across a leader change, a timed-out append that commits late)
is skipped by every voter rather than applied to a state nobody validated it against.
Appends may be pipelined: the leader validates a new append against its "tail" (the image
after its own appends still in flight); any failure resets the tail to the applied image,
and the in-flight commands built on the failed one are skipped by the base-offset check.

Errors of ``append``: ``ValueError`` (the records do not fit the image; nothing proposed),
``NotControllerError`` (this voter is not the leader; carries the leader's node id when
known), ``CommandSkippedError`` (committed but skipped: definitely not applied; decide
again on the new image), ``MetadataLogError`` (timeout or leader change: the outcome is
unknown, the records may still be applied later).

Subscribers run on the tick thread, in apply order, and must be quick: while they run this
voter neither applies nor answers its peers. They must not call ``append`` (refused with
``MetadataLogError``: it would wait for the thread it blocks). Subscribe first, then read
``image``: every change after ``subscribe`` returned reaches the callback.

Readiness
---------
``wait_ready`` (and ``status.ready``) says that this voter's image holds everything that
was committed when the current leader was elected, so the node may act on it. A voter
becomes ready in term T once a leader of T is known, it has applied an entry of term T,
and it has applied at least up to the commit index the leader sent in T; it stays ready
until the term changes or the leader is lost (later lag is ordinary replication lag).

The commit index alone cannot be trusted. pysyncobj saves it with the term only about once
a second, so after every voter is killed each reopens at a stale commit index, and the
first leader of the new term starts from its own stale index too, and its heartbeats
would tell followers that an image hundreds of records behind is complete (300 appends in
under a second, then kill -9 of all three voters: they reopen at offsets such as 128, 180
and 242, and a follower trusting the commit index is ready at 180 of 300). The term
check closes that hole with Raft's own rule: a new leader first appends a no-op, and an
entry of the current term commits only together with every entry before it. The first
entry of term T in any voter's log is that no-op, so having applied an entry of term T
means nothing committed before the election is missing. On the leader the same test means
its no-op is committed and applied, so ``append`` validates against a complete image.

Hardening of pysyncobj (0.3.17)
-------------------------------
* The Raft port listens only on ``bind_address`` (pysyncobj listens on 0.0.0.0 unless
  ``bindAddress`` is given); a wildcard bind address is refused.
* ``password`` is mandatory. pysyncobj's transport unpickles every frame it receives; with
  a password every frame is a Fernet token (AES-CBC + HMAC-SHA256, key from PBKDF2), and a
  frame that fails authentication closes the connection before anything is unpickled.
  That needs ``cryptography`` (pinned: cryptography==50.0.2).
* Snapshots ("full dumps") are written and read by ``kraft.raft_snapshot`` as msgpack
  with a CRC, through pysyncobj's ``serializer``/``deserializer`` hooks; pysyncobj's
  default pickles the state machine object.
* Durability. pysyncobj writes its journal through ``mmap`` and its term/vote file with
  plain writes, and never fsyncs either. A killed process loses nothing (the page cache
  survives it); power loss or a kernel crash could lose entries a follower has already
  acknowledged, or a vote, and two such voters could then elect a leader that lacks an
  acknowledged entry. With ``journal_fsync`` (the default) this module wraps pysyncobj's
  journal and transport (``_DurableJournal``, ``_send_durably``): every message a voter
  sends about its log (acknowledgements, votes, anything but the leader's own
  append_entries) is held until the end of the tick, when one msync of the journal covers
  every entry received in that tick (group commit), and is then sent in order; the leader
  sends its entries at once and syncs at the end of the tick, before its next tick counts
  itself toward a commit, so its disk write overlaps the followers'. The term/vote file
  is fsynced (with its directory) whenever pysyncobj writes it. So an entry is on disk on
  a majority before it is committed, and an append returns only after that. The one
  remaining window is pysyncobj's journal compaction, which rewrites the journal in place
  (after the snapshot that covers it is durable). Cost: see the figures below.

Measured on this machine (2 cores, 3 voter processes on 127.0.0.1, password set, one
~40-byte record per command; ``python -m tests.kraft.raft_member measure --count 500
--rounds 7``, a few minutes; the machine is shared, runs vary by about a third)::

    one append at a time, p50 / p99 (appends/s)
        append_entries_use_batch=False, fsync on     2.3 ms / 3.4 ms   (~410/s)
        append_entries_use_batch=False, fsync off    1.1 ms / 2.4 ms   (~740/s)
        append_entries_use_batch=True,  fsync on      64 ms /  69 ms   (~16/s)
    appends from 8 threads (pipelined), fsync on / off     ~860/s / ~1180/s
        (fsync on, before acknowledgements were grouped per tick: ~290/s)
    failover: kill -9 of the leader until another voter accepts an append, 7 rounds
        RaftConfig defaults (tuned)                        median 0.44 s, max 0.74 s
        pysyncobj's timing defaults                        median 3.3 s,  max 4.9 s
        pysyncobj's defaults but connection_retry_ms=200   median 0.58 s, max 0.96 s
        tuned but connection_timeout_ms=1000, idle 3 s     median 0.77 s (tuned: 0.38 s)

Chosen pysyncobj settings (``RaftConfig`` defaults) and why are listed on ``RaftConfig``.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import msgpack
from pysyncobj import SyncObj, SyncObjConf, replicated
from pysyncobj.config import FAIL_REASON
from pysyncobj.journal import FileJournal

from kraft.image import MetadataImage
from kraft.quorum import ImageListener, MetadataLogError, notify_listeners
from kraft.raft_snapshot import (
    Snapshot,
    fsync_directory,
    fsync_file,
    read_snapshot,
    write_snapshot,
)
from kraft.records import MetadataRecord, decode_record, encode_record

logger = logging.getLogger(__name__)

COMMAND_VERSION = 1
COMMAND_BYTES_MAX = 8 * 1024 * 1024
RECORDS_PER_COMMAND_MAX = 100_000
JOURNAL_FILE_NAME = "raft.journal"
SNAPSHOT_FILE_NAME = "raft.snapshot"
LOCK_FILE_NAME = "raft.lock"
CLOSE_TIMEOUT_S = 10.0
_WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]", "*"}
_FAIL_REASON_NAMES = {
    value: name for name, value in vars(FAIL_REASON).items() if isinstance(value, int)
}


class NotControllerError(MetadataLogError):
    """This voter is not the Raft leader; only the active controller appends."""

    def __init__(self, message: str, controller_id: int | None) -> None:
        super().__init__(message)
        self.controller_id = controller_id


class CommandSkippedError(MetadataLogError):
    """The command was committed but did not fit the image it met; it was not applied."""


# -- the command and its deterministic apply (pure) -----------------------------------------


def encode_command(base_offset: int, records: Sequence[MetadataRecord]) -> bytes:
    """msgpack ``[COMMAND_VERSION, base_offset, [encoded record, ...]]``."""
    assert base_offset >= 0
    return msgpack.packb(
        [COMMAND_VERSION, base_offset, [encode_record(record) for record in records]],
        use_bin_type=True,
    )


def decode_command(command: object) -> tuple[int, list[MetadataRecord]]:
    """Inverse of ``encode_command``; ``ValueError`` for anything else."""
    if not isinstance(command, bytes):
        raise ValueError(f"a command is bytes, got {type(command).__name__}")
    if len(command) > COMMAND_BYTES_MAX:
        raise ValueError(f"command of {len(command)} bytes exceeds {COMMAND_BYTES_MAX}")
    try:
        values = msgpack.unpackb(command, raw=False, use_list=True, strict_map_key=True)
    except (ValueError, TypeError, OverflowError, msgpack.UnpackException) as exc:
        raise ValueError(f"command is not valid msgpack: {exc!r}") from None
    if not isinstance(values, list) or len(values) != 3:
        raise ValueError("command must be [version, base_offset, records]")
    version, base_offset, encoded = values
    if version != COMMAND_VERSION or isinstance(version, bool):
        raise ValueError(f"unsupported command version {version!r}")
    if not isinstance(base_offset, int) or isinstance(base_offset, bool) or base_offset < 0:
        raise ValueError(f"bad base offset {base_offset!r}")
    if not isinstance(encoded, list) or len(encoded) > RECORDS_PER_COMMAND_MAX:
        raise ValueError("command records must be a list within the limit")
    return base_offset, [decode_record(record) for record in encoded]


def apply_command(image: MetadataImage, command: object) -> tuple[MetadataImage, str | None]:
    """The image after ``command``, or ``(image, reason)`` when the command is skipped.

    Deterministic and total: every voter gets the same answer for the same image and
    command, and no input makes it raise.
    """
    try:
        base_offset, records = decode_command(command)
    except ValueError as exc:
        return image, f"undecodable command: {exc}"
    if base_offset != image.offset:
        return image, f"stale command: decided at offset {base_offset}, image is at {image.offset}"
    try:
        return image.apply(records), None
    except Exception as exc:  # ValueError normally; anything else must not stop apply either
        return image, f"records do not apply: {exc}"


# -- configuration --------------------------------------------------------------------------


@dataclass(frozen=True)
class RaftConfig:
    """One voter's Raft settings.

    Timing defaults were chosen by measurement on this machine (module docstring):

    * ``append_entries_use_batch=False``: a lone synchronous append is sent at once instead
      of waiting for the next batch (p50 2.3 ms instead of 64 ms).
    * ``append_entries_period_ms`` (heartbeat) 50, ``raft_min/max_timeout_ms`` 300/600: a
      dead leader is replaced after 0.3–0.6 s without heartbeats; that is 6 or more missed
      heartbeats, which leaves room for a busy 2-core machine.
    * ``connection_retry_ms`` 200 (default 5000): pysyncobj connects each pair of voters
      from one side only, and retries that connection this often. A voter restarted a few
      seconds before the next failover may not be reconnected to the other survivor yet,
      and the election then waits for the retry: with the defaults failover took
      0.5–4.9 s (median 3.3 s); with only this changed, median 0.58 s.
    * ``connection_timeout_ms`` 30000: pysyncobj drops a connection that has read nothing
      for this long at its next send. Follower-to-follower connections carry no traffic
      between elections, so with a short timeout the first vote request of an election
      closes its own connection and waits for a reconnect (measured: 0.77 s instead of
      0.38 s after 3 s idle with a 1 s timeout). Dead peers are noticed by the socket
      closing (a killed process) or by the election timeout (a silent one), not by this.
    * ``leader_fallback_timeout_ms`` 1000 (default 30000): a leader that hears from no
      majority for this long steps down, so a partitioned leader stops calling itself the
      active controller after about 1 s instead of 30 s (from the code; partitions are
      the fault suite's to measure).
    """

    node_id: int
    bind_address: str
    voters: Mapping[int, str]
    password: str
    data_dir: str
    append_timeout_ms: int = 5000
    append_entries_use_batch: bool = False
    append_entries_period_ms: int = 50
    raft_min_timeout_ms: int = 300
    raft_max_timeout_ms: int = 600
    connection_timeout_ms: int = 30_000
    connection_retry_ms: int = 200
    leader_fallback_timeout_ms: int = 1000
    tick_ms: int = 20  # the longest the tick thread waits for a socket event
    log_compaction_entries_min: int = 5000
    log_compaction_interval_ms: int = 300_000
    journal_fsync: bool = True
    _addresses: Mapping[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.node_id, int) or isinstance(self.node_id, bool) or self.node_id < 0:
            raise ValueError(f"node_id must be a non-negative integer, got {self.node_id!r}")
        if not isinstance(self.password, str) or not self.password:
            raise ValueError("password must be a non-empty string (pysyncobj unpickles "
                             "whatever reaches its port without one)")
        host, _ = _split_address(self.bind_address, "bind_address")
        if host in _WILDCARD_HOSTS:
            raise ValueError(f"bind_address {self.bind_address!r} listens on every interface; "
                             "give the one address the Raft port should listen on")
        if not self.voters:
            raise ValueError("voters must list every voter, including this one")
        addresses: dict[str, int] = {}
        for voter_id, address in self.voters.items():
            _split_address(address, f"voters[{voter_id}]")
            if address in addresses:
                raise ValueError(f"voters {addresses[address]} and {voter_id} share {address}")
            addresses[address] = voter_id
        if self.node_id not in self.voters:
            raise ValueError(f"node_id {self.node_id} is not among the voters {sorted(self.voters)}")
        if not self.data_dir:
            raise ValueError("data_dir must be set")
        for name in ("append_timeout_ms", "append_entries_period_ms", "raft_min_timeout_ms",
                     "raft_max_timeout_ms", "connection_timeout_ms", "tick_ms",
                     "leader_fallback_timeout_ms", "log_compaction_interval_ms"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.connection_retry_ms < 0:
            raise ValueError("connection_retry_ms must not be negative")
        if self.raft_min_timeout_ms <= 3 * self.append_entries_period_ms:
            raise ValueError("raft_min_timeout_ms must exceed 3 x append_entries_period_ms")
        if self.raft_max_timeout_ms <= self.raft_min_timeout_ms:
            raise ValueError("raft_max_timeout_ms must exceed raft_min_timeout_ms")
        if self.connection_timeout_ms < self.raft_max_timeout_ms:
            raise ValueError("connection_timeout_ms must be at least raft_max_timeout_ms")
        if self.leader_fallback_timeout_ms <= self.append_entries_period_ms:
            raise ValueError("leader_fallback_timeout_ms must exceed append_entries_period_ms")
        if self.log_compaction_entries_min < 2:
            raise ValueError("log_compaction_entries_min must be at least 2")
        object.__setattr__(self, "voters", dict(self.voters))
        object.__setattr__(self, "_addresses", addresses)

    @property
    def self_address(self) -> str:
        return self.voters[self.node_id]

    def voter_id(self, address: str) -> int | None:
        return self._addresses.get(address)

    def syncobj_conf(self, **hooks: Any) -> SyncObjConf:
        """pysyncobj's configuration for these settings (``hooks``: callbacks, files)."""
        return SyncObjConf(
            password=self.password,
            bindAddress=self.bind_address,
            autoTick=False,
            appendEntriesUseBatch=self.append_entries_use_batch,
            appendEntriesPeriod=self.append_entries_period_ms / 1000,
            raftMinTimeout=self.raft_min_timeout_ms / 1000,
            raftMaxTimeout=self.raft_max_timeout_ms / 1000,
            connectionTimeout=self.connection_timeout_ms / 1000,
            connectionRetryTime=self.connection_retry_ms / 1000,
            leaderFallbackTimeout=self.leader_fallback_timeout_ms / 1000,
            logCompactionMinEntries=self.log_compaction_entries_min,
            logCompactionMinTime=self.log_compaction_interval_ms / 1000,
            commandsWaitLeader=False,  # with no leader, fail at once: callers retry elsewhere
            dynamicMembershipChange=False,
            maxBindRetries=1,  # a port that cannot be bound is a configuration error
            useFork=False,
            **hooks,
        )


def _split_address(address: str, key: str) -> tuple[str, int]:
    if not isinstance(address, str) or ":" not in address:
        raise ValueError(f"{key} must be 'host:port', got {address!r}")
    host, port_text = address.rsplit(":", 1)
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{key} has a bad port: {address!r}") from None
    if not 0 < port <= 65535:
        raise ValueError(f"{key} port out of range: {address!r}")
    return host, port


# -- pysyncobj shell ------------------------------------------------------------------------


def _caught_up_in_term(sync_obj: SyncObj, term: int, last_applied: int) -> bool:
    """Whether this voter has applied an entry of ``term`` and everything up to the commit
    index the leader of ``term`` sent (the leader's own commit index on the leader).

    The first entry of a term in any log is its leader's no-op, which commits only together
    with every entry before it; so an applied entry of the current term means nothing
    committed in an earlier term is missing, whatever commit index was saved on disk."""
    leader_commit = sync_obj._SyncObj__leaderCommitIndex  # type: ignore[attr-defined]
    if leader_commit is None or last_applied < leader_commit:
        return False
    entries = sync_obj._SyncObj__getEntries(last_applied, 1)  # type: ignore[attr-defined]
    return bool(entries) and entries[0][2] == term


class _DurableJournal:
    """Wraps pysyncobj's ``FileJournal``: remembers unsynced changes (``dirty``) and syncs
    them on demand, and makes every term/vote write durable before it returns. With
    ``fsync=False`` it only passes calls through."""

    def __init__(self, journal: FileJournal, path: str, fsync: bool) -> None:
        self._journal = journal
        self._meta_path = path + ".meta"
        self._directory = os.path.dirname(os.path.abspath(path))
        self._fsync = fsync
        self.dirty = False

    def sync(self) -> None:
        if self.dirty:
            self.dirty = False
            self._journal.flush()

    # mutations ------------------------------------------------------------------
    def add(self, command: bytes, idx: int, term: int) -> None:
        self._journal.add(command, idx, term)
        self.dirty = self._fsync

    def clear(self) -> None:
        self._journal.clear()
        self.dirty = self._fsync

    def deleteEntriesFrom(self, entryFrom: int) -> None:  # noqa: N802 (pysyncobj's name)
        self._journal.deleteEntriesFrom(entryFrom)
        self.dirty = self._fsync

    def deleteEntriesTo(self, entryTo: int) -> None:  # noqa: N802
        self._journal.deleteEntriesTo(entryTo)
        self.dirty = self._fsync

    def setCurrentTerm(self, term: int, votedForNodeId: Any) -> None:  # noqa: N802
        self._journal.setCurrentTerm(term, votedForNodeId)
        if self._fsync:
            fsync_file(self._meta_path)
            fsync_directory(self._directory)

    # reads and the rest are pysyncobj's ------------------------------------------
    def __getitem__(self, item: Any) -> Any:
        return self._journal[item]

    def __len__(self) -> int:
        return len(self._journal)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._journal, name)


class _MetadataStateMachine(SyncObj):
    """The ``SyncObj`` of one voter; its only replicated method applies a command."""

    def __init__(self, apply: Callable[[bytes], object], self_address: str,
                 other_addresses: list[str], conf: SyncObjConf) -> None:
        self._apply = apply
        super().__init__(self_address, other_addresses, conf)

    @replicated
    def apply_command(self, command: bytes) -> object:
        return self._apply(command)


@dataclass(frozen=True)
class _Skipped:
    reason: str


class _PendingAppend:
    __slots__ = ("done", "image", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.image: MetadataImage | None = None
        self.error: MetadataLogError | None = None


@dataclass(frozen=True)
class RaftStatus:
    """What the tick thread last saw; read from any thread. ``ready``: see "Readiness"."""

    node_id: int
    is_leader: bool = False
    controller_id: int | None = None
    ready: bool = False
    term: int = 0
    commit_index: int = 0
    last_applied: int = 0
    offset: int = 0


def quorum_lease_holds(now_s: float, answered_s: list[float], last_tick_s: float, ticks_resumed_s: float,
                       lease_s: float) -> bool:
    """The leader-lease rule, pure: a majority of the voters (this leader, plus those whose
    last answer in ``answered_s`` is under ``lease_s`` old) AND a tick thread that has been
    ticking without a gap for at least ``lease_s``.

    pysyncobj stamps an answer with the time its tick thread *processed* it, not when it was
    sent. Answers that reached the socket just before a SIGSTOP are processed right after
    the SIGCONT and look fresh, while the voters may have elected another leader meanwhile
    (its messages still queued behind them). So the lease is refused while the tick thread
    has not ticked for ``lease_s`` (the process is paused or starved: the request handler
    may run before it) and for ``lease_s`` after it ticks again: by then a deposed leader
    has heard the newer term and stepped down.
    """
    if now_s - last_tick_s > lease_s or now_s - ticks_resumed_s < lease_s:
        return False
    since_s = now_s - lease_s
    answered = 1 + sum(1 for t in answered_s if t > since_s)
    return answered * 2 > len(answered_s) + 1


class RaftMetadataLog:
    """``MetadataLog`` replicated by a pysyncobj Raft group; see the module docstring."""

    def __init__(self, config: RaftConfig) -> None:
        self.config = config
        # Reentrant: pysyncobj may call an append's callback synchronously (queue full)
        # from inside the locked section that enqueues the command.
        self._lock = threading.RLock()
        self._tick_condition = threading.Condition()
        self._listeners: list[ImageListener] = []
        self._image = MetadataImage.EMPTY
        self._tail: MetadataImage | None = None  # image after this leader's in-flight appends
        self._pending: set[_PendingAppend] = set()
        self._failed: str | None = None
        self._closing = False
        self._closed = False
        self._status = RaftStatus(config.node_id)
        self._tick_thread: threading.Thread | None = None
        self._tick_thread_ident: int | None = None  # set by the tick thread itself
        # When the tick thread last started a tick, and when it started ticking again after
        # a gap longer than a lease (the process was paused or starved): see has_quorum_lease.
        self._last_tick_s = 0.0
        self._ticks_resumed_s = 0.0
        self._snapshot_written = False
        self._ready_term: int | None = None  # the term in which this voter caught up
        self._deferred: list[tuple[Callable[[Any, Any], bool], Any, Any]] = []

        os.makedirs(config.data_dir, exist_ok=True)
        self._journal_path = os.path.join(config.data_dir, JOURNAL_FILE_NAME)
        self._snapshot_path = os.path.join(config.data_dir, SNAPSHOT_FILE_NAME)
        self._lock_fd = os.open(os.path.join(config.data_dir, LOCK_FILE_NAME),
                                os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise MetadataLogError(f"{config.data_dir} is in use by another process") from None
            journal_created = not os.path.exists(self._journal_path)
            self._sync_obj = self._start_sync_obj()
            if journal_created and config.journal_fsync:
                fsync_directory(config.data_dir)
            # Replay what this voter already holds (snapshot + committed journal entries)
            # before returning; peers are contacted from here on.
            self._tick()
            if self._failed is not None:
                raise MetadataLogError(f"node {config.node_id}: {self._failed}")
        except BaseException:
            sync_obj = getattr(self, "_sync_obj", None)
            if sync_obj is not None:
                sync_obj.destroy()  # closes the port and the journal (autoTick is off)
            os.close(self._lock_fd)
            raise
        self._tick_thread = threading.Thread(
            target=self._run, name=f"raft-metadata-{config.node_id}", daemon=True)
        self._tick_thread.start()
        logger.info("node %d raft voter on %s (peers %s) opened at offset %d",
                    config.node_id, config.bind_address,
                    sorted(a for i, a in config.voters.items() if i != config.node_id),
                    self._image.offset)

    # -- the MetadataLog port ---------------------------------------------------------

    @property
    def image(self) -> MetadataImage:
        return self._image

    def append(self, records: Sequence[MetadataRecord]) -> MetadataImage:
        """Replicate ``records`` as one command; return once committed and applied here."""
        if threading.get_ident() == self._tick_thread_ident:
            raise MetadataLogError("a metadata subscriber must not append")
        self._check_usable()
        if len(records) > RECORDS_PER_COMMAND_MAX:
            raise ValueError(f"{len(records)} records in one append, limit {RECORDS_PER_COMMAND_MAX}")
        if not records:
            return self._image
        deadline = time.monotonic() + self.config.append_timeout_ms / 1000
        if not self._sync_obj._isLeader():
            raise self._not_controller()
        if not self.wait_ready(max(0.0, deadline - time.monotonic())):
            self._check_usable()
            if not self._sync_obj._isLeader():
                raise self._not_controller()
            raise MetadataLogError(
                f"node {self.config.node_id} is leader but has not applied the committed log "
                f"within {self.config.append_timeout_ms} ms")
        pending = _PendingAppend()
        with self._lock:
            tail = self._tail
            base = tail if tail is not None and tail.offset > self._image.offset else self._image
            new = base.apply(records)  # ValueError here means nothing was proposed
            command = encode_command(base.offset, records)
            if len(command) > COMMAND_BYTES_MAX:
                raise ValueError(f"append of {len(command)} bytes, limit {COMMAND_BYTES_MAX}")
            self._tail = new
            self._pending.add(pending)
            self._sync_obj.apply_command(
                command, callback=functools.partial(self._on_outcome, pending))
        if not pending.done.wait(max(0.0, deadline - time.monotonic())):
            self._finish(pending, error=MetadataLogError(
                f"append not committed within {self.config.append_timeout_ms} ms; "
                "it may still be applied"))
        if pending.error is not None:
            raise pending.error
        assert pending.image is not None
        return pending.image

    def subscribe(self, callback: ImageListener) -> None:
        with self._lock:
            self._listeners.append(callback)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closing = True
        if self._tick_thread is not None and self._tick_thread is not threading.current_thread():
            self._tick_thread.join(CLOSE_TIMEOUT_S)
        self._fail_pending(MetadataLogError("metadata log closed"))
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self._lock_fd)  # releases the flock
        logger.info("node %d raft voter closed at offset %d", self.config.node_id, self._image.offset)

    def __enter__(self) -> "RaftMetadataLog":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the controller's view --------------------------------------------------------

    def is_active_controller(self) -> bool:
        return self._failed is None and not self._closing and bool(self._sync_obj._isLeader())

    def has_quorum_lease(self) -> bool:
        """True while this voter leads AND a majority of the voters (itself included) has
        answered it within the last ``raft_min_timeout_ms``: no other voter can have been
        elected in that time without this one hearing a newer term from the majority first.

        Reads served from local state alone (a group coordinator's offsets) check it, so a
        leader that was paused (SIGSTOP, a long GC-like stall) and still believes it leads
        refuses instead of answering from a state a newer leader has moved past. See
        ``quorum_lease_holds`` for why the tick thread's own gaps count too."""
        if not self.is_active_controller():
            return False
        sync_obj = self._sync_obj
        others = list(sync_obj._SyncObj__otherNodes)  # pysyncobj 0.3.17 internals
        if not others:
            return True
        last_tick_s = self._last_tick_s  # read before _ticks_resumed_s: _tick writes them in the other order
        return quorum_lease_holds(time.monotonic(), [sync_obj._SyncObj__lastResponseTime.get(n, 0.0) for n in others],
                                  last_tick_s, self._ticks_resumed_s, self.config.raft_min_timeout_ms / 1000)

    def active_controller_id(self) -> int | None:
        if self._failed is not None or self._closing:
            return None
        leader = self._sync_obj._getLeader()
        return None if leader is None else self.config.voter_id(str(leader.id))

    def wait_ready(self, timeout_s: float) -> bool:
        """True once a leader is known and this voter has caught up in the current term:
        it has applied the leader's first entry of the term (its no-op) and at least up to
        the commit index the leader sent in this term. See "Readiness" in the module
        docstring. False when ``timeout_s`` passes first or the log is closed or failed."""
        deadline = time.monotonic() + timeout_s
        with self._tick_condition:
            while not self._status.ready:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._failed is not None or self._closing:
                    return False
                self._tick_condition.wait(remaining)
        return True

    @property
    def status(self) -> RaftStatus:
        return self._status

    @property
    def failed(self) -> str | None:
        return self._failed

    # -- internals: the tick thread -----------------------------------------------------

    def _start_sync_obj(self) -> _MetadataStateMachine:
        config = self.config
        conf = config.syncobj_conf(
            journalFile=self._journal_path,
            fullDumpFile=self._snapshot_path,
            serializer=self._write_snapshot,
            deserializer=self._read_snapshot,
        )
        others = [address for voter_id, address in sorted(config.voters.items())
                  if voter_id != config.node_id]
        try:
            sync_obj = _MetadataStateMachine(self._apply, config.self_address, others, conf)
        except Exception as exc:  # pysyncobj raises SyncObjException('BindError')
            raise MetadataLogError(
                f"node {config.node_id} cannot start its raft voter on {config.bind_address}: {exc!r}"
            ) from exc
        # pysyncobj 0.3.17 keeps its journal and transport in name-mangled attributes.
        journal = sync_obj._SyncObj__raftLog  # type: ignore[attr-defined]
        transport = sync_obj._SyncObj__transport  # type: ignore[attr-defined]
        assert isinstance(journal, FileJournal), type(journal)
        self._journal = _DurableJournal(journal, self._journal_path, config.journal_fsync)
        sync_obj._SyncObj__raftLog = self._journal  # type: ignore[attr-defined]
        transport.send = functools.partial(self._send_durably, transport.send)
        return sync_obj

    def _send_durably(self, send: Callable[[Any, Any], bool], node: Any, message: Any) -> bool:
        # A follower's acknowledgement (and anything else a voter says about its log) leaves
        # only once the log is on disk. Such messages are held until the tick ends, when one
        # sync covers every entry received in it (group commit), and then sent in order.
        # The leader's own entries go out at once: it syncs after the tick, before its next
        # tick counts itself toward a commit, so its disk write overlaps the followers'.
        if self._deferred or (self._journal.dirty and message.get("type") != "append_entries"):
            self._deferred.append((send, node, message))
            return True
        return send(node, message)

    def _sync_and_send_deferred(self) -> None:
        self._journal.sync()
        deferred, self._deferred = self._deferred, []
        for send, node, message in deferred:
            send(node, message)

    def _run(self) -> None:
        self._tick_thread_ident = threading.get_ident()
        failures = 0
        try:
            while not self._closing and self._failed is None:
                try:
                    self._tick()
                    failures = 0
                except OSError as exc:
                    self._fail(f"disk error: {exc!r}")
                except Exception:
                    failures += 1
                    logger.exception("node %d raft tick failed (%d in a row)",
                                     self.config.node_id, failures)
                    time.sleep(self.config.tick_ms / 1000)  # back off before retrying the tick
        finally:
            try:
                self._sync_obj.destroy()  # closes sockets and the journal (autoTick is off)
            except Exception:
                logger.exception("node %d raft voter did not shut down cleanly", self.config.node_id)
            with self._tick_condition:
                self._tick_condition.notify_all()
            self._fail_pending(MetadataLogError("metadata log closed"))

    def _tick(self) -> None:
        now_s = time.monotonic()
        if now_s - self._last_tick_s > self.config.raft_min_timeout_ms / 1000:
            self._ticks_resumed_s = now_s  # written first: has_quorum_lease reads them in the other order
        self._last_tick_s = now_s
        sync_obj = self._sync_obj
        was_leader = self._status.is_leader
        sync_obj.doTick(self.config.tick_ms / 1000)
        self._sync_and_send_deferred()
        if self._snapshot_written:
            # pysyncobj renamed the fsynced snapshot into place; make the rename durable
            # before its next tick truncates the journal the snapshot replaces.
            self._snapshot_written = False
            if self.config.journal_fsync:
                fsync_directory(self.config.data_dir)
        is_leader = bool(sync_obj._isLeader())
        if was_leader and not is_leader:
            with self._lock:
                self._tail = None
            logger.info("node %d is no longer the active controller (term %d)",
                        self.config.node_id, sync_obj.raftCurrentTerm)
        elif is_leader and not was_leader:
            logger.info("node %d became the active controller (term %d)",
                        self.config.node_id, sync_obj.raftCurrentTerm)
        leader = sync_obj._getLeader()
        last_applied = sync_obj.raftLastApplied
        term = sync_obj.raftCurrentTerm
        if leader is None:
            self._ready_term = None
        elif self._ready_term != term and _caught_up_in_term(sync_obj, term, last_applied):
            self._ready_term = term
            logger.info("node %d is ready in term %d at metadata offset %d (raft index %d)",
                        self.config.node_id, term, self._image.offset, last_applied)
        ready = leader is not None and self._ready_term == term
        status = RaftStatus(
            node_id=self.config.node_id,
            is_leader=is_leader,
            controller_id=None if leader is None else self.config.voter_id(str(leader.id)),
            ready=ready and self._failed is None,
            term=term,
            commit_index=sync_obj.raftCommitIndex,
            last_applied=last_applied,
            offset=self._image.offset,
        )
        if status != self._status:
            with self._tick_condition:
                self._status = status
                self._tick_condition.notify_all()

    def _apply(self, command: bytes) -> object:
        """The replicated method's body: runs on every voter, in log order."""
        old = self._image
        new, reason = apply_command(old, command)
        if reason is not None:
            logger.warning("node %d skipped a metadata command at offset %d: %s",
                           self.config.node_id, old.offset, reason)
            return _Skipped(reason)
        self._publish(old, new)
        return new

    def _publish(self, old: MetadataImage, new: MetadataImage) -> None:
        with self._lock:
            self._image = new
            listeners = list(self._listeners)
        notify_listeners(listeners, old, new)

    def _on_outcome(self, pending: _PendingAppend, result: object, error: int) -> None:
        """pysyncobj's callback for one append (tick thread)."""
        if error == FAIL_REASON.SUCCESS and isinstance(result, MetadataImage):
            self._finish(pending, image=result)
        elif error == FAIL_REASON.SUCCESS and isinstance(result, _Skipped):
            self._finish(pending, error=CommandSkippedError(
                f"command committed but not applied: {result.reason}"))
        elif error in (FAIL_REASON.NOT_LEADER, FAIL_REASON.MISSING_LEADER):
            self._finish(pending, error=self._not_controller())
        else:
            name = _FAIL_REASON_NAMES.get(error, str(error))
            self._finish(pending, error=MetadataLogError(
                f"append failed ({name}); it may still be applied"))

    def _finish(self, pending: _PendingAppend, image: MetadataImage | None = None,
                error: MetadataLogError | None = None) -> None:
        with self._lock:
            if pending not in self._pending:
                return  # already finished (timed out, closed)
            self._pending.discard(pending)
            if error is not None:
                self._tail = None  # later appends build on the applied image again
            pending.image, pending.error = image, error
            pending.done.set()

    def _fail_pending(self, error: MetadataLogError) -> None:
        with self._lock:
            pending_appends = list(self._pending)
        for pending in pending_appends:
            self._finish(pending, error=error)

    def _fail(self, reason: str) -> None:
        if self._failed is None:
            self._failed = reason
            logger.critical("node %d raft metadata log failed: %s", self.config.node_id, reason)

    def _check_usable(self) -> None:
        if self._closing:
            raise MetadataLogError("metadata log is closed")
        if self._failed is not None:
            raise MetadataLogError(f"metadata log failed: {self._failed}")

    def _not_controller(self) -> NotControllerError:
        controller_id = self.active_controller_id()
        if controller_id == self.config.node_id:
            controller_id = None  # leadership is moving; nobody is known to lead yet
        return NotControllerError(
            f"node {self.config.node_id} is not the active controller "
            f"(active controller: {controller_id})", controller_id)

    # -- snapshots (pysyncobj's serializer hooks, tick thread) ---------------------------

    def _write_snapshot(self, path: str, data: tuple[Any, Any, Any]) -> None:
        last_entry, previous_entry, cluster = data
        assert self._sync_obj.raftLastApplied == last_entry[1]
        write_snapshot(path, Snapshot(
            image=self._image,
            last_entry=(bytes(last_entry[0]), last_entry[1], last_entry[2]),
            previous_entry=(bytes(previous_entry[0]), previous_entry[1], previous_entry[2]),
            voters=tuple(sorted(str(node.id) for node in cluster)),
        ), fsync=self.config.journal_fsync)
        self._snapshot_written = True
        logger.info("node %d wrote a metadata snapshot at offset %d (raft index %d)",
                    self.config.node_id, self._image.offset, last_entry[1])

    def _read_snapshot(self, path: str) -> tuple[Any, Any, Any]:
        try:
            if self.config.journal_fsync:
                # A snapshot received from the leader was written without fsync.
                fsync_file(path)
                fsync_directory(self.config.data_dir)
            snapshot = read_snapshot(path)
        except (OSError, ValueError) as exc:
            # pysyncobj would log this and carry on without the state: refuse instead.
            self._fail(f"cannot load snapshot {path}: {exc}")
            raise
        old = self._image
        self._publish(old, snapshot.image)
        logger.info("node %d loaded a metadata snapshot at offset %d (raft index %d)",
                    self.config.node_id, snapshot.image.offset, snapshot.last_entry[1])
        return snapshot.last_entry, snapshot.previous_entry, list(snapshot.voters)
