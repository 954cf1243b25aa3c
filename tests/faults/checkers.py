"""Verdicts over a fault run: pure functions of the history and the final replica dump.

Theory of operation
-------------------
Every checker takes the history's events (``tests.faults.history``) and, where it needs
one, the dump of every replica taken after the nodes stopped (``tests.faults.nodes.Dump``),
and returns a ``Verdict``: its name, "pass" / "fail" / "info" (reported, not judged) /
"unknown" (nothing to judge), and details — counts first, then a few examples. Nothing here
does I/O or reads a clock, so each checker is shown to fail on a hand-written bad history
(``tests/faults/test_checkers.py``).

The final drain (process "drain") reads every partition from offset 0 to the end offsets
recorded in its ``drain-end`` event; those ends are the high watermarks of the healed
cluster, so "below the high watermark" means below them.

Checkers::

    lost_writes          every acknowledged value is read by the drain, at its acked offset
    duplicates           values at more than one offset (expected: retries are not idempotent)
    offset_conflicts     no (partition, offset) holds two values in any read, the drain or a dump
    failed_visible       a definitely failed send never shows up anywhere
    consumer_order       a consumer reads offsets in order, no skip: a plain consumer within
                         one assignment; a group member within one ownership of a partition,
                         which starts at or below what the group has read (details below)
    committed_offsets    a group's committed offsets never go backwards (details below)
    group_ownership      no partition is owned by two members of a group at once (below)
    replicas_agree       every replica (of the assignment in the "start" event, else every node
                         holding the partition) holds exactly the drained records below the
                         high watermark
    high_watermarks      a leader's high watermark never goes down within one leader epoch of
                         one process lifetime; a leader that starts lower than what was seen
                         before (a new epoch, or the same epoch after a restart: it starts from
                         its checkpoint, as in Kafka) is counted, not judged
    recovery             the healed cluster got back to full ISRs and the drain completed

Consumer groups. A member's *ownership* of a partition runs from the ``assign`` op that
gives it the partition (with the position it starts at: the group's committed offset) to
the ``revoke`` op that takes it away (revoked by a rebalance, at close, or lost).

* Order (``consumer_order``): within one ownership the member reads the start position,
  then every next offset, no skip and no step back. Across ownerships a new owner may
  start below where the previous owner stopped (it resumes at the committed offset, so
  what was read but not committed is read again: duplicates after a revoke or a loss are
  allowed), but never above the group's *read frontier*: one past the highest offset any
  member of the group read before the ``assign`` op. Starting above it would skip records
  no member ever read. (Every committed offset comes from reads written to the history
  before the commit was sent, and the new owner fetched it after that commit, so the
  frontier it is compared with always includes those reads.)
* Committed offsets (``committed_offsets``): three kinds of observation of a (group,
  partition)'s committed offset — a commit acknowledged ("commit" ok: the value it wrote),
  a probe ("committed" ok: OffsetFetch by a non-member), and a member's start positions
  ("assign": the OffsetFetch done inside the poll that followed history event ``since``).
  An observation invoked after another one completed never shows a smaller offset, nor
  none at all (the run commits 0 for every partition before any member starts). Also no
  committed offset lies above the end offset the final drain found. A regression whose
  observation was invoked before, and completed after, the SIGCONT of a node paused while
  it was the controller is also counted as ``backwards_across_coordinator_resume``: the
  mark of a resumed former coordinator answering from its old image (it still fails).
* Ownership (``group_ownership``): when a member is assigned a partition that another
  member still owns in the history, the overlap is a failure if the older owner then gets
  a commit of that partition acknowledged that it sent after the new owner's ``assign``
  op: the coordinator still took it for the owner, so both owned it at once. Members
  commit before every revoke (not a loss), even with nothing new, to ask exactly that. The
  overlap is tolerated when the older owner's ownership ended in a loss (fenced, or out
  of the group after max_poll_interval_ms, which the coordinator sees as a departure) or
  its commit was refused with COMMIT_FAILED (fenced): the coordinator had removed it and
  the member only learnt it later. Anything else (its commit's outcome unknown) is
  counted as unresolved, not judged. The history's order is the runner process's own
  view of time: every member runs in it.

``summarize`` and ``heal_to_writable`` compute the run's figures (counts, and how long after
each heal the first acks=all write invoked after it was acknowledged).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from tests.faults.history import FAIL, INFO, INVOKE, OK, Event

PASS = "pass"
FAILED = "fail"
REPORTED = "info"
UNKNOWN = "unknown"
EXAMPLES_MAX = 10

Dump = dict[int, dict[int, dict[str, Any]]]


@dataclass
class Verdict:
    name: str
    verdict: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.verdict == FAILED

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "verdict": self.verdict, "details": self.details}


# -- views of the history ------------------------------------------------------------------


def sends(history: list[Event]) -> dict[int, dict[str, Any]]:
    """value -> {"invoke": event, "outcome": event | None} for every send."""
    out: dict[int, dict[str, Any]] = {}
    for event in history:
        if event.get("f") != "send":
            continue
        if event["type"] == INVOKE:
            out[event["value"]] = {"invoke": event, "outcome": None}
        elif event["value"] in out:
            out[event["value"]]["outcome"] = event
    return out


def acked(history: list[Event]) -> dict[int, tuple[int, int]]:
    """value -> (partition, offset) of every acknowledged send."""
    return {e["value"]: (e["partition"], e["offset"]) for e in history
            if e.get("f") == "send" and e["type"] == OK}


def definitely_failed(history: list[Event]) -> set[Any]:
    return {e["value"] for e in history if e.get("f") == "send" and e["type"] == FAIL}


def reads(history: list[Event], process: str | None = None) -> Iterable[tuple[Event, int, int, Any]]:
    """(poll event, partition, offset, value) of every record read (optionally by one process)."""
    for event in history:
        if event.get("f") == "poll" and event["type"] == OK and (process is None or event["process"] == process):
            for partition, offset, value in event["value"]:
                yield event, partition, offset, value


def drain_end(history: list[Event]) -> dict[str, Any] | None:
    for event in reversed(history):
        if event.get("f") == "drain-end":
            value: dict[str, Any] = event["value"]
            return value
    return None


def drained(history: list[Event]) -> dict[tuple[int, int], Any]:
    """(partition, offset) -> value as the final drain read it."""
    return {(p, o): v for _, p, o, v in reads(history, "drain")}


def _examples(items: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for item in items:
        if len(out) >= EXAMPLES_MAX:
            break
        out.append(item)
    return out


# -- checkers ------------------------------------------------------------------------------


def lost_writes(history: list[Event], dump: Dump | None = None) -> Verdict:
    end = drain_end(history)
    acks = acked(history)
    if end is None:
        return Verdict("lost_writes", FAILED, {"acknowledged": len(acks), "error": "no final drain in the history"})
    by_offset = drained(history)
    where: dict[Any, list[tuple[int, int]]] = {}
    for (p, o), v in by_offset.items():
        where.setdefault(v, []).append((p, o))
    lost = sorted(v for v in acks if v not in where)
    moved = sorted(v for v, place in acks.items() if v in where and by_offset.get(place) != v)
    details: dict[str, Any] = {"acknowledged": len(acks), "lost": len(lost), "misplaced": len(moved),
                               "lost_examples": [[v, *acks[v]] for v in _examples(lost)],
                               "misplaced_examples": [[v, *acks[v], where[v]] for v in _examples(moved)]}
    return Verdict("lost_writes", FAILED if lost or moved else PASS, details)


def duplicates(history: list[Event], dump: Dump | None = None) -> Verdict:
    where: dict[Any, list[tuple[int, int]]] = {}
    for (p, o), v in drained(history).items():
        where.setdefault(v, []).append((p, o))
    extra = {v: places for v, places in where.items() if len(places) > 1}
    copies = sum(len(places) - 1 for places in extra.values())
    acks = acked(history)
    acked_duplicated = sum(1 for v in extra if v in acks)
    return Verdict("duplicates", REPORTED if extra else PASS, {
        "values_duplicated": len(extra), "extra_copies": copies, "acked_values_duplicated": acked_duplicated,
        "examples": [[v, sorted(places)] for v, places in _examples(sorted(extra.items(), key=lambda kv: str(kv[0])))],
    })


def _dump_records(dump: Dump | None, below: dict[int, int] | None) -> Iterable[tuple[int, int, int, Any]]:
    """(node, partition, offset, value) of the dumped records (below ``below[p]`` if given)."""
    for node_id, partitions in sorted((dump or {}).items()):
        for index, state in sorted(partitions.items()):
            limit = None if below is None else below.get(index, 0)
            for offset, value in state["records"]:
                if limit is None or offset < limit:
                    yield node_id, index, offset, value


def _ends(history: list[Event]) -> dict[int, int] | None:
    end = drain_end(history)
    return None if end is None else {int(p): int(o) for p, o in end["ends"]}


def offset_conflicts(history: list[Event], dump: Dump | None = None) -> Verdict:
    seen: dict[tuple[int, int], dict[Any, list[str]]] = {}
    for event, p, o, v in reads(history):
        seen.setdefault((p, o), {}).setdefault(v, []).append(f"{event['process']}@{event['index']}")
    ends = _ends(history) or {}
    for node_id, p, o, v in _dump_records(dump, ends):
        seen.setdefault((p, o), {}).setdefault(v, []).append(f"node{node_id}")
    conflicts = {place: values for place, values in seen.items() if len(values) > 1}
    return Verdict("offset_conflicts", FAILED if conflicts else PASS, {
        "offsets_checked": len(seen), "conflicts": len(conflicts),
        "examples": [[p, o, {str(v): who[:3] for v, who in values.items()}]
                     for (p, o), values in _examples(sorted(conflicts.items()))],
    })


def failed_visible(history: list[Event], dump: Dump | None = None) -> Verdict:
    failed = definitely_failed(history)
    visible: dict[Any, list[str]] = {}
    for event, p, o, v in reads(history):
        if v in failed:
            visible.setdefault(v, []).append(f"{event['process']} read it at {p}/{o}")
    for node_id, p, o, v in _dump_records(dump, None):
        if v in failed:
            visible.setdefault(v, []).append(f"node {node_id} holds it at {p}/{o}")
    return Verdict("failed_visible", FAILED if visible else PASS, {
        "definitely_failed": len(failed), "visible": len(visible),
        "examples": [[v, where[:3]] for v, where in _examples(sorted(visible.items(), key=lambda kv: str(kv[0])))],
    })


def _is_group_op(event: Event) -> bool:
    value = event.get("value")
    return isinstance(value, dict) and value.get("mode") == "group"


def group_processes(history: list[Event]) -> dict[str, str]:
    """process -> group id of every group member (from its ``join`` / ``assign`` ops)."""
    out: dict[str, str] = {}
    for event in history:
        if event.get("f") in ("join", "assign") and isinstance(event.get("value"), dict) \
                and "group" in event["value"] and (event["f"] == "join" or _is_group_op(event)):
            out[event["process"]] = event["value"]["group"]
    return out


def consumer_order(history: list[Event], dump: Dump | None = None) -> Verdict:
    members = group_processes(history)
    expected: dict[tuple[str, int], dict[int, int]] = {}  # plain: (process, assignment) -> partition -> next
    owned_next: dict[tuple[str, int], int] = {}  # group: (process, partition) -> next offset
    frontier: dict[tuple[str, int], int] = {}  # (group, partition) -> 1 + highest offset its members read
    backwards: list[list[Any]] = []
    skips: list[list[Any]] = []
    start_skips: list[list[Any]] = []
    unowned: list[list[Any]] = []
    checked = 0
    for event in history:
        if event["type"] != OK:
            continue
        f, process, assignment = event.get("f"), event["process"], event.get("assignment", 0)
        if f == "assign" and _is_group_op(event):
            group = event["value"]["group"]
            for p, position in event["value"]["partitions"]:
                start = 0 if position is None else position
                front = frontier.get((group, p), 0)
                if start > front:
                    start_skips.append([process, assignment, p, front, start, event["index"]])
                owned_next[(process, p)] = start
        elif f == "assign" and isinstance(event.get("value"), dict) and event["value"].get("mode") == "assign":
            expected[(process, assignment)] = {int(p): int(o) for p, o in event["value"]["positions"]}
        elif f == "revoke" and _is_group_op(event):
            for p in event["value"]["partitions"]:
                owned_next.pop((process, p), None)
        elif f == "poll" and process in members:
            group = members[process]
            for p, o, _ in event["value"]:
                checked += 1
                want = owned_next.get((process, p))
                if want is None:
                    unowned.append([process, assignment, p, None, o, event["index"]])
                else:
                    if o < want:
                        backwards.append([process, assignment, p, want, o, event["index"]])
                    elif o > want:
                        skips.append([process, assignment, p, want, o, event["index"]])
                    owned_next[(process, p)] = o + 1
                frontier[(group, p)] = max(frontier.get((group, p), 0), o + 1)
        elif f == "poll":
            nexts = expected.setdefault((process, assignment), {})
            for p, o, _ in event["value"]:
                checked += 1
                want = nexts.get(p)
                if want is not None and o < want:
                    backwards.append([process, assignment, p, want, o, event["index"]])
                elif want is not None and o > want:
                    skips.append([process, assignment, p, want, o, event["index"]])
                nexts[p] = o + 1
    bad = bool(backwards or skips or start_skips or unowned)
    return Verdict("consumer_order", FAILED if bad else (PASS if checked else UNKNOWN), {
        "records_checked": checked, "backwards": len(backwards), "skips": len(skips),
        "group_starts_above_read_frontier": len(start_skips), "reads_of_unowned_partitions": len(unowned),
        "examples": _examples(backwards + skips + start_skips + unowned),
        "example_fields": ["process", "assignment", "partition", "expected offset (or read frontier)",
                           "read offset (or start position)", "event index"],
    })


def _offset_observations(event: Event) -> tuple[str, list[tuple[int, int | None]]] | None:
    """(group, [(partition, committed offset or None)]) when ``event`` completes an
    observation of committed offsets, else None."""
    f, value = event.get("f"), event.get("value")
    if event["type"] != OK or not isinstance(value, dict):
        return None
    if f in ("commit", "committed"):
        return value["group"], [(int(p), o) for p, o in value["offsets"]]
    if f == "assign" and _is_group_op(event):
        return value["group"], [(int(p), o) for p, o in value["partitions"]]
    return None


def coordinator_resumes(history: list[Event]) -> list[int]:
    """Indices of the heal events that resumed (SIGCONT) a node paused while it was the
    active controller, i.e. the group coordinator."""
    return [e["index"] for e in history
            if e.get("f") == "heal" and isinstance(e.get("value"), dict) and e["value"].get("kind") == "pause"
            and e["value"].get("controller") in e["value"].get("nodes", ())]


def committed_offsets(history: list[Event], dump: Dump | None = None) -> Verdict:
    resumes = coordinator_resumes(history)
    floor: dict[tuple[str, int], tuple[int, int]] = {}  # (group, partition) -> (offset, event) completed so far
    # (process, f) -> (invoke event, the floor then)
    at_invoke: dict[tuple[str, str], tuple[int, dict[tuple[str, int], tuple[int, int]]]] = {}
    across_resume = 0  # regressions whose observation spans the resume of a paused coordinator
    since_points = {e["value"]["since"] for e in history
                    if e.get("f") == "assign" and e["type"] == OK and _is_group_op(e) and "since" in e["value"]}
    at_since: dict[int, dict[tuple[str, int], tuple[int, int]]] = {-1: {}}
    highest: dict[tuple[str, int], tuple[int, int]] = {}
    backwards: list[list[Any]] = []
    counts = {"commit": 0, "committed": 0, "assign": 0}
    for event in history:
        f: str = event.get("f", "")
        if event["type"] == INVOKE and f in ("commit", "committed"):
            at_invoke[(event["process"], f)] = (event["index"], dict(floor))
        observed = _offset_observations(event)
        if observed is not None:
            group, offsets = observed
            counts[f] += 1
            if f == "assign":
                invoked = event["value"].get("since", -1)
                before = at_since.get(invoked, {})
            else:
                invoked, before = at_invoke.pop((event["process"], f), (-1, {}))
            for p, offset in offsets:
                seen = before.get((group, p))
                value = -1 if offset is None else offset
                if seen is not None and value < seen[0]:
                    backwards.append([group, p, seen[0], offset, f, seen[1], event["index"]])
                    if any(invoked < resumed < event["index"] for resumed in resumes):
                        across_resume += 1
                if offset is not None:
                    if (group, p) not in floor or offset > floor[(group, p)][0]:
                        floor[(group, p)] = (offset, event["index"])
                    if (group, p) not in highest or offset > highest[(group, p)][0]:
                        highest[(group, p)] = (offset, event["index"])
        if event["index"] in since_points:
            at_since[event["index"]] = dict(floor)
    ends = _ends(history)
    above_end = [[group, p, offset, ends[p], index] for (group, p), (offset, index) in sorted(highest.items())
                 if ends is not None and p in ends and offset > ends[p]]
    observed_any = counts["commit"] or counts["committed"]
    verdict = FAILED if backwards or above_end else (PASS if observed_any else UNKNOWN)
    return Verdict("committed_offsets", verdict, {
        "commits": counts["commit"], "probes": counts["committed"], "member_starts": counts["assign"],
        "backwards": len(backwards), "backwards_across_coordinator_resume": across_resume,
        "above_log_end": len(above_end),
        "examples": _examples(backwards + above_end),
        "example_fields": ["group", "partition", "committed before (or observed)", "then observed (or log end)",
                           "observed by", "first event", "second event"],
    })


def group_ownership(history: list[Event], dump: Dump | None = None) -> Verdict:
    holders: dict[tuple[str, int], dict[str, int]] = {}  # (group, partition) -> member process -> assign event
    open_overlaps: dict[tuple[str, str, int], list[dict[str, Any]]] = {}  # (old owner, group, partition) -> ...
    overlaps: list[dict[str, Any]] = []
    commit_invoked: dict[str, int] = {}
    assigns = 0
    for event in history:
        f, process = event.get("f"), event["process"]
        value: Any = event.get("value")
        if f == "assign" and event["type"] == OK and _is_group_op(event):
            assigns += 1
            group = value["group"]
            for p, _ in value["partitions"]:
                owners = holders.setdefault((group, p), {})
                for other in sorted(owners):
                    if other != process:
                        overlap = {"group": group, "partition": p, "owner": other, "new_owner": process,
                                   "at": event["index"], "ended": None, "zombie_commit": None}
                        overlaps.append(overlap)
                        open_overlaps.setdefault((other, group, p), []).append(overlap)
                owners[process] = event["index"]
        elif f == "revoke" and event["type"] == OK and _is_group_op(event):
            group = value["group"]
            for p in value["partitions"]:
                holders.get((group, p), {}).pop(process, None)
                for overlap in open_overlaps.pop((process, group, p), []):
                    overlap["ended"] = overlap["ended"] or value.get("reason")
        elif f == "commit" and event["type"] == INVOKE:
            commit_invoked[process] = event["index"]
        elif f == "commit" and isinstance(value, dict) and "group" in value:
            for p, _ in value["offsets"]:
                for overlap in open_overlaps.get((process, value["group"], p), []):
                    if event["type"] == OK and commit_invoked.get(process, -1) > overlap["at"]:
                        overlap["zombie_commit"] = overlap["zombie_commit"] or event["index"]
                    elif event["type"] == FAIL and event.get("error") == "COMMIT_FAILED":
                        overlap["ended"] = overlap["ended"] or "fenced"
    failed = [o for o in overlaps if o["zombie_commit"] is not None]
    tolerated = [o for o in overlaps if o["zombie_commit"] is None and o["ended"] in ("lost", "fenced")]
    unresolved = [o for o in overlaps if o["zombie_commit"] is None and o["ended"] not in ("lost", "fenced")]
    return Verdict("group_ownership", FAILED if failed else (PASS if assigns else UNKNOWN), {
        "assigns": assigns, "overlaps": len(overlaps), "two_owners": len(failed),
        "tolerated_fenced_owner": len(tolerated), "unresolved": len(unresolved),
        "examples": _examples([[o["group"], o["partition"], o["owner"], o["new_owner"], o["at"], o["zombie_commit"],
                                o["ended"]] for o in failed + unresolved]),
        "example_fields": ["group", "partition", "owner", "new owner", "new owner's assign event",
                           "owner's commit acknowledged after it", "how the owner's ownership ended"],
    })


def replica_assignment(history: list[Event]) -> dict[int, list[int]]:
    """partition -> replica node ids, as the run recorded them when the topic was created."""
    for event in history:
        if event.get("f") == "start" and isinstance(event.get("value"), dict) and "replicas" in event["value"]:
            return {int(p): list(nodes) for p, nodes in event["value"]["replicas"]}
    return {}


def replicas_agree(history: list[Event], dump: Dump | None = None) -> Verdict:
    ends = _ends(history)
    if dump is None or ends is None:
        return Verdict("replicas_agree", UNKNOWN, {"error": "no dump" if dump is None else "no final drain"})
    reference = drained(history)
    assigned = replica_assignment(history)
    differing: list[list[Any]] = []
    for node_id, partitions in sorted(dump.items()):
        for p, end in sorted(ends.items()):
            if (node_id not in assigned[p]) if p in assigned else (p not in partitions):
                continue  # not a replica of this partition
            held = {o: v for o, v in partitions.get(p, {"records": []})["records"] if o < end}
            missing = [o for o in range(end) if o not in held]
            wrong = [o for o, v in held.items() if reference.get((p, o), v) != v]
            if missing or wrong:
                differing.append([node_id, p, len(missing), len(wrong), (missing + wrong)[:5]])
    return Verdict("replicas_agree", FAILED if differing else PASS, {
        "replicas": len(dump), "partitions": len(ends), "differing": len(differing), "examples": _examples(differing),
        "example_fields": ["node", "partition", "missing offsets", "values unlike the drain", "first offsets"],
    })


def high_watermarks(history: list[Event], dump: Dump | None = None) -> Verdict:
    lifetime_best: dict[tuple[int, int, int, int], tuple[int, int]] = {}  # (p, epoch, node, incarnation) -> (HW, event)
    epoch_best: dict[tuple[int, int], int] = {}  # (partition, epoch) -> highest HW seen
    partition_best: dict[int, int] = {}  # partition -> highest HW seen in any epoch
    newest_epoch: dict[int, int] = {}
    within: list[list[Any]] = []
    restarted_lower: set[tuple[int, int, int, int]] = set()
    new_epoch_lower = 0
    stale_epoch_answers = 0
    probes = 0
    for event in history:
        if event.get("f") != "hw" or event["type"] != OK:
            continue
        probes += 1
        p, v = event["partition"], event["value"]
        epoch, hw = v["leader_epoch"], v["high_watermark"]
        lifetime = (p, epoch, v["node"], v["incarnation"])
        if epoch < newest_epoch.get(p, epoch):
            stale_epoch_answers += 1
        elif epoch > newest_epoch.get(p, -1):
            if p in newest_epoch and hw < partition_best.get(p, -1):
                new_epoch_lower += 1  # a new leader starting below what the old one exposed
            newest_epoch[p] = epoch
        before = lifetime_best.get(lifetime)
        if before is not None and hw < before[0]:
            within.append([p, epoch, v["node"], v["incarnation"], before[0], hw, before[1], event["index"]])
        elif before is None and hw < epoch_best.get((p, epoch), -1):
            restarted_lower.add(lifetime)  # same epoch, another process lifetime
        if before is None or hw > before[0]:
            lifetime_best[lifetime] = (hw, event["index"])
        epoch_best[(p, epoch)] = max(hw, epoch_best.get((p, epoch), -1))
        partition_best[p] = max(hw, partition_best.get(p, -1))
    return Verdict("high_watermarks", FAILED if within else (PASS if probes else UNKNOWN), {
        "probes": probes, "decreases_within_epoch": len(within),
        "lower_after_restart_same_epoch": len(restarted_lower),
        "lower_at_new_epoch": new_epoch_lower, "stale_epoch_answers": stale_epoch_answers,
        "examples": _examples(within),
        "example_fields": ["partition", "epoch", "node", "incarnation", "high watermark", "then",
                           "first event", "second event"],
    })


def recovery(history: list[Event], dump: Dump | None = None) -> Verdict:
    healed = [e for e in history if e.get("f") == "recovered"]
    end = drain_end(history)
    problems = []
    if not healed or healed[-1]["type"] != OK:
        problems.append("the healed cluster did not reach full ISRs" if healed else "no recovery step")
    if end is None or not end.get("complete"):
        problems.append("the drain did not read every partition to its end")
    return Verdict("recovery", FAILED if problems else PASS, {
        "problems": problems, "seconds_to_full_isr": healed[-1]["value"].get("seconds") if healed else None})


CHECKERS: tuple[Callable[[list[Event], Dump | None], Verdict], ...] = (
    lost_writes, duplicates, offset_conflicts, failed_visible, consumer_order, committed_offsets,
    group_ownership, replicas_agree, high_watermarks, recovery,
)


def check_all(history: list[Event], dump: Dump | None) -> list[Verdict]:
    return [checker(history, dump) for checker in CHECKERS]


# -- figures -------------------------------------------------------------------------------


def summarize(history: list[Event]) -> dict[str, Any]:
    """Counts: sent, acknowledged, failed, info (incl. no outcome), read, lost, duplicated;
    faults (and kills / pauses of the group coordinator); the group's commits by outcome,
    probes, committed-offset regressions, revokes and partitions lost."""
    all_sends = sends(history)
    outcomes = [s["outcome"]["type"] if s["outcome"] else None for s in all_sends.values()]
    read_values = {v for _, _, _, v in reads(history)}
    lost = lost_writes(history).details.get("lost", 0)
    dup = duplicates(history).details
    committed = committed_offsets(history).details
    commit_outcomes: dict[str, int] = {}
    for event in history:
        if event.get("f") == "commit" and event["type"] != INVOKE and event["process"] != "setup":
            commit_outcomes[event["type"]] = commit_outcomes.get(event["type"], 0) + 1
    return {
        "sent": len(all_sends),
        "acknowledged": outcomes.count(OK),
        "failed": outcomes.count(FAIL),
        "info": outcomes.count(INFO) + outcomes.count(None),
        "read": len(read_values),
        "records_read": sum(1 for _ in reads(history)),
        "lost": lost,
        "duplicated": dup.get("values_duplicated", 0),
        "operations": sum(1 for e in history if e["type"] != INVOKE),
        "faults": sum(1 for e in history if e.get("f") == "fault"),
        "coordinator_faults": sum(1 for e in history if e.get("f") == "fault" and _hits_coordinator(e["value"])),
        "commits": commit_outcomes.get(OK, 0),
        "commits_failed": commit_outcomes.get(FAIL, 0),
        "commits_unknown": commit_outcomes.get(INFO, 0),
        "committed_probes": sum(1 for e in history if e.get("f") == "committed" and e["type"] == OK),
        "committed_regressions": committed.get("backwards", 0) + committed.get("above_log_end", 0),
        "revokes": sum(1 for e in history if e.get("f") == "revoke" and e["type"] == OK),
        "partitions_lost": sum(len(e["value"]["partitions"]) for e in history
                               if e.get("f") == "revoke" and e["type"] == OK and e["value"].get("reason") == "lost"),
    }


def _hits_coordinator(fault: dict[str, Any]) -> bool:
    """A kill or pause of the node that was the active controller (the group coordinator)."""
    return fault.get("kind") in ("kill", "pause") and fault.get("controller") in fault.get("nodes", ())


def heal_to_writable(history: list[Event]) -> list[dict[str, Any]]:
    """Per heal: seconds until the first acknowledgement of a send invoked after the heal
    (``writable_after_s``), and until every partition had one (``all_partitions_after_s``);
    None when that did not happen before the load stopped."""
    invoked_at: dict[Any, float] = {}
    acks: list[tuple[float, float, int]] = []  # (invoke time, ack time, partition)
    partitions: set[int] = set()
    for event in history:
        if event.get("f") != "send":
            continue
        if event["type"] == INVOKE:
            invoked_at[event["value"]] = event["time"]
            partitions.add(event["partition"])
        elif event["type"] == OK and event["value"] in invoked_at:
            acks.append((invoked_at[event["value"]], event["time"], event["partition"]))
    out = []
    for event in history:
        if event.get("f") != "heal":
            continue
        heal_s = event["time"]
        first: dict[int, float] = {}
        for invoked_s, acked_s, partition in acks:
            if invoked_s >= heal_s and acked_s < first.get(partition, float("inf")):
                first[partition] = acked_s
        every = max(first.values()) if first and set(first) == partitions else None
        out.append({"fault": event["value"].get("fault"), "heal_s": heal_s,
                    "writable_after_s": round(min(first.values()) - heal_s, 3) if first else None,
                    "all_partitions_after_s": round(every - heal_s, 3) if every is not None else None})
    return out


def heal_figures(heals: list[dict[str, Any]]) -> dict[str, Any]:
    def figures(key: str) -> tuple[float | None, float | None, int]:
        waits = [h[key] for h in heals if h[key] is not None]
        if not waits:
            return None, None, len(heals)
        return round(statistics.median(waits), 3), round(max(waits), 3), len(heals) - len(waits)

    p50, top, never = figures("writable_after_s")
    all_p50, all_top, all_never = figures("all_partitions_after_s")
    return {"heals": len(heals), "p50_s": p50, "max_s": top, "never_writable": never,
            "all_partitions_p50_s": all_p50, "all_partitions_max_s": all_top,
            "all_partitions_never": all_never}
