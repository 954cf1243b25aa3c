"""Bad input to a real node: each gets its error (or a closed connection), nothing bad is
stored, and the node keeps serving afterwards (checked with a produce + fetch each time)."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest
from crc32c import crc32c
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.protocol import errors, framing
from cluster.protocol.api import ApiKey
from tests.cluster.wire import WireClient, batch
from tests.conftest import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


class Health:
    """Produce one record to a canary topic and read it back: the node still serves."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.count = 0
        with WireClient(port) as client:
            assert client.create_topic("canary")["error_code"] == 0

    def check(self) -> None:
        with WireClient(self.port, timeout_s=10) as client:
            value = b"canary-%d" % self.count
            entry = client.produce("canary", 0, batch([value]))
            assert (entry["error_code"], entry["base_offset"]) == (0, self.count), entry
            assert client.read_all("canary", 0, self.count) == [(self.count, value)]
        self.count += 1


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def with_attributes(raw: bytes, attributes: int) -> bytes:
    """A CRC-valid copy of the batch with other attribute bits."""
    out = bytearray(raw)
    struct.pack_into(">h", out, 21, attributes)
    struct.pack_into(">I", out, 17, crc32c(bytes(out[21:])))
    return bytes(out)


def flip_bit(raw: bytes, bit: int) -> bytes:
    out = bytearray(raw)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def test_oversized_frame_is_refused_before_it_is_read(node_factory) -> None:
    node = node_factory({"socket_request_max_bytes": 1 << 20})
    health = Health(node.port)
    for size in (1 << 30, (1 << 20) + 1, -5):
        with WireClient(node.port) as client:
            client.send_raw(struct.pack(">i", size))  # the prefix alone: the body is never sent
            assert client.is_closed_by_peer(), f"a {size}-byte frame was not refused"
        health.check()
    assert "refused" in node.log()
    # a frame just under the limit is read and answered
    with WireClient(node.port) as client:
        records = batch([b"x" * (900 * 1024)])
        assert client.produce("canary", 0, records)["error_code"] == 0
    health.count += 1
    health.check()


def test_frames_that_are_not_requests_close_the_connection(node) -> None:
    health = Health(node.port)
    bad_payloads = [
        b"\xc1",  # never valid msgpack
        msgpack.packb({"not": "a list"}),
        msgpack.packb([1, 2, 3]),
        msgpack.packb(["zero", 0, 1, None, {}]),
        msgpack.packb([0, 0, 1, 7, {}]),  # client_id must be a string
    ]
    for payload in bad_payloads:
        with WireClient(node.port) as client:
            client.send_raw(struct.pack(">i", len(payload)) + payload)
            assert client.is_closed_by_peer(), payload
        health.check()


