"""The ``kraft`` command: a node, and client tools in the shape of Kafka's.

    kraft node [--config node.toml]
    kraft dev-cluster [--nodes 3] [--brokers 0] [--data-dir DIR]
    kraft topics create NAME --partitions N [--replication-factor R] [--config k=v ...]
    kraft topics list | describe [NAME] | delete NAME
    kraft cluster status
    kraft produce TOPIC [--key-separator SEP] [--acks all|1|0]
    kraft consume TOPIC [--from-beginning] [--max-messages N] [--partition P --offset O] [--timeout-ms T]
                        [--group G]
    kraft groups list | describe GROUP | delete GROUP
    kraft groups reset-offsets GROUP --topic T (--to-earliest | --to-latest | --to-offset N | --to-datetime ISO)

Every client command takes ``--bootstrap-server HOST:PORT`` (default 127.0.0.1:9092). An
error prints one line naming it (Kafka's error name) and exits non-zero. The node's own
code is imported only by ``kraft node``, so the client tools load no broker code.
"""

from __future__ import annotations

import argparse
import datetime
import signal
import sys
import time
from pathlib import Path
from typing import Sequence

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
EXIT_ERROR = 1
EXIT_USAGE = 2
CONSUME_POLL_TIMEOUT_MS = 500
CONSUME_POLL_RECORDS_MAX = 500


def _parse_config_pairs(pairs: Sequence[str]) -> dict[str, str]:
    configs: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: --config expects key=value, got {pair!r}")
        configs[key.strip()] = value.strip()
    return configs


def _cmd_topics(args: argparse.Namespace) -> int:
    from cluster.client import Admin, NewTopic

    with Admin(bootstrap_servers=args.bootstrap_server) as admin:
        if args.topics_command == "create":
            admin.create_topics([
                NewTopic(args.name, args.partitions, args.replication_factor, _parse_config_pairs(args.config))
            ])
            print(f"Created topic {args.name}.")
        elif args.topics_command == "list":
            for name in sorted(admin.list_topics()):
                print(name)
        elif args.topics_command == "describe":
            names = [args.name] if args.name else None
            for topic in admin.describe_topics(names):
                configs = admin.describe_configs(topic.name)
                config_text = ",".join(f"{k}={v}" for k, v in sorted(configs.items()))
                print(f"Topic: {topic.name}\tPartitionCount: {len(topic.partitions)}\t"
                      f"ReplicationFactor: {len(topic.partitions[0].replicas) if topic.partitions else 0}\t"
                      f"Configs: {config_text}")
                for p in topic.partitions:
                    print(f"\tTopic: {topic.name}\tPartition: {p.partition}\tLeader: {p.leader}\t"
                          f"Replicas: {','.join(map(str, p.replicas))}\tIsr: {','.join(map(str, p.isr))}")
        elif args.topics_command == "delete":
            admin.delete_topics([args.name])
            print(f"Deleted topic {args.name}.")
    return 0


