"""The node's TCP listener: frames in, handler coroutines, responses out in request order.

Theory of operation
-------------------
``Server`` owns the listening socket and every client connection. Bytes come off each socket
through a ``FrameProtocol`` (also used by ``cluster.peer``): it receives small frames into
one reusable buffer and a frame larger than that straight into a buffer of its own size,
checks each size prefix before the body is read, and decodes each frame as it completes,
so a 256 KiB produce is copied once from the socket, not through a stream buffer twice.
Each connection then has one reader coroutine, one task per request in flight, and a line
of pending responses:

    reader:    next decoded frame (check_frame_size BEFORE the body, decode_request)
               -> append an empty slot to the line -> start a task
    request task: run the handler -> encode the response into its slot -> write every
               finished response at the head of the line

So requests on one connection are handled concurrently (a produce waiting for its fsync
does not hold up the next request), but responses leave strictly in request order, and a
response at the head of the line leaves in the same loop step its handler finishes (no hop
through a responder task: a replication round trip waits for several of them in series).
At most ``in_flight_max`` requests are in flight (a semaphore: the reader takes a slot
before it reads a frame; the slot is given back once the response is written and the
transport's buffer is below its high-water mark, else after ``drain``); when none is free
the reader stops reading, which pushes back on the client through TCP. A handler that
returns None (produce with acks=0) has no response; its slot in the line is just skipped.

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
import collections
import logging
import socket
from typing import Any, Awaitable, Callable, Protocol, cast

from cluster.protocol import errors, framing
from cluster.protocol.framing import RequestHeader

logger = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 5.0
LISTEN_BACKLOG = 1024
FRAME_STAGING_BYTES = 64 * 1024  # per connection: small frames are received into this buffer
FRAMES_QUEUED_MAX = 2  # decoded frames waiting for their reader before reading pauses


class RequestHandler(Protocol):
    def handle(self, header: RequestHeader, body: Any) -> Awaitable[dict | None]: ...


class FrameProtocol(asyncio.BufferedProtocol):
    """Length-prefixed frames off one connection, decoded with ``decode`` as they complete.

    Frames up to ``FRAME_STAGING_BYTES`` are received into one reusable buffer (many per
    ``recv``); a larger frame, once its size prefix is read and checked against
    ``frame_bytes_max``, gets a buffer of exactly its size that the socket fills directly.
    ``read_frame`` hands out the decoded values in order; after the last one it raises what
    ended the stream (``FrameError`` for a refused or undecodable frame, stopping the reading
    there; ``IncompleteReadError`` at end of stream; ``ConnectionError`` when the connection
    is lost). Reading pauses while ``FRAMES_QUEUED_MAX`` decoded frames wait, so a reader that
    stops reading pushes back on the peer through TCP. ``drain`` waits while the transport's
    write buffer is above its high-water mark.
    """

    def __init__(self, frame_bytes_max: int, decode: Callable[[memoryview], Any], *,
                 connected: Callable[["FrameProtocol"], None] | None = None) -> None:
        self.frame_bytes_max = frame_bytes_max
        self._decode = decode
        self._connected = connected
        self.transport: asyncio.Transport | None = None
        self._staging = bytearray(FRAME_STAGING_BYTES)
        self._start = 0  # staging[_start:_end] holds bytes not parsed yet
        self._end = 0
        self._large: bytearray | None = None  # a frame larger than the staging buffer
        self._large_filled = 0
        self._frames: collections.deque[Any] = collections.deque()
        self._ended: BaseException | None = None  # raised once the queued frames are read
        self._reader: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._drainers: list[asyncio.Future[None]] = []
        self._lost = False
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- asyncio callbacks ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's do not subclass asyncio.Transport, but behave as one).
        self.transport = cast(asyncio.Transport, transport)
        if self._connected is not None:
            self._connected(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._large is not None:
            return memoryview(self._large)[self._large_filled:]
        if self._end == len(self._staging):  # full: move the unparsed tail to the front
            unparsed = self._end - self._start
            self._staging[:unparsed] = self._staging[self._start:self._end]
            self._start, self._end = 0, unparsed
        return memoryview(self._staging)[self._end:]

    def buffer_updated(self, nbytes: int) -> None:
        if self._large is not None:
            self._large_filled += nbytes
            if self._large_filled == len(self._large):
                frame, self._large = self._large, None
                self._deliver(memoryview(frame))
            return
        self._end += nbytes
        self._parse()

    def eof_received(self) -> bool:
        partial = self._large is not None or self._end > self._start
        self._end_with(asyncio.IncompleteReadError(b"", None) if partial
                       else asyncio.IncompleteReadError(b"", framing.SIZE_BYTES))
        return True  # half-closed: answers to requests in flight may still be written

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._end_with(exc if isinstance(exc, ConnectionError)
                       else ConnectionResetError(f"connection lost: {exc!r}"))
        for drainer in self._drainers:
            if not drainer.done():
                drainer.set_exception(ConnectionResetError("connection lost"))
        self._drainers.clear()
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        for drainer in self._drainers:
            if not drainer.done():
                drainer.set_result(None)
        self._drainers.clear()

    # -- frames ---------------------------------------------------------------------------

    def _parse(self) -> None:
        staging = self._staging
        while self._ended is None:
            available = self._end - self._start
            if available < framing.SIZE_BYTES:
                break
            try:
                size = framing.check_frame_size(
                    bytes(staging[self._start:self._start + framing.SIZE_BYTES]), self.frame_bytes_max)
            except framing.FrameError as exc:
                self._end_with(exc)
                return
            begin = self._start + framing.SIZE_BYTES
            if available - framing.SIZE_BYTES >= size:
                self._start = begin + size
                self._deliver(memoryview(staging)[begin:begin + size])
                continue
            if framing.SIZE_BYTES + size > len(staging):
                # Larger than the staging buffer: the socket fills a buffer of its own.
                large = bytearray(size)
                have = self._end - begin
                large[:have] = staging[begin:self._end]
                self._large, self._large_filled = large, have
                self._start = self._end = 0
            break
        if self._start == self._end:
            self._start = self._end = 0

    def _deliver(self, payload: memoryview) -> None:
        try:
            value = self._decode(payload)
        except framing.FrameError as exc:
            self._end_with(exc)
            return
        self._frames.append(value)
        if len(self._frames) >= FRAMES_QUEUED_MAX and not self._reading_paused:
            self._pause_reading()
        self._wake_reader()

    def _end_with(self, reason: BaseException) -> None:
        if self._ended is None:
            self._ended = reason
            self._pause_reading()
        self._wake_reader()

    def _pause_reading(self) -> None:
        self._reading_paused = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def _wake_reader(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.set_result(None)

    async def read_frame(self) -> Any:
        """The next decoded frame; raises what ended the stream after the last one."""
        while not self._frames:
            if self._ended is not None:
                raise self._ended
            self._reader = asyncio.get_running_loop().create_future()
            try:
                await self._reader
            finally:
                self._reader = None
        value = self._frames.popleft()
        if self._reading_paused and self._ended is None and len(self._frames) < FRAMES_QUEUED_MAX:
            self._reading_paused = False
            if self.transport is not None and not self.transport.is_closing():
                self.transport.resume_reading()
        return value

    # -- writing --------------------------------------------------------------------------

    async def drain(self) -> None:
        """Wait while the transport's write buffer is above its high-water mark."""
        if self._lost:
            raise ConnectionResetError("connection lost")
        if not self._writing_paused:
            return
        drainer = asyncio.get_running_loop().create_future()
        self._drainers.append(drainer)
        await drainer


