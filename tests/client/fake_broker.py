"""A scripted broker on a real loopback socket, for connection tests without a node.

It reads request frames and hands each ``(header, body)`` to ``handler``, which returns a
response body, ``None`` for no response, or ``HOLD`` to answer nothing and keep reading.
"""

from __future__ import annotations

import socket
import threading
from typing import Any, Callable

from cluster.launcher import recv_exactly
from cluster.protocol import framing

HOLD = object()


class FakeBroker:
    def __init__(self, handler: Callable[[framing.RequestHeader, Any], Any]) -> None:
        self.handler = handler
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self.requests: list[tuple[framing.RequestHeader, Any]] = []
        self.connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            while True:
                prefix = recv_exactly(conn, 4)
                size = framing.check_frame_size(prefix, 1 << 26)
                header, body = framing.decode_request(recv_exactly(conn, size))
                self.requests.append((header, body))
                response = self.handler(header, body)
                if response is None or response is HOLD:
                    continue
                if isinstance(response, bytes):
                    conn.sendall(response)
                else:
                    conn.sendall(framing.encode_response(header.correlation_id, response))
        except (OSError, ConnectionError):
            return

    def drop_connections(self) -> None:
        for conn in self.connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        self.connections.clear()

    def close(self) -> None:
        self.listener.close()
        self.drop_connections()


