"""Unit tests of the pure replication logic: caught-up tracking, the high watermark, ISR
shrink and expansion, acks=all completion, and the KIP-101/279 truncation point."""

from __future__ import annotations

import pytest

from cluster.replication import (
    NONE,
    NOT_ENOUGH_REPLICAS_AFTER_APPEND,
    LeaderState,
    Truncation,
    end_offset_for_epoch,
    follower_high_watermark,
    isr_order,
    latest_epoch,
    truncation_offset,
)

pytestmark = pytest.mark.timeout(30)

LAG_MS = 1000


def leader(isr: tuple[int, ...] = (1, 2, 3), leo: int = 10, hw: int = 10,
           now_ms: int = 0) -> LeaderState:
    return LeaderState(leader_id=1, replicas=(1, 2, 3), isr=isr, leader_epoch=5,
                       partition_epoch=7, log_end_offset=leo, high_watermark=hw, now_ms=now_ms)


def test_high_watermark_waits_for_every_isr_follower_then_is_the_minimum() -> None:
    state = leader()
    assert state.on_leader_append(20) is False  # followers' ends unknown: HW holds
    assert state.on_follower_fetch(2, 20, 1, 20) is False  # 3 still unknown
    assert state.high_watermark == 10
    assert state.on_follower_fetch(3, 15, 2, 20) is True
    assert state.high_watermark == 15
    state.on_follower_fetch(3, 20, 3, 20)
    assert state.high_watermark == 20


def test_high_watermark_never_moves_backwards() -> None:
    state = leader(isr=(1, 2))
    state.on_leader_append(20)
    state.on_follower_fetch(2, 18, 1, 20)
    assert state.high_watermark == 18
    state.on_follower_fetch(2, 12, 2, 20)  # e.g. a stale fetch position
    assert state.high_watermark == 18


def test_single_member_isr_high_watermark_is_the_log_end() -> None:
    state = leader(isr=(1,))
    assert state.on_leader_append(11) is True
    assert state.high_watermark == 11
    # A leader that starts alone in its ISR (e.g. after a full-cluster restart) commits its
    # whole log at once, without waiting for an append or a fetch.
    assert leader(isr=(1,), leo=10, hw=4).high_watermark == 10
    assert leader(isr=(1, 2), leo=10, hw=4).high_watermark == 4  # follower 2's end unknown


def test_followers_outside_the_isr_do_not_hold_the_high_watermark() -> None:
    state = leader(isr=(1, 2))
    state.on_leader_append(30)
    state.on_follower_fetch(2, 30, 1, 30)
    assert state.high_watermark == 30  # 3 is not in the ISR


def test_caught_up_by_reaching_the_leo_at_previous_fetch() -> None:
    state = leader(now_ms=0)
    # 2 fetches at t=100 at 10 while the leader is at 15: not caught up now.
    state.on_follower_fetch(2, 10, 100, 15)
    assert state.followers[2].last_caught_up_ms == 0
    # At t=700 it fetches 15 (the LEO of its previous fetch) while the leader is at 20:
    # caught up as of its previous fetch (t=100).
    state.on_follower_fetch(2, 15, 700, 20)
    assert state.followers[2].last_caught_up_ms == 100
    # Reaching the LEO makes it caught up now.
    state.on_follower_fetch(2, 20, 900, 20)
    assert state.followers[2].last_caught_up_ms == 900


def test_shrink_candidates_are_isr_followers_lagging_longer_than_the_limit() -> None:
    state = leader(now_ms=0)
    state.on_follower_fetch(2, 10, 500, 10)  # caught up at 500
    state.on_follower_fetch(3, 5, 500, 10)  # behind; last caught up = election time 0
    assert state.isr_shrink_candidates(1000, LAG_MS) == []
    assert state.isr_shrink_candidates(1001, LAG_MS) == [3]
    assert state.isr_shrink_candidates(1501, LAG_MS) == [2, 3]
    assert state.proposed_isr(1001, LAG_MS) == (1, 2)


def test_a_steadily_fetching_follower_under_load_stays_in_the_isr() -> None:
    state = leader(now_ms=0)
    leo = 10
    for step in range(1, 20):
        now_ms = step * 400
        previous_leo = leo
        leo += 5  # appends keep coming
        state.on_leader_append(leo)
        state.on_follower_fetch(2, previous_leo, now_ms, leo)  # one fetch behind, always
        state.on_follower_fetch(3, leo, now_ms, leo)
        assert state.isr_shrink_candidates(now_ms, LAG_MS) == []


def test_expand_requires_the_high_watermark_and_the_epoch_start() -> None:
    state = leader(isr=(1, 2), leo=10, hw=8)
    assert state.leader_epoch_start_offset == 10
    state.on_follower_fetch(3, 9, 1, 10)  # above HW 8 but below epoch start 10
    assert state.isr_expand_candidates() == []
    state.on_follower_fetch(3, 10, 2, 10)
    assert state.isr_expand_candidates() == [3]
    assert state.proposed_isr(2, LAG_MS) == (1, 2, 3)


