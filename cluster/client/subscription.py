"""What the consumer reads and where it stands: subscription, assignment, positions.

Theory of operation
-------------------
``SubscriptionState`` owns, under one lock, the consumer's topics (``subscribe``) or
explicit partitions (``assign``), and per assigned partition a ``PartitionState``:

* ``position`` — the offset of the next record ``poll`` returns (None: unknown, to be
  reset with ``reset_strategy``, or the consumer's ``auto_offset_reset``);
* ``fetch_position`` — the offset the fetcher asks for next; it runs ahead of
  ``position`` by what is buffered but not yet returned;
* ``generation`` — bumped by every seek, reset or reassignment, so fetched data and
  in-flight responses from before the change are recognized and dropped;
* ``paused``, ``backoff_until_s``, ``error`` (raised by the next ``poll``).

A subscription names topics (``subscribed``) or a regular expression (``pattern``).
Who assigns partitions is not decided here: ``assign`` is the user's choice;
``assign_from_subscribed`` maps a subscription without a group to every partition of its
topics; ``assign_from_group`` applies what the group coordinator gave this member (the
consumer reconciles it in ``poll``). Partitions that stay assigned keep their state, so
their fetching never stops. A partition removed and later assigned again continues its
old generation count, so data fetched for it before the removal is never taken as new.
The fetcher and ``poll`` only read positions and generations; ``seek`` and resets write them.
"""

from __future__ import annotations

import re
import threading
from typing import Iterable

from cluster.client import errors
from cluster.client.structs import TopicPartition

RESET_EARLIEST = "earliest"
RESET_LATEST = "latest"
RESET_NONE = "none"
RESET_STRATEGIES = (RESET_EARLIEST, RESET_LATEST, RESET_NONE)


class PartitionState:
    __slots__ = ("position", "fetch_position", "generation", "paused", "reset_strategy",
                 "backoff_until_s", "error", "high_watermark", "log_start_offset")

    def __init__(self) -> None:
        self.position: int | None = None
        self.fetch_position: int | None = None
        self.generation = 0
        self.paused = False
        self.reset_strategy: str | None = None
        self.backoff_until_s = 0.0
        self.error: BaseException | None = None
        self.high_watermark = -1
        self.log_start_offset = -1

    def set_position(self, offset: int) -> None:
        self.position = offset
        self.fetch_position = offset
        self.reset_strategy = None
        self.error = None
        self.generation += 1


