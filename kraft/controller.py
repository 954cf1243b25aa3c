"""Controller decisions: an image and a request in, records and per-item results out.

Theory of operation
-------------------
The controller owns no state. Each function reads a ``MetadataImage``, decides, and returns
the records that carry out the decision together with one ``ItemResult`` per requested item
(Kafka KRaft's ``ControllerResult``). Nothing changes until the caller appends the records
to the metadata log and the log applies them, so a decision can be dropped (validate-only
requests, a lost Raft leadership) without any undo. No I/O, no clocks; the one source of
randomness, new topic ids, comes in as a callable, and the placement start as an integer.

Items of one request are decided in order as if applied one after another: the second
``create`` of a name in the same request sees the first and gets TOPIC_ALREADY_EXISTS, the
second ``delete`` of a name gets UNKNOWN_TOPIC_OR_PARTITION.

Outcomes are Kafka error NAMES (``"TOPIC_ALREADY_EXISTS"``); the node maps them to codes.

Only unfenced brokers receive replicas of new topics. Broker fencing, unfencing and
leader elections are decided in ``kraft.lifecycle``.

Placement example (``place_replicas([1, 2, 3], 4, 2, start_index=0)``)::

    partition 0: (1, 2)    first replica brokers[(start + p) % n]
    partition 1: (2, 3)    followers at a shift from the first replica; the shift
    partition 2: (3, 1)    grows by one each time the first replica wraps around,
    partition 3: (1, 3)    so followers spread as evenly as the leaders do
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Callable, Sequence

from kraft.image import MetadataImage
from kraft.lifecycle import fence_brokers
from kraft.records import (
    ConfigRecord,
    MetadataRecord,
    PartitionRecord,
    RegisterBrokerRecord,
    RemoveTopicRecord,
    TopicRecord,
)
from kraft.topic_config import validate_topic_configs

MAX_PARTITIONS_PER_TOPIC = 1000  # bounds one CreateTopics' records (one log entry)
TOPIC_NAME_CHARS_MAX = 249  # Kafka's limit: leaves room for suffixes in file names
_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]+")

INVALID_TOPIC_EXCEPTION = "INVALID_TOPIC_EXCEPTION"
TOPIC_ALREADY_EXISTS = "TOPIC_ALREADY_EXISTS"
INVALID_PARTITIONS = "INVALID_PARTITIONS"
INVALID_REPLICATION_FACTOR = "INVALID_REPLICATION_FACTOR"
UNKNOWN_TOPIC_OR_PARTITION = "UNKNOWN_TOPIC_OR_PARTITION"


@dataclass(frozen=True)
class CreateTopicRequest:
    name: str
    num_partitions: int
    replication_factor: int
    configs: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ItemResult:
    """The outcome for one topic of a request: ``error`` is None on success."""

    name: str
    error: str | None = None
    message: str | None = None


def validate_topic_name(name: str) -> str | None:
    """``None`` if ``name`` is a legal topic name, else a message saying why not."""
    if not isinstance(name, str) or not name:
        return "topic name must be a non-empty string"
    if len(name) > TOPIC_NAME_CHARS_MAX:
        return f"topic name is {len(name)} characters, the limit is {TOPIC_NAME_CHARS_MAX}"
    if name in (".", ".."):
        return f"topic name cannot be {name!r}"
    if not _TOPIC_NAME.fullmatch(name):
        return f"topic name {name!r} has characters other than ASCII letters, digits, '.', '_', '-'"
    return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _collision_key(name: str) -> str:
    # Kafka forbids names that differ only by '.' versus '_' (they collide in metric names).
    return name.replace(".", "_")


def rack_alternated(broker_ids: Sequence[int], racks: Mapping[int, str | None]) -> list[int]:
    """The brokers ordered so that neighbours sit in different racks where possible.

    Racks in name order (brokers without a rack form one group, last), brokers in id order
    within a rack; then one broker from each rack in turn. Example: racks a: [1, 4],
    b: [2, 5], c: [3] give ``[1, 2, 3, 4, 5]``.
    """
    by_rack: dict[str | None, list[int]] = {}
    for broker_id in sorted(broker_ids):
        by_rack.setdefault(racks.get(broker_id), []).append(broker_id)
    groups = [by_rack[r] for r in sorted(by_rack, key=lambda r: (r is None, r or ""))]
    ordered: list[int] = []
    for round_index in range(max((len(g) for g in groups), default=0)):
        ordered.extend(g[round_index] for g in groups if round_index < len(g))
    return ordered


def place_replicas(
    broker_ids: Sequence[int], num_partitions: int, replication_factor: int, start_index: int,
    racks: Mapping[int, str | None] | None = None,
) -> list[tuple[int, ...]]:
    """Assign ``replication_factor`` distinct brokers to each partition, first one leading.

    Partition p's first replica is ``broker_ids[(start_index + p) % n]``, so every broker
    leads within one of ``num_partitions / n`` partitions. Followers sit at distances
    ``1 + (shift + j) % (n - 1)`` after the first replica, which are distinct and never zero;
    ``shift`` starts at ``start_index`` and steps once per full round of first replicas.

    With ``racks`` (broker id -> rack), the brokers are first put in rack-alternated order
    (``rack_alternated``), and followers are taken in the same distance order but skipping
    a broker whose rack already holds a replica until every rack holds one, so a partition
    spans ``min(replication_factor, number of racks)`` racks.
    """
    n = len(broker_ids)
    assert len(set(broker_ids)) == n, f"duplicate broker ids: {list(broker_ids)}"
    assert 1 <= replication_factor <= n, f"replication factor {replication_factor} with {n} brokers"
    assert num_partitions >= 0
    if racks is not None:
        broker_ids = rack_alternated(broker_ids, racks)
        rack_count = len({racks.get(b) for b in broker_ids})
    placements: list[tuple[int, ...]] = []
    for partition in range(num_partitions):
        first = (start_index + partition) % n
        shift = start_index + partition // n
        candidates = [broker_ids[(first + 1 + (shift + j) % (n - 1)) % n] for j in range(n - 1)]
        replicas = [broker_ids[first]]
        if racks is None:
            replicas.extend(candidates[: replication_factor - 1])
        else:
            used_racks = {racks.get(replicas[0])}
            while len(replicas) < replication_factor:
                fresh = [b for b in candidates if b not in replicas
                         and (len(used_racks) == rack_count or racks.get(b) not in used_racks)]
                replicas.append(fresh[0])
                used_racks.add(racks.get(fresh[0]))
        placements.append(tuple(replicas))
    return placements


def create_topics(
    image: MetadataImage,
    requests: Sequence[CreateTopicRequest],
    *,
    new_topic_id: Callable[[], str],
    start_index: int = 0,
    max_partitions: int = MAX_PARTITIONS_PER_TOPIC,
) -> tuple[list[MetadataRecord], list[ItemResult]]:
    """Decide a CreateTopics request: one result per request item, in order.

    Each created topic yields a TopicRecord, one ConfigRecord per given config, and one
    PartitionRecord per partition (isr = replicas, leader = first replica, epochs 0). The
    placement of successive topics starts where the previous one ended, so leadership of
    many small topics spreads over the brokers too.
    """
    records: list[MetadataRecord] = []
    results: list[ItemResult] = []
    unfenced = sorted(b.broker_id for b in image.brokers.values() if not b.fenced)
    # Rack-aware placement only when some broker says where it is.
    racks: dict[int, str | None] | None = {b: image.brokers[b].rack for b in unfenced}
    if racks is not None and all(rack is None for rack in racks.values()):
        racks = None
    taken_names = set(image.topics_by_name)
    taken_keys = {_collision_key(name): name for name in taken_names}
    next_start = start_index

    for request in requests:
        name = request.name
        problem = validate_topic_name(name)
        if problem is not None:
            results.append(ItemResult(name, INVALID_TOPIC_EXCEPTION, problem))
            continue
        if name in taken_names:
            results.append(ItemResult(name, TOPIC_ALREADY_EXISTS, f"topic {name!r} already exists"))
            continue
        other = taken_keys.get(_collision_key(name))
        if other is not None:
            results.append(ItemResult(
                name, INVALID_TOPIC_EXCEPTION,
                f"topic {name!r} collides with existing topic {other!r} ('.' and '_' are alike)",
            ))
            continue
        if not _is_int(request.num_partitions) or not 1 <= request.num_partitions <= max_partitions:
            results.append(ItemResult(
                name, INVALID_PARTITIONS,
                f"num_partitions {request.num_partitions} is out of range [1, {max_partitions}]",
            ))
            continue
        if not _is_int(request.replication_factor) or not (
            1 <= request.replication_factor <= len(unfenced)
        ):
            results.append(ItemResult(
                name, INVALID_REPLICATION_FACTOR,
                f"replication_factor {request.replication_factor} is out of range: "
                f"{len(unfenced)} unfenced broker(s) available",
            ))
            continue
        config_problem = (
            validate_topic_configs(request.configs)
            if isinstance(request.configs, Mapping)
            else ("INVALID_CONFIG", "configs must be a map of names to string values")
        )
        if config_problem is not None:
            error, message = config_problem
            results.append(ItemResult(name, error, message))
            continue

        topic_id = new_topic_id()
        assert topic_id not in image.topics_by_id, f"new topic id {topic_id!r} is not new"
        records.append(TopicRecord(topic_id=topic_id, name=name))
        for key in sorted(request.configs):
            records.append(ConfigRecord(topic_id=topic_id, name=key, value=request.configs[key]))
        placements = place_replicas(
            unfenced, request.num_partitions, request.replication_factor, next_start, racks
        )
        for partition, replicas in enumerate(placements):
            records.append(PartitionRecord(
                topic_id=topic_id, partition=partition, replicas=replicas, isr=replicas,
                leader=replicas[0], leader_epoch=0, partition_epoch=0,
            ))
        next_start += request.num_partitions
        taken_names.add(name)
        taken_keys[_collision_key(name)] = name
        results.append(ItemResult(name))
    return records, results


def delete_topics(
    image: MetadataImage, names: Sequence[str]
) -> tuple[list[MetadataRecord], list[ItemResult]]:
    """Decide a DeleteTopics request: a RemoveTopicRecord per known name, in order."""
    records: list[MetadataRecord] = []
    results: list[ItemResult] = []
    removed: set[str] = set()
    for name in names:
        topic = image.topic(name)
        if topic is None or name in removed:
            results.append(ItemResult(
                name, UNKNOWN_TOPIC_OR_PARTITION, f"topic {name!r} does not exist"
            ))
            continue
        records.append(RemoveTopicRecord(topic_id=topic.topic_id))
        removed.add(name)
        results.append(ItemResult(name))
    return records, results


def register_broker(
    image: MetadataImage, broker_id: int, host: str, port: int, rack: str | None,
    incarnation_id: str = "",
) -> list[MetadataRecord]:
    """The records that register this broker: none if the image already has exactly it
    (the same endpoint, rack and incarnation: a retried registration).

    A registration leaves the broker fenced (``kraft.lifecycle.unfence_broker`` unfences
    it) and gives it a new broker epoch. An unfenced broker that registers again (a new
    endpoint or rack, or a restarted process: a new ``incarnation_id``) is fenced first,
    with its partitions' leadership moved, so no fenced broker is left leading and no
    request of its earlier run can change an ISR.
    """
    current = image.brokers.get(broker_id)
    if current is not None and (current.host, current.port, current.rack, current.incarnation_id) \
            == (host, port, rack, incarnation_id):
        return []
    records: list[MetadataRecord] = []
    if current is not None and not current.fenced:
        records.extend(fence_brokers(image, [broker_id]))
    records.append(RegisterBrokerRecord(broker_id=broker_id, host=host, port=port, rack=rack,
                                        incarnation_id=incarnation_id))
    return records
