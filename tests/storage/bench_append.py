"""Append throughput of the log store against raw LMDB puts of the same bytes.

    python -m tests.storage.bench_append [--batches 1000] [--rounds 3]

Not a test (pytest does not collect it): it prints figures measured in one run, as ratios,
because the machines here are shared and noisy.
"""

from __future__ import annotations

import argparse
import shutil
import struct
import tempfile
import time

import lmdb

from storage.batch import encode_batch
from storage.log import LogStore


def build_batches(count: int, records: int = 100, value_bytes: int = 90) -> list[bytes]:
    return [
        encode_batch([(1_700_000_000_000 + i, b"key-%06d" % i, bytes([i % 251]) * value_bytes, None)
                      for _ in range(records)])
        for i in range(count)
    ]


def raw_lmdb(batches: list[bytes], directory: str) -> float:
    """One synced transaction of plain puts, keys as the store builds them."""
    key = struct.Struct(">IQ")
    env = lmdb.open(directory, map_size=1 << 30, max_dbs=4, sync=True)
    db = env.open_db(b"batches")
    start = time.perf_counter()
    with env.begin(write=True) as txn:
        offset = 0
        for batch in batches:
            txn.put(key.pack(0, offset), batch, db=db)
            offset += 100
    elapsed = time.perf_counter() - start
    env.close()
    return elapsed


def log_store(batches: list[bytes], directory: str) -> tuple[float, int]:
    """Submit every append at once, wait for the last: group commit at full speed."""
    store = LogStore(directory, sync=True)
    log = store.open_partition("bench", 0)
    before = store.transactions_committed
    start = time.perf_counter()
    futures = [log.append(batch, 0) for batch in batches]
    futures[-1].result()
    elapsed = time.perf_counter() - start
    transactions = store.transactions_committed - before
    read_start = time.perf_counter()
    offset, read_batches = 0, 0
    while offset < log.log_end_offset:
        chunk = log.read(offset, 1 << 20)
        read_batches += len(chunk)
        offset += 100 * len(chunk)
    read_s = time.perf_counter() - read_start
    print(f"  read back {read_batches} batches with 1 MiB reads: {read_batches / read_s:.0f} batches/s")
    store.close()
    return elapsed, transactions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    batches = build_batches(args.batches)
    total_bytes = sum(map(len, batches))
    print(f"{len(batches)} batches of 100 records, {total_bytes / len(batches):.0f} bytes each")
    for round_number in range(args.rounds):
        directory = tempfile.mkdtemp(prefix="kraft-bench-")
        try:
            raw_s = raw_lmdb(batches, directory + "/raw")
            store_s, transactions = log_store(batches, directory + "/store")
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        print(f"round {round_number}: raw LMDB {len(batches) / raw_s:8.0f} batches/s "
              f"({total_bytes / raw_s / 1e6:5.0f} MB/s) | LogStore {len(batches) / store_s:8.0f} "
              f"batches/s ({total_bytes / store_s / 1e6:5.0f} MB/s, "
              f"{100 * len(batches) / store_s / 1e6:.2f} M records/s, {transactions} txns) | "
              f"ratio {raw_s / store_s:.2f}")


if __name__ == "__main__":
    main()
