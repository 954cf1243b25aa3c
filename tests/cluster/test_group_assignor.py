"""Unit and property tests of the consumer-group assignor: validity, balance, stickiness and
determinism, on worked examples and on random histories of joins, leaves, subscription
changes and partition growth where each result is fed back as the members' owned partitions."""

from __future__ import annotations

import time
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.group_assignor import MemberSpec, assign

pytestmark = pytest.mark.timeout(120)

Assignment = dict[str, dict[str, frozenset[int]]]
TOPICS = ("a", "b", "c")


# --- checkers ---------------------------------------------------------------------------

def count(result: Assignment, member_id: str) -> int:
    return sum(len(partitions) for partitions in result[member_id].values())


def check_valid(members: Mapping[str, MemberSpec], partitions_per_topic: Mapping[str, int],
                result: Assignment) -> None:
    assert sorted(result) == sorted(members)
    seen: dict[tuple[str, int], str] = {}
    for member_id, by_topic in result.items():
        for topic, partitions in by_topic.items():
            assert partitions, f"{member_id} has an empty entry for {topic}"
            assert topic in members[member_id].topics, f"{member_id} got unsubscribed {topic}"
            for partition in partitions:
                assert 0 <= partition < partitions_per_topic.get(topic, 0)
                assert (topic, partition) not in seen, f"{topic}-{partition} assigned twice"
                seen[(topic, partition)] = member_id
    for topic, partition_count in partitions_per_topic.items():
        if any(topic in spec.topics for spec in members.values()):
            for partition in range(partition_count):
                assert (topic, partition) in seen, f"{topic}-{partition} unassigned"


def check_balanced(members: Mapping[str, MemberSpec], result: Assignment) -> None:
    """No member holds more than one partition above a member that could take one of them."""
    for holder, by_topic in result.items():
        for topic in by_topic:
            for other, spec in members.items():
                if topic in spec.topics:
                    assert count(result, holder) <= count(result, other) + 1, (
                        f"{holder} ({count(result, holder)}) holds {topic} while "
                        f"{other} ({count(result, other)}) subscribes to it")


def valid_owned(members: Mapping[str, MemberSpec], partitions_per_topic: Mapping[str, int]
                ) -> dict[tuple[str, int], str]:
    """Each partition that a member owns and may keep (it exists, the member subscribes)."""
    owner: dict[tuple[str, int], str] = {}
    for member_id in sorted(members):
        spec = members[member_id]
        for topic, partitions in spec.owned.items():
            for partition in partitions:
                if topic in spec.topics and 0 <= partition < partitions_per_topic.get(topic, 0):
                    owner.setdefault((topic, partition), member_id)
    return owner


def moved(members: Mapping[str, MemberSpec], partitions_per_topic: Mapping[str, int],
          result: Assignment) -> dict[tuple[str, int], str]:
    """The partitions taken away from a member that could have kept them -> that member."""
    return {(topic, partition): member_id
            for (topic, partition), member_id
            in valid_owned(members, partitions_per_topic).items()
            if partition not in result[member_id].get(topic, frozenset())}


def minimal_moves_identical(members: Mapping[str, MemberSpec],
                            partitions_per_topic: Mapping[str, int]) -> int:
    """With identical subscriptions: the fewest moves any balanced assignment needs. The
    members that own the most get the larger quotas; each must give up what exceeds its quota."""
    subscription = next(iter(members.values())).topics
    total = sum(partitions_per_topic.get(topic, 0) for topic in subscription)
    base, extra = divmod(total, len(members))
    quotas = [base + 1] * extra + [base] * (len(members) - extra)
    owner = valid_owned(members, partitions_per_topic)
    owned_counts = sorted((sum(1 for m in owner.values() if m == member_id) for member_id in members),
                          reverse=True)
    return sum(max(0, owned - quota) for owned, quota in zip(owned_counts, quotas))


def reversed_input(members: Mapping[str, MemberSpec]) -> dict[str, MemberSpec]:
    """The same input built in the opposite insertion order."""
    return {member_id: MemberSpec(frozenset(sorted(spec.topics, reverse=True)),
                                  {topic: frozenset(sorted(spec.owned[topic], reverse=True))
                                   for topic in sorted(spec.owned, reverse=True)},
                                  spec.instance_id)
            for member_id, spec in reversed(list(members.items()))}


def check_all(members: Mapping[str, MemberSpec], partitions_per_topic: Mapping[str, int]
              ) -> Assignment:
    result = assign(members, partitions_per_topic)
    check_valid(members, partitions_per_topic, result)
    check_balanced(members, result)
    assert assign(members, partitions_per_topic) == result
    assert assign(reversed_input(members), dict(reversed(list(partitions_per_topic.items())))) == result
    # A valid, balanced assignment fed back is a fixpoint: nothing moves without a reason.
    assert assign(with_owned(members, result), partitions_per_topic) == result
    return result


