"""Topic configs: each key's valid and invalid values, and the layering of defaults."""

from __future__ import annotations

import pytest

from kraft.topic_config import (
    MAX_MESSAGE_BYTES_CEILING,
    TOPIC_CONFIG_DEFAULTS,
    TopicConfig,
    effective_topic_config,
    validate_topic_configs,
)


def test_defaults_are_kafkas():
    assert TOPIC_CONFIG_DEFAULTS == {
        "retention.ms": "604800000",
        "retention.bytes": "-1",
        "min.insync.replicas": "1",
        "max.message.bytes": "1048588",
        "cleanup.policy": "delete",
    }


def test_defaults_are_valid():
    assert validate_topic_configs(TOPIC_CONFIG_DEFAULTS) is None
    assert validate_topic_configs({}) is None


VALID = [
    ("retention.ms", "-1"), ("retention.ms", "0"), ("retention.ms", "86400000"),
    ("retention.ms", str(2**63 - 1)), ("retention.ms", "007"),
    ("retention.bytes", "-1"), ("retention.bytes", "1073741824"),
    ("min.insync.replicas", "1"), ("min.insync.replicas", "3"),
    ("max.message.bytes", "0"), ("max.message.bytes", "1048588"),
    ("max.message.bytes", str(MAX_MESSAGE_BYTES_CEILING)),
    ("cleanup.policy", "delete"),
]

INVALID = [
    ("retention.ms", "-2"), ("retention.ms", "1.5"), ("retention.ms", ""),
    ("retention.ms", " 10"), ("retention.ms", "1_000"), ("retention.ms", "ten"),
    ("retention.ms", str(2**63)), ("retention.ms", "9" * 5000), ("retention.ms", "+5"),
    ("retention.bytes", "-2"), ("retention.bytes", "1e9"),
    ("min.insync.replicas", "0"), ("min.insync.replicas", "-1"), ("min.insync.replicas", "two"),
    ("min.insync.replicas", str(2**31)),
    ("max.message.bytes", "-1"), ("max.message.bytes", str(MAX_MESSAGE_BYTES_CEILING + 1)),
    ("cleanup.policy", "compact"), ("cleanup.policy", "compact,delete"),
    ("cleanup.policy", "Delete"), ("cleanup.policy", ""),
    ("segment.bytes", "1024"), ("retention_ms", "10"),
]


@pytest.mark.parametrize("key, value", VALID)
def test_valid_values(key, value):
    assert validate_topic_configs({key: value}) is None


@pytest.mark.parametrize("key, value", INVALID)
def test_invalid_values_name_the_key(key, value):
    result = validate_topic_configs({key: value})
    assert result is not None
    error, message = result
    assert error == "INVALID_CONFIG"
    assert key in message
    assert len(message) < 300  # a huge value is not copied whole into the message


def test_non_string_value_is_invalid():
    assert validate_topic_configs({"retention.ms": 1000})[0] == "INVALID_CONFIG"  # type: ignore[dict-item]


def test_compact_is_reported_as_unsupported():
    assert "not supported" in validate_topic_configs({"cleanup.policy": "compact"})[1]


def test_one_bad_key_among_good_ones():
    result = validate_topic_configs({"retention.ms": "10", "min.insync.replicas": "0"})
    assert result is not None and "min.insync.replicas" in result[1]


def test_effective_config_defaults():
    assert effective_topic_config({}) == TopicConfig(
        retention_ms=604800000, retention_bytes=-1, min_insync_replicas=1,
        max_message_bytes=1048588, cleanup_policy="delete",
    )


def test_effective_config_layers_topic_over_node_over_builtin():
    node_defaults = {"retention.ms": "1000", "min.insync.replicas": "2"}
    config = effective_topic_config({"retention.ms": "50", "max.message.bytes": "007"},
                                    node_defaults)
    assert config.retention_ms == 50  # topic override wins
    assert config.min_insync_replicas == 2  # node default
    assert config.max_message_bytes == 7
    assert config.retention_bytes == -1  # built-in


@pytest.mark.parametrize("configs, defaults", [
    ({"retention.ms": "x"}, None),
    ({}, {"min.insync.replicas": "0"}),
    ({}, {"unknown.key": "1"}),
])
def test_effective_config_refuses_invalid_layers(configs, defaults):
    with pytest.raises(ValueError):
        effective_topic_config(configs, defaults)
