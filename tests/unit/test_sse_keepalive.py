"""SSEResponse's keep-alive comments never go to the ASGI `send` while a frame is on its way,
and a frame never goes while a keep-alive is: a slow client (backpressure) cannot get two
writes at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from tollgate.asgi import SSEResponse
from tollgate.wire import sse

KEEPALIVE_S = 0.05


class QuietStream:
    """The least a reply stream needs to be streamed by SSEResponse."""

    request_id = "req-1"
    cached = False

    def stop(self, reason: str) -> None:
        pass

    async def aclose(self) -> None:
        pass


class Client:
    """An ASGI `send` that is slow for the bodies it is told to be slow for."""

    def __init__(self, slow: dict[bytes, float]) -> None:
        self.slow = slow
        self.bodies: list[bytes] = []
        self.in_send = 0
        self.most_at_once = 0

    async def send(self, message: dict[str, Any]) -> None:
        self.in_send += 1
        self.most_at_once = max(self.most_at_once, self.in_send)
        try:
            body = message.get("body", b"")
            await asyncio.sleep(self.slow.get(body, 0))
            if message["type"] == "http.response.body":
                self.bodies.append(body)
        finally:
            self.in_send -= 1


async def receive() -> dict[str, Any]:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


def stream_to(client: Client, frames: AsyncGenerator[bytes, None]) -> None:
    response = SSEResponse(QuietStream(), frames, keepalive_s=KEEPALIVE_S)  # type: ignore[arg-type]
    asyncio.run(response({"type": "http"}, receive, client.send))


def test_no_keep_alive_while_a_frame_is_held_up_by_a_slow_client() -> None:
    # Given a client that takes many keep-alive intervals to accept the first frame
    client = Client(slow={b"first": 6 * KEEPALIVE_S})

    async def frames() -> AsyncGenerator[bytes, None]:
        yield b"first"
        yield b"second"

    # When the reply streams
    stream_to(client, frames())

    # Then nothing else was sent while the first frame was on its way
    assert client.most_at_once == 1
    assert [body for body in client.bodies if body != sse.KEEPALIVE] == [b"first", b"second", b""]


def test_a_frame_waits_for_a_keep_alive_already_on_its_way() -> None:
    # Given a silence long enough for a keep-alive, which the client is slow to accept,
    # and the next frame ready meanwhile
    client = Client(slow={sse.KEEPALIVE: 6 * KEEPALIVE_S})

    async def frames() -> AsyncGenerator[bytes, None]:
        yield b"first"
        await asyncio.sleep(2 * KEEPALIVE_S)
        yield b"second"

    # When the reply streams
    stream_to(client, frames())

    # Then the frame went after the keep-alive, never beside it
    assert client.most_at_once == 1
    assert client.bodies[0] == b"first"
    assert client.bodies[1] == sse.KEEPALIVE
    assert client.bodies[-2:] == [b"second", b""]
