"""Consumer groups on real nodes, in raw frames: membership, revocation before reassignment,
offsets, the admin APIs, bad input, a restart, and a 3-node cluster whose coordinator dies."""

from __future__ import annotations

from typing import Any

import pytest

from cluster.protocol import errors
from cluster.protocol.api import ApiKey
from tests.cluster.multinode import LocalCluster, cluster_factory  # noqa: F401  (fixture)
from tests.cluster.wire import WireClient
from tests.conftest import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SESSION_MS = 30000
DEADLINE_S = 30.0


def join_body(group: str, topics: list[str], **fields: Any) -> dict:
    return {"group_id": group, "member_id": "", "member_epoch": 0, "instance_id": None, "rack_id": None,
            "client_id": "test", "rebalance_timeout_ms": 60000, "session_timeout_ms": SESSION_MS,
            "subscribed_topic_names": topics, "subscribed_topic_regex": None, "topic_partitions": [], **fields}


class Member:
    """One group member spoken for in raw heartbeats."""

    def __init__(self, client: WireClient, group: str, topics: list[str], **fields: Any) -> None:
        self.client = client
        self.group = group
        response = client.call(ApiKey.CONSUMER_GROUP_HEARTBEAT, join_body(group, topics, **fields))
        assert response["error_code"] == 0, response
        self.member_id = response["member_id"]
        self.epoch = response["member_epoch"]
        self.session_ms = fields.get("session_timeout_ms", SESSION_MS)
        self.assignment = partitions_of(response["assignment"])

    def beat(self, owned: list[int] | None = None, topic: str = "t") -> dict:
        body = {**join_body(self.group, [], session_timeout_ms=self.session_ms), "member_id": self.member_id,
                "member_epoch": self.epoch, "subscribed_topic_names": None,
                "topic_partitions": None if owned is None else [{"topic": topic, "partitions": owned}]}
        response = self.client.call(ApiKey.CONSUMER_GROUP_HEARTBEAT, body)
        if response["error_code"] == 0:
            self.epoch = response["member_epoch"]
            if response["assignment"] is not None:
                self.assignment = partitions_of(response["assignment"])
        return response

    def commit(self, offsets: dict[int, int], topic: str = "t", epoch: int | None = None) -> dict[int, int]:
        body = {"group_id": self.group, "member_id": self.member_id,
                "member_epoch": self.epoch if epoch is None else epoch,
                "topics": [{"name": topic, "partitions": [
                    {"index": i, "committed_offset": o, "committed_leader_epoch": 0, "committed_metadata": None}
                    for i, o in offsets.items()]}]}
        response = self.client.call(ApiKey.OFFSET_COMMIT, body)
        return {p["index"]: p["error_code"] for p in response["topics"][0]["partitions"]}


def partitions_of(assignment: dict | None) -> list[int] | None:
    if assignment is None:
        return None
    return sorted(p for entry in assignment["topic_partitions"] for p in entry["partitions"])


def fetch_offsets(client: WireClient, group: str, topic: str = "t", partitions: list[int] | None = None) -> dict:
    topics = None if partitions is None else [{"name": topic, "partitions": partitions}]
    return client.call(ApiKey.OFFSET_FETCH, {"group_id": group, "topics": topics})


def committed(response: dict) -> dict[int, int]:
    assert response["error_code"] == 0, response
    return {p["index"]: p["committed_offset"] for t in response["topics"] for p in t["partitions"]}


def describe(client: WireClient, group: str) -> dict:
    return client.call(ApiKey.CONSUMER_GROUP_DESCRIBE, {"group_ids": [group]})["groups"][0]


# -- one node ---------------------------------------------------------------------------------


def test_every_api_has_a_handler(node) -> None:
    with WireClient(node.port) as client:
        for entry in client.api_versions()["api_keys"]:
            response = client.call(entry["api_key"], {})
            assert response.get("error_code") != errors.UNSUPPORTED_VERSION, (entry, response)


