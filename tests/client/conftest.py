"""Fixtures for the client's integration tests: one node shared by a module's tests (each
test uses its own topics), and helpers that drain a consumer with a deadline."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Iterator

import pytest

from cluster.client import Admin, Consumer, ConsumerRecord, NewTopic
from tests.conftest import NodeProcess

_names = itertools.count()


@pytest.fixture(scope="module")
def shared_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    node = NodeProcess(Path(tmp_path_factory.mktemp("client-node")), {})
    try:
        node.start()
        yield node
    finally:
        if node.process is not None and node.process.poll() is None:
            node.process.kill()
            node.process.wait(timeout=10)


@pytest.fixture
def admin(shared_node: NodeProcess) -> Iterator[Admin]:
    with Admin(bootstrap_servers=shared_node.bootstrap) as client:
        yield client


@pytest.fixture
def make_topic(admin: Admin):
    def make(partitions: int = 1, configs: dict[str, str] | None = None) -> str:
        name = f"topic-{next(_names)}-{time.monotonic_ns() % 100000}"
        admin.create_topics([NewTopic(name, partitions, 1, configs or {})])
        return name
    return make


def drain(consumer: Consumer, count: int, timeout_s: float = 30.0) -> list[ConsumerRecord]:
    """Poll until ``count`` records arrived (more is an error the caller sees), or fail."""
    records: list[ConsumerRecord] = []
    deadline = time.monotonic() + timeout_s
    while len(records) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"only {len(records)} of {count} records within {timeout_s}s")
        for batch in consumer.poll(timeout_ms=200).values():
            records.extend(batch)
    return records
