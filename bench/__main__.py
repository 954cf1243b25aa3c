"""``python -m bench produce|consume``: throughput figures with their baseline, saved as JSON."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import perf, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    sub = parser.add_subparsers(dest="workload", required=True)
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
            p.add_argument("--batches-per-txn", type=int, default=10,
                           help="batches per synced transaction in the raw LMDB baseline")
    args = parser.parse_args(argv)
    progress = not args.no_progress
    if args.workload == "produce":
        options = {k: v for k, v in (("linger_ms", args.linger_ms), ("batch_size", args.batch_size)) if v is not None}
        acks = args.acks if args.acks == "all" else int(args.acks)
        result = perf.run_produce(records=args.records, record_size=args.record_size, partitions=args.partitions,
                                  acks=acks, bootstrap=args.bootstrap_server, producer_options=options,
                                  batches_per_txn=args.batches_per_txn, progress=progress)
    else:
        result = perf.run_consume(records=args.records, record_size=args.record_size, partitions=args.partitions,
                                  bootstrap=args.bootstrap_server, progress=progress)
    path = report.finish(result, args.out_dir)
    print(report.summary(result))
    print(f"  result: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
