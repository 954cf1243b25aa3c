"""The metadata log port: how the node appends records and follows the image they build.

Theory of operation
-------------------
The node never cares how metadata is made durable. It holds a ``MetadataLog`` and does
three things with it: reads ``image`` (the image after every committed record), calls
``append(records)`` with what a controller decision returned, and ``subscribe``s a callback
that receives ``(old_image, new_image)`` after each append so it can reconcile partitions
and leaders against the new image.

``append`` returns only once the records are committed by a majority of the Raft voters
(each voter's journal synced) and applied, and returns the image that includes them. It is all-or-nothing: records that do not apply to the current image raise
``ValueError`` and nothing is written. Callbacks run in the appending thread, in append
order, and must not call ``append`` themselves.

Implementations:

* ``kraft.raft_log.RaftMetadataLog``: a pysyncobj Raft group (one voter on a single
  node), where the Raft leader is the active controller.
* ``cluster.metadata_follower.RemoteMetadataLog``: a broker-only node's copy, fetched from
  the voters (it cannot append).
* ``InMemoryMetadataLog`` (below): the same contract with no durability, for tests of the
  code that sits on top of the log.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Protocol, Sequence, runtime_checkable

from kraft.image import MetadataImage
from kraft.records import MetadataRecord, decode_record, encode_record

logger = logging.getLogger(__name__)

ImageListener = Callable[[MetadataImage, MetadataImage], None]


class MetadataLogError(RuntimeError):
    """The log cannot be used: closed, locked by another process, damaged, or failed."""


@runtime_checkable
class MetadataLog(Protocol):
    @property
    def image(self) -> MetadataImage: ...

    def append(self, records: Sequence[MetadataRecord]) -> MetadataImage: ...

    def subscribe(self, callback: ImageListener) -> None: ...

    def close(self) -> None: ...


def notify_listeners(
    listeners: Sequence[ImageListener], old: MetadataImage, new: MetadataImage
) -> None:
    """Call every listener; one that raises is logged and does not stop the others, because
    the records are already committed and the appender must not see them as failed."""
    for listener in listeners:
        try:
            listener(old, new)
        except Exception:
            logger.exception("metadata listener %r failed at offset %d", listener, new.offset)


class InMemoryMetadataLog:
    """``MetadataLog`` without durability. Records are still encoded and decoded, so a
    record that could not cross a real log cannot cross this one either."""

    def __init__(self, image: MetadataImage = MetadataImage.EMPTY) -> None:
        self._image = image
        self._listeners: list[ImageListener] = []
        self._lock = threading.Lock()
        self._closed = False

    @property
    def image(self) -> MetadataImage:
        return self._image

    def append(self, records: Sequence[MetadataRecord]) -> MetadataImage:
        with self._lock:
            if self._closed:
                raise RuntimeError("metadata log is closed")
            replayed = [decode_record(encode_record(record)) for record in records]
            old = self._image
            if not replayed:
                return old
            self._image = old.apply(replayed)
            notify_listeners(self._listeners, old, self._image)
            return self._image

    def subscribe(self, callback: ImageListener) -> None:
        with self._lock:
            self._listeners.append(callback)

    def close(self) -> None:
        self._closed = True