def test_two_members_split_the_partitions_with_revocation_before_reassignment(node) -> None:
    with WireClient(node.port) as client:
        assert client.create_topic("t", 4)["error_code"] == 0
        coordinator = client.call(ApiKey.FIND_COORDINATOR, {"key": "g", "key_type": 0})
        assert coordinator == {"error_code": 0, "error_message": None, "node_id": 1, "host": "127.0.0.1",
                               "port": node.port}
        a = Member(client, "g", ["t"])
        assert (a.epoch, a.assignment) == (1, [0, 1, 2, 3])
        assert a.beat(owned=[0, 1, 2, 3])["assignment"] is None

        b = Member(WireClient(node.port), "g", ["t"])
        assert (b.epoch, b.assignment) == (2, [])  # its partitions are still a's
        response = a.beat()
        assert response["member_epoch"] == 1 and a.assignment == [0, 1]  # revoke 2 and 3 first
        assert b.beat()["assignment"] in (None, {"topic_partitions": []})
        group = describe(client, "g")
        assert group["group_state"] == "reconciling"
        assert {m["member_id"]: partitions_of({"topic_partitions": m["target_assignment"]})
                for m in group["members"]} == {a.member_id: [0, 1], b.member_id: [2, 3]}

        assert a.beat(owned=[0, 1])["member_epoch"] == 2  # released
        response = b.beat(owned=[])
        assert (response["member_epoch"], b.assignment) == (2, [2, 3])
        b.beat(owned=[2, 3])
        group = describe(client, "g")
        assert group["group_state"] == "stable" and group["group_epoch"] == 2
        listed = client.call(ApiKey.LIST_GROUPS, {})
        assert listed["groups"] == [{"group_id": "g", "group_state": "stable", "member_count": 2}]
        b.client.close()


def test_commit_fetch_list_describe_and_delete(node) -> None:
    with WireClient(node.port) as client:
        client.create_topic("t", 2)
        member = Member(client, "g", ["t"])
        assert member.commit({0: 10, 1: 20}) == {0: 0, 1: 0}
        assert committed(fetch_offsets(client, "g")) == {0: 10, 1: 20}
        assert committed(fetch_offsets(client, "g", partitions=[1, 0])) == {1: 20, 0: 10}
        assert committed(fetch_offsets(client, "nobody", partitions=[0])) == {0: -1}
        assert member.commit({0: 9}) == {0: errors.OFFSET_OUT_OF_RANGE}
        assert member.commit({0: 11}, epoch=member.epoch + 1) == {0: errors.STALE_MEMBER_EPOCH}
        assert member.commit({5: 1}) == {5: errors.UNKNOWN_TOPIC_OR_PARTITION}

        deleted = client.call(ApiKey.DELETE_GROUPS, {"groups_names": ["g", "nobody"]})["results"]
        assert [r["error_code"] for r in deleted] == [errors.NON_EMPTY_GROUP, errors.GROUP_ID_NOT_FOUND]
        reset = {"group_id": "g", "member_id": "", "member_epoch": -1, "admin_reset": True,
                 "topics": [{"name": "t", "partitions": [{"index": 0, "committed_offset": 0,
                                                          "committed_leader_epoch": -1, "committed_metadata": None}]}]}
        assert client.call(ApiKey.OFFSET_COMMIT, reset)["topics"][0]["partitions"][0]["error_code"] == \
            errors.NON_EMPTY_GROUP
        assert member.beat(owned=[0, 1])["error_code"] == 0
        left = client.call(ApiKey.CONSUMER_GROUP_HEARTBEAT,
                           {**join_body("g", []), "member_id": member.member_id, "member_epoch": -1})
        assert left["error_code"] == 0 and left["member_epoch"] == -1
        assert client.call(ApiKey.OFFSET_COMMIT, reset)["topics"][0]["partitions"][0]["error_code"] == 0
        assert committed(fetch_offsets(client, "g")) == {0: 0, 1: 20}
        assert "g offset of t-0 reset 10 -> 0" in node.log()
        assert describe(client, "g")["group_state"] == "empty"

        deleted = client.call(ApiKey.DELETE_GROUPS, {"groups_names": ["g"]})["results"]
        assert deleted == [{"group_id": "g", "error_code": 0, "error_message": None}]
        assert describe(client, "g")["error_code"] == errors.GROUP_ID_NOT_FOUND
        assert committed(fetch_offsets(client, "g")) == {}
        assert client.call(ApiKey.LIST_GROUPS, {})["groups"] == []


