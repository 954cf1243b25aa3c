"""Frames on the wire: a 4-byte big-endian size, then one msgpack value. No sockets here.

Request frame body:  ``[api_key, api_version, correlation_id, client_id, body]``
Response frame body: ``[correlation_id, body]``

``body`` is a msgpack map whose shape per API is given in ``cluster.protocol.api``. Record
batches travel inside it as msgpack ``bin`` values, opaque to the framing.

A reader must check the size prefix against its limit *before* reading the rest
(``check_frame_size``); a frame that is too large, or whose body does not decode to the shape
above, is a ``FrameError`` and the connection is closed.
"""

from __future__ import annotations

import struct
import threading
from typing import Any, NamedTuple

import msgpack

SIZE = struct.Struct(">i")
SIZE_BYTES = 4
PACKER_KEEP_BYTES_MAX = 4 << 20  # a thread keeps its packing buffer up to this size


class FrameError(ValueError):
    """The bytes on a connection are not a frame we accept; the connection must close."""


class RequestHeader(NamedTuple):
    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None


def check_frame_size(prefix: bytes, frame_bytes_max: int) -> int:
    """Return the size announced by a 4-byte prefix, refusing negative or oversized frames."""
    (size,) = SIZE.unpack(prefix)
    if size < 0 or size > frame_bytes_max:
        raise FrameError(f"frame of {size} bytes refused (limit {frame_bytes_max} bytes)")
    return size


_packers = threading.local()


def _frame(value: Any) -> bytes:
    """Size prefix + msgpack, copied once, packed by this thread's Packer: its buffer is
    kept between frames (``packb`` maps in a fresh 1 MiB buffer per call, page by page,
    which costs more than the copy for frames carrying record batches)."""
    packer = getattr(_packers, "packer", None)
    if packer is None:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True, autoreset=False)
    try:
        packer.pack(value)
        with packer.getbuffer() as payload:
            if len(payload) > PACKER_KEEP_BYTES_MAX:  # a rare big frame: its buffer is not kept
                _packers.packer = None
            return b"".join((SIZE.pack(len(payload)), payload))
    finally:
        packer.reset()


def encode_request(api_key: int, api_version: int, correlation_id: int, client_id: str | None, body: dict) -> bytes:
    return _frame([api_key, api_version, correlation_id, client_id, body])


def encode_response(correlation_id: int, body: dict) -> bytes:
    return _frame([correlation_id, body])


def decode_request(payload: bytes | bytearray | memoryview) -> tuple[RequestHeader, Any]:
    """Decode a request frame's payload (without the size prefix).

    Raises FrameError when even the header cannot be read. The body is returned as decoded;
    checking its shape is the handler's job (it answers INVALID_REQUEST).
    """
    try:
        value = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise FrameError(f"request is not valid msgpack: {exc}") from None
    if not isinstance(value, list) or len(value) != 5:
        raise FrameError("request is not [api_key, api_version, correlation_id, client_id, body]")
    api_key, api_version, correlation_id, client_id, body = value
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in (api_key, api_version, correlation_id)):
        raise FrameError("request header fields api_key, api_version, correlation_id must be integers")
    if client_id is not None and not isinstance(client_id, str):
        raise FrameError("request header client_id must be a string or nil")
    return RequestHeader(api_key, api_version, correlation_id, client_id), body


def decode_response(payload: bytes | bytearray | memoryview) -> tuple[int, dict]:
    try:
        value = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as exc:
        raise FrameError(f"response is not valid msgpack: {exc}") from None
    if not isinstance(value, list) or len(value) != 2 or not isinstance(value[1], dict):
        raise FrameError("response is not [correlation_id, body]")
    return value[0], value[1]
