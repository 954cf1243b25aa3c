"""Broker-only nodes: the metadata image followed from the controllers over MetadataFetch.

Theory of operation
-------------------
A node whose ``node_id`` is not in ``controller_quorum_voters`` runs no Raft. Its
``MetadataLog`` is a ``RemoteMetadataLog``: it owns this node's copy of the metadata image,
the subscribers of that image, and one thread ("the fetch thread") with one TCP connection
to one voter's client listener (``controller_quorum_bootstrap_servers``) at a time::

    fetch thread, forever:
      MetadataFetch {"after_offset": image.offset, "max_wait_ms"}  --> a voter
          the voter answers at once when its image is newer, else after a bounded long poll
      follow_response(image, response)      (pure: validate, decide, build the new image)
          snapshot newer than ours          -> new image = the voter's whole image
          records that start at our offset  -> new image = image.apply(records)
          nothing newer / an older voter    -> keep ours (offsets never go backwards)
          an error or a malformed answer    -> keep ours; ask the next voter
      a new image -> subscribers get (old, new) on the fetch thread, like Raft's tick thread
      remember the voter's "controller_id" and whether the answer came from a ready voter

The voter side is ``metadata_fetch_response`` (pure), called by the MetadataFetch handler
of ``cluster.handlers``. A voter has no record history indexed by offset, so it answers
with its whole image (kraft.raft_snapshot's ``image_to_plain``, msgpack) whenever it is
newer than ``after_offset``; ``records`` is then None, and [] when nothing is newer. The
fetcher also accepts exact records, so a voter may later keep a history and send less.

Voters may be at different offsets (one lags behind the leader's commits); every node's
image is a prefix of the same log, so taking only images newer than our own keeps this
node's image moving forward along that log. Only a voter that has caught up with a quorum
leader answers (``ready``); the others answer LEADER_NOT_AVAILABLE and the fetcher moves on
to the next bootstrap server, backing off ``retry_backoff_ms`` after a round in which no
voter answered.

What it offers the node, mirroring ``kraft.raft_log.RaftMetadataLog``: ``image``,
``subscribe``, ``close``; ``append`` always raises ``NotControllerError`` (a broker-only
node never decides, so handlers forward CreateTopics / DeleteTopics as on any other
non-controller); ``is_active_controller()`` is False; ``active_controller_id()`` is the
controller the last answering voter named (None after a failed fetch, until a voter
answers again); ``wait_ready(timeout_s)`` is True once an answer from a ready voter has
been applied; ``status`` has the fields of ``RaftStatus`` (no Raft term here: -1).

Persistence: none. A restarted broker-only node starts from the empty image and is not
ready (so its PartitionManager neither opens nor deletes partitions) until a voter's
snapshot brought it up to date; the PartitionManager's durable deletion floor guards the
rest. The cluster password is not used on this path (MetadataFetch travels on the client
listener, like every other node-to-node request today).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import msgpack

from cluster.config import split_host_port
from cluster.protocol import errors, framing
from cluster.protocol.api import NO_CONTROLLER_ID, ApiKey
from kraft.image import MetadataImage
from kraft.quorum import ImageListener, notify_listeners
from kraft.raft_log import NotControllerError, RaftStatus
from kraft.raft_snapshot import image_from_plain, image_to_plain
from kraft.records import MetadataRecord, decode_record, encode_record

logger = logging.getLogger(__name__)

METADATA_FETCH_WAIT_MS = 500  # the fetcher's long poll: how long a voter may hold a request
METADATA_FETCH_WAIT_MS_MAX = 1000  # the most a voter holds one, whatever was asked
REQUEST_TIMEOUT_MS = 3000  # one MetadataFetch, long poll included
RETRY_BACKOFF_MS = 200  # after a round in which no bootstrap server answered
RESPONSE_BYTES_MAX = 64 * 1024 * 1024
RECORDS_PER_RESPONSE_MAX = 100_000
CLOSE_TIMEOUT_S = 5.0
UNKNOWN = -1  # term, commit index and last applied index: a broker-only node has no Raft
CLIENT_ID_PREFIX = "kraft-metadata-follower"


# -- the voter's answer (pure) --------------------------------------------------------------


def encode_image(image: MetadataImage) -> bytes:
    """A whole image as MetadataFetch's "snapshot" bytes."""
    return msgpack.packb(image_to_plain(image), use_bin_type=True)


def decode_image(data: bytes) -> MetadataImage:
    """Inverse of ``encode_image``; ``ValueError`` for anything else."""
    try:
        plain = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=False)
    except (ValueError, TypeError, OverflowError, msgpack.UnpackException) as exc:
        raise ValueError(f"snapshot is not valid msgpack: {exc!r}") from None
    return image_from_plain(plain)


def encode_records(records: Sequence[MetadataRecord]) -> list[bytes]:
    """Records as MetadataFetch's "records" list."""
    return [encode_record(record) for record in records]


