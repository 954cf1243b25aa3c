"""The packages type-check with mypy (STYLE.md: annotations everywhere, mypy clean)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(240)
def test_packages_are_mypy_clean() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--ignore-missing-imports",
         "storage", "kraft", "cluster", "bench"],
        cwd=ROOT, capture_output=True, text=True, timeout=230,
    )
    assert out.returncode == 0, out.stdout + out.stderr