BAD_INPUTS = [
    (ApiKey.CONSUMER_GROUP_HEARTBEAT, {"group_id": "g"}, errors.INVALID_REQUEST),
    (ApiKey.CONSUMER_GROUP_HEARTBEAT, join_body("g", ["t"], member_epoch="0"), errors.INVALID_REQUEST),
    (ApiKey.CONSUMER_GROUP_HEARTBEAT, join_body("g", ["t"], topic_partitions=[{"topic": "t", "partitions": [-1]}]),
     errors.INVALID_REQUEST),
    (ApiKey.CONSUMER_GROUP_HEARTBEAT, join_body("g", ["t"], topic_partitions="all"), errors.INVALID_REQUEST),
    (ApiKey.CONSUMER_GROUP_HEARTBEAT, join_body("g", [3]), errors.INVALID_REQUEST),
    (ApiKey.CONSUMER_GROUP_HEARTBEAT, join_body("", ["t"]), errors.INVALID_GROUP_ID),
    (ApiKey.CONSUMER_GROUP_HEARTBEAT, join_body("g", ["t"], session_timeout_ms=10), errors.INVALID_SESSION_TIMEOUT),
    (ApiKey.CONSUMER_GROUP_HEARTBEAT, join_body("g", None, subscribed_topic_regex="[z-a]"), errors.INVALID_REQUEST),
    (ApiKey.CONSUMER_GROUP_HEARTBEAT, join_body("g", ["t"], member_id="ghost", member_epoch=3),
     errors.UNKNOWN_MEMBER_ID),
    (ApiKey.FIND_COORDINATOR, {"key": "g", "key_type": 1}, errors.INVALID_REQUEST),
    (ApiKey.FIND_COORDINATOR, {"key_type": 0}, errors.INVALID_REQUEST),
    (ApiKey.OFFSET_COMMIT, {"group_id": "g", "topics": [{"name": "t", "partitions": [{"index": 0}]}]},
     errors.INVALID_REQUEST),
    (ApiKey.OFFSET_FETCH, {"group_id": "g", "topics": [{"name": "t", "partitions": ["0"]}]}, errors.INVALID_REQUEST),
    (ApiKey.CONSUMER_GROUP_DESCRIBE, {"group_ids": "g"}, errors.INVALID_REQUEST),
    (ApiKey.DELETE_GROUPS, {"groups_names": [None]}, errors.INVALID_REQUEST),
]


def test_bad_inputs_get_named_errors_and_the_node_keeps_serving(node) -> None:
    with WireClient(node.port) as client:
        client.create_topic("t", 1)
        for api, body, code in BAD_INPUTS:
            response = client.call(api, body)
            assert response["error_code"] == code, (api, body, response)
            assert response["error_message"]
        assert client.call(ApiKey.LIST_GROUPS, {})["groups"] == []  # nothing was created
        member = Member(client, "g", ["t"])  # the same connection still works
        assert member.assignment == [0]
        assert client.call(ApiKey.LIST_GROUPS, {})["groups"][0]["member_count"] == 1


def test_a_silent_member_is_removed_after_its_session_timeout(node) -> None:
    with WireClient(node.port) as client:
        client.create_topic("t", 2)
        a = Member(client, "g", ["t"], session_timeout_ms=1000)
        a.beat(owned=[0, 1])
        b = Member(client, "g", ["t"], session_timeout_ms=1000)  # b never heartbeats again

        def a_has_everything() -> bool:
            response = a.beat(owned=a.assignment)
            assert response["error_code"] == 0, response
            return a.assignment == [0, 1] and len(describe(client, "g")["members"]) == 1

        wait_until(a_has_everything, DEADLINE_S, interval_s=0.2, message="the silent member's removal")
        assert f"member {b.member_id} was removed from group g: no heartbeat" in node.log()
        assert b.beat()["error_code"] == errors.UNKNOWN_MEMBER_ID


