"""Raw-frame access to a node for the node tests: no client library, just sockets and framing.

``WireClient`` sends request frames and reads response frames on one blocking socket; its
helpers build the exact bodies of ``cluster.protocol.api`` and return the interesting
part of each response. ``batch`` / ``values_from`` build and read record batches with
``storage.batch``.
"""

from __future__ import annotations

import socket
import time
from typing import Any, Sequence

from cluster.protocol import framing
from cluster.protocol.api import ApiKey
from storage.batch import decode_batch, encode_batch, split_batches

RESPONSE_BYTES_MAX = 256 * 1024 * 1024
SOCKET_TIMEOUT_S = 30.0


def batch(values: Sequence[bytes], timestamp_ms: int | None = None, key: bytes | None = None) -> bytes:
    ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    return encode_batch([(ts, key, value, None) for value in values])


def values_from(records: bytes, from_offset: int = 0) -> list[tuple[int, bytes | None]]:
    """(offset, value) of every record at or after ``from_offset`` in a fetch's records."""
    out = []
    for one in split_batches(records):
        out.extend((r.offset, r.value) for r in decode_batch(one) if r.offset >= from_offset)
    return out


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            raise ConnectionError("connection closed by the node")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


class WireClient:
    def __init__(self, port: int, host: str = "127.0.0.1", timeout_s: float = SOCKET_TIMEOUT_S) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._next_correlation_id = 1

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "WireClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def send(self, api_key: int, body: Any, api_version: int = 0) -> int:
        correlation_id = self._next_correlation_id
        self._next_correlation_id += 1
        self.sock.sendall(framing.encode_request(api_key, api_version, correlation_id, "test", body))
        return correlation_id

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self) -> tuple[int, dict]:
        size = framing.check_frame_size(recv_exactly(self.sock, 4), RESPONSE_BYTES_MAX)
        return framing.decode_response(recv_exactly(self.sock, size))

    def call(self, api_key: int, body: Any, api_version: int = 0) -> dict:
        correlation_id = self.send(api_key, body, api_version)
        got, response = self.recv()
        assert got == correlation_id, (got, correlation_id)
        return response

    def is_closed_by_peer(self, timeout_s: float = 10.0) -> bool:
        """True when the node closes the connection (EOF or reset) within ``timeout_s``."""
        self.sock.settimeout(timeout_s)
        try:
            return self.sock.recv(1) == b""
        except ConnectionError:
            return True
        except socket.timeout:
            return False

    # -- API helpers -------------------------------------------------------------------------

    def api_versions(self) -> dict:
        return self.call(ApiKey.API_VERSIONS, {})

    def metadata(self, topics: list[str] | None = None, allow_auto_topic_creation: bool = False) -> dict:
        return self.call(ApiKey.METADATA, {"topics": topics, "allow_auto_topic_creation": allow_auto_topic_creation})

    def create_topics(self, topics: list[dict], validate_only: bool = False) -> list[dict]:
        body = {"topics": topics, "timeout_ms": 10000, "validate_only": validate_only}
        return self.call(ApiKey.CREATE_TOPICS, body)["topics"]

    def create_topic(self, name: str, num_partitions: int = 1, configs: dict[str, str] | None = None,
                     replication_factor: int = 1, validate_only: bool = False) -> dict:
        topic = {"name": name, "num_partitions": num_partitions, "replication_factor": replication_factor,
                 "configs": configs or {}}
        return self.create_topics([topic], validate_only)[0]

    def delete_topics(self, names: list[str]) -> list[dict]:
        return self.call(ApiKey.DELETE_TOPICS, {"topic_names": names, "timeout_ms": 10000})["responses"]

    def describe_topic_configs(self, name: str, keys: list[str] | None = None) -> dict:
        body = {"resources": [{"resource_type": 2, "resource_name": name, "configuration_keys": keys}]}
        return self.call(ApiKey.DESCRIBE_CONFIGS, body)["results"][0]

    @staticmethod
    def produce_body(topic: str, partition: int, records: bytes, acks: int = 1) -> dict:
        return {"acks": acks, "timeout_ms": 10000,
                "topics": [{"name": topic, "partitions": [{"index": partition, "records": records}]}]}

    def produce(self, topic: str, partition: int, records: bytes, acks: int = 1) -> dict:
        response = self.call(ApiKey.PRODUCE, self.produce_body(topic, partition, records, acks))
        return response["topics"][0]["partitions"][0]

    @staticmethod
    def fetch_body(topic: str, partition: int, offset: int, max_wait_ms: int = 0, min_bytes: int = 1,
                   max_bytes: int = 50 * 1024 * 1024, partition_max_bytes: int = 10 * 1024 * 1024) -> dict:
        return {"replica_id": -1, "max_wait_ms": max_wait_ms, "min_bytes": min_bytes, "max_bytes": max_bytes,
                "topics": [{"name": topic, "partitions": [{"index": partition, "fetch_offset": offset,
                                                            "partition_max_bytes": partition_max_bytes,
                                                            "current_leader_epoch": -1}]}]}

    def fetch(self, topic: str, partition: int, offset: int, **kwargs: Any) -> dict:
        response = self.call(ApiKey.FETCH, self.fetch_body(topic, partition, offset, **kwargs))
        assert response["error_code"] == 0
        return response["topics"][0]["partitions"][0]

    def list_offset(self, topic: str, partition: int, timestamp: int) -> dict:
        body = {"replica_id": -1,
                "topics": [{"name": topic, "partitions": [{"index": partition, "timestamp": timestamp}]}]}
        return self.call(ApiKey.LIST_OFFSETS, body)["topics"][0]["partitions"][0]

    def latest(self, topic: str, partition: int = 0) -> int:
        return self.list_offset(topic, partition, -1)["offset"]

    def read_all(self, topic: str, partition: int = 0, offset: int = 0) -> list[tuple[int, bytes | None]]:
        """Every record from ``offset`` to the high watermark, fetching until caught up."""
        out: list[tuple[int, bytes | None]] = []
        while True:
            entry = self.fetch(topic, partition, offset)
            assert entry["error_code"] == 0, entry
            got = values_from(entry["records"], offset)
            out.extend(got)
            if not got:
                return out
            offset = got[-1][0] + 1
