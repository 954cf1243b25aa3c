"""Benchmark workloads: TOML files in the shape of the OpenMessaging Benchmark's workloads.

Theory of operation
-------------------
A workload file (``bench/workloads/*.toml``) names every parameter of one run: the
topics and their partitions, the records (size or payload file, keyed or not), the load
generators (producer and consumer processes, the target rate: records/s, ``"max"``, or a
share of the maximum such as ``"50%"``, which the harness measures first), the producer's
delivery settings (acks, linger, batch size), the cluster (1 node, or 3 nodes with a
replication factor) and the timing (warm-up, measured duration). ``load_workload`` reads a
file, applies command-line overrides, checks every key and value and returns a frozen
``Workload``; an unknown key or a bad value is an error that names the key and the file.

``mode = "live"`` (the default) runs producers and consumers at the same time for
``warmup_s + duration_s``; ``mode = "backlog"`` produces ``backlog_records`` first and then
times the consumers reading them from the beginning.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RATE_MAX = "max"
MODES = ("live", "backlog")
ACKS_CHOICES = ("0", "1", "all")
NODES_CHOICES = (1, 3)
PARTITIONS_MAX = 1024
PROCESSES_MAX = 16
RECORD_SIZE_MAX_BYTES = 1 << 20
DURATION_MAX_S = 3600.0


class WorkloadError(ValueError):
    """A workload file or override that cannot be run; the message names the key."""


@dataclass(frozen=True)
class Workload:
    name: str
    topics: int = 1
    partitions_per_topic: int = 1
    record_size: int = 100
    payload_file: str | None = None
    keyed: bool = False
    key_count: int = 1024
    producers: int = 1
    consumers: int = 1
    producer_rate: int | str = RATE_MAX  # records/s over all producers, "max", or "N%" of max
    acks: str = "1"
    replication_factor: int = 1
    nodes: int = 1
    linger_ms: float = 5
    batch_size: int = 262144
    warmup_s: float = 2.0
    duration_s: float = 10.0
    mode: str = "live"
    backlog_records: int = 1_000_000
    description: str = ""

    @property
    def fixed_rate(self) -> bool:
        return self.producer_rate != RATE_MAX

    @property
    def rate_share(self) -> float | None:
        """For ``producer_rate = "N%"``: N / 100 (the rate is that share of the maximum)."""
        if isinstance(self.producer_rate, str) and self.producer_rate.endswith("%"):
            return float(self.producer_rate[:-1]) / 100
        return None

    @property
    def acks_value(self) -> int | str:
        """What ``Producer(acks=...)`` takes."""
        return "all" if self.acks == "all" else int(self.acks)

    def payload(self) -> bytes | None:
        """The payload file's bytes (every record carries them), or None."""
        return Path(self.payload_file).read_bytes() if self.payload_file else None

    def value_size(self) -> int:
        payload = self.payload()
        return len(payload) if payload is not None else self.record_size

    def replace(self, **changes: Any) -> "Workload":
        return _checked(dataclasses.replace(self, **changes), "override")

    def params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in dataclasses.fields(Workload)}


def _percent(text: str) -> float | None:
    """``text`` as a percentage in (0, 100], or None."""
    try:
        percent = float(text)
    except ValueError:
        return None
    return percent if 0 < percent <= 100 else None


def _coerce(key: str, value: Any, where: str) -> Any:
    if key == "producer_rate":
        if value == RATE_MAX:
            return RATE_MAX
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        if isinstance(value, str) and value.isdigit() and int(value) > 0:
            return int(value)
        if isinstance(value, str) and value.endswith("%") and _percent(value[:-1]) is not None:
            return f"{_percent(value[:-1]):g}%"
        raise WorkloadError(f"{where}: producer_rate must be a positive number of records/s, \"max\" or a "
                            f"share of the maximum such as \"50%\", got {value!r}")
    if key == "acks":
        text = str(value).lower()
        text = "all" if text == "-1" else text
        if text not in ACKS_CHOICES:
            raise WorkloadError(f"{where}: acks must be 0, 1 or \"all\", got {value!r}")
        return text
    expected = _FIELDS[key].type
    if expected in ("int",):
        if isinstance(value, bool) or not isinstance(value, int):
            raise WorkloadError(f"{where}: {key} must be an integer, got {value!r}")
        return value
    if expected in ("float",):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise WorkloadError(f"{where}: {key} must be a number, got {value!r}")
        return float(value)
    if expected in ("bool",):
        if not isinstance(value, bool):
            raise WorkloadError(f"{where}: {key} must be true or false, got {value!r}")
        return value
    if not isinstance(value, str):
        raise WorkloadError(f"{where}: {key} must be a string, got {value!r}")
    return value


def _checked(w: Workload, where: str) -> Workload:
    def bad(key: str, rule: str) -> WorkloadError:
        return WorkloadError(f"{where}: {key} {rule}, got {getattr(w, key)!r}")

    for key, low, high in (("topics", 1, 64), ("partitions_per_topic", 1, PARTITIONS_MAX),
                           ("record_size", 1, RECORD_SIZE_MAX_BYTES), ("producers", 1, PROCESSES_MAX),
                           ("consumers", 0, PROCESSES_MAX), ("key_count", 1, 1 << 20),
                           ("batch_size", 1, 64 << 20), ("backlog_records", 1, 1 << 34)):
        if not low <= getattr(w, key) <= high:
            raise bad(key, f"must be between {low} and {high}")
    if w.nodes not in NODES_CHOICES:
        raise bad("nodes", "must be 1 or 3")
    if not 1 <= w.replication_factor <= w.nodes:
        raise bad("replication_factor", f"must be between 1 and nodes ({w.nodes})")
    if w.mode not in MODES:
        raise bad("mode", f"must be one of {', '.join(MODES)}")
    if w.mode == "backlog" and w.consumers < 1:
        raise bad("consumers", "must be at least 1 in backlog mode")
    if not 0 <= w.warmup_s <= DURATION_MAX_S:
        raise bad("warmup_s", f"must be between 0 and {DURATION_MAX_S}")
    if not 0 < w.duration_s <= DURATION_MAX_S:
        raise bad("duration_s", f"must be above 0 and at most {DURATION_MAX_S}")
    if w.linger_ms < 0:
        raise bad("linger_ms", "must not be negative")
    if w.payload_file is not None and not Path(w.payload_file).is_file():
        raise bad("payload_file", "must name a readable file")
    return w


def parse_workload(data: dict[str, Any], name: str, where: str) -> Workload:
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise WorkloadError(f"{where}: unknown key(s) {', '.join(unknown)}")
    values = {key: _coerce(key, value, where) for key, value in data.items()}
    values.setdefault("name", name)
    return _checked(Workload(**values), where)


def load_workload(path: Path, overrides: dict[str, Any] | None = None) -> Workload:
    """Read a workload file and apply ``overrides`` (keys as in the file; None values are ignored)."""
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise WorkloadError(f"{path}: {exc}") from None
    if isinstance(data.get("payload_file"), str) and not Path(data["payload_file"]).is_absolute():
        candidate = path.parent / data["payload_file"]
        if candidate.is_file():
            data["payload_file"] = str(candidate)
    for key, value in (overrides or {}).items():
        if value is not None:
            data[key] = value
    return parse_workload(data, path.stem, str(path))
