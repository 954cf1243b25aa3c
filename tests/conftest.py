"""Fixtures shared by every tier: real node processes on 127.0.0.1, killed by PID at teardown.

``node_factory`` starts ``python -m cluster.node --config FILE`` (``cluster.launcher``) with a
TOML file written into the test's ``tmp_path``, waits until the node answers ApiVersions,
and kills every process it started when the test ends, also when the test fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from cluster.launcher import NodeProcess, free_port, wait_until, write_toml  # noqa: F401  (re-exported for tests)


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    started: list[NodeProcess] = []

    def make(config: dict[str, Any] | None = None, name: str = "node", start: bool = True) -> NodeProcess:
        node = NodeProcess(tmp_path / name, config)
        started.append(node)
        if start:
            node.start()
        return node

    yield make
    for node in started:
        node.kill9()


@pytest.fixture
def node(node_factory: Callable[..., NodeProcess]) -> NodeProcess:
    """One running node with default settings."""
    return node_factory()
