"""The APIs of the native protocol: their keys (Kafka's numbers) and the shape of each body.

Every body is a msgpack map with the snake_case field names below. Error codes are Kafka's
(``cluster.protocol.errors``). Offsets, timestamps and epochs are integers; ``records`` is a
``bin`` holding one or more whole record batches (``storage.batch``), concatenated.

When a request cannot be served at all (unknown api key, unsupported version, a body of
the wrong shape) the response body is ``{"error_code": E, "error_message": str}`` with
E = UNSUPPORTED_VERSION or INVALID_REQUEST, and the connection stays open.

ApiVersions (18)
    request  {}
    response {"error_code", "api_keys": [{"api_key", "min_version", "max_version"}]}

Metadata (3)
    request  {"topics": [str] | None (None = all), "allow_auto_topic_creation": bool}
    response {"cluster_id": str, "controller_id": int,
              "brokers": [{"node_id", "host", "port", "rack": str | None}],
              "topics": [{"error_code", "name", "is_internal": bool,
                          "partitions": [{"error_code", "partition_index", "leader_id",
                                          "leader_epoch", "replica_nodes": [int],
                                          "isr_nodes": [int], "offline_replicas": [int]}]}]}

CreateTopics (19)
    request  {"topics": [{"name", "num_partitions", "replication_factor",
                          "configs": {str: str}}],
              "timeout_ms", "validate_only": bool, "forwarded_by": int (optional)}
    response {"topics": [{"name", "error_code", "error_message": str | None,
                          "num_partitions", "replication_factor"}]}

DeleteTopics (20)
    request  {"topic_names": [str], "timeout_ms", "forwarded_by": int (optional)}
    response {"responses": [{"name", "error_code", "error_message": str | None}]}

    In a multi-node cluster only the active controller decides CreateTopics and
    DeleteTopics. Any other node forwards the request to it, unchanged but for
    "forwarded_by" (the forwarding node's id), and relays the answer once its own metadata
    image shows the outcome. A request that already carries "forwarded_by" is never
    forwarded again: a node that is not (or no longer) the active controller answers
    NOT_CONTROLLER for every item, as does a node that knows no active controller.

DescribeConfigs (32)   (topic configs only: resource_type 2)
    request  {"resources": [{"resource_type": 2, "resource_name": str,
                             "configuration_keys": [str] | None}]}
    response {"results": [{"error_code", "error_message", "resource_type", "resource_name",
                            "configs": [{"name", "value": str | None, "is_default": bool}]}]}

Produce (0)
    request  {"acks": 0 | 1 | -1, "timeout_ms",
              "topics": [{"name", "partitions": [{"index", "records": bin}]}]}
    response {"topics": [{"name", "partitions": [{"index", "error_code",
                          "error_message": str | None, "base_offset", "log_append_time_ms",
                          "log_start_offset"}]}]}
    With acks=0 the node sends no response at all (as Kafka does); the client must not wait
    for one and must not count on the correlation id sequence for that request.

Fetch (1)
    request  {"replica_id": -1 (consumer) | broker id, "max_wait_ms", "min_bytes", "max_bytes",
              "topics": [{"name", "partitions": [{"index", "fetch_offset",
                          "partition_max_bytes", "current_leader_epoch": -1}]}]}
    response {"error_code", "topics": [{"name", "partitions": [{"index", "error_code",
              "high_watermark", "log_start_offset", "records": bin}]}]}
    A consumer sees only batches below the high watermark. The first batch at or after
    fetch_offset is returned even when it is larger than the byte limits (so a consumer always
    makes progress); batches may start before fetch_offset, and the client skips records below
    it. An offset outside [log_start_offset, log end offset] is OFFSET_OUT_OF_RANGE; a
    consumer asking between the high watermark and the log end gets no records yet (a new
    leader's high watermark can briefly be below the one its predecessor served).

ListOffsets (2)
    request  {"replica_id": -1, "topics": [{"name", "partitions": [{"index", "timestamp"}]}]}
             timestamp -1 = latest (the high watermark), -2 = earliest (log start),
             otherwise the first offset whose batch max timestamp is >= timestamp.
    response {"topics": [{"name", "partitions": [{"index", "error_code", "timestamp", "offset",
              "leader_epoch"}]}]}   offset -1 when no record has such a timestamp.

OffsetForLeaderEpoch (23)   a follower to its partition's leader (KIP-101)
    request  {"replica_id": int, "topics": [{"name", "partitions": [{"index",
              "current_leader_epoch", "leader_epoch"}]}]}
    response {"topics": [{"name", "partitions": [{"index", "error_code", "leader_epoch",
              "end_offset"}]}]}
    "leader_epoch" / "end_offset": the largest epoch in the leader's log that is <= the
    asked "leader_epoch", and the offset where it ends (the log end offset for the latest
    one); -1 / -1 when the leader knows no such epoch. "current_leader_epoch" older than the
    leader's is FENCED_LEADER_EPOCH, newer is UNKNOWN_LEADER_EPOCH (-1 skips the check);
    NOT_LEADER_OR_FOLLOWER from a node that does not lead the partition.

AlterPartition (56)   a partition leader to the active controller: set its ISR
    request  {"broker_id": int, "broker_epoch": int, "topics": [{"topic_id": str, "partitions": [{"index",
              "leader_epoch", "partition_epoch", "new_isr": [int]}]}],
              "forwarded_by": int (optional)}
    response {"error_code", "error_message": str | None,
              "topics": [{"topic_id", "partitions": [{"index", "error_code",
                          "error_message": str | None, "leader_id", "leader_epoch",
                          "partition_epoch", "isr": [int]}]}]}
    Decided by ``kraft.lifecycle.alter_partition``; forwarded to the active controller like
    CreateTopics (and answered NOT_CONTROLLER under the same rules). Per partition:
    UNKNOWN_TOPIC_OR_PARTITION, NOT_LEADER_OR_FOLLOWER, STALE_BROKER_EPOCH ("broker_epoch"
    is not the one of the sender's current registration: the request comes from an earlier
    run of its process, KIP-841), FENCED_LEADER_EPOCH,
    INVALID_UPDATE_VERSION (the partition epoch is stale) or INVALID_REQUEST; on success
    "leader_id" / "leader_epoch" / "partition_epoch" / "isr" are the partition's new state
    (on an error: its current state, or -1 / [] when unknown).

DescribeCluster (60)
    request  {}
    response {"error_code", "error_message": str | None, "cluster_id": str,
              "controller_id": int (-1 = unknown),
              "brokers": [{"node_id", "host", "port", "rack": str | None, "fenced": bool,
                           "broker_epoch": int}],
              "raft": None (single node) | {"node_id", "voters": [int], "is_leader": bool,
                       "leader_id": int (-1 = unknown), "ready": bool, "term",
                       "commit_index", "last_applied", "metadata_offset"}}
    "brokers" lists every registered broker, fenced or not; "raft" is the answering
    node's own view of the metadata quorum.

BrokerRegistration (62)   node to the active controller
    request  {"broker_id", "cluster_id": str, "host", "port", "rack": str | None,
              "incarnation_id": str (fresh at every start of the broker's process)}
    response {"error_code", "error_message": str | None, "broker_epoch": int}
    NOT_CONTROLLER when the receiver is not the active controller; INVALID_REQUEST when
    the cluster id is not the controller's. A newly registered broker is fenced until
    its first heartbeat. Every new incarnation registers again and gets a new broker
    epoch (the metadata offset of its registration); an unfenced broker registering again
    is fenced first, so a restarted broker leads nothing until it is unfenced. The same
    incarnation registering again (a retry) changes nothing.

BrokerHeartbeat (63)   node to the active controller, every broker_heartbeat_interval_ms
    request  {"broker_id"}
    response {"error_code", "error_message": str | None, "is_registered": bool,
              "is_fenced": bool}
    is_registered false: the controller does not know the broker; it must register
    again. A fenced broker's heartbeat unfences it (is_fenced tells the state after the
    heartbeat was handled).

Consumer groups (KIP-848 style, server-side assignment). The coordinator of every group is
the active controller; group state and committed offsets are metadata records in the Raft
quorum. A node that is not the active controller answers every group API (except
FindCoordinator) with NOT_COORDINATOR (or COORDINATOR_NOT_AVAILABLE when it knows no
controller); the client then asks FindCoordinator again. Topics are named, not by id.
A "topic_partitions" list is [{"topic": str, "partitions": [int]}], sorted by topic with
sorted partitions.

FindCoordinator (10)
    request  {"key": str (the group id), "key_type": 0}
    response {"error_code", "error_message": str | None, "node_id", "host", "port"}
    Any node answers with the active controller's client endpoint;
    COORDINATOR_NOT_AVAILABLE (node_id -1) while there is none.

ConsumerGroupHeartbeat (68)   a consumer to its group's coordinator
    request  {"group_id", "member_id": str ("" to join), "member_epoch": int,
              "instance_id": str | None, "rack_id": str | None, "client_id": str,
              "rebalance_timeout_ms": int, "session_timeout_ms": int,
              "subscribed_topic_names": [str] | None, "subscribed_topic_regex": str | None,
              "topic_partitions": topic_partitions | None}
    response {"error_code", "error_message": str | None, "member_id": str | None,
              "member_epoch": int, "heartbeat_interval_ms": int,
              "assignment": {"topic_partitions": topic_partitions} | None}
    member_epoch 0 joins (the coordinator picks the member id when member_id is ""; a
    static member names itself with instance_id), -1 leaves, -2 leaves as a static member
    that will come back (its partitions stay reserved for session_timeout_ms). The
    subscription fields and "topic_partitions" (what the member owns now) are None when
    unchanged since the last heartbeat; a joining member sends both. "assignment" is None
    when the member's assignment did not change; otherwise it is the member's whole
    assignment at the returned epoch. A partition is given to a member only after its
    previous owner's heartbeat no longer lists it (or that owner left or expired), so no
    partition has two owners. Errors: UNKNOWN_MEMBER_ID (member unknown: rejoin with
    epoch 0), FENCED_MEMBER_EPOCH (epoch ahead/behind beyond the one in flight: rejoin),
    FENCED_INSTANCE_ID (another member holds the instance id), INVALID_REQUEST (bad
    fields), INVALID_SESSION_TIMEOUT (outside the node's group_min/max_session_timeout_ms),
    INVALID_GROUP_ID (empty id), NOT_COORDINATOR / COORDINATOR_NOT_AVAILABLE.

OffsetCommit (8)
    request  {"group_id", "member_id": str, "member_epoch": int,
              "topics": [{"name", "partitions": [{"index", "committed_offset",
                          "committed_leader_epoch": int, "committed_metadata": str | None}]}],
              "admin_reset": bool (optional, default false)}
    response {"topics": [{"name", "partitions": [{"index", "error_code",
                          "error_message": str | None}]}]}
    One request is one quorum append, whatever its size. member_epoch -1 with member_id ""
    commits outside group membership (a consumer with assigned partitions, or a tool); it
    is refused with UNKNOWN_MEMBER_ID while the group has members. A member's commit with
    an epoch other than its current one is STALE_MEMBER_EPOCH (no zombie commits);
    UNKNOWN_MEMBER_ID for an unknown member. An offset below the partition's committed
    offset is refused with OFFSET_OUT_OF_RANGE (offsets never go backwards); only
    "admin_reset": true may move them back, and only when the group has no members
    (NON_EMPTY_GROUP otherwise); the coordinator logs every reset. An unknown topic or
    partition is UNKNOWN_TOPIC_OR_PARTITION.

OffsetFetch (9)
    request  {"group_id", "topics": [{"name", "partitions": [int]}] | None (None = all)}
    response {"error_code", "error_message": str | None,
              "topics": [{"name", "partitions": [{"index", "committed_offset",
                          "committed_leader_epoch", "committed_metadata": str | None,
                          "error_code"}]}]}
    committed_offset -1 when the group has none for the partition (also for an unknown group).

ListGroups (16)
    request  {}
    response {"error_code", "error_message": str | None,
              "groups": [{"group_id", "group_state": str, "member_count": int}]}
    group_state: "empty" | "assigning" | "reconciling" | "stable".

ConsumerGroupDescribe (69)
    request  {"group_ids": [str]}
    response {"groups": [{"error_code", "error_message": str | None, "group_id",
              "group_state", "group_epoch", "assignment_epoch",
              "members": [{"member_id", "instance_id": str | None, "client_id",
                           "member_epoch", "subscribed_topic_names": [str],
                           "subscribed_topic_regex": str | None,
                           "assignment": topic_partitions,
                           "target_assignment": topic_partitions}]}]}
    GROUP_ID_NOT_FOUND for a group with neither members nor committed offsets.

DeleteGroups (42)
    request  {"groups_names": [str]}
    response {"results": [{"group_id", "error_code", "error_message": str | None}]}
    Removes the group and its committed offsets: NON_EMPTY_GROUP while it has members,
    GROUP_ID_NOT_FOUND when it does not exist.

MetadataFetch (1000)   broker-only node to a voter's client listener (not a Kafka API)
    request  {"after_offset": int, "max_wait_ms": int (optional, capped by the voter)}
    response {"error_code", "error_message": str | None, "offset": int,
              "records": [bin] | None, "snapshot": bin | None, "controller_id": int}
    The voter answers with what it has applied: "offset" is its image's metadata offset;
    "records" (encoded metadata records) are exactly those after "after_offset" up to
    "offset" when it can give them, otherwise "snapshot" is its whole image (msgpack of
    kraft.raft_snapshot.image_to_plain) and "records" is None. Nothing newer than
    "after_offset": "records" is [] and "snapshot" None, after waiting up to "max_wait_ms"
    for a change (long poll). "controller_id" is the active controller the voter knows
    (-1 = none). LEADER_NOT_AVAILABLE when the voter has not caught up with a quorum
    leader (its image may miss committed records); NOT_CONTROLLER from a node that is not
    a voter. Voters may be at different offsets: the fetcher ignores an answer older than
    the image it has.
"""

