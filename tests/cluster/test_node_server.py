"""The listener in-process with a scripted handler: ordering, limits, error mapping."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest

from cluster.protocol import errors, framing
from cluster.protocol.framing import RequestHeader
from cluster.server import Server

pytestmark = pytest.mark.timeout(30)

FRAME_BYTES_MAX = 4096


class ScriptedHandler:
    """Answers {"echo": body}; a body {"wait": name} blocks until ``release(name)``;
    {"raise": "kafka"|"bug"} raises; {"silent": true} answers nothing."""

    def __init__(self) -> None:
        self.started: list[Any] = []
        self.gates: dict[str, asyncio.Event] = {}

    def gate(self, name: str) -> asyncio.Event:
        return self.gates.setdefault(name, asyncio.Event())

    async def handle(self, header: RequestHeader, body: Any) -> dict | None:
        self.started.append(body)
        if isinstance(body, dict):
            if "wait" in body:
                await self.gate(body["wait"]).wait()
            if body.get("raise") == "kafka":
                raise errors.InvalidRequestError("bad shape")
            if body.get("raise") == "bug":
                raise RuntimeError("a bug in a handler")
            if body.get("silent"):
                return None
        return {"error_code": 0, "echo": body}


async def open_server(handler: ScriptedHandler, **limits: int) -> Server:
    server = Server("127.0.0.1", 0, handler, frame_bytes_max=FRAME_BYTES_MAX,
                    connections_max=limits.get("connections_max", 10),
                    in_flight_max=limits.get("in_flight_max", 8))
    await server.start()
    return server


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict]:
    size = framing.check_frame_size(await reader.readexactly(4), 1 << 20)
    return framing.decode_response(await reader.readexactly(size))


def request(correlation_id: int, body: Any, api_key: int = 18) -> bytes:
    return framing.encode_request(api_key, 0, correlation_id, "t", body)


def test_responses_leave_in_request_order_even_when_handlers_finish_out_of_order() -> None:
    async def scenario() -> None:
        handler = ScriptedHandler()
        server = await open_server(handler)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(request(1, {"wait": "first"}) + request(2, {"n": 2}) + request(3, {"silent": True})
                     + request(4, {"n": 4}))
        await writer.drain()
        # all four run concurrently: the later ones finished while the first still waits
        while len(handler.started) < 4:
            await asyncio.sleep(0.01)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(read_response(reader), 0.2)
        handler.gate("first").set()
        assert [(await read_response(reader))[0] for _ in range(2)] == [1, 2]
        assert (await read_response(reader)) == (4, {"error_code": 0, "echo": {"n": 4}})  # 3 is silent
        writer.close()
        await server.stop(1.0)

    asyncio.run(scenario())


def test_errors_become_responses_and_the_connection_stays_open() -> None:
    async def scenario() -> None:
        server = await open_server(ScriptedHandler())
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(request(1, {"raise": "kafka"}) + request(2, {"raise": "bug"}) + request(3, {"ok": 1}))
        _, first = await read_response(reader)
        assert first == {"error_code": errors.INVALID_REQUEST, "error_message": "bad shape"}
        _, second = await read_response(reader)
        assert second["error_code"] == errors.UNKNOWN_SERVER_ERROR and "a bug" in second["error_message"]
        assert await read_response(reader) == (3, {"error_code": 0, "echo": {"ok": 1}})
        writer.close()
        await server.stop(1.0)

    asyncio.run(scenario())


def test_reading_stops_when_in_flight_requests_reach_the_limit() -> None:
    async def scenario() -> None:
        handler = ScriptedHandler()
        server = await open_server(handler, in_flight_max=3)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"".join(request(i, {"wait": "all", "i": i}) for i in range(1, 11)))
        await writer.drain()
        await asyncio.sleep(0.2)  # give the server time to read everything it is allowed to
        assert len(handler.started) == 3
        handler.gate("all").set()
        assert [(await read_response(reader))[0] for _ in range(10)] == list(range(1, 11))
        writer.close()
        await server.stop(1.0)

    asyncio.run(scenario())


def test_oversized_and_malformed_frames_close_only_their_connection() -> None:
    async def scenario() -> None:
        server = await open_server(ScriptedHandler())
        for data in (struct.pack(">i", FRAME_BYTES_MAX + 1), struct.pack(">i", -1),
                     struct.pack(">i", 1) + b"\xc1"):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(data)
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
            writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(request(9, {}))
        assert (await read_response(reader))[0] == 9
        writer.close()
        await server.stop(1.0)

    asyncio.run(scenario())


def test_connections_beyond_the_limit_are_closed() -> None:
    async def scenario() -> None:
        server = await open_server(ScriptedHandler(), connections_max=2)
        kept = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(2)]
        for reader, writer in kept:  # both are being served
            writer.write(request(1, {}))
            await read_response(reader)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        kept[0][1].close()
        await asyncio.sleep(0.1)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(request(2, {}))
        assert (await read_response(reader))[0] == 2
        await server.stop(1.0)

    asyncio.run(scenario())


def test_stop_answers_in_flight_requests_then_closes() -> None:
    async def scenario() -> None:
        handler = ScriptedHandler()
        server = await open_server(handler)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(request(1, {"wait": "slow"}))
        while not handler.started:
            await asyncio.sleep(0.01)
        stopping = asyncio.create_task(server.stop(5.0))
        await asyncio.sleep(0.1)
        handler.gate("slow").set()
        assert (await read_response(reader))[0] == 1
        assert await asyncio.wait_for(reader.read(), 5) == b""
        await stopping
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", server.port)

    asyncio.run(scenario())


def test_a_client_that_leaves_mid_pipeline_releases_its_connection() -> None:
    async def scenario() -> None:
        handler = ScriptedHandler()
        server = await open_server(handler, in_flight_max=2)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"".join(request(i, {"wait": "go", "pad": "x" * 1000}) for i in range(50)))
        await writer.drain()
        while len(handler.started) < 2:
            await asyncio.sleep(0.01)
        writer.transport.abort()  # reset, without reading a single response
        handler.gate("go").set()
        for _ in range(500):
            if server.connection_count == 0:
                break
            await asyncio.sleep(0.01)
        assert server.connection_count == 0
        await server.stop(1.0)

    asyncio.run(scenario())
