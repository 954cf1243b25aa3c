"""BrokerConnection against a scripted broker: pipelining, ordering, timeouts, reconnects."""

from __future__ import annotations

import itertools
import socket
import threading

import pytest

from cluster.client import errors
from cluster.client.connection import BrokerConnection, parse_bootstrap
from cluster.protocol import framing
from cluster.protocol.api import ApiKey
from tests.client.fake_broker import HOLD, FakeBroker
from tests.conftest import free_port, wait_until

pytestmark = pytest.mark.timeout(60)


def echo(header: framing.RequestHeader, body: dict) -> dict:
    return {"echo": body, "api_key": header.api_key}


def test_pipelined_requests_complete_in_order_with_their_own_bodies() -> None:
    broker = FakeBroker(echo)
    conn = BrokerConnection("127.0.0.1", broker.port, client_id="t")
    try:
        futures = [conn.send(ApiKey.METADATA, {"n": i}) for i in range(50)]
        assert [f.result(10)["echo"]["n"] for f in futures] == list(range(50))
        ids = [h.correlation_id for h, _ in broker.requests]
        assert ids == sorted(ids) and len(set(ids)) == 50
        assert all(h.client_id == "t" for h, _ in broker.requests)
    finally:
        conn.close()
        broker.close()


def test_requests_without_a_response_do_not_take_a_slot() -> None:
    broker = FakeBroker(lambda h, b: None if b.get("acks") == 0 else echo(h, b))
    conn = BrokerConnection("127.0.0.1", broker.port, client_id="t")
    try:
        silent = conn.send(ApiKey.PRODUCE, {"acks": 0}, expect_response=False)
        assert silent.result(1) == {}
        answered = conn.send(ApiKey.PRODUCE, {"acks": 1})
        assert answered.result(10)["echo"] == {"acks": 1}
        assert conn.in_flight_count == 0
    finally:
        conn.close()
        broker.close()


def test_a_wrong_correlation_id_fails_the_connection() -> None:
    broker = FakeBroker(lambda h, b: framing.encode_response(h.correlation_id + 7, {}))
    conn = BrokerConnection("127.0.0.1", broker.port, client_id="t")
    try:
        with pytest.raises(errors.NetworkExceptionError, match="correlation id"):
            conn.send(ApiKey.METADATA, {}).result(10)
        assert not conn.is_connected()
    finally:
        conn.close()
        broker.close()


def test_a_request_without_an_answer_times_out_and_the_next_one_reconnects() -> None:
    held = threading.Event()

    def handler(header: framing.RequestHeader, body: dict):
        if body.get("hold"):
            held.set()
            return HOLD
        return echo(header, body)

    broker = FakeBroker(handler)
    conn = BrokerConnection("127.0.0.1", broker.port, client_id="t", request_timeout_ms=300)
    try:
        future = conn.send(ApiKey.METADATA, {"hold": True})
        with pytest.raises(errors.RequestTimedOutError) as info:
            future.result(10)
        assert info.value.retriable
        assert conn.send(ApiKey.METADATA, {"n": 1}).result(10)["echo"] == {"n": 1}
    finally:
        conn.close()
        broker.close()


def test_a_dropped_connection_fails_pending_requests_retriably() -> None:
    broker = FakeBroker(lambda h, b: HOLD)
    conn = BrokerConnection("127.0.0.1", broker.port, client_id="t")
    try:
        futures = [conn.send(ApiKey.METADATA, {}) for _ in range(3)]
        wait_until(lambda: len(broker.requests) == 3, 10, message="requests at the broker")
        broker.drop_connections()
        for future in futures:
            with pytest.raises(errors.NetworkExceptionError) as info:
                future.result(10)
            assert info.value.retriable and info.value.invalid_metadata
    finally:
        conn.close()
        broker.close()


def test_connection_refused_is_a_retriable_error_with_backoff() -> None:
    conn = BrokerConnection("127.0.0.1", free_port(), client_id="t", reconnect_backoff_ms=200)
    first = conn.send(ApiKey.METADATA, {})
    assert isinstance(first.error, errors.NetworkExceptionError) and first.error.retriable
    assert conn.backoff_remaining_ms() > 0
    second = conn.send(ApiKey.METADATA, {})
    assert "next attempt" in str(second.error)
    conn.close()


def test_large_responses_arrive_whole() -> None:
    blob = bytes(range(256)) * 20000  # ~5 MB
    broker = FakeBroker(lambda h, b: {"blob": blob})
    conn = BrokerConnection("127.0.0.1", broker.port, client_id="t")
    try:
        futures = [conn.send(ApiKey.FETCH, {}) for _ in range(3)]
        assert all(f.result(30)["blob"] == blob for f in futures)
    finally:
        conn.close()
        broker.close()


def test_bootstrap_parsing() -> None:
    assert parse_bootstrap("a:1, b:2") == [("a", 1), ("b", 2)]
    assert parse_bootstrap(["[::1]:9092"]) == [("::1", 9092)]
    with pytest.raises(errors.ConfigError):
        parse_bootstrap("nohost")
    with pytest.raises(errors.ConfigError):
        parse_bootstrap("")


def test_responses_split_and_merged_anyhow_on_the_wire_arrive_whole_and_in_order() -> None:
    """The reader buffers: frames that share a recv, frames cut anywhere (the size prefix
    too) and a frame larger than the read buffer all come out whole."""
    from cluster.client.connection import READ_BUFFER_BYTES
    from cluster.launcher import recv_exactly

    sizes = [10, 3, READ_BUFFER_BYTES + 12_345, 0, 70_000, READ_BUFFER_BYTES - 20] + [5] * 200
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve() -> None:
        peer, _ = listener.accept()
        with peer:
            frames = []
            for size in sizes:
                prefix = recv_exactly(peer, framing.SIZE_BYTES)
                header, _ = framing.decode_request(recv_exactly(peer, framing.check_frame_size(prefix, 1 << 30)))
                frames.append(framing.encode_response(header.correlation_id, {"blob": b"x" * size}))
            wire = b"".join(frames)
            chunks = itertools.cycle([1, 3, 7, 1000, 65_536, 300_000, 2])
            pos = 0
            while pos < len(wire):
                step = next(chunks)
                peer.sendall(wire[pos:pos + step])
                pos += step
            peer.recv(1)  # hold the connection until the client closes it

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    conn = BrokerConnection("127.0.0.1", listener.getsockname()[1], client_id="t")
    try:
        futures = [conn.send(ApiKey.METADATA, {"n": i}) for i in range(len(sizes))]
        assert [len(f.result(30)["blob"]) for f in futures] == sizes
    finally:
        conn.close()
        listener.close()
        server.join(timeout=10)


def test_a_failure_callback_may_send_on_the_same_connection() -> None:
    """Futures fail after the connection's lock is let go: a callback that sends again (the
    producer's sender does) reconnects instead of deadlocking the reader thread."""
    broker = FakeBroker(lambda h, b: HOLD if b.get("hold") else echo(h, b))
    conn = BrokerConnection("127.0.0.1", broker.port, client_id="t")
    resent: list = []
    try:
        held = conn.send(ApiKey.METADATA, {"hold": True})
        held.add_callback(lambda f: resent.append(conn.send(ApiKey.METADATA, {"again": True})))
        wait_until(lambda: len(broker.requests) == 1, 10, message="the request at the broker")
        broker.drop_connections()
        wait_until(lambda: resent, 10, message="the callback's send to return")
        assert isinstance(held.error, errors.NetworkExceptionError)
        assert resent[0].result(10)["echo"] == {"again": True}
    finally:
        conn.close()
        broker.close()
