"""The errors the client raises: every Kafka error of ``cluster.protocol.errors``, plus the
few that exist only on the client side (a wait that ran out, no reachable broker).

Retry logic reads ``retriable`` and ``invalid_metadata`` on the instance, never the name.
"""

from __future__ import annotations

from cluster.protocol.errors import *  # noqa: F401,F403  (the re-export is the point)
from cluster.protocol.errors import KraftError, error_class, error_for_code, error_name  # noqa: F401


class KafkaTimeoutError(KraftError):
    """A client-side wait ran out: metadata, buffer space, flush, or a batch's delivery timeout."""

    name = "KAFKA_TIMEOUT"
    retriable = True


class NoBrokersAvailableError(KraftError):
    """No bootstrap server or known broker accepted a connection."""

    name = "NO_BROKERS_AVAILABLE"
    retriable = True
    invalid_metadata = True


class NoOffsetForPartitionError(KraftError):
    """A partition has no position and ``auto_offset_reset`` is ``"none"``."""

    name = "NO_OFFSET_FOR_PARTITION"


class IllegalStateError(KraftError):
    """The client was used in a way its state does not allow (closed, not assigned, ...)."""

    name = "ILLEGAL_STATE"


class CommitFailedError(KraftError):
    """An offset commit was refused because this consumer is no longer the group member that
    owns the partitions: it was fenced (STALE_MEMBER_EPOCH, UNKNOWN_MEMBER_ID) or it left the
    group (``max_poll_interval_ms`` passed without a ``poll``). Its partitions may already
    belong to another member; the next ``poll`` rejoins the group."""

    name = "COMMIT_FAILED"
