"""Run by test_crash.py: append batches forever and print each acknowledged one.

    python -m tests.storage.crash_writer PATH FIRST_TAG

Each stdout line is ``ack <base offset> <tag>``, printed only after the append's future
completed (the transaction holding it was committed and fsynced). The parent kills -9.
"""

from __future__ import annotations

import collections
import sys

from storage.log import LogStore
from tests.storage.helpers import make_batch

WINDOW = 16  # appends in flight, so group commit has something to group


def main() -> None:
    path, first_tag = sys.argv[1], int(sys.argv[2])
    store = LogStore(path, sync=True)
    log = store.open_partition("crash", 0)
    print("ready", log.log_end_offset, flush=True)
    pending: collections.deque = collections.deque()
    tag = first_tag
    while True:
        while len(pending) < WINDOW:
            pending.append((tag, log.append(make_batch(1 + tag % 5, value_bytes=200, tag=tag), 0)))
            tag += 1
        done_tag, future = pending.popleft()
        print("ack", future.result().base_offset, done_tag, flush=True)


if __name__ == "__main__":
    main()