def test_committed_offsets_and_members_survive_a_restart(node_factory) -> None:
    node = node_factory()
    with WireClient(node.port) as client:
        client.create_topic("t", 2)
        member = Member(client, "g", ["t"])
        member.beat(owned=[0, 1])
        assert member.commit({0: 5, 1: 7}) == {0: 0, 1: 0}
        before = describe(client, "g")
    node.kill9()
    node.start()
    with WireClient(node.port) as client:
        assert committed(fetch_offsets(client, "g")) == {0: 5, 1: 7}
        assert describe(client, "g") == before
        # the member carries on where it was, with a fresh session
        member.client = client
        response = member.beat()
        assert response["error_code"] == 0 and response["member_epoch"] == before["members"][0]["member_epoch"]
        assert member.commit({0: 6}) == {0: 0}
    assert node.stop() == 0
    node.start()
    with WireClient(node.port) as client:
        assert committed(fetch_offsets(client, "g")) == {0: 6, 1: 7}


# -- three nodes ------------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_the_active_controller_coordinates_and_its_successor_keeps_offsets_and_members(cluster_factory) -> None:
    cluster = cluster_factory()
    controller_id = cluster.wait_formed()
    others = [i for i in (1, 2, 3) if i != controller_id]
    with cluster.client(controller_id) as client:
        assert client.create_topic("t", 3, replication_factor=3)["error_code"] == 0
    for node_id in (1, 2, 3):
        with cluster.client(node_id) as client:
            found = client.call(ApiKey.FIND_COORDINATOR, {"key": "g", "key_type": 0})
            assert (found["error_code"], found["node_id"], found["port"]) == \
                (0, controller_id, cluster.nodes[controller_id].port)
    with cluster.client(others[0]) as client:
        refused = client.call(ApiKey.CONSUMER_GROUP_HEARTBEAT, join_body("g", ["t"]))
        assert refused["error_code"] == errors.NOT_COORDINATOR
        assert fetch_offsets(client, "g")["error_code"] == errors.NOT_COORDINATOR
        assert client.call(ApiKey.LIST_GROUPS, {})["error_code"] == errors.NOT_COORDINATOR
        assert describe(client, "g")["error_code"] == errors.NOT_COORDINATOR
    with cluster.client(controller_id) as client:
        member = Member(client, "g", ["t"])
        member.beat(owned=[0, 1, 2])
        assert member.commit({0: 3, 1: 4, 2: 5}) == {0: 0, 1: 0, 2: 0}
        before = describe(client, "g")

    cluster.kill9(controller_id)

    def new_coordinator() -> int | None:
        for node_id in others:
            with cluster.client(node_id) as client:
                found = client.call(ApiKey.FIND_COORDINATOR, {"key": "g", "key_type": 0})
                if found["error_code"] == 0 and found["node_id"] in others:
                    return int(found["node_id"])
        return None

    successor = wait_until(new_coordinator, DEADLINE_S, interval_s=0.1, message="a new coordinator")
    with cluster.client(successor) as client:
        def offsets_served() -> dict[int, int] | None:
            response = fetch_offsets(client, "g")
            if response["error_code"] in (errors.NOT_COORDINATOR, errors.COORDINATOR_NOT_AVAILABLE):
                return None
            return committed(response)

        assert wait_until(offsets_served, DEADLINE_S, interval_s=0.1, message="offsets from the new coordinator") \
            == {0: 3, 1: 4, 2: 5}
        assert describe(client, "g") == before
        member.client = client
        response = member.beat()
        assert response["error_code"] == 0 and response["member_epoch"] == member.epoch
        assert member.commit({0: 8}) == {0: 0}
        assert committed(fetch_offsets(client, "g")) == {0: 8, 1: 4, 2: 5}
