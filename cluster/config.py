"""The node's configuration: one frozen dataclass, built from a TOML file and the environment.

Theory of operation
-------------------
``load_config(path, environ)`` is the only way a ``NodeConfig`` is made from the outside:

    TOML file (optional) --tomllib--> {key: value} --+
                                                      +--> validate each key --> NodeConfig
    KRAFT_<KEY_UPPER> environment variables ---------+
    (parsed with the key's type; they win over the file)

Every key has a default (``NodeConfig()`` is the embedded single-node default) and its unit
in its name. Each key is described once in ``_KEYS`` (its type and its check), so parsing,
environment overrides and error messages all come from the same table. An unknown key or a
bad value raises ``ConfigError`` whose message names where the value came from (file and
line, found by scanning the file for ``key =``, or the environment variable), the key and
what was wrong, e.g.::

    node.toml line 3: message_max_bytes must be a positive integer, got "abc"

Keys that only make sense together are checked after each key on its own: with
``controller_quorum_voters`` set (a multi-node cluster), a node whose ``node_id`` is a
voter must give ``controller_listener`` at this voter's port; a node that is not a voter is
broker-only: it must not set ``controller_listener`` and must set
``controller_quorum_bootstrap_servers`` (the voters' client listeners, where it fetches
metadata). Either way exactly one of ``cluster_password`` / ``cluster_password_file`` must
be set (a broker-only node sends it nowhere yet; it marks the node as configured for this
cluster, whose id every node derives from the voters list). A password file is
read here (its contents stripped), so a missing or empty file is reported like a bad
value, with its key's line; ``cluster_password`` then holds what the file said.

Nothing here opens sockets or data directories: the node does that with the result.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from cluster.protocol.errors import ConfigError

ENV_PREFIX = "KRAFT_"
LOG_FLUSH_MODES = ("sync", "os")  # "os": commit without fsync, unsafe against power loss
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
PORT_MAX = 65535
GIB = 1 << 30
TIB = 1 << 40


@dataclass(frozen=True)
class NodeConfig:
    node_id: int = 1
    listeners: str = "127.0.0.1:9092"
    advertised_listeners: str | None = None  # None: the same as listeners
    data_dir: str = "./kraft-data"
    rack: str | None = None
    socket_request_max_bytes: int = 104857600
    message_max_bytes: int = 1048588
    log_flush: str = "sync"
    log_retention_ms: int = 604800000
    log_retention_bytes: int = -1
    log_retention_check_interval_ms: int = 300000
    num_partitions: int = 1
    default_replication_factor: int = 1
    min_insync_replicas: int = 1
    auto_create_topics_enable: bool = False
    lmdb_map_size_bytes: int = GIB
    lmdb_map_size_max_bytes: int = TIB
    connections_max: int = 1000
    request_in_flight_per_connection_max: int = 64
    log_level: str = "INFO"
    fetch_max_wait_ms_max: int = 30000
    # The multi-node cluster (unset: the embedded single-node metadata log).
    controller_listener: str | None = None
    controller_quorum_voters: tuple[str, ...] = field(default_factory=tuple)
    # The voters' client listeners ("host:port"), where a broker-only node fetches metadata.
    controller_quorum_bootstrap_servers: tuple[str, ...] = field(default_factory=tuple)
    cluster_password: str | None = None
    cluster_password_file: str | None = None
    # Broker lifecycle: a broker silent for broker_session_timeout_ms is fenced. With the
    # Raft timings of kraft.raft_log (a new Raft leader within ~0.6 s), these defaults put
    # a dead partition leader's replacement in the metadata within ~2 s.
    broker_heartbeat_interval_ms: int = 250
    broker_session_timeout_ms: int = 1500
    auto_leader_rebalance_enable: bool = True
    leader_imbalance_check_interval_ms: int = 5000
    # An in-sync follower that has not caught up to the leader's log end for this long
    # is removed from the ISR.
    replica_lag_time_max_ms: int = 10000
    # Consumer groups (coordinated by the active controller): the session timeouts a member
    # may ask for (INVALID_SESSION_TIMEOUT outside them), and the heartbeat interval the
    # coordinator tells members to keep.
    group_min_session_timeout_ms: int = 1000
    group_max_session_timeout_ms: int = 300000
    group_heartbeat_interval_ms: int = 500

    @property
    def is_multi_node(self) -> bool:
        """True when the metadata lives in a Raft group of ``controller_quorum_voters``."""
        return bool(self.controller_quorum_voters)

    @property
    def is_broker_only(self) -> bool:
        """True for a node of a multi-node cluster that is not a voter: it runs no Raft and
        follows the metadata of the controllers (``cluster.metadata_follower``)."""
        return self.is_multi_node and self.node_id not in self.voters

    @property
    def voters(self) -> dict[int, str]:
        """``controller_quorum_voters`` as {voter id: "host:port"}."""
        return {int(voter_id): address for voter_id, _, address in
                (voter.partition("@") for voter in self.controller_quorum_voters)}

    @property
    def listener_host(self) -> str:
        return split_host_port(self.listeners)[0]

    @property
    def listener_port(self) -> int:
        return split_host_port(self.listeners)[1]

    @property
    def advertised_host_port(self) -> tuple[str, int]:
        return split_host_port(self.advertised_listeners or self.listeners)

    @property
    def log_sync(self) -> bool:
        return self.log_flush == "sync"

    def topic_config_defaults(self) -> dict[str, str]:
        """Node-level defaults of the topic configs (Kafka's dotted names)."""
        return {
            "retention.ms": str(self.log_retention_ms),
            "retention.bytes": str(self.log_retention_bytes),
            "min.insync.replicas": str(self.min_insync_replicas),
            "max.message.bytes": str(self.message_max_bytes),
        }


def split_host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


# -- checks: each takes the raw value and returns the typed value or raises _Bad(message) --


class _Bad(Exception):
    """A value failed its check; the message completes "<key> must be ..."."""


def _show(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _integer(minimum: int, wording: str) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise _Bad(f"must be {wording}, got {_show(value)}")
        return value

    return check


_positive = _integer(1, "a positive integer")
_non_negative = _integer(0, "an integer >= 0")
_limit_or_unlimited = _integer(-1, "an integer >= -1 (-1 = no limit)")


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"must be true or false, got {_show(value)}")
    return value


def _non_empty_string(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Bad(f"must be a non-empty string, got {_show(value)}")
    return value


def _optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def optional(value: Any) -> Any:
        return None if value is None else check(value)

    return optional


def _one_of(choices: tuple[str, ...], normalise: Callable[[str], str] = str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str) or normalise(value) not in choices:
            raise _Bad(f"must be one of {', '.join(choices)}, got {_show(value)}")
        return normalise(value)

    return check


_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})$")


