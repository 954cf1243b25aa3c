"""The frame reader under the listener and the peer client, driven by hand through the
buffered-protocol calls the event loop makes: frames split anywhere across receives, many
in one receive, frames larger than the staging buffer, refused and broken frames, end of
stream, and reading paused while decoded frames wait."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

import cluster.server as server_module
from cluster.protocol import framing
from cluster.server import FrameProtocol

pytestmark = pytest.mark.timeout(30)


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.reading = True
        self.closing = False

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closing


def frame(correlation_id: int, body: Any) -> bytes:
    return framing.encode_request(0, 0, correlation_id, "t", body)


def feed(protocol: FrameProtocol, data: bytes, chunks: list[int]) -> None:
    """Deliver ``data`` as the loop would: each receive fills (part of) get_buffer()."""
    position = 0
    for want in chunks + [len(data)] * len(data):
        if position >= len(data):
            return
        buffer = protocol.get_buffer(-1)
        n = min(want, len(buffer), len(data) - position)
        assert n > 0
        buffer[:n] = data[position:position + n]
        position += n
        protocol.buffer_updated(n)


def opened(frame_bytes_max: int = 1 << 22) -> tuple[FrameProtocol, FakeTransport]:
    protocol = FrameProtocol(frame_bytes_max, framing.decode_request)
    transport = FakeTransport()
    protocol.connection_made(transport)
    return protocol, transport


async def read_all(protocol: FrameProtocol, count: int) -> list[tuple[int, Any]]:
    out = []
    for _ in range(count):
        header, body = await protocol.read_frame()
        out.append((header.correlation_id, body))
    return out


def test_frames_of_every_size_survive_any_split() -> None:
    async def scenario() -> None:
        rng = random.Random(7)
        sizes = [0, 1, 100, 5000, server_module.FRAME_STAGING_BYTES - 40,
                 server_module.FRAME_STAGING_BYTES + 10, 300_000, 3]
        for round_ in range(20):
            protocol, transport = opened()
            bodies = [{"v": bytes([i]) * rng.choice(sizes)} for i in range(6)]
            data = b"".join(frame(i, body) for i, body in enumerate(bodies))
            chunks = [rng.choice([1, 3, 4, 7, 1000, 70_000, 1 << 20]) for _ in range(2000)]
            got: list[tuple[int, Any]] = []
            # the reader takes frames as they come, so reading never stays paused
            reader = asyncio.create_task(read_all(protocol, len(bodies)))
            position = 0
            for want in chunks:
                if position >= len(data):
                    break
                while not transport.reading:
                    await asyncio.sleep(0)
                buffer = protocol.get_buffer(-1)
                n = min(want, len(buffer), len(data) - position)
                buffer[:n] = data[position:position + n]
                position += n
                protocol.buffer_updated(n)
            got = await asyncio.wait_for(reader, 5)
            assert got == list(enumerate(bodies)), round_

    asyncio.run(scenario())


def test_a_large_frame_is_received_into_its_own_buffer() -> None:
    async def scenario() -> None:
        protocol, _ = opened()
        data = frame(1, {"records": b"x" * 200_000})
        feed(protocol, data[:10], [10])  # the prefix and a little of the body land in staging
        assert protocol._large is not None and len(protocol._large) == len(data) - 4
        buffer = protocol.get_buffer(-1)
        assert len(buffer) == len(data) - 10  # the rest goes straight to the frame's buffer
        buffer[:] = data[10:]
        protocol.buffer_updated(len(data) - 10)
        assert (await protocol.read_frame())[1] == {"records": b"x" * 200_000}
        assert protocol._large is None

    asyncio.run(scenario())


def test_a_refused_size_ends_the_stream_after_the_frames_before_it() -> None:
    async def scenario() -> None:
        protocol, transport = opened(frame_bytes_max=1000)
        feed(protocol, frame(1, {"a": 1}) + b"\x00\x10\x00\x00" + b"junk", [1 << 20])
        assert not transport.reading  # nothing more is read after a refused frame
        assert (await protocol.read_frame())[1] == {"a": 1}
        with pytest.raises(framing.FrameError, match="refused"):
            await protocol.read_frame()
        protocol, _ = opened()
        feed(protocol, b"\x00\x00\x00\x03abc", [1 << 20])  # not a request
        with pytest.raises(framing.FrameError):
            await protocol.read_frame()

    asyncio.run(scenario())


def test_end_of_stream_mid_frame_and_between_frames() -> None:
    async def scenario() -> None:
        protocol, _ = opened()
        data = frame(1, {"a": 1})
        feed(protocol, data + data[:6], [1 << 20])
        assert protocol.eof_received() is True  # half-close: answers may still be written
        assert (await protocol.read_frame())[1] == {"a": 1}
        with pytest.raises(asyncio.IncompleteReadError):
            await protocol.read_frame()
        protocol, _ = opened()
        protocol.eof_received()
        with pytest.raises(asyncio.IncompleteReadError):
            await protocol.read_frame()
        protocol, _ = opened()
        protocol.connection_lost(None)
        with pytest.raises(ConnectionError):
            await protocol.read_frame()
        with pytest.raises(ConnectionError):
            await protocol.drain()
        assert protocol.closed.done()

    asyncio.run(scenario())


def test_reading_pauses_while_decoded_frames_wait_and_resumes_when_taken() -> None:
    async def scenario() -> None:
        protocol, transport = opened()
        feed(protocol, b"".join(frame(i, {"i": i}) for i in range(5)), [1 << 20])
        assert not transport.reading
        taken = [await protocol.read_frame() for _ in range(4)]
        assert [h.correlation_id for h, _ in taken] == [0, 1, 2, 3]
        assert transport.reading
        assert (await protocol.read_frame())[0].correlation_id == 4

    asyncio.run(scenario())


def test_drain_waits_while_writing_is_paused() -> None:
    async def scenario() -> None:
        protocol, _ = opened()
        await asyncio.wait_for(protocol.drain(), 1)  # not paused: at once
        protocol.pause_writing()
        draining = asyncio.create_task(protocol.drain())
        await asyncio.sleep(0.01)
        assert not draining.done()
        protocol.resume_writing()
        await asyncio.wait_for(draining, 1)

    asyncio.run(scenario())
