"""The benchmark harness runs end to end (figures are not asserted: tests never assert timings)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.timeout(180)
@pytest.mark.parametrize("workload", ["produce", "consume"])
def test_bench_runs_and_writes_a_result(tmp_path, workload: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench", workload, "--records", "20000", "--partitions", "2",
         "--no-progress", "--out-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=170,
    )
    assert out.returncode == 0, out.stderr + out.stdout
    results = list(tmp_path.glob(f"{workload}-*.json"))
    assert len(results) == 1
    result = json.loads(results[0].read_text())
    assert result["workload"] == workload
    assert result["machine"]["cores"] >= 1
    section = result["consume" if workload == "consume" else "produce"]
    assert section["records"] == 20000 and section["records_per_s"] > 0
    if workload == "produce":
        assert result["raw_lmdb_append"]["records_per_s"] > 0