def _host_port(value: Any) -> str:
    match = _HOST_PORT.match(value) if isinstance(value, str) else None
    if match is None or not 1 <= int(match.group(2)) <= PORT_MAX:
        raise _Bad(f'must be "host:port" with a port from 1 to {PORT_MAX}, got {_show(value)}')
    return value


_VOTER = re.compile(r"^([0-9]+)@(.+)$")


def _quorum_voters(value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)):
        raise _Bad(f'must be a list of "id@host:port" strings, got {_show(value)}')
    seen: set[int] = set()
    for voter in value:
        match = _VOTER.match(voter) if isinstance(voter, str) else None
        if match is None:
            raise _Bad(f'must be a list of "id@host:port" strings, got {_show(voter)}')
        try:
            _host_port(match.group(2))
        except _Bad:
            raise _Bad(f'must be a list of "id@host:port" strings, got {_show(voter)}') from None
        if int(match.group(1)) in seen:
            raise _Bad(f"must name each voter id once, got {match.group(1)} twice")
        seen.add(int(match.group(1)))
    return tuple(value)


def _host_port_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)):
        raise _Bad(f'must be a list of "host:port" strings, got {_show(value)}')
    for address in value:
        try:
            _host_port(address)
        except _Bad:
            raise _Bad(f'must be a list of "host:port" strings, got {_show(address)}') from None
    return tuple(value)


# key -> (check, how an environment string becomes a value of the key's type)
def _env_int(text: str) -> Any:
    try:
        return int(text.strip())
    except ValueError:
        return text


