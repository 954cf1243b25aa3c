"""Topic-level configs: Kafka's dotted names, their defaults, validation and typed view.

Theory of operation
-------------------
A topic's configs travel and are stored as strings keyed by Kafka's dotted names
(``"retention.ms": "86400000"``), exactly as an admin client sends them and as
DescribeConfigs returns them. The image keeps only the keys a user set (overrides);
everything else falls back to a default. Defaults come in two layers: the built-in
``TOPIC_CONFIG_DEFAULTS`` and the node's own overrides of them (same dotted keys).

``validate_topic_configs`` is the gate a CreateTopics request passes before the controller
emits ConfigRecords, so the image only ever holds valid values. ``effective_topic_config``
merges overrides over defaults and parses them into a typed ``TopicConfig`` for the code
that enforces them (retention, produce size limit, acks=all).

Example: ``effective_topic_config({"retention.ms": "1000"})`` is
``TopicConfig(retention_ms=1000, retention_bytes=-1, min_insync_replicas=1,
max_message_bytes=1048588, cleanup_policy="delete")``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Mapping

RETENTION_MS = "retention.ms"
RETENTION_BYTES = "retention.bytes"
MIN_INSYNC_REPLICAS = "min.insync.replicas"
MAX_MESSAGE_BYTES = "max.message.bytes"
CLEANUP_POLICY = "cleanup.policy"

TOPIC_CONFIG_DEFAULTS: dict[str, str] = {
    RETENTION_MS: "604800000",  # 7 days
    RETENTION_BYTES: "-1",  # unlimited
    MIN_INSYNC_REPLICAS: "1",
    MAX_MESSAGE_BYTES: "1048588",  # Kafka's default: 1 MiB + batch overhead
    CLEANUP_POLICY: "delete",
}

LONG_MAX = 2**63 - 1  # Kafka's LONG configs
INT_MAX = 2**31 - 1  # Kafka's INT configs
# A batch must fit in one request frame with room to spare; larger is a configuration mistake.
MAX_MESSAGE_BYTES_CEILING = 64 * 1024 * 1024
CLEANUP_POLICIES_SUPPORTED = frozenset({"delete"})
CLEANUP_POLICIES_KNOWN = frozenset({"delete", "compact", "compact,delete", "delete,compact"})

SHOWN_CHARS_MAX = 80  # longest value quoted in an error message
_INTEGER = re.compile(r"-?[0-9]+")
_INTEGER_DIGITS_MAX = 20  # enough for any 64-bit value; longer is out of range, unparsed


@dataclass(frozen=True)
class TopicConfig:
    """The effective, typed configuration of one topic."""

    retention_ms: int  # -1 = keep forever
    retention_bytes: int  # -1 = no size limit, per partition
    min_insync_replicas: int
    max_message_bytes: int  # largest record batch accepted by produce
    cleanup_policy: str


def _shown(value: object) -> str:
    """A value as quoted in an error message, cut short so a huge value cannot flood a log."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS_MAX else text[: SHOWN_CHARS_MAX - 3] + "..."


def _parse_integer(value: str) -> int:
    """Parse a validated integer string (leading zeros allowed, as Java's parseLong does)."""
    digits = value.lstrip("-").lstrip("0") or "0"
    return -int(digits) if value.startswith("-") else int(digits)


def _integer_in(minimum: int, maximum: int) -> Callable[[str, str], str | None]:
    def check(key: str, value: str) -> str | None:
        if not isinstance(value, str) or not _INTEGER.fullmatch(value):
            return f"{key}: {_shown(value)} is not an integer"
        if len(value.lstrip("-").lstrip("0")) > _INTEGER_DIGITS_MAX:
            return f"{key}: {_shown(value)} is out of range [{minimum}, {maximum}]"
        number = _parse_integer(value)
        if not minimum <= number <= maximum:
            return f"{key}: {_shown(value)} is out of range [{minimum}, {maximum}]"
        return None

    return check


def _check_cleanup_policy(key: str, value: str) -> str | None:
    if value in CLEANUP_POLICIES_SUPPORTED:
        return None
    if value in CLEANUP_POLICIES_KNOWN:
        return f"{key}: {_shown(value)} is not supported yet (only 'delete')"
    return f"{key}: {_shown(value)} is not a cleanup policy (only 'delete')"


_VALIDATORS: dict[str, Callable[[str, str], str | None]] = {
    RETENTION_MS: _integer_in(-1, LONG_MAX),
    RETENTION_BYTES: _integer_in(-1, LONG_MAX),
    MIN_INSYNC_REPLICAS: _integer_in(1, INT_MAX),
    MAX_MESSAGE_BYTES: _integer_in(0, MAX_MESSAGE_BYTES_CEILING),
    CLEANUP_POLICY: _check_cleanup_policy,
}
assert _VALIDATORS.keys() == TOPIC_CONFIG_DEFAULTS.keys()


def validate_topic_configs(configs: Mapping[str, str]) -> tuple[str, str] | None:
    """``None`` if every key is known and every value valid, else
    ``("INVALID_CONFIG", message naming the first bad key and its value)``."""
    for key, value in configs.items():
        validator = _VALIDATORS.get(key)
        if validator is None:
            return "INVALID_CONFIG", f"unknown topic config {_shown(key)} (value {_shown(value)})"
        if not isinstance(value, str):
            return "INVALID_CONFIG", f"{key}: {_shown(value)} is not a string"
        problem = validator(key, value)
        if problem is not None:
            return "INVALID_CONFIG", problem
    return None


def effective_topic_config(
    configs: Mapping[str, str], defaults: Mapping[str, str] | None = None
) -> TopicConfig:
    """Merge a topic's overrides over the node's defaults over the built-in defaults.

    Raises ``ValueError`` naming the key when a default or an override is invalid (the
    image only holds validated overrides, so that means the node's defaults are wrong)."""
    merged = dict(TOPIC_CONFIG_DEFAULTS)
    for layer in (defaults or {}, configs):
        problem = validate_topic_configs(layer)
        if problem is not None:
            raise ValueError(problem[1])
        merged.update(layer)
    return TopicConfig(
        retention_ms=_parse_integer(merged[RETENTION_MS]),
        retention_bytes=_parse_integer(merged[RETENTION_BYTES]),
        min_insync_replicas=_parse_integer(merged[MIN_INSYNC_REPLICAS]),
        max_message_bytes=_parse_integer(merged[MAX_MESSAGE_BYTES]),
        cleanup_policy=merged[CLEANUP_POLICY],
    )
