"""Start and stop node processes: used by the tests, the benchmark harness and dev clusters.

A ``NodeProcess`` owns one node: its config file (written from a dict), its data dir, its
log file and its OS process. ``start`` spawns ``python -m cluster.node --config FILE`` and
waits, polling with a deadline, until the node answers an ApiVersions request on its client
port; ``kill9``, ``signal`` and ``stop`` (SIGTERM, then wait) end it. Readiness is checked
with raw frames, so this module loads no client code.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from cluster.protocol import framing
from cluster.protocol.api import ApiKey

NODE_START_TIMEOUT_S = 20.0
PROBE_FRAME_BYTES_MAX = 1 << 20

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(condition: Callable[[], T], timeout_s: float, interval_s: float = 0.02,
               message: str = "condition") -> T:
    """Poll ``condition`` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {message}")
        time.sleep(interval_s)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def write_toml(path: Path, config: dict[str, Any]) -> Path:
    path.write_text("".join(f"{key} = {_toml_value(value)}\n" for key, value in config.items()))
    return path


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(n)
        if not chunk:
            raise ConnectionError("connection closed")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def probe(host: str, port: int, api_key: ApiKey, body: dict[str, Any]) -> dict[str, Any] | None:
    """One request on a fresh connection; the response body, or None if the node did not answer."""
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            sock.sendall(framing.encode_request(api_key, 0, 1, "probe", body))
            size = framing.check_frame_size(recv_exactly(sock, 4), PROBE_FRAME_BYTES_MAX)
            correlation_id, response = framing.decode_response(recv_exactly(sock, size))
            return response if correlation_id == 1 else None
    except (OSError, framing.FrameError):
        return None


def api_versions_ok(host: str, port: int) -> bool:
    """True when a node answers ApiVersions on host:port."""
    response = probe(host, port, ApiKey.API_VERSIONS, {})
    return response is not None and response.get("error_code") == 0


def cluster_formed(host: str, port: int, broker_ids: list[int]) -> bool:
    """True when the node on host:port knows an active controller and every one of
    ``broker_ids`` is registered and unfenced."""
    response = probe(host, port, ApiKey.DESCRIBE_CLUSTER, {})
    if response is None or response.get("error_code") or response.get("controller_id", -1) < 0:
        return False
    live = {b["node_id"] for b in response.get("brokers", []) if not b.get("fenced")}
    return live >= set(broker_ids)


def peak_rss_bytes_of(pid: int) -> int | None:
    """The peak resident set size (VmHWM) of process ``pid`` on Linux, or None."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class NodeProcess:
    """One node process with its own config file, data dir and log file."""

    def __init__(self, directory: Path, config: dict[str, Any] | None = None, port: int | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.config: dict[str, Any] = {
            "node_id": 1,
            "listeners": f"127.0.0.1:{self.port}",
            "data_dir": str(self.directory / "data"),
            **(config or {}),
        }
        if not self.config.get("controller_quorum_voters"):
            # a cluster of one: its Raft port must not collide with other nodes on this host
            self.config.setdefault("controller_listener", f"127.0.0.1:{free_port()}")
        self.config_path = write_toml(self.directory / "node.toml", self.config)
        self.log_path = self.directory / "node.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.ready_seconds: float | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, wait: bool = True, timeout_s: float = NODE_START_TIMEOUT_S) -> "NodeProcess":
        """Start the node; with ``wait``, until it answers, killing it if it does not in time
        (the caller never holds it, so nothing else would)."""
        assert not self.running, "node already running"
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cluster.node", "--config", str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT, cwd=str(self.directory), start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        if wait:
            try:
                self.wait_ready(timeout_s)
            except BaseException:
                self.kill9()
                raise
            self.ready_seconds = time.monotonic() - started
        return self

    def wait_ready(self, timeout_s: float = NODE_START_TIMEOUT_S) -> None:
        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"node exited with {self.process.returncode}:\n{self.log()}")
            return api_versions_ok("127.0.0.1", self.port)

        wait_until(ready, timeout_s, message=f"node on port {self.port}")

    def signal(self, sig: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, sig)

    def kill9(self) -> None:
        """kill -9 and reap, so the next start sees a crashed node."""
        if self.running:
            assert self.process is not None
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM, then wait for the exit; returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
                raise RuntimeError(f"node ignored SIGTERM for {timeout_s}s:\n{self.log()}")
        return int(self.process.returncode)

    def peak_rss_bytes(self) -> int | None:
        """VmHWM of the running process (Linux), or None."""
        if not self.running:
            return None
        assert self.process is not None
        return peak_rss_bytes_of(self.process.pid)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
