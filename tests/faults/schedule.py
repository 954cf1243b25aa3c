"""The nemesis schedule: a seeded plan of faults, and how each planned fault becomes concrete.

Theory of operation
-------------------
``make_schedule(seed, duration_s, node_count, network)`` is pure: the same arguments give
the same list of ``PlannedFault`` (start time, kind, how long it is held, the role of its
target and a random ``pick`` used later to choose among candidates). Faults never overlap:
each is healed before the next starts, after a quiet gap, and the last is healed before
``duration_s``. So ``--seed`` replays the same schedule (the same kinds at the same times
against the same roles).

Which node is "the leader of some partition" or "the active controller" is only known
while the cluster runs, so ``resolve(plan, node_ids, leaders, controller_id)`` turns a plan
into a ``Fault`` at the moment it fires: the node ids it acts on and, for network faults,
the directed links to cut (``(a, b)``: node a drops what it sends to b). ``resolve`` is also
pure; the runner passes it what the cluster answered.

Roles: "leader" aims at a node leading some partition of the topic; "controller" at the
active controller, which is also the coordinator of every consumer group (so a kill or
pause with this role takes the group coordinator away: members fail heartbeats and
commits until they find the next one); "any" at any node. ``Fault.controller`` keeps the
controller the cluster named when the fault fired, so the report can count the faults
that hit the group coordinator whatever their role.

Kinds::

    kill      kill -9 the target, restart it when healed
    pause     SIGSTOP the target, SIGCONT when healed (a zombie when it led something)
    isolate   the target loses every peer, both ways (clients still reach it)
    split     a minority holding the target loses the majority, both ways
    bridge    two halves lose each other; the target still sees both
    one-way   the target drops what it sends to one peer (the peer's packets still arrive)
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

PROCESS_KINDS = ("kill", "pause")
NETWORK_KINDS = ("isolate", "split", "bridge", "one-way")
TARGET_ROLES = ("leader", "controller", "any")

WARM_UP_S = 4.0  # load runs this long before the first fault
HOLD_S_MIN = 2.0
HOLD_S_MAX = 8.0  # every fault is healed at most this long after it starts
GAP_S_MIN = 2.0
GAP_S_MAX = 5.0
COOL_DOWN_S = 2.0  # the last fault is healed this long before the load stops
NETWORK_SHARE = 0.5  # with namespaces, this share of the faults cut links
PICK_MAX = 1 << 30


@dataclass(frozen=True)
class PlannedFault:
    index: int
    start_s: float
    kind: str
    hold_s: float
    role: str
    pick: int

    def describe(self) -> str:
        return f"#{self.index} {self.kind} of {self.role} at {self.start_s:.1f}s for {self.hold_s:.1f}s"


@dataclass(frozen=True)
class Fault:
    """A planned fault made concrete: the nodes it acts on and the links it cuts."""

    plan: PlannedFault
    nodes: tuple[int, ...]
    links: tuple[tuple[int, int], ...] = field(default_factory=tuple)
    controller: int | None = None  # the active controller (group coordinator) when it fired

    def describe(self) -> str:
        what = {"kill": "kill -9", "pause": "SIGSTOP"}.get(self.plan.kind, self.plan.kind)
        text = f"{what} {','.join(map(str, self.nodes))}"
        if self.links:
            text += " cut " + " ".join(f"{a}->{b}" for a, b in self.links)
        if self.controller is not None and self.controller in self.nodes:
            text += " (the controller)"
        return text


def make_schedule(seed: int, duration_s: float, node_count: int, network: bool) -> list[PlannedFault]:
    """The faults of a run of ``duration_s`` seconds; pure and deterministic in its arguments."""
    assert node_count >= 3, "faults need at least three nodes"
    rng = random.Random(seed)
    kinds = PROCESS_KINDS + (NETWORK_KINDS if network else ())
    plans: list[PlannedFault] = []
    start_s = WARM_UP_S
    while True:
        if network and rng.random() < NETWORK_SHARE:
            kind = rng.choice(NETWORK_KINDS)
        else:
            kind = rng.choice(PROCESS_KINDS)
        assert kind in kinds
        hold_s = round(rng.uniform(HOLD_S_MIN, HOLD_S_MAX), 3)
        role = rng.choice(TARGET_ROLES)
        pick = rng.randrange(PICK_MAX)
        if start_s + hold_s > duration_s - COOL_DOWN_S:
            break
        plans.append(PlannedFault(len(plans), round(start_s, 3), kind, hold_s, role, pick))
        start_s += hold_s + rng.uniform(GAP_S_MIN, GAP_S_MAX)
    return plans


def choose_target(plan: PlannedFault, node_ids: list[int], leaders: dict[int, int],
                  controller_id: int | None) -> int:
    """The node a plan aims at: a partition leader, the active controller, or any node;
    falls back to ``pick`` among ``node_ids`` when the role is unknown right now."""
    ordered = sorted(node_ids)
    assert ordered, "no node to aim at"
    if plan.role == "controller" and controller_id in ordered:
        return int(controller_id)  # type: ignore[arg-type]
    if plan.role == "leader":
        led = sorted({leader for leader in leaders.values() if leader in ordered})
        if led:
            return led[plan.pick % len(led)]
    return ordered[plan.pick % len(ordered)]


def _both_ways(left: list[int], right: list[int]) -> tuple[tuple[int, int], ...]:
    links = [(a, b) for a in left for b in right] + [(b, a) for a in left for b in right]
    return tuple(sorted(links))


def resolve(plan: PlannedFault, node_ids: list[int], leaders: dict[int, int],
            controller_id: int | None) -> Fault:
    """The concrete fault for ``plan`` given the cluster's state now."""
    target = choose_target(plan, node_ids, leaders, controller_id)
    others = [n for n in sorted(node_ids) if n != target]
    shuffled = list(others)
    random.Random(plan.pick).shuffle(shuffled)
    if plan.kind in PROCESS_KINDS:
        return Fault(plan, (target,), controller=controller_id)
    if plan.kind == "isolate":
        return Fault(plan, (target,), _both_ways([target], others), controller_id)
    if plan.kind == "split":
        minority = sorted([target] + shuffled[: (len(node_ids) - 1) // 2 - 1])
        majority = [n for n in sorted(node_ids) if n not in minority]
        return Fault(plan, tuple(minority), _both_ways(minority, majority), controller_id)
    if plan.kind == "bridge":
        half = len(shuffled) // 2
        left, right = sorted(shuffled[:half]), sorted(shuffled[half:])
        return Fault(plan, (target,), _both_ways(left, right), controller_id)
    if plan.kind == "one-way":
        return Fault(plan, (target,), ((target, shuffled[0]),), controller_id)
    raise ValueError(f"unknown fault kind {plan.kind!r}")
