"""Request handlers: one coroutine per API of ``cluster.protocol.api``, body in, body out.

Theory of operation
-------------------
``RequestHandlers.handle(header, body)`` is the whole interface the server sees. It looks
the API up in ``_ROUTES``, refuses unknown keys and versions (UNSUPPORTED_VERSION), and runs
the handler, which first parses the body with the ``_field`` helpers (a missing field or a
value of the wrong type is an ``InvalidRequestError`` naming the field) and then answers.
Errors about one topic or partition are codes inside the response; a ``KafkaError``
escaping a handler is turned into ``{"error_code", "error_message"}`` by the server.

State lives elsewhere, and flows like this:

    metadata (kraft image, durable MetadataLog) --> which brokers and topics exist, where
        partitions are, leaders, epochs, configs; read per request, never cached
    ControllerService --> every metadata write: CreateTopics/DeleteTopics decide with
        kraft.controller and append through ``ControllerService.commit``, then reconcile the
        LogStore (PartitionManager); BrokerRegistration / BrokerHeartbeat go to it too
    PartitionManager --> the PartitionLog of each (topic id, partition) held here, appends,
        high watermarks, long-poll wake-ups
    ReplicaManager (``cluster.replica_manager``) --> leader-side replication: the replicated
        high watermark consumers read below, followers' positions (a Fetch with
        replica_id >= 0 reports one), acks=all checks before the append and waits after it
    GroupService (``cluster.group_service``) --> the consumer-group APIs (FindCoordinator,
        ConsumerGroupHeartbeat, OffsetCommit/Fetch, ListGroups, ConsumerGroupDescribe,
        DeleteGroups): parsed here, decided on the active controller only (NOT_COORDINATOR
        elsewhere), group state and offsets kept as metadata records

In a multi-node cluster only the active controller decides. CreateTopics / DeleteTopics
reaching another node are forwarded to it (``_forward``, over ``cluster.peer``) and its
answer is relayed once this node's own image shows the outcome, so a client may create a
topic through one node and use it through the same node at once. Produce, Fetch and
ListOffsets are served only by a partition's leader (the image's ``leader``):
NOT_LEADER_OR_FOLLOWER elsewhere, LEADER_NOT_AVAILABLE while it has none (-1).

The produce path (``produce`` -> ``_prepare_partition`` -> ``PartitionManager.append``)
reads only the batch headers: split by length fields, size check against the topic's
max.message.bytes, CRC/shape check (``storage.batch.validate``), then append; records are
never decoded. The fetch path (``fetch`` -> ``_fetch_once``) reads whole stored batches
below the high watermark (a follower's replica Fetch: up to the log end offset), and
long-polls with ``PartitionManager.wait_for_data`` (a replica Fetch wakes when a local
append commits, a consumer's when the high watermark moves). Produce answers acks=1 after the local
append and acks=all once ``ReplicaManager.wait_for_acks_all`` says the high watermark passed
the batches (or REQUEST_TIMED_OUT / NOT_ENOUGH_REPLICAS_AFTER_APPEND). AlterPartition is
decided by the active controller (``kraft.lifecycle.alter_partition``) and forwarded to it
like CreateTopics; OffsetForLeaderEpoch answers from the log's leader-epoch cache.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any, Awaitable, Callable, Mapping, Sequence

from cluster.config import NodeConfig
from cluster.controller_service import ControllerService
from cluster.group_coordinator import HeartbeatRequest, OffsetCommitRequest, PartitionCommit
from cluster.group_service import GroupService
from cluster.metadata_follower import METADATA_FETCH_WAIT_MS_MAX, metadata_fetch_response
from cluster.partitions import PartitionKey, PartitionManager
from cluster.peer import PeerClient, PeerError
from cluster.protocol import errors
from cluster.protocol.api import (
    ACKS_ALL,
    ACKS_LEADER,
    ACKS_NONE,
    CONSUMER_REPLICA_ID,
    COORDINATOR_KEY_TYPE_GROUP,
    EARLIEST_TIMESTAMP,
    LATEST_TIMESTAMP,
    NO_CONTROLLER_ID,
    NO_MEMBER_EPOCH,
    RESOURCE_TYPE_TOPIC,
    SUPPORTED_VERSIONS,
    ApiKey,
)
from cluster.protocol.framing import RequestHeader
from cluster.replica_manager import ReplicaManager
from kraft import controller, lifecycle
from kraft.groups import TopicPartitions, topic_partitions
from kraft.image import MetadataImage, TopicImage
from kraft.quorum import MetadataLogError
from kraft.quorum import MetadataLog
from kraft.raft_log import NotControllerError
from kraft.records import NO_LEADER
from kraft.topic_config import TOPIC_CONFIG_DEFAULTS, TopicConfig, effective_topic_config
from storage import batch as batch_codec
from storage.log import OffsetOutOfRangeError, PartitionDeletedError, PartitionLog, StorageError

logger = logging.getLogger(__name__)

VALID_ACKS = (ACKS_NONE, ACKS_LEADER, ACKS_ALL)
NO_OFFSET = -1
NO_TIMESTAMP = -1
NO_LEADER_EPOCH = -1
NO_TIMESTAMP_TYPE_APPEND = -1  # log_append_time_ms when the topic uses CreateTime
TOPIC_CONFIG_CACHE_MAX = 10000  # effective topic configs kept; the cache is rebuilt past this
FORWARD_TIMEOUT_MS_MAX = 30000  # a forwarded CreateTopics / DeleteTopics waits at most this
FORWARD_TIMEOUT_MS_MIN = 1000
IMAGE_CATCH_UP_MS_MAX = 5000  # after the controller answered, wait this long for our image

Body = dict[str, Any]


# -- parsing: a wrong shape is INVALID_REQUEST naming the field ---------------------------

_TYPE_NAMES = {int: "an integer", str: "a string", list: "a list", bytes: "bytes", bool: "a boolean", dict: "a map"}


def _field(container: Any, key: str, kind: type, *, default: Any = ..., nullable: bool = False) -> Any:
    if not isinstance(container, dict):
        raise errors.InvalidRequestError(f"expected a map holding {key!r}, got {type(container).__name__}")
    if key not in container:
        if default is ...:
            raise errors.InvalidRequestError(f"missing field {key!r}")
        return default
    value = container[key]
    if value is None and nullable:
        return None
    if kind is bytes and isinstance(value, (bytes, bytearray)):
        return value
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise errors.InvalidRequestError(
            f"field {key!r} must be {_TYPE_NAMES.get(kind, kind.__name__)}, got {type(value).__name__}"
        )
    return value


def _strings(values: Any, key: str) -> list[str]:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise errors.InvalidRequestError(f"field {key!r} must be a list of strings")
    return values


def _partition_indexes(values: Any) -> list[int]:
    if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                               for v in values):
        raise errors.InvalidRequestError("partitions must be a list of partition indexes >= 0")
    return values


def _topic_partitions(values: Any, key: str) -> TopicPartitions:
    """A ``topic_partitions`` list ([{"topic", "partitions"}]) as {topic: frozenset}."""
    parsed: dict[str, frozenset[int]] = {}
    for entry in values:
        topic = _field(entry, "topic", str)
        partitions = _partition_indexes(_field(entry, "partitions", list))
        parsed[topic] = parsed.get(topic, frozenset()) | frozenset(partitions)
    return topic_partitions(parsed.items())


def _error_code(result: controller.ItemResult) -> int:
    """The wire code of a controller outcome (kraft speaks in Kafka error names)."""
    return errors.NONE if result.error is None else errors.error_class(result.error).code


def _partition_error(index: int, code: int, message: str | None = None, **extra: Any) -> Body:
    return {"index": index, "error_code": code, "error_message": message, **extra}


class RequestHandlers:
    """Every API of the native protocol, served from the metadata image and the LogStore."""

    def __init__(
        self, config: NodeConfig, cluster_id: str, metadata: MetadataLog, partitions: PartitionManager,
        controller_service: ControllerService | None = None, peers: PeerClient | None = None,
        replicas: ReplicaManager | None = None, groups: GroupService | None = None,
    ) -> None:
        self.config = config
        self.node_id = config.node_id
        self.cluster_id = cluster_id
        self.metadata = metadata
        self.partitions = partitions
        self.controller = controller_service or ControllerService(config, cluster_id, metadata)
        self.peers = peers or PeerClient(config.node_id)
        self.replicas = replicas
        self.groups = groups or GroupService(config, self.controller, metadata)
        self.topic_defaults = config.topic_config_defaults()
        self._topic_configs: dict[str, tuple[Mapping[str, str], TopicConfig]] = {}
        self._routes: dict[int, Callable[[Any], Awaitable[Body | None]]] = {
            ApiKey.API_VERSIONS: self.api_versions,
            ApiKey.METADATA: self.metadata_request,
            ApiKey.CREATE_TOPICS: self.create_topics,
            ApiKey.DELETE_TOPICS: self.delete_topics,
            ApiKey.DESCRIBE_CONFIGS: self.describe_configs,
            ApiKey.PRODUCE: self.produce,
            ApiKey.FETCH: self.fetch,
            ApiKey.LIST_OFFSETS: self.list_offsets,
            ApiKey.DESCRIBE_CLUSTER: self.describe_cluster,
            ApiKey.BROKER_REGISTRATION: self.broker_registration,
            ApiKey.BROKER_HEARTBEAT: self.broker_heartbeat,
            ApiKey.METADATA_FETCH: self.metadata_fetch,
            ApiKey.OFFSET_FOR_LEADER_EPOCH: self.offset_for_leader_epoch,
            ApiKey.ALTER_PARTITION: self.alter_partition,
            ApiKey.FIND_COORDINATOR: self.find_coordinator,
            ApiKey.CONSUMER_GROUP_HEARTBEAT: self.consumer_group_heartbeat,
            ApiKey.OFFSET_COMMIT: self.offset_commit,
            ApiKey.OFFSET_FETCH: self.offset_fetch,
            ApiKey.LIST_GROUPS: self.list_groups,
            ApiKey.CONSUMER_GROUP_DESCRIBE: self.consumer_group_describe,
            ApiKey.DELETE_GROUPS: self.delete_groups,
        }

    async def handle(self, header: RequestHeader, body: Any) -> Body | None:
        """Answer one request; None means no response (a produce with acks=0)."""
        route = self._routes.get(header.api_key)
        if route is None:
            raise errors.UnsupportedVersionError(f"unknown api key {header.api_key}")
        low, high = SUPPORTED_VERSIONS[ApiKey(header.api_key)]
        if not low <= header.api_version <= high:
            raise errors.UnsupportedVersionError(
                f"api key {header.api_key} version {header.api_version} is not supported (versions {low}-{high})"
            )
        return await route(body)

    # -- start-up ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Make the LogStore match the image. The node registers with the active controller
        (itself, on a single node) from its broker lifecycle (``cluster.node``), not here."""
        await self.partitions.reconcile(self.metadata.image)

    def _topic_config(self, topic: TopicImage) -> TopicConfig:
        """The topic's effective config, cached per topic id until its configs change."""
        cached = self._topic_configs.get(topic.topic_id)
        if cached is not None and (cached[0] is topic.configs or cached[0] == topic.configs):
            return cached[1]
        config = effective_topic_config(topic.configs, self.topic_defaults)
        if len(self._topic_configs) >= TOPIC_CONFIG_CACHE_MAX:
            self._topic_configs.clear()
        self._topic_configs[topic.topic_id] = (topic.configs, config)
        return config

    # -- ApiVersions ------------------------------------------------------------------------

    async def api_versions(self, body: Any) -> Body:
        return {
            "error_code": errors.NONE,
            "api_keys": [
                {"api_key": int(key), "min_version": low, "max_version": high}
                for key, (low, high) in sorted(SUPPORTED_VERSIONS.items())
            ],
        }

    # -- Metadata ---------------------------------------------------------------------------

    async def metadata_request(self, body: Any) -> Body:
        names = _field(body, "topics", list, nullable=True)
        if names is not None:
            names = _strings(names, "topics")
        allow_auto_create = _field(body, "allow_auto_topic_creation", bool, default=False)
        image = self.metadata.image
        if names is not None and allow_auto_create and self.config.auto_create_topics_enable:
            missing = [n for n in dict.fromkeys(names) if image.topic(n) is None]
            if missing:
                image = await self._auto_create(missing)
        brokers = [
            {"node_id": b.broker_id, "host": b.host, "port": b.port, "rack": b.rack}
            for b in sorted(image.brokers.values(), key=lambda b: b.broker_id)
            if not b.fenced
        ]
        if names is None:
            topics = sorted(image.topics_by_id.values(), key=lambda t: t.name)
            entries = [self._topic_metadata(image, t) for t in topics]
        else:
            entries = []
            for name in dict.fromkeys(names):
                topic = image.topic(name)
                if topic is not None:
                    entries.append(self._topic_metadata(image, topic))
                    continue
                code = errors.UNKNOWN_TOPIC_OR_PARTITION
                if controller.validate_topic_name(name) is not None:
                    code = errors.INVALID_TOPIC_EXCEPTION
                entries.append({"error_code": code, "name": name, "is_internal": False, "partitions": []})
        return {"cluster_id": self.cluster_id, "controller_id": self._controller_id(), "brokers": brokers,
                "topics": entries}

    def _controller_id(self) -> int:
        controller_id = self.controller.controller_id()
        return NO_CONTROLLER_ID if controller_id is None else controller_id

    def _topic_metadata(self, image: MetadataImage, topic: TopicImage) -> Body:
        live = {b.broker_id for b in image.brokers.values() if not b.fenced}
        partitions = []
        for index in sorted(topic.partitions):
            p = topic.partitions[index]
            partitions.append({
                "error_code": errors.NONE if p.leader in live else errors.LEADER_NOT_AVAILABLE,
                "partition_index": index,
                "leader_id": p.leader,
                "leader_epoch": p.leader_epoch,
                "replica_nodes": list(p.replicas),
                "isr_nodes": list(p.isr),
                "offline_replicas": [r for r in p.replicas if r not in live],
            })
        return {"error_code": errors.NONE, "name": topic.name, "is_internal": False, "partitions": partitions}

    async def _auto_create(self, names: Sequence[str]) -> MetadataImage:
        valid = [n for n in names if controller.validate_topic_name(n) is None]
        if not valid:
            return self.metadata.image
        body = {
            "topics": [{"name": n, "num_partitions": self.config.num_partitions,
                        "replication_factor": self.config.default_replication_factor, "configs": {}} for n in valid],
            "timeout_ms": FORWARD_TIMEOUT_MS_MIN * 5, "validate_only": False,
        }
        response = await self.create_topics(body)
        for item in response["topics"]:
            if item["error_code"] == errors.NONE:
                logger.info("node %d auto-created topic %s", self.node_id, item["name"])
        return self.metadata.image

    # -- CreateTopics / DeleteTopics --------------------------------------------------------

    async def create_topics(self, body: Any) -> Body:
        validate_only = _field(body, "validate_only", bool, default=False)
        forwarded_by = _field(body, "forwarded_by", int, default=None, nullable=True)
        timeout_ms = _field(body, "timeout_ms", int, default=FORWARD_TIMEOUT_MS_MAX)
        requests = []
        for item in _field(body, "topics", list):
            name = _field(item, "name", str)
            num_partitions = _field(item, "num_partitions", int, default=-1)
            replication_factor = _field(item, "replication_factor", int, default=-1)
            configs = _field(item, "configs", dict, default=None, nullable=True) or {}
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in configs.items()):
                raise errors.InvalidRequestError(f"configs of topic {name!r} must map strings to strings")
            if num_partitions == -1:
                num_partitions = self.config.num_partitions
            if replication_factor == -1:
                replication_factor = self.config.default_replication_factor
            requests.append(controller.CreateTopicRequest(name, num_partitions, replication_factor, dict(configs)))

        def failed(code: int, message: str) -> Body:
            return {"topics": [{"name": r.name, "error_code": code, "error_message": message,
                                "num_partitions": -1, "replication_factor": -1} for r in requests]}

        def decide(image: MetadataImage) -> tuple[list, list[controller.ItemResult]]:
            records, results = controller.create_topics(
                image, requests, new_topic_id=lambda: uuid.uuid4().hex, start_index=len(image.topics_by_id)
            )
            return records, results

        try:
            if not self.controller.is_active():
                raise NotControllerError(f"node {self.node_id} is not the active controller", None)
            image, results = await self.controller.commit(decide, dry_run=validate_only)
        except NotControllerError as exc:
            forwarded = await self._forward(ApiKey.CREATE_TOPICS, body, forwarded_by, timeout_ms)
            if forwarded is None:
                return failed(errors.NOT_CONTROLLER, str(exc))
            if not validate_only:
                created = [t["name"] for t in forwarded.get("topics", ()) if t.get("error_code") == errors.NONE]
                await self._catch_up(lambda: all(self.metadata.image.topic(n) is not None for n in created))
            return forwarded
        except MetadataLogError as exc:
            return failed(errors.REQUEST_TIMED_OUT, f"the metadata change may or may not have happened: {exc}")
        if not validate_only:
            await self.partitions.reconcile(image)
        responses = []
        for request, result in zip(requests, results):
            ok = result.error is None
            responses.append({
                "name": result.name,
                "error_code": _error_code(result),
                "error_message": result.message,
                "num_partitions": request.num_partitions if ok else -1,
                "replication_factor": request.replication_factor if ok else -1,
            })
            if ok and not validate_only:
                logger.info(
                    "node %d created topic %s with %d partitions", self.node_id, result.name, request.num_partitions
                )
        return {"topics": responses}

    async def delete_topics(self, body: Any) -> Body:
        names = _strings(_field(body, "topic_names", list), "topic_names")
        forwarded_by = _field(body, "forwarded_by", int, default=None, nullable=True)
        timeout_ms = _field(body, "timeout_ms", int, default=FORWARD_TIMEOUT_MS_MAX)

        def failed(code: int, message: str) -> Body:
            return {"responses": [{"name": n, "error_code": code, "error_message": message} for n in names]}

        try:
            if not self.controller.is_active():
                raise NotControllerError(f"node {self.node_id} is not the active controller", None)
            image, results = await self.controller.commit(lambda image: controller.delete_topics(image, names))
        except NotControllerError as exc:
            old_ids = {n: t.topic_id for n in names if (t := self.metadata.image.topic(n)) is not None}
            forwarded = await self._forward(ApiKey.DELETE_TOPICS, body, forwarded_by, timeout_ms)
            if forwarded is None:
                return failed(errors.NOT_CONTROLLER, str(exc))
            deleted = [old_ids[r["name"]] for r in forwarded.get("responses", ())
                       if r.get("error_code") == errors.NONE and r.get("name") in old_ids]
            await self._catch_up(lambda: not any(i in self.metadata.image.topics_by_id for i in deleted))
            return forwarded
        except MetadataLogError as exc:
            return failed(errors.REQUEST_TIMED_OUT, f"the metadata change may or may not have happened: {exc}")
        await self.partitions.reconcile(image)
        for result in results:
            if result.error is None:
                logger.info("node %d deleted topic %s", self.node_id, result.name)
        return {
            "responses": [
                {
                    "name": r.name,
                    "error_code": _error_code(r),
                    "error_message": r.message,
                }
                for r in results
            ]
        }

    async def _forward(self, api_key: ApiKey, body: Body, forwarded_by: int | None, timeout_ms: int) -> Body | None:
        """The active controller's answer to ``body``, or None when it cannot be asked."""
        if forwarded_by is not None:
            return None  # forwarded once already: never bounce a request between nodes
        controller_id = self.controller.controller_id()
        broker = self.metadata.image.brokers.get(controller_id) if controller_id is not None else None
        if controller_id == self.node_id or broker is None:
            return None
        timeout_ms = max(FORWARD_TIMEOUT_MS_MIN, min(timeout_ms, FORWARD_TIMEOUT_MS_MAX))
        try:
            response = await self.peers.call(broker.host, broker.port, api_key,
                                             {**body, "forwarded_by": self.node_id}, timeout_ms)
        except PeerError as exc:
            logger.warning("node %d could not forward %s to controller %d: %s",
                           self.node_id, api_key.name, controller_id, exc)
            return None
        if "error_code" in response and api_key == ApiKey.CREATE_TOPICS and "topics" not in response:
            return None  # a whole-request error of the controller: answer NOT_CONTROLLER
        if "error_code" in response and api_key == ApiKey.DELETE_TOPICS and "responses" not in response:
            return None
        if api_key == ApiKey.ALTER_PARTITION and "topics" not in response:
            return None
        return response

    async def _catch_up(self, done: Callable[[], bool]) -> None:
        """After a forwarded change succeeded: wait (bounded) until this node's image shows it."""
        if await self.partitions.wait_for_image(done, IMAGE_CATCH_UP_MS_MAX / 1000):
            await self.partitions.reconcile(self.metadata.image)
        else:
            logger.warning("node %d image did not catch up with a forwarded change within %d ms",
                           self.node_id, IMAGE_CATCH_UP_MS_MAX)

    # -- DescribeCluster, BrokerRegistration, BrokerHeartbeat -------------------------------

    async def describe_cluster(self, body: Any) -> Body:
        image = self.metadata.image
        brokers = [
            {"node_id": b.broker_id, "host": b.host, "port": b.port, "rack": b.rack, "fenced": b.fenced,
             "broker_epoch": b.epoch}
            for b in sorted(image.brokers.values(), key=lambda b: b.broker_id)
        ]
        raft = None
        if self.controller.raft is not None:
            status = self.controller.raft.status
            raft = {
                "node_id": self.node_id, "voters": sorted(self.config.voters), "is_leader": status.is_leader,
                "leader_id": NO_CONTROLLER_ID if status.controller_id is None else status.controller_id,
                "ready": status.ready, "term": status.term, "commit_index": status.commit_index,
                "last_applied": status.last_applied, "metadata_offset": image.offset,
            }
        return {"error_code": errors.NONE, "error_message": None, "cluster_id": self.cluster_id,
                "controller_id": self._controller_id(), "brokers": brokers, "raft": raft}

    async def broker_registration(self, body: Any) -> Body:
        broker_id = _field(body, "broker_id", int)
        cluster_id = _field(body, "cluster_id", str)
        host = _field(body, "host", str)
        port = _field(body, "port", int)
        rack = _field(body, "rack", str, default=None, nullable=True)
        incarnation_id = _field(body, "incarnation_id", str)
        if cluster_id != self.cluster_id:
            return {"error_code": errors.INVALID_REQUEST,
                    "error_message": f"cluster id {cluster_id} is not this cluster's ({self.cluster_id})"}
        try:
            broker_epoch = await self.controller.register(broker_id, host, port, rack, incarnation_id)
        except NotControllerError as exc:
            return {"error_code": errors.NOT_CONTROLLER, "error_message": str(exc)}
        except (MetadataLogError, ValueError) as exc:
            return {"error_code": errors.REQUEST_TIMED_OUT, "error_message": str(exc)}
        return {"error_code": errors.NONE, "error_message": None, "broker_epoch": broker_epoch}

    async def metadata_fetch(self, body: Any) -> Body:
        """A broker-only node follows this voter's image (``cluster.metadata_follower``)."""
        after_offset = _field(body, "after_offset", int)
        if after_offset < 0:
            raise errors.InvalidRequestError(f"field 'after_offset' must be >= 0, got {after_offset}")
        wait_ms = min(max(0, _field(body, "max_wait_ms", int, default=0)), METADATA_FETCH_WAIT_MS_MAX)
        raft = self.controller.raft
        is_voter, ready = not self.config.is_broker_only, raft is None or raft.status.ready
        if is_voter and ready and wait_ms > 0 and self.metadata.image.offset <= after_offset:
            await self.partitions.wait_for_image(lambda: self.metadata.image.offset > after_offset, wait_ms / 1000)
        return metadata_fetch_response(self.metadata.image, after_offset, self.controller.controller_id(),
                                       is_voter=is_voter, ready=ready)

    async def broker_heartbeat(self, body: Any) -> Body:
        broker_id = _field(body, "broker_id", int)
        try:
            registered, fenced = await self.controller.heartbeat(broker_id)
        except NotControllerError as exc:
            return {"error_code": errors.NOT_CONTROLLER, "error_message": str(exc),
                    "is_registered": False, "is_fenced": True}
        except (MetadataLogError, ValueError) as exc:
            return {"error_code": errors.REQUEST_TIMED_OUT, "error_message": str(exc),
                    "is_registered": True, "is_fenced": True}
        return {"error_code": errors.NONE, "error_message": None, "is_registered": registered, "is_fenced": fenced}

    # -- OffsetForLeaderEpoch --------------------------------------------------------------

    async def offset_for_leader_epoch(self, body: Any) -> Body:
        _field(body, "replica_id", int, default=CONSUMER_REPLICA_ID)
        image = self.metadata.image
        topics = []
        for topic_request in _field(body, "topics", list):
            name = _field(topic_request, "name", str)
            topic = image.topic(name)
            entries = []
            for p in _field(topic_request, "partitions", list):
                index = _field(p, "index", int)
                current_epoch = _field(p, "current_leader_epoch", int, default=NO_LEADER_EPOCH)
                wanted_epoch = _field(p, "leader_epoch", int)
                entries.append(self._epoch_end(topic, name, index, current_epoch, wanted_epoch))
            topics.append({"name": name, "partitions": entries})
        return {"topics": topics}

    def _epoch_end(self, topic: TopicImage | None, name: str, index: int, current_epoch: int,
                   wanted_epoch: int) -> Body:
        def entry(code: int, epoch: int = NO_LEADER_EPOCH, end_offset: int = NO_OFFSET) -> Body:
            return {"index": index, "error_code": code, "leader_epoch": epoch, "end_offset": end_offset}

        partition = topic.partitions.get(index) if topic is not None else None
        if topic is None or partition is None:
            return entry(errors.UNKNOWN_TOPIC_OR_PARTITION)
        if partition.leader == NO_LEADER:
            return entry(errors.LEADER_NOT_AVAILABLE)
        if partition.leader != self.node_id:
            return entry(errors.NOT_LEADER_OR_FOLLOWER)
        if current_epoch != NO_LEADER_EPOCH and current_epoch != partition.leader_epoch:
            return entry(errors.FENCED_LEADER_EPOCH if current_epoch < partition.leader_epoch
                         else errors.UNKNOWN_LEADER_EPOCH)
        log = self.partitions.get(topic.topic_id, index)
        if log is None:
            return entry(errors.UNKNOWN_TOPIC_OR_PARTITION)
        epoch, end_offset = log.end_offset_for_epoch(wanted_epoch)
        return entry(errors.NONE, epoch, end_offset)

    # -- AlterPartition ---------------------------------------------------------------------

    async def alter_partition(self, body: Any) -> Body:
        broker_id = _field(body, "broker_id", int)
        broker_epoch = _field(body, "broker_epoch", int)
        forwarded_by = _field(body, "forwarded_by", int, default=None, nullable=True)
        items: list[tuple[str, int, int, int, list[int]]] = []
        for topic_request in _field(body, "topics", list):
            topic_id = _field(topic_request, "topic_id", str)
            for p in _field(topic_request, "partitions", list):
                new_isr = _field(p, "new_isr", list)
                if not all(isinstance(b, int) and not isinstance(b, bool) for b in new_isr):
                    raise errors.InvalidRequestError("field 'new_isr' must be a list of broker ids")
                items.append((topic_id, _field(p, "index", int), _field(p, "leader_epoch", int),
                              _field(p, "partition_epoch", int), new_isr))

        def decide(image: MetadataImage) -> tuple[list, list[str | None]]:
            records: list = []
            outcomes: list[str | None] = []
            for topic_id, index, leader_epoch, partition_epoch, new_isr in items:
                made, error = lifecycle.alter_partition(image, topic_id, index, broker_id, leader_epoch,
                                                        partition_epoch, new_isr, broker_epoch)
                outcomes.append(error)
                if made:
                    records.extend(made)
                    image = image.apply(made)
            return records, outcomes

        def answer(image: MetadataImage, outcomes: list[str | None] | None, code: int, message: str | None) -> Body:
            by_topic: dict[str, list[Body]] = {}
            for position, (topic_id, index, _, _, _) in enumerate(items):
                topic = image.topics_by_id.get(topic_id)
                current = topic.partitions.get(index) if topic is not None else None
                error_name = outcomes[position] if outcomes is not None else None
                item_code = code if outcomes is None else (
                    errors.NONE if error_name is None else errors.error_class(error_name).code)
                by_topic.setdefault(topic_id, []).append({
                    "index": index, "error_code": item_code,
                    "error_message": message if outcomes is None else error_name,
                    "leader_id": current.leader if current is not None else NO_LEADER,
                    "leader_epoch": current.leader_epoch if current is not None else NO_LEADER_EPOCH,
                    "partition_epoch": current.partition_epoch if current is not None else NO_LEADER_EPOCH,
                    "isr": list(current.isr) if current is not None else [],
                })
            return {"error_code": errors.NONE, "error_message": None,
                    "topics": [{"topic_id": t, "partitions": parts} for t, parts in by_topic.items()]}

        try:
            if not self.controller.is_active():
                raise NotControllerError(f"node {self.node_id} is not the active controller", None)
            image, outcomes = await self.controller.commit(decide)
        except NotControllerError as exc:
            forwarded = await self._forward(ApiKey.ALTER_PARTITION, body, forwarded_by, FORWARD_TIMEOUT_MS_MIN * 5)
            if forwarded is None:
                return answer(self.metadata.image, None, errors.NOT_CONTROLLER, str(exc))
            return forwarded
        except MetadataLogError as exc:
            return answer(self.metadata.image, None, errors.REQUEST_TIMED_OUT,
                          f"the metadata change may or may not have happened: {exc}")
        return answer(image, outcomes, errors.NONE, None)

    # -- consumer groups (cluster.group_service: the active controller coordinates) ---------

    async def find_coordinator(self, body: Any) -> Body:
        key = _field(body, "key", str)
        key_type = _field(body, "key_type", int, default=COORDINATOR_KEY_TYPE_GROUP)
        return self.groups.find_coordinator(key, key_type)

    async def consumer_group_heartbeat(self, body: Any) -> Body:
        names = _field(body, "subscribed_topic_names", list, default=None, nullable=True)
        owned = _field(body, "topic_partitions", list, default=None, nullable=True)
        request = HeartbeatRequest(
            group_id=_field(body, "group_id", str),
            member_id=_field(body, "member_id", str),
            member_epoch=_field(body, "member_epoch", int),
            instance_id=_field(body, "instance_id", str, default=None, nullable=True),
            rack_id=_field(body, "rack_id", str, default=None, nullable=True),
            client_id=_field(body, "client_id", str, default=""),
            rebalance_timeout_ms=_field(body, "rebalance_timeout_ms", int),
            session_timeout_ms=_field(body, "session_timeout_ms", int),
            subscribed_topic_names=None if names is None else tuple(_strings(names, "subscribed_topic_names")),
            subscribed_topic_regex=_field(body, "subscribed_topic_regex", str, default=None, nullable=True),
            owned=None if owned is None else _topic_partitions(owned, "topic_partitions"),
        )
        return await self.groups.heartbeat(request)

    async def offset_commit(self, body: Any) -> Body:
        topics = []
        for topic in _field(body, "topics", list):
            partitions = tuple(
                PartitionCommit(
                    index=_field(p, "index", int),
                    committed_offset=_field(p, "committed_offset", int),
                    committed_leader_epoch=_field(p, "committed_leader_epoch", int, default=NO_LEADER_EPOCH),
                    committed_metadata=_field(p, "committed_metadata", str, default=None, nullable=True),
                )
                for p in _field(topic, "partitions", list)
            )
            topics.append((_field(topic, "name", str), partitions))
        request = OffsetCommitRequest(
            group_id=_field(body, "group_id", str),
            member_id=_field(body, "member_id", str, default=""),
            member_epoch=_field(body, "member_epoch", int, default=NO_MEMBER_EPOCH),
            topics=tuple(topics),
            admin_reset=_field(body, "admin_reset", bool, default=False),
        )
        return await self.groups.commit_offsets(request)

    async def offset_fetch(self, body: Any) -> Body:
        group_id = _field(body, "group_id", str)
        wanted = _field(body, "topics", list, default=None, nullable=True)
        topics = None if wanted is None else [
            (_field(t, "name", str), _partition_indexes(_field(t, "partitions", list))) for t in wanted
        ]
        return await self.groups.fetch_offsets(group_id, topics)

    async def list_groups(self, body: Any) -> Body:
        return await self.groups.list_groups()

    async def consumer_group_describe(self, body: Any) -> Body:
        return await self.groups.describe_groups(_strings(_field(body, "group_ids", list), "group_ids"))

    async def delete_groups(self, body: Any) -> Body:
        return await self.groups.delete_groups(_strings(_field(body, "groups_names", list), "groups_names"))

    # -- DescribeConfigs --------------------------------------------------------------------

    async def describe_configs(self, body: Any) -> Body:
        image = self.metadata.image
        results = []
        for resource in _field(body, "resources", list):
            resource_type = _field(resource, "resource_type", int)
            name = _field(resource, "resource_name", str)
            keys = _field(resource, "configuration_keys", list, default=None, nullable=True)
            if keys is not None:
                keys = _strings(keys, "configuration_keys")
            result = {"resource_type": resource_type, "resource_name": name, "configs": []}
            topic = image.topic(name) if resource_type == RESOURCE_TYPE_TOPIC else None
            if resource_type != RESOURCE_TYPE_TOPIC:
                results.append({**result, "error_code": errors.INVALID_REQUEST,
                                "error_message": f"resource type {resource_type} is not supported (topics only: 2)"})
                continue
            if topic is None:
                results.append({**result, "error_code": errors.UNKNOWN_TOPIC_OR_PARTITION,
                                "error_message": f"unknown topic {name}"})
                continue
            defaults = {**TOPIC_CONFIG_DEFAULTS, **self.topic_defaults}
            wanted = sorted(defaults) if keys is None else [k for k in keys if k in defaults]
            result["configs"] = [
                {
                    "name": key,
                    "value": topic.configs[key] if key in topic.configs else defaults[key],
                    "is_default": key not in topic.configs,
                }
                for key in wanted
            ]
            results.append({**result, "error_code": errors.NONE, "error_message": None})
        return {"results": results}

    # -- Produce ----------------------------------------------------------------------------

    async def produce(self, body: Any) -> Body | None:
        acks = _field(body, "acks", int)
        parsed: list[tuple[str, list[tuple[int, bytes]]]] = []
        for topic in _field(body, "topics", list):
            name = _field(topic, "name", str)
            partitions = [
                (_field(p, "index", int), _field(p, "records", bytes)) for p in _field(topic, "partitions", list)
            ]
            parsed.append((name, partitions))
        if acks not in VALID_ACKS:
            message = f"acks must be 0, 1 or -1, got {acks}"
            return {"topics": [
                {"name": name, "partitions": [
                    self._produce_error(index, errors.INVALID_REQUIRED_ACKS, message) for index, _ in parts
                ]}
                for name, parts in parsed
            ]}
        image = self.metadata.image
        if self.config.auto_create_topics_enable:
            missing = [name for name, _ in parsed if image.topic(name) is None]
            if missing:
                image = await self._auto_create(list(dict.fromkeys(missing)))

        # Validate everything and submit every append before awaiting any of them, so all
        # batches of the request join the same group commit.
        pending: list[tuple[str, int, Any]] = []  # (topic name, index, Body | (log, futures))
        min_isr: dict[tuple[str, int], int] = {}
        for name, parts in parsed:
            topic = image.topic(name)
            config = self._topic_config(topic) if topic is not None else None
            for index, records in parts:
                outcome = self._prepare_partition(topic, config, name, index, records, acks)
                pending.append((name, index, outcome))
                if config is not None:
                    min_isr[(name, index)] = config.min_insync_replicas

        if acks == ACKS_NONE:
            for _, _, outcome in pending:
                if not isinstance(outcome, dict):
                    for future in outcome[1]:
                        future.add_done_callback(_consume_exception)
            return None

        timeout_ms = _field(body, "timeout_ms", int, default=FORWARD_TIMEOUT_MS_MAX)
        if len(pending) == 1:  # the common request: no task per partition
            name, index, outcome = pending[0]
            entries = [await self._produce_outcome(name, index, outcome, acks, min_isr.get((name, index), 1),
                                                   timeout_ms)]
        else:
            entries = await asyncio.gather(*(
                self._produce_outcome(name, index, outcome, acks, min_isr.get((name, index), 1), timeout_ms)
                for name, index, outcome in pending
            ))
        by_topic: dict[str, list[Body]] = {}
        for (name, _, _), entry in zip(pending, entries):
            by_topic.setdefault(name, []).append(entry)
        return {"topics": [{"name": name, "partitions": entries} for name, entries in by_topic.items()]}

    async def _produce_outcome(self, name: str, index: int, outcome: Any, acks: int,
                               min_insync_replicas: int, timeout_ms: int) -> Body:
        """One partition's produce answer: after the local append (acks=1), or once the high
        watermark passes the appended batches (acks=all)."""
        if isinstance(outcome, dict):
            return outcome
        log, futures = outcome
        results: list[Any]
        if len(futures) == 1:
            try:
                results = [await futures[0]]
            except Exception as exc:  # reported below, as gather would return it
                results = [exc]
        else:
            results = await asyncio.gather(*futures, return_exceptions=True)
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        first = results[0]
        if failure is not None or isinstance(first, BaseException):
            return self._append_failed(name, index, failure or first)
        if acks == ACKS_ALL and self.replicas is not None:
            last = results[-1]
            assert not isinstance(last, BaseException)
            code = await self.replicas.wait_for_acks_all(
                (log.topic, log.partition), last.last_offset + 1, min_insync_replicas, timeout_ms)
            if code != errors.NONE:
                return self._produce_error(index, code, f"{name}-{index}: {errors.error_name(code)} "
                                           f"waiting for the in-sync replicas")
        return {
            "index": index, "error_code": errors.NONE, "error_message": None,
            "base_offset": first.base_offset,
            "log_append_time_ms": NO_TIMESTAMP_TYPE_APPEND,
            "log_start_offset": log.log_start_offset,
        }

    def _append_failed(self, name: str, index: int, failure: BaseException) -> Body:
        if isinstance(failure, PartitionDeletedError):
            return self._produce_error(index, errors.UNKNOWN_TOPIC_OR_PARTITION, str(failure))
        if isinstance(failure, StorageError):
            logger.error("node %d append to %s-%d failed: %s", self.node_id, name, index, failure)
            return self._produce_error(index, errors.KAFKA_STORAGE_ERROR, str(failure))
        if isinstance(failure, ValueError):
            # A validated batch is refused only when its leader epoch is older than the
            # log's latest: leadership has moved on.
            return self._produce_error(index, errors.NOT_LEADER_OR_FOLLOWER, str(failure))
        logger.error("node %d append to %s-%d failed", self.node_id, name, index, exc_info=failure)
        return self._produce_error(index, errors.UNKNOWN_SERVER_ERROR, f"{type(failure).__name__}: {failure}")

    @staticmethod
    def _produce_error(index: int, code: int, message: str | None) -> Body:
        return _partition_error(index, code, message, base_offset=NO_OFFSET,
                                log_append_time_ms=NO_TIMESTAMP, log_start_offset=NO_OFFSET)

    def _prepare_partition(
        self, topic: TopicImage | None, config: TopicConfig | None, name: str, index: int, records: bytes, acks: int
    ) -> Body | tuple[Any, list[asyncio.Future]]:
        """Check one partition's record set and submit its batches; or the error entry."""
        partition = topic.partitions.get(index) if topic is not None else None
        if topic is None or partition is None or config is None:
            return self._produce_error(index, errors.UNKNOWN_TOPIC_OR_PARTITION, f"unknown partition {name}-{index}")
        if partition.leader == NO_LEADER:
            return self._produce_error(index, errors.LEADER_NOT_AVAILABLE, f"{name}-{index} has no leader")
        if partition.leader != self.node_id:
            return self._produce_error(index, errors.NOT_LEADER_OR_FOLLOWER,
                                       f"node {self.node_id} is not the leader of {name}-{index}")
        log = self.partitions.get(topic.topic_id, index)
        if log is None:
            return self._produce_error(index, errors.UNKNOWN_TOPIC_OR_PARTITION,
                                       f"partition {name}-{index} is not open on node {self.node_id}")
        try:
            batches = batch_codec.split_batches(records)
        except batch_codec.CorruptBatchError as exc:
            if len(records) > config.max_message_bytes:
                return self._too_large(index, len(records), config)
            return self._produce_error(index, errors.CORRUPT_MESSAGE, str(exc))
        if not batches:
            return self._produce_error(index, errors.CORRUPT_MESSAGE, "the record set holds no batch")
        for batch in batches:
            if len(batch) > config.max_message_bytes:
                return self._too_large(index, len(batch), config)
        for batch in batches:
            try:
                header = batch_codec.validate(batch)
            except batch_codec.CorruptBatchError as exc:
                return self._produce_error(index, errors.CORRUPT_MESSAGE, str(exc))
            if header.record_count == 0:
                return self._produce_error(index, errors.CORRUPT_MESSAGE, "a batch holds no record")
            if header.attributes & batch_codec.COMPRESSION_MASK:
                return self._produce_error(
                    index, errors.UNSUPPORTED_COMPRESSION_TYPE,
                    f"compression codec {header.attributes & batch_codec.COMPRESSION_MASK} is not supported",
                )
        if acks == ACKS_ALL:
            code = self._check_acks_all((topic.topic_id, index), len(partition.isr), config.min_insync_replicas)
            if code != errors.NONE:
                return self._produce_error(
                    index, code,
                    f"{name}-{index}: {errors.error_name(code)} (in-sync replicas {list(partition.isr)}, "
                    f"min.insync.replicas {config.min_insync_replicas})",
                )
        futures = [self.partitions.append(log, batch, partition.leader_epoch) for batch in batches]
        return log, futures

    def _check_acks_all(self, key: PartitionKey, isr_size: int, min_insync_replicas: int) -> int:
        if self.replicas is None:
            return errors.NOT_ENOUGH_REPLICAS if min_insync_replicas > isr_size else errors.NONE
        return self.replicas.check_acks_all(key, min_insync_replicas)

    def _too_large(self, index: int, size_bytes: int, config: TopicConfig) -> Body:
        return self._produce_error(
            index, errors.MESSAGE_TOO_LARGE,
            f"batch of {size_bytes} bytes is larger than max.message.bytes {config.max_message_bytes}",
        )

    # -- Fetch ------------------------------------------------------------------------------

    async def fetch(self, body: Any) -> Body:
        replica_id = _field(body, "replica_id", int, default=CONSUMER_REPLICA_ID)
        max_wait_ms = _field(body, "max_wait_ms", int, default=0)
        min_bytes = _field(body, "min_bytes", int, default=1)
        max_bytes = _field(body, "max_bytes", int)
        requests: list[tuple[str, list[tuple[int, int, int, int]]]] = []
        for topic in _field(body, "topics", list):
            name = _field(topic, "name", str)
            partitions = [
                (
                    _field(p, "index", int),
                    _field(p, "fetch_offset", int),
                    _field(p, "partition_max_bytes", int),
                    _field(p, "current_leader_epoch", int, default=NO_LEADER_EPOCH),
                )
                for p in _field(topic, "partitions", list)
            ]
            requests.append((name, partitions))
        wait_s = max(0, min(max_wait_ms, self.config.fetch_max_wait_ms_max)) / 1000.0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        account = replica_id >= 0  # a follower's position counts once per request
        while True:
            response, total_bytes, has_error, keys = self._fetch_once(requests, max_bytes, replica_id, account)
            account = False
            remaining_s = deadline - loop.time()
            if total_bytes >= min_bytes or has_error or remaining_s <= 0 or not keys or self.partitions.closing:
                return response
            await self.partitions.wait_for_data(keys, remaining_s, replica=replica_id >= 0)

    def _fetch_once(
        self, requests: list[tuple[str, list[tuple[int, int, int, int]]]], max_bytes: int, replica_id: int,
        account: bool = False,
    ) -> tuple[Body, int, bool, list[PartitionKey]]:
        image = self.metadata.image
        total_bytes = 0
        has_error = False
        keys: list[PartitionKey] = []
        topics = []
        for name, parts in requests:
            topic = image.topic(name)
            entries = []
            for index, fetch_offset, partition_max_bytes, leader_epoch in parts:
                entry = self._fetch_partition(topic, name, index, fetch_offset, partition_max_bytes,
                                              leader_epoch, max_bytes - total_bytes, total_bytes == 0, replica_id,
                                              account)
                if entry["error_code"] != errors.NONE:
                    has_error = True
                else:
                    assert topic is not None
                    keys.append((topic.topic_id, index))
                total_bytes += len(entry["records"])
                entries.append(entry)
            topics.append({"name": name, "partitions": entries})
        return {"error_code": errors.NONE, "topics": topics}, total_bytes, has_error, keys

    def _fetch_partition(
        self, topic: TopicImage | None, name: str, index: int, fetch_offset: int, partition_max_bytes: int,
        leader_epoch: int, remaining_bytes: int, first: bool, replica_id: int, account: bool = False,
    ) -> Body:
        def error(code: int, message: str, high_watermark: int = NO_OFFSET, log_start_offset: int = NO_OFFSET) -> Body:
            logger.debug("node %d fetch error %s: %s", self.node_id, errors.error_name(code), message)
            return {"index": index, "error_code": code, "high_watermark": high_watermark,
                    "log_start_offset": log_start_offset, "records": b""}

        partition = topic.partitions.get(index) if topic is not None else None
        if topic is None or partition is None:
            return error(errors.UNKNOWN_TOPIC_OR_PARTITION, f"unknown partition {name}-{index}")
        if partition.leader == NO_LEADER:
            return error(errors.LEADER_NOT_AVAILABLE, f"{name}-{index} has no leader")
        if partition.leader != self.node_id:
            return error(errors.NOT_LEADER_OR_FOLLOWER, f"node {self.node_id} is not the leader of {name}-{index}")
        log = self.partitions.get(topic.topic_id, index)
        if log is None:
            return error(errors.UNKNOWN_TOPIC_OR_PARTITION, f"partition {name}-{index} is not open on node {self.node_id}")
        if leader_epoch != NO_LEADER_EPOCH and leader_epoch != partition.leader_epoch:
            code = errors.FENCED_LEADER_EPOCH if leader_epoch < partition.leader_epoch else errors.UNKNOWN_LEADER_EPOCH
            return error(code, f"leader epoch of {name}-{index} is {partition.leader_epoch}, not {leader_epoch}")
        if account and self.replicas is not None:
            key = (topic.topic_id, index)
            before = self.partitions.high_watermark(log)
            code = self.replicas.on_replica_fetch(key, replica_id, fetch_offset, leader_epoch, log,
                                                  int(time.time() * 1000))
            if code != errors.NONE:
                return error(code, f"replica fetch of {name}-{index} by broker {replica_id} at offset "
                             f"{fetch_offset}, epoch {leader_epoch}", log_start_offset=log.log_start_offset)
            if self.partitions.high_watermark(log) != before:
                self.partitions.wake(key)  # consumers waiting below the old high watermark
        high_watermark = self.partitions.high_watermark(log)
        log_start_offset = log.log_start_offset
        log_end_offset = log.log_end_offset
        upper_offset = log_end_offset if replica_id >= 0 else high_watermark
        if not log_start_offset <= fetch_offset <= log_end_offset:
            return error(errors.OFFSET_OUT_OF_RANGE,
                         f"offset {fetch_offset} is outside [{log_start_offset}, {log_end_offset}] of {name}-{index}",
                         high_watermark, log_start_offset)
        limit_bytes = min(partition_max_bytes, remaining_bytes)
        records = b""
        # A consumer between the high watermark and the log end gets nothing yet: a new leader's
        # high watermark can briefly be below the one its predecessor served.
        if fetch_offset < upper_offset and (first or limit_bytes > 0):
            try:
                batches = log.read(fetch_offset, max(limit_bytes, 0), upper_offset=upper_offset)
            except OffsetOutOfRangeError as exc:  # retention moved the log start meanwhile
                return error(errors.OFFSET_OUT_OF_RANGE, str(exc), high_watermark, log.log_start_offset)
            except PartitionDeletedError as exc:
                return error(errors.UNKNOWN_TOPIC_OR_PARTITION, str(exc))
            except StorageError as exc:
                return error(errors.KAFKA_STORAGE_ERROR, str(exc), high_watermark, log_start_offset)
            if not first and batches and len(batches[0]) > limit_bytes:
                batches = []  # only the first partition with data may exceed the limits
            records = b"".join(batches)
        return {"index": index, "error_code": errors.NONE, "high_watermark": high_watermark,
                "log_start_offset": log_start_offset, "records": records}

    # -- ListOffsets ------------------------------------------------------------------------

    async def list_offsets(self, body: Any) -> Body:
        image = self.metadata.image
        topics = []
        for topic_request in _field(body, "topics", list):
            name = _field(topic_request, "name", str)
            topic = image.topic(name)
            entries = []
            for p in _field(topic_request, "partitions", list):
                index = _field(p, "index", int)
                timestamp = _field(p, "timestamp", int)
                entries.append(self._list_offset(topic, name, index, timestamp))
            topics.append({"name": name, "partitions": entries})
        return {"topics": topics}

    def _list_offset(self, topic: TopicImage | None, name: str, index: int, timestamp: int) -> Body:
        def entry(code: int, offset: int = NO_OFFSET, found_timestamp: int = NO_TIMESTAMP,
                  leader_epoch: int = NO_LEADER_EPOCH, message: str | None = None) -> Body:
            if message is not None:
                logger.debug("node %d list offsets error %s: %s", self.node_id, errors.error_name(code), message)
            return {"index": index, "error_code": code, "timestamp": found_timestamp, "offset": offset,
                    "leader_epoch": leader_epoch}

        partition = topic.partitions.get(index) if topic is not None else None
        if topic is None or partition is None:
            return entry(errors.UNKNOWN_TOPIC_OR_PARTITION, message=f"unknown partition {name}-{index}")
        if partition.leader == NO_LEADER:
            return entry(errors.LEADER_NOT_AVAILABLE, message=f"{name}-{index} has no leader")
        if partition.leader != self.node_id:
            return entry(errors.NOT_LEADER_OR_FOLLOWER, message=f"node {self.node_id} is not the leader")
        log = self.partitions.get(topic.topic_id, index)
        if log is None:
            return entry(errors.UNKNOWN_TOPIC_OR_PARTITION, message=f"{name}-{index} is not open here")
        try:
            return self._list_offset_of(log, timestamp, partition.leader_epoch, entry)
        except PartitionDeletedError as exc:
            return entry(errors.UNKNOWN_TOPIC_OR_PARTITION, message=str(exc))
        except StorageError as exc:
            return entry(errors.KAFKA_STORAGE_ERROR, message=str(exc))

    def _list_offset_of(self, log: PartitionLog, timestamp: int, epoch: int, entry: Callable[..., Body]) -> Body:
        if timestamp == EARLIEST_TIMESTAMP:
            return entry(errors.NONE, log.log_start_offset, leader_epoch=epoch)
        if timestamp == LATEST_TIMESTAMP:
            return entry(errors.NONE, self.partitions.high_watermark(log), leader_epoch=epoch)
        if timestamp < 0:
            return entry(errors.INVALID_REQUEST, message=f"timestamp {timestamp} is neither -1, -2 nor >= 0")
        offset = log.offset_for_timestamp(timestamp)
        if offset is None or offset >= self.partitions.high_watermark(log):
            return entry(errors.NONE, leader_epoch=epoch)
        # The offset is the first batch whose max timestamp reaches the target; the answer
        # carries that batch's max timestamp (records are never decoded here).
        batches = log.read(offset, 0, upper_offset=self.partitions.high_watermark(log))
        found = batch_codec.max_timestamp_of(batches[0]) if batches else NO_TIMESTAMP
        return entry(errors.NONE, offset, found, epoch)


def _consume_exception(future: asyncio.Future) -> None:
    """acks=0: nobody awaits the append, so log its failure here instead of at collection."""
    if not future.cancelled() and future.exception() is not None:
        logger.warning("append without acknowledgement failed: %s", future.exception())