def _cmd_cluster_status(args: argparse.Namespace) -> int:
    from cluster.client import Admin

    with Admin(bootstrap_servers=args.bootstrap_server) as admin:
        cluster = admin.describe_cluster()
        topics = admin.describe_topics(None)
    controller = cluster.controller_id if cluster.controller_id >= 0 else "unknown"
    print(f"Cluster: {cluster.cluster_id}\tController: {controller}")
    for b in cluster.brokers:
        state = "fenced" if b.fenced else "live"
        role = "\tactive controller" if b.node_id == cluster.controller_id else ""
        rack = f"\track {b.rack}" if b.rack else ""
        print(f"  broker {b.node_id}\t{b.host}:{b.port}\t{state}{rack}{role}")
    if cluster.raft:
        r = cluster.raft
        print(f"Quorum (as node {r.get('node_id')} sees it): voters {r.get('voters')}, leader {r.get('leader_id')}, "
              f"Raft term {r.get('term')}, commit index {r.get('commit_index')}, "
              f"metadata offset {r.get('metadata_offset')}")
    partitions = [(t.name, p) for t in topics for p in t.partitions]
    offline = [f"{name}-{p.partition}" for name, p in partitions if p.leader < 0]
    under = [f"{name}-{p.partition}" for name, p in partitions if p.leader >= 0 and len(p.isr) < len(p.replicas)]
    print(f"Topics: {len(topics)}\tPartitions: {len(partitions)}\tOffline: {len(offline)}"
          f"\tUnder-replicated: {len(under)}")
    for topic in sorted(topics, key=lambda t: t.name):
        print(f"\nTopic {topic.name}")
        print("  partition  leader  epoch  replicas        isr             state")
        for p in topic.partitions:
            state = "offline" if p.leader < 0 else ("under-replicated" if len(p.isr) < len(p.replicas) else "ok")
            print(f"  {p.partition:<9}  {p.leader if p.leader >= 0 else 'none':<6}  {p.leader_epoch:<5}  "
                  f"{','.join(map(str, p.replicas)):<14}  {','.join(map(str, p.isr)):<14}  {state}")
    return 0


def _cmd_produce(args: argparse.Namespace) -> int:
    from cluster.client import Producer

    acks: int | str = args.acks if args.acks == "all" else int(args.acks)
    futures = []
    with Producer(bootstrap_servers=args.bootstrap_server, acks=acks, client_id="kraft-produce") as producer:
        for line in sys.stdin.buffer:
            line = line.rstrip(b"\r\n")
            key = None
            if args.key_separator is not None:
                sep = args.key_separator.encode()
                if sep not in line:
                    print(f"error: line has no key separator {args.key_separator!r}: {line[:80]!r}", file=sys.stderr)
                    return EXIT_ERROR
                key, line = line.split(sep, 1)
            futures.append(producer.send(args.topic, value=line, key=key))
        producer.flush()
    failed = [f.exception() for f in futures if f.exception() is not None]
    if failed:
        print(f"error: {len(failed)} of {len(futures)} records failed: {failed[0]}", file=sys.stderr)
        return EXIT_ERROR
    return 0


def _cmd_consume(args: argparse.Namespace) -> int:
    from cluster.client import Consumer, TopicPartition

    reset = "earliest" if args.from_beginning else "latest"
    printed = 0
    # With --group, poll never returns more than is still to print, so the auto commit (which
    # commits exactly what poll returned) and the commit at close never skip a record.
    with Consumer(bootstrap_servers=args.bootstrap_server, auto_offset_reset=reset, group_id=args.group,
                  client_id="kraft-consume") as consumer:
        if args.partition is not None:
            tp = TopicPartition(args.topic, args.partition)
            consumer.assign([tp])
            if args.offset is not None:
                consumer.seek(tp, args.offset)
            elif args.from_beginning:
                consumer.seek_to_beginning(tp)
        else:
            if args.offset is not None:
                print("error: --offset needs --partition", file=sys.stderr)
                return EXIT_USAGE
            consumer.subscribe([args.topic])
        out = sys.stdout.buffer
        last_record_s = time.monotonic()
        while args.max_messages is None or printed < args.max_messages:
            wanted = None if args.max_messages is None else min(CONSUME_POLL_RECORDS_MAX, args.max_messages - printed)
            batches = consumer.poll(timeout_ms=CONSUME_POLL_TIMEOUT_MS, max_records=wanted)
            if batches:
                last_record_s = time.monotonic()
            elif args.timeout_ms is not None and time.monotonic() - last_record_s > args.timeout_ms / 1000:
                break
            for records in batches.values():
                for record in records:
                    if args.print_key:
                        out.write((record.key or b"null") + args.key_separator.encode())
                    out.write((record.value or b"") + b"\n")
                    printed += 1
                    if args.max_messages is not None and printed >= args.max_messages:
                        break
                if args.max_messages is not None and printed >= args.max_messages:
                    break
            out.flush()
    return 0


