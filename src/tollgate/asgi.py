"""ASGI responses for a reply: SSE (with keep-alive comments) or a whole JSON body at the end.

Both watch for a client that goes away (stopping the reply, so upstream stops generating)
and settle the reply however the response ends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from tollgate.cache import (
    CACHE_HEADER,
    CACHE_HEADER_HIT,
)
from tollgate.ports import ReplyStream
from tollgate.stream import Outcome
from tollgate.wire import sse
from tollgate.wire.chat import chat_frames
from tollgate.wire.openai import (
    collect,
    completion_body,
    failure_body,
    failure_status,
)


class SSEResponse:
    """Streams a reply; a client that goes away stops it, and it is always settled."""

    def __init__(
        self,
        stream: ReplyStream,
        frames: AsyncGenerator[bytes, None] | None = None,
        *,
        keepalive_s: float = 15.0,
    ) -> None:
        self._stream = stream
        self._frames = frames if frames is not None else chat_frames(stream)
        self._keepalive_s = keepalive_s
        self._last_sent = 0.0
        # Frames and keep-alive comments never go to `send` at the same time. No lock on
        # the frames' path (one per chunk): the keeper stays out while a frame is being
        # sent, and a frame waits for a keep-alive already on its way.
        self._frame_in_flight = False
        self._keepalive_in_flight: asyncio.Future[None] | None = None

    async def _send(self, send: Send, body: bytes, *, more: bool = True) -> None:
        while self._keepalive_in_flight is not None:
            await asyncio.shield(self._keepalive_in_flight)
        self._frame_in_flight = True
        try:
            await send({"type": "http.response.body", "body": body, "more_body": more})
        finally:
            self._frame_in_flight = False
        self._last_sent = time.monotonic()

    async def _keep_alive(self, send: Send) -> None:
        """An SSE comment whenever nothing was sent for a while (a reasoning model thinking)."""
        while True:
            idle = time.monotonic() - self._last_sent
            if self._frame_in_flight:
                await asyncio.sleep(self._keepalive_s)  # a frame is going out: that is traffic
                continue
            if idle < self._keepalive_s:
                await asyncio.sleep(self._keepalive_s - idle)
                continue
            sent = asyncio.get_running_loop().create_future()
            self._keepalive_in_flight = sent
            try:
                await send({"type": "http.response.body", "body": sse.KEEPALIVE, "more_body": True})
            finally:
                self._keepalive_in_flight = None
                sent.set_result(None)
            self._last_sent = time.monotonic()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = self._stream
        headers = [
            (b"content-type", b"text/event-stream"),  # SSE is UTF-8 by definition
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
            (b"x-request-id", stream.request_id.encode()),
        ]
        if stream.cached:
            headers.append((CACHE_HEADER.encode(), CACHE_HEADER_HIT.encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        self._last_sent = time.monotonic()
        loop = asyncio.get_running_loop()
        watcher = loop.create_task(stop_on_disconnect(stream, receive))
        keeper = loop.create_task(self._keep_alive(send))
        frames = self._frames
        try:
            async for frame in frames:
                await self._send(send, frame)
            keeper.cancel()
            await self._send(send, b"", more=False)
        finally:
            watcher.cancel()
            keeper.cancel()
            # Settle first, shielded: an await here after a disconnect is cancelled too, and
            # the settlement must still run to its end.
            await asyncio.shield(stream.aclose())
            await frames.aclose()


async def stop_on_disconnect(stream: ReplyStream, receive: Receive) -> None:
    """Stop `stream` (aborting upstream) when the client goes away before it ends."""
    while (await receive())["type"] != "http.disconnect":
        pass
    stream.stop("client_disconnected")


class CompletionResponse:
    """A non-stream /v1 reply: collected from upstream's stream, sent whole at the end.

    A client that leaves meanwhile stops the stream, so upstream stops generating (an SDK
    that times out and retries would otherwise pay for every abandoned generation).
    """

    def __init__(
        self,
        stream: ReplyStream,
        body: Callable[[ReplyStream, Outcome], dict[str, Any]] = completion_body,
    ) -> None:
        self._stream = stream
        self._body = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = self._stream
        watcher = asyncio.get_running_loop().create_task(stop_on_disconnect(stream, receive))
        try:
            outcome = await collect(stream)
        finally:
            watcher.cancel()
            await asyncio.shield(stream.aclose())
        headers = {"x-request-id": stream.request_id}
        if stream.cached:
            headers[CACHE_HEADER] = CACHE_HEADER_HIT
        failure = outcome.failure()
        if failure is None:
            response = JSONResponse(self._body(stream, outcome), headers=headers)
        else:
            code, message = failure
            response = JSONResponse(
                failure_body(code, message), status_code=failure_status(code), headers=headers
            )
        await response(scope, receive, send)
