"""The single-node metadata log: an append-only journal file, replayed into the image on open.

Theory of operation
-------------------
``LocalMetadataLog`` owns one file, ``<data_dir>/metadata.log``, and the current
``MetadataImage``. It is the ``kraft.quorum.MetadataLog`` of a node that is its own whole
cluster; a Raft group replaces it when there are several voters.

File layout::

    FILE_MAGIC (8 bytes)
    frame, frame, ...       one frame per append() call
    frame = payload_length (u32 BE) | crc32(payload) (u32 BE) | payload
    payload = msgpack array of encoded records (kraft.records.encode_record)

``append(records)`` applies the records to the current image first (a record that does
not fit raises ``ValueError`` and nothing is written), then writes the frame at the end of
the file and fsyncs, and only then publishes the new image and calls subscribers with
``(old_image, new_image)``. So an append that returned is on disk, and an image a reader
sees never runs ahead of the disk.

One frame per append makes an append atomic across a crash: on open, frames are replayed
in order until the first one that is incomplete or fails its CRC. That can only be the
frame that was being written when the process died (every earlier frame was fsynced), so
it and anything after it is cut off, and the log continues from the last whole frame.
Worked example: after the magic (bytes 0..8), frames A (8..48) and B (48..98) are on disk
and a crash tears C after 7 of its 60 bytes, leaving a 105-byte file; open replays A and
B, truncates the file to 98 bytes, and the next append writes its frame at byte 98. A frame whose CRC is right but whose records do not decode or apply
is not a torn write but damage or a bug, and open refuses to continue.

A write that fails (disk full) is cut back off the file and raised, and the log remains
usable; a failed fsync leaves the state of the file unknown, so the log refuses every
later append. An advisory lock on the file keeps a second process from appending to it.

Concurrency: one lock serialises appends and subscriber calls, so subscribers see images
in append order; ``image`` is a plain attribute read and never blocks.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import threading
import zlib
from pathlib import Path
from typing import Sequence

import msgpack

from kraft.image import MetadataImage
from kraft.quorum import ImageListener, notify_listeners
from kraft.records import MetadataRecord, decode_record, encode_record

logger = logging.getLogger(__name__)

FILE_NAME = "metadata.log"
FILE_MAGIC = b"KRAFTMD1"  # the last byte is the format version
FRAME_HEADER = struct.Struct(">II")  # payload length, CRC-32 of the payload
FRAME_PAYLOAD_BYTES_MAX = 64 * 1024 * 1024  # a larger length field is garbage, not a frame
RECORDS_PER_APPEND_MAX = 100_000


class MetadataLogError(RuntimeError):
    """The log cannot be used: closed, locked by another process, damaged, or failed."""


class LocalMetadataLog:
    """Append-only journal file of records in the node's data dir; replayed on open."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.path = Path(directory) / FILE_NAME
        self._lock = threading.Lock()
        self._listeners: list[ImageListener] = []
        self._image = MetadataImage.EMPTY
        self._end_bytes = 0  # where the next frame goes: just after the last whole frame
        self._failed: str | None = None
        self._notifying_thread: int | None = None
        Path(directory).mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise MetadataLogError(f"{self.path} is in use by another process") from None
            self._replay()
            if created:
                _fsync_directory(self.path.parent)
        except BaseException:
            os.close(self._fd)
            self._fd = None
            raise
        logger.info("metadata log %s opened at offset %d (%d bytes)",
                    self.path, self._image.offset, self._end_bytes)

    @property
    def image(self) -> MetadataImage:
        return self._image

    def append(self, records: Sequence[MetadataRecord]) -> MetadataImage:
        """Durably append ``records`` as one frame, apply them, notify subscribers."""
        if self._notifying_thread == threading.get_ident():
            raise MetadataLogError("a metadata subscriber must not append")
        with self._lock:
            fd = self._check_usable()
            old = self._image
            if not records:
                return old
            if len(records) > RECORDS_PER_APPEND_MAX:
                raise ValueError(f"{len(records)} records in one append, limit {RECORDS_PER_APPEND_MAX}")
            new = old.apply(records)  # ValueError here means nothing was written
            assert new.offset == old.offset + len(records)
            payload = msgpack.packb([encode_record(record) for record in records], use_bin_type=True)
            if len(payload) > FRAME_PAYLOAD_BYTES_MAX:
                raise ValueError(f"append of {len(payload)} bytes, limit {FRAME_PAYLOAD_BYTES_MAX}")
            frame = FRAME_HEADER.pack(len(payload), zlib.crc32(payload)) + payload
            self._write_frame(fd, frame)
            self._image = new
            self._notifying_thread = threading.get_ident()
            try:
                notify_listeners(self._listeners, old, new)
            finally:
                self._notifying_thread = None
            return new

    def subscribe(self, callback: ImageListener) -> None:
        with self._lock:
            self._listeners.append(callback)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)  # also releases the flock
                self._fd = None
                logger.info("metadata log %s closed at offset %d", self.path, self._image.offset)

    def __enter__(self) -> "LocalMetadataLog":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------

    def _check_usable(self) -> int:
        if self._fd is None:
            raise MetadataLogError(f"{self.path} is closed")
        if self._failed is not None:
            raise MetadataLogError(f"{self.path} failed earlier: {self._failed}")
        return self._fd

    def _write_frame(self, fd: int, frame: bytes) -> None:
        start = self._end_bytes
        try:
            _pwrite_all(fd, frame, start)
        except OSError as exc:
            # Cut the partial frame off so later frames do not land after garbage.
            try:
                os.ftruncate(fd, start)
            except OSError as truncate_exc:
                self._failed = f"write failed ({exc}) and could not be undone ({truncate_exc})"
            raise
        try:
            os.fsync(fd)
        except OSError as exc:
            self._failed = f"fsync failed: {exc}"
            raise
        self._end_bytes = start + len(frame)

    def _replay(self) -> None:
        assert self._fd is not None
        data = _read_all(self._fd)
        if len(data) < len(FILE_MAGIC):
            if not FILE_MAGIC.startswith(data):
                raise MetadataLogError(f"{self.path} is not a metadata log")
            # New file, or a crash while it was being created: write the header afresh.
            os.ftruncate(self._fd, 0)
            _pwrite_all(self._fd, FILE_MAGIC, 0)
            os.fsync(self._fd)
            self._end_bytes = len(FILE_MAGIC)
            return
        if data[: len(FILE_MAGIC)] != FILE_MAGIC:
            raise MetadataLogError(f"{self.path} is not a metadata log (or another version)")
        position = len(FILE_MAGIC)
        image = MetadataImage.EMPTY
        frames = 0
        while position < len(data):
            payload = _whole_frame(data, position)
            if payload is None:
                break
            try:
                encoded = msgpack.unpackb(payload, raw=False, use_list=True)
                if not isinstance(encoded, list) or not all(isinstance(e, bytes) for e in encoded):
                    raise ValueError("frame payload is not an array of records")
                image = image.apply(decode_record(e) for e in encoded)
            except Exception as exc:
                raise MetadataLogError(
                    f"{self.path}: frame at byte {position} has a valid CRC but cannot be "
                    f"replayed: {exc}"
                ) from exc
            position += FRAME_HEADER.size + len(payload)
            frames += 1
        if position < len(data):
            logger.warning("metadata log %s: cutting %d bytes of torn tail at byte %d",
                           self.path, len(data) - position, position)
            os.ftruncate(self._fd, position)
            os.fsync(self._fd)
        self._image = image
        self._end_bytes = position
        logger.debug("metadata log %s replayed %d frames", self.path, frames)


def _whole_frame(data: bytes, position: int) -> bytes | None:
    """The payload of the frame at ``position`` if it is complete and its CRC matches."""
    if len(data) - position < FRAME_HEADER.size:
        return None
    length, crc = FRAME_HEADER.unpack_from(data, position)
    start = position + FRAME_HEADER.size
    if length == 0 or length > FRAME_PAYLOAD_BYTES_MAX or start + length > len(data):
        return None
    payload = data[start : start + length]
    return payload if zlib.crc32(payload) == crc else None


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    chunks = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _fsync_directory(directory: Path) -> None:
    """Make a new file's directory entry durable, not only its contents."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
