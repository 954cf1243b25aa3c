"""The connections of one client object and the metadata that says where to send what.

Theory of operation
-------------------
``NetworkClient`` owns a ``ClusterMetadata`` and a pool of ``BrokerConnection``s keyed by
``(host, port, channel)``. A channel separates traffic that must not queue behind other
traffic on the same socket: the consumer's long-polling Fetch requests use their own
channel, so a ListOffsets or Metadata request is never answered after a fetch's wait.

Requests to a node id go to the address the metadata gives for it. Requests that any node
can answer (Metadata, admin requests) go to ``request_any``: already-connected brokers
first, then the other known brokers, then the bootstrap servers, until one answers.
Metadata refreshes go through ``refresh_metadata``, which records success or failure in the
metadata so the refresh backoff holds.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Iterable

from cluster.client import errors
from cluster.client.connection import BrokerConnection, ResponseFuture, check_body_error, failed_future, parse_bootstrap
from cluster.client.metadata import ClusterMetadata
from cluster.protocol.api import ApiKey

log = logging.getLogger(__name__)

CHANNEL_DEFAULT = "default"
CHANNEL_CONTROL = "control"
CHANNEL_FETCH = "fetch"


def now_ms() -> float:
    return time.monotonic() * 1000


class NetworkClient:
    """Thread-safe."""

    def __init__(
        self,
        bootstrap_servers: str | list[str] | tuple[str, ...],
        *,
        client_id: str,
        request_timeout_ms: int = 30000,
        connect_timeout_ms: int = 10000,
        retry_backoff_ms: int = 100,
        reconnect_backoff_ms: int = 50,
        metadata_max_age_ms: int = 300000,
    ) -> None:
        self.bootstrap = parse_bootstrap(bootstrap_servers)
        self.client_id = client_id
        self.request_timeout_ms = request_timeout_ms
        self.connect_timeout_ms = connect_timeout_ms
        self.reconnect_backoff_ms = reconnect_backoff_ms
        self.metadata = ClusterMetadata(metadata_max_age_ms, retry_backoff_ms)
        self._lock = threading.Lock()
        self._connections: dict[tuple[str, int, str], BrokerConnection] = {}
        self._closed = False

    # -- connections --------------------------------------------------------------------

    def connection_to(self, host: str, port: int, channel: str = CHANNEL_DEFAULT) -> BrokerConnection:
        key = (host, port, channel)
        with self._lock:
            if self._closed:
                raise errors.IllegalStateError("the client is closed")
            conn = self._connections.get(key)
            if conn is None:
                conn = BrokerConnection(
                    host, port, client_id=self.client_id, request_timeout_ms=self.request_timeout_ms,
                    connect_timeout_ms=self.connect_timeout_ms, reconnect_backoff_ms=self.reconnect_backoff_ms,
                    name=f"{host}:{port}/{channel}")
                self._connections[key] = conn
            return conn

    def connection(self, node_id: int, channel: str = CHANNEL_DEFAULT) -> BrokerConnection | None:
        broker = self.metadata.broker(node_id)
        if broker is None:
            return None
        return self.connection_to(broker.host, broker.port, channel)

    def send(self, node_id: int, api_key: int, body: dict, *, channel: str = CHANNEL_DEFAULT,
             expect_response: bool = True) -> ResponseFuture:
        conn = self.connection(node_id, channel)
        if conn is None:
            self.metadata.request_update()
            return failed_future(errors.BrokerNotAvailableError(f"node {node_id} is not in the metadata"))
        return conn.send(api_key, body, expect_response=expect_response)

    def _candidates(self, channel: str) -> list[BrokerConnection]:
        brokers = self.metadata.brokers()
        random.shuffle(brokers)
        known = [self.connection_to(b.host, b.port, channel) for b in brokers]
        known.sort(key=lambda c: (not c.is_connected(), c.in_flight_count))
        seen = {(c.host, c.port) for c in known}
        boot = [self.connection_to(h, p, channel) for h, p in self.bootstrap if (h, p) not in seen]
        return known + boot

    def request_any(self, api_key: int, body: dict, *, timeout_ms: int | None = None,
                    channel: str = CHANNEL_CONTROL) -> dict:
        """Send to the first broker that answers; raise the last network error otherwise."""
        timeout_s = (self.request_timeout_ms if timeout_ms is None else timeout_ms) / 1000 + 1
        last: BaseException | None = None
        for conn in self._candidates(channel):
            try:
                return conn.send(api_key, body).result(timeout_s)
            except errors.KraftError as exc:
                if not exc.retriable:
                    raise
                last = exc
        raise errors.NoBrokersAvailableError(f"no broker answered ({last})")

    def request_node(self, node_id: int, api_key: int, body: dict, *, timeout_ms: int | None = None,
                     channel: str = CHANNEL_CONTROL) -> dict:
        timeout_s = (self.request_timeout_ms if timeout_ms is None else timeout_ms) / 1000 + 1
        return self.send(node_id, api_key, body, channel=channel).result(timeout_s)

    # -- metadata -----------------------------------------------------------------------

    def refresh_metadata(self, topics: Iterable[str] | None, *, allow_auto_topic_creation: bool = False) -> dict[str, int]:
        """Fetch metadata for ``topics`` (None = all) and apply it; return per-topic errors."""
        body = {"topics": None if topics is None else sorted(set(topics)),
                "allow_auto_topic_creation": allow_auto_topic_creation}
        try:
            response = self.request_any(ApiKey.METADATA, body)
            check_body_error(response, "Metadata")
        except errors.KraftError:
            self.metadata.failed_attempt(now_ms())
            raise
        return self.metadata.update(response, now_ms())

    def maybe_refresh_metadata(self, topics: Iterable[str] | None) -> bool:
        """Refresh when due; True when a refresh succeeded. Never raises network errors."""
        if self.metadata.refresh_due_in_ms(now_ms()) > 0:
            return False
        try:
            self.refresh_metadata(topics)
        except errors.KraftError as exc:
            if not exc.retriable:
                raise
            log.debug("metadata refresh failed: %s", exc)
            return False
        return True

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections = list(self._connections.values())
            self._connections.clear()
        for conn in connections:
            conn.close()