def test_each_bad_request_gets_its_error_and_the_node_keeps_serving(node) -> None:
    health = Health(node.port)
    with WireClient(node.port) as client:
        assert client.create_topic("small", configs={"max.message.bytes": "1000"})["error_code"] == 0
        assert client.create_topic("t")["error_code"] == 0

        def expect_produce(topic: str, records: bytes, code: int, acks: int = 1) -> dict:
            entry = client.produce(topic, 0, records, acks=acks)
            assert entry["error_code"] == code, entry
            assert entry["base_offset"] == -1
            health.check()
            return entry

        too_large = expect_produce("small", batch([b"x" * 2000]), errors.MESSAGE_TOO_LARGE)
        assert "max.message.bytes" in too_large["error_message"]
        expect_produce("missing", batch([b"x"]), errors.UNKNOWN_TOPIC_OR_PARTITION)
        assert client.produce("t", 5, batch([b"x"]))["error_code"] == errors.UNKNOWN_TOPIC_OR_PARTITION
        expect_produce("t", batch([b"x"]), errors.INVALID_REQUIRED_ACKS, acks=2)
        corrupt = expect_produce("t", flip_bit(batch([b"hello"]), 70 * 8), errors.CORRUPT_MESSAGE)
        assert "CRC" in corrupt["error_message"]
        expect_produce("t", batch([b"hello"])[:-3], errors.CORRUPT_MESSAGE)
        expect_produce("t", batch([b"ok"]) + b"\x00" * 5, errors.CORRUPT_MESSAGE)
        expect_produce("t", b"", errors.CORRUPT_MESSAGE)
        expect_produce("t", with_attributes(batch([b"z"]), 1), errors.UNSUPPORTED_COMPRESSION_TYPE)
        assert client.latest("t") == 0, "a refused batch was stored"

        # a request with one good and one corrupt batch for a partition stores nothing
        expect_produce("t", batch([b"good"]) + flip_bit(batch([b"bad"]), 65 * 8), errors.CORRUPT_MESSAGE)
        assert client.latest("t") == 0

        def expect_create(topic: dict, code: int) -> None:
            result = client.create_topics([topic])[0]
            assert result["error_code"] == code, result
            assert result["error_message"]
            health.check()

        base = {"num_partitions": 1, "replication_factor": 1, "configs": {}}
        expect_create({**base, "name": "bad name!"}, errors.INVALID_TOPIC_EXCEPTION)
        expect_create({**base, "name": "."}, errors.INVALID_TOPIC_EXCEPTION)
        expect_create({**base, "name": "zero", "num_partitions": 0}, errors.INVALID_PARTITIONS)
        expect_create({**base, "name": "rf", "replication_factor": 3}, errors.INVALID_REPLICATION_FACTOR)
        expect_create({**base, "name": "cfg", "configs": {"retention.ms": "abc"}}, errors.INVALID_CONFIG)
        expect_create({**base, "name": "cfg", "configs": {"no.such.key": "1"}}, errors.INVALID_CONFIG)
        expect_create({**base, "name": "t"}, errors.TOPIC_ALREADY_EXISTS)
        assert client.metadata(["bad name!"])["topics"][0]["error_code"] == errors.INVALID_TOPIC_EXCEPTION

        # acks=all with fewer in-sync replicas than min.insync.replicas
        assert client.create_topic("strict", configs={"min.insync.replicas": "2"})["error_code"] == 0
        expect_produce("strict", batch([b"x"]), errors.NOT_ENOUGH_REPLICAS, acks=-1)
        assert client.produce("strict", 0, batch([b"x"]), acks=1)["error_code"] == 0

        # requests the node cannot serve at all: the connection stays open
        unknown = client.call(99, {})
        assert unknown["error_code"] == errors.UNSUPPORTED_VERSION and unknown["error_message"]
        assert client.call(ApiKey.METADATA, {"topics": None}, api_version=7)["error_code"] == errors.UNSUPPORTED_VERSION
        wrong_shapes = [
            (ApiKey.PRODUCE, {"acks": 1}),
            (ApiKey.PRODUCE, {"acks": "1", "topics": []}),
            (ApiKey.PRODUCE, {"acks": 1, "topics": [{"name": "t", "partitions": [{"index": 0, "records": "str"}]}]}),
            (ApiKey.FETCH, {"max_wait_ms": 0, "min_bytes": 1, "max_bytes": 100, "topics": "t"}),
            (ApiKey.METADATA, ["not", "a", "map"]),
            (ApiKey.METADATA, {"topics": [1, 2]}),
            (ApiKey.CREATE_TOPICS, {"topics": [{"name": 5}]}),
            (ApiKey.CREATE_TOPICS, {"topics": [{"name": "x", "configs": {"retention.ms": 5}}]}),
            (ApiKey.DELETE_TOPICS, {}),
            (ApiKey.LIST_OFFSETS, {"topics": [{"name": "t", "partitions": [{"index": 0}]}]}),
            (ApiKey.DESCRIBE_CONFIGS, {"resources": [{"resource_type": 2}]}),
            (ApiKey.API_VERSIONS, None),
        ]
        for api_key, body in wrong_shapes:
            response = client.call(api_key, body)
            if api_key == ApiKey.API_VERSIONS:  # ApiVersions ignores its (empty) body
                assert response["error_code"] == 0
                continue
            assert response["error_code"] == errors.INVALID_REQUEST, (api_key, body, response)
            assert response["error_message"]
        health.check()
        assert client.metadata(["x"])["topics"][0]["error_code"] == errors.UNKNOWN_TOPIC_OR_PARTITION
    assert node.process.poll() is None


