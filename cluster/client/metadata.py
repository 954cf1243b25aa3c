"""The client's picture of the cluster: brokers, topics, partitions and their leaders.

Theory of operation
-------------------
``ClusterMetadata`` is filled from Metadata responses (``update``) and read by the
producer's sender, the consumer's fetcher and the admin client. It does no I/O and reads
no clock: callers pass ``now_ms``. A refresh is due when someone asked for one
(``request_update``, e.g. after a NOT_LEADER_OR_FOLLOWER error) or when the data is older
than ``metadata_max_age_ms``; ``refresh_due_in_ms`` says how long until then, honouring the
retry backoff after a failed refresh.

A response only replaces the topics it names: a producer asks about its own topics, and
what it learns about one topic never erases what it knows of another. A topic the response
reports as unknown is dropped. ``version`` counts updates, so a reader can tell cheaply
whether anything changed since it last looked.
"""

from __future__ import annotations

import threading
from typing import Any

from cluster.client.structs import BrokerInfo, PartitionDescription, TopicDescription

NO_LEADER = -1


def _leader_of(partition: dict[str, Any]) -> int:
    leader = partition.get("leader_id")
    return leader if isinstance(leader, int) and leader >= 0 else NO_LEADER


class ClusterMetadata:
    """Thread-safe: one lock around every read and update."""

    def __init__(self, metadata_max_age_ms: int = 300000, retry_backoff_ms: int = 100) -> None:
        self.metadata_max_age_ms = metadata_max_age_ms
        self.retry_backoff_ms = retry_backoff_ms
        self._lock = threading.Lock()
        self.cluster_id: str | None = None
        self.controller_id: int = -1
        self._brokers: dict[int, BrokerInfo] = {}
        self._topics: dict[str, TopicDescription] = {}
        self._topic_errors: dict[str, int] = {}
        self._last_refresh_ms: float = -1e18
        self._last_attempt_ms: float = -1e18
        self._need_update = True
        self.version = 0

    # -- updates ------------------------------------------------------------------------

    def update(self, body: dict[str, Any], now_ms: float) -> dict[str, int]:
        """Apply a Metadata response body; return ``{topic: error_code}`` for failed topics."""
        brokers = {
            b["node_id"]: BrokerInfo(b["node_id"], b["host"], b["port"], b.get("rack"))
            for b in body.get("brokers", [])
        }
        topic_errors: dict[str, int] = {}
        topics: dict[str, TopicDescription] = {}
        for t in body.get("topics", []):
            if t.get("error_code", 0):
                topic_errors[t["name"]] = t["error_code"]
                continue
            partitions = tuple(sorted(
                (PartitionDescription(
                    partition=p["partition_index"],
                    leader=_leader_of(p),
                    replicas=tuple(p.get("replica_nodes", ())),
                    isr=tuple(p.get("isr_nodes", ())),
                    leader_epoch=p.get("leader_epoch", -1),
                    offline_replicas=tuple(p.get("offline_replicas", ())),
                ) for p in t.get("partitions", [])),
                key=lambda p: p.partition,
            ))
            topics[t["name"]] = TopicDescription(t["name"], partitions, bool(t.get("is_internal", False)))
        with self._lock:
            self.cluster_id = body.get("cluster_id", self.cluster_id)
            self.controller_id = body.get("controller_id", self.controller_id)
            if brokers:
                self._brokers = brokers
            for name in topic_errors:
                self._topics.pop(name, None)
            self._topics.update(topics)
            self._topic_errors.update(topic_errors)
            for name in topics:
                self._topic_errors.pop(name, None)
            self._last_refresh_ms = now_ms
            self._last_attempt_ms = now_ms
            self._need_update = False
            self.version += 1
        return topic_errors

    def failed_attempt(self, now_ms: float) -> None:
        with self._lock:
            self._last_attempt_ms = now_ms

    def request_update(self) -> None:
        with self._lock:
            self._need_update = True

    def refresh_due_in_ms(self, now_ms: float) -> float:
        """0 when a refresh should be sent now; otherwise how long until one is due."""
        with self._lock:
            backoff_left = self._last_attempt_ms + self.retry_backoff_ms - now_ms
            if self._need_update:
                return max(0.0, backoff_left)
            return max(0.0, backoff_left, self._last_refresh_ms + self.metadata_max_age_ms - now_ms)

    def age_ms(self, now_ms: float) -> float:
        """Milliseconds since the last successful refresh."""
        with self._lock:
            return now_ms - self._last_refresh_ms

    def forget_topic(self, name: str) -> None:
        with self._lock:
            self._topics.pop(name, None)
            self.version += 1

    # -- reads --------------------------------------------------------------------------

    def brokers(self) -> list[BrokerInfo]:
        with self._lock:
            return list(self._brokers.values())

    def broker(self, node_id: int) -> BrokerInfo | None:
        with self._lock:
            return self._brokers.get(node_id)

    def topic(self, name: str) -> TopicDescription | None:
        with self._lock:
            return self._topics.get(name)

    def topics(self) -> dict[str, TopicDescription]:
        with self._lock:
            return dict(self._topics)

    def topic_error(self, name: str) -> int:
        with self._lock:
            return self._topic_errors.get(name, 0)

    def partition_count(self, name: str) -> int | None:
        topic = self.topic(name)
        return len(topic.partitions) if topic is not None else None

    def leader_for(self, topic: str, partition: int) -> int:
        """The leader's node id, or NO_LEADER when unknown or the partition has none."""
        with self._lock:
            description = self._topics.get(topic)
            if description is None or partition >= len(description.partitions):
                return NO_LEADER
            p = description.partitions[partition]
            if p.partition != partition:  # gaps in the numbering: search
                for p in description.partitions:
                    if p.partition == partition:
                        break
                else:
                    return NO_LEADER
            return p.leader if p.leader in self._brokers else NO_LEADER