def with_owned(members: Mapping[str, MemberSpec], result: Assignment) -> dict[str, MemberSpec]:
    return {member_id: MemberSpec(spec.topics, result.get(member_id, {}), spec.instance_id)
            for member_id, spec in members.items()}


def same(topics: str) -> MemberSpec:
    return MemberSpec(frozenset(topics.split(",")), {})


# --- worked examples --------------------------------------------------------------------

def test_fresh_group_splits_evenly() -> None:
    members = {f"m{i}": same("t") for i in range(3)}
    result = check_all(members, {"t": 12})
    assert [count(result, m) for m in sorted(result)] == [4, 4, 4]


def test_join_moves_exactly_one_partition_from_each_existing_member() -> None:
    members = {f"m{i}": same("t") for i in range(3)}
    before = check_all(members, {"t": 12})
    members = with_owned(members, before)
    members["m3"] = same("t")
    after = check_all(members, {"t": 12})
    taken = moved(members, {"t": 12}, after)
    assert len(taken) == 3
    assert sorted(taken.values()) == ["m0", "m1", "m2"]
    assert count(after, "m3") == 3
    for member_id in ("m0", "m1", "m2"):
        assert after[member_id]["t"] <= before[member_id]["t"]


def test_leave_moves_only_the_leavers_partitions() -> None:
    members = with_owned({f"m{i}": same("t") for i in range(4)},
                         assign({f"m{i}": same("t") for i in range(4)}, {"t": 12}))
    leaver = members.pop("m2")
    after = check_all(members, {"t": 12})
    assert moved(members, {"t": 12}, after) == {}
    for member_id, spec in members.items():
        gained = after[member_id]["t"] - spec.owned["t"]
        assert gained <= leaver.owned["t"] and len(gained) == 1


def test_subscription_change_moves_the_dropped_topic_and_keeps_the_rest() -> None:
    partitions_per_topic = {"a": 4, "b": 4}
    members = {"m0": same("a,b"), "m1": same("a,b")}
    before = check_all(members, partitions_per_topic)
    members = with_owned(members, before)
    members["m1"] = MemberSpec(frozenset({"a"}), before["m1"])
    after = check_all(members, partitions_per_topic)
    assert set(after["m1"]) == {"a"}
    assert after["m0"]["b"] == frozenset(range(4))
    # m0 now holds all of b; balance hands a's partitions to m1 as far as it allows.
    assert (count(after, "m0"), count(after, "m1")) == (4, 4)
    assert after["m1"]["a"] == frozenset(range(4))


def test_topic_growth_keeps_old_partitions_and_spreads_new_ones() -> None:
    members = {"m0": same("t"), "m1": same("t")}
    before = check_all(members, {"t": 4})
    members = with_owned(members, before)
    after = check_all(members, {"t": 8})
    for member_id in members:
        assert before[member_id]["t"] <= after[member_id]["t"]
        assert count(after, member_id) == 4


def test_mixed_subscriptions_balance_within_what_subscriptions_allow() -> None:
    members = {"only-a": same("a"), "both": same("a,b"), "only-b": same("b")}
    result = check_all(members, {"a": 2, "b": 6})
    # only-a must take all of a (else "both" would sit two above it), then b splits 3/3.
    assert (count(result, "only-a"), count(result, "both"), count(result, "only-b")) == (2, 3, 3)
    # A member alone on a topic takes all of it, however many partitions that is.
    result = check_all({"x": same("a"), "y": same("b")}, {"a": 1, "b": 9})
    assert result == {"x": {"a": frozenset({0})}, "y": {"b": frozenset(range(9))}}


def test_mixed_leave_may_move_others_when_balance_requires_it() -> None:
    partitions_per_topic = {"a": 2, "b": 2}
    members = {"only-a": same("a"), "both": same("a,b"), "only-b": same("b")}
    before = check_all(members, partitions_per_topic)
    members = with_owned(members, before)
    del members["only-b"]
    after = check_all(members, partitions_per_topic)
    assert count(after, "both") - count(after, "only-a") <= 1
    assert count(after, "only-a") >= 1 and after["both"]["b"] == frozenset({0, 1})