class _Pending:
    """One request's place in its connection's line of responses."""

    __slots__ = ("frame", "done")

    def __init__(self) -> None:
        self.frame: bytes | None = None
        self.done = False


class _Connection:
    """One client connection: its reader task, its request tasks, its line of responses."""

    def __init__(self, server: "Server", protocol: FrameProtocol) -> None:
        self.server = server
        self.protocol = protocol
        assert protocol.transport is not None
        self.transport = protocol.transport
        peer = self.transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.line: collections.deque[_Pending] = collections.deque()  # at most in_flight_max
        self.tasks: set[asyncio.Task] = set()
        self.slots = asyncio.Semaphore(server.in_flight_max)
        self.written = 0  # responses written whose slots are not given back yet
        self.drainer: asyncio.Task | None = None
        self.answered = asyncio.Event()  # the line is empty
        self.answered.set()
        self.reader_task: asyncio.Task | None = None
        self.reading = True
        self.gone = False  # the client stopped taking responses

    async def serve(self) -> None:
        self.reader_task = asyncio.current_task()
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
        protocol = self.protocol
        slots = self.slots
        while True:
            await slots.acquire()  # no free slot: stop reading, TCP pushes back on the client
            header, body = await protocol.read_frame()
            pending = _Pending()
            self.line.append(pending)
            self.answered.clear()
            task = asyncio.create_task(self._answer(pending, header, body))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _answer(self, pending: _Pending, header: RequestHeader, body: Any) -> None:
        try:
            pending.frame = await self.server.dispatch(header, body)
        finally:  # cancelled at shutdown: its place in the line is given up without a response
            pending.done = True
            self._write_ready()

    def _write_ready(self) -> None:
        """Write every finished response at the head of the line, in order."""
        line = self.line
        transport = self.transport
        while line and line[0].done:
            frame = line.popleft().frame
            if frame is not None and not self.gone and not transport.is_closing():
                transport.write(frame)
            self.written += 1
        if not line:
            self.answered.set()
        if self.written and self.drainer is None:
            if self.gone or transport.get_write_buffer_size() <= transport.get_write_buffer_limits()[1]:
                self._release_written()
            else:  # the client reads slower than we answer: slots come back after drain
                self.drainer = asyncio.create_task(self._drain())

    def _release_written(self) -> None:
        for _ in range(self.written):
            self.slots.release()
        self.written = 0

    async def _drain(self) -> None:
        try:
            await self.protocol.drain()
        except (ConnectionError, OSError):
            # The client is gone. The reader may be parked waiting for a slot that will
            # never be released; wake it so the connection is torn down.
            self.gone = True
            if self.reading and self.reader_task is not None:
                self.reader_task.cancel()
        finally:
            self.drainer = None
            self._release_written()

    async def _finish(self) -> None:
        # The request tasks answer what is in flight; wait for them within the grace period.
        try:
            await asyncio.wait_for(self.answered.wait(), timeout=SHUTDOWN_GRACE_S)
            if self.drainer is not None:
                await asyncio.wait_for(asyncio.shield(self.drainer), timeout=SHUTDOWN_GRACE_S)
        except (asyncio.TimeoutError, ConnectionError, asyncio.CancelledError):
            pass
        for task in list(self.tasks):
            task.cancel()
        if self.drainer is not None:
            self.drainer.cancel()
        self.transport.close()
        try:
            await self.protocol.closed
        except asyncio.CancelledError:
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
        self._server = await asyncio.get_running_loop().create_server(
            lambda: FrameProtocol(self.frame_bytes_max, framing.decode_request, connected=self._accept),
            self.host, self.port, backlog=LISTEN_BACKLOG, reuse_address=True,
        )
        sockets = self._server.sockets
        if sockets and self.port == 0:
            self.port = sockets[0].getsockname()[1]

    def _accept(self, protocol: FrameProtocol) -> None:
        transport = protocol.transport
        assert transport is not None
        if len(self._connections) >= self.connections_max:
            logger.warning("refusing a connection: %d connections open (connections_max)", len(self._connections))
            transport.close()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = _Connection(self, protocol)
        self._connections.add(connection)
        task = connection.reader_task = asyncio.get_running_loop().create_task(connection.serve())
        task.add_done_callback(lambda _: self._connections.discard(connection))

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
