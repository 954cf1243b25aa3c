"""The client API: ``Producer``, ``Consumer`` and ``Admin``, in the spirit of kafka-python.

Only ``cluster.protocol`` and ``storage.batch`` are shared with the node, so an
application that produces and consumes loads no broker code. Layout, bottom up:

* ``connection`` — one socket per broker, pipelined requests matched by correlation id;
* ``metadata`` / ``network`` — the cluster picture and the connection pool;
* ``partitioner``, ``futures``, ``accumulator``, ``sender``, ``producer`` — the produce path;
* ``subscription``, ``fetcher``, ``consumer`` — the consume path;
* ``group`` — consumer group membership: the coordinator, heartbeats, assignments;
* ``admin`` — topics, configs, groups and the cluster;
* ``errors`` — ``cluster.protocol.errors`` plus client-side errors (``KraftError`` is the root).
"""

from __future__ import annotations

from cluster.client import errors
from cluster.client.admin import Admin
from cluster.client.consumer import Consumer, ConsumerRebalanceListener
from cluster.client.futures import RecordFuture
from cluster.client.producer import Producer
from cluster.client.structs import (
    BrokerInfo,
    ClusterDescription,
    ConsumerRecord,
    GroupDescription,
    GroupListing,
    GroupPartitionLag,
    MemberDescription,
    NewTopic,
    OffsetAndMetadata,
    OffsetAndTimestamp,
    PartitionDescription,
    PartitionRecords,
    RecordMetadata,
    TopicDescription,
    TopicPartition,
)

__all__ = [
    "Admin", "BrokerInfo", "ClusterDescription", "Consumer", "ConsumerRebalanceListener", "ConsumerRecord",
    "GroupDescription", "GroupListing", "GroupPartitionLag", "MemberDescription", "NewTopic",
    "OffsetAndMetadata", "OffsetAndTimestamp", "PartitionDescription", "PartitionRecords", "Producer", "RecordFuture",
    "RecordMetadata", "TopicDescription", "TopicPartition", "errors",
]
