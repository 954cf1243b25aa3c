"""PNG charts of a result: throughput over time and latency percentiles (needs matplotlib).

Theory of operation
-------------------
``write_chart`` reads a result dict as ``bench.harness`` returns it (one run, or a compare
run with several) and draws two panels: records/s per interval for produce and consume,
and p50/p99/p99.9/max of publish and end-to-end latency as bars. matplotlib is optional
(the ``bench`` extra): without it ``write_chart`` returns None and says why.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

LATENCY_KEYS = ("p50", "p99", "p99.9", "max")


def available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def _runs(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return result["runs"] if result.get("compare") else {result["workload"]: result}


def write_chart(result: dict[str, Any], path: Path) -> Path | None:
    """Draw ``result`` into ``path`` (PNG); None when matplotlib is not installed."""
    if not available():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    runs = _runs(result)
    for label, run in runs.items():
        interval_s = float(run.get("series_interval_s", 1.0))
        for role, style in (("produce", "-"), ("consume", "--")):
            series = run.get("series_records_per_interval", {}).get(role) or []
            if series:
                xs = [i * interval_s for i in range(len(series))]
                left.plot(xs, [n / interval_s for n in series], style, label=f"{label} {role}")
    left.set_xlabel("seconds since start (warm-up included)")
    left.set_ylabel("records/s")
    left.set_title("throughput over time")
    left.legend(fontsize=7)
    bars: list[tuple[str, list[float]]] = []
    for label, run in runs.items():
        for name, key in (("publish", "publish_latency_ms"), ("e2e", "e2e_latency_ms")):
            figures = run.get(key) or run.get("produce", {}).get(key)
            if figures and figures.get("count"):
                bars.append((f"{label} {name}", [float(figures.get(k) or 0.0) for k in LATENCY_KEYS]))
    width = 0.8 / max(1, len(bars))
    for i, (label, values) in enumerate(bars):
        right.bar([x + i * width for x in range(len(LATENCY_KEYS))], values, width, label=label)
    right.set_xticks([x + 0.4 - width / 2 for x in range(len(LATENCY_KEYS))], list(LATENCY_KEYS))
    right.set_yscale("log")
    right.set_ylabel("ms")
    right.set_title("latency percentiles")
    if bars:
        right.legend(fontsize=7)
    fig.suptitle(f"{result['workload']} ({result.get('revision', '')})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