def test_balancing_moves_a_partition_placed_this_round_before_a_kept_one() -> None:
    # b-1, c-0 and c-2 have no owner. Placing them leaves m0 with b-0 (kept), b-1 and c-2
    # (placed) against m1's single b-2, so one b partition must move from m0 to m1: the
    # one m0 just received, so that no owned partition moves.
    members = {"m0": MemberSpec(frozenset({"b", "c"}), {"b": frozenset({0})}),
               "m1": MemberSpec(frozenset({"a", "b"}), {"b": frozenset({2})}),
               "m2": MemberSpec(frozenset({"c"}), {"c": frozenset({1})})}
    partitions_per_topic = {"a": 0, "b": 3, "c": 3}
    result = check_all(members, partitions_per_topic)
    assert moved(members, partitions_per_topic, result) == {}
    assert [count(result, m) for m in ("m0", "m1", "m2")] == [2, 2, 2]


def test_empty_inputs() -> None:
    assert assign({}, {}) == {}
    assert assign({}, {"t": 3}) == {}
    assert assign({"m": same("t")}, {}) == {"m": {}}
    assert assign({"m": same("t")}, {"t": 0}) == {"m": {}}
    assert assign({"m": MemberSpec(frozenset(), {})}, {"t": 3}) == {"m": {}}
    result = check_all({"m0": same("t"), "m1": same("t")}, {"t": 1})
    assert sorted(count(result, m) for m in result) == [0, 1]


def test_invalid_owned_partitions_are_dropped_and_double_claims_resolved() -> None:
    members = {
        "m0": MemberSpec(frozenset({"t"}), {"t": frozenset({0, 1, 7, -1}), "gone": frozenset({0}),
                                            "u": frozenset({0})}),
        "m1": MemberSpec(frozenset({"t", "u"}), {"t": frozenset({1, 2})}),
    }
    result = check_all(members, {"t": 4, "u": 2})
    # m0 keeps t-0 and t-1 (first in member order wins the disputed t-1) and takes t-3;
    # t-7, t--1, "gone" and the unsubscribed u are dropped; m1 keeps t-2 and takes all of u.
    assert result == {"m0": {"t": frozenset({0, 1, 3})},
                      "m1": {"t": frozenset({2}), "u": frozenset({0, 1})}}


def test_static_member_rejoining_under_a_new_id_gets_the_same_assignment() -> None:
    def group(rejoined_id: str) -> dict[str, MemberSpec]:
        return {"m-a": MemberSpec(frozenset({"t"}), {}, "host-1"),
                rejoined_id: MemberSpec(frozenset({"t"}), {}, "host-2"),
                "m-z": MemberSpec(frozenset({"t"}), {}, "host-3")}
    first = assign(group("m-b"), {"t": 7})
    second = assign(group("m-zz"), {"t": 7})
    assert first["m-b"] == second["m-zz"]


@pytest.mark.timeout(60)
def test_hundred_members_thousand_partitions_is_fast() -> None:
    partitions_per_topic = {f"t{i:02d}": 10 for i in range(100)}
    subscription = frozenset(partitions_per_topic)
    fresh = {f"member-{i:03d}": MemberSpec(subscription, {}) for i in range(100)}
    skewed = {f"member-{i:03d}": MemberSpec(subscription, {t: frozenset(range(10)) for t in subscription}
                                            if i == 0 else {}) for i in range(100)}
    mixed = {f"member-{i:03d}": MemberSpec(frozenset({f"t{i:02d}", f"t{(i * 7) % 100:02d}"}), {})
             for i in range(100)}
    for members in (fresh, skewed, mixed):
        best_s = min(_timed(members, partitions_per_topic) for _ in range(3))
        assert best_s < 0.1, f"assign took {best_s * 1000:.1f} ms"
    result = assign(skewed, partitions_per_topic)
    assert {count(result, m) for m in result} == {10}


def _timed(members: Mapping[str, MemberSpec], partitions_per_topic: Mapping[str, int]) -> float:
    started = time.perf_counter()
    assign(members, partitions_per_topic)
    return time.perf_counter() - started


# --- property tests over random histories -----------------------------------------------

subscriptions = st.frozensets(st.sampled_from(TOPICS), min_size=1)
operations = st.one_of(
    st.tuples(st.just("join"), subscriptions, st.booleans()),
    st.tuples(st.just("leave"), st.integers(0, 50)),
    st.tuples(st.just("resubscribe"), st.integers(0, 50), subscriptions),
    st.tuples(st.just("grow"), st.sampled_from(TOPICS), st.integers(1, 6)),
)


@settings(max_examples=60, deadline=None)
@given(initial=st.lists(subscriptions, min_size=0, max_size=5),
       counts=st.tuples(*(st.integers(0, 8) for _ in TOPICS)),
       history=st.lists(operations, max_size=12))
