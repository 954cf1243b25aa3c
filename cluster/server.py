"""The node's TCP listener: frames in, handler coroutines, responses out in request order.

Theory of operation
-------------------
``Server`` owns the listening socket and every client connection. Each connection has two
coroutines joined by a bounded queue:

    reader:    read 4-byte size -> check_frame_size (BEFORE reading the body) -> readexactly
               -> decode_request -> start a task running the handler -> put the task in the queue
    responder: take tasks from the queue in order -> await each -> write its response frame

So requests on one connection are handled concurrently (a produce waiting for its fsync
does not hold up the next request), but responses leave strictly in request order. At most
``in_flight_max`` requests are in flight (a semaphore: the reader takes a slot before it
reads a frame, the responder gives it back once the response is written); when none is
free the reader stops reading, which pushes back on the client through TCP. A handler that
returns None (produce with acks=0) has no response; the responder just moves on.

Failures, by where they happen:
  * a frame too large, or bytes that are not a request frame: log, answer what is already
    in flight, close the connection (the stream cannot be resynchronised);
  * ``KafkaError`` from a handler (unknown api, wrong-shape body, ...): a response
    ``{"error_code", "error_message"}``, the connection stays open;
  * any other exception from a handler: UNKNOWN_SERVER_ERROR, logged with its traceback.
The node never crashes because of what a client sends.

``stop`` stops accepting, stops reading, gives in-flight requests ``grace_s`` to answer,
then closes every connection. Connections beyond ``connections_max`` are closed at once.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any, Awaitable, Protocol

from cluster.protocol import errors, framing
from cluster.protocol.framing import RequestHeader

logger = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 5.0
LISTEN_BACKLOG = 1024
STREAM_BUFFER_BYTES = 1 << 20  # asyncio stream read buffer limit per connection


class RequestHandler(Protocol):
    def handle(self, header: RequestHeader, body: Any) -> Awaitable[dict | None]: ...


class _Connection:
    """One client connection: its reader task and its responder task."""

    def __init__(self, server: "Server", reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        # Holds at most in_flight_max tasks (the slots) plus the closing sentinel.
        self.queue: asyncio.Queue[asyncio.Task | None] = asyncio.Queue()
        self.slots = asyncio.Semaphore(server.in_flight_max)
        self.reader_task: asyncio.Task | None = None
        self.responder_task: asyncio.Task | None = None
        self.reading = True

    async def serve(self) -> None:
        self.reader_task = asyncio.current_task()
        self.responder_task = asyncio.create_task(self._respond())
        try:
            await self._read_requests()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went away
        except framing.FrameError as exc:
            logger.warning("closing connection from %s: %s", self.peer, exc)
        except asyncio.CancelledError:
            pass  # shutdown: stop reading, answer what is in flight
        finally:
            self.reading = False
            await self._finish()

    async def _read_requests(self) -> None:
        reader = self.reader
        frame_bytes_max = self.server.frame_bytes_max
        dispatch = self.server.dispatch
        queue = self.queue
        slots = self.slots
        while True:
            await slots.acquire()  # no free slot: stop reading, TCP pushes back on the client
            prefix = await reader.readexactly(framing.SIZE_BYTES)
            size = framing.check_frame_size(prefix, frame_bytes_max)
            payload = await reader.readexactly(size)
            header, body = framing.decode_request(payload)
            queue.put_nowait(asyncio.create_task(dispatch(header, body)))

    async def _respond(self) -> None:
        writer = self.writer
        try:
            while True:
                task = await self.queue.get()
                if task is None:
                    return
                frame = await task
                if frame is not None and not writer.is_closing():
                    writer.write(frame)
                    await writer.drain()  # returns at once unless the client is not reading
                self.slots.release()
        except (ConnectionError, OSError):
            # The client is gone. The reader may be parked waiting for a slot that will
            # never be released; wake it so the connection is torn down.
            if self.reading and self.reader_task is not None:
                self.reader_task.cancel()

    async def _finish(self) -> None:
        self.queue.put_nowait(None)  # the responder answers what is queued, then stops
        try:
            assert self.responder_task is not None
            await asyncio.wait_for(asyncio.shield(self.responder_task), timeout=SHUTDOWN_GRACE_S)
        except (asyncio.TimeoutError, ConnectionError, asyncio.CancelledError):
            pass
        except Exception:
            logger.exception("responder of connection from %s failed", self.peer)
        if self.responder_task is not None and not self.responder_task.done():
            self.responder_task.cancel()
        while not self.queue.empty():
            task = self.queue.get_nowait()
            if task is not None and not task.done():
                task.cancel()
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass


class Server:
    """The asyncio TCP listener of one node (see the module docstring)."""

    def __init__(
        self,
        host: str,
        port: int,
        handler: RequestHandler,
        *,
        frame_bytes_max: int,
        connections_max: int,
        in_flight_max: int,
    ) -> None:
        self.host = host
        self.port = port
        self.handler = handler
        self.frame_bytes_max = frame_bytes_max
        self.connections_max = connections_max
        self.in_flight_max = in_flight_max
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_Connection] = set()

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.host, self.port, backlog=LISTEN_BACKLOG, limit=STREAM_BUFFER_BYTES,
            reuse_address=True,
        )
        sockets = self._server.sockets
        if sockets and self.port == 0:
            self.port = sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= self.connections_max:
            logger.warning("refusing a connection: %d connections open (connections_max)", len(self._connections))
            writer.close()
            return
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = _Connection(self, reader, writer)
        self._connections.add(connection)
        try:
            await connection.serve()
        finally:
            self._connections.discard(connection)

    async def dispatch(self, header: RequestHeader, body: Any) -> bytes | None:
        """Run the handler; turn its outcome (a body, None, or an exception) into a frame."""
        try:
            response = await self.handler.handle(header, body)
        except errors.KafkaError as exc:
            response = {"error_code": exc.code, "error_message": exc.message}
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("request api_key=%s correlation_id=%s failed", header.api_key, header.correlation_id)
            response = {"error_code": errors.UNKNOWN_SERVER_ERROR, "error_message": f"{type(exc).__name__}: {exc}"}
        if response is None:
            return None
        try:
            return framing.encode_response(header.correlation_id, response)
        except Exception as exc:
            logger.exception("response to api_key=%s could not be encoded", header.api_key)
            return framing.encode_response(
                header.correlation_id,
                {"error_code": errors.UNKNOWN_SERVER_ERROR, "error_message": f"{type(exc).__name__}: {exc}"},
            )

    async def stop(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """Stop accepting and reading; let in-flight requests answer within ``grace_s``."""
        if self._server is not None:
            self._server.close()
        connections = list(self._connections)
        for connection in connections:
            if connection.reading and connection.reader_task is not None and not connection.reader_task.done():
                connection.reader_task.cancel()  # a connection already finishing is left to finish
        tasks = [c.reader_task for c in connections if c.reader_task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=grace_s + 1.0)
        if self._server is not None:
            await self._server.wait_closed()
