"""A real node process, spoken to in raw frames: every API, long polls, restart and kill -9."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from cluster.protocol import errors
from cluster.protocol.api import ApiKey
from tests.conftest import wait_until
from tests.cluster.wire import WireClient, batch, values_from

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def test_api_versions_lists_every_api(node) -> None:
    with WireClient(node.port) as client:
        response = client.api_versions()
    assert response["error_code"] == 0
    assert {entry["api_key"] for entry in response["api_keys"]} == {int(k) for k in ApiKey}
    assert all(entry["min_version"] == 0 == entry["max_version"] for entry in response["api_keys"])


def test_created_topic_shows_in_metadata(node) -> None:
    with WireClient(node.port) as client:
        created = client.create_topic("orders", num_partitions=3)
        assert created == {"name": "orders", "error_code": 0, "error_message": None,
                           "num_partitions": 3, "replication_factor": 1}
        metadata = client.metadata(["orders", "nope"])
        assert metadata["controller_id"] == 1 and metadata["cluster_id"]
        assert metadata["brokers"] == [{"node_id": 1, "host": "127.0.0.1", "port": node.port, "rack": None}]
        orders, nope = metadata["topics"]
        assert orders["name"] == "orders" and orders["error_code"] == 0 and orders["is_internal"] is False
        assert [p["partition_index"] for p in orders["partitions"]] == [0, 1, 2]
        for p in orders["partitions"]:
            assert (p["error_code"], p["leader_id"], p["leader_epoch"]) == (0, 1, 0)
            assert (p["replica_nodes"], p["isr_nodes"], p["offline_replicas"]) == ([1], [1], [])
        assert nope == {"error_code": errors.UNKNOWN_TOPIC_OR_PARTITION, "name": "nope",
                        "is_internal": False, "partitions": []}
        assert [t["name"] for t in client.metadata(None)["topics"]] == ["orders"]
        # default partition count (num_partitions = -1) and validate_only
        assert client.create_topic("checked", num_partitions=-1, validate_only=True)["error_code"] == 0
        assert client.metadata(["checked"])["topics"][0]["error_code"] == errors.UNKNOWN_TOPIC_OR_PARTITION
        assert client.create_topic("defaulted", num_partitions=-1, replication_factor=-1)["num_partitions"] == 1


def test_produce_acks_1_and_all_then_fetch(node) -> None:
    with WireClient(node.port) as client:
        client.create_topic("t", num_partitions=2)
        first = client.produce("t", 0, batch([b"a", b"b", b"c"]), acks=1)
        assert (first["error_code"], first["base_offset"], first["log_start_offset"]) == (0, 0, 0)
        second = client.produce("t", 0, batch([b"d", b"e"]), acks=-1)
        assert (second["error_code"], second["base_offset"]) == (0, 3)
        two_batches = batch([b"f"]) + batch([b"g", b"h"])
        assert client.produce("t", 0, two_batches)["base_offset"] == 5
        assert client.produce("t", 1, batch([b"other"]))["base_offset"] == 0

        entry = client.fetch("t", 0, 0)
        assert (entry["error_code"], entry["high_watermark"], entry["log_start_offset"]) == (0, 8, 0)
        assert values_from(entry["records"]) == list(enumerate([b"a", b"b", b"c", b"d", b"e", b"f", b"g", b"h"]))
        # a fetch from the middle of a batch returns that whole batch; the reader skips
        middle = client.fetch("t", 0, 4)
        assert values_from(middle["records"], 4) == [(4, b"e"), (5, b"f"), (6, b"g"), (7, b"h")]
        assert client.fetch("t", 0, 8)["records"] == b""
        assert client.fetch("t", 0, 9)["error_code"] == errors.OFFSET_OUT_OF_RANGE
        assert client.read_all("t", 1) == [(0, b"other")]


def test_fetch_respects_max_bytes_but_always_returns_the_first_batch(node) -> None:
    with WireClient(node.port) as client:
        client.create_topic("big", num_partitions=2)
        for _ in range(4):
            client.produce("big", 0, batch([b"x" * 1000]))
        client.produce("big", 1, batch([b"y" * 1000]))
        one = client.fetch("big", 0, 0, max_bytes=10)
        assert [o for o, _ in values_from(one["records"])] == [0]
        limited = client.fetch("big", 0, 0, partition_max_bytes=2500)
        assert [o for o, _ in values_from(limited["records"])] == [0, 1]
        # across partitions: the second partition may not exceed what is left of max_bytes
        body = WireClient.fetch_body("big", 0, 0, max_bytes=1500)
        body["topics"][0]["partitions"].append(
            {"index": 1, "fetch_offset": 0, "partition_max_bytes": 1 << 20, "current_leader_epoch": -1})
        p0, p1 = client.call(ApiKey.FETCH, body)["topics"][0]["partitions"]
        assert len(values_from(p0["records"])) == 1 and p1["records"] == b""


def test_acks_0_gets_no_response_but_the_data_is_stored(node) -> None:
    with WireClient(node.port) as client:
        client.create_topic("quiet")
        client.send(ApiKey.PRODUCE, WireClient.produce_body("quiet", 0, batch([b"q1", b"q2"]), acks=0))
        versions_id = client.send(ApiKey.API_VERSIONS, {})
        correlation_id, body = client.recv()
        assert correlation_id == versions_id and body["error_code"] == 0
        wait_until(lambda: client.latest("quiet") == 2, 10, message="acks=0 records to land")
        assert client.read_all("quiet") == [(0, b"q1"), (1, b"q2")]


def test_responses_come_back_in_request_order_behind_a_long_poll(node) -> None:
    with WireClient(node.port) as client:
        client.create_topic("ordered")
        fetch_id = client.send(ApiKey.FETCH, WireClient.fetch_body("ordered", 0, 0, max_wait_ms=300))
        versions_id = client.send(ApiKey.API_VERSIONS, {})
        assert client.recv()[0] == fetch_id
        assert client.recv()[0] == versions_id


def test_long_poll_returns_early_when_data_arrives(node) -> None:
    with WireClient(node.port) as waiter, WireClient(node.port) as producer:
        waiter.create_topic("poll")
        outcome: dict = {}

        def long_poll() -> None:
            started = time.monotonic()
            outcome["entry"] = waiter.fetch("poll", 0, 0, max_wait_ms=20000)
            outcome["elapsed_s"] = time.monotonic() - started

        thread = threading.Thread(target=long_poll)
        thread.start()
        time.sleep(0.2)  # let the fetch reach the node and park (not waiting for a condition)
        producer.produce("poll", 0, batch([b"wake"]))
        thread.join(timeout=30)
        assert not thread.is_alive()
        assert values_from(outcome["entry"]["records"]) == [(0, b"wake")]
        assert outcome["elapsed_s"] < 15


def test_long_poll_waits_about_max_wait_when_nothing_arrives(node) -> None:
    with WireClient(node.port) as client:
        client.create_topic("idle")
        started = time.monotonic()
        entry = client.fetch("idle", 0, 0, max_wait_ms=500)
        elapsed_s = time.monotonic() - started
        assert entry["error_code"] == 0 and entry["records"] == b""
        assert elapsed_s >= 0.45
        # min_bytes not reached by what is there: still waits
        client.produce("idle", 0, batch([b"small"]))
        started = time.monotonic()
        entry = client.fetch("idle", 0, 0, max_wait_ms=400, min_bytes=1 << 20)
        assert time.monotonic() - started >= 0.35
        assert values_from(entry["records"]) == [(0, b"small")]


def test_list_offsets_earliest_latest_and_by_timestamp(node) -> None:
    with WireClient(node.port) as client:
        client.create_topic("times")
        assert client.list_offset("times", 0, -1)["offset"] == 0
        for i, ts in enumerate((1000, 2000, 3000)):
            client.produce("times", 0, batch([b"%d" % i, b"%d" % i], timestamp_ms=ts))
        earliest = client.list_offset("times", 0, -2)
        assert (earliest["error_code"], earliest["offset"], earliest["leader_epoch"]) == (0, 0, 0)
        assert client.list_offset("times", 0, -1)["offset"] == 6
        by_time = client.list_offset("times", 0, 1500)
        assert (by_time["offset"], by_time["timestamp"]) == (2, 2000)
        assert client.list_offset("times", 0, 0)["offset"] == 0
        assert client.list_offset("times", 0, 5000)["offset"] == -1
        assert client.list_offset("times", 7, -1)["error_code"] == errors.UNKNOWN_TOPIC_OR_PARTITION


def test_describe_configs_marks_defaults(node) -> None:
    with WireClient(node.port) as client:
        client.create_topic("conf", configs={"retention.ms": "1000"})
        result = client.describe_topic_configs("conf")
        assert result["error_code"] == 0
        configs = {c["name"]: (c["value"], c["is_default"]) for c in result["configs"]}
        assert configs["retention.ms"] == ("1000", False)
        assert configs["max.message.bytes"] == ("1048588", True)
        assert configs["retention.bytes"] == ("-1", True)
        only = client.describe_topic_configs("conf", ["retention.ms"])
        assert [c["name"] for c in only["configs"]] == ["retention.ms"]
        assert client.describe_topic_configs("absent")["error_code"] == errors.UNKNOWN_TOPIC_OR_PARTITION


def test_delete_topic_removes_it_and_its_data(node) -> None:
    with WireClient(node.port) as client:
        client.create_topic("doomed", num_partitions=2)
        client.produce("doomed", 0, batch([b"old"] * 5))
        doomed, never = client.delete_topics(["doomed", "never"])
        assert doomed == {"name": "doomed", "error_code": 0, "error_message": None}
        assert (never["name"], never["error_code"]) == ("never", errors.UNKNOWN_TOPIC_OR_PARTITION)
        assert client.metadata(["doomed"])["topics"][0]["error_code"] == errors.UNKNOWN_TOPIC_OR_PARTITION
        assert client.produce("doomed", 0, batch([b"x"]))["error_code"] == errors.UNKNOWN_TOPIC_OR_PARTITION
        assert client.fetch("doomed", 0, 0)["error_code"] == errors.UNKNOWN_TOPIC_OR_PARTITION
        # a topic created again under the same name starts empty
        assert client.create_topic("doomed")["error_code"] == 0
        assert client.latest("doomed") == 0
        assert client.read_all("doomed") == []
        assert client.produce("doomed", 0, batch([b"new"]))["base_offset"] == 0


def test_restart_keeps_topics_and_records(node_factory) -> None:
    node = node_factory()
    with WireClient(node.port) as client:
        client.create_topic("durable", num_partitions=2, configs={"retention.ms": "-1"})
        for i in range(10):
            client.produce("durable", i % 2, batch([b"r%d" % i]))
        cluster_id = client.metadata()["cluster_id"]
    assert node.stop() == 0
    assert "serving on" in node.log() and "stopped" in node.log()
    node.start()
    with WireClient(node.port) as client:
        metadata = client.metadata(["durable"])
        assert metadata["cluster_id"] == cluster_id
        assert len(metadata["topics"][0]["partitions"]) == 2
        assert client.describe_topic_configs("durable", ["retention.ms"])["configs"][0]["value"] == "-1"
        assert [v for _, v in client.read_all("durable", 0)] == [b"r%d" % i for i in range(0, 10, 2)]
        assert [v for _, v in client.read_all("durable", 1)] == [b"r%d" % i for i in range(1, 10, 2)]
        assert client.produce("durable", 0, batch([b"after"]))["base_offset"] == 5


def test_kill_9_keeps_acknowledged_records(node_factory) -> None:
    node = node_factory()
    acknowledged: list[tuple[int, bytes]] = []
    with WireClient(node.port) as client:
        client.create_topic("crash")
        for i in range(30):
            value = b"v%d" % i
            entry = client.produce("crash", 0, batch([value]), acks=-1)
            assert entry["error_code"] == 0
            acknowledged.append((entry["base_offset"], value))
        # more requests in flight when the node dies: acknowledged or not, they must not corrupt
        for i in range(30, 40):
            client.send(ApiKey.PRODUCE, WireClient.produce_body("crash", 0, batch([b"v%d" % i])))
    node.kill9()
    node.start()
    with WireClient(node.port) as client:
        stored = client.read_all("crash")
    assert stored[: len(acknowledged)] == acknowledged
    assert [o for o, _ in stored] == list(range(len(stored)))


def test_retention_runs_in_the_background(node_factory) -> None:
    node = node_factory({"log_retention_check_interval_ms": 200})
    with WireClient(node.port) as client:
        client.create_topic("aging", configs={"retention.ms": "60000"})
        client.produce("aging", 0, batch([b"ancient"] * 2, timestamp_ms=1000))
        client.produce("aging", 0, batch([b"old"] * 2, timestamp_ms=2000))
        client.produce("aging", 0, batch([b"fresh"] * 2))
        wait_until(lambda: client.list_offset("aging", 0, -2)["offset"] == 4, 20, message="retention to run")
        assert client.read_all("aging", 0, 4) == [(4, b"fresh"), (5, b"fresh")]
        assert client.fetch("aging", 0, 0)["error_code"] == errors.OFFSET_OUT_OF_RANGE


def test_auto_create_when_enabled(node_factory) -> None:
    node = node_factory({"auto_create_topics_enable": True, "num_partitions": 2})
    with WireClient(node.port) as client:
        assert client.produce("fresh", 1, batch([b"x"]))["error_code"] == 0
        metadata = client.metadata(["auto"], allow_auto_topic_creation=True)
        assert len(metadata["topics"][0]["partitions"]) == 2
        assert client.metadata(["auto2"])["topics"][0]["error_code"] == errors.UNKNOWN_TOPIC_OR_PARTITION


def test_sigterm_during_a_long_poll_answers_it_and_exits_0(node_factory) -> None:
    node = node_factory()
    with WireClient(node.port) as client:
        client.create_topic("parked")
        client.produce("parked", 0, batch([b"kept"]))
        fetch_id = client.send(ApiKey.FETCH, WireClient.fetch_body("parked", 0, 1, max_wait_ms=30000))
        time.sleep(0.2)  # let the fetch park (not waiting for a condition)
        started = time.monotonic()
        assert node.stop(timeout_s=15) == 0
        assert time.monotonic() - started < 10
        correlation_id, body = client.recv()
        assert correlation_id == fetch_id and body["topics"][0]["partitions"][0]["records"] == b""
    node.start()
    with WireClient(node.port) as client:
        assert client.read_all("parked") == [(0, b"kept")]


def test_sigint_stops_cleanly(node_factory) -> None:
    node = node_factory()
    node.signal(signal.SIGINT)
    assert node.process.wait(timeout=15) == 0
    assert "node 1 stopped" in node.log()