def _offset_text(offset: int) -> str:
    return str(offset) if offset >= 0 else "-"


def _print_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [list(header)] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def _parse_datetime(text: str) -> datetime.datetime:
    try:
        return datetime.datetime.fromisoformat(text)
    except ValueError:
        raise SystemExit(f"error: --to-datetime expects an ISO 8601 time such as 2024-05-01T12:00:00, got {text!r}")


def _cmd_groups(args: argparse.Namespace) -> int:
    from cluster.client import Admin

    with Admin(bootstrap_servers=args.bootstrap_server) as admin:
        if args.groups_command == "list":
            groups = admin.list_groups()
            _print_table(["GROUP", "STATE", "MEMBERS"], [(g.group_id, g.state, g.member_count) for g in groups])
        elif args.groups_command == "describe":
            (group,) = admin.describe_groups([args.group])
            print(f"Group: {group.group_id}\tState: {group.state}\tEpoch: {group.group_epoch}\t"
                  f"Members: {len(group.members)}")
            clients = {m.member_id: m.client_id for m in group.members}
            print()
            _print_table(
                ["TOPIC", "PARTITION", "COMMITTED-OFFSET", "LOG-END-OFFSET", "LAG", "MEMBER"],
                [(p.topic, p.partition, _offset_text(p.committed_offset), _offset_text(p.log_end_offset),
                  _offset_text(p.lag), f"{p.member_id} ({clients.get(p.member_id, '')})" if p.member_id else "-")
                 for p in group.partitions])
            print(f"\nTotal lag: {group.total_lag}")
            if group.members:
                print()
                _print_table(
                    ["MEMBER", "INSTANCE", "CLIENT", "EPOCH", "PARTITIONS"],
                    [(m.member_id, m.instance_id or "-", m.client_id, m.member_epoch,
                      ",".join(f"{tp.topic}-{tp.partition}" for tp in m.assignment) or "-")
                     for m in group.members])
        elif args.groups_command == "reset-offsets":
            to_datetime = _parse_datetime(args.to_datetime) if args.to_datetime is not None else None
            moved = admin.reset_group_offsets(
                args.group, args.topic, to_earliest=args.to_earliest, to_latest=args.to_latest,
                to_offset=args.to_offset, to_datetime=to_datetime)
            for tp, (old, new) in sorted(moved.items()):
                print(f"{tp.topic}-{tp.partition}: {_offset_text(old)} -> {new}")
        elif args.groups_command == "delete":
            admin.delete_groups([args.group])
            print(f"Deleted group {args.group}.")
    return 0


def _cmd_node(args: argparse.Namespace) -> int:
    from cluster import node

    argv = ["--config", args.config] if args.config else []
    return node.main(argv)


