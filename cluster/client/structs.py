"""The small value types the client hands to and takes from applications.

They are NamedTuples (cheap to build by the million, hashable, comparable) except the
admin descriptions, which are frozen dataclasses, and ``PartitionRecords``, the read-only
sequence of ``ConsumerRecord`` that ``Consumer.poll`` returns for each partition.
"""

from __future__ import annotations

import bisect
import itertools
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, NamedTuple, overload

if TYPE_CHECKING:
    from storage.batch import RecordColumns


class TopicPartition(NamedTuple):
    topic: str
    partition: int


class ConsumerRecord(NamedTuple):
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]


class PartitionRecords(Sequence[ConsumerRecord]):
    """The records ``poll`` returned for one partition: a read-only sequence of
    ``ConsumerRecord`` that behaves as the list it stands for (``len``, repeated iteration,
    ``[i]``, ``[-1]``, slices (lists), ``bool``, ``in``, ``index``, ``count``, ``==`` with a
    list of records or another ``PartitionRecords``, ``list(...)``, ``+`` with a list).

    Theory of operation
    -------------------
    It holds the decoded batches as ``storage.batch.RecordColumns`` (offsets, timestamps,
    keys, values, headers: a few objects per batch) and builds each ``ConsumerRecord`` when
    it is read: iteration builds them in C, so a loop that drops each record after looking
    at it leaves nothing for the cyclic garbage collector to walk. (A list of a hundred
    thousand records, each a tracked tuple, was walked by the collector's first passes
    after every poll and promoted to the older generations: ~18 % of the consumer's CPU.)
    Reading the same record twice builds two equal records. ``_starts[i]`` is the place of
    the first record of ``_chunks[i]``; the columns are never changed.

    Worked example: a poll that took offsets 8..9 (the end of one batch) and 10..12 (the
    start of the next) holds two chunks with ``_starts == [0, 2]``; ``records[3]`` is the
    record at place 1 of the second chunk, offset 11.
    """

    __slots__ = ("topic", "partition", "_chunks", "_starts", "_length")

    def __init__(self, topic: str, partition: int, chunks: list[RecordColumns]) -> None:
        self.topic = topic
        self.partition = partition
        self._chunks = chunks
        starts = []
        length = 0
        for chunk in chunks:
            starts.append(length)
            length += len(chunk)
        self._starts = starts
        self._length = length

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[ConsumerRecord]:
        chunks = self._chunks
        prefix = (self.topic, self.partition)
        if len(chunks) == 1:
            return chunks[0].build(ConsumerRecord, prefix)
        return itertools.chain.from_iterable(chunk.build(ConsumerRecord, prefix) for chunk in chunks)

    def __reversed__(self) -> Iterator[ConsumerRecord]:
        return reversed(list(self))

    @overload
    def __getitem__(self, index: int) -> ConsumerRecord: ...

    @overload
    def __getitem__(self, index: slice) -> list[ConsumerRecord]: ...

    def __getitem__(self, index: int | slice) -> ConsumerRecord | list[ConsumerRecord]:
        if isinstance(index, slice):
            return self._slice(index)
        index = operator.index(index)  # a TypeError for what is not an integer, as a list's
        length = self._length
        if index < 0:
            index += length
        if not 0 <= index < length:
            raise IndexError("PartitionRecords index out of range")
        i = bisect.bisect_right(self._starts, index) - 1
        return self._chunks[i].record(index - self._starts[i], ConsumerRecord, (self.topic, self.partition))

    def _slice(self, index: slice) -> list[ConsumerRecord]:
        places = range(self._length)[index]
        if places.step != 1:
            return [self[i] for i in places]
        start, stop = places.start, places.stop
        prefix = (self.topic, self.partition)
        out: list[ConsumerRecord] = []
        for chunk, chunk_start in zip(self._chunks, self._starts):
            chunk_stop = chunk_start + len(chunk)
            if chunk_stop <= start or chunk_start >= stop:
                continue
            low = max(start, chunk_start) - chunk_start
            high = min(stop, chunk_stop) - chunk_start
            part = chunk if low == 0 and high == len(chunk) else chunk.slice(low, high)
            out.extend(part.build(ConsumerRecord, prefix))
        return out

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, PartitionRecords)):
            return len(self) == len(other) and list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # as a list's: equality follows the contents

    def __add__(self, other: object) -> list[ConsumerRecord]:
        if isinstance(other, (list, PartitionRecords)):
            return list(self) + list(other)
        return NotImplemented

    def __radd__(self, other: object) -> list[ConsumerRecord]:
        if isinstance(other, list):
            return other + list(self)
        return NotImplemented

    def __reduce__(self) -> tuple[Any, ...]:
        return (list, (list(self),))  # a copy or a pickle is the plain list

    def __repr__(self) -> str:
        return repr(list(self))


