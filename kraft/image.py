"""The metadata image: an immutable snapshot of cluster metadata, built by applying records.

Theory of operation
-------------------
The image is what every part of a node reads to answer "which brokers exist, which topics,
where are their partitions and who leads them". It is never edited: ``apply(records)``
returns a new image and leaves the old one untouched, so a reader holding an image sees one
consistent state for as long as it likes, with no lock (Kafka's ``MetadataImage``).

Data flow: the controller reads an image and emits records; the metadata log makes the
records durable and calls ``apply``; subscribers receive ``(old_image, new_image)`` and
reconcile what they run (partition logs, leaders, followers) against the new one.

``apply`` is a pure function of the image and the records: no clocks, no randomness, no
I/O, so every node that applies the same records in the same order holds the same image.
A record that does not fit (a topic id that is unknown, a name or id already taken, a
partition that breaks its own invariants or moves an epoch backwards) raises
``ValueError`` and the whole call has no effect; the controller never emits such records,
so this means a bug or a damaged log.

Brokers: a RegisterBrokerRecord (new, a new endpoint, or a new run of the process) leaves
the broker FENCED and sets its broker epoch to the record's metadata offset; only an
UnfenceBrokerRecord lets it lead or join an ISR, and a FenceBrokerRecord takes that back.
Fence and unfence name a registered broker.

Partitions: a PartitionRecord sets a partition's whole state (creation); a
PartitionChangeRecord moves an existing one forward by exactly one partition epoch, and
by one leader epoch exactly when the leader changes (Kafka's PartitionChangeRecord)::

    (leader 2, isr (1, 2, 3), leader_epoch 4, partition_epoch 7)
      -> PartitionChangeRecord(leader=3, isr=(1, 3), leader_epoch=5, partition_epoch=8)
      -> PartitionChangeRecord(leader=3, isr=(1, 2, 3), leader_epoch=5, partition_epoch=9)

Consumer groups (``groups``: group id -> ``kraft.groups.GroupImage``) are applied by
``kraft.groups.GroupsDelta``, to which the delta here hands every group record; removing a
topic also removes its committed offsets and its partitions from every group's
assignments, in the same apply.

``offset`` counts the records applied since the empty image. Example::

    image = MetadataImage.EMPTY.apply([TopicRecord("id-1", "orders")])
    image.offset == 1 and image.topic("orders").topic_id == "id-1"
    MetadataImage.EMPTY.topics_by_id == {}          # the old image is unchanged
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import ClassVar, Iterable, Mapping

from kraft.groups import GroupImage, GroupsDelta
from kraft.records import (
    GROUP_RECORD_TYPES,
    NO_LEADER,
    ConfigRecord,
    FenceBrokerRecord,
    MetadataRecord,
    PartitionChangeRecord,
    PartitionRecord,
    RegisterBrokerRecord,
    RemoveTopicRecord,
    TopicRecord,
    UnfenceBrokerRecord,
)


def _frozen(mapping: Mapping) -> Mapping:
    return mapping if isinstance(mapping, MappingProxyType) else MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class BrokerImage:
    broker_id: int
    host: str
    port: int
    rack: str | None
    fenced: bool = False  # True from registration until the controller unfences it
    incarnation_id: str = ""  # the registering process run (RegisterBrokerRecord)
    epoch: int = -1  # broker epoch: the metadata offset of its latest RegisterBrokerRecord


@dataclass(frozen=True)
class PartitionImage:
    partition: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]
    leader: int  # NO_LEADER (-1) when no replica can lead
    leader_epoch: int
    partition_epoch: int


@dataclass(frozen=True)
class TopicImage:
    topic_id: str
    name: str
    configs: Mapping[str, str]  # only the keys set on this topic (overrides of defaults)
    partitions: Mapping[int, PartitionImage]

    def __post_init__(self) -> None:
        object.__setattr__(self, "configs", _frozen(self.configs))
        object.__setattr__(self, "partitions", _frozen(self.partitions))


@dataclass(frozen=True)
class MetadataImage:
    brokers: Mapping[int, BrokerImage]
    topics_by_id: Mapping[str, TopicImage]
    offset: int  # number of records applied to reach this image
    groups: Mapping[str, GroupImage] = field(default_factory=dict)  # consumer groups by id
    _topics_by_name: Mapping[str, TopicImage] = field(init=False, repr=False, compare=False)

    EMPTY: ClassVar["MetadataImage"]

    def __post_init__(self) -> None:
        object.__setattr__(self, "brokers", _frozen(self.brokers))
        object.__setattr__(self, "topics_by_id", _frozen(self.topics_by_id))
        object.__setattr__(self, "groups", _frozen(self.groups))
        by_name = {topic.name: topic for topic in self.topics_by_id.values()}
        assert len(by_name) == len(self.topics_by_id), "two topics share a name"
        object.__setattr__(self, "_topics_by_name", MappingProxyType(by_name))

    @property
    def topics_by_name(self) -> Mapping[str, TopicImage]:
        return self._topics_by_name

    def topic(self, name: str) -> TopicImage | None:
        return self._topics_by_name.get(name)

    def apply(self, records: Iterable[MetadataRecord]) -> "MetadataImage":
        """Return the image after ``records``, in order; this image is not changed."""
        delta = _Delta(self)
        for record in records:
            delta.replay(record)
        return delta.build()


MetadataImage.EMPTY = MetadataImage(brokers={}, topics_by_id={}, offset=0)


class _WorkingTopic:
    """A topic being changed by a delta: plain dicts, frozen again when the delta is built."""

    def __init__(self, topic_id: str, name: str, configs: Mapping[str, str],
                 partitions: Mapping[int, PartitionImage]) -> None:
        self.topic_id = topic_id
        self.name = name
        self.configs = dict(configs)
        self.partitions = dict(partitions)

    def set_config(self, name: str, value: str | None) -> None:
        if value is None:
            self.configs.pop(name, None)
        else:
            self.configs[name] = value

    def build(self) -> TopicImage:
        return TopicImage(self.topic_id, self.name, self.configs, self.partitions)


class _Delta:
    """The changes of one ``apply`` call, copied from the base image only where touched, so
    applying a few records to a large image costs little (Kafka's ``MetadataDelta``)."""

    def __init__(self, base: MetadataImage) -> None:
        self.base = base
        self.brokers: dict[int, BrokerImage] | None = None
        self.topics: dict[str, TopicImage | _WorkingTopic] | None = None
        self.ids_by_name: dict[str, str] | None = None
        self.groups = GroupsDelta(base.groups, self._partitions_of)
        self.applied = 0

    def replay(self, record: MetadataRecord) -> None:
        if isinstance(record, RegisterBrokerRecord):
            self._register_broker(record)
        elif isinstance(record, TopicRecord):
            self._create_topic(record)
        elif isinstance(record, ConfigRecord):
            self._working_topic(record.topic_id, record).set_config(record.name, record.value)
        elif isinstance(record, PartitionRecord):
            self._set_partition(record)
        elif isinstance(record, PartitionChangeRecord):
            self._change_partition(record)
        elif isinstance(record, FenceBrokerRecord):
            self._set_fenced(record, record.broker_id, True)
        elif isinstance(record, UnfenceBrokerRecord):
            self._set_fenced(record, record.broker_id, False)
        elif isinstance(record, RemoveTopicRecord):
            self._remove_topic(record)
        elif isinstance(record, GROUP_RECORD_TYPES):
            self.groups.replay(record)
        else:
            raise ValueError(f"not a metadata record: {type(record).__name__}")
        self.applied += 1

    def _brokers(self) -> dict[int, BrokerImage]:
        if self.brokers is None:
            self.brokers = dict(self.base.brokers)
        return self.brokers

    def _register_broker(self, record: RegisterBrokerRecord) -> None:
        # The record being replayed is the image's record number base.offset + applied + 1.
        self._brokers()[record.broker_id] = BrokerImage(
            record.broker_id, record.host, record.port, record.rack, fenced=True,
            incarnation_id=record.incarnation_id, epoch=self.base.offset + self.applied + 1,
        )

    def _set_fenced(self, record: MetadataRecord, broker_id: int, fenced: bool) -> None:
        brokers = self._brokers()
        broker = brokers.get(broker_id)
        if broker is None:
            raise ValueError(f"{record}: broker {broker_id} is not registered")
        if broker.fenced != fenced:
            brokers[broker_id] = replace(broker, fenced=fenced)

    def _topics(self) -> dict[str, TopicImage | _WorkingTopic]:
        if self.topics is None:
            self.topics = dict(self.base.topics_by_id)
            self.ids_by_name = {name: t.topic_id for name, t in self.base.topics_by_name.items()}
        return self.topics

    def _create_topic(self, record: TopicRecord) -> None:
        topics = self._topics()
        assert self.ids_by_name is not None
        if record.topic_id in topics:
            raise ValueError(f"{record}: topic id already exists")
        if record.name in self.ids_by_name:
            raise ValueError(f"{record}: topic name already exists")
        topics[record.topic_id] = _WorkingTopic(record.topic_id, record.name, {}, {})
        self.ids_by_name[record.name] = record.topic_id

    def _working_topic(self, topic_id: str, record: MetadataRecord) -> _WorkingTopic:
        topics = self._topics()
        topic = topics.get(topic_id)
        if topic is None:
            raise ValueError(f"{record}: unknown topic id")
        if isinstance(topic, TopicImage):
            topic = _WorkingTopic(topic.topic_id, topic.name, topic.configs, topic.partitions)
            topics[topic_id] = topic
        return topic

    def _set_partition(self, record: PartitionRecord) -> None:
        if not record.replicas:
            raise ValueError(f"{record}: no replicas")
        if not set(record.isr) <= set(record.replicas):
            raise ValueError(f"{record}: isr is not a subset of replicas")
        if record.leader != NO_LEADER and record.leader not in record.isr:
            raise ValueError(f"{record}: leader is not in the isr")
        topic = self._working_topic(record.topic_id, record)
        previous = topic.partitions.get(record.partition)
        if previous is not None and (
            record.leader_epoch < previous.leader_epoch
            or record.partition_epoch < previous.partition_epoch
        ):
            raise ValueError(f"{record}: epoch goes backwards from {previous}")
        topic.partitions[record.partition] = PartitionImage(
            record.partition, record.replicas, record.isr, record.leader,
            record.leader_epoch, record.partition_epoch,
        )

    def _change_partition(self, record: PartitionChangeRecord) -> None:
        topic = self._working_topic(record.topic_id, record)
        previous = topic.partitions.get(record.partition)
        if previous is None:
            raise ValueError(f"{record}: unknown partition")
        if record.partition_epoch != previous.partition_epoch + 1:
            raise ValueError(f"{record}: partition epoch must follow {previous.partition_epoch}")
        expected_leader_epoch = previous.leader_epoch + (record.leader != previous.leader)
        if record.leader_epoch != expected_leader_epoch:
            raise ValueError(f"{record}: leader epoch must be {expected_leader_epoch} "
                             f"(leader {previous.leader} -> {record.leader})")
        if not record.isr:
            raise ValueError(f"{record}: empty isr")
        if not set(record.isr) <= set(previous.replicas):
            raise ValueError(f"{record}: isr is not a subset of replicas {previous.replicas}")
        if record.leader != NO_LEADER and record.leader not in record.isr:
            raise ValueError(f"{record}: leader is not in the isr")
        topic.partitions[record.partition] = PartitionImage(
            record.partition, previous.replicas, record.isr, record.leader,
            record.leader_epoch, record.partition_epoch,
        )

    def _remove_topic(self, record: RemoveTopicRecord) -> None:
        topics = self._topics()
        assert self.ids_by_name is not None
        topic = topics.pop(record.topic_id, None)
        if topic is None:
            raise ValueError(f"{record}: unknown topic id")
        del self.ids_by_name[topic.name]
        self.groups.remove_topic(topic.name)

    def _partitions_of(self, name: str) -> Mapping[int, PartitionImage] | None:
        """The partitions of topic ``name`` as this delta has it (for the group records)."""
        topic: TopicImage | _WorkingTopic | None
        if self.topics is None:
            topic = self.base.topic(name)
        else:
            assert self.ids_by_name is not None
            topic_id = self.ids_by_name.get(name)
            topic = self.topics.get(topic_id) if topic_id is not None else None
        return topic.partitions if topic is not None else None

    def build(self) -> MetadataImage:
        if self.applied == 0:
            return self.base
        topics = self.base.topics_by_id if self.topics is None else {
            topic_id: topic.build() if isinstance(topic, _WorkingTopic) else topic
            for topic_id, topic in self.topics.items()
        }
        groups = self.groups.build()
        return MetadataImage(
            brokers=self.base.brokers if self.brokers is None else self.brokers,
            topics_by_id=topics,
            offset=self.base.offset + self.applied,
            groups=self.base.groups if groups is None else groups,
        )