def _env_bool(text: str) -> Any:
    lowered = text.strip().lower()
    return {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(lowered, text)


def _env_str(text: str) -> Any:
    return text


def _env_optional_str(text: str) -> Any:
    return None if text == "" else text


def _env_list(text: str) -> Any:
    return [item.strip() for item in text.split(",") if item.strip()]


_KEYS: dict[str, tuple[Callable[[Any], Any], Callable[[str], Any]]] = {
    "node_id": (_non_negative, _env_int),
    "listeners": (_host_port, _env_str),
    "advertised_listeners": (_optional(_host_port), _env_optional_str),
    "data_dir": (_non_empty_string, _env_str),
    "rack": (_optional(_non_empty_string), _env_optional_str),
    "socket_request_max_bytes": (_positive, _env_int),
    "message_max_bytes": (_positive, _env_int),
    "log_flush": (_one_of(LOG_FLUSH_MODES), _env_str),
    "log_retention_ms": (_limit_or_unlimited, _env_int),
    "log_retention_bytes": (_limit_or_unlimited, _env_int),
    "log_retention_check_interval_ms": (_positive, _env_int),
    "num_partitions": (_positive, _env_int),
    "default_replication_factor": (_positive, _env_int),
    "min_insync_replicas": (_positive, _env_int),
    "auto_create_topics_enable": (_boolean, _env_bool),
    "lmdb_map_size_bytes": (_positive, _env_int),
    "lmdb_map_size_max_bytes": (_positive, _env_int),
    "connections_max": (_positive, _env_int),
    "request_in_flight_per_connection_max": (_positive, _env_int),
    "log_level": (_one_of(LOG_LEVELS, str.upper), _env_str),
    "fetch_max_wait_ms_max": (_non_negative, _env_int),
    "controller_listener": (_optional(_host_port), _env_optional_str),
    "controller_quorum_voters": (_quorum_voters, _env_list),
    "controller_quorum_bootstrap_servers": (_host_port_list, _env_list),
    "cluster_password": (_optional(_non_empty_string), _env_optional_str),
    "cluster_password_file": (_optional(_non_empty_string), _env_optional_str),
    "broker_heartbeat_interval_ms": (_positive, _env_int),
    "broker_session_timeout_ms": (_positive, _env_int),
    "auto_leader_rebalance_enable": (_boolean, _env_bool),
    "leader_imbalance_check_interval_ms": (_positive, _env_int),
    "replica_lag_time_max_ms": (_positive, _env_int),
    "group_min_session_timeout_ms": (_positive, _env_int),
    "group_max_session_timeout_ms": (_positive, _env_int),
    "group_heartbeat_interval_ms": (_positive, _env_int),
}
assert set(_KEYS) == {f.name for f in dataclasses.fields(NodeConfig)}


def _line_of(text: str, key: str) -> int | None:
    pattern = re.compile(rf"^[ \t]*[\"']?{re.escape(key)}[\"']?[ \t]*=", re.MULTILINE)
    match = pattern.search(text)
    return text.count("\n", 0, match.start()) + 1 if match else None


def load_config(path: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None) -> NodeConfig:
    """Read the TOML file (if any), apply ``KRAFT_*`` overrides, validate; raise ConfigError."""
    environ = os.environ if environ is None else environ
    text = ""
    name = "default config" if path is None else str(path)
    values: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"{name}: cannot read the config file: {exc.strerror or exc}") from None
        try:
            values = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{name}: not valid TOML: {exc}") from None

    def where(key: str) -> str:
        line = _line_of(text, key)
        return f"{name} line {line}" if line else name

    checked: dict[str, Any] = {}
    for key, value in values.items():
        if key not in _KEYS:
            raise ConfigError(f"{where(key)}: unknown key {key}")
        try:
            checked[key] = _KEYS[key][0](value)
        except _Bad as exc:
            raise ConfigError(f"{where(key)}: {key} {exc}") from None
    for key, (check, from_env) in _KEYS.items():
        variable = ENV_PREFIX + key.upper()
        if variable not in environ:
            continue
        try:
            checked[key] = check(from_env(environ[variable]))
        except _Bad as exc:
            raise ConfigError(f"environment {variable}: {key} {exc}") from None
    config = NodeConfig(**checked)
    if config.lmdb_map_size_max_bytes < config.lmdb_map_size_bytes:
        raise ConfigError(
            f"{where('lmdb_map_size_max_bytes')}: lmdb_map_size_max_bytes must be >= "
            f"lmdb_map_size_bytes ({config.lmdb_map_size_bytes}), got {config.lmdb_map_size_max_bytes}"
        )
    if config.broker_session_timeout_ms <= config.broker_heartbeat_interval_ms:
        raise ConfigError(
            f"{where('broker_session_timeout_ms')}: broker_session_timeout_ms must be greater than "
            f"broker_heartbeat_interval_ms ({config.broker_heartbeat_interval_ms}), "
            f"got {config.broker_session_timeout_ms}"
        )
    if config.group_max_session_timeout_ms < config.group_min_session_timeout_ms:
        raise ConfigError(
            f"{where('group_max_session_timeout_ms')}: group_max_session_timeout_ms must be >= "
            f"group_min_session_timeout_ms ({config.group_min_session_timeout_ms}), "
            f"got {config.group_max_session_timeout_ms}"
        )
    if config.group_heartbeat_interval_ms >= config.group_min_session_timeout_ms:
        raise ConfigError(
            f"{where('group_heartbeat_interval_ms')}: group_heartbeat_interval_ms must be less than "
            f"group_min_session_timeout_ms ({config.group_min_session_timeout_ms}), "
            f"got {config.group_heartbeat_interval_ms}"
        )
    return _check_cluster(config, where)


