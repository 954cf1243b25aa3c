"""``python -m tests.faults run --seed N --duration-s S [--nodes 3|5] [--keep-dir D] [--no-netns]
[--members N] [--plain-consumer]``
and ``python -m tests.faults cleanup`` (what killed runs left behind).

Runs one fault run (``tests.faults.runner``), prints its report and exits 0 when every
checker passed, 1 otherwise. SIGTERM is turned into KeyboardInterrupt so the run's
``finally`` still kills the nodes and deletes the namespaces.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from types import FrameType

from tests.faults.netns import cleanup_stale, namespaces_available
from tests.faults.runner import RunOptions, format_report, run


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults", description="kraft fault-injection runs")
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("run", help="one seeded fault run against a fresh cluster")
    one.add_argument("--seed", type=int, default=0, help="replays the same fault schedule (default 0)")
    one.add_argument("--duration-s", type=float, default=60.0, help="seconds of load and faults (default 60)")
    one.add_argument("--nodes", type=int, choices=(3, 5), default=3)
    one.add_argument("--keep-dir", type=Path, default=None,
                     help="run directory to keep (default: a temporary one, kept only on failure)")
    one.add_argument("--no-netns", action="store_true",
                     help="all nodes on 127.0.0.1: kill and pause only, no network partitions")
    one.add_argument("--partitions", type=int, default=3)
    one.add_argument("--rate", type=float, default=300.0, help="values per second over all producers")
    one.add_argument("--members", type=int, default=2, help="consumer group members (default 2; 0: no group)")
    one.add_argument("--plain-consumer", action="store_true",
                     help="also run a consumer with assign() and no group")
    one.add_argument("--verbose", action="store_true", help="log the runner's events")
    commands.add_parser("cleanup", help="remove namespaces, links and nodes left by runs that were killed")
    args = parser.parse_args(argv)
    if args.command == "cleanup":
        for line in cleanup_stale():
            print(f"removed {line}")
        return 0

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s")
    netns = not args.no_netns
    if netns:
        available, why = namespaces_available()
        if not available:
            print(f"network namespaces unavailable ({why}); use --no-netns for a loopback run "
                  "with kill and pause faults only", file=sys.stderr)
            return 2
        for line in cleanup_stale():
            print(f"removed {line}", file=sys.stderr)
    signal.signal(signal.SIGTERM, _interrupt)
    options = RunOptions(seed=args.seed, duration_s=args.duration_s, nodes=args.nodes, netns=netns,
                         keep_dir=args.keep_dir, partitions=args.partitions, rate_per_s=args.rate,
                         group_members=args.members, plain_consumer=args.plain_consumer)
    print(f"fault run: seed {options.seed}, {options.nodes} nodes, "
          f"{'network namespaces' if netns else 'loopback'}, {options.duration_s:.0f} s", flush=True)
    try:
        result = run(options)
    except KeyboardInterrupt:
        return 130
    print(format_report(result, options))
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
