"""One TCP connection to one broker: pipelined requests, responses matched in order.

Theory of operation
-------------------
``BrokerConnection`` owns a blocking socket and a reader thread. ``send`` (any thread)
assigns the next correlation id, appends ``(correlation_id, future, deadline)`` to the
in-flight queue and writes the frame, all under a write lock, so the queue's order is the
wire's order; the queue itself has a separate short lock that is never held during a
write, so the reader keeps draining responses while a large request is being written. The node answers requests on a connection in the order it received them, so
the reader thread pops the queue's head for every response frame and checks that the
correlation ids agree; a mismatch means the stream is broken and the connection closes.

A produce request with acks=0 gets no response: it is written but never queued.

Failures never raise from a background thread. A connect error, a broken socket, a
response frame that does not decode, or a request older than ``request_timeout_ms``
closes the connection and fails every queued future with a retriable error
(NETWORK_EXCEPTION, or REQUEST_TIMED_OUT for the timeout), after letting the connection's
lock go, since a future's callback may send on this connection again. The next ``send`` reconnects,
no sooner than the reconnect backoff after a failed attempt. The framing itself lives in
``cluster.protocol.framing`` and never touches a socket.
"""

from __future__ import annotations

import collections
import logging
import socket
import struct
import threading
import time
from typing import Any, Callable

from cluster.client import errors
from cluster.protocol import framing

log = logging.getLogger(__name__)

READ_POLL_S = 0.1  # how often a reader blocked on recv looks at request deadlines
READ_BUFFER_BYTES = 256 * 1024  # one recv takes every response frame that fits in here
RECONNECT_BACKOFF_MS_MAX = 1000
RESPONSE_FRAME_BYTES_MAX = 1 << 30


class ResponseFuture:
    """The eventual response body of one request (a dict), or the error that replaced it.

    Callbacks run once, in the thread that completes the future (usually a reader thread),
    or at once in the caller's thread when the future is already complete.
    """

    __slots__ = ("_event", "_value", "_error", "_callbacks", "_lock")

    def __init__(self) -> None:
        self._event = threading.Event()
        self._value: dict | None = None
        self._error: BaseException | None = None
        self._callbacks: list[Callable[["ResponseFuture"], None]] = []
        self._lock = threading.Lock()

    def done(self) -> bool:
        return self._event.is_set()

    @property
    def error(self) -> BaseException | None:
        return self._error

    @property
    def value(self) -> dict | None:
        return self._value

    def success(self, value: dict) -> None:
        self._complete(value, None)

    def failure(self, error: BaseException) -> None:
        self._complete(None, error)

    def _complete(self, value: dict | None, error: BaseException | None) -> None:
        with self._lock:
            if self._event.is_set():
                return
            self._value = value
            self._error = error
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            _run_callback(callback, self)

    def add_callback(self, callback: Callable[["ResponseFuture"], None]) -> None:
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return
        _run_callback(callback, self)

    def result(self, timeout_s: float | None = None) -> dict:
        """Wait for the response body; raise the error that replaced it, or a timeout."""
        if not self._event.wait(timeout_s):
            raise errors.KafkaTimeoutError(f"no response within {timeout_s} s")
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


def _run_callback(callback: Callable[[ResponseFuture], None], future: ResponseFuture) -> None:
    try:
        callback(future)
    except Exception:  # a callback's bug must not kill the reader thread
        log.exception("response callback failed")


def _fail_all(futures: list[ResponseFuture], error: BaseException) -> None:
    for future in futures:
        future.failure(error)


def failed_future(error: BaseException) -> ResponseFuture:
    future = ResponseFuture()
    future.failure(error)
    return future