from __future__ import annotations

from enum import IntEnum


class ApiKey(IntEnum):
    PRODUCE = 0
    FETCH = 1
    LIST_OFFSETS = 2
    METADATA = 3
    OFFSET_COMMIT = 8
    OFFSET_FETCH = 9
    FIND_COORDINATOR = 10
    LIST_GROUPS = 16
    API_VERSIONS = 18
    CREATE_TOPICS = 19
    DELETE_TOPICS = 20
    OFFSET_FOR_LEADER_EPOCH = 23
    DESCRIBE_CONFIGS = 32
    DELETE_GROUPS = 42
    ALTER_PARTITION = 56
    DESCRIBE_CLUSTER = 60
    BROKER_REGISTRATION = 62
    BROKER_HEARTBEAT = 63
    CONSUMER_GROUP_HEARTBEAT = 68
    CONSUMER_GROUP_DESCRIBE = 69
    METADATA_FETCH = 1000  # kraft's own: outside Kafka's numbering, for its later listener


# (min_version, max_version) the node serves for each API.
SUPPORTED_VERSIONS: dict[ApiKey, tuple[int, int]] = {key: (0, 0) for key in ApiKey}

ACKS_NONE = 0
ACKS_LEADER = 1
ACKS_ALL = -1

LATEST_TIMESTAMP = -1
EARLIEST_TIMESTAMP = -2

CONSUMER_REPLICA_ID = -1
RESOURCE_TYPE_TOPIC = 2
NO_CONTROLLER_ID = -1

COORDINATOR_KEY_TYPE_GROUP = 0
JOIN_GROUP_MEMBER_EPOCH = 0
LEAVE_GROUP_MEMBER_EPOCH = -1
LEAVE_GROUP_STATIC_MEMBER_EPOCH = -2
NO_MEMBER_EPOCH = -1  # OffsetCommit outside group membership (with member_id "")
NO_COMMITTED_OFFSET = -1
