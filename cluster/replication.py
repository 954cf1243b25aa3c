"""Partition replication decisions: the leader's view of its followers, the high watermark,
ISR changes, acks=all completion, and a follower's truncation point. Pure: no I/O, no
clocks (time comes in as ``now_ms``), no randomness.

Theory of operation
-------------------
The leader of a partition keeps one ``LeaderState`` for as long as it leads in one leader
epoch. It owns, per follower, the follower's log end offset (the ``fetch_offset`` of its
latest replica Fetch: a follower asks for the offset after the last one it has durably
appended) and the last time the follower was caught up. The shells feed it events and read
decisions back:

    leader append committed ----on_leader_append(leo)-----------------> high watermark
    replica Fetch from f -------on_follower_fetch(f, offset, now, leo)--> high watermark
    periodic ISR check ---------isr_shrink_candidates(now, lag max)----> AlterPartition
                                isr_expand_candidates()---------------> AlterPartition
    AlterPartition sent --------begin_isr_change(isr)
    metadata shows the outcome --on_isr_committed(isr, partition epoch) / on_isr_change_failed()
    acks=all produce -----------can_append_acks_all(min isr) before the append,
                                acks_all_outcome(required offset, min isr) after it

Caught up (Kafka's rule). A follower is caught up at the time of a fetch if its fetch offset
reaches the leader's log end offset at that moment; it was caught up at the time of its
*previous* fetch if this fetch's offset reaches the leader's log end offset as it was at that
previous fetch. So a follower that keeps fetching under a steady stream of appends stays
caught up although it never quite reaches the end. A follower not caught up for more than
``replica_lag_time_max_ms`` is a candidate to leave the ISR.

High watermark = the minimum log end offset over the ISR (the leader included), never
moving backwards. While an ISR change is in flight the minimum is taken over the *maximal*
ISR (the committed ISR plus the proposed additions), so the high watermark never relies on
an ISR that the controller has not confirmed. A follower whose log end offset is not known
yet (the leader has just been elected) holds the high watermark where it is.

ISR expansion. A follower not in the ISR rejoins when its log end offset has reached both
the high watermark and the offset where this leader's epoch began (so it holds every record
of earlier epochs that survived, and nothing that diverges from them).

Truncation (KIP-101, KIP-279). A replica that becomes a follower asks its leader for the end
of the latest epoch it has (OffsetsForLeaderEpoch); the leader answers with the largest epoch
it knows that is <= the one asked about, and where that epoch ends in its log.
``truncation_offset`` turns the answer into the offset to truncate to, and says whether
another round is needed (when the follower does not know the leader's epoch at all, it
truncates to the end of its own older epoch and asks again). Never the follower's own high
watermark. Worked example: follower epochs [(0, 0), (2, 10)], log end 15; leader epochs
[(0, 0), (1, 8), (3, 12)]. Round 1 asks epoch 2, leader answers (1, 12); the follower's
largest epoch <= 1 is 0, ending at 10: truncate to 10, not complete. Round 2 asks epoch 0,
leader answers (0, 8): truncate to 8, complete.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, NamedTuple, Sequence

logger = logging.getLogger(__name__)

UNKNOWN_OFFSET = -1  # a follower's log end offset before its first fetch in this epoch
UNDEFINED_EPOCH = -1
UNDEFINED_EPOCH_OFFSET = -1
NEVER_MS = -(1 << 62)  # "never caught up"

# Outcomes of acks_all_outcome (Kafka error names).
NONE = "NONE"
NOT_ENOUGH_REPLICAS_AFTER_APPEND = "NOT_ENOUGH_REPLICAS_AFTER_APPEND"


@dataclass
class FollowerState:
    """What the leader knows about one follower in the current leader epoch."""

    log_end_offset: int = UNKNOWN_OFFSET
    last_caught_up_ms: int = NEVER_MS
    last_fetch_ms: int = NEVER_MS
    last_fetch_leader_log_end_offset: int = UNKNOWN_OFFSET


class LeaderState:
    """The leader's replication state for one partition in one leader epoch."""

    def __init__(self, *, leader_id: int, replicas: Sequence[int], isr: Sequence[int],
                 leader_epoch: int, partition_epoch: int, log_end_offset: int,
                 high_watermark: int, now_ms: int) -> None:
        assert leader_id in replicas and leader_id in isr, (leader_id, replicas, isr)
        assert set(isr) <= set(replicas), (isr, replicas)
        assert 0 <= high_watermark <= log_end_offset, (high_watermark, log_end_offset)
        self.leader_id = leader_id
        self.replicas: tuple[int, ...] = tuple(replicas)
        self.isr: tuple[int, ...] = tuple(isr)
        self.leader_epoch = leader_epoch
        self.partition_epoch = partition_epoch
        self.leader_epoch_start_offset = log_end_offset
        self.log_end_offset = log_end_offset
        self.pending_isr: tuple[int, ...] | None = None
        self._high_watermark = high_watermark
        # Kafka gives every ISR follower a fresh grace period when leadership starts.
        self.followers: dict[int, FollowerState] = {
            replica: FollowerState(last_caught_up_ms=now_ms if replica in isr else NEVER_MS)
            for replica in replicas if replica != leader_id
        }
        self._advance_high_watermark()  # a leader alone in its ISR commits its whole log at once

    # -- events ---------------------------------------------------------------------------

    def on_leader_append(self, log_end_offset: int) -> bool:
        """The leader's own log grew to ``log_end_offset``. True if the high watermark moved."""
        assert log_end_offset >= self.log_end_offset, (log_end_offset, self.log_end_offset)
        self.log_end_offset = log_end_offset
        return self._advance_high_watermark()

    def on_follower_fetch(self, follower_id: int, fetch_offset: int, now_ms: int,
                          leader_leo: int) -> bool:
        """A replica Fetch from ``follower_id`` at ``fetch_offset`` (its log end offset),
        in this leader epoch, when the leader's log ends at ``leader_leo``. The caller has
        checked ``fetch_offset <= leader_leo``. True if the high watermark moved."""
        follower = self.followers.get(follower_id)
        assert follower is not None, f"{follower_id} is not a follower of {self.replicas}"
        assert 0 <= fetch_offset <= leader_leo, (fetch_offset, leader_leo)
        self.log_end_offset = max(self.log_end_offset, leader_leo)
        if fetch_offset >= leader_leo:
            follower.last_caught_up_ms = max(follower.last_caught_up_ms, now_ms)
        elif fetch_offset >= follower.last_fetch_leader_log_end_offset >= 0:
            follower.last_caught_up_ms = max(follower.last_caught_up_ms, follower.last_fetch_ms)
        follower.last_fetch_leader_log_end_offset = leader_leo
        follower.last_fetch_ms = now_ms
        follower.log_end_offset = fetch_offset
        return self._advance_high_watermark()

    def begin_isr_change(self, new_isr: Sequence[int]) -> None:
        """An AlterPartition proposing ``new_isr`` is on its way to the controller."""
        assert self.leader_id in new_isr and set(new_isr) <= set(self.replicas), new_isr
        self.pending_isr = tuple(new_isr)

    def on_isr_committed(self, isr: Sequence[int], partition_epoch: int) -> bool:
        """The metadata shows the partition's ISR (same leader epoch). True if the high
        watermark moved."""
        assert self.leader_id in isr, (self.leader_id, isr)
        assert partition_epoch >= self.partition_epoch, (partition_epoch, self.partition_epoch)
        self.isr = tuple(isr)
        self.partition_epoch = partition_epoch
        self.pending_isr = None
        return self._advance_high_watermark()

    def on_isr_change_failed(self) -> None:
        """The controller refused the proposed ISR (or the request was lost)."""
        self.pending_isr = None

    # -- decisions ------------------------------------------------------------------------

    @property
    def high_watermark(self) -> int:
        return self._high_watermark

    def maximal_isr(self) -> tuple[int, ...]:
        """The committed ISR plus the additions an in-flight change proposes."""
        if self.pending_isr is None:
            return self.isr
        return self.isr + tuple(b for b in self.pending_isr if b not in self.isr)

    def _advance_high_watermark(self) -> bool:
        ends = [self.log_end_offset]
        for replica in self.maximal_isr():
            if replica != self.leader_id:
                ends.append(self.followers[replica].log_end_offset)
        candidate = min(ends)
        if candidate <= self._high_watermark:  # includes an unknown (-1) follower
            return False
        self._high_watermark = candidate
        return True

    def isr_shrink_candidates(self, now_ms: int, replica_lag_time_max_ms: int) -> list[int]:
        """ISR followers not caught up for more than ``replica_lag_time_max_ms``."""
        return [
            replica for replica in self.isr
            if replica != self.leader_id
            and now_ms - self.followers[replica].last_caught_up_ms > replica_lag_time_max_ms
        ]

    def isr_expand_candidates(self) -> list[int]:
        """Followers outside the ISR whose log end offset reached both the high watermark
        and the start of this leader epoch."""
        return [
            replica for replica, follower in sorted(self.followers.items())
            if replica not in self.isr
            and follower.log_end_offset >= self._high_watermark
            and follower.log_end_offset >= self.leader_epoch_start_offset
        ]

    def proposed_isr(self, now_ms: int, replica_lag_time_max_ms: int) -> tuple[int, ...] | None:
        """The ISR this leader should ask for now, in ``replicas`` order (expansions and
        shrinks together), or None when it is right as it is or a change is in flight."""
        if self.pending_isr is not None:
            return None
        leaving = set(self.isr_shrink_candidates(now_ms, replica_lag_time_max_ms))
        joining = set(self.isr_expand_candidates())
        if not leaving and not joining:
            return None
        wanted = (set(self.isr) - leaving) | joining
        return tuple(b for b in self.replicas if b in wanted)

    def can_append_acks_all(self, min_insync_replicas: int) -> bool:
        """acks=all is refused (NOT_ENOUGH_REPLICAS) before the append when False."""
        return len(self.isr) >= min_insync_replicas

    def acks_all_ready(self, required_offset: int) -> bool:
        """True once every offset below ``required_offset`` (a batch's last offset + 1) is
        below the high watermark."""
        return self._high_watermark >= required_offset

    def acks_all_outcome(self, required_offset: int, min_insync_replicas: int) -> str | None:
        """None while an acks=all produce must wait; then NONE, or
        NOT_ENOUGH_REPLICAS_AFTER_APPEND when the ISR shrank below the minimum meanwhile."""
        if not self.acks_all_ready(required_offset):
            return None
        if len(self.isr) < min_insync_replicas:
            return NOT_ENOUGH_REPLICAS_AFTER_APPEND
        return NONE