def test_random_and_mangled_input_never_crashes_or_changes_stored_data(node) -> None:
    health = Health(node.port)
    with WireClient(node.port) as client:
        client.create_topic("kept")
        for i in range(3):
            assert client.produce("kept", 0, batch([b"kept-%d" % i] * 3))["error_code"] == 0
        stored = client.read_all("kept")
    template = batch([b"payload-one", b"payload-two"])
    # Bits the node overwrites by design (base offset: bytes 0-7, leader epoch: bytes 12-15)
    # are outside the CRC; every other bit is covered by the length, magic or CRC checks.
    flippable_bits = [b for b in range(len(template) * 8) if not (b < 64 or 96 <= b < 128)]
    kinds_seen: list[str] = []
    valid_frame = framing.encode_request(ApiKey.PRODUCE, 0, 1, "h", WireClient.produce_body("kept", 0, template))

    def send_and_close(data: bytes) -> None:
        with socket.create_connection(("127.0.0.1", node.port), timeout=10) as sock:
            sock.sendall(data)

    @settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.one_of(
        st.tuples(st.just("random"), st.binary(max_size=300)),
        st.tuples(st.just("truncated"), st.integers(0, len(valid_frame) - 1)),
        st.tuples(st.just("flipped"), st.sampled_from(flippable_bits)),
        st.tuples(st.just("body"), st.recursive(
            st.none() | st.booleans() | st.integers(-(2 ** 63), 2 ** 64 - 1) | st.text(max_size=5) | st.binary(max_size=20),
            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
            max_leaves=10)),
    ))
    def attack(case: tuple) -> None:
        kind, value = case
        kinds_seen.append(kind)
        if kind == "random":
            send_and_close(value)
        elif kind == "truncated":
            send_and_close(valid_frame[:value])
        elif kind == "flipped":
            with WireClient(node.port, timeout_s=10) as client:
                entry = client.produce("kept", 0, flip_bit(template, value))
                assert entry["error_code"] == errors.CORRUPT_MESSAGE, entry
        else:
            with WireClient(node.port, timeout_s=10) as client:
                for api_key in (ApiKey.PRODUCE, ApiKey.FETCH, ApiKey.CREATE_TOPICS, ApiKey.LIST_OFFSETS):
                    body = value if api_key != ApiKey.PRODUCE or not isinstance(value, dict) else {**value, "acks": 1}
                    response = client.call(api_key, body)
                    assert response.get("error_code", 0) != errors.UNKNOWN_SERVER_ERROR, response
        assert node.process.poll() is None, node.log()
        with WireClient(node.port, timeout_s=10) as client:
            assert client.read_all("kept") == stored

    attack()
    assert len(kinds_seen) >= 40 and len(set(kinds_seen)) == 4, kinds_seen
    health.check()
    assert "Traceback" not in node.log()


def test_bad_config_file_exits_2_naming_the_key(tmp_path: Path) -> None:
    path = _write(tmp_path, 'node_id = 1\nmessage_max_bytes = "abc"\n')
    result = subprocess.run(
        [sys.executable, "-m", "cluster.node", "--config", str(path)],
        capture_output=True, text=True, timeout=20, cwd=str(tmp_path),
    )
    assert result.returncode == 2
    assert "message_max_bytes" in result.stderr and "line 2" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# -- disk full ---------------------------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("disk-full test needs root and mount(8) to create a small tmpfs")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the disk-full test: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


@pytest.mark.timeout(120)
def test_disk_full_is_a_clean_error_and_acknowledged_records_stay_readable(node_factory, small_tmpfs: Path) -> None:
    node = node_factory({"data_dir": str(small_tmpfs / "data"), "lmdb_map_size_bytes": 1 << 20}, start=False)
    try:
        node.start()
        acknowledged: list[tuple[int, bytes]] = []
        with WireClient(node.port) as client:
            assert client.create_topic("fill")["error_code"] == 0
            storage_error = None
            for i in range(200):  # 200 x 100 KB is far beyond the 6 MB tmpfs
                value = (b"%06d" % i) * (100 * 1024 // 6)
                entry = client.produce("fill", 0, batch([value]))
                if entry["error_code"] == errors.KAFKA_STORAGE_ERROR:
                    storage_error = entry
                    break
                assert entry["error_code"] == 0, entry
                acknowledged.append((entry["base_offset"], value))
            assert storage_error is not None, "the tmpfs never filled up"
            assert storage_error["error_message"]
            assert acknowledged, "nothing fitted before the disk filled up"
            assert node.process.poll() is None
            assert client.metadata(["fill"])["topics"][0]["error_code"] == 0
            assert client.read_all("fill") == acknowledged
            assert client.latest("fill") == len(acknowledged)
    finally:
        node.kill9()  # the finaliser unmounts; the process must be gone first
