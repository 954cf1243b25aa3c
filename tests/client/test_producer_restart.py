"""Clients ride out a node restart: the producer keeps accepting and retrying sends while
the node is down, and once it is back every record is acknowledged and stored exactly
once; a consumer that was reading before the restart carries on from its position."""

from __future__ import annotations

import pytest

from cluster.client import Admin, Consumer, NewTopic, Producer
from tests.client.conftest import drain

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_sends_retry_across_a_node_restart(node_factory) -> None:
    node = node_factory()
    with Admin(bootstrap_servers=node.bootstrap) as admin:
        admin.create_topics([NewTopic("restart", 2)])
    producer = Producer(bootstrap_servers=node.bootstrap, acks="all", linger_ms=1, retry_backoff_ms=50,
                        request_timeout_ms=5000, delivery_timeout_ms=60000)
    consumer = Consumer("restart", bootstrap_servers=node.bootstrap, retry_backoff_ms=50)
    try:
        before = [producer.send("restart", value=b"%d" % i) for i in range(1000)]
        producer.flush(timeout=30)
        assert all(f.succeeded() for f in before)
        values = [int(r.value) for r in drain(consumer, 1000)]

        assert node.stop() == 0
        during = [producer.send("restart", value=b"%d" % i) for i in range(1000, 2000)]
        assert not any(f.done() for f in during), "nothing can be acknowledged while the node is down"

        node.start()
        producer.flush(timeout=60)
        failures = [f.exception() for f in during if not f.succeeded()]
        assert not failures, f"{len(failures)} records failed, e.g. {failures[0]}"
        values += [int(r.value) for r in drain(consumer, 1000)]
        assert consumer.poll(timeout_ms=300) == {}
    finally:
        producer.close(timeout=10)
        consumer.close()
    assert sorted(values) == list(range(2000)), "records lost or stored twice"