def metadata_fetch_response(image: MetadataImage, after_offset: int, controller_id: int | None,
                            *, is_voter: bool, ready: bool) -> dict[str, Any]:
    """What a node answers to MetadataFetch given its image and role (see the API doc)."""
    controller = NO_CONTROLLER_ID if controller_id is None else controller_id
    base = {"offset": image.offset, "records": None, "snapshot": None, "controller_id": controller}
    if not is_voter:
        return {**base, "error_code": errors.NOT_CONTROLLER,
                "error_message": "not a voter: fetch metadata from controller_quorum_bootstrap_servers"}
    if not ready:
        return {**base, "error_code": errors.LEADER_NOT_AVAILABLE,
                "error_message": "this voter has not caught up with a quorum leader"}
    if image.offset <= after_offset:
        return {**base, "error_code": errors.NONE, "error_message": None, "records": []}
    return {**base, "error_code": errors.NONE, "error_message": None, "snapshot": encode_image(image)}


# -- the fetcher's decision (pure) ----------------------------------------------------------


@dataclass(frozen=True)
class FetchOutcome:
    """What one MetadataFetch answer means for a follower holding some image."""

    image: MetadataImage | None  # the follower's new image; None: keep the one it has
    controller_id: int | None  # the active controller the voter named
    ready: bool  # a ready voter answered and the follower holds at least what it has
    error: str | None = None  # why the answer was not used (then ask another voter)


def _failed(reason: str) -> FetchOutcome:
    return FetchOutcome(image=None, controller_id=None, ready=False, error=reason)


def follow_response(current: MetadataImage, response: Mapping[str, Any]) -> FetchOutcome:
    """Validate one MetadataFetch response and decide the follower's next image."""
    code = response.get("error_code")
    if not isinstance(code, int) or isinstance(code, bool):
        return _failed(f"malformed response: error_code {code!r}")
    if code != errors.NONE:
        return _failed(f"{errors.error_name(code)} ({code}): {response.get('error_message')}")
    offset, records = response.get("offset"), response.get("records")
    snapshot, controller_id = response.get("snapshot"), response.get("controller_id")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        return _failed(f"malformed response: offset {offset!r}")
    if not isinstance(controller_id, int) or isinstance(controller_id, bool):
        return _failed(f"malformed response: controller_id {controller_id!r}")
    controller = None if controller_id < 0 else controller_id
    if snapshot is not None:
        if not isinstance(snapshot, (bytes, bytearray)):
            return _failed("malformed response: snapshot is not bytes")
        try:
            image = decode_image(bytes(snapshot))
        except Exception as exc:  # ValueError normally, as above
            return _failed(f"malformed snapshot: {exc}")
        if image.offset != offset:
            return _failed(f"snapshot at offset {image.offset} answers offset {offset}")
        newer = image if image.offset > current.offset else None
        return FetchOutcome(image=newer, controller_id=controller, ready=True)
    if not isinstance(records, list) or len(records) > RECORDS_PER_RESPONSE_MAX:
        return _failed("malformed response: neither records nor a snapshot")
    if offset <= current.offset:
        return FetchOutcome(image=None, controller_id=controller, ready=True)  # nothing newer
    if offset - len(records) != current.offset:
        return _failed(f"{len(records)} records ending at offset {offset} do not follow offset {current.offset}")
    try:
        image = current.apply([decode_record(bytes(record)) for record in records])
    except Exception as exc:  # ValueError normally; no answer of a peer may stop the fetch thread
        return _failed(f"records do not apply at offset {current.offset}: {exc!r}")
    assert image.offset == offset
    return FetchOutcome(image=image, controller_id=controller, ready=True)


# -- the fetch thread -----------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteMetadataConfig:
    node_id: int
    bootstrap_servers: tuple[str, ...]  # the voters' client listeners, "host:port"
    fetch_wait_ms: int = METADATA_FETCH_WAIT_MS
    request_timeout_ms: int = REQUEST_TIMEOUT_MS
    retry_backoff_ms: int = RETRY_BACKOFF_MS
    response_bytes_max: int = RESPONSE_BYTES_MAX

    def __post_init__(self) -> None:
        assert self.bootstrap_servers, "a broker-only node needs controller_quorum_bootstrap_servers"
        assert self.request_timeout_ms > self.fetch_wait_ms >= 0


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks, received = [], 0
    while received < size:
        chunk = sock.recv(min(size - received, 1 << 20))
        if not chunk:
            raise ConnectionError("connection closed by the voter")
        chunks.append(chunk)
        received += len(chunk)
    return b"".join(chunks)


