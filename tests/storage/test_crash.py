"""kill -9 in the middle of a stream of appends loses nothing that was acknowledged."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from storage.batch import decode_batch, parse_header
from storage.log import LogStore
REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(90)

ACKS_BEFORE_KILL = 150
ROUNDS = 3


def _run_until_acks(path: str, first_tag: int) -> list[tuple[int, int]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.storage.crash_writer", path, str(first_tag)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
    )
    acks: list[tuple[int, int]] = []
    try:
        assert proc.stdout.readline().startswith("ready")
        while len(acks) < ACKS_BEFORE_KILL:
            line = proc.stdout.readline()
            assert line, "the writer exited early"
            _, base, tag = line.split()
            acks.append((int(base), int(tag)))
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        rest, _ = proc.communicate(timeout=30)
    # Whole lines written before the kill are acknowledgements too; the text after the last
    # newline may be a line cut short by the kill, so it is not trusted.
    for line in rest.split("\n")[:-1]:
        if line.startswith("ack"):
            _, base, tag = line.split()
            acks.append((int(base), int(tag)))
    return acks


def test_acknowledged_appends_survive_kill_9(tmp_path):
    path = str(tmp_path / "log")
    acknowledged: dict[int, int] = {}
    next_tag = 0
    for _ in range(ROUNDS):
        acks = _run_until_acks(path, next_tag)
        for base, tag in acks:
            assert acknowledged.setdefault(base, tag) == tag, f"offset {base} acknowledged twice"
        next_tag = max(tag for _, tag in acks) + 1_000  # tags stay unique across rounds

        with LogStore(path) as store:
            log = store.get_partition("crash", 0)
            log.verify()  # dense from the log start, sizes and ends agree
            stored = {}
            expected_base = log.log_start_offset
            for batch in log.read(log.log_start_offset, 1 << 30):
                header = parse_header(batch)
                assert header.base_offset == expected_base
                expected_base = header.next_offset
                stored[header.base_offset] = int.from_bytes(decode_batch(batch)[0].value[:8], "big")
            assert expected_base == log.log_end_offset
            assert len(set(stored.values())) == len(stored), "a batch is stored twice"
            missing = {b: t for b, t in acknowledged.items() if stored.get(b) != t}
            assert not missing, f"acknowledged but lost or replaced: {sorted(missing.items())[:5]}"
            # Unacknowledged in-flight appends may or may not be there; acknowledged ones are.
            assert log.log_end_offset >= max(acknowledged) + 1
