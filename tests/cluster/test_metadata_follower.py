"""MetadataFetch without processes: the voter's answer and the follower's decision (pure),
then RemoteMetadataLog's fetch thread against a scripted voter on a loopback socket."""

from __future__ import annotations

import socket
import threading
from typing import Any, Callable, Iterator

import pytest

from cluster.launcher import wait_until
from cluster.metadata_follower import (
    RemoteMetadataConfig,
    RemoteMetadataLog,
    decode_image,
    encode_image,
    encode_records,
    follow_response,
    metadata_fetch_response,
)
from cluster.protocol import errors, framing
from cluster.protocol.api import ApiKey
from kraft.image import MetadataImage
from kraft.raft_log import NotControllerError
from kraft.records import RegisterBrokerRecord, TopicRecord, UnfenceBrokerRecord

pytestmark = pytest.mark.timeout(30)

BASE = MetadataImage.EMPTY.apply([RegisterBrokerRecord(1, "h1", 9092, None), UnfenceBrokerRecord(1)])
NEXT_RECORDS = [TopicRecord("id-a", "orders"), RegisterBrokerRecord(4, "h4", 9092, "r1")]
NEWER = BASE.apply(NEXT_RECORDS)


def test_image_bytes_round_trip_and_refuse_garbage() -> None:
    assert decode_image(encode_image(NEWER)) == NEWER
    for garbage in (b"", b"\xc1", encode_image(NEWER)[:-3]):
        with pytest.raises(ValueError):
            decode_image(garbage)


def test_a_voter_answers_with_its_image_when_newer_and_nothing_otherwise() -> None:
    newer = metadata_fetch_response(NEWER, BASE.offset, 2, is_voter=True, ready=True)
    assert newer["error_code"] == errors.NONE and newer["records"] is None
    assert newer["offset"] == NEWER.offset and newer["controller_id"] == 2
    assert decode_image(newer["snapshot"]) == NEWER
    for after in (NEWER.offset, NEWER.offset + 5):  # caught up, or asked by a node ahead of it
        same = metadata_fetch_response(NEWER, after, None, is_voter=True, ready=True)
        assert same["records"] == [] and same["snapshot"] is None and same["controller_id"] == -1


def test_only_a_ready_voter_answers() -> None:
    assert metadata_fetch_response(NEWER, 0, 2, is_voter=True, ready=False)["error_code"] == errors.LEADER_NOT_AVAILABLE
    assert metadata_fetch_response(NEWER, 0, 2, is_voter=False, ready=True)["error_code"] == errors.NOT_CONTROLLER


def answer(**fields: Any) -> dict[str, Any]:
    return {"error_code": 0, "error_message": None, "offset": NEWER.offset, "records": None,
            "snapshot": None, "controller_id": 2, **fields}


def test_the_follower_takes_a_newer_snapshot_and_ignores_an_older_one() -> None:
    taken = follow_response(BASE, answer(snapshot=encode_image(NEWER)))
    assert (taken.image, taken.controller_id, taken.ready, taken.error) == (NEWER, 2, True, None)
    stale = follow_response(NEWER, answer(offset=BASE.offset, snapshot=encode_image(BASE)))
    assert stale.image is None and stale.ready and stale.error is None


def test_the_follower_applies_records_only_when_they_start_at_its_offset() -> None:
    exact = follow_response(BASE, answer(records=encode_records(NEXT_RECORDS)))
    assert exact.image == NEWER and exact.error is None
    gap = follow_response(MetadataImage.EMPTY, answer(records=encode_records(NEXT_RECORDS)))
    assert gap.image is None and gap.error is not None and not gap.ready
    nothing_new = follow_response(NEWER, answer(records=[]))
    assert nothing_new.image is None and nothing_new.error is None and nothing_new.ready