# -- leader epochs and truncation ------------------------------------------------------------


def latest_epoch(epoch_entries: Sequence[tuple[int, int]]) -> int:
    """The latest leader epoch in an epoch cache [(epoch, start offset), ...] ascending."""
    return epoch_entries[-1][0] if epoch_entries else UNDEFINED_EPOCH


def end_offset_for_epoch(epoch_entries: Sequence[tuple[int, int]], log_end_offset: int,
                         epoch: int) -> tuple[int, int]:
    """The OffsetsForLeaderEpoch answer: (largest known epoch <= ``epoch``, the offset
    where it ends), the latest epoch ending at ``log_end_offset``; (-1, -1) when no known
    epoch is <= ``epoch``."""
    for index in range(len(epoch_entries) - 1, -1, -1):
        if epoch_entries[index][0] <= epoch:
            if index == len(epoch_entries) - 1:
                return epoch_entries[index][0], log_end_offset
            return epoch_entries[index][0], epoch_entries[index + 1][1]
    return UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET


class Truncation(NamedTuple):
    offset: int  # truncate the local log to here (remove every offset >= it)
    complete: bool  # False: truncate, then ask the leader again with the new latest epoch


def truncation_offset(local_epoch_entries: Sequence[tuple[int, int]], local_leo: int,
                      leader_epoch_end: tuple[int, int]) -> Truncation:
    """Where a new follower truncates, given the leader's answer ``(epoch, end_offset)`` to
    OffsetsForLeaderEpoch for ``latest_epoch(local_epoch_entries)`` (see the module
    docstring). Never based on the local high watermark."""
    if not local_epoch_entries:
        return Truncation(local_leo, True)  # nothing of any epoch to diverge
    leader_epoch, leader_end = leader_epoch_end
    first_start = local_epoch_entries[0][1]
    if leader_epoch == UNDEFINED_EPOCH or leader_end == UNDEFINED_EPOCH_OFFSET:
        # The leader has no epoch as old as our latest one, nor any older: every record we
        # hold is from an epoch it never saw.
        return Truncation(min(first_start, local_leo), True)
    local_epoch, local_end = end_offset_for_epoch(local_epoch_entries, local_leo, leader_epoch)
    if local_epoch == UNDEFINED_EPOCH:
        # All our epochs are newer than the leader's answer, which is the newest epoch it
        # shares with us: none of our records is in its log.
        return Truncation(min(first_start, leader_end, local_leo), True)
    if local_epoch != leader_epoch:
        # We never saw the leader's epoch: cut to the end of our older one and ask again.
        return Truncation(min(local_end, local_leo), False)
    return Truncation(min(local_end, leader_end, local_leo), True)


def follower_high_watermark(local_high_watermark: int, leader_high_watermark: int,
                            local_leo: int) -> int:
    """A follower's high watermark after a fetch: the leader's, capped by what it holds,
    never moving backwards (truncation lowers it separately)."""
    return max(local_high_watermark, min(leader_high_watermark, local_leo))


def isr_order(replicas: Iterable[int], members: Iterable[int]) -> tuple[int, ...]:
    """``members`` in ``replicas`` order (ISRs are kept in placement order)."""
    wanted = set(members)
    return tuple(b for b in replicas if b in wanted)