class SubscriptionState:
    def __init__(self, auto_offset_reset: str = RESET_EARLIEST) -> None:
        if auto_offset_reset not in RESET_STRATEGIES:
            raise errors.ConfigError(f"auto_offset_reset must be one of {RESET_STRATEGIES}, got {auto_offset_reset!r}")
        self.default_reset = auto_offset_reset
        self.lock = threading.Lock()
        self.data_ready = threading.Condition(self.lock)  # poll waits on it
        self.fetcher_wakeup = threading.Condition(self.lock)  # the fetcher waits on it
        self.subscribed: frozenset[str] | None = None
        self.pattern: re.Pattern[str] | None = None
        self.assignment: dict[TopicPartition, PartitionState] = {}
        self._retired_generations: dict[TopicPartition, int] = {}
        self.user_assigned = False
        self.version = 0  # bumped on every assignment change

    # -- subscription and assignment ------------------------------------------------------

    def subscribe(self, topics: Iterable[str], keep_assignment: bool = False) -> None:
        """Subscribe to ``topics``; partitions of other topics are dropped unless
        ``keep_assignment`` (a group member keeps them until the coordinator revokes them)."""
        names = [topics] if isinstance(topics, str) else list(topics)
        if not all(isinstance(t, str) and t for t in names):
            raise errors.InvalidTopicExceptionError(f"topics must be non-empty str, got {names!r}")
        with self.lock:
            if self.user_assigned and self.assignment:
                raise errors.IllegalStateError("subscribe() after assign(): call unsubscribe() first")
            self.user_assigned = False
            self.pattern = None
            self.subscribed = frozenset(names)
            if not keep_assignment:
                self._set_assignment([tp for tp in self.assignment if tp.topic in self.subscribed])

    def subscribe_pattern(self, pattern: str | re.Pattern[str], keep_assignment: bool = False) -> None:
        """Subscribe to every topic whose whole name matches ``pattern`` (``keep_assignment``:
        as for ``subscribe``)."""
        try:
            compiled = re.compile(pattern) if isinstance(pattern, str) else pattern
        except re.error as exc:
            raise errors.InvalidTopicExceptionError(f"bad topic pattern {pattern!r}: {exc}") from None
        with self.lock:
            if self.user_assigned and self.assignment:
                raise errors.IllegalStateError("subscribe() after assign(): call unsubscribe() first")
            self.user_assigned = False
            self.pattern = compiled
            self.subscribed = frozenset()  # the matching topics, once known
            if not keep_assignment:
                self._set_assignment([tp for tp in self.assignment if compiled.fullmatch(tp.topic)])

    def set_pattern_topics(self, topics: Iterable[str]) -> None:
        """The topics that match the pattern now (a subscription without a group)."""
        with self.lock:
            if self.pattern is not None:
                self.subscribed = frozenset(t for t in topics if self.pattern.fullmatch(t))

    def is_subscribed(self) -> bool:
        return self.subscribed is not None

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        tps = [TopicPartition(*tp) for tp in partitions]
        with self.lock:
            if self.subscribed is not None:
                raise errors.IllegalStateError("assign() after subscribe(): call unsubscribe() first")
            self.user_assigned = True
            self._set_assignment(tps)

    def assign_from_subscribed(self, partitions: Iterable[TopicPartition]) -> bool:
        """Set the assignment of a subscription; True when it changed."""
        tps = list(partitions)
        with self.lock:
            if self.subscribed is None:
                return False
            tps = [tp for tp in tps if tp.topic in self.subscribed]
            if set(tps) == set(self.assignment):
                return False
            self._set_assignment(tps)
            return True

    def assign_from_group(self, partitions: Iterable[TopicPartition],
                          positions: dict[TopicPartition, int] | None = None) -> None:
        """Set the assignment the group gave this member; new partitions start at
        ``positions`` (their committed offsets) where given, else at a reset."""
        with self.lock:
            if self.subscribed is None:
                raise errors.IllegalStateError("a group assignment needs a subscription")
            self._set_assignment(list(partitions))
            for tp, offset in (positions or {}).items():
                state = self.assignment.get(tp)
                if state is not None and offset >= 0:
                    state.set_position(offset)

    def unsubscribe(self) -> None:
        with self.lock:
            self.subscribed = None
            self.pattern = None
            self.user_assigned = False
            self._set_assignment([])

    def _set_assignment(self, tps: list[TopicPartition]) -> None:
        old = self.assignment
        new: dict[TopicPartition, PartitionState] = {}
        for tp in sorted(set(tps)):
            state = old.get(tp)
            if state is None:
                state = PartitionState()
                state.generation = self._retired_generations.pop(tp, -1) + 1
            new[tp] = state
        for tp, state in old.items():
            if tp not in new:
                self._retired_generations[tp] = state.generation
        self.assignment = new
        self.version += 1
        self.fetcher_wakeup.notify_all()
        self.data_ready.notify_all()

    def assigned(self) -> set[TopicPartition]:
        with self.lock:
            return set(self.assignment)

    def positions(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The known positions of those of ``tps`` that are assigned."""
        with self.lock:
            found = {}
            for tp in tps:
                state = self.assignment.get(tp)
                if state is not None and state.position is not None:
                    found[tp] = state.position
            return found

    def topics_of_interest(self) -> set[str]:
        with self.lock:
            topics = set(self.subscribed or ())
            topics.update(tp.topic for tp in self.assignment)
            return topics

    # -- positions ------------------------------------------------------------------------

    def _state(self, tp: TopicPartition) -> PartitionState:
        state = self.assignment.get(tp)
        if state is None:
            raise errors.IllegalStateError(f"partition {tp.topic}-{tp.partition} is not assigned to this consumer")
        return state

    def seek(self, tp: TopicPartition, offset: int) -> None:
        if not isinstance(offset, int) or offset < 0:
            raise ValueError(f"offset must be a non-negative int, got {offset!r}")
        with self.lock:
            self._state(tp).set_position(offset)
            self.fetcher_wakeup.notify_all()

    def request_reset(self, tps: Iterable[TopicPartition], strategy: str | None) -> None:
        """Forget the positions; the next poll or ``position`` looks them up with ``strategy``."""
        with self.lock:
            for tp in tps:
                state = self._state(tp)
                state.position = None
                state.fetch_position = None
                state.reset_strategy = strategy
                state.error = None
                state.generation += 1
            self.fetcher_wakeup.notify_all()

    def needing_reset(self) -> dict[TopicPartition, str]:
        """``{tp: strategy}`` for every assigned partition without a position."""
        with self.lock:
            return {tp: s.reset_strategy or self.default_reset
                    for tp, s in self.assignment.items() if s.position is None}

    def reset_to(self, tp: TopicPartition, offset: int, generation: int) -> None:
        """Apply a looked-up offset unless the partition changed since the lookup began."""
        with self.lock:
            state = self.assignment.get(tp)
            if state is not None and state.generation == generation and state.position is None:
                state.set_position(offset)
                self.fetcher_wakeup.notify_all()

    def generations(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        with self.lock:
            return {tp: self.assignment[tp].generation for tp in tps if tp in self.assignment}

    def position(self, tp: TopicPartition) -> int | None:
        with self.lock:
            return self._state(tp).position

    def pause(self, tps: Iterable[TopicPartition]) -> None:
        with self.lock:
            for tp in tps:
                self._state(tp).paused = True

    def resume(self, tps: Iterable[TopicPartition]) -> None:
        with self.lock:
            for tp in tps:
                self._state(tp).paused = False
            self.fetcher_wakeup.notify_all()

    def paused(self) -> set[TopicPartition]:
        with self.lock:
            return {tp for tp, s in self.assignment.items() if s.paused}

    def take_errors(self) -> list[BaseException]:
        """Errors the fetcher stored for the application; each is raised once."""
        with self.lock:
            found = []
            for state in self.assignment.values():
                if state.error is not None:
                    found.append(state.error)
                    state.error = None
            return found