def test_random_histories_with_mixed_subscriptions(initial: list[frozenset[str]],
                                                   counts: tuple[int, ...],
                                                   history: list[tuple[object, ...]]) -> None:
    partitions_per_topic = dict(zip(TOPICS, counts))
    members = {f"m{i}": MemberSpec(topics, {}) for i, topics in enumerate(initial)}
    result = check_all(members, partitions_per_topic)
    for step, operation in enumerate(history):
        members = with_owned(members, result)
        kind = operation[0]
        if kind == "join":
            _, topics, static = operation
            assert isinstance(topics, frozenset)
            members[f"n{step}"] = MemberSpec(topics, {}, f"host-{step}" if static else None)
        elif kind == "leave" and members:
            _, index = operation
            assert isinstance(index, int)
            leaver = sorted(members)[index % len(members)]
            del members[leaver]
        elif kind == "resubscribe" and members:
            _, index, topics = operation
            assert isinstance(index, int) and isinstance(topics, frozenset)
            member_id = sorted(members)[index % len(members)]
            old = members[member_id]
            members[member_id] = MemberSpec(topics, old.owned, old.instance_id)
        elif kind == "grow":
            _, topic, extra = operation
            assert isinstance(topic, str) and isinstance(extra, int)
            partitions_per_topic[topic] += extra
        result = check_all(members, partitions_per_topic)
        # No gratuitous move: a partition is taken from a member that could keep it only
        # for a member that ends with no more than one partition above that member.
        for (topic, partition), loser in moved(members, partitions_per_topic, result).items():
            winner = next(m for m, by_topic in result.items() if partition in by_topic.get(topic, ()))
            assert count(result, winner) <= count(result, loser) + 1


@settings(max_examples=60, deadline=None)
@given(size=st.integers(0, 6), subscription=subscriptions,
       counts=st.tuples(*(st.integers(0, 10) for _ in TOPICS)),
       history=st.lists(operations, max_size=12))
def test_random_histories_with_identical_subscriptions_move_the_minimum(
        size: int, subscription: frozenset[str], counts: tuple[int, ...],
        history: list[tuple[object, ...]]) -> None:
    partitions_per_topic = dict(zip(TOPICS, counts))
    members = {f"m{i}": MemberSpec(subscription, {}) for i in range(size)}
    result = check_all(members, partitions_per_topic)
    for step, operation in enumerate(history):
        members = with_owned(members, result)
        kind = operation[0]
        joined = left = None
        if kind == "join":
            joined = f"n{step}"
            members[joined] = MemberSpec(subscription, {})
        elif kind == "leave" and members:
            _, index = operation
            assert isinstance(index, int)
            left = sorted(members)[index % len(members)]
            del members[left]
        elif kind == "resubscribe":  # everybody changes together, staying identical
            _, _, topics = operation
            assert isinstance(topics, frozenset)
            subscription = topics
            members = {m: MemberSpec(subscription, spec.owned) for m, spec in members.items()}
        elif kind == "grow":
            _, topic, extra = operation
            assert isinstance(topic, str) and isinstance(extra, int)
            partitions_per_topic[topic] += extra
        result = check_all(members, partitions_per_topic)
        if not members:
            continue
        counts_now = [count(result, m) for m in members]
        assert max(counts_now) - min(counts_now) <= 1
        taken = moved(members, partitions_per_topic, result)
        assert len(taken) == minimal_moves_identical(members, partitions_per_topic)
        if joined is not None and len(members) > 1:  # everything was owned before the join
            assert len(taken) == count(result, joined)
        if left is not None:
            assert taken == {}


@settings(max_examples=60, deadline=None)
@given(size=st.integers(1, 6), subscription=subscriptions,
       counts=st.tuples(*(st.integers(0, 10) for _ in TOPICS)), data=st.data())
def test_arbitrary_owned_with_identical_subscriptions_moves_the_minimum(
        size: int, subscription: frozenset[str], counts: tuple[int, ...], data: st.DataObject
) -> None:
    partitions_per_topic = dict(zip(TOPICS, counts))
    member_ids = [f"m{i}" for i in range(size)]
    # Any (possibly unbalanced, possibly stale or overlapping) previous assignment.
    owned: dict[str, dict[str, set[int]]] = {m: {} for m in member_ids}
    for topic in TOPICS:
        for partition in range(partitions_per_topic[topic] + 2):
            owner = data.draw(st.sampled_from([None, *member_ids]))
            if owner is not None:
                owned[owner].setdefault(topic, set()).add(partition)
    members = {m: MemberSpec(subscription, {t: frozenset(p) for t, p in owned[m].items()})
               for m in member_ids}
    result = check_all(members, partitions_per_topic)
    taken = moved(members, partitions_per_topic, result)
    assert len(taken) == minimal_moves_identical(members, partitions_per_topic)
