"""A latency histogram with bounded relative error, in the spirit of HdrHistogram.

Theory of operation
-------------------
Values are non-negative integers (microseconds in the harness). A value below 256 has a
bucket of its own; above that, each power of two is cut into 128 equal sub-buckets, so a
bucket's width is under 1/128 of its values (relative error < 0.8 %) and a histogram of
anything up to an hour holds at most a few thousand buckets. Counts live in a sparse dict
``bucket index -> count``, which merges by addition and travels between processes as a
plain dict; the exact minimum and maximum are kept beside it. A percentile is the highest
value of the bucket holding that rank (never an under-estimate).
"""

from __future__ import annotations

from typing import Any, Iterable

SUB_BUCKET_BITS = 7
SUB_BUCKETS = 1 << SUB_BUCKET_BITS  # 128
LINEAR_LIMIT = 2 * SUB_BUCKETS  # values below this are exact
PERCENTILES = (50.0, 99.0, 99.9)


def bucket_index(value: int) -> int:
    """Index of the bucket holding ``value`` (0 <= value)."""
    assert value >= 0, value
    shift = value.bit_length() - (SUB_BUCKET_BITS + 1)
    if shift <= 0:
        return value
    return shift * SUB_BUCKETS + (value >> shift)


def bucket_bounds(index: int) -> tuple[int, int]:
    """The lowest and highest value that fall into bucket ``index``."""
    if index < LINEAR_LIMIT:
        return index, index
    shift = index // SUB_BUCKETS - 1
    mantissa = index - shift * SUB_BUCKETS
    return mantissa << shift, ((mantissa + 1) << shift) - 1


class Histogram:
    __slots__ = ("counts", "total", "min_value", "max_value")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.total = 0
        self.min_value: int | None = None
        self.max_value: int | None = None

    def record(self, value: int, count: int = 1) -> None:
        value = max(0, int(value))
        index = bucket_index(value)
        self.counts[index] = self.counts.get(index, 0) + count
        self.total += count
        if self.max_value is None or value > self.max_value:
            self.max_value = value
        if self.min_value is None or value < self.min_value:
            self.min_value = value

    def record_many(self, values: Iterable[int]) -> None:
        for value in values:
            self.record(value)

    def merge(self, other: "Histogram") -> "Histogram":
        for index, count in other.counts.items():
            self.counts[index] = self.counts.get(index, 0) + count
        self.total += other.total
        if other.max_value is not None and (self.max_value is None or other.max_value > self.max_value):
            self.max_value = other.max_value
        if other.min_value is not None and (self.min_value is None or other.min_value < self.min_value):
            self.min_value = other.min_value
        return self

    def percentile(self, percent: float) -> int | None:
        """The smallest bucket bound at or above ``percent`` % of the values; None when empty."""
        if not self.total:
            return None
        assert 0.0 <= percent <= 100.0, percent
        rank = max(1, -(-self.total * percent // 100))  # ceil, at least the first value
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                high = bucket_bounds(index)[1]
                assert self.max_value is not None
                return min(high, self.max_value)
        return self.max_value

    def summary(self, scale: float = 1.0) -> dict[str, float | int | None]:
        """count, p50, p99, p99.9, max (values divided by ``scale``)."""
        out: dict[str, float | int | None] = {"count": self.total}
        for percent in PERCENTILES:
            value = self.percentile(percent)
            out[f"p{percent:g}"] = None if value is None else value / scale
        out["max"] = None if self.max_value is None else self.max_value / scale
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"counts": {str(k): v for k, v in self.counts.items()}, "total": self.total,
                "min": self.min_value, "max": self.max_value}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Histogram":
        h = cls()
        h.counts = {int(k): int(v) for k, v in data["counts"].items()}
        h.total = int(data["total"])
        h.min_value = data["min"]
        h.max_value = data["max"]
        return h