class RecordMetadata(NamedTuple):
    """Where an acknowledged record was written. ``offset`` is -1 when acks=0."""

    topic: str
    partition: int
    offset: int
    timestamp: int


class OffsetAndTimestamp(NamedTuple):
    offset: int
    timestamp: int


class OffsetAndMetadata(NamedTuple):
    """A committed offset: the offset of the next record to read, with optional metadata."""

    offset: int
    metadata: str | None = None
    leader_epoch: int = -1


class BrokerInfo(NamedTuple):
    node_id: int
    host: str
    port: int
    rack: str | None = None


@dataclass(frozen=True)
class NewTopic:
    name: str
    num_partitions: int = -1
    replication_factor: int = -1
    configs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PartitionDescription:
    partition: int
    leader: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]
    leader_epoch: int = -1
    offline_replicas: tuple[int, ...] = ()


@dataclass(frozen=True)
class TopicDescription:
    name: str
    partitions: tuple[PartitionDescription, ...]
    is_internal: bool = False


@dataclass(frozen=True)
class BrokerStatus:
    node_id: int
    host: str
    port: int
    rack: str | None
    fenced: bool


@dataclass(frozen=True)
class ClusterDescription:
    """What DescribeCluster answers: every registered broker (fenced or not), the active
    controller (-1 when unknown) and the answering node's view of the metadata quorum
    (``None`` on a single node without one)."""

    cluster_id: str
    controller_id: int
    brokers: tuple[BrokerStatus, ...]
    raft: dict[str, Any] | None = None


@dataclass(frozen=True)
class GroupListing:
    """One line of ListGroups: ``state`` is "empty", "assigning", "reconciling" or "stable"."""

    group_id: str
    state: str
    member_count: int


@dataclass(frozen=True)
class MemberDescription:
    member_id: str
    instance_id: str | None
    client_id: str
    member_epoch: int
    assignment: tuple[TopicPartition, ...]
    target_assignment: tuple[TopicPartition, ...] = ()
    subscribed_topic_names: tuple[str, ...] = ()
    subscribed_topic_regex: str | None = None


@dataclass(frozen=True)
class GroupPartitionLag:
    """Where a group stands on one partition. ``committed_offset`` is -1 when the group has
    committed nothing there; ``log_end_offset`` and ``lag`` are -1 when the partition's end
    could not be looked up (a deleted topic). Without a commit, the lag counts from the log
    start, since that is what a consumer with ``auto_offset_reset="earliest"`` would read."""

    topic: str
    partition: int
    committed_offset: int
    log_end_offset: int
    lag: int
    member_id: str | None = None


@dataclass(frozen=True)
class GroupDescription:
    group_id: str
    state: str
    group_epoch: int
    assignment_epoch: int
    members: tuple[MemberDescription, ...]
    partitions: tuple[GroupPartitionLag, ...]

    @property
    def total_lag(self) -> int:
        return sum(p.lag for p in self.partitions if p.lag > 0)
