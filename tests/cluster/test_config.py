"""NodeConfig: defaults, TOML, KRAFT_* overrides, and errors that name the key and the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.config import NodeConfig, load_config
from cluster.protocol.errors import ConfigError

pytestmark = pytest.mark.timeout(30)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def test_defaults_are_the_embedded_single_node() -> None:
    config = load_config(None, environ={})
    assert config == NodeConfig()
    assert config.node_id == 1
    assert (config.listener_host, config.listener_port) == ("127.0.0.1", 9092)
    assert config.advertised_host_port == ("127.0.0.1", 9092)
    assert config.data_dir == "./kraft-data"
    assert config.message_max_bytes == 1048588
    assert config.socket_request_max_bytes == 104857600
    assert config.log_sync is True
    assert config.auto_create_topics_enable is False
    assert config.controller_quorum_voters == ()
    assert config.topic_config_defaults() == {
        "retention.ms": "604800000", "retention.bytes": "-1",
        "min.insync.replicas": "1", "max.message.bytes": "1048588",
    }


def test_toml_values_are_read(tmp_path: Path) -> None:
    path = write(tmp_path, """
node_id = 7
listeners = "127.0.0.1:19092"
advertised_listeners = "node7.example:9092"
data_dir = "/var/lib/kraft"
rack = "r1"
message_max_bytes = 2048
log_flush = "os"
log_retention_ms = -1
auto_create_topics_enable = true
log_level = "debug"
controller_listener = "127.0.0.1:19093"
controller_quorum_voters = ["7@127.0.0.1:19093", "2@127.0.0.1:29093"]
cluster_password = "s3cret"
""")
    config = load_config(path, environ={})
    assert config.node_id == 7
    assert config.listener_port == 19092
    assert config.advertised_host_port == ("node7.example", 9092)
    assert config.rack == "r1"
    assert config.message_max_bytes == 2048
    assert config.log_sync is False
    assert config.log_retention_ms == -1
    assert config.auto_create_topics_enable is True
    assert config.log_level == "DEBUG"
    assert config.controller_quorum_voters == ("7@127.0.0.1:19093", "2@127.0.0.1:29093")
    assert config.voters == {7: "127.0.0.1:19093", 2: "127.0.0.1:29093"}
    assert config.is_multi_node
    assert config.cluster_password == "s3cret"


def test_environment_overrides_the_file_with_the_key_type(tmp_path: Path) -> None:
    path = write(tmp_path, "node_id = 2\nmessage_max_bytes = 100\n")
    config = load_config(path, environ={
        "KRAFT_MESSAGE_MAX_BYTES": "4096",
        "KRAFT_AUTO_CREATE_TOPICS_ENABLE": "true",
        "KRAFT_RACK": "east",
        "KRAFT_CONTROLLER_QUORUM_VOTERS": "1@h1:9093, 2@h2:9093",
        "KRAFT_CONTROLLER_LISTENER": "h2:9093",
        "KRAFT_CLUSTER_PASSWORD": "pw",
        "UNRELATED": "x",
    })
    assert config.node_id == 2
    assert config.message_max_bytes == 4096
    assert config.auto_create_topics_enable is True
    assert config.rack == "east"
    assert config.controller_quorum_voters == ("1@h1:9093", "2@h2:9093")


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, environ={"KRAFT_NODE_ID": "one"})
    assert "KRAFT_NODE_ID" in info.value.message and "node_id" in info.value.message
    assert '"one"' in info.value.message


def test_message_names_file_line_key_and_value(tmp_path: Path) -> None:
    path = write(tmp_path, '# comment\nnode_id = 1\nmessage_max_bytes = "abc"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.message == f'{path} line 3: message_max_bytes must be a positive integer, got "abc"'


def test_unknown_key_names_key_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'node_id = 1\n\nmessage_max_byte = 10\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert "line 3" in info.value.message and "unknown key message_max_byte" in info.value.message


BAD_VALUES = [
    ("node_id", "-1"),
    ("node_id", "true"),
    ("node_id", "1.5"),
    ("listeners", '"127.0.0.1"'),
    ("listeners", '"127.0.0.1:0"'),
    ("listeners", '"127.0.0.1:70000"'),
    ("listeners", "9092"),
    ("advertised_listeners", '"host:port"'),
    ("data_dir", '""'),
    ("rack", "3"),
    ("socket_request_max_bytes", "0"),
    ("message_max_bytes", '"abc"'),
    ("log_flush", '"sometimes"'),
    ("log_retention_ms", "-2"),
    ("log_retention_bytes", "-5"),
    ("log_retention_check_interval_ms", "0"),
    ("num_partitions", "0"),
    ("default_replication_factor", "0"),
    ("min_insync_replicas", "0"),
    ("auto_create_topics_enable", '"yes"'),
    ("lmdb_map_size_bytes", "0"),
    ("lmdb_map_size_max_bytes", "-1"),
    ("connections_max", "0"),
    ("request_in_flight_per_connection_max", "0"),
    ("log_level", '"LOUD"'),
    ("fetch_max_wait_ms_max", "-1"),
    ("controller_listener", '"nowhere"'),
    ("controller_quorum_voters", '"1@h:9093"'),
    ("controller_quorum_voters", '["h:9093"]'),
    ("controller_quorum_voters", '["1@h:9093", "1@g:9093"]'),
    ("controller_quorum_bootstrap_servers", '"h:9092"'),
    ("controller_quorum_bootstrap_servers", '["h"]'),
    ("cluster_password", '""'),
    ("cluster_password_file", '""'),
    ("broker_heartbeat_interval_ms", "0"),
    ("broker_session_timeout_ms", '"1s"'),
    ("auto_leader_rebalance_enable", "1"),
    ("leader_imbalance_check_interval_ms", "-5"),
    ("replica_lag_time_max_ms", "0"),
    ("replica_lag_time_max_ms", '"10s"'),
]


@pytest.mark.parametrize("key,toml_value", BAD_VALUES)
def test_every_bad_value_names_the_key_and_the_line(tmp_path: Path, key: str, toml_value: str) -> None:
    path = write(tmp_path, f"# a node\n\n{key} = {toml_value}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = info.value.message
    assert message.startswith(f"{path} line 3: {key} "), message


def test_map_size_max_below_initial_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "lmdb_map_size_bytes = 4096\nlmdb_map_size_max_bytes = 1024\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert "line 2" in info.value.message and "lmdb_map_size_max_bytes" in info.value.message


def test_invalid_toml_and_missing_file_name_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "node_id = = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(path) in info.value.message and "line 1" in info.value.message
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.toml", environ={})
    assert "missing.toml" in info.value.message


def test_config_is_frozen() -> None:
    config = NodeConfig()
    with pytest.raises(AttributeError):
        config.node_id = 2  # type: ignore[misc]


# -- the multi-node keys: rules that involve several keys ---------------------------------

CLUSTER = """node_id = 1
listeners = "127.0.0.1:9092"
controller_listener = "127.0.0.1:9093"
controller_quorum_voters = ["1@127.0.0.1:9093", "2@127.0.0.1:9193", "3@127.0.0.1:9293"]
"""


def test_multi_node_defaults_and_derived_values(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, CLUSTER + 'cluster_password = "pw"\n'), environ={})
    assert config.voters == {1: "127.0.0.1:9093", 2: "127.0.0.1:9193", 3: "127.0.0.1:9293"}
    assert config.broker_heartbeat_interval_ms < config.broker_session_timeout_ms <= 2000
    assert config.auto_leader_rebalance_enable is True
    assert config.leader_imbalance_check_interval_ms > 0
    assert not NodeConfig().is_multi_node


def test_password_file_is_read_and_stripped(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("  hunter2\n")
    config = load_config(write(tmp_path, CLUSTER + f'cluster_password_file = "{secret}"\n'), environ={})
    assert config.cluster_password == "hunter2"


@pytest.mark.parametrize("extra,line,words", [
    ("", 4, "exactly one of cluster_password and cluster_password_file"),
    ('cluster_password = "pw"\ncluster_password_file = "/etc/x"\n', 4, "exactly one"),
    ('cluster_password_file = "/nonexistent/secret"\n', 5, "cluster_password_file cannot be read"),
])
def test_password_rules(tmp_path: Path, extra: str, line: int, words: str) -> None:
    path = write(tmp_path, CLUSTER + extra)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.message.startswith(f"{path} line {line}: "), info.value.message
    assert words in info.value.message


def test_empty_password_file_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(" \n")
    path = write(tmp_path, CLUSTER + f'cluster_password_file = "{secret}"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert f"{path} line 5: cluster_password_file must hold a non-empty password" in info.value.message


@pytest.mark.parametrize("replace,key,words", [
    (("node_id = 1", "node_id = 4"), "controller_listener", "must not be set on a broker-only node"),
    (('controller_listener = "127.0.0.1:9093"\n', ""), "controller_quorum_voters", "controller_listener must be set"),
    (('controller_listener = "127.0.0.1:9093"', 'controller_listener = "127.0.0.1:9999"'), "controller_listener",
     "must use this voter's port 9093"),
    (('listeners = "127.0.0.1:9092"', 'listeners = "127.0.0.1:9093"'), "controller_listener",
     "must differ from listeners"),
])
def test_voter_rules_name_the_key_and_line(tmp_path: Path, replace: tuple[str, str], key: str, words: str) -> None:
    text = CLUSTER.replace(*replace) + 'cluster_password = "pw"\n'
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    lines = text.splitlines()
    line = next(i for i, l in enumerate(lines, 1) if l.startswith(key + " ="))
    assert info.value.message.startswith(f"{path} line {line}: "), info.value.message
    assert words in info.value.message


def test_session_timeout_must_exceed_the_heartbeat_interval(tmp_path: Path) -> None:
    path = write(tmp_path, "broker_heartbeat_interval_ms = 500\nbroker_session_timeout_ms = 500\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert "line 2: broker_session_timeout_ms must be greater than broker_heartbeat_interval_ms" in info.value.message


# -- broker-only nodes: not in the voters list ----------------------------------------------

BROKER_ONLY = """node_id = 4
listeners = "127.0.0.1:9492"
controller_quorum_voters = ["1@127.0.0.1:9093", "2@127.0.0.1:9193", "3@127.0.0.1:9293"]
controller_quorum_bootstrap_servers = ["127.0.0.1:9092", "127.0.0.1:9192"]
"""


def test_a_node_outside_the_voters_is_broker_only(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BROKER_ONLY + 'cluster_password = "pw"\n'), environ={})
    assert config.is_multi_node and config.is_broker_only
    assert config.controller_listener is None
    assert config.controller_quorum_bootstrap_servers == ("127.0.0.1:9092", "127.0.0.1:9192")
    voter = load_config(write(tmp_path, CLUSTER + 'cluster_password = "pw"\n'), environ={})
    assert voter.is_multi_node and not voter.is_broker_only and not NodeConfig().is_broker_only


def test_bootstrap_servers_come_from_the_environment_too(tmp_path: Path) -> None:
    path = write(tmp_path, BROKER_ONLY.replace("controller_quorum_bootstrap_servers", "# none") + 'cluster_password = "pw"\n')
    config = load_config(path, environ={"KRAFT_CONTROLLER_QUORUM_BOOTSTRAP_SERVERS": "h1:9092, h2:9092"})
    assert config.controller_quorum_bootstrap_servers == ("h1:9092", "h2:9092")


@pytest.mark.parametrize("text,key,words", [
    (BROKER_ONLY + 'controller_listener = "127.0.0.1:9493"\ncluster_password = "pw"\n', "controller_listener",
     "controller_listener must not be set on a broker-only node (node_id 4 is not in controller_quorum_voters"),
    (BROKER_ONLY.replace("controller_quorum_bootstrap_servers", "# none") + 'cluster_password = "pw"\n',
     "controller_quorum_voters", "controller_quorum_bootstrap_servers (the voters' client listeners) must be set"),
    (BROKER_ONLY, "controller_quorum_voters", "exactly one of cluster_password and cluster_password_file"),
    (BROKER_ONLY.replace("9192", "9492") + 'cluster_password = "pw"\n', "controller_quorum_bootstrap_servers",
     "must not list this broker-only node's own listeners"),
    ('controller_quorum_bootstrap_servers = ["127.0.0.1:9092"]\n', "controller_quorum_bootstrap_servers",
     "must not be set without controller_quorum_voters"),
])
def test_broker_only_rules_name_the_key_and_line(tmp_path: Path, text: str, key: str, words: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    line = next(i for i, l in enumerate(text.splitlines(), 1) if l.startswith(key + " ="))
    assert info.value.message.startswith(f"{path} line {line}: "), info.value.message
    assert words in info.value.message


def test_replica_lag_time_max_ms_defaults_reads_and_overrides(tmp_path: Path) -> None:
    assert load_config(None, environ={}).replica_lag_time_max_ms == 10000
    path = write(tmp_path, "replica_lag_time_max_ms = 2500\n")
    assert load_config(path, environ={}).replica_lag_time_max_ms == 2500
    config = load_config(path, environ={"KRAFT_REPLICA_LAG_TIME_MAX_MS": "700"})
    assert config.replica_lag_time_max_ms == 700


def test_replica_lag_time_max_ms_must_be_positive(tmp_path: Path) -> None:
    path = write(tmp_path, "node_id = 1\nreplica_lag_time_max_ms = -1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.message == f"{path} line 2: replica_lag_time_max_ms must be a positive integer, got -1"
    with pytest.raises(ConfigError) as info:
        load_config(None, environ={"KRAFT_REPLICA_LAG_TIME_MAX_MS": "0"})
    assert info.value.message == (
        "environment KRAFT_REPLICA_LAG_TIME_MAX_MS: replica_lag_time_max_ms must be a positive integer, got 0"
    )
