"""Benchmark results: the machine and revision they were measured on, printed and saved as JSON."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

RESULTS_DIR = Path("bench/results")


def git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> dict[str, Any]:
    memory_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cores": os.cpu_count(),
        "memory_bytes": memory_bytes,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def finish(result: dict[str, Any], out_dir: Path | None = None) -> Path:
    """Add revision and machine to a result, write it as JSON, return the path."""
    result = {"revision": git_revision(), "machine": machine(),
              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **result}
    directory = out_dir or RESULTS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{result['workload']}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return path


def summary(result: dict[str, Any]) -> str:
    lines = [f"workload: {result['workload']}  params: {json.dumps(result['params'], default=str)}"]
    for section in ("raw_lmdb_append", "produce", "consume"):
        if section in result:
            r = result[section]
            lines.append(f"  {section:16s} {r['records_per_s']:>12,.0f} records/s  {r['mb_per_s']:8.1f} MB/s"
                         f"  ({r['records']:,} records in {r['seconds']:.2f} s)")
    if "ratio_produce_to_raw_lmdb" in result:
        lines.append(f"  produce / raw LMDB append of the same bytes: {result['ratio_produce_to_raw_lmdb']:.2f}")
    cluster = result.get("cluster", {})
    if cluster.get("started_by_bench"):
        rss = cluster.get("node_peak_rss_bytes")
        lines.append(f"  node: start to first served request {cluster['node_start_to_first_request_s']:.2f} s, "
                     f"peak RSS {rss / 1e6:.0f} MB" if rss else "  node: peak RSS unknown")
    return "\n".join(lines)