def _check_cluster(config: NodeConfig, where: Callable[[str], str]) -> NodeConfig:
    """The cross-key rules of a multi-node config; reads the password file."""
    if not config.is_multi_node:
        if config.controller_quorum_bootstrap_servers:
            raise ConfigError(
                f"{where('controller_quorum_bootstrap_servers')}: controller_quorum_bootstrap_servers "
                "must not be set without controller_quorum_voters"
            )
        return config
    if config.is_broker_only:
        _check_broker_only(config, where)
    else:
        _check_voter(config, where)
    if (config.cluster_password is None) == (config.cluster_password_file is None):
        raise ConfigError(
            f"{where('controller_quorum_voters')}: exactly one of cluster_password and "
            "cluster_password_file must be set when controller_quorum_voters is set"
        )
    if config.cluster_password_file is not None:
        try:
            password = Path(config.cluster_password_file).read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ConfigError(
                f"{where('cluster_password_file')}: cluster_password_file cannot be read: {reason}"
            ) from None
        if not password:
            raise ConfigError(
                f"{where('cluster_password_file')}: cluster_password_file must hold a non-empty password, "
                f"got an empty file {_show(config.cluster_password_file)}"
            )
        config = dataclasses.replace(config, cluster_password=password)
    return config


def _check_voter(config: NodeConfig, where: Callable[[str], str]) -> None:
    """A voter runs Raft on controller_listener, at the port the voters list gives it."""
    if config.controller_listener is None:
        raise ConfigError(
            f"{where('controller_quorum_voters')}: controller_listener must be set when "
            "controller_quorum_voters is set (this node is a voter)"
        )
    own_port = split_host_port(config.voters[config.node_id])[1]
    if split_host_port(config.controller_listener)[1] != own_port:
        raise ConfigError(
            f"{where('controller_listener')}: controller_listener must use this voter's port {own_port} "
            f"(from controller_quorum_voters), got {_show(config.controller_listener)}"
        )
    if config.controller_listener == config.listeners:
        raise ConfigError(
            f"{where('controller_listener')}: controller_listener must differ from listeners, "
            f"got {_show(config.controller_listener)} for both"
        )


def _check_broker_only(config: NodeConfig, where: Callable[[str], str]) -> None:
    """A node not in the voters list runs no Raft: no controller listener, and it must know
    the voters' client listeners to fetch metadata from. It still needs the cluster password
    (checked by the caller) to be configured as a member of the same cluster, although it
    sends the password nowhere today: it never speaks Raft."""
    if config.controller_listener is not None:
        raise ConfigError(
            f"{where('controller_listener')}: controller_listener must not be set on a broker-only node "
            f"(node_id {config.node_id} is not in controller_quorum_voters {sorted(config.voters)}), "
            f"got {_show(config.controller_listener)}"
        )
    if not config.controller_quorum_bootstrap_servers:
        raise ConfigError(
            f"{where('controller_quorum_voters')}: controller_quorum_bootstrap_servers (the voters' client "
            f"listeners) must be set on a broker-only node (node_id {config.node_id} is not in "
            f"controller_quorum_voters {sorted(config.voters)})"
        )
    if config.listeners in config.controller_quorum_bootstrap_servers:
        raise ConfigError(
            f"{where('controller_quorum_bootstrap_servers')}: controller_quorum_bootstrap_servers must not "
            f"list this broker-only node's own listeners {_show(config.listeners)}"
        )
