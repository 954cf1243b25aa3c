"""Batch builders shared by the storage tests."""

from __future__ import annotations


from storage.batch import encode_batch


def make_batch(record_count: int = 1, timestamp_ms: int = 1_000, value_bytes: int = 10,
               tag: int = 0) -> bytes:
    """A msgpack batch of ``record_count`` records, all stamped ``timestamp_ms``."""
    value = tag.to_bytes(8, "big") + b"v" * max(0, value_bytes - 8)
    return encode_batch([(timestamp_ms, None, value, None) for _ in range(record_count)])
