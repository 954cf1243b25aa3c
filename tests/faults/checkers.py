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
    consumer_order       within one assignment a consumer reads offsets in order, no skip
    committed_offsets    a group's committed offsets never go backwards
    replicas_agree       every replica (of the assignment in the "start" event, else every node
                         holding the partition) holds exactly the drained records below the
                         high watermark
    high_watermarks      a leader's high watermark never goes down within one leader epoch of
                         one process lifetime; a leader that starts lower than what was seen
                         before (a new epoch, or the same epoch after a restart: it starts from
                         its checkpoint, as in Kafka) is counted, not judged
    recovery             the healed cluster got back to full ISRs and the drain completed

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


def consumer_order(history: list[Event], dump: Dump | None = None) -> Verdict:
    expected: dict[tuple[str, int], dict[int, int]] = {}  # (process, assignment) -> partition -> next offset
    backwards: list[list[Any]] = []
    skips: list[list[Any]] = []
    checked = 0
    for event in history:
        if event.get("f") == "assign" and event["type"] == OK and event["value"].get("mode") == "assign":
            expected[(event["process"], event.get("assignment", 0))] = {
                int(p): int(o) for p, o in event["value"]["positions"]}
        elif event.get("f") == "poll" and event["type"] == OK:
            key = (event["process"], event.get("assignment", 0))
            nexts = expected.setdefault(key, {})
            for p, o, _ in event["value"]:
                checked += 1
                want = nexts.get(p)
                if want is not None and o < want:
                    backwards.append([event["process"], event.get("assignment", 0), p, want, o, event["index"]])
                elif want is not None and o > want:
                    skips.append([event["process"], event.get("assignment", 0), p, want, o, event["index"]])
                nexts[p] = o + 1
    bad = bool(backwards or skips)
    return Verdict("consumer_order", FAILED if bad else (PASS if checked else UNKNOWN), {
        "records_checked": checked, "backwards": len(backwards), "skips": len(skips),
        "examples": _examples(backwards + skips),
        "example_fields": ["process", "assignment", "partition", "expected offset", "read offset", "event index"],
    })


def committed_offsets(history: list[Event], dump: Dump | None = None) -> Verdict:
    latest: dict[tuple[str, int], tuple[int, int]] = {}  # (group, partition) -> (offset, event index)
    backwards: list[list[Any]] = []
    commits = 0
    for event in history:
        if event.get("f") != "commit" or event["type"] != OK:
            continue
        commits += 1
        group = event["value"]["group"]
        for p, o in event["value"]["offsets"]:
            before = latest.get((group, p))
            if before is not None and o < before[0]:
                backwards.append([group, p, before[0], o, before[1], event["index"]])
            if before is None or o >= before[0]:
                latest[(group, p)] = (o, event["index"])
    verdict = FAILED if backwards else (PASS if commits else UNKNOWN)
    return Verdict("committed_offsets", verdict, {
        "commits": commits, "backwards": len(backwards), "examples": _examples(backwards),
        "example_fields": ["group", "partition", "committed", "then committed", "first event", "second event"],
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
    replicas_agree, high_watermarks, recovery,
)


def check_all(history: list[Event], dump: Dump | None) -> list[Verdict]:
    return [checker(history, dump) for checker in CHECKERS]


# -- figures -------------------------------------------------------------------------------


def summarize(history: list[Event]) -> dict[str, Any]:
    """Counts: sent, acknowledged, failed, info (incl. no outcome), read, lost, duplicated."""
    all_sends = sends(history)
    outcomes = [s["outcome"]["type"] if s["outcome"] else None for s in all_sends.values()]
    read_values = {v for _, _, _, v in reads(history)}
    lost = lost_writes(history).details.get("lost", 0)
    dup = duplicates(history).details
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
    }


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
