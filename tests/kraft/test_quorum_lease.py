"""The leader-lease rule (``kraft.raft_log.quorum_lease_holds``), without sockets.

The fault suite (namespaces, seed 12) saw a coordinator paused by SIGSTOP answer an
OffsetFetch from its old image after its SIGCONT: followers' answers that had reached its
socket just before the pause were processed right after it, stamped "now", and made the
lease look fresh while a newer leader had been elected.
"""

from __future__ import annotations

import pytest

from kraft.raft_log import quorum_lease_holds

LEASE_S = 0.3
NOW_S = 1000.0
STEADY = {"last_tick_s": NOW_S - 0.02, "ticks_resumed_s": NOW_S - 60.0}  # ticking without a gap for a minute


def test_a_majority_that_answered_within_the_lease_holds_it() -> None:
    assert quorum_lease_holds(NOW_S, [NOW_S - 0.05, NOW_S - 0.05], lease_s=LEASE_S, **STEADY)
    assert quorum_lease_holds(NOW_S, [NOW_S - 0.05, 0.0], lease_s=LEASE_S, **STEADY)  # 2 of 3


def test_answers_older_than_the_lease_do_not_count() -> None:
    assert not quorum_lease_holds(NOW_S, [NOW_S - 0.31, NOW_S - 5.0], lease_s=LEASE_S, **STEADY)


@pytest.mark.parametrize("answered,expected", [(2, True), (1, False)])
def test_five_voters_need_two_other_answers(answered: int, expected: bool) -> None:
    times = [NOW_S - 0.01] * answered + [NOW_S - 9.0] * (4 - answered)
    assert quorum_lease_holds(NOW_S, times, lease_s=LEASE_S, **STEADY) is expected


def test_a_tick_thread_that_has_not_ticked_for_a_lease_refuses_even_with_fresh_answers() -> None:
    # Resumed after a SIGSTOP, the request handler runs before the tick thread's next tick.
    assert not quorum_lease_holds(NOW_S, [NOW_S - 0.01, NOW_S - 0.01], last_tick_s=NOW_S - 6.6,
                                  ticks_resumed_s=NOW_S - 60.0, lease_s=LEASE_S)


def test_answers_processed_just_after_a_resume_do_not_renew_the_lease() -> None:
    # The tick thread ticked again 50 ms ago after a 6.6 s gap, and stamped the answers
    # queued during the pause: they look fresh, but were sent before it.
    resumed = NOW_S - 0.05
    assert not quorum_lease_holds(NOW_S, [resumed, resumed], last_tick_s=NOW_S - 0.01,
                                  ticks_resumed_s=resumed, lease_s=LEASE_S)


def test_a_lease_after_the_resume_holds_once_a_full_lease_has_passed() -> None:
    resumed = NOW_S - 0.31
    assert quorum_lease_holds(NOW_S, [NOW_S - 0.02, NOW_S - 0.02], last_tick_s=NOW_S - 0.01,
                              ticks_resumed_s=resumed, lease_s=LEASE_S)