def _cmd_dev_cluster(args: argparse.Namespace) -> int:
    from cluster import devcluster

    return devcluster.run(args.nodes, args.data_dir or devcluster.default_directory(), args.base_port,
                          args.controller_base_port, args.brokers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kraft", description="A partitioned, replicated, durable log.")
    sub = parser.add_subparsers(dest="command", required=True)

    node_p = sub.add_parser("node", help="run a node (no arguments: a single node on 127.0.0.1:9092)")
    node_p.add_argument("--config", help="the node's TOML config file")
    node_p.set_defaults(func=_cmd_node)

    dev = sub.add_parser("dev-cluster", help="run a local cluster of N node processes until Ctrl-C")
    dev.add_argument("--nodes", type=int, default=3, help="Raft voters (each also a broker)")
    dev.add_argument("--brokers", type=int, default=0, help="extra broker-only nodes")
    dev.add_argument("--data-dir", type=Path, help="where the nodes keep their data (default ./kraft-dev-cluster)")
    dev.add_argument("--base-port", type=int, default=9092, help="client port of node 1; node i uses base + i - 1")
    dev.add_argument("--controller-base-port", type=int, default=19092, help="Raft port of node 1")
    dev.set_defaults(func=_cmd_dev_cluster)

    def client_parser(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--bootstrap-server", default=DEFAULT_BOOTSTRAP, metavar="HOST:PORT")
        return p

    topics = client_parser("topics", "create, list, describe and delete topics")
    topics_sub = topics.add_subparsers(dest="topics_command", required=True)
    create = topics_sub.add_parser("create")
    create.add_argument("name")
    create.add_argument("--partitions", type=int, default=1)
    create.add_argument("--replication-factor", type=int, default=1)
    create.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                        help="a topic config such as retention.ms=3600000 (repeatable)")
    topics_sub.add_parser("list")
    describe = topics_sub.add_parser("describe")
    describe.add_argument("name", nargs="?")
    delete = topics_sub.add_parser("delete")
    delete.add_argument("name")
    for p in (create, describe, delete, topics_sub.choices["list"]):
        p.add_argument("--bootstrap-server", default=argparse.SUPPRESS, metavar="HOST:PORT")
    topics.set_defaults(func=_cmd_topics)

    status = client_parser("cluster", "the cluster's brokers, controller and partition health")
    status_sub = status.add_subparsers(dest="cluster_command", required=True)
    status_sub.add_parser("status").add_argument("--bootstrap-server", default=argparse.SUPPRESS, metavar="HOST:PORT")
    status.set_defaults(func=_cmd_cluster_status)

    produce = client_parser("produce", "send one record per line of standard input")
    produce.add_argument("topic")
    produce.add_argument("--key-separator", help="split each line into key and value at this string")
    produce.add_argument("--acks", default="all", choices=["all", "-1", "0", "1"])
    produce.set_defaults(func=_cmd_produce)

    consume = client_parser("consume", "print records, one value per line")
    consume.add_argument("topic")
    consume.add_argument("--from-beginning", action="store_true")
    consume.add_argument("--max-messages", type=int)
    consume.add_argument("--partition", type=int)
    consume.add_argument("--offset", type=int)
    consume.add_argument("--timeout-ms", type=int, help="exit when no record arrives for this long")
    consume.add_argument("--print-key", action="store_true")
    consume.add_argument("--key-separator", default="\t")
    consume.add_argument("--group", help="join this consumer group and commit what was printed")
    consume.set_defaults(func=_cmd_consume)

    groups = client_parser("groups", "list, describe (with lag), reset offsets of and delete consumer groups")
    groups_sub = groups.add_subparsers(dest="groups_command", required=True)
    groups_list = groups_sub.add_parser("list")
    groups_describe = groups_sub.add_parser("describe")
    groups_describe.add_argument("group")
    groups_delete = groups_sub.add_parser("delete")
    groups_delete.add_argument("group")
    reset = groups_sub.add_parser("reset-offsets", help="move an empty group's committed offsets of a topic")
    reset.add_argument("group")
    reset.add_argument("--topic", required=True)
    to = reset.add_mutually_exclusive_group(required=True)
    to.add_argument("--to-earliest", action="store_true")
    to.add_argument("--to-latest", action="store_true")
    to.add_argument("--to-offset", type=int, metavar="N")
    to.add_argument("--to-datetime", metavar="ISO", help="e.g. 2024-05-01T12:00:00 (local time without a zone)")
    for p in (groups_list, groups_describe, groups_delete, reset):
        p.add_argument("--bootstrap-server", default=argparse.SUPPRESS, metavar="HOST:PORT")
    groups.set_defaults(func=_cmd_groups)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command not in ("node", "dev-cluster"):
        # a closed pipe (kraft consume | head) ends the command quietly
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    from cluster.protocol.errors import KraftError

    try:
        return args.func(args)
    except KraftError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        print(f"error: cannot reach {getattr(args, 'bootstrap_server', '?')}: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
