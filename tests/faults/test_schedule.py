"""The nemesis schedule: seeded and replayable, bounded, and resolved to the right nodes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.faults.schedule import (
    COOL_DOWN_S, HOLD_S_MAX, NETWORK_KINDS, PROCESS_KINDS, WARM_UP_S, PlannedFault, make_schedule, resolve,
)
from tests.faults.workload import DEFINITE_ERRORS, classify_send_error
from cluster.client import errors

pytestmark = pytest.mark.timeout(60)


def test_the_same_seed_replays_the_same_schedule_and_another_differs() -> None:
    assert make_schedule(7, 600, 3, True) == make_schedule(7, 600, 3, True)
    assert make_schedule(7, 600, 3, True) != make_schedule(8, 600, 3, True)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 10_000), duration_s=st.floats(10, 900), nodes=st.sampled_from([3, 5]),
       network=st.booleans())
def test_faults_never_overlap_and_are_healed_before_the_load_stops(seed: int, duration_s: float, nodes: int,
                                                                   network: bool) -> None:
    plans = make_schedule(seed, duration_s, nodes, network)
    previous_end = WARM_UP_S
    for plan in plans:
        assert plan.start_s >= previous_end - 1e-6
        assert 0 < plan.hold_s <= HOLD_S_MAX
        previous_end = plan.start_s + plan.hold_s
        assert previous_end <= duration_s - COOL_DOWN_S + 1e-6
        assert plan.kind in (PROCESS_KINDS + NETWORK_KINDS if network else PROCESS_KINDS)


def test_a_long_schedule_uses_every_kind() -> None:
    kinds = {plan.kind for plan in make_schedule(3, 600, 3, True)}
    assert kinds == set(PROCESS_KINDS + NETWORK_KINDS)
    assert {plan.kind for plan in make_schedule(3, 600, 3, False)} == set(PROCESS_KINDS)


def plan(kind: str, role: str = "any", pick: int = 0) -> PlannedFault:
    return PlannedFault(0, 5.0, kind, 3.0, role, pick)


def test_targets_follow_the_role() -> None:
    nodes = [1, 2, 3]
    assert resolve(plan("pause", "controller"), nodes, {0: 1}, 3).nodes == (3,)
    assert resolve(plan("kill", "leader", pick=1), nodes, {0: 1, 1: 2, 2: 2}, 3).nodes == (2,)
    assert resolve(plan("kill", "any", pick=4), nodes, {}, None).nodes == (2,)
    # an unknown controller falls back to any node
    assert resolve(plan("pause", "controller", pick=0), nodes, {}, None).nodes == (1,)


def test_a_fault_keeps_the_controller_it_fired_under_so_coordinator_faults_are_counted() -> None:
    """The active controller is every group's coordinator: a kill or pause aimed at the
    "controller" role takes the coordinator away, and the report counts such faults."""
    from tests.faults.checkers import summarize
    from tests.faults.runner import Nemesis

    nodes = [1, 2, 3]
    on_controller = resolve(plan("kill", "controller"), nodes, {0: 1}, 2)
    assert on_controller.nodes == (2,) and on_controller.controller == 2
    assert on_controller.describe() == "kill -9 2 (the controller)"
    elsewhere = resolve(plan("pause", "leader"), nodes, {0: 1}, 2)
    assert elsewhere.nodes == (1,) and "controller" not in elsewhere.describe()
    isolated = resolve(plan("isolate", "controller"), nodes, {}, 3)
    events = [{"index": i, "type": "info", "process": "nemesis", "f": "fault", "value": Nemesis._describe(fault)}
              for i, fault in enumerate((on_controller, elsewhere, isolated))]
    assert summarize(events)["coordinator_faults"] == 1  # kills and pauses only


def test_network_faults_cut_the_right_links() -> None:
    nodes = [1, 2, 3, 4, 5]
    isolate = resolve(plan("isolate", "controller"), nodes, {}, 2)
    assert set(isolate.links) == {(2, n) for n in (1, 3, 4, 5)} | {(n, 2) for n in (1, 3, 4, 5)}

    split = resolve(plan("split", "controller", pick=11), nodes, {}, 2)
    minority = set(split.nodes)
    assert 2 in minority and len(minority) == 2
    majority = set(nodes) - minority
    assert set(split.links) == {(a, b) for a in minority for b in majority} | {(b, a) for a in minority for b in majority}

    bridge = resolve(plan("bridge", "controller", pick=5), nodes, {}, 2)
    assert all(2 not in link for link in bridge.links)
    touched = {n for link in bridge.links for n in link}
    assert touched == {1, 3, 4, 5} and len(bridge.links) == 8  # 2 x 2 pairs, both ways

    one_way = resolve(plan("one-way", "controller", pick=3), nodes, {}, 2)
    assert len(one_way.links) == 1 and one_way.links[0][0] == 2 and one_way.links[0][1] != 2


def test_send_errors_are_definite_only_before_an_append() -> None:
    assert classify_send_error(errors.NotEnoughReplicasError("x")) == "fail"
    assert classify_send_error(errors.MessageTooLargeError("x")) == "fail"
    for ambiguous in (errors.NotLeaderOrFollowerError("x"), errors.RequestTimedOutError("x"),
                      errors.NotEnoughReplicasAfterAppendError("x"), errors.NetworkExceptionError("x"),
                      errors.KafkaTimeoutError("x"), errors.IllegalStateError("x"), RuntimeError("x")):
        assert classify_send_error(ambiguous) == "info", ambiguous
    assert errors.NOT_LEADER_OR_FOLLOWER not in DEFINITE_ERRORS
