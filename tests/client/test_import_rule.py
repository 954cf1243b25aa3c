"""An application that imports the client loads no broker code (DESIGN.md §2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("cluster.node", "cluster.server", "cluster.handlers", "cluster.partitions", "cluster.config",
             "storage.log", "lmdb", "kraft", "pysyncobj")


def test_importing_the_client_loads_no_broker_code() -> None:
    code = (
        "import json, sys\n"
        "import cluster.client\n"
        "from cluster.client import Producer, Consumer, Admin, errors\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    modules = json.loads(out.stdout)
    loaded = [m for m in modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]
    assert not loaded, f"importing cluster.client loaded {loaded}"
    assert "cluster.client.producer" in modules  # the check looked at the right process


def test_the_check_would_notice_a_broker_import() -> None:
    code = "import json, sys\nimport cluster.client\nimport storage.log\nprint(json.dumps(sorted(sys.modules)))\n"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:  # storage.log not importable here: nothing to prove
        return
    assert "storage.log" in json.loads(out.stdout)
