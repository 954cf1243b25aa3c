"""One fault run, start to verdict.

Theory of operation
-------------------
``run(options)`` owns everything a run creates — a run directory, the network
(``netns``), the node processes (``nodes``), the workers (``workload``), the history — and
tears them down in a ``finally`` (also on a failure or KeyboardInterrupt)::

    set up the network, start the nodes, wait until every node is an unfenced broker
    create the topic (RF = every node up to 3, min.insync.replicas=2), wait for full ISRs
    commit offset 0 for every partition in the consumer group (no member yet)
    start: a high-watermark prober per node, the producers, the group members, the
           committed-offsets prober (and, if asked, a plain assigned consumer)
    nemesis: the seeded schedule (``schedule``), one fault at a time, each healed in time
    stop the load; ``after_load`` hook (the negative control damages replicas here)
    heal: delete every cut, SIGCONT every paused node, restart every dead one
    wait until every partition's ISR is full ("recovered"), stop the probers
    drain every partition from offset 0, probe the group's committed offsets once more,
    stop the nodes, dump every replica
    judge (``checkers``), write report.json, print the report

Every fault and heal is a history event (``fault`` / ``heal``, process "nemesis"), so the
timeline and the heal -> writable figures come from the history alone. The run directory
(history.jsonl, dump.json, report.json, node logs and data) is deleted after a passing run
unless ``keep_dir`` was given; after a failing run it is kept and its path printed.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cluster.client import Admin, NewTopic
from cluster.launcher import wait_until
from tests.faults import checkers
from tests.faults.history import History
from tests.faults.netns import LoopbackNetwork, NamespaceNetwork, Network
from tests.faults.nodes import FaultCluster
from tests.faults.schedule import Fault, PlannedFault, make_schedule, resolve
from tests.faults.workload import (
    GROUP_MEMBERS, MEMBER_RESTART_S, TOPIC_MAX_MESSAGE_BYTES, CommittedOffsetsProber, ConsumerWorker,
    GroupMemberWorker, HighWatermarkProber, ProducerWorker, ValueSource, commit_initial_offsets, drain,
    offsets_client, probe_committed,
)

logger = logging.getLogger(__name__)

TOPIC = "faults"
REPLICATION_FACTOR_MAX = 3
MIN_INSYNC_REPLICAS = 2
CLUSTER_FORMED_TIMEOUT_S = 60.0
TOPIC_READY_TIMEOUT_S = 30.0
RESTART_READY_TIMEOUT_S = 30.0
FINAL_ISR_TIMEOUT_S = 90.0
WORKER_JOIN_TIMEOUT_S = 60.0
ADMIN_TIMEOUT_MS = 30000


@dataclass
class RunOptions:
    seed: int = 0
    duration_s: float = 60.0
    nodes: int = 3
    netns: bool = True
    keep_dir: Path | None = None
    partitions: int = 3
    producers: int = 2
    rate_per_s: float = 300.0  # values per second over all producers
    faults: bool = True  # False: load only (the negative control)
    group_members: int = GROUP_MEMBERS  # consumer group members (threads of the runner)
    member_restart_s: float = MEMBER_RESTART_S  # each member starts a new consumer this often
    plain_consumer: bool = False  # also a consumer with assign() and no group
    consumer_reassign_s: float = 20.0
    after_load: Callable[["RunContext"], None] | None = None


@dataclass
class RunContext:
    """What the ``after_load`` hook may act on."""

    cluster: FaultCluster
    network: Network
    history: History
    topic: str
    partitions: int


@dataclass
class RunResult:
    seed: int
    directory: Path
    kept: bool
    verdicts: list[checkers.Verdict]
    summary: dict[str, Any]
    timeline: list[dict[str, Any]]
    heals: list[dict[str, Any]]
    heal_figures: dict[str, Any]
    network: str
    errors: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.errors and not any(v.failed for v in self.verdicts)

    def verdict(self, name: str) -> checkers.Verdict:
        return next(v for v in self.verdicts if v.name == name)


class Nemesis:
    """Runs the schedule against the cluster: one fault at a time, each healed in time."""

    def __init__(self, cluster: FaultCluster, network: Network, history: History,
                 plans: list[PlannedFault], origin_s: float) -> None:
        self.cluster = cluster
        self.origin_s = origin_s  # history time at which the schedule's time 0 falls
        self.network = network
        self.history = history
        self.plans = plans
        self.active: Fault | None = None
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        for plan in self.plans:
            if self._stop.wait(max(0.0, self.origin_s + plan.start_s - self.history.now_s())):
                return
            fault = resolve(plan, self.cluster.node_ids, self.cluster.leaders(TOPIC), self.cluster.controller_id())
            self.inject(fault)
            healed = self._stop.wait(max(0.0, self.origin_s + plan.start_s + plan.hold_s - self.history.now_s()))
            self.heal()
            if healed:
                return

    def inject(self, fault: Fault) -> None:
        kind = fault.plan.kind
        try:
            if kind == "kill":
                for node_id in fault.nodes:
                    self.cluster.nodes[node_id].kill9()
            elif kind == "pause":
                for node_id in fault.nodes:
                    self.cluster.nodes[node_id].pause()
            else:
                for source, destination in fault.links:
                    self.network.cut(source, destination)
        finally:
            self.active = fault
            self.history.info("nemesis", "fault", self._describe(fault))
        logger.info("fault %s", fault.describe())

    def heal(self) -> None:
        fault = self.active
        if fault is None:
            return
        self.active = None
        kind = fault.plan.kind
        error = None
        if kind == "kill":
            for node_id in fault.nodes:
                node = self.cluster.nodes[node_id]
                if not node.running:
                    node.start()
        elif kind == "pause":
            for node_id in fault.nodes:
                self.cluster.nodes[node_id].resume()
        else:
            for source, destination in fault.links:
                self.network.heal(source, destination)
        self.history.info("nemesis", "heal", self._describe(fault), error=error)
        if kind == "kill":
            for node_id in fault.nodes:
                try:
                    self.cluster.nodes[node_id].wait_ready(RESTART_READY_TIMEOUT_S)
                except (TimeoutError, RuntimeError) as exc:
                    self.history.info("nemesis", "restart", {"node": node_id}, error=str(exc)[:300])

    @staticmethod
    def _describe(fault: Fault) -> dict[str, Any]:
        return {"fault": fault.plan.index, "kind": fault.plan.kind, "role": fault.plan.role,
                "nodes": list(fault.nodes), "links": [list(link) for link in fault.links],
                "controller": fault.controller, "description": fault.describe()}


def _timeline(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    faults: dict[int, dict[str, Any]] = {}
    for event in history:
        if event.get("f") == "fault":
            faults[event["value"]["fault"]] = {"fault": event["value"]["fault"], "kind": event["value"]["kind"],
                                               "start_s": event["time"],
                                               "heal_s": None, "description": event["value"]["description"]}
        elif event.get("f") == "heal" and event["value"]["fault"] in faults:
            faults[event["value"]["fault"]]["heal_s"] = event["time"]
    return [faults[k] for k in sorted(faults)]


def _create_topic(cluster: FaultCluster, partitions: int) -> None:
    replication_factor = min(REPLICATION_FACTOR_MAX, len(cluster.nodes))
    with Admin(bootstrap_servers=cluster.bootstrap, request_timeout_ms=ADMIN_TIMEOUT_MS) as admin:
        admin.create_topics([NewTopic(TOPIC, partitions, replication_factor,
                                      {"min.insync.replicas": str(MIN_INSYNC_REPLICAS),
                                       "max.message.bytes": str(TOPIC_MAX_MESSAGE_BYTES)})])
    wait_until(lambda: cluster.full_isr(TOPIC, partitions), TOPIC_READY_TIMEOUT_S, interval_s=0.1,
               message=f"topic {TOPIC} with full ISRs on every node")


def _recover(cluster: FaultCluster, network: Network, history: History, partitions: int) -> None:
    """Heal everything and wait for full ISRs; records a "recovered" ok or info event."""
    network.heal_all()
    for node in cluster.nodes.values():
        node.resume()
    started = history.now_s()
    try:
        for node in cluster.nodes.values():
            if not node.running:
                history.info("nemesis", "restart", {"node": node.node_id})
                node.start()
        for node in cluster.nodes.values():
            node.wait_ready(RESTART_READY_TIMEOUT_S)
        wait_until(lambda: cluster.full_isr(TOPIC, partitions), FINAL_ISR_TIMEOUT_S, interval_s=0.2,
                   message="full ISRs after the heal")
    except (TimeoutError, RuntimeError) as exc:
        history.info("nemesis", "recovered", {"seconds": round(history.now_s() - started, 3)}, error=str(exc)[:500])
        return
    history.ok("nemesis", "recovered", {"seconds": round(history.now_s() - started, 3)})


def run(options: RunOptions) -> RunResult:
    assert options.nodes >= 3, "a fault run needs at least three nodes"
    directory = Path(options.keep_dir) if options.keep_dir else Path(tempfile.mkdtemp(prefix="kraft-faults-"))
    directory.mkdir(parents=True, exist_ok=True)
    node_ids = list(range(1, options.nodes + 1))
    network: Network = NamespaceNetwork(node_ids) if options.netns else LoopbackNetwork(node_ids)
    plans = make_schedule(options.seed, options.duration_s, options.nodes, network.uses_namespaces) \
        if options.faults else []
    history = History(directory / "history.jsonl")
    cluster: FaultCluster | None = None
    errors: list[str] = []
    workers: list[Any] = []
    probers: list[HighWatermarkProber] = []
    nemesis: Nemesis | None = None
    dump: checkers.Dump | None = None
    logger.info("fault run: seed %d, %d nodes, %s, %.0f s, in %s", options.seed, options.nodes,
                "namespaces" if options.netns else "loopback", options.duration_s, directory)
    try:
        network.setup()
        cluster = FaultCluster(directory, network, secrets.token_hex(16))
        cluster.start_all()
        cluster.wait_formed(CLUSTER_FORMED_TIMEOUT_S)
        _create_topic(cluster, options.partitions)
        views = cluster.topic_views(TOPIC)
        replicas = sorted((p["partition_index"], sorted(p["replica_nodes"])) for p in next(iter(views.values())))
        history.ok("nemesis", "start", {"seed": options.seed, "nodes": options.nodes, "netns": options.netns,
                                        "replicas": replicas, "schedule": [p.describe() for p in plans]})

        if options.group_members:
            commit_initial_offsets(cluster.bootstrap, TOPIC, options.partitions, history)
        probers = [HighWatermarkProber(node, TOPIC, options.partitions, history) for node in cluster.nodes.values()]
        values = ValueSource()
        workers = [ProducerWorker(f"p{i}", cluster.bootstrap, TOPIC, options.partitions, values, history,
                                  options.rate_per_s / options.producers) for i in range(options.producers)]
        for i in range(options.group_members):
            # Staggered: the members' restarts (each a rebalance) spread over the run.
            first_s = options.member_restart_s * (i + 1) / options.group_members
            workers.append(GroupMemberWorker(f"g{i}", cluster.bootstrap, TOPIC, history,
                                             restart_s=options.member_restart_s, first_restart_s=first_s))
        if options.group_members:
            workers.append(CommittedOffsetsProber("o0", cluster.bootstrap, TOPIC, options.partitions, history))
        if options.plain_consumer:
            workers.append(ConsumerWorker("c0", cluster.bootstrap, TOPIC, options.partitions, history,
                                          reassign_s=options.consumer_reassign_s))
        for worker in [*probers, *workers]:
            worker.start()
        load_started_s = history.now_s()
        nemesis = Nemesis(cluster, network, history, plans, load_started_s)
        nemesis_thread = threading.Thread(target=nemesis.run, name="faults-nemesis", daemon=True)
        nemesis_thread.start()
        load_ends_s = load_started_s + options.duration_s
        nemesis_thread.join(max(0.0, load_ends_s - history.now_s()))
        threading.Event().wait(max(0.0, load_ends_s - history.now_s()))  # the load runs its full time
        nemesis.stop()
        nemesis_thread.join(RESTART_READY_TIMEOUT_S + 10)
        nemesis.heal()
        for worker in workers:
            worker.stop()
        for worker in workers:
            if not worker.join(WORKER_JOIN_TIMEOUT_S):
                errors.append(f"worker {worker.process} did not stop")
            if worker.error is not None:
                errors.append(f"worker {worker.process} failed: {worker.error!r}")

        if options.after_load is not None:
            options.after_load(RunContext(cluster, network, history, TOPIC, options.partitions))
        _recover(cluster, network, history, options.partitions)
        for prober in probers:
            prober.stop()
        for prober in probers:
            prober.join(5)
        drain(cluster.bootstrap, TOPIC, options.partitions, history)
        if options.group_members:
            with offsets_client(cluster.bootstrap, "o-final") as offsets:
                probe_committed(offsets, TOPIC, options.partitions, history, "o-final",
                                timeout_ms=ADMIN_TIMEOUT_MS)
        cluster.stop_all()
        dump = cluster.dump()
        (directory / "dump.json").write_text(json.dumps(dump))
    except BaseException as exc:
        errors.append(f"run aborted: {exc!r}")
        if not isinstance(exc, Exception):
            print(f"fault run interrupted; history and node logs kept in {directory}", file=sys.stderr)
            raise
        logger.exception("fault run aborted")
    finally:
        if nemesis is not None:
            nemesis.stop()
        for worker in [*workers, *probers]:
            worker.stop()
        if cluster is not None:
            cluster.close()
        network.teardown()
        history.close()
    return _judge(options, directory, history, dump, errors, network)


def _judge(options: RunOptions, directory: Path, history: History, dump: checkers.Dump | None,
           errors: list[str], network: Network) -> RunResult:
    events = history.events
    heals = checkers.heal_to_writable(events)
    result = RunResult(
        seed=options.seed, directory=directory, kept=True, verdicts=checkers.check_all(events, dump),
        summary=checkers.summarize(events), timeline=_timeline(events), heals=heals,
        heal_figures=checkers.heal_figures(heals), errors=errors,
        network="namespaces" if network.uses_namespaces else "loopback")
    report = {"seed": result.seed, "passed": result.passed, "network": result.network,
              "duration_s": options.duration_s, "nodes": options.nodes, "errors": errors,
              "verdicts": [v.as_dict() for v in result.verdicts], "summary": result.summary,
              "timeline": result.timeline, "heals": heals, "heal_figures": result.heal_figures}
    (directory / "report.json").write_text(json.dumps(report, indent=1, default=str))
    if result.passed and options.keep_dir is None:
        shutil.rmtree(directory, ignore_errors=True)
        result.kept = False
    return result


def format_report(result: RunResult, options: RunOptions) -> str:
    lines = [f"kraft fault run: seed {result.seed}, {options.nodes} nodes, {result.network}, "
             f"{options.duration_s:.0f} s of load"]
    lines.append("faults:")
    for entry in result.timeline or []:
        heal = f"{entry['heal_s']:6.1f}s" if entry["heal_s"] is not None else "   --  "
        lines.append(f"  {entry['start_s']:6.1f}s -{heal}  {entry['description']}")
    if not result.timeline:
        lines.append("  (none)")
    lines.append("checkers:")
    for verdict in result.verdicts:
        shown = {k: v for k, v in verdict.details.items() if not isinstance(v, list)}
        lines.append(f"  {verdict.name:18} {verdict.verdict:8} {json.dumps(shown, default=str)}")
        examples = verdict.details.get("examples") or verdict.details.get("lost_examples")
        if verdict.failed and examples:
            lines.append(f"  {'':18} examples: {json.dumps(examples[:5], default=str)}")
    s = result.summary
    lines.append(f"counts: sent {s['sent']}, acknowledged {s['acknowledged']}, failed {s['failed']}, "
                 f"info {s['info']}, read {s['read']}, lost {s['lost']}, duplicated {s['duplicated']} "
                 f"({s['operations']} operations, {s['faults']} faults)")
    lines.append(f"group: {s['commits']} commits acknowledged ({s['commits_failed']} failed, "
                 f"{s['commits_unknown']} unknown), {s['committed_probes']} committed-offset probes, "
                 f"{s['committed_regressions']} committed-offset regressions, {s['revokes']} revokes, "
                 f"{s['partitions_lost']} partitions lost; {s['coordinator_faults']} kills/pauses of the "
                 "group coordinator")
    h = result.heal_figures
    lines.append(f"heal -> writable (first acks=all ack of a send invoked after the heal): p50 {h['p50_s']} s, "
                 f"max {h['max_s']} s over {h['heals']} heals"
                 + (f" ({h['never_writable']} not before the load stopped)" if h["never_writable"] else ""))
    lines.append(f"heal -> every partition writable: p50 {h['all_partitions_p50_s']} s, "
                 f"max {h['all_partitions_max_s']} s"
                 + (f" ({h['all_partitions_never']} not before the load stopped)" if h["all_partitions_never"] else ""))
    for error in result.errors:
        lines.append(f"error: {error}")
    lines.append(f"verdict: {'PASS' if result.passed else 'FAIL'}")
    if result.kept:
        lines.append(f"history, report, dump and node logs kept in {result.directory}")
    return "\n".join(lines)
