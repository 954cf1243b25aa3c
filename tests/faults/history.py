"""The history of a fault run: one JSON object per line, one line per operation event.

Theory of operation
-------------------
``History`` owns the file and a monotonic clock started with the run. Workers call
``invoke`` before an operation and then exactly one of ``ok`` / ``fail`` / ``info`` when its
outcome is known; one-shot observations (a consumer poll, a high-watermark probe, a fault)
are written with ``ok`` / ``info`` directly. Each call appends one line under a lock and
keeps the event in memory, so the checkers read ``History.events`` (or ``load``) without
parsing the file again.

An event is a dict with these keys (absent when they do not apply)::

    index      position in the history (0, 1, 2, ...)
    type       "invoke" | "ok" | "fail" | "info"
    process    who did it: "p0" (a producer), "g0" (a group member), "c0" (a plain
               consumer), "o0" (the committed-offsets prober), "setup", "drain", "hw-2",
               "nemesis"
    f          what: "send", "join", "assign", "revoke", "poll", "commit", "committed",
               "hw", "fault", "heal", "drain-end", ...
    value      the operation's value: a unique integer for "send", a list of
               [partition, offset, value] for "poll", a dict for the rest
    partition, offset, assignment, reason, error
    time       seconds since the run started (monotonic clock)

Outcomes (Jepsen's convention): "ok" — it happened; "fail" — it definitely did not happen
(the broker refused before appending, or the client never sent it); "info" — unknown
(timeout, disconnect, an error that may come after the append).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Iterable, TextIO

Event = dict[str, Any]

INVOKE = "invoke"
OK = "ok"
FAIL = "fail"
INFO = "info"
OUTCOMES = (OK, FAIL, INFO)


class History:
    """Thread-safe append-only operation log, in memory and (optionally) as a JSONL file."""

    def __init__(self, path: Path | None = None, clock: Any = time.monotonic) -> None:
        self.path = path
        self._clock = clock
        self._started_s = clock()
        self._lock = threading.Lock()
        self._file: TextIO | None = open(path, "w", encoding="utf-8") if path is not None else None
        self.events: list[Event] = []

    def last_index(self) -> int:
        """The index of the newest event (-1 when empty): what happened before "now"."""
        with self._lock:
            return len(self.events) - 1

    def now_s(self) -> float:
        """Seconds since the history started."""
        return self._clock() - self._started_s

    def _append(self, kind: str, process: str, f: str, value: Any = None, **fields: Any) -> Event:
        with self._lock:
            event: Event = {"index": len(self.events), "type": kind, "process": process, "f": f,
                            "value": value, "time": round(self.now_s(), 6)}
            event.update((k, v) for k, v in fields.items() if v is not None)
            self.events.append(event)
            if self._file is not None:
                self._file.write(json.dumps(event, separators=(",", ":")) + "\n")
            return event

    def invoke(self, process: str, f: str, value: Any = None, **fields: Any) -> Event:
        return self._append(INVOKE, process, f, value, **fields)

    def ok(self, process: str, f: str, value: Any = None, **fields: Any) -> Event:
        return self._append(OK, process, f, value, **fields)

    def fail(self, process: str, f: str, value: Any = None, **fields: Any) -> Event:
        return self._append(FAIL, process, f, value, **fields)

    def info(self, process: str, f: str, value: Any = None, **fields: Any) -> Event:
        return self._append(INFO, process, f, value, **fields)

    def flush(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def load(path: Path) -> list[Event]:
    """Read a history file back (a truncated last line, from a crash, is skipped)."""
    events: list[Event] = []
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return events


def write(path: Path, events: Iterable[Event]) -> None:
    with open(path, "w", encoding="utf-8") as out:
        for event in events:
            out.write(json.dumps(event, separators=(",", ":")) + "\n")


def decode_value(raw: bytes | None) -> Any:
    """A record value as the workload wrote it: the decimal text of a unique integer, maybe
    followed by a space and padding. Anything else is kept as text (its first 100
    characters) so a foreign record is still attributable."""
    if raw is None:
        return None
    try:
        return int(raw.split(b" ", 1)[0])
    except ValueError:
        return raw[:100].decode("utf-8", "replace")


def encode_value(value: int, padding_bytes: int = 0) -> bytes:
    if padding_bytes:
        return b"%d %s" % (value, b"x" * padding_bytes)
    return b"%d" % value
