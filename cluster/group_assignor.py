"""The consumer-group assignor: which member of a group consumes which partition. Pure: no
I/O, no clocks, no randomness; the group coordinator calls ``assign`` whenever the group's
members, their subscriptions or the topics' partition counts change, and turns the result
into each member's target assignment (DESIGN.md §6, server-side assignment).

Theory of operation
-------------------
Input: for every member, the topics it subscribes to and the partitions it currently owns
(its previous target assignment); and the partition count of every known topic. Output: for
every member, ``{topic: frozenset(partitions)}``. The decision satisfies, in this order:

1. Valid: every partition of every topic with at least one subscriber goes to exactly one
   subscriber of that topic; nothing else is handed out.
2. Balanced: a member never holds more than one partition above a member that could have
   taken one of its partitions (subscribes to that partition's topic). When everybody
   subscribes to the same topics this means the counts differ by at most one.
3. Sticky: a partition stays with its owner unless (1) or (2) forces it to move.
4. Deterministic: ties are broken by a stable member order (instance id, then member id),
   and partitions by (topic, partition), never by hash or iteration order.

The algorithm, in three steps:

a. Keep. Each member keeps the partitions it owns that still exist and that it still
   subscribes to (a partition claimed twice goes to the first member in the stable order).
b. Place. Topics are grouped into classes of topics with the same set of subscribers (their
   partitions are interchangeable for balance). For each class, most constrained first, each
   unowned partition goes to the subscriber that holds the fewest partitions overall.
c. Even out. For each class, while the fullest holder of a class partition has more than one
   partition above the emptiest subscriber of the class, one partition moves from the first
   to the second (a partition the holder received in this round before one it kept). Every
   such move lowers the sum of squared counts, so the passes over the classes terminate.

With identical subscriptions, (b) and (c) move exactly the partitions the balanced outcome
requires and no more; with mixed subscriptions, (c) may also move partitions of members that
did not change, when a departure or a new subscription would otherwise leave one member
two partitions above another that could share its load.

Example: members m1, m2, m3 own 4 partitions each of a 12-partition topic; m4 joins.
Balance needs counts 3/3/3/3: (a) keeps all 12 with their owners, (b) has nothing to place,
(c) moves one partition from each of m1, m2, m3 to m4. Exactly 3 partitions move. If m2
then leaves, its 3 partitions go one each to m1, m3 and m4 in (b), and nothing else moves.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

TopicPartition = tuple[str, int]


@dataclass(frozen=True)
class MemberSpec:
    """One member as the assignor sees it."""

    topics: frozenset[str]  # the member's resolved subscription
    owned: Mapping[str, frozenset[int]]  # its current target assignment (stickiness input)
    instance_id: str | None = None


@dataclass
class _Class:
    """Topics that share one set of subscribers."""

    topics: tuple[str, ...]
    members: tuple[str, ...]  # subscribers, in the stable member order


@dataclass
class _Holding:
    """A member's partitions of one class: those it kept from its previous assignment, and
    those it received in this round (moved first when balance asks for a move)."""

    kept: list[TopicPartition] = field(default_factory=list)
    fresh: list[TopicPartition] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.kept) + len(self.fresh)

    def take(self) -> TopicPartition:
        return self.fresh.pop() if self.fresh else self.kept.pop()


def assign(members: Mapping[str, MemberSpec],
           partitions_per_topic: Mapping[str, int]) -> dict[str, dict[str, frozenset[int]]]:
    """The target assignment of every member: ``{member_id: {topic: frozenset(partitions)}}``.
    Every member id appears (with ``{}`` when it gets nothing); topics without partitions
    for a member are omitted."""
    order = sorted(members, key=lambda member_id: _member_key(member_id, members[member_id]))
    rank = {member_id: index for index, member_id in enumerate(order)}
    classes = _classes(order, members, partitions_per_topic)
    class_of_topic = {topic: index for index, cls in enumerate(classes) for topic in cls.topics}
    holdings = {member_id: [_Holding() for _ in classes] for member_id in order}
    counts = dict.fromkeys(order, 0)

    claimed = _keep(order, members, partitions_per_topic, class_of_topic, holdings, counts)
    _place(classes, partitions_per_topic, claimed, holdings, counts, rank)
    moves = _even_out(classes, holdings, counts, rank)
    if moves:
        log.debug("assignor moved %d partitions to balance %d members", moves, len(order))
    return _result(order, holdings)


def _member_key(member_id: str, spec: MemberSpec) -> tuple[str, str]:
    # A static member keeps its place in the order when it rejoins under a new member id.
    return (spec.instance_id if spec.instance_id is not None else member_id, member_id)


def _classes(order: list[str], members: Mapping[str, MemberSpec],
             partitions_per_topic: Mapping[str, int]) -> list[_Class]:
    """Group the subscribed topics that have partitions by their set of subscribers; most
    constrained (fewest subscribers) first, then by topic names."""
    by_subscribers: dict[tuple[str, ...], list[str]] = {}
    for topic in sorted(partitions_per_topic):
        if partitions_per_topic[topic] <= 0:
            continue
        subscribers = tuple(member_id for member_id in order if topic in members[member_id].topics)
        if subscribers:
            by_subscribers.setdefault(subscribers, []).append(topic)
    classes = [_Class(tuple(topics), subscribers) for subscribers, topics in by_subscribers.items()]
    classes.sort(key=lambda cls: (len(cls.members), cls.topics))
    return classes


def _keep(order: list[str], members: Mapping[str, MemberSpec],
          partitions_per_topic: Mapping[str, int], class_of_topic: Mapping[str, int],
          holdings: dict[str, list[_Holding]], counts: dict[str, int]) -> set[TopicPartition]:
    """Step (a): every member keeps its owned partitions that are still valid for it."""
    claimed: set[TopicPartition] = set()
    for member_id in order:
        spec = members[member_id]
        for topic in sorted(spec.owned):
            if topic not in spec.topics or topic not in class_of_topic:
                continue
            count = partitions_per_topic[topic]
            holding = holdings[member_id][class_of_topic[topic]]
            for partition in sorted(spec.owned[topic]):
                if 0 <= partition < count and (topic, partition) not in claimed:
                    claimed.add((topic, partition))
                    holding.kept.append((topic, partition))
                    counts[member_id] += 1
    return claimed


def _place(classes: list[_Class], partitions_per_topic: Mapping[str, int],
           claimed: set[TopicPartition], holdings: dict[str, list[_Holding]],
           counts: dict[str, int], rank: Mapping[str, int]) -> None:
    """Step (b): each unowned partition goes to the least loaded subscriber of its class."""
    for index, cls in enumerate(classes):
        least_loaded = [(counts[member_id], rank[member_id], member_id) for member_id in cls.members]
        heapq.heapify(least_loaded)
        for topic in cls.topics:
            for partition in range(partitions_per_topic[topic]):
                if (topic, partition) in claimed:
                    continue
                count, member_rank, member_id = least_loaded[0]
                holdings[member_id][index].fresh.append((topic, partition))
                counts[member_id] = count + 1
                heapq.heapreplace(least_loaded, (count + 1, member_rank, member_id))


def _even_out(classes: list[_Class], holdings: dict[str, list[_Holding]],
              counts: dict[str, int], rank: Mapping[str, int]) -> int:
    """Step (c): move partitions from the fullest holder to the emptiest subscriber of each
    class until no holder is more than one above any subscriber; returns the moves made."""
    moves_total = 0
    while True:
        moves_in_pass = sum(_even_out_class(index, cls, holdings, counts, rank)
                            for index, cls in enumerate(classes))
        moves_total += moves_in_pass
        if moves_in_pass == 0:
            return moves_total


def _even_out_class(index: int, cls: _Class, holdings: dict[str, list[_Holding]],
                    counts: dict[str, int], rank: Mapping[str, int]) -> int:
    # Two heaps with lazy deletion: an entry is current while its count is the member's count
    # (and, for the fullest-holder heap, while the member still holds a class partition).
    emptiest = [(counts[m], rank[m], m) for m in cls.members]
    fullest = [(-counts[m], rank[m], m) for m in cls.members if len(holdings[m][index])]
    heapq.heapify(emptiest)
    heapq.heapify(fullest)
    moves = 0
    while fullest and emptiest:
        low_count, _, low = emptiest[0]
        if low_count != counts[low]:
            heapq.heappop(emptiest)
            continue
        high_negative, _, high = fullest[0]
        if -high_negative != counts[high] or not len(holdings[high][index]):
            heapq.heappop(fullest)
            continue
        if counts[high] <= counts[low] + 1:
            break
        holdings[low][index].fresh.append(holdings[high][index].take())
        counts[high] -= 1
        counts[low] += 1
        moves += 1
        for member_id in (high, low):
            heapq.heappush(emptiest, (counts[member_id], rank[member_id], member_id))
            if len(holdings[member_id][index]):
                heapq.heappush(fullest, (-counts[member_id], rank[member_id], member_id))
    return moves


def _result(order: list[str], holdings: dict[str, list[_Holding]]
            ) -> dict[str, dict[str, frozenset[int]]]:
    result: dict[str, dict[str, frozenset[int]]] = {}
    for member_id in sorted(order):
        by_topic: dict[str, set[int]] = {}
        for holding in holdings[member_id]:
            for topic, partition in holding.kept + holding.fresh:
                by_topic.setdefault(topic, set()).add(partition)
        result[member_id] = {topic: frozenset(by_topic[topic]) for topic in sorted(by_topic)}
    return result
