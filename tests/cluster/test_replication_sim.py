"""Seeded simulation of one partition replicated on three brokers, driving the pure logic
of ``cluster.replication`` through random appends, follower fetches, crashes and restarts,
leader changes within the ISR, fencing and ISR changes through a controller that checks
epochs. Named invariants are checked after every step; a failure prints the seed.

The model: each replica holds a durable log of (leader epoch, value) entries, one record
per offset. A fetch is two steps (the leader answers; later the follower appends), so a
follower that crashes in between loses what it had received but not yet appended.
The controller is modelled after ``kraft.lifecycle``: a leader is elected only from the
ISR, a fenced broker leaves the ISR unless it is the last member, AlterPartition requests
carry the leader and partition epochs they were made in and the sender's broker epoch (a
restarted broker registers again under a new one) and travel with a delay. Without the
broker epoch a request sent just before the leader restarted can land afterwards and put
a lagging follower into the ISR (seed 194 found it).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from cluster.replication import (
    NONE,
    LeaderState,
    end_offset_for_epoch,
    follower_high_watermark,
    latest_epoch,
    truncation_offset,
)

pytestmark = pytest.mark.timeout(120)

BROKERS = (0, 1, 2)
MIN_INSYNC_REPLICAS = 2
REPLICA_LAG_TIME_MAX_MS = 1000
FETCH_RECORDS_MAX = 16
TRUNCATION_ROUNDS_MAX = 10
NO_LEADER = -1


def epoch_entries(log: list[tuple[int, int]]) -> list[tuple[int, int]]:
    entries: list[tuple[int, int]] = []
    for offset, (epoch, _) in enumerate(log):
        if not entries or entries[-1][0] != epoch:
            entries.append((epoch, offset))
    return entries


@dataclass
class Replica:
    broker_id: int
    log: list[tuple[int, int]] = field(default_factory=list)
    high_watermark: int = 0
    alive: bool = True
    following_epoch: int = -1  # the leader epoch it has truncated for
    inflight: tuple[int, list[tuple[int, int]], int] | None = None  # (offset, records, hw)


@dataclass
class AlterRequest:
    leader_id: int
    leader_incarnation: int  # the sender's broker epoch (KIP-841's check of the sender)
    leader_epoch: int
    partition_epoch: int
    isr: tuple[int, ...]


class InvariantViolation(AssertionError):
    pass


class Simulation:
    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)
        self.now_ms = 0
        self.replicas = {b: Replica(b) for b in BROKERS}
        self.fenced: set[int] = set()
        self.incarnations = {b: 0 for b in BROKERS}  # bumped when a broker registers again
        self.leader = 0
        self.isr: tuple[int, ...] = BROKERS
        self.leader_epoch = 0
        self.partition_epoch = 0
        self.leaders_by_epoch: dict[int, int] = {0: 0}
        self.state: LeaderState | None = self._leader_state()
        self.alter_requests: list[AlterRequest] = []
        self.next_value = 0
        self.pending_acks: dict[int, tuple[int, int]] = {}  # value -> (required offset, epoch)
        self.acked: dict[int, int] = {}  # value -> offset, acks=all acknowledged
        self.committed: list[tuple[int, int]] = []  # the log below the highest HW seen
        self.last_high_watermark = (-1, 0)  # (leader epoch, HW) last seen
        self.counts: dict[str, int] = {}

    # -- controller ---------------------------------------------------------------------

    def _leader_state(self) -> LeaderState:
        replica = self.replicas[self.leader]
        return LeaderState(
            leader_id=self.leader, replicas=BROKERS, isr=self.isr,
            leader_epoch=self.leader_epoch, partition_epoch=self.partition_epoch,
            log_end_offset=len(replica.log),
            high_watermark=min(replica.high_watermark, len(replica.log)), now_ms=self.now_ms)

    def _change(self, leader: int, isr: tuple[int, ...]) -> None:
        isr = tuple(b for b in BROKERS if b in isr)
        if leader == self.leader and isr == self.isr:
            return
        self.partition_epoch += 1
        self.isr = isr
        if leader != self.leader:
            self.leader = leader
            self.leader_epoch += 1
            if self.leaders_by_epoch.setdefault(self.leader_epoch, leader) != leader:
                raise InvariantViolation(f"one_leader_per_epoch: epoch {self.leader_epoch}")
            for replica in self.replicas.values():
                replica.inflight = None  # fetchers restart against the new leader
            for value, (_, epoch) in list(self.pending_acks.items()):
                del self.pending_acks[value]  # ambiguous: the old leader cannot answer
            self.state = self._leader_state() if leader != NO_LEADER else None
        elif self.state is not None:
            self.state.on_isr_committed(self.isr, self.partition_epoch)

    def _elect(self, isr: tuple[int, ...]) -> int:
        for b in BROKERS:
            if b in isr and b not in self.fenced:
                return b
        return NO_LEADER

    def fence(self, broker_id: int) -> None:
        self.fenced.add(broker_id)
        isr = tuple(b for b in self.isr if b != broker_id) or self.isr  # keep the last one
        leader = self.leader
        if leader == broker_id or leader not in isr:
            leader = self._elect(isr)
        self._change(leader, isr)

    def unfence(self, broker_id: int) -> None:
        self.fenced.discard(broker_id)
        if self.leader == NO_LEADER and broker_id in self.isr:
            self._change(broker_id, self.isr)

    def deliver_alter(self, request: AlterRequest) -> None:
        accepted = (
            request.leader_id == self.leader
            and request.leader_incarnation == self.incarnations[request.leader_id]
            and request.leader_epoch == self.leader_epoch
            and request.partition_epoch == self.partition_epoch
            and all(b in self.isr or b not in self.fenced for b in request.isr)
        )
        state = self.state
        if accepted:
            self.count("isr_changed")
            self._change(self.leader, request.isr)
        elif (state is not None and state.leader_epoch == request.leader_epoch
              and state.pending_isr == request.isr):
            self.count("isr_change_refused")
            state.on_isr_change_failed()

    # -- actions ------------------------------------------------------------------------

    def count(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1

    def leader_replica(self) -> Replica | None:
        if self.leader == NO_LEADER or not self.replicas[self.leader].alive:
            return None
        return self.replicas[self.leader]

    def produce(self) -> None:
        replica, state = self.leader_replica(), self.state
        if replica is None or state is None:
            return
        acks_all = self.random.random() < 0.8
        if acks_all and not state.can_append_acks_all(MIN_INSYNC_REPLICAS):
            self.count("not_enough_replicas")
            return
        value = self.next_value
        self.next_value += 1
        replica.log.append((self.leader_epoch, value))
        state.on_leader_append(len(replica.log))
        if acks_all:
            self.pending_acks[value] = (len(replica.log), self.leader_epoch)
        self.count("produce")

    def truncate_for_leader(self, follower: Replica, leader: Replica) -> None:
        for _ in range(TRUNCATION_ROUNDS_MAX):
            entries = epoch_entries(follower.log)
            answer = end_offset_for_epoch(epoch_entries(leader.log), len(leader.log),
                                          latest_epoch(entries))
            truncation = truncation_offset(entries, len(follower.log), answer)
            if truncation.offset < len(follower.log):
                self.count("truncated")
            del follower.log[truncation.offset:]
            follower.high_watermark = min(follower.high_watermark, len(follower.log))
            if truncation.complete:
                follower.following_epoch = self.leader_epoch
                return
        raise InvariantViolation("truncation_terminates")

    def fetch(self, follower: Replica) -> None:
        leader, state = self.leader_replica(), self.state
        if (leader is None or state is None or follower is leader or not follower.alive
                or follower.inflight is not None):
            return
        if follower.following_epoch != self.leader_epoch:
            self.truncate_for_leader(follower, leader)
        fetch_offset = len(follower.log)
        if fetch_offset > len(leader.log):
            raise InvariantViolation(
                f"follower_within_leader_log: {follower.broker_id} at {fetch_offset}, "
                f"leader {leader.broker_id} ends at {len(leader.log)}")
        state.on_follower_fetch(follower.broker_id, fetch_offset, self.now_ms, len(leader.log))
        records = leader.log[fetch_offset:fetch_offset + FETCH_RECORDS_MAX]
        follower.inflight = (fetch_offset, list(records), state.high_watermark)
        self.count("fetch")

    def apply_fetched(self, follower: Replica) -> None:
        if follower.inflight is None or not follower.alive:
            return
        offset, records, leader_high_watermark = follower.inflight
        follower.inflight = None
        assert offset == len(follower.log), (offset, len(follower.log))
        follower.log.extend(records)
        follower.high_watermark = follower_high_watermark(
            follower.high_watermark, leader_high_watermark, len(follower.log))

    def crash(self, replica: Replica) -> None:
        replica.alive = False
        replica.inflight = None  # received, never appended: lost
        replica.following_epoch = -1
        if replica.broker_id == self.leader:
            self.pending_acks.clear()  # ambiguous: the producers time out
        self.count("crash")
        if self.random.random() < 0.5:
            self.fence(replica.broker_id)

    def restart(self, replica: Replica) -> None:
        replica.alive = True
        self.incarnations[replica.broker_id] += 1
        if replica.broker_id == self.leader:
            self.state = self._leader_state()  # leadership state is not durable
        self.count("restart")
        self.unfence(replica.broker_id)

    def fence_the_dead(self) -> None:
        for replica in self.replicas.values():
            if not replica.alive and replica.broker_id not in self.fenced:
                self.fence(replica.broker_id)

    def move_leadership(self) -> None:
        candidates = [b for b in self.isr if b != self.leader and b not in self.fenced
                      and self.replicas[b].alive]
        if self.leader == NO_LEADER or not candidates:
            return
        self.count("leader_moved")
        self._change(self.random.choice(candidates), self.isr)

    def check_isr(self) -> None:
        state = self.state
        if state is None or self.leader_replica() is None:
            return
        proposed = state.proposed_isr(self.now_ms, REPLICA_LAG_TIME_MAX_MS)
        if proposed is None:
            return
        state.begin_isr_change(proposed)
        self.alter_requests.append(AlterRequest(
            state.leader_id, self.incarnations[state.leader_id], state.leader_epoch, state.partition_epoch, proposed))

    def complete_acks(self) -> None:
        state = self.state
        if state is None or self.leader_replica() is None:
            return  # a dead leader answers nobody
        for value, (required_offset, epoch) in list(self.pending_acks.items()):
            assert epoch == state.leader_epoch
            outcome = state.acks_all_outcome(required_offset, MIN_INSYNC_REPLICAS)
            if outcome is None:
                continue
            del self.pending_acks[value]
            if outcome == NONE:
                self.acked[value] = required_offset - 1
                self.count("acked")

    def step(self) -> None:
        # Mostly short steps; now and then a stall longer than the lag limit.
        stall = self.random.random() < 0.003
        self.now_ms += 2 * REPLICA_LAG_TIME_MAX_MS if stall else self.random.randrange(0, 20)
        roll = self.random.random()
        replica = self.replicas[self.random.choice(BROKERS)]
        if roll < 0.22:
            self.produce()
        elif roll < 0.50:
            self.fetch(replica)
        elif roll < 0.75:
            self.apply_fetched(replica)
        elif roll < 0.755:
            if replica.alive:
                self.crash(replica)
        elif roll < 0.80:
            if not replica.alive:
                self.restart(replica)
        elif roll < 0.82:
            self.fence_the_dead()
        elif roll < 0.835:
            self.move_leadership()
        elif roll < 0.90:
            self.check_isr()
        elif self.alter_requests:
            self.deliver_alter(self.alter_requests.pop(0))
        self.complete_acks()
        self.observe()

    # -- invariants ---------------------------------------------------------------------

    def observe(self) -> None:
        state, leader = self.state, self.leader_replica()
        if state is not None and leader is not None:
            epoch, previous = self.last_high_watermark
            if epoch == state.leader_epoch and state.high_watermark < previous:
                raise InvariantViolation(
                    f"high_watermark_never_decreases: {previous} -> {state.high_watermark}")
            self.last_high_watermark = (state.leader_epoch, state.high_watermark)
            if state.high_watermark > len(leader.log):
                raise InvariantViolation("high_watermark_within_leader_log")
            if leader.log[:len(self.committed)] != self.committed:
                raise InvariantViolation(
                    f"committed_never_lost: leader {leader.broker_id} epoch {state.leader_epoch}")
            if state.high_watermark > len(self.committed):
                self.committed = list(leader.log[:state.high_watermark])
            leader.high_watermark = max(leader.high_watermark, state.high_watermark)
        for replica in self.replicas.values():
            below = replica.high_watermark
            if replica.log[:below] != self.committed[:below] or below > len(self.committed):
                raise InvariantViolation(
                    f"replicas_identical_below_high_watermark: broker {replica.broker_id}")
        for broker_id in self.isr:
            if self.replicas[broker_id].log[:len(self.committed)] != self.committed:
                raise InvariantViolation(f"isr_holds_committed_log: broker {broker_id}")
        for value, offset in self.acked.items():
            if offset >= len(self.committed) or self.committed[offset][1] != value:
                raise InvariantViolation(f"acked_records_never_lost: value {value} at {offset}")

    def heal_and_drain(self) -> None:
        """Everyone comes back and fetches until every replica matches the leader."""
        for replica in self.replicas.values():
            if not replica.alive:
                self.restart(replica)
        for _ in range(200):
            self.now_ms += 100
            for replica in self.replicas.values():
                self.fetch(replica)
                self.apply_fetched(replica)
            self.check_isr()
            while self.alter_requests:
                self.deliver_alter(self.alter_requests.pop(0))
            self.complete_acks()
            self.observe()
        leader = self.leader_replica()
        assert leader is not None and self.state is not None
        for replica in self.replicas.values():
            if replica.log != leader.log:
                raise InvariantViolation(f"replicas_converge: broker {replica.broker_id}")
        if set(self.isr) != set(BROKERS) or self.state.high_watermark != len(leader.log):
            raise InvariantViolation("healed_cluster_rejoins_the_isr")


SEEDS = range(40)
STEPS = 1500


@pytest.mark.parametrize("seed", SEEDS)
def test_simulation_keeps_its_invariants(seed: int) -> None:
    simulation = Simulation(seed)
    try:
        for _ in range(STEPS):
            simulation.step()
        simulation.heal_and_drain()
    except InvariantViolation as violation:
        pytest.fail(f"seed {seed}: {violation} (counts {simulation.counts})")
    # The run must have exercised what it claims to check.
    counts = simulation.counts
    assert counts.get("acked", 0) > 0 and counts.get("crash", 0) > 0, counts


def test_simulation_exercises_every_kind_of_event() -> None:
    totals: dict[str, int] = {}
    for seed in SEEDS:
        simulation = Simulation(seed)
        for _ in range(STEPS):
            simulation.step()
        for name, count in simulation.counts.items():
            totals[name] = totals.get(name, 0) + count
    for name in ("produce", "fetch", "acked", "crash", "restart", "leader_moved",
                 "isr_changed", "isr_change_refused", "truncated", "not_enough_replicas"):
        assert totals.get(name, 0) > 0, (name, totals)


def test_simulation_checker_catches_truncation_to_the_high_watermark() -> None:
    """Negative control: a follower that truncates to its own high watermark (the pre-
    KIP-101 rule) instead of the leader's epoch end must be caught by some seed."""

    class HighWatermarkTruncation(Simulation):
        def truncate_for_leader(self, follower: Replica, leader: Replica) -> None:
            del follower.log[follower.high_watermark:]
            follower.following_epoch = self.leader_epoch

    class LeaderEpochIgnored(Simulation):
        def truncate_for_leader(self, follower: Replica, leader: Replica) -> None:
            follower.following_epoch = self.leader_epoch  # no truncation at all

    for broken in (HighWatermarkTruncation, LeaderEpochIgnored):
        caught = False
        for seed in SEEDS:
            simulation = broken(seed)
            try:
                for _ in range(STEPS):
                    simulation.step()
                simulation.heal_and_drain()
            except (InvariantViolation, AssertionError):
                caught = True
                break
        assert caught, broken.__name__
