"""The node-to-node client against an in-process listener: answers, the deadline of a call
that gets no answer, and a fresh connection after a failed one."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from cluster.peer import PeerClient, PeerError
from cluster.protocol.framing import RequestHeader
from cluster.server import Server

pytestmark = pytest.mark.timeout(30)


class Handler:
    """Echoes the body; a body {"hang": true} never answers."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    async def handle(self, header: RequestHeader, body: Any) -> dict | None:
        self.seen.append(body)
        if body.get("hang"):
            await asyncio.Event().wait()
        return {"error_code": 0, "echo": body}


def test_a_call_without_answer_fails_at_its_deadline_and_the_next_call_reconnects() -> None:
    async def scenario() -> None:
        handler = Handler()
        server = Server("127.0.0.1", 0, handler, frame_bytes_max=1 << 20, connections_max=10,
                        in_flight_max=8)
        await server.start()
        peers = PeerClient(7)
        try:
            assert (await peers.call("127.0.0.1", server.port, 18, {"n": 1}, 5000))["echo"] == {"n": 1}
            assert server.connection_count == 1
            started = time.monotonic()
            with pytest.raises(PeerError, match="within 200 ms"):
                await peers.call("127.0.0.1", server.port, 18, {"hang": True}, 200)
            assert 0.15 < time.monotonic() - started < 3
            # The connection that timed out is dropped: the next call opens another one.
            assert (await peers.call("127.0.0.1", server.port, 18, {"n": 2}, 5000))["echo"] == {"n": 2}
            assert handler.seen == [{"n": 1}, {"hang": True}, {"n": 2}]
        finally:
            peers.close()
            await server.stop(0.5)

    asyncio.run(scenario())
