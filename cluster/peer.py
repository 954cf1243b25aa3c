"""Node-to-node requests: an asyncio client of another node's client listener.

Theory of operation
-------------------
``PeerClient`` owns at most one TCP connection per peer address (``host:port``), opened on
first use and kept for the next request. A request on a connection holds that
connection's lock from sending the frame to reading the response, so requests to one peer
are one at a time and responses cannot be mixed up (the correlation id is checked all the
same). Node-to-node traffic is small and rare (registrations, heartbeats, forwarded
CreateTopics / DeleteTopics), so one request in flight per peer is enough.

    call(host, port, api_key, body, timeout_ms)
      -> connection for (host, port) (connect within timeout) -> lock
      -> write encode_request frame -> the next frame off the connection's FrameProtocol
         (``cluster.server``: size checked before the body is read, received without a
         stream buffer, decode_response) -> the response body

Any failure (connect refused, timeout, closed connection, a malformed frame) closes that
connection and raises ``PeerError``; the next call connects again. Callers decide whether
to retry: a peer error is always "outcome unknown" for a request that changes state.

Follower fetchers (replication) use a PeerClient of their own (the node makes a second
one): one connection per source broker carrying that fetcher's long polls, so those never
hold up heartbeats or forwarded requests on these connections.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from cluster.protocol import framing
from cluster.server import FrameProtocol

logger = logging.getLogger(__name__)

PEER_CLIENT_ID = "kraft-node"
PEER_RESPONSE_BYTES_MAX = 64 * 1024 * 1024
PEER_CONNECTIONS_MAX = 64  # distinct peers remembered; the cluster has far fewer nodes


class PeerError(Exception):
    """A request to a peer failed before a response was read; its outcome is unknown."""


class _PeerConnection:
    def __init__(self, protocol: FrameProtocol) -> None:
        assert protocol.transport is not None
        self.protocol = protocol
        self.transport = protocol.transport
        self.lock = asyncio.Lock()
        self.next_correlation_id = 1

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def close(self) -> None:
        self.transport.close()


class PeerClient:
    """Requests from this node to other nodes (see the module docstring)."""

    def __init__(self, node_id: int) -> None:
        self.node_id = node_id
        self.client_id = f"{PEER_CLIENT_ID}-{node_id}"
        self._connections: dict[tuple[str, int], _PeerConnection] = {}
        self._connect_locks: dict[tuple[str, int], asyncio.Lock] = {}
        self._closed = False

    async def call(self, host: str, port: int, api_key: int, body: Any, timeout_ms: int) -> dict:
        """Send one request and return the response body; ``PeerError`` on any failure."""
        if self._closed:
            raise PeerError("peer client is closed")
        address = (host, port)
        try:
            # A deadline on this task, not wait_for: no task per call, no extra loop
            # iterations on the replication round trip.
            async with asyncio.timeout(timeout_ms / 1000):
                return await self._call(address, api_key, body)
        except PeerError:
            self._drop(address)
            raise
        except asyncio.TimeoutError:
            self._drop(address)
            raise PeerError(f"no response from {host}:{port} within {timeout_ms} ms") from None
        except (OSError, asyncio.IncompleteReadError, framing.FrameError) as exc:
            self._drop(address)
            raise PeerError(f"request to {host}:{port} failed: {exc!r}") from None

    async def _call(self, address: tuple[str, int], api_key: int, body: Any) -> dict:
        connection = await self._connection(address)
        async with connection.lock:
            correlation_id = connection.next_correlation_id
            connection.next_correlation_id += 1
            connection.transport.write(framing.encode_request(api_key, 0, correlation_id, self.client_id, body))
            await connection.protocol.drain()
            got, response = await connection.protocol.read_frame()  # size checked, then decoded
        if got != correlation_id:
            raise PeerError(f"response {got} to request {correlation_id} from {address[0]}:{address[1]}")
        if not isinstance(response, dict):
            raise PeerError(f"response from {address[0]}:{address[1]} is not a map")
        return response

    async def _connection(self, address: tuple[str, int]) -> _PeerConnection:
        connection = self._connections.get(address)
        if connection is not None and not connection.is_closing():
            return connection
        lock = self._connect_locks.setdefault(address, asyncio.Lock())
        async with lock:
            connection = self._connections.get(address)
            if connection is not None and not connection.is_closing():
                return connection
            if len(self._connections) >= PEER_CONNECTIONS_MAX:
                self.close()
                self._closed = False
            _, protocol = await asyncio.get_running_loop().create_connection(
                lambda: FrameProtocol(PEER_RESPONSE_BYTES_MAX, framing.decode_response), *address)
            assert protocol.transport is not None
            sock = protocol.transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection = _PeerConnection(protocol)
            self._connections[address] = connection
            logger.debug("node %d connected to peer %s:%d", self.node_id, *address)
            return connection

    def _drop(self, address: tuple[str, int]) -> None:
        connection = self._connections.pop(address, None)
        if connection is not None:
            connection.close()

    def close(self) -> None:
        self._closed = True
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()
