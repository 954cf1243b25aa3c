"""The fault run's network: one namespace per node on a private bridge, or plain loopback.

Theory of operation
-------------------
``NamespaceNetwork`` owns, for one run, a bridge in the root namespace and per node a
namespace joined to it by a veth pair::

    root namespace (the runner: clients, prober, nemesis)
        bridge kf<run>b  10.77.<k>.1/24
          |-- veth kf<run>v<i> <==> kf<run>p<i> in namespace kf<run>n<i>: 10.77.<k>.<10+i>/24

``<run>`` is random per run and ``<k>`` is a /24 not yet used by any address of the root
namespace (chosen under a file lock), so parallel runs do not collide. The node's client
and Raft ports listen on its namespace address; the runner reaches every node through the
bridge. ``cut(a, b)`` adds ``blackhole 10.77.<k>.<10+b>`` to node a's routing table: what a
sends to b is dropped (b's packets still reach a, but a's answers do not). ``heal(a, b)``
deletes the route; ``heal_all`` deletes every route this object added. ``teardown`` deletes
the veth pairs, the namespaces and the bridge; it is idempotent and the runner calls it
from a ``finally``.

A run registers itself (its PID and names) in ``REGISTRY_DIR`` while its network exists;
``cleanup_stale`` removes what a run whose process died without its ``finally`` left behind.

``LoopbackNetwork`` has the same interface on 127.0.0.1 without namespaces: nodes get
distinct ports and ``cut`` is refused (the schedule plans no network faults then).
``namespaces_available()`` says whether this machine can create namespaces, and why not.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Iterator

from cluster.launcher import free_port

logger = logging.getLogger(__name__)

SUBNET_PREFIX = "10.77"
SUBNET_THIRD_OCTETS = range(1, 255)
HOST_OCTET_BASE = 10  # node i gets 10.77.<k>.<10+i>
BRIDGE_OCTET = 1
CLIENT_PORT = 9092  # inside a namespace every node has the same ports
RAFT_PORT = 9093
IP_COMMAND_TIMEOUT_S = 15.0
ALLOCATION_LOCK_PATH = "/tmp/kraft-faults-netns.lock"
REGISTRY_DIR = Path("/tmp/kraft-faults-netns")  # one file per live run: its PID and what it made
RUN_ID_HEX_CHARS = 5  # interface names stay within Linux's 15 characters


class NetworkError(RuntimeError):
    """An ``ip`` command failed."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_COMMAND_TIMEOUT_S)
    if check and done.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done


def namespaces_available() -> tuple[bool, str]:
    """(True, "") when this process can create a namespace; otherwise (False, why not)."""
    if shutil.which("ip") is None:
        return False, "the ip command (iproute2) is not installed"
    if os.geteuid() != 0:
        return False, "network namespaces need root"
    name = f"kfprobe{secrets.token_hex(3)}"
    try:
        created = _ip("netns", "add", name, check=False)
        if created.returncode != 0:
            return False, f"ip netns add failed: {created.stderr.strip()}"
        link = _ip("link", "add", name[:15], "type", "bridge", check=False)
        if link.returncode != 0:
            return False, f"ip link add ... type bridge failed: {link.stderr.strip()}"
        _ip("link", "del", name[:15], check=False)
        return True, ""
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"ip failed: {exc}"
    finally:
        _ip("netns", "del", name, check=False)