class BrokerConnection:
    """A pipelined request/response channel to ``host:port``. Thread-safe."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str,
        request_timeout_ms: int = 30000,
        connect_timeout_ms: int = 10000,
        reconnect_backoff_ms: int = 50,
        name: str = "",
    ) -> None:
        self.host = host
        self.port = port
        self.client_id = client_id
        self.request_timeout_ms = request_timeout_ms
        self.connect_timeout_ms = connect_timeout_ms
        self.reconnect_backoff_ms = reconnect_backoff_ms
        self.name = name or f"{host}:{port}"
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._in_flight: collections.deque[tuple[int, ResponseFuture, float]] = collections.deque()
        self._next_correlation_id = 1
        self._closed = False
        self._failed_attempts = 0
        self._next_attempt_at = 0.0

    # -- state ------------------------------------------------------------------------

    @property
    def in_flight_count(self) -> int:
        return len(self._in_flight)

    def is_connected(self) -> bool:
        return self._sock is not None

    def backoff_remaining_ms(self) -> float:
        """Milliseconds until the next connect attempt is allowed (0 when connected)."""
        if self._sock is not None:
            return 0.0
        return max(0.0, (self._next_attempt_at - time.monotonic()) * 1000)

    # -- requests ---------------------------------------------------------------------

    def send(self, api_key: int, body: dict, *, expect_response: bool = True, api_version: int = 0) -> ResponseFuture:
        """Write one request. The future completes with the response body, or fails.

        With ``expect_response=False`` (acks=0 produce) the future completes with ``{}``
        once the bytes are written.
        """
        future = ResponseFuture()
        # _write_lock keeps the wire's order equal to the in-flight queue's order; _lock
        # guards the queue and the socket reference and is never held while writing, so
        # the reader can always take responses off the socket.
        with self._write_lock:
            with self._lock:
                if self._closed:
                    future.failure(errors.IllegalStateError(f"connection to {self.name} is closed"))
                    return future
                if self._sock is None:
                    error = self._connect_locked()
                    if error is not None:
                        future.failure(error)
                        return future
                sock = self._sock
                assert sock is not None
                correlation_id = self._next_correlation_id
                self._next_correlation_id = (correlation_id + 1) & 0x7FFFFFFF
            frame = framing.encode_request(api_key, api_version, correlation_id, self.client_id, body)
            with self._lock:
                if self._sock is not sock:
                    future.failure(errors.NetworkExceptionError(f"connection to {self.name} was lost"))
                    return future
                if expect_response:
                    deadline = time.monotonic() + self.request_timeout_ms / 1000
                    self._in_flight.append((correlation_id, future, deadline))
            try:
                sock.sendall(frame)
            except OSError as exc:
                error = errors.NetworkExceptionError(f"sending to {self.name} failed: {exc}")
                self._fail(sock, error)
                future.failure(error)  # no-op when the line above already failed it
                return future
        if not expect_response:
            future.success({})
        return future

    def request(self, api_key: int, body: dict, timeout_ms: int | None = None) -> dict:
        """Send and wait: the response body, or raise the error."""
        timeout_ms = self.request_timeout_ms + 1000 if timeout_ms is None else timeout_ms
        return self.send(api_key, body).result(timeout_ms / 1000)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pending = self._detach_locked()
        _fail_all(pending, errors.NetworkExceptionError(f"connection to {self.name} closed by the client"))
        reader = self._reader
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout=2 * READ_POLL_S + 1)

    # -- internals --------------------------------------------------------------------

    def _connect_locked(self) -> BaseException | None:
        now = time.monotonic()
        if now < self._next_attempt_at:
            return errors.NetworkExceptionError(
                f"connection to {self.name} failed recently; next attempt in "
                f"{(self._next_attempt_at - now) * 1000:.0f} ms")
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout_ms / 1000)
        except OSError as exc:
            self._failed_attempts += 1
            backoff_ms = min(RECONNECT_BACKOFF_MS_MAX, self.reconnect_backoff_ms * (2 ** min(self._failed_attempts - 1, 10)))
            self._next_attempt_at = time.monotonic() + backoff_ms / 1000
            log.debug("connecting to %s failed: %s", self.name, exc)
            return errors.NetworkExceptionError(f"cannot connect to {self.name}: {exc}")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Blocking mode with kernel timeouts: the reader waits in recv without holding the
        # GIL, takes whatever has arrived (every whole frame in its buffer is dispatched
        # before the next recv), and wakes every READ_POLL_S to look at request
        # deadlines; a write may block up to the request timeout.
        sock.settimeout(None)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(READ_POLL_S))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(max(self.request_timeout_ms / 1000, 1.0)))
        self._failed_attempts = 0
        self._sock = sock
        reader = threading.Thread(
            target=self._read_loop, args=(sock,), name=f"kraft-conn-{self.name}", daemon=True)
        self._reader = reader
        reader.start()
        log.debug("connected to %s", self.name)
        return None

    def _detach_locked(self) -> list[ResponseFuture]:
        """Close the socket and take every queued request (caller holds the lock). The
        caller fails them once it has let the lock go: their callbacks may send again on
        this connection (the producer's sender does), which takes the lock."""
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        pending = [future for _, future, _ in self._in_flight]
        self._in_flight.clear()
        return pending

    def _fail(self, sock: socket.socket, error: BaseException) -> None:
        with self._lock:
            if self._sock is not sock:  # a newer connection may already be up
                return
            log.info("connection to %s failed: %s", self.name, error)
            pending = self._detach_locked()
        _fail_all(pending, error)

    def _read_loop(self, sock: socket.socket) -> None:
        try:
            self._read_frames(sock)
        except Exception as exc:  # the reader must end by failing requests, never silently
            log.exception("reader of %s failed", self.name)
            self._fail(sock, errors.NetworkExceptionError(f"reader of {self.name} failed: {exc}"))

    def _recv_some(self, sock: socket.socket, view: memoryview) -> int:
        """One recv into ``view`` (as many bytes as are there, at least one); 0 when the
        connection is gone."""
        while True:
            if self._sock is not sock:
                return 0
            try:
                n = sock.recv_into(view)
            except (BlockingIOError, TimeoutError, InterruptedError):
                self._check_deadlines(sock)
                continue
            except OSError as exc:
                self._fail(sock, errors.NetworkExceptionError(f"reading from {self.name} failed: {exc}"))
                return 0
            if n == 0:
                self._fail(sock, errors.NetworkExceptionError(f"{self.name} closed the connection"))
            return n

    def _recv_into(self, sock: socket.socket, view: memoryview) -> bool:
        """Fill ``view`` from the socket; False when the connection is gone."""
        have = 0
        size = len(view)
        while have < size:
            if self._sock is not sock:
                return False
            try:
                n = sock.recv_into(view[have:], size - have, socket.MSG_WAITALL)
            except (BlockingIOError, TimeoutError, InterruptedError):
                self._check_deadlines(sock)
                continue
            except OSError as exc:
                self._fail(sock, errors.NetworkExceptionError(f"reading from {self.name} failed: {exc}"))
                return False
            if n == 0:
                self._fail(sock, errors.NetworkExceptionError(f"{self.name} closed the connection"))
                return False
            have += n
        return True

    def _read_frames(self, sock: socket.socket) -> None:
        """Read response frames through one buffer: a recv takes whatever has arrived, and
        every whole frame in it is dispatched before the next recv.

        Each recv gives up the GIL and must win it back, which costs a background thread
        up to the interpreter's switch interval (5 ms) while an application thread is busy
        calling ``send``; reading the size prefix and the body with separate calls paid that
        twice per response, on the path from a response to the next request.
        """
        buffer = bytearray(READ_BUFFER_BYTES)
        view = memoryview(buffer)
        start = end = 0  # buffer[start:end] is read and not dispatched yet
        size_bytes = framing.SIZE_BYTES
        while True:
            if end - start >= size_bytes:
                try:
                    size = framing.check_frame_size(bytes(view[start:start + size_bytes]), RESPONSE_FRAME_BYTES_MAX)
                except framing.FrameError as exc:
                    self._fail(sock, errors.NetworkExceptionError(f"bad frame from {self.name}: {exc}"))
                    return
                frame_end = start + size_bytes + size
                if frame_end <= end:
                    payload = view[start + size_bytes:frame_end]
                    start = frame_end
                    if not self._dispatch(sock, payload):
                        return
                    continue
                if size_bytes + size > len(buffer):
                    # Larger than the buffer: a buffer of its own, filled with what has
                    # arrived and then the rest.
                    large = bytearray(size)
                    have = end - start - size_bytes
                    large[:have] = view[start + size_bytes:end]
                    start = end = 0
                    if not self._recv_into(sock, memoryview(large)[have:]):
                        return
                    if not self._dispatch(sock, large):
                        return
                    continue
            if start:  # move the partial frame (if any) to the front
                buffer[:end - start] = bytes(view[start:end])
                end -= start
                start = 0
            n = self._recv_some(sock, view[end:])
            if n == 0:
                return
            end += n

    def _dispatch(self, sock: socket.socket, payload: bytes | bytearray | memoryview) -> bool:
        try:
            correlation_id, body = framing.decode_response(payload)
        except framing.FrameError as exc:
            self._fail(sock, errors.NetworkExceptionError(f"bad response from {self.name}: {exc}"))
            return False
        with self._lock:
            if self._sock is not sock:
                return False
            if self._in_flight and self._in_flight[0][0] == correlation_id:
                _, future, _ = self._in_flight.popleft()
                pending = None
            else:
                expected = self._in_flight[0][0] if self._in_flight else None
                pending = self._detach_locked()
        if pending is not None:
            _fail_all(pending, errors.NetworkExceptionError(
                f"{self.name} answered correlation id {correlation_id}, expected {expected}"))
            return False
        future.success(body)
        return True

    def _check_deadlines(self, sock: socket.socket) -> None:
        in_flight = self._in_flight
        if in_flight and in_flight[0][2] < time.monotonic():
            self._fail(sock, errors.RequestTimedOutError(
                f"no response from {self.name} within {self.request_timeout_ms} ms"))


def _timeval(seconds: float) -> bytes:
    whole = int(seconds)
    return struct.pack("ll", whole, int((seconds - whole) * 1_000_000))


def parse_address(address: str) -> tuple[str, int]:
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit():
        raise errors.ConfigError(f"bootstrap server {address!r} is not host:port")
    return host.strip("[]"), int(port)


def parse_bootstrap(servers: str | list[str] | tuple[str, ...]) -> list[tuple[str, int]]:
    items: list[str] = servers.split(",") if isinstance(servers, str) else list(servers)
    addresses = [parse_address(item) for item in items if item.strip()]
    if not addresses:
        raise errors.ConfigError("bootstrap_servers names no server")
    return addresses


def check_body_error(body: dict[str, Any], what: str) -> None:
    """Raise the whole-request error (UNSUPPORTED_VERSION, INVALID_REQUEST) of a response body."""
    code = body.get("error_code", 0)
    if code and set(body) <= {"error_code", "error_message"}:
        raise errors.error_for_code(code, f"{what}: {body.get('error_message')}")