@pytest.mark.parametrize("fields", [
    {"error_code": errors.LEADER_NOT_AVAILABLE},
    {"error_code": "0"},
    {"offset": -1},
    {"offset": True},
    {"controller_id": None},
    {"snapshot": "text"},
    {"snapshot": b"\x93\x01"},
    {"snapshot": encode_image(BASE)},  # says offset NEWER.offset, holds BASE
    {"records": None},
    {"records": [b"\x00garbage"], "offset": BASE.offset + 1},
])
def test_a_failed_or_malformed_answer_changes_nothing(fields: dict[str, Any]) -> None:
    outcome = follow_response(BASE, answer(**fields))
    assert outcome.image is None and outcome.error is not None and not outcome.ready
    assert outcome.controller_id is None


# -- the fetch thread against a scripted voter -------------------------------------------------


class ScriptedVoter:
    """A listener answering each MetadataFetch with ``reply(after_offset)``."""

    def __init__(self, reply: Callable[[int], dict[str, Any]]) -> None:
        self.reply = reply
        self.requests: list[dict[str, Any]] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.server.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            while True:
                conn, _ = self.server.accept()
                threading.Thread(target=self._connection, args=(conn,), daemon=True).start()
        except OSError:
            return

    def _connection(self, conn: socket.socket) -> None:
        with conn:
            try:
                while True:
                    size = framing.check_frame_size(_read(conn, 4), 1 << 20)
                    header, body = framing.decode_request(_read(conn, size))
                    assert header.api_key == ApiKey.METADATA_FETCH
                    self.requests.append(body)
                    conn.sendall(framing.encode_response(header.correlation_id, self.reply(body["after_offset"])))
            except (OSError, ConnectionError):
                return

    def close(self) -> None:
        self.server.close()


def _read(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


@pytest.fixture
def voters() -> Iterator[list[ScriptedVoter]]:
    made: list[ScriptedVoter] = []
    yield made
    for voter in made:
        voter.close()


def test_the_follower_skips_a_voter_that_is_not_ready_and_follows_one_that_is(voters: list[ScriptedVoter]) -> None:
    images = [NEWER]
    unready = ScriptedVoter(lambda after: metadata_fetch_response(BASE, after, 2, is_voter=True, ready=False))
    ready = ScriptedVoter(lambda after: metadata_fetch_response(images[-1], after, 3, is_voter=True, ready=True))
    voters += [unready, ready]
    seen: list[tuple[int, int]] = []
    log = RemoteMetadataLog(RemoteMetadataConfig(
        node_id=4, bootstrap_servers=(unready.address, ready.address), fetch_wait_ms=10, retry_backoff_ms=10))
    try:
        log.subscribe(lambda old, new: seen.append((old.offset, new.offset)))
        assert log.wait_ready(10)
        assert log.image == NEWER and log.active_controller_id() == 3
        assert not log.is_active_controller() and log.status.ready and log.status.offset == NEWER.offset
        assert seen == [(0, NEWER.offset)]
        with pytest.raises(NotControllerError) as info:
            log.append(NEXT_RECORDS)
        assert info.value.controller_id == 3
        newest = NEWER.apply([TopicRecord("id-b", "payments")])
        images.append(newest)
        wait_until(lambda: log.image.offset == newest.offset, 10, message="the newer image")
        assert log.image.topic("payments") is not None and seen[-1] == (NEWER.offset, newest.offset)
        assert ready.requests[-1]["after_offset"] == newest.offset
    finally:
        log.close()


def test_with_no_voter_answering_it_is_not_ready_and_closes_promptly(voters: list[ScriptedVoter]) -> None:
    down = ScriptedVoter(lambda after: metadata_fetch_response(BASE, after, None, is_voter=True, ready=False))
    voters.append(down)
    log = RemoteMetadataLog(RemoteMetadataConfig(node_id=5, bootstrap_servers=(down.address,), retry_backoff_ms=10))
    try:
        assert not log.wait_ready(0.3)
        assert log.image == MetadataImage.EMPTY and log.active_controller_id() is None
        assert len(down.requests) >= 2  # it keeps asking
    finally:
        log.close()
    assert not log.wait_ready(0.1)
