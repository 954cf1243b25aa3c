"""A group coordinator that was SIGSTOPped while it was the active controller must not answer,
once resumed, requests that waited in its socket from the metadata image it had when it
stopped. It did before coordinators checked a leader lease
(``RaftMetadataLog.has_quorum_lease``: a majority answered within raft_min_timeout_ms).

Found by the fault suite (loopback, seed 5: the committed_offsets checker saw an OffsetFetch
probe answer 396 after a commit of 958 had been acknowledged; the probe was sent to node 1
while it was paused and answered 15 ms after its SIGCONT, 100 ms before node 1 logged "no
longer the active controller"). ``GroupService.fetch_offsets`` (and the heartbeat decisions
that append nothing) only ask ``controller.is_active()``, this node's own belief, and read the
local image: nothing proved the node was still the Raft leader when it answered.

This test makes it deterministic: commit 5, pause the controller, commit 10 through the new
controller, queue an OffsetFetch on a connection to the paused node, resume it and read the
answer. A correct coordinator answers 10 or refuses (NOT_COORDINATOR / COORDINATOR_NOT_AVAILABLE).
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from cluster.client import Admin, Consumer, NewTopic, TopicPartition
from cluster.launcher import probe, recv_exactly, wait_until
from cluster.protocol import errors, framing
from cluster.protocol.api import ApiKey
from tests.faults.netns import LoopbackNetwork
from tests.faults.nodes import FaultCluster

TOPIC = "zombie"
GROUP = "zombie-group"
FAILOVER_TIMEOUT_S = 30.0
ANSWER_TIMEOUT_S = 10.0
RESPONSE_BYTES_MAX = 1 << 20


def _commit(bootstrap: str, offset: int) -> None:
    """Commit ``offset`` for partition 0 as a non-member (the group has no members)."""
    with Consumer(bootstrap_servers=bootstrap, group_id=GROUP, enable_auto_commit=False,
                  request_timeout_ms=3000, connect_timeout_ms=1000, metadata_max_age_ms=500) as consumer:
        tp = TopicPartition(TOPIC, 0)
        consumer.assign([tp])
        consumer.commit({tp: offset}, timeout_ms=20000)


def _controller_as_seen_by(cluster: FaultCluster, node_id: int) -> int:
    node = cluster.nodes[node_id]
    answer = probe(node.host, node.port, ApiKey.DESCRIBE_CLUSTER, {})
    return -1 if answer is None else int(answer.get("controller_id", -1))


@pytest.mark.timeout(120)
def test_a_paused_former_coordinator_does_not_answer_offset_fetch_from_a_stale_image(tmp_path: Path) -> None:
    network = LoopbackNetwork([1, 2, 3])
    network.setup()
    cluster = FaultCluster(tmp_path, network, "zombie-test-password")
    try:
        cluster.start_all()
        cluster.wait_formed(60)
        with Admin(bootstrap_servers=cluster.bootstrap, request_timeout_ms=30000) as admin:
            admin.create_topics([NewTopic(TOPIC, 1, 3)])
        _commit(cluster.bootstrap, 5)
        old = cluster.controller_id()
        assert old is not None
        zombie = cluster.nodes[old]
        others = [n for n in cluster.node_ids if n != old]
        sock = socket.create_connection((zombie.host, zombie.port), timeout=ANSWER_TIMEOUT_S)
        try:
            zombie.pause()
            wait_until(lambda: all(_controller_as_seen_by(cluster, n) not in (-1, old) for n in others),
                       FAILOVER_TIMEOUT_S, interval_s=0.1, message="a new active controller")
            _commit(",".join(cluster.nodes[n].address for n in others), 10)
            body = {"group_id": GROUP, "topics": [{"name": TOPIC, "partitions": [0]}]}
            sock.sendall(framing.encode_request(ApiKey.OFFSET_FETCH, 0, 1, "zombie-test", body))
            zombie.resume()
            size = framing.check_frame_size(recv_exactly(sock, 4), RESPONSE_BYTES_MAX)
            _, answer = framing.decode_response(recv_exactly(sock, size))
        finally:
            sock.close()
        if answer.get("error_code") in (errors.NOT_COORDINATOR, errors.COORDINATOR_NOT_AVAILABLE):
            return  # refused: correct
        committed = answer["topics"][0]["partitions"][0]["committed_offset"]
        assert committed == 10, f"node {old}, resumed, answered committed offset {committed} after 10 was " \
                                f"acknowledged by the new coordinator: {answer}"
    finally:
        cluster.close()
        network.teardown()