class RemoteMetadataLog:
    """The ``MetadataLog`` of a broker-only node (see the module docstring)."""

    def __init__(self, config: RemoteMetadataConfig) -> None:
        self.config = config
        self._image = MetadataImage.EMPTY
        self._listeners: list[ImageListener] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # ready / controller / image moved
        self._ready = False
        self._controller_id: int | None = None
        self._failed: str | None = None
        self._closing = threading.Event()
        self._sock: socket.socket | None = None
        self._correlation_id = 0
        self._addresses = [split_host_port(server) for server in config.bootstrap_servers]
        self._thread = threading.Thread(target=self._run, name=f"metadata-follower-{config.node_id}", daemon=True)
        self._thread.start()

    # -- MetadataLog ----------------------------------------------------------------------

    @property
    def image(self) -> MetadataImage:
        return self._image

    def append(self, records: Sequence[MetadataRecord]) -> MetadataImage:
        raise NotControllerError(
            f"node {self.config.node_id} is a broker-only node, not a controller "
            f"(active controller: {self._controller_id})", self._controller_id)

    def subscribe(self, callback: ImageListener) -> None:
        with self._lock:
            self._listeners.append(callback)

    def close(self) -> None:
        self._closing.set()
        with self._changed:
            self._changed.notify_all()
        self._disconnect()
        if self._thread is not threading.current_thread():
            self._thread.join(CLOSE_TIMEOUT_S)
        logger.info("node %d metadata follower closed at offset %d", self.config.node_id, self._image.offset)

    # -- the node's view of the controllers, as RaftMetadataLog offers it ------------------

    def is_active_controller(self) -> bool:
        return False

    def active_controller_id(self) -> int | None:
        return None if self._closing.is_set() else self._controller_id

    def wait_ready(self, timeout_s: float) -> bool:
        """True once an answer of a ready voter has been applied (and no fetch failed since);
        False when ``timeout_s`` passes first or the log is closed."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not self._ready:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closing.is_set() or self._failed is not None:
                    return False
                self._changed.wait(remaining)
        return True

    @property
    def status(self) -> RaftStatus:
        return RaftStatus(node_id=self.config.node_id, is_leader=False, controller_id=self.active_controller_id(),
                          ready=self._ready, term=UNKNOWN, commit_index=UNKNOWN, last_applied=UNKNOWN,
                          offset=self._image.offset)

    @property
    def failed(self) -> str | None:
        return self._failed

    # -- the fetch thread -------------------------------------------------------------------

    def _run(self) -> None:
        config = self.config
        count = len(self._addresses)
        index = config.node_id % count  # spread broker-only nodes over the voters
        failures = 0
        serving: str | None = None
        try:
            while not self._closing.is_set():
                host, port = self._addresses[index]
                try:
                    response = self._call(host, port, {"after_offset": self._image.offset,
                                                       "max_wait_ms": config.fetch_wait_ms})
                    outcome = follow_response(self._image, response)
                except (OSError, ValueError) as exc:  # framing.FrameError is a ValueError
                    outcome = _failed(f"request failed: {exc!r}")
                if self._closing.is_set():
                    return
                self._take(outcome)
                if outcome.error is None:
                    failures = 0
                    if serving != config.bootstrap_servers[index]:
                        serving = config.bootstrap_servers[index]
                        logger.info("node %d follows metadata from %s (offset %d, controller %s)",
                                    config.node_id, serving, self._image.offset, outcome.controller_id)
                    continue
                logger.log(logging.INFO if serving is not None else logging.DEBUG,
                           "node %d metadata fetch from %s failed: %s", config.node_id,
                           config.bootstrap_servers[index], outcome.error)
                serving = None
                self._disconnect()
                index = (index + 1) % count
                failures += 1
                if failures % count == 0:
                    self._closing.wait(config.retry_backoff_ms / 1000)
        except Exception as exc:  # a bug: say so rather than serve a frozen image silently
            self._failed = f"metadata follower stopped: {exc!r}"
            logger.exception("node %d metadata follower stopped", config.node_id)
            with self._changed:
                self._ready = False
                self._changed.notify_all()
        finally:
            self._disconnect()

    def _take(self, outcome: FetchOutcome) -> None:
        old = self._image
        new = outcome.image
        with self._changed:
            if new is not None:
                assert new.offset > old.offset
                self._image = new
            self._ready = outcome.ready
            self._controller_id = outcome.controller_id
            listeners = list(self._listeners) if new is not None else []
            self._changed.notify_all()
        if new is not None:
            notify_listeners(listeners, old, new)

    def _call(self, host: str, port: int, body: dict[str, Any]) -> dict[str, Any]:
        """One MetadataFetch on this thread's connection (opened on demand)."""
        timeout_s = self.config.request_timeout_ms / 1000
        sock = self._sock
        if sock is None:
            sock = socket.create_connection((host, port), timeout=timeout_s)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if self._closing.is_set():
                    sock.close()
                    raise ConnectionError("metadata follower is closing")
                self._sock = sock
        sock.settimeout(timeout_s)
        self._correlation_id += 1
        client_id = f"{CLIENT_ID_PREFIX}-{self.config.node_id}"
        sock.sendall(framing.encode_request(ApiKey.METADATA_FETCH, 0, self._correlation_id, client_id, body))
        size = framing.check_frame_size(_recv_exactly(sock, framing.SIZE_BYTES), self.config.response_bytes_max)
        correlation_id, response = framing.decode_response(_recv_exactly(sock, size))
        if correlation_id != self._correlation_id:
            raise framing.FrameError(f"response {correlation_id} to request {self._correlation_id}")
        return response

    def _disconnect(self) -> None:
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the fetch thread if it is reading
            except OSError:
                pass
            sock.close()

