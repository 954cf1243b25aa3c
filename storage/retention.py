"""Retention: which prefix of a partition log may go, decided without I/O.

Theory of operation
-------------------
Retention deletes whole batches from the front of a log, never from the middle. The
partition log hands this module one ``BatchSummary`` per stored batch (oldest first) and the
settings; ``retention_cut`` answers with the new log start offset, or ``None`` when nothing
may be deleted. The log then performs the deletion (``PartitionLog.delete_prefix``).

Two limits, each ``-1`` for "no limit" as in Kafka's ``retention.ms`` / ``retention.bytes``
(any negative value is treated like ``-1``):

* time: the leading batches whose ``max_timestamp`` is older than ``now_ms - retention_ms``
  go. The scan stops at the first batch that is still young, even if later ones are older
  (a log is deleted front to back, never with holes);
* size: after that, the oldest batches go while the total size of what remains exceeds
  ``retention_bytes`` (so what remains ends up at or below the limit).

A batch that is not entirely below the high watermark (``next_offset > high_watermark``) is
not yet committed by the replicas and is never deleted, whatever the settings say.

Worked example: batches [0, 10) [10, 20) [20, 30), 100 bytes each, high watermark 30,
``retention_bytes=150``: delete [0, 10) (300 > 150), then [10, 20) (200 > 150); 100 <= 150
stops. The new log start offset is 20.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

NO_LIMIT = -1


class BatchSummary(NamedTuple):
    """What retention knows about one stored batch."""

    base_offset: int
    next_offset: int
    max_timestamp: int
    size_bytes: int


def retention_cut(
    summaries: Sequence[BatchSummary],
    now_ms: int,
    retention_ms: int,
    retention_bytes: int,
    high_watermark: int,
) -> int | None:
    """The new log start offset after retention, or ``None`` when nothing is to be deleted."""
    deletable = 0  # how many leading batches lie entirely below the high watermark
    for summary in summaries:
        if summary.next_offset > high_watermark:
            break
        deletable += 1

    cut = 0
    if retention_ms >= 0:
        oldest_kept_ms = now_ms - retention_ms
        while cut < deletable and summaries[cut].max_timestamp < oldest_kept_ms:
            cut += 1

    if retention_bytes >= 0:
        remaining_bytes = sum(s.size_bytes for s in summaries[cut:])
        while cut < deletable and remaining_bytes > retention_bytes:
            remaining_bytes -= summaries[cut].size_bytes
            cut += 1

    if cut == 0:
        return None
    return summaries[cut - 1].next_offset
