"""Admin against a real node: create, list, describe, configs, delete, and the errors."""

from __future__ import annotations

import pytest

from cluster.client import Admin, NewTopic, errors

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_create_list_describe_delete(admin: Admin, shared_node) -> None:
    admin.create_topics([NewTopic("orders", 3, 1, {"retention.ms": "60000"}), NewTopic("audit", 1)])
    assert {"orders", "audit"} <= set(admin.list_topics())
    (orders,) = admin.describe_topics(["orders"])
    assert orders.name == "orders"
    assert [p.partition for p in orders.partitions] == [0, 1, 2]
    assert all(p.leader == 1 and p.replicas == (1,) and p.isr == (1,) for p in orders.partitions)
    assert "orders" in [t.name for t in admin.describe_topics()]
    configs = admin.describe_configs("orders")
    assert configs["retention.ms"] == "60000"
    cluster = admin.describe_cluster()
    assert cluster.controller_id == 1
    assert [(b.node_id, b.port, b.fenced) for b in cluster.brokers] == [(1, shared_node.port, False)]
    admin.delete_topics(["orders", "audit"])
    assert not {"orders", "audit"} & set(admin.list_topics())


def test_errors_are_raised_as_kafka_exceptions(admin: Admin) -> None:
    admin.create_topics([NewTopic("dup", 1)])
    with pytest.raises(errors.TopicAlreadyExistsError, match="TOPIC_ALREADY_EXISTS"):
        admin.create_topics([NewTopic("dup", 1)])
    with pytest.raises(errors.InvalidPartitionsError):
        admin.create_topics([NewTopic("zero", 0)])
    with pytest.raises(errors.InvalidTopicExceptionError):
        admin.create_topics([NewTopic("bad/name", 1)])
    with pytest.raises(errors.InvalidConfigError):
        admin.create_topics([NewTopic("badconf", 1, 1, {"retention.ms": "soon"})])
    with pytest.raises(errors.UnknownTopicOrPartitionError):
        admin.delete_topics(["never-created"])
    with pytest.raises(errors.UnknownTopicOrPartitionError):
        admin.describe_topics(["never-created"])
    with pytest.raises(errors.UnknownTopicOrPartitionError):
        admin.describe_configs("never-created")
    assert not {"zero", "bad/name", "badconf"} & set(admin.list_topics())


def test_validate_only_creates_nothing(admin: Admin) -> None:
    admin.create_topics([NewTopic("dry-run", 2)], validate_only=True)
    assert "dry-run" not in admin.list_topics()


def test_an_unreachable_cluster_is_a_retriable_error() -> None:
    from tests.conftest import free_port

    with Admin(bootstrap_servers=f"127.0.0.1:{free_port()}", request_timeout_ms=500) as admin:
        with pytest.raises(errors.KraftError) as info:
            admin.list_topics()
        assert info.value.retriable
