"""Benchmark results: the machine and revision they were measured on, printed and saved as JSON.

``finish`` stamps a result dict with the git revision, the machine (cores, memory) and the
time and writes it under ``bench/results`` (or ``out_dir``); ``publish`` also prints it;
``throughput`` builds the records/s and MB/s figures every run reports; ``summary`` renders a result of
``bench.perf`` (produce/consume) or ``bench.harness`` (a workload run, or a compare run) as
text, with the runs and ratios of any peer system (``bench.peers``) that ran beside it.
"""

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


def throughput(records: int, nbytes: float, seconds: float, **more: Any) -> dict[str, Any]:
    """The figures of one direction (produce or consume) that ``summary`` prints."""
    return {"records": records, "seconds": seconds, "records_per_s": records / seconds,
            "mb_per_s": nbytes / seconds / 1e6, **more}


def publish(result: dict[str, Any], out_dir: Path | None = None) -> Path:
    """``finish`` the result, print its summary and where it was saved; the path."""
    path = finish(result, out_dir)
    print(summary(result))
    print(f"  result: {path}")
    return path


def finish(result: dict[str, Any], out_dir: Path | None = None) -> Path:
    """Add revision and machine to a result, write it as JSON, return the path."""
    result = {"revision": git_revision(), "machine": machine(),
              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **result}
    directory = out_dir or RESULTS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{result['workload']}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return path


def _throughput_line(name: str, r: dict[str, Any]) -> str:
    return (f"  {name:16s} {r['records_per_s']:>12,.0f} records/s  {r['mb_per_s']:8.1f} MB/s"
            f"  ({r['records']:,} records in {r['seconds']:.2f} s)")


def _latency_line(name: str, figures: dict[str, Any] | None) -> str | None:
    if not figures or not figures.get("count"):
        return None
    cells = "  ".join(f"{k} {figures[k]:.2f}" for k in ("p50", "p99", "p99.9", "max"))
    return f"  {name:16s} ms: {cells}  ({figures['count']:,} samples)"


def _megabytes(values: list[int | None]) -> str:
    return ", ".join("?" if v is None else f"{v / 1e6:.0f}" for v in values)


def _cluster_lines(cluster: dict[str, Any]) -> list[str]:
    if not cluster.get("started_by_bench"):
        return [f"  cluster: {cluster.get('bootstrap')} (not started by the harness)"] if cluster else []
    ready = cluster["node_start_to_first_request_s"]
    peak = cluster.get("node_peak_rss_bytes")
    if not isinstance(ready, list):  # bench.perf's single node
        return [f"  node: start to first served request {ready:.2f} s, "
                f"peak RSS {peak / 1e6:.0f} MB" if peak else "  node: peak RSS unknown"]
    idle = cluster.get("node_idle_rss_bytes") or []
    cpu = cluster.get("node_cpu_s")
    cpu_text = f"; CPU {', '.join('?' if c is None else f'{c:.1f}' for c in cpu)} s" if cpu else ""
    return [f"  nodes: {cluster['nodes']}, start to first served request "
            f"{', '.join(f'{s:.2f}' for s in ready)} s, cluster ready {cluster['cluster_ready_s']:.2f} s; "
            f"RSS idle {_megabytes(idle)} MB, peak {_megabytes(peak or [])} MB{cpu_text}"]


def _run_lines(result: dict[str, Any]) -> list[str]:
    lines = []
    probe = result.get("rate_probe")
    if probe:
        lines.append(f"  rate {probe['producer_rate']} of the maximum: {probe['rate_records_per_s']:,} records/s "
                     f"(max-rate run first: {probe['max_records_per_s']:,.0f} records/s)")
    for section in ("raw_lmdb_append", "produce", "consume"):
        if result.get(section):
            lines.append(_throughput_line(section, result[section]))
    for name, figures in (("publish latency", result.get("produce", {}).get("publish_latency_ms")),
                          ("e2e latency", result.get("e2e_latency_ms"))):
        line = _latency_line(name, figures)
        if line:
            lines.append(line)
    if result.get("ratio_produce_to_raw_lmdb") is not None:
        lines.append(f"  produce / raw LMDB append of the same bytes: {result['ratio_produce_to_raw_lmdb']:.2f}")
    lines.extend(_cluster_lines(result.get("cluster", {})))
    return lines


def summary(result: dict[str, Any]) -> str:
    lines = [f"workload: {result['workload']}  params: {json.dumps(result['params'], default=str)}"]
    if result.get("compare"):
        for label, run in result["runs"].items():
            lines.append(f" {label}:")
            lines.extend(_run_lines(run))
        for name, ratio in result["ratios"].items():
            lines.append(f"  ratio {name}: {ratio:.2f}")
    else:
        lines.extend(_run_lines(result))
    for name, peer in result.get("peers", {}).items():
        lines.extend(_peer_lines(name, peer))
    return "\n".join(lines)


def _peer_lines(name: str, peer: dict[str, Any]) -> list[str]:
    if not peer.get("runs"):
        return [f"  peer {name}: {peer.get('reason', 'ran')}"]
    lines = [f"  peer {name}: {peer.get('server_version', '')}, {peer.get('client', '')}, "
             f"sync {peer.get('sync_interval', '?')}; {peer.get('reason', 'ran')}"]
    for label, run in peer["runs"].items():
        lines.append(f" {label}:")
        lines.extend([f"  failed: {run['error']}"] if "error" in run else _run_lines(run))
    for ratio_name, ratio in peer.get("ratios", {}).items():
        lines.append(f"  ratio {ratio_name}: {ratio:.2f}")
    return lines
