"""The single-node default is a cluster of one: Raft on loopback with a generated password."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from cluster.config import load_config
from cluster.node import EMBEDDED_CONTROLLER_LISTENER, PASSWORD_FILE, embedded_quorum


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on ``port`` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, port_hex = local.split(":")
        if state == "0A" and int(port_hex, 16) == port:  # 0A = LISTEN
            octets = [str(int(address[i:i + 2], 16)) for i in (6, 4, 2, 0)]
            found.add(".".join(octets))
    return found


def test_the_default_config_becomes_one_voter_on_loopback_with_a_private_password(tmp_path: Path) -> None:
    config = load_config(None, environ={"KRAFT_DATA_DIR": str(tmp_path / "data")})
    assert not config.is_multi_node
    embedded = embedded_quorum(config)
    assert embedded.controller_listener == EMBEDDED_CONTROLLER_LISTENER == "127.0.0.1:9093"
    assert embedded.voters == {1: "127.0.0.1:9093"}
    password_path = tmp_path / "data" / PASSWORD_FILE
    assert stat.S_IMODE(password_path.stat().st_mode) == 0o600
    assert len(embedded.cluster_password or "") >= 32
    assert embedded_quorum(config).cluster_password == embedded.cluster_password  # generated once


@pytest.mark.timeout(60)
def test_a_single_node_binds_its_raft_port_to_loopback_only(node) -> None:
    raft_port = int(node.config["controller_listener"].rpartition(":")[2])
    assert _listening_addresses(raft_port) == {"127.0.0.1"}
    password_path = Path(node.config["data_dir"]) / PASSWORD_FILE
    assert stat.S_IMODE(password_path.stat().st_mode) == 0o600
