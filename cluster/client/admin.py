"""The admin client: topics, configs, the cluster, and consumer groups (offsets, lag, resets).

Theory of operation
-------------------
``Admin`` owns a ``NetworkClient`` and sends one request per call, synchronously, to
whichever broker answers (CreateTopics and DeleteTopics go to the controller when the
metadata names one). A whole-request error or the first failing topic is raised as its
Kafka exception (``TopicAlreadyExistsError``, ``InvalidPartitionsError``, ...); NOT_CONTROLLER
refreshes the metadata and retries until the request timeout.

Group requests (ListGroups, ConsumerGroupDescribe, OffsetFetch, OffsetCommit, DeleteGroups)
go to the group coordinator through a ``CoordinatorClient``, which finds it and retries
NOT_COORDINATOR / COORDINATOR_NOT_AVAILABLE until the request timeout. A group's lag is
computed here: committed offsets (OffsetFetch) against each partition's log end offset
(ListOffsets latest), or against its log start when nothing was committed.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any, Iterable

from cluster.client import errors
from cluster.client.connection import check_body_error
from cluster.client.network import NetworkClient
from cluster.client.consumer import list_offsets, offset_commit_body, offset_commit_errors, parse_offset_fetch
from cluster.client.group import CoordinatorClient, topic_partitions_from_wire
from cluster.client.structs import (
    BrokerStatus,
    ClusterDescription,
    GroupDescription,
    GroupListing,
    GroupPartitionLag,
    MemberDescription,
    NewTopic,
    OffsetAndMetadata,
    TopicDescription,
    TopicPartition,
)
from cluster.protocol.api import (
    EARLIEST_TIMESTAMP,
    LATEST_TIMESTAMP,
    NO_COMMITTED_OFFSET,
    NO_MEMBER_EPOCH,
    RESOURCE_TYPE_TOPIC,
    ApiKey,
)

# The coordinator of every group is the active controller, so the groups-wide requests
# (ListGroups) ask FindCoordinator with this key.
ANY_GROUP_KEY = "kraft-admin"

log = logging.getLogger(__name__)


class Admin:
    def __init__(
        self,
        bootstrap_servers: str | list[str] = "127.0.0.1:9092",
        *,
        request_timeout_ms: int = 30000,
        retry_backoff_ms: int = 100,
        connect_timeout_ms: int = 10000,
        client_id: str = "kraft-admin",
    ) -> None:
        self.request_timeout_ms = request_timeout_ms
        self._retry_backoff_s = retry_backoff_ms / 1000
        self._client = NetworkClient(
            bootstrap_servers, client_id=client_id, request_timeout_ms=request_timeout_ms,
            connect_timeout_ms=connect_timeout_ms, retry_backoff_ms=retry_backoff_ms)
        self._coordinators: dict[str, CoordinatorClient] = {}

    # -- plumbing -----------------------------------------------------------------------

    def _controller_request(self, api_key: int, body: dict, what: str, results_key: str) -> dict:
        """Send to the controller (or any broker), retrying NOT_CONTROLLER-like errors.

        A response whose every item failed with NOT_CONTROLLER (no controller elected yet,
        or it moved) changed nothing, so it is retried like a whole failure.
        """
        deadline = time.monotonic() + self.request_timeout_ms / 1000
        while True:
            controller = self._client.metadata.controller_id
            try:
                if controller >= 0 and self._client.metadata.broker(controller) is not None:
                    response = self._client.request_node(controller, api_key, body)
                else:
                    response = self._client.request_any(api_key, body)
                check_body_error(response, what)
                _raise_if_no_controller(response.get(results_key, []), what)
                return response
            except errors.KraftError as exc:
                if not exc.retriable or time.monotonic() + self._retry_backoff_s > deadline:
                    raise
                log.debug("%s failed (%s); retrying", what, exc)
                self._client.metadata.request_update()
                self._client.maybe_refresh_metadata(None)
                time.sleep(self._retry_backoff_s)  # backoff between attempts

    def _metadata(self, topics: list[str] | None) -> dict[str, Any]:
        response = self._client.request_any(ApiKey.METADATA, {"topics": topics, "allow_auto_topic_creation": False})
        check_body_error(response, "Metadata")
        self._client.metadata.update(response, time.monotonic() * 1000)
        return response

    # -- topics -------------------------------------------------------------------------

    def create_topics(self, new_topics: Iterable[NewTopic], validate_only: bool = False,
                      timeout_ms: int | None = None) -> None:
        """Create topics; raise the Kafka error of the first topic that failed."""
        topics = list(new_topics)
        body = {
            "topics": [{"name": t.name, "num_partitions": t.num_partitions,
                        "replication_factor": t.replication_factor,
                        "configs": {str(k): str(v) for k, v in (t.configs or {}).items()}} for t in topics],
            "timeout_ms": self.request_timeout_ms if timeout_ms is None else timeout_ms,
            "validate_only": validate_only,
        }
        response = self._controller_request(ApiKey.CREATE_TOPICS, body, "CreateTopics", "topics")
        _raise_first(response.get("topics", []), "create topic")

    def delete_topics(self, names: Iterable[str], timeout_ms: int | None = None) -> None:
        body = {"topic_names": list(names),
                "timeout_ms": self.request_timeout_ms if timeout_ms is None else timeout_ms}
        response = self._controller_request(ApiKey.DELETE_TOPICS, body, "DeleteTopics", "responses")
        _raise_first(response.get("responses", []), "delete topic")

    def list_topics(self) -> list[str]:
        response = self._metadata(None)
        return sorted(t["name"] for t in response.get("topics", []) if not t.get("error_code", 0))

    def describe_topics(self, names: Iterable[str] | None = None) -> list[TopicDescription]:
        """Describe the named topics (all when None); an unknown name raises its error."""
        wanted = None if names is None else list(names)
        response = self._metadata(wanted)
        for t in response.get("topics", []):
            if t.get("error_code", 0):
                raise errors.error_for_code(t["error_code"], f"topic {t.get('name')!r}")
        topics = self._client.metadata.topics()
        order = wanted if wanted is not None else sorted(t["name"] for t in response.get("topics", []))
        return [topics[name] for name in order if name in topics]

    def describe_configs(self, topic: str, keys: Iterable[str] | None = None) -> dict[str, str]:
        """The topic's effective configuration, ``{name: value}``."""
        body = {"resources": [{"resource_type": RESOURCE_TYPE_TOPIC, "resource_name": topic,
                               "configuration_keys": None if keys is None else list(keys)}]}
        response = self._client.request_any(ApiKey.DESCRIBE_CONFIGS, body)
        check_body_error(response, "DescribeConfigs")
        results = response.get("results", [])
        if not results:
            raise errors.UnknownServerErrorError(f"DescribeConfigs returned no result for {topic!r}")
        result = results[0]
        if result.get("error_code", 0):
            raise errors.error_for_code(result["error_code"], result.get("error_message") or f"topic {topic!r}")
        return {c["name"]: c.get("value") for c in result.get("configs", [])}

    def describe_cluster(self) -> ClusterDescription:
        response = self._client.request_any(ApiKey.DESCRIBE_CLUSTER, {})
        check_body_error(response, "DescribeCluster")
        brokers = tuple(sorted(
            (BrokerStatus(b["node_id"], b["host"], b["port"], b.get("rack"), bool(b.get("fenced")))
             for b in response.get("brokers", [])), key=lambda b: b.node_id))
        return ClusterDescription(cluster_id=response.get("cluster_id", ""),
                                  controller_id=response.get("controller_id", -1),
                                  brokers=brokers, raft=response.get("raft"))

    # -- consumer groups ----------------------------------------------------------------

    def _coordinator(self, group_id: str) -> CoordinatorClient:
        coordinator = self._coordinators.get(group_id)
        if coordinator is None:
            coordinator = CoordinatorClient(self._client, group_id,
                                            retry_backoff_ms=int(self._retry_backoff_s * 1000))
            self._coordinators[group_id] = coordinator
        return coordinator

    def _group_request(self, group_id: str, api_key: int, body: dict[str, Any], what: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.request_timeout_ms / 1000
        return self._coordinator(group_id).request(api_key, body, what, deadline)

    def list_groups(self) -> list[GroupListing]:
        """Every consumer group the coordinator knows, sorted by id."""
        response = self._group_request(ANY_GROUP_KEY, ApiKey.LIST_GROUPS, {}, "ListGroups")
        if response.get("error_code", 0):
            raise errors.error_for_code(response["error_code"], response.get("error_message") or "ListGroups")
        return sorted((GroupListing(g["group_id"], g.get("group_state", ""), g.get("member_count", 0))
                       for g in response.get("groups", [])), key=lambda g: g.group_id)

    def list_group_offsets(self, group_id: str) -> dict[TopicPartition, OffsetAndMetadata]:
        """The group's committed offsets, for every partition it committed one for."""
        response = self._group_request(group_id, ApiKey.OFFSET_FETCH, {"group_id": group_id, "topics": None},
                                       "OffsetFetch")
        found = parse_offset_fetch(response, f"OffsetFetch of group {group_id!r}")
        return {tp: om for tp, om in sorted(found.items()) if om is not None}

    def describe_groups(self, group_ids: Iterable[str]) -> list[GroupDescription]:
        """Members, state and, per partition, committed offset, log end offset and lag.

        A group that does not exist raises ``GroupIdNotFoundError``.
        """
        ids = [group_ids] if isinstance(group_ids, str) else list(group_ids)
        descriptions = []
        for group_id in ids:
            response = self._group_request(group_id, ApiKey.CONSUMER_GROUP_DESCRIBE, {"group_ids": [group_id]},
                                           "ConsumerGroupDescribe")
            groups = [g for g in response.get("groups", []) if g.get("group_id") == group_id]
            if not groups:
                raise errors.UnknownServerErrorError(f"ConsumerGroupDescribe returned nothing for {group_id!r}")
            group = groups[0]
            if group.get("error_code", 0):
                raise errors.error_for_code(group["error_code"], group.get("error_message") or f"group {group_id!r}")
            descriptions.append(self._describe_one(group))
        return descriptions

    def _describe_one(self, group: dict[str, Any]) -> GroupDescription:
        group_id = group["group_id"]
        members = tuple(
            MemberDescription(
                member_id=m["member_id"], instance_id=m.get("instance_id"), client_id=m.get("client_id", ""),
                member_epoch=m.get("member_epoch", -1),
                assignment=tuple(sorted(topic_partitions_from_wire(m.get("assignment")))),
                target_assignment=tuple(sorted(topic_partitions_from_wire(m.get("target_assignment")))),
                subscribed_topic_names=tuple(m.get("subscribed_topic_names") or ()),
                subscribed_topic_regex=m.get("subscribed_topic_regex"))
            for m in group.get("members", []))
        owner = {tp: m.member_id for m in members for tp in m.assignment}
        committed = self.list_group_offsets(group_id)
        tps = sorted(set(committed) | set(owner))
        ends, starts = self._log_bounds(tps)
        partitions = []
        for tp in tps:
            om = committed.get(tp)
            offset = om.offset if om is not None else NO_COMMITTED_OFFSET
            end = ends.get(tp, -1)
            if end < 0:
                lag = -1
            elif offset >= 0:
                lag = max(0, end - offset)
            else:
                lag = max(0, end - starts.get(tp, 0))
            partitions.append(GroupPartitionLag(tp.topic, tp.partition, offset, end, lag, owner.get(tp)))
        return GroupDescription(group_id=group_id, state=group.get("group_state", ""),
                                group_epoch=group.get("group_epoch", -1),
                                assignment_epoch=group.get("assignment_epoch", -1),
                                members=members, partitions=tuple(partitions))

    def _log_bounds(self, tps: list[TopicPartition]) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
        """``(log end offsets, log start offsets)`` of the partitions whose topic exists."""
        if not tps:
            return {}, {}
        self._client.refresh_metadata({tp.topic for tp in tps})
        metadata = self._client.metadata
        known = [tp for tp in tps if metadata.topic(tp.topic) is not None
                 and tp.partition < len(metadata.topic(tp.topic).partitions)]  # type: ignore[union-attr]
        retry_backoff_ms = int(self._retry_backoff_s * 1000)
        ends = list_offsets(self._client, {tp: LATEST_TIMESTAMP for tp in known},
                            timeout_ms=self.request_timeout_ms, retry_backoff_ms=retry_backoff_ms)
        starts = list_offsets(self._client, {tp: EARLIEST_TIMESTAMP for tp in known},
                              timeout_ms=self.request_timeout_ms, retry_backoff_ms=retry_backoff_ms)
        return {tp: o for tp, (o, _) in ends.items()}, {tp: o for tp, (o, _) in starts.items()}

    def reset_group_offsets(
        self,
        group_id: str,
        topic: str,
        *,
        to_earliest: bool = False,
        to_latest: bool = False,
        to_offset: int | None = None,
        to_datetime: dt.datetime | None = None,
    ) -> dict[TopicPartition, tuple[int, int]]:
        """Move the group's committed offsets of every partition of ``topic``; returns
        ``{tp: (old, new)}`` (old is -1 where nothing was committed).

        Only for a group without members: NON_EMPTY_GROUP otherwise. ``to_offset`` is
        clamped to each partition's [log start, log end]; ``to_datetime`` (a naive one is
        local time) picks the first offset at or after that time, or the log end.
        """
        chosen = [to_earliest, to_latest, to_offset is not None, to_datetime is not None]
        if sum(map(bool, chosen)) != 1:
            raise ValueError("choose exactly one of to_earliest, to_latest, to_offset, to_datetime")
        (description,) = self.describe_topics([topic])
        tps = [TopicPartition(topic, p.partition) for p in description.partitions]
        retry_backoff_ms = int(self._retry_backoff_s * 1000)

        def lookup(timestamp: int) -> dict[TopicPartition, int]:
            found = list_offsets(self._client, {tp: timestamp for tp in tps},
                                 timeout_ms=self.request_timeout_ms, retry_backoff_ms=retry_backoff_ms)
            return {tp: offset for tp, (offset, _) in found.items()}

        starts, ends = lookup(EARLIEST_TIMESTAMP), lookup(LATEST_TIMESTAMP)
        if to_earliest:
            new = starts
        elif to_latest:
            new = ends
        elif to_offset is not None:
            if not isinstance(to_offset, int) or to_offset < 0:
                raise ValueError(f"to_offset must be a non-negative int, got {to_offset!r}")
            new = {tp: min(max(to_offset, starts[tp]), ends[tp]) for tp in tps}
        else:
            assert to_datetime is not None
            at = lookup(int(to_datetime.timestamp() * 1000))
            new = {tp: at[tp] if at.get(tp, -1) >= 0 else ends[tp] for tp in tps}
        old = self.list_group_offsets(group_id)
        body = offset_commit_body(group_id, "", NO_MEMBER_EPOCH, {tp: OffsetAndMetadata(new[tp]) for tp in tps},
                                  admin_reset=True)
        response = self._group_request(group_id, ApiKey.OFFSET_COMMIT, body, "OffsetCommit")
        failed = offset_commit_errors(response)
        if failed:
            tp, code = sorted(failed.items())[0]
            if code == errors.NON_EMPTY_GROUP:
                raise errors.NonEmptyGroupError(
                    f"group {group_id!r} has active members; offsets can only be reset while the group is empty "
                    "(stop its consumers first)")
            raise errors.error_for_code(code, f"resetting {tp.topic}-{tp.partition} of group {group_id!r}")
        return {tp: (old[tp].offset if tp in old else NO_COMMITTED_OFFSET, new[tp]) for tp in tps}

    def delete_groups(self, group_ids: Iterable[str]) -> None:
        """Delete groups and their committed offsets; raise the first group's error
        (NON_EMPTY_GROUP while it has members, GROUP_ID_NOT_FOUND)."""
        ids = [group_ids] if isinstance(group_ids, str) else list(group_ids)
        if not ids:
            return
        response = self._group_request(ids[0], ApiKey.DELETE_GROUPS, {"groups_names": ids}, "DeleteGroups")
        for result in response.get("results", []):
            code = result.get("error_code", 0)
            if code == errors.NON_EMPTY_GROUP:
                raise errors.NonEmptyGroupError(
                    f"group {result.get('group_id')!r} has active members; stop its consumers before deleting it")
            if code:
                raise errors.error_for_code(code, result.get("error_message") or f"group {result.get('group_id')!r}")

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "Admin":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _raise_if_no_controller(results: list[dict[str, Any]], what: str) -> None:
    codes = [r.get("error_code", 0) for r in results]
    if codes and all(code == errors.NOT_CONTROLLER for code in codes):
        raise errors.error_for_code(codes[0], results[0].get("error_message") or what)


def _raise_first(results: list[dict[str, Any]], what: str) -> None:
    for result in results:
        code = result.get("error_code", 0)
        if code:
            raise errors.error_for_code(code, result.get("error_message") or f"{what} {result.get('name')!r}")
