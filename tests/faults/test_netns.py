"""The namespace network: nodes reach each other and the root namespace through the bridge,
a cut drops one direction, a heal restores it, and teardown leaves nothing behind; the
cleanup removes what a killed run left."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.faults.netns import REGISTRY_DIR, NamespaceNetwork, cleanup_stale, namespaces_available

PORT = 7777
LISTENER = ("import socket,sys\n"
            "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            "s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(); print('ready', flush=True)\n"
            "while True:\n"
            "    c, _ = s.accept(); c.close()\n")
CONNECT = ("import socket,sys\n"
           "try:\n"
           "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.0).close(); print('ok')\n"
           "except OSError as exc:\n"
           "    print('refused', exc)\n")


def connects(prefix: list[str], host: str) -> bool:
    done = subprocess.run([*prefix, sys.executable, "-c", CONNECT, host, str(PORT)],
                          capture_output=True, text=True, timeout=20)
    return done.stdout.startswith("ok")


@pytest.mark.timeout(60)
def test_namespaces_cut_heal_and_teardown() -> None:
    available, why = namespaces_available()
    if not available:
        pytest.skip(f"network namespaces unavailable ({why})")
    network = NamespaceNetwork([1, 2])
    listener = None
    try:
        network.setup()
        listener = subprocess.Popen([*network.command_prefix(1), sys.executable, "-c", LISTENER,
                                     network.host(1), str(PORT)], stdout=subprocess.PIPE, text=True)
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        assert connects([], network.host(1)), "the root namespace reaches node 1"
        assert connects(network.command_prefix(2), network.host(1)), "node 2 reaches node 1"
        network.cut(2, 1)
        assert not connects(network.command_prefix(2), network.host(1)), "the cut drops 2 -> 1"
        assert connects([], network.host(1)), "clients in the root namespace still reach node 1"
        network.heal_all()
        assert connects(network.command_prefix(2), network.host(1)), "healed"
    finally:
        if listener is not None:
            listener.kill()
            listener.wait(timeout=10)
        network.teardown()
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert f"kf{network.run_id}" not in names and f"kf{network.run_id}" not in links


@pytest.mark.timeout(60)
def test_cleanup_removes_what_a_dead_run_left_behind() -> None:
    available, why = namespaces_available()
    if not available:
        pytest.skip(f"network namespaces unavailable ({why})")
    network = NamespaceNetwork([1, 2])
    try:
        network.setup()
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait(timeout=10)
        record = REGISTRY_DIR / network.run_id
        made = json.loads(record.read_text())
        record.write_text(json.dumps({**made, "pid": dead.pid}))  # as if the runner had been killed
        removed = cleanup_stale()
        assert any(network.run_id in line for line in removed), removed
        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        assert f"kf{network.run_id}" not in names and f"kf{network.run_id}" not in links
        assert not record.exists()
    finally:
        network.teardown()