def test_pending_expansion_counts_toward_the_high_watermark() -> None:
    state = leader(isr=(1, 2), leo=10, hw=10)
    state.on_follower_fetch(3, 10, 1, 10)
    state.begin_isr_change((1, 2, 3))
    assert state.maximal_isr() == (1, 2, 3)
    assert state.proposed_isr(1, LAG_MS) is None  # one change at a time
    state.on_leader_append(20)
    state.on_follower_fetch(2, 20, 2, 20)
    assert state.high_watermark == 10  # 3 (pending) is still at 10
    state.on_isr_change_failed()
    assert state.maximal_isr() == (1, 2)
    state.on_follower_fetch(2, 20, 3, 20)
    assert state.high_watermark == 20


def test_pending_shrink_keeps_the_committed_isr_until_confirmed() -> None:
    state = leader(isr=(1, 2, 3))
    state.on_leader_append(20)
    state.on_follower_fetch(2, 20, 1, 20)
    state.on_follower_fetch(3, 12, 1, 20)
    state.begin_isr_change((1, 2))
    assert state.high_watermark == 12
    assert state.on_isr_committed((1, 2), 8) is True
    assert (state.isr, state.partition_epoch, state.pending_isr) == ((1, 2), 8, None)
    assert state.high_watermark == 20


def test_acks_all() -> None:
    state = leader(isr=(1, 2))
    assert state.can_append_acks_all(2) and not state.can_append_acks_all(3)
    state.on_leader_append(15)
    assert state.acks_all_outcome(15, 2) is None
    state.on_follower_fetch(2, 15, 1, 15)
    assert state.acks_all_ready(15)
    assert state.acks_all_outcome(15, 2) == NONE
    state.on_isr_committed((1,), 8)
    assert state.acks_all_outcome(15, 2) == NOT_ENOUGH_REPLICAS_AFTER_APPEND


def test_end_offset_for_epoch() -> None:
    entries = [(0, 0), (1, 8), (3, 12)]
    assert end_offset_for_epoch(entries, 20, 0) == (0, 8)
    assert end_offset_for_epoch(entries, 20, 2) == (1, 12)
    assert end_offset_for_epoch(entries, 20, 3) == (3, 20)
    assert end_offset_for_epoch(entries, 20, 9) == (3, 20)
    assert end_offset_for_epoch([(2, 5)], 20, 1) == (-1, -1)
    assert end_offset_for_epoch([], 0, 1) == (-1, -1)
    assert latest_epoch(entries) == 3 and latest_epoch([]) == -1


def test_truncation_to_the_end_of_the_shared_epoch() -> None:
    # KIP-101: the old leader wrote 12..15 in epoch 1 that the new leader never got.
    assert truncation_offset([(0, 0), (1, 5)], 15, (1, 12)) == Truncation(12, True)
    # The follower is behind the leader's epoch end: nothing to cut.
    assert truncation_offset([(0, 0), (1, 5)], 9, (1, 12)) == Truncation(9, True)


def test_truncation_takes_two_rounds_when_the_leader_epoch_is_unknown_locally() -> None:
    local = [(0, 0), (2, 10)]
    leader_entries = [(0, 0), (1, 8), (3, 12)]
    first = truncation_offset(local, 15, end_offset_for_epoch(leader_entries, 20, latest_epoch(local)))
    assert first == Truncation(10, False)
    local = [(0, 0)]  # what truncating to 10 leaves
    second = truncation_offset(local, 10, end_offset_for_epoch(leader_entries, 20, latest_epoch(local)))
    assert second == Truncation(8, True)


def test_truncation_never_uses_the_high_watermark_and_handles_empty_and_unknown() -> None:
    # Local HW would be, say, 3; the answer keeps everything the leader shares.
    assert truncation_offset([(0, 0)], 10, (0, 10)) == Truncation(10, True)
    assert truncation_offset([], 0, (-1, -1)) == Truncation(0, True)
    assert truncation_offset([(4, 0)], 6, (-1, -1)) == Truncation(0, True)
    assert truncation_offset([(4, 20)], 26, (-1, -1)) == Truncation(20, True)
    # Our only epoch (3, from 0) is newer than the leader's (2, ending at 3): all ours goes.
    assert truncation_offset([(3, 0)], 3, (2, 3)) == Truncation(0, True)
    assert truncation_offset([(4, 20)], 26, (2, 22)) == Truncation(20, True)


def test_follower_high_watermark_and_isr_order() -> None:
    assert follower_high_watermark(5, 20, 12) == 12
    assert follower_high_watermark(5, 3, 12) == 5
    assert isr_order((3, 1, 2), {1, 3}) == (3, 1)
