"""The admin client: create, delete, list and describe topics; describe configs and the cluster.

Theory of operation
-------------------
``Admin`` owns a ``NetworkClient`` and sends one request per call, synchronously, to
whichever broker answers (CreateTopics and DeleteTopics go to the controller when the
metadata names one). A whole-request error or the first failing topic is raised as its
Kafka exception (``TopicAlreadyExistsError``, ``InvalidPartitionsError``, ...); NOT_CONTROLLER
refreshes the metadata and retries until the request timeout.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Iterable

from cluster.client import errors
from cluster.client.connection import check_body_error
from cluster.client.network import NetworkClient
from cluster.client.structs import BrokerStatus, ClusterDescription, NewTopic, TopicDescription
from cluster.protocol.api import RESOURCE_TYPE_TOPIC, ApiKey

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