@contextlib.contextmanager
def _allocation_lock() -> Iterator[None]:
    with open(ALLOCATION_LOCK_PATH, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _used_third_octets() -> set[int]:
    out = _ip("-o", "-4", "addr", "show").stdout
    used = set()
    for line in out.splitlines():
        for word in line.split():
            if "/" in word and word.startswith(SUBNET_PREFIX + "."):
                try:
                    used.add(int(ipaddress.ip_interface(word).ip.packed[2]))
                except ValueError:
                    continue
    return used


class NamespaceNetwork:
    """Namespaces, veths and a bridge for one run; blackhole routes between node addresses."""

    uses_namespaces = True

    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = sorted(node_ids)
        self.run_id = secrets.token_hex(8)[:RUN_ID_HEX_CHARS]
        self.bridge = f"kf{self.run_id}b"
        self.third_octet: int | None = None
        self.cuts: set[tuple[int, int]] = set()
        self._created_namespaces: list[str] = []
        self._bridge_created = False

    def namespace(self, node_id: int) -> str:
        return f"kf{self.run_id}n{node_id}"

    def host(self, node_id: int) -> str:
        assert self.third_octet is not None, "the network is not set up"
        return f"{SUBNET_PREFIX}.{self.third_octet}.{HOST_OCTET_BASE + node_id}"

    def ports(self, node_id: int) -> tuple[int, int]:
        """(client port, Raft port) of a node."""
        return CLIENT_PORT, RAFT_PORT

    def command_prefix(self, node_id: int) -> list[str]:
        return ["ip", "netns", "exec", self.namespace(node_id)]

    def setup(self) -> None:
        """Create the bridge and every node's namespace; undone by ``teardown``."""
        try:
            with _allocation_lock():
                free = [k for k in SUBNET_THIRD_OCTETS if k not in _used_third_octets()]
                if not free:
                    raise NetworkError(f"no free /24 left in {SUBNET_PREFIX}.0.0/16")
                self.third_octet = free[0]
                self._register()
                _ip("link", "add", self.bridge, "type", "bridge")
                self._bridge_created = True
                _ip("addr", "add", f"{SUBNET_PREFIX}.{self.third_octet}.{BRIDGE_OCTET}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for node_id in self.node_ids:
                self._add_node(node_id)
            logger.info("network %s: bridge %s on %s.%d.0/24, namespaces %s", self.run_id, self.bridge,
                        SUBNET_PREFIX, self.third_octet, [self.namespace(n) for n in self.node_ids])
        except BaseException:
            self.teardown()
            raise

    def _outside(self, namespace: str) -> str:
        return namespace.replace(f"kf{self.run_id}n", f"kf{self.run_id}v", 1)

    def _add_node(self, node_id: int) -> None:
        namespace = self.namespace(node_id)
        outside, inside = self._outside(namespace), f"kf{self.run_id}p{node_id}"
        _ip("netns", "add", namespace)
        self._created_namespaces.append(namespace)
        _ip("-n", namespace, "link", "set", "lo", "up")
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        _ip("link", "set", inside, "netns", namespace)
        _ip("link", "set", outside, "master", self.bridge)
        _ip("link", "set", outside, "up")
        _ip("-n", namespace, "addr", "add", f"{self.host(node_id)}/24", "dev", inside)
        _ip("-n", namespace, "link", "set", inside, "up")

    def cut(self, source: int, destination: int) -> None:
        """Node ``source`` drops every packet it sends to node ``destination``."""
        if (source, destination) in self.cuts:
            return
        _ip("-n", self.namespace(source), "route", "add", "blackhole", f"{self.host(destination)}/32")
        self.cuts.add((source, destination))

    def heal(self, source: int, destination: int) -> None:
        if (source, destination) not in self.cuts:
            return
        _ip("-n", self.namespace(source), "route", "del", "blackhole", f"{self.host(destination)}/32", check=False)
        self.cuts.discard((source, destination))

    def heal_all(self) -> None:
        for source, destination in sorted(self.cuts):
            self.heal(source, destination)

    def teardown(self) -> None:
        """Delete every namespace and the bridge (idempotent; errors are logged, not raised)."""
        self.cuts.clear()
        for namespace in self._created_namespaces:
            # Deleting the root end removes the pair now; a namespace's own teardown in the
            # kernel is asynchronous.
            _ip("link", "del", self._outside(namespace), check=False)
            done = _ip("netns", "del", namespace, check=False)
            if done.returncode != 0:
                logger.warning("ip netns del %s: %s", namespace, done.stderr.strip())
        self._created_namespaces.clear()
        if self._bridge_created:
            _ip("link", "del", self.bridge, check=False)
            self._bridge_created = False
        (REGISTRY_DIR / self.run_id).unlink(missing_ok=True)

    def _register(self) -> None:
        REGISTRY_DIR.mkdir(exist_ok=True)
        (REGISTRY_DIR / self.run_id).write_text(json.dumps({
            "pid": os.getpid(), "bridge": self.bridge,
            "namespaces": [self.namespace(n) for n in self.node_ids],
            "veths": [self._outside(self.namespace(n)) for n in self.node_ids]}))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale() -> list[str]:
    """Remove what runs whose process is gone (killed -9, a crashed machine) left behind:
    the processes still in their namespaces (killed by PID), veths, namespaces, bridge."""
    removed: list[str] = []
    if not REGISTRY_DIR.is_dir():
        return removed
    for record in sorted(REGISTRY_DIR.iterdir()):
        try:
            made = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        if _alive(int(made.get("pid", 0))):
            continue
        for namespace in made.get("namespaces", []):
            for pid in _ip("netns", "pids", namespace, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
        for veth in made.get("veths", []):
            _ip("link", "del", veth, check=False)
        for namespace in made.get("namespaces", []):
            _ip("netns", "del", namespace, check=False)
        _ip("link", "del", made.get("bridge", ""), check=False)
        record.unlink(missing_ok=True)
        removed.append(f"run {record.name} of dead process {made.get('pid')}: "
                       f"{', '.join(made.get('namespaces', []))} and bridge {made.get('bridge')}")
    return removed


class LoopbackNetwork:
    """Every node on 127.0.0.1 with its own ports; no link can be cut."""

    uses_namespaces = False

    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = sorted(node_ids)
        self.run_id = secrets.token_hex(8)[:RUN_ID_HEX_CHARS]
        self.cuts: set[tuple[int, int]] = set()
        self._ports: dict[int, tuple[int, int]] = {}

    def setup(self) -> None:
        taken: set[int] = set()
        for node_id in self.node_ids:
            pair: list[int] = []
            while len(pair) < 2:
                port = free_port()
                if port not in taken:
                    taken.add(port)
                    pair.append(port)
            self._ports[node_id] = (pair[0], pair[1])

    def host(self, node_id: int) -> str:
        return "127.0.0.1"

    def ports(self, node_id: int) -> tuple[int, int]:
        return self._ports[node_id]

    def command_prefix(self, node_id: int) -> list[str]:
        return []

    def cut(self, source: int, destination: int) -> None:
        raise NetworkError("links cannot be cut without network namespaces")

    def heal(self, source: int, destination: int) -> None:
        pass

    def heal_all(self) -> None:
        pass

    def teardown(self) -> None:
        pass


Network = NamespaceNetwork | LoopbackNetwork
